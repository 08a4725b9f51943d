import numpy as np
import torch

from napari_unet.core.labels import IGNORE
from napari_unet.core.losses import border_weight_map, segmentation_loss


def test_ignored_pixels_contribute_nothing():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, requires_grad=True)
    target = torch.randint(0, 2, (2, 16, 16))
    target[:, :8] = IGNORE
    loss = segmentation_loss(logits, target)
    loss.backward()
    assert torch.all(logits.grad[:, :, :8] == 0)
    assert torch.any(logits.grad[:, :, 8:] != 0)
    # Changing the logits of ignored pixels leaves the loss unchanged.
    other = logits.detach().clone()
    other[:, :, :8] = 100.0
    assert torch.isclose(segmentation_loss(other, target), loss.detach())


def test_all_ignored_gives_zero_with_gradient():
    logits = torch.randn(1, 1, 8, 8, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 8, 8), IGNORE))
    loss.backward()
    assert loss.item() == 0.0


def test_perfect_prediction_has_low_loss_and_wrong_high():
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, 4:12, 4:12] = 1
    good = (target.float() * 2 - 1)[:, None] * 20
    assert segmentation_loss(good, target) < 1e-3
    assert segmentation_loss(-good, target) > 10


def test_multiclass_cross_entropy_with_ignore():
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0, 0] = IGNORE  # 2 is a class here, ignore index passed explicitly
    assert torch.isfinite(segmentation_loss(logits, target, ignore_index=255))


def test_border_weight_map_peaks_between_touching_cells():
    # Two cells separated by a 2-pixel membrane, and a wide membrane region elsewhere.
    label = np.ones((40, 60), np.uint8)
    label[5:35, 5:29] = 0
    label[5:35, 31:45] = 0
    weights = border_weight_map(label, w0=10, sigma=5)
    gap = weights[20, 29:31].mean()
    far = weights[20, 55]
    inside = weights[20, 15]
    assert gap > far + 5  # w0 * exp(-(1+1)^2/50) ~ 9.2 on top of the class weight
    assert gap > inside
    label[0, :] = IGNORE
    assert np.all(border_weight_map(label)[0] == 0)


def test_border_weight_map_on_isbi_is_fast_and_sane(isbi_stack):
    import time

    start = time.perf_counter()
    weights = border_weight_map(isbi_stack.labels[0])
    assert time.perf_counter() - start < 5
    membrane = isbi_stack.labels[0] == 1
    assert weights[membrane].mean() > weights[~membrane].mean()
