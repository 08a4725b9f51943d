import numpy as np
import pytest
import torch

from napari_unet.core import train as train_module
from napari_unet.core.augment import Augmentation
from napari_unet.core.checkpoint import default_metadata, load_checkpoint
from napari_unet.core.data import normalize
from napari_unet.core.labels import IGNORE
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.train import TrainConfig, TrainingData, fine_tune_recipe, train


@pytest.fixture(scope="module")
def small_isbi(isbi_stack):
    """Four real ISBI slices, cropped to 128x128 to keep CPU tests quick."""
    images = normalize(isbi_stack.images[:4, :128, :128])
    return images, isbi_stack.labels[:4, :128, :128]


def _config(**kwargs):
    values = dict(steps=6, batch_size=2, crop_size=64, validate_every=3, device="cpu", warmup_steps=2)
    values.update(kwargs)
    return TrainConfig(**values)


def _model():
    torch.manual_seed(0)
    return UNet(UNetConfig(base_width=4, depth=2))


def test_events_and_best_checkpoint(small_isbi, tmp_path):
    images, labels = small_isbi
    data = TrainingData(images, labels, [0, 1, 2], [3])
    path = tmp_path / "model.pt"
    events = list(train(_model(), data, _config(border_weights=True), path, default_metadata("em", data_hash="abc")))
    assert [e.step for e in events] == [0, 1, 2, 3, 4, 5, 6]
    assert events[0].loss is None and events[0].val_dice is not None  # the starting model is scored first
    assert all(np.isfinite(e.loss) for e in events[1:])
    assert events[-1].done and events[-1].eta_s == 0
    assert all(e.eta_s >= 0 for e in events)
    assert [e.val_dice is not None for e in events] == [True, False, False, True, False, False, True]
    best = max(e.val_dice for e in events if e.val_dice is not None)
    assert events[-1].best_dice == pytest.approx(best)
    saved = load_checkpoint(path)
    record = saved.metadata["history"][-1]
    assert record["data_hash"] == "abc" and record["train_slices"] == [0, 1, 2] and record["val_slices"] == [3]
    assert record["val_dice"] == pytest.approx(best)


def test_stop_keeps_the_best_model(small_isbi, tmp_path, monkeypatch):
    images, labels = small_isbi
    scores = iter([0.5, 0.7, 0.6, 0.9])  # start, step 3 (best), step 6, never reached
    monkeypatch.setattr(train_module, "validation_dice", lambda *a, **k: next(scores))
    model = _model()
    path = tmp_path / "model.pt"
    events = train(model, TrainingData(images, labels, [0, 1], [3]), _config(steps=9), path, default_metadata("em"))
    for event in events:
        if event.step == 3:
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        if event.step == 7:
            break  # the user pressed Stop after step 7
    events.close()
    on_disk = load_checkpoint(path)
    assert on_disk.metadata["history"][-1]["steps"] == 3
    for key, value in best_state.items():
        assert torch.equal(model.state_dict()[key], value)
        assert torch.equal(on_disk.model.state_dict()[key], value)


def test_fine_tune_keeps_the_start_when_nothing_beats_it(small_isbi, tmp_path, monkeypatch):
    images, labels = small_isbi
    scores = iter([0.8, 0.7, 0.6, 0.5])
    monkeypatch.setattr(train_module, "validation_dice", lambda *a, **k: next(scores))
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    config = fine_tune_recipe(steps=6, crop_size=64, batch_size=2, device="cpu")
    events = list(train(model, TrainingData(images, labels, [0], [3]), config, tmp_path / "ft.pt"))
    assert not any(e.improved for e in events[1:])
    for key, value in start.items():
        assert torch.equal(model.state_dict()[key], value)


def test_fine_tune_recipe_freezes_batchnorm_statistics(small_isbi):
    images, labels = small_isbi
    model = _model()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    config = fine_tune_recipe(steps=3, crop_size=64, batch_size=2, device="cpu")
    list(train(model, TrainingData(images, labels, [0, 1]), config))
    assert torch.equal(bn.running_mean, before)
    assert config.learning_rate < TrainConfig().learning_rate and config.warmup_steps >= 1


def test_training_is_seeded(small_isbi):
    images, labels = small_isbi
    data = TrainingData(images, labels, [0, 1, 2])
    runs = [[e.loss for e in train(_model(), data, _config(steps=3, augmentation=Augmentation()))] for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("bfloat16", [False, True])
def test_training_learns_on_real_slices(small_isbi, tmp_path, bfloat16):
    """Thirty real steps lower the loss, in float32 and in bfloat16 mixed precision."""
    images, labels = small_isbi
    data = TrainingData(images, labels, [0, 1, 2, 3])
    config = _config(steps=30, learning_rate=3e-3, validate_every=100, mixed_precision=bfloat16)
    model = _model()
    losses = [e.loss for e in train(model, data, config, tmp_path / "run.pt")]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    assert load_checkpoint(tmp_path / "run.pt").metadata["history"][-1]["bfloat16"] is bfloat16


def test_bad_training_data_is_explained(small_isbi):
    images, labels = small_isbi
    with pytest.raises(ValueError, match="at least one slice"):
        TrainingData(images, labels, [])
    unlabelled = labels.copy()
    unlabelled[0] = IGNORE
    with pytest.raises(ValueError, match="no labelled pixel"):
        TrainingData(images, unlabelled, [0])
    with pytest.raises(ValueError, match="no structure"):
        TrainingData(images, np.zeros_like(labels), [0])
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
