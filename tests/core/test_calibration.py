"""The output shift onto the training labels' convention (core.calibration)."""

import numpy as np
import torch
from scipy import ndimage

from napari_unet.core.calibration import SHIFT_KEY, annotation_offset, shift_output
from napari_unet.core.checkpoint import Checkpoint, default_metadata
from napari_unet.core.labels import IGNORE
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.pipeline import predict


def _membranes(seed: int) -> np.ndarray:
    """(Y, X) uint8, 1 = thin boundaries between random cells."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((128, 128), int)
    seeds[tuple(rng.integers(0, 128, (2, 30)))] = np.arange(1, 31)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[iy, ix]
    return (ndimage.morphological_gradient(cells, size=2) > 0).astype(np.uint8)


def test_a_known_offset_is_measured_back():
    labels = np.stack([_membranes(s) for s in range(4)])
    # Predictions centred 0.4 px below and 0.3 px left of the labels.
    prob = ndimage.shift(ndimage.gaussian_filter(labels.astype(np.float32), (0, 1, 1)), (0, 0.4, -0.3), order=1)
    dy, dx = annotation_offset(prob, labels)
    assert abs(dy + 0.4) < 0.1 and abs(dx - 0.3) < 0.1
    partly = labels.copy()
    partly[:, :10] = IGNORE  # partly labelled slices are not used
    assert annotation_offset(prob, partly) == (0.0, 0.0)


def test_predict_moves_its_output_only_when_the_model_says_so():
    torch.manual_seed(0)
    model = UNet(UNetConfig(in_channels=1, base_width=4, depth=2))
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 1), dtype=np.uint8)
    plain_model = Checkpoint(model, default_metadata("em", tile_size=64), "plain")
    assert plain_model.info.output_shift_px == (0.0, 0.0)
    plain = predict(plain_model, images, device="cpu").probabilities
    assert shift_output(plain, plain_model.info.output_shift_px) is plain
    meta = default_metadata("em", tile_size=64, **{SHIFT_KEY: [0.5, -0.25]})
    moved_model = Checkpoint(model, meta, "moved")
    assert moved_model.info.output_shift_px == (0.5, -0.25)
    moved = predict(moved_model, images, device="cpu").probabilities
    np.testing.assert_allclose(moved, shift_output(plain, moved_model.info.output_shift_px), atol=1e-6)
    assert not np.allclose(moved, plain)
