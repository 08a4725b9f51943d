"""The one prediction pipeline: its stages, the user's field of view, the pixel-size checks,
and the typed model description."""

import numpy as np
import pytest
import torch

from napari_unet.core.checkpoint import Checkpoint, default_metadata, load_checkpoint, save_checkpoint
from napari_unet.core.data import DataError, read_mask, read_stack
from napari_unet.core.description import ModelDescription
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.pipeline import RESAMPLE_SKIP, Pipeline, predict
from napari_unet.core.settings import PredictSettings


def _tiny(channels=1, **meta):
    torch.manual_seed(0)
    model = UNet(UNetConfig(in_channels=channels, base_width=4, depth=2))
    return Checkpoint(model, default_metadata("em" if channels == 1 else "fundus", tile_size=64, **meta), "tiny")


def test_the_stages_give_what_run_gives():
    """prepare -> infer -> restore -> finish by hand is `run`: no stage is done elsewhere."""
    images = np.random.default_rng(0).integers(0, 255, (2, 70, 90, 1), dtype=np.uint8)
    pipeline = Pipeline(_tiny(), PredictSettings(device="cpu", threshold=0.4, instances=True))
    result = pipeline.run(images)
    by_hand = []
    for image in images:
        prepared = pipeline.prepare(image)
        by_hand.append(pipeline.restore(pipeline.infer(prepared.image[None])[0], prepared))
    by_hand = np.stack(by_hand)
    np.testing.assert_allclose(result.probabilities, by_hand, atol=1e-6)
    mask, cells = pipeline.finish(by_hand.copy(), None)
    np.testing.assert_array_equal(result.mask, mask)
    np.testing.assert_array_equal(result.mask, (result.probabilities > 0.4).astype(np.uint8))
    np.testing.assert_array_equal(result.cells, cells)
    assert result.fov is None and not result.fov_found


def test_an_absurd_pixel_size_is_refused_with_its_value():
    model = _tiny(pixel_size_nm=[4.0, 4.0])
    for wrong in (0.01, 90_000.0):
        with pytest.raises(DataError, match=f"Pixel size {wrong:g} nm"):
            Pipeline(model, PredictSettings(device="cpu", pixel_size=wrong))
    with pytest.raises(DataError, match="positive"):
        Pipeline(model, PredictSettings(device="cpu", pixel_size=-1.0))


def test_resampling_is_skipped_near_the_models_pixel_size_and_said():
    model = _tiny(pixel_size_nm=[4.0, 4.0])
    inside = 4.0 * (RESAMPLE_SKIP[1] - 0.01)
    near = Pipeline(model, PredictSettings(device="cpu", pixel_size=inside))
    assert near.scale is None and "without resampling" in near.scale_note
    far = Pipeline(model, PredictSettings(device="cpu", pixel_size=8.0))
    assert far.scale == (2.0, 2.0) and "Resampled" in far.scale_note
    images = np.random.default_rng(1).integers(0, 255, (1, 60, 60, 1), dtype=np.uint8)
    result = far.run(images)
    assert result.mask.shape == (1, 60, 60) and any("Resampled" in n for n in result.notes)


def test_description_round_trips_and_reads_old_keys():
    meta = default_metadata("em", threshold=0.55, pixel_size_nm=[4, 4], custom_note="kept")
    info = ModelDescription.from_metadata(meta)
    assert info.threshold == 0.55 and info.pixel_size_nm == (4.0, 4.0) and info.extra["custom_note"] == "kept"
    assert ModelDescription.from_metadata(info.to_metadata()) == info
    old = ModelDescription.from_metadata({"flips": ["x"], "pixel_size": 5, "instance_method": "magic"})
    assert old.test_time_flips == ("x",) and old.pixel_size_nm == (5.0, 5.0)
    assert old.instance_method == "watershed" and old.threshold == 0.5


