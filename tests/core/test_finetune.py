"""The one-click fine-tune recipe (`core.finetune`) on real ISBI slices."""

import numpy as np
import pytest
import torch

from napari_unet.core.checkpoint import Checkpoint, default_metadata, load_checkpoint
from napari_unet.core.data import Augmentation
from napari_unet.core.finetune import FineTune, FineTuneOptions, describe_outcome
from napari_unet.core.labels import IGNORE
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.train import TrainConfig, TrainingData, _CropCentres, _sample_batch

# Quick on a CPU; plain loss weights, so an untrained model learns within a few steps.
QUICK = {"crop_size": 64, "batch_size": 2, "validate_every": 3, "learning_rate": 0.01, "border_weights": False}


@pytest.fixture(scope="module")
def slices(isbi_stack):
    """Three real ISBI slices cropped to 128x128: raw images and labels (1 = membrane)."""
    return isbi_stack.images[20:23, :128, :128], isbi_stack.labels[20:23, :128, :128]


@pytest.fixture(scope="module")
def builtin():
    return load_checkpoint("em-membranes")


@pytest.fixture()
def small():
    """An untrained small U-Net: quick, and any sensible training beats it."""
    torch.manual_seed(0)
    return Checkpoint(UNet(UNetConfig(base_width=8, depth=2)), default_metadata("em"), "small")


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_two_corrected_slices_choose_steps_on_one_then_learn_from_both(slices, small):
    images, labels = slices
    run = FineTune(small, images, labels, [0, 2], options=FineTuneOptions(steps=6, device="cpu", recipe=QUICK),
                   start_name="my model")
    events = list(run.run())
    report = run.result.report
    assert report["held_out"] == 2 and not report["stopped"]
    assert [e.stage for e in events].count("select") == 7  # the starting model's check, then 6 steps
    assert [e.val_dice is not None for e in events if e.stage == "select"] == [True, 0, 0, True, 0, 0, True]
    assert report["best_step"] in (3, 6) and report["refit"] == "done"  # then learnt again from both slices
    assert [e.step for e in events if e.stage == "refit"] == list(range(7, 7 + report["best_step"]))
    record = run.result.metadata["history"][-1]
    assert record["corrected_slices"] == [0, 2] and record["val_slices"] == [2]
    assert record["train_slices"] == [0, 2] and record["steps"] == report["best_step"]
    assert run.result.metadata["fine_tuned_from"] == "my model"
    assert 0.2 <= run.result.metadata["threshold"] <= 0.8
    assert len(report["validations"]) == 3 and describe_outcome(report)


def test_a_model_that_loses_the_guard_is_never_kept(slices, small, monkeypatch):
    """Whatever its Dice on the edits, a step whose cells (V_Rand) got worse than the
    starting model's on the held-out slice is refused; if all are, the start is kept."""
    images, labels = slices
    guards = iter([0.9] + [0.5] * 100)  # the start's V_Rand, then every later model's
    monkeypatch.setattr(FineTune, "_guard", lambda self, *args: next(guards))
    start = _weights(small.model)
    run = FineTune(small, images, labels, [0, 1], options=FineTuneOptions(steps=6, device="cpu", recipe=QUICK))
    events = list(run.run())
    report = run.result.report
    assert report["best_step"] == 0 and report["refit"] == "skipped"
    assert [e.refused for e in events if e.val_dice is not None] == [False, True, True]
    assert _same(start, run.result.model.state_dict())
    assert report["guard"] == report["start_guard"] == 0.9
    assert run.result.metadata["threshold"] == small.metadata["threshold"]
    assert "so it is kept" in describe_outcome(report)


def test_one_corrected_slice_is_checked_on_itself(slices, small):
    images, labels = slices
    run = FineTune(small, images, labels, [1], options=FineTuneOptions(steps=3, device="cpu", recipe=QUICK))
    list(run.run())
    assert run.result.report["held_out"] is None and run.result.report["refit"] == "skipped"
    assert run.result.metadata["history"][-1]["train_slices"] == [1]


def test_edits_are_the_painted_pixels_and_where_the_starting_model_disagrees(slices, builtin):
    images, labels = slices
    run = FineTune(builtin, images, labels, [0, 1], options=FineTuneOptions(steps=3, device="cpu", recipe=QUICK))
    inferred = run._edits().copy()
    assert inferred.shape == (2, 128, 128) and 0 < inferred.mean() < 0.5
    painted = np.zeros(labels.shape, bool)
    painted[0, 10:20, 10:20] = True
    run = FineTune(builtin, images, labels, [0, 1], painted, FineTuneOptions(steps=3, device="cpu", recipe=QUICK))
    np.testing.assert_array_equal(run._edits(), inferred | painted[[0, 1]])


def test_stop_while_choosing_keeps_the_best_so_far(slices, small):
    images, labels = slices
    run = FineTune(small, images, labels, [0, 1], options=FineTuneOptions(steps=30, device="cpu", recipe=QUICK))
    events = run.run()
    for event in events:
        if event.step == 4:
            break
    events.close()
    report = run.result.report
    assert report["stopped"] and report["refit"] == "skipped" and report["best_step"] in (0, 3)
    assert "start_score" in report and describe_outcome(report)


def test_stop_while_refitting_keeps_the_checked_model(slices, small):
    images, labels = slices
    run = FineTune(small, images, labels, [0, 1], options=FineTuneOptions(steps=6, device="cpu", recipe=QUICK))
    events = run.run()
    for event in events:
        if event.stage == "refit":
            break
    events.close()
    report = run.result.report
    assert report["refit"] == "stopped" and report["stopped"] and report["best_step"] > 0
    assert run.result.metadata["history"][-1]["train_slices"] == [0]  # the model checked on slice 1


def test_crops_are_drawn_around_edits_and_always_hold_labels():
    rng = np.random.default_rng(0)
    labels = np.full((2, 300, 300), IGNORE, np.uint8)
    labels[0, 250:260, 20:30] = 1  # one small labelled patch on a large, mostly unlabelled slice
    labels[1, :, :] = 0
    labels[1, 100:104, 200:204] = 1
    focus = np.zeros(labels.shape, bool)
    focus[1, 100:104, 200:204] = True  # the user's fix
    weights = np.where(focus, 3.0, 1.0).astype(np.float32)
    images = rng.random((2, 300, 300, 1), dtype=np.float32)
    data = TrainingData(images, labels, [0, 1], weights=weights, focus=focus)
    plain = Augmentation(flips=False, rotations=False, elastic=False, intensity=False)
    for fraction, wanted in ((1.0, "edit"), (0.0, "labels")):
        config = TrainConfig(steps=1, batch_size=4, crop_size=64, focus_fraction=fraction, augmentation=plain)
        sampler = _CropCentres(data, config, rng)
        for _ in range(10):
            _, crop_labels, crop_weights = _sample_batch(list(images), list(labels), list(weights), sampler, config, rng)
            assert all((crop != IGNORE).any() for crop in crop_labels)  # never an all-unlabelled crop
            if wanted == "edit":
                assert all((w == 3.0).any() for w in crop_weights)
