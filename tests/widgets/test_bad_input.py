"""Bad input and interruptions in the five dock widgets, as a user meets them.

One table: what the user does -> the status line they read. For every case: the message
is said once, in the widget (nothing reaches ``sys.excepthook``, no "Unexpected error"),
and no layer the user owns is changed or removed. The widgets are opened from the
Plugins menu in a real viewer.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet._widgets._session import get_session

from .conftest import paint_square, wait_for

WIDGETS = {"load": "Load", "predict": "Predict", "correct": "Correct", "finetune": "Fine-tune",
           "evaluate": "Evaluate"}


@dataclass
class Env:
    viewer: object
    w: dict
    tmp: Path
    tiny_em: Path
    tiny_fundus: Path
    qtbot: object

    def image(self, data, name="image", **kwargs):
        return self.viewer.add_image(np.asarray(data), name=name, **kwargs)

    def stack(self, z=3, size=64, name="stack"):
        rng = np.random.default_rng(0)
        return self.image(rng.integers(0, 255, (z, size, size), dtype=np.uint8), name=name)

    def predict_with_tiny(self, layer):
        """Choose ``layer`` and the tiny model in Predict; returns the button's action."""
        predict = self.w["predict"]
        predict.image.value = layer
        predict.model.value = "file"
        predict.checkpoint.value = str(self.tiny_em)
        return predict.predict

    def predicted(self, z=3, size=64):
        """An image and its prediction, made through the Predict widget."""
        image = self.stack(z, size)
        wait_for(self.qtbot, self.predict_with_tiny(image)())
        return image, self.viewer.layers[f"{image.name} prediction"]

    def finetune(self, image, labels, steps=5):
        ft = self.w["finetune"]
        ft.image.value, ft.corrected_labels.value, ft.steps.value = image, labels, steps
        return ft


# ------------------------------------------------------------------------------ Load


def load(env, path):
    env.w["load"].path.value = str(path)
    return env.w["load"].load


def load_missing(env):
    return load(env, env.tmp / "nothing-here.tif")


def load_zero_bytes(env):
    (env.tmp / "empty.tif").write_bytes(b"")
    return load(env, env.tmp / "empty.tif")