def test_description_survives_a_checkpoint(tmp_path):
    model = _tiny(threshold=0.6, output_shift_px=[0.5, -0.25])
    path = save_checkpoint(tmp_path / "m.pt", model.model, model.metadata)
    info = load_checkpoint(path).info
    assert info.threshold == 0.6 and info.output_shift_px == (0.5, -0.25)


@pytest.fixture(scope="module")
def darkened_rim(drive_dir):
    """A DRIVE training photograph whose outer 60 px of retina is at 25 % (vignetting),
    its vessels, DRIVE's own FOV mask and the darkened ring."""
    from scipy import ndimage

    image = np.asarray(read_stack(drive_dir / "training" / "images" / "21_training.tif"))
    vessels = read_mask(drive_dir / "training" / "1st_manual" / "21_manual1.gif")[0]
    fov = read_mask(drive_dir / "training" / "mask" / "21_training_mask.gif")[0]
    inner = ndimage.distance_transform_edt(fov) > 60
    ring = fov & ~inner
    dark = image.astype(np.float32)
    dark[ring] *= 0.25
    return dark.astype(np.uint8), vessels, fov, ring


def test_the_users_fov_wins_over_the_one_found(darkened_rim):
    """The found FOV leaves the dark ring out; DRIVE's own mask, or no FOV at all,
    gives it back and vessels are found there."""
    image, vessels, fov, ring = darkened_rim
    model = load_checkpoint("fundus-vessels")
    found = predict(model, image[None], device="cpu")
    assert found.fov_found and found.fov[0][ring].mean() < 0.5  # the ring is (mostly) left out
    given = predict(model, image[None], fov=fov, device="cpu")
    assert not given.fov_found and np.array_equal(given.fov[0], fov)
    none = predict(model, image[None], fov="none", device="cpu")
    assert none.fov is None and any("whole photograph" in n for n in none.notes)
    in_ring = vessels & ring

    def recall(result):
        return float(result.mask[0][in_ring].mean())

    assert recall(found) < 0.1  # measured 0.0
    assert recall(given) > 0.15 and recall(none) > 0.15, (recall(given), recall(none))  # measured 0.26
    assert not given.mask[0][~fov].any()  # and nothing outside the user's FOV


def test_fine_tune_reports_the_held_out_score_evaluate_shows(isbi_stack):
    """The fine-tune's held-out figures are Evaluate's Dice of the mask Predict shows."""
    from napari_unet.core.evaluate import evaluate, scoring_inputs
    from napari_unet.core.finetune import FineTune, FineTuneOptions
    from napari_unet.core.labels import IGNORE, STRUCTURE

    images = np.ascontiguousarray(isbi_stack.images[20:23, :192, :192])
    labels = np.ascontiguousarray(isbi_stack.labels[20:23, :192, :192])
    labels[0, :40] = IGNORE  # a band the user left unlabelled is not scored either
    start = load_checkpoint("em-membranes")
    run = FineTune(start, images, labels, [0, 1],
                   options=FineTuneOptions(steps=4, device="cpu", recipe={"batch_size": 2, "crop_size": 128}))
    for _event in run.run():
        pass
    fold = run.result.report.folds[0]  # slice 0 held out (always scored: the first fold)

    def evaluated(checkpoint):
        shown = predict(checkpoint, images[0:1], device="cpu").mask  # as Predict shows it
        pred, truth, scored = scoring_inputs(shown, (labels[0:1] == STRUCTURE).astype(np.uint8)
                                             + 2 * (labels[0:1] == IGNORE))
        return shown, evaluate(pred, truth, "em", fov=scored)["dice"]

    shown, dice = evaluated(start)
    assert dice == pytest.approx(fold.start_dice, abs=1e-4)
    # Any model's mask is scored as Evaluate scores it: here the one the fine-tune returns.
    tuned = Checkpoint(run.result.model, run.result.metadata, "tuned")
    shown, dice = evaluated(tuned)
    assert run.scorer.scores(shown, run.folds[0], guard=False)[0] == pytest.approx(dice, abs=1e-4)