def load_corrupt(env):
    (env.tmp / "broken.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    return load(env, env.tmp / "broken.tif")


def load_5d(env):
    tifffile.imwrite(env.tmp / "five.tif", np.zeros((2, 2, 3, 32, 32), np.uint8), photometric="minisblack")
    return load(env, env.tmp / "five.tif")


def load_unsupported(env):
    (env.tmp / "notes.txt").write_text("hello")
    return load(env, env.tmp / "notes.txt")


def load_empty_folder(env):
    (env.tmp / "empty_folder").mkdir()
    return load(env, env.tmp / "empty_folder")


def load_mixed_sizes(env):
    folder = env.tmp / "mixed"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(folder / "b.tif", np.zeros((40, 32), np.uint8))
    return load(env, folder)


def load_nothing_chosen(env):
    return env.w["load"].load


# ------------------------------------------------------------------------------ Predict


def predict_image(data, **kwargs):
    def run(env):
        return env.predict_with_tiny(env.image(data, **kwargs))
    return run


def predict_at_pixel_size(size):
    def run(env):
        predict = env.w["predict"]
        predict.image.value = env.stack()
        predict.model.value = "em-membranes"  # trained at 4 nm
        predict.pixel_size.value = size
        return predict.predict
    return run


def predict_no_image(env):
    return env.w["predict"].predict


def predict_rgba_with_grey_model(env):
    return env.predict_with_tiny(env.image(np.zeros((64, 64, 4), np.uint8) + [10, 20, 30, 255], rgb=True))


def predict_checkpoint(make_file):
    def run(env):
        path = make_file(env)
        predict = env.w["predict"]
        predict.image.value = env.stack()
        predict.model.value = "file"
        predict.checkpoint.value = str(path)
        return predict.predict
    return run


def foreign_checkpoint(env):
    torch.save({"weights": torch.zeros(1)}, env.tmp / "foreign.pt")
    return env.tmp / "foreign.pt"


def truncated_checkpoint(env):
    data = env.tiny_em.read_bytes()
    (env.tmp / "truncated.pt").write_bytes(data[: len(data) // 2])
    return env.tmp / "truncated.pt"


def text_as_checkpoint(env):
    (env.tmp / "model.pt").write_text("not a model")
    return env.tmp / "model.pt"


def predict_then(change):
    """Start a prediction on a large-enough stack, then change its image while it runs."""
    def run(env):
        image = env.stack(z=6, size=256)
        start = env.predict_with_tiny(image)

        def act():
            job = start()
            change(env, image)
            return job
        return act
    return run


def remove_image(env, image):
    env.viewer.layers.remove(image)


def replace_image_data(env, image):
    image.data = np.zeros((6, 256, 256), np.uint8)


def press_cancel(env, image):
    env.w["predict"]._run_clicked()


# ------------------------------------------------------------------------------ Correct


def correct_without_labels(env):
    return lambda: env.w["correct"].set_current_corrected(True)


def ignore_without_edits(env):
    env.predicted()
    return env.w["correct"].ignore_unedited_parts


def save_corrections_unwritable(env):
    env.predicted()
    (env.tmp / "a file").write_text("x")
    env.w["correct"].folder.value = str(env.tmp / "a file" / "sub")
    return env.w["correct"].save


# ------------------------------------------------------------------------------ Fine-tune


def finetune_no_layers(env):
    return env.w["finetune"].start


def finetune_other_shape(env):
    image, labels = env.predicted()
    other = env.stack(z=2, size=48, name="other")
    return env.finetune(other, labels).start


def finetune_nothing_corrected(env):
    image, labels = env.predicted()
    return env.finetune(image, labels).start


def finetune_all_ignore(env):
    image, labels = env.predicted()
    paint_square(labels, 1, 20, 20)
    labels.data[1] = 2
    return env.finetune(image, labels).start


def finetune_unwritable_destination(env):
    image, labels = env.predicted()
    paint_square(labels, 1, 20, 20)
    (env.tmp / "a file").write_text("x")
    ft = env.finetune(image, labels)
    ft.save_to.value = str(env.tmp / "a file" / "models" / "tuned.pt")
    return ft.start


def finetune_unknown_ids(env):
    image, labels = env.predicted()
    paint_square(labels, 1, 20, 20, value=1)
    labels.data[1, :4, :4] = 7  # a stray brush value
    return env.finetune(image, labels).start


def finetune_then(interrupt, steps=30, save_to=None, verify=True):
    """Start a fine-tune on one corrected slice, then ``interrupt(env, widget, job, labels)``
    (``verify`` False: kept unchecked, so it always re-predicts)."""
    def run(env):
        image, labels = env.predicted()
        paint_square(labels, 1, 20, 20)
        ft = env.finetune(image, labels, steps=steps)
        ft.verify.value = verify
        if save_to:
            ft.save_to.value = str(env.tmp / save_to)

        def act():
            job = ft.start()
            interrupt(env, ft, job, labels)
            return job
        return act
    return run


def remove_labels(env, ft, job, labels):
    env.viewer.layers.remove(labels)


def lose_destination(env, ft, job, labels):
    """The chosen folder turns into a file (drive swapped, disk gone) while training."""
    folder = env.tmp / "models"
    folder.rmdir()
    folder.write_text("not a folder any more")


def press_stop(env, ft, job, labels):
    env.qtbot.waitUntil(lambda: len(job.state.events) >= 2, timeout=60_000)
    ft._clicked()


# ------------------------------------------------------------------------------ Evaluate


def evaluate_with(pred, truth):
    def run(env):
        ev = env.w["evaluate"]
        ev.prediction.value = pred(env)
        ev.truth.value = truth(env)
        return ev.run
    return run


def labels_layer(data, name):
    def make(env):
        return env.viewer.add_labels(np.asarray(data), name=name)
    return make


def evaluate_nothing(env):
    return env.w["evaluate"].run


def evaluate_same_layer(env):
    layer = env.viewer.add_labels(np.ones((32, 32), np.uint8), name="truth")
    ev = env.w["evaluate"]
    ev.prediction.value = ev.truth.value = layer
    return ev.run


TRUTH = np.zeros((32, 32), np.uint8)
TRUTH[10:20, 10:20] = 1

CASES = [
    # id, widget whose status the user reads, action, expected text, layers may change
    ("load missing file", "load", load_missing, "does not exist"),
    ("load zero-byte file", "load", load_zero_bytes, "could not be read"),
    ("load corrupt tif", "load", load_corrupt, "could not be read"),
    ("load 5-D tif", "load", load_5d, "Expected a 2D image"),
    ("load unsupported file", "load", load_unsupported, "unsupported file type"),
    ("load empty folder", "load", load_empty_folder, "holds no tif/png"),
    ("load mixed-size folder", "load", load_mixed_sizes, "differ in size"),
    ("load nothing chosen", "load", load_nothing_chosen, "Choose a file or a folder first"),
    ("predict no image", "predict", predict_no_image, "No image chosen"),
    ("predict 4-D image", "predict", predict_image(np.zeros((2, 2, 32, 32), np.uint8)), "has 4 dimensions"),
    ("predict 1x1 image", "predict", predict_image(np.ones((1, 1), np.float32)), "too small"),
    ("predict 3x5 image", "predict", predict_image(np.arange(15, dtype=np.uint8).reshape(3, 5)), "too small"),
    ("predict all-NaN image", "predict", predict_image(np.full((64, 64), np.nan, np.float32)), "no finite value"),
    ("predict all-Inf image", "predict", predict_image(np.full((64, 64), np.inf, np.float32)), "no finite value"),
    ("predict constant image", "predict", predict_image(np.full((64, 64), 7, np.uint8)), "same value (7) everywhere"),
    ("predict RGBA with grey model", "predict", predict_rgba_with_grey_model, "is RGB but the model"),
    ("predict foreign checkpoint", "predict", predict_checkpoint(foreign_checkpoint), "not a napari-unet checkpoint"),
    ("predict truncated checkpoint", "predict", predict_checkpoint(truncated_checkpoint), "not a readable napari-unet"),
    ("predict text file as checkpoint", "predict", predict_checkpoint(text_as_checkpoint),
     "not a readable napari-unet"),
    ("predict missing checkpoint", "predict", predict_checkpoint(lambda env: env.tmp / "gone.pt"),
     "Choose a checkpoint"),
    ("predict at 0.01 nm", "predict", predict_at_pixel_size(0.01), "Pixel size 0.01 nm is 0.0025 times the model's"),
    ("predict at 90,000 nm", "predict", predict_at_pixel_size(90_000.0), "Pixel size 90000 nm"),
    ("image removed while predicting", "predict", predict_then(remove_image), "was removed while the job ran: nothing"),
    ("image data replaced while predicting", "predict", predict_then(replace_image_data), "changed while the job ran"),
    ("cancel pressed", "predict", predict_then(press_cancel), "Prediction cancelled; nothing was changed"),
    ("correct without labels", "correct", correct_without_labels, "Choose a Labels layer first"),
    ("ignore unedited without edits", "correct", ignore_without_edits, "Nothing was edited on this slice"),
    ("save corrections unwritable", "correct", save_corrections_unwritable, "Could not save the corrections"),
    ("fine-tune without layers", "finetune", finetune_no_layers, "Choose the image and the corrected Labels"),
    ("fine-tune labels of another shape", "finetune", finetune_other_shape, "choose the labels that belong"),
    ("fine-tune nothing corrected", "finetune", finetune_nothing_corrected, "No corrected slice yet"),
    ("fine-tune all-ignore slice", "finetune", finetune_all_ignore, "has no labelled pixel"),
    ("fine-tune unwritable destination", "finetune", finetune_unwritable_destination, "Cannot write to"),
    ("evaluate nothing chosen", "evaluate", evaluate_nothing, "Choose a prediction"),
    ("evaluate same layer twice", "evaluate", evaluate_same_layer, "same layer"),
    ("evaluate NaN probability", "evaluate",
     evaluate_with(lambda env: env.image(np.full((32, 32), np.nan, np.float32), name="p"),
                   labels_layer(TRUTH, "truth")), "NaN or infinite"),
    ("evaluate probability above 1", "evaluate",
     evaluate_with(lambda env: env.image(np.full((32, 32), 3.0, np.float32), name="p"),
                   labels_layer(TRUTH, "truth")), "probability map in [0, 1]"),
    ("evaluate shapes differ", "evaluate",
     evaluate_with(labels_layer(np.zeros((16, 16), np.uint8), "p"), labels_layer(TRUTH, "truth")), "has shape"),
    ("evaluate truth without structure", "evaluate",
     evaluate_with(labels_layer(TRUTH, "p"), labels_layer(np.zeros((32, 32), np.uint8), "truth")),
     "no structure pixel"),
    ("evaluate truth all ignore", "evaluate",
     evaluate_with(labels_layer(TRUTH, "p"), labels_layer(np.full((32, 32), 2, np.uint8), "truth")),
     "no structure pixel"),
]

# Cases where the job ends in a result the user asked for (a layer may be added or updated).
PRODUCE = [
    ("predict with some NaN pixels", "predict",
     predict_image(np.where(np.eye(64, dtype=bool), np.nan,
                            np.random.default_rng(0).random((64, 64))).astype(np.float32)),
     "NaN or infinite pixel(s) were treated as the darkest value"),
    ("predict boolean image", "predict", predict_image(np.random.default_rng(0).random((64, 64)) > 0.5), "Added"),
    ("fine-tune with unknown label ids", "finetune", finetune_unknown_ids, "ids other than 0/1/2 and are ignored"),
    ("fine-tune labels removed while training", "finetune", finetune_then(remove_labels, verify=False),
     "was removed during training, so nothing was re-predicted"),
    ("fine-tune Stop pressed", "finetune", finetune_then(press_stop, steps=400),
     "Stopped before the fine-tune was checked: the starting model is kept"),
    ("fine-tune destination lost while training", "finetune",
     finetune_then(lose_destination, steps=10, save_to="models/tuned.pt"),
     "so the model was saved to"),
]


@pytest.fixture
def env(make_napari_viewer, qtbot, tmp_path, tiny_em, tiny_fundus, monkeypatch):
    viewer = make_napari_viewer()
    widgets = {key: viewer.window.add_plugin_dock_widget("napari-unet", name)[1] for key, name in WIDGETS.items()}
    return Env(viewer, widgets, tmp_path, tiny_em, tiny_fundus, qtbot)


@pytest.fixture
def excepthook_calls(monkeypatch):
    """Everything that reaches Python's or a thread's last-resort error handler."""
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: calls.append(args))
    monkeypatch.setattr(threading, "excepthook", lambda args: calls.append(args))
    return calls


def _layer_snapshot(viewer):
    return [(layer, layer.data, np.array(layer.data, copy=True)) for layer in viewer.layers]


def _run_case(env, action, widget, excepthook_calls):
    """Set the case up, do what the user does, wait for any job; return the status line."""
    act = action(env)
    result = act()
    if result is not None and hasattr(result, "running"):
        wait_for(env.qtbot, result)
    env.qtbot.wait(50)  # let queued signals arrive
    status = env.w[widget].status.value
    assert excepthook_calls == [], excepthook_calls
    assert "Unexpected error" not in status, status
    return status


@pytest.mark.parametrize("widget, action, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_with_one_clear_message(env, excepthook_calls, widget, action, expected):
    act = action(env)
    before = _layer_snapshot(env.viewer)  # the user's layers, as the case set them up
    status = _run_case(env, lambda _env: act, widget, excepthook_calls)
    assert expected in status, status
    assert len(env.viewer.layers) <= len(before)  # nothing was added
    for layer, original, data in before:
        # (a case may remove or replace its own input, as a user would)
        if layer in env.viewer.layers and layer.data is original:
            np.testing.assert_array_equal(np.asarray(layer.data), data, err_msg=layer.name)


@pytest.mark.parametrize("widget, action, expected", [c[1:] for c in PRODUCE], ids=[c[0] for c in PRODUCE])
def test_repaired_or_interrupted_jobs_say_what_happened(env, excepthook_calls, widget, action, expected):
    status = _run_case(env, action, widget, excepthook_calls)
    assert expected in status, status
    if widget == "finetune":  # whatever happened, the trained model is on disk where the status says
        assert get_session(env.viewer).fine_tuned_path.is_file()


def test_cases_cover_every_widget():
    assert {case[1] for case in CASES} == set(WIDGETS)
    assert len(CASES) + len(PRODUCE) >= 30


# ------------------------------------------------------------------------------ closing mid-job


def _closing_cases():
    def close_viewer(env, widget):
        env.viewer.close()

    def remove_dock(env, widget):
        env.viewer.window.remove_dock_widget(widget.native)

    return {"viewer closed": close_viewer, "dock widget removed": remove_dock}


@pytest.mark.parametrize("close", list(_closing_cases().values()), ids=list(_closing_cases()))
def test_closing_mid_prediction_ends_the_job(env, excepthook_calls, close):
    """The job is cancelled, its timer stops, nothing is added, nothing is raised."""
    image = env.stack(z=8, size=256)
    predict = env.w["predict"]
    job = env.predict_with_tiny(image)()
    close(env, predict)
    wait_for(env.qtbot, job, timeout_s=60)
    env.qtbot.wait(600)  # two poll intervals: a live timer would touch the deleted widgets now
    assert job.state.abandoned and job.state.cancelled() and not job.timer.isActive()
    assert excepthook_calls == []
    assert "stack prediction" not in [layer.name for layer in env.viewer.layers]


def test_closing_mid_fine_tune_writes_no_model_and_keeps_corrections(env, excepthook_calls):
    image, labels = env.predicted()
    paint_square(labels, 1, 20, 20)
    ft = env.finetune(image, labels, steps=400)
    job = ft.start()
    env.qtbot.waitUntil(lambda: len(job.state.events) >= 2, timeout=60_000)
    saved_corrections = get_session(env.viewer).tracker(labels).store().path
    assert saved_corrections.is_file()  # saved before training started
    env.viewer.close()
    wait_for(env.qtbot, job, timeout_s=60)
    env.qtbot.wait(600)
    assert job.state.abandoned and excepthook_calls == []
    assert job.state.events[-1].step < 400  # stopped early
    assert not list(env.tmp.rglob("*finetuned*.pt")) and not list(env.tmp.rglob("*.tmp"))
    assert saved_corrections.is_file()
