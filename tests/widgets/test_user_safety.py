"""Bad input gets a message in the widget; nothing the user made is lost."""

import numpy as np
import torch

from napari_unet._widgets._session import get_session
from napari_unet.core.corrections import CorrectionStore

from .conftest import paint_square, reopen_in_new_window, wait_for


def _predicted(widgets, qtbot, isbi_folder, tiny_em):
    widgets["load"].path.value = str(isbi_folder)
    image, truth = widgets["load"].load()
    widgets["predict"].model.value = "file"
    widgets["predict"].checkpoint.value = str(tiny_em)
    wait_for(qtbot, widgets["predict"].predict())
    return image, truth, widgets["viewer"].layers[f"{image.name} prediction"]


def test_messages_for_bad_input(widgets, qtbot, isbi_folder, drive_folder, tiny_em, tmp_path, monkeypatch):
    viewer, predict = widgets["viewer"], widgets["predict"]
    finetune, evaluate = widgets["finetune"], widgets["evaluate"]
    assert predict.predict() is None and "No image chosen" in predict.status.value
    assert finetune.start() is None and "Choose the image" in finetune.status.value
    assert evaluate.run() is None and "Choose a prediction" in evaluate.status.value
    widgets["load"].path.value = str(tmp_path / "nothing-here.tif")
    assert widgets["load"].load() == [] and "does not exist" in widgets["load"].status.value

    # An RGB fundus image with a grey EM model.
    widgets["load"].path.value = str(drive_folder)
    fundus = widgets["load"].load()[0]
    predict.image.value = fundus
    predict.model.value = "file"
    predict.checkpoint.value = str(tiny_em)
    assert predict.predict() is None and "RGB" in predict.status.value
    predict.model.value = "file"
    predict.checkpoint.value = str(tmp_path / "missing.pt")
    assert predict.predict() is None and "checkpoint" in predict.status.value.lower()
    bad = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    predict.checkpoint.value = str(bad)
    assert predict.predict() is None and "not a napari-unet checkpoint" in predict.status.value
    with monkeypatch.context() as patch:  # a machine without a GPU, also where the tests have one
        patch.setattr(torch.cuda, "is_available", lambda: False)
        predict.device.value = "cuda"
        assert "No CUDA GPU" in predict.device_info.value
        predict.checkpoint.value = str(tiny_em)
        assert predict.predict() is None and "No CUDA GPU" in predict.status.value
        predict.device.value = "auto"

    # No corrected slice yet, then labels of another shape.
    image, truth, labels = _predicted(widgets, qtbot, isbi_folder, tiny_em)
    finetune.image.value, finetune.corrected_labels.value = image, labels
    assert finetune.start() is None and "No corrected slice" in finetune.status.value
    finetune.image.value = fundus
    assert finetune.start() is None and "shape" in finetune.status.value
    evaluate.prediction.value, evaluate.truth.value = labels, viewer.layers[f"{fundus.name} ground truth"]
    assert evaluate.run() is None and "shape" in evaluate.status.value
    assert len(viewer.layers) == 6  # nothing was removed


def test_repredict_keeps_edits_or_makes_a_new_layer(widgets, qtbot, isbi_folder, tiny_em):
    viewer, predict = widgets["viewer"], widgets["predict"]
    image, truth, labels = _predicted(widgets, qtbot, isbi_folder, tiny_em)
    edited = paint_square(labels, 3, 50, 50).copy()
    labels.data[0] = 1  # an unedited slice the prediction will overwrite
    wait_for(qtbot, predict.predict())
    np.testing.assert_array_equal(labels.data[3], edited[3])
    assert not np.all(labels.data[0] == 1)
    labels.undo()  # the prediction was one undoable step
    assert np.all(labels.data[0] == 1)
    predict.edited_policy.value = "make a new layer"
    wait_for(qtbot, predict.predict())
    assert len([layer for layer in viewer.layers if "prediction" in layer.name]) == 2
    np.testing.assert_array_equal(labels.data[3], edited[3])


def test_cancel_prediction_and_stop_fine_tune(widgets, qtbot, isbi_folder, tiny_em):
    viewer, predict, finetune = widgets["viewer"], widgets["predict"], widgets["finetune"]
    image, truth, labels = _predicted(widgets, qtbot, isbi_folder, tiny_em)
    before = np.array(labels.data)
    predict.tile.value = 64  # many tiles, so there is time to cancel
    job = predict.predict()
    predict.run_button.clicked.emit()  # the button is now Cancel
    wait_for(qtbot, job)
    assert "cancelled" in predict.status.value and predict.run_button.text == "Predict"
    np.testing.assert_array_equal(labels.data, before)

    paint_square(labels, 0, 100, 100)
    paint_square(labels, 1, 100, 100)
    finetune.steps.value = 400
    job = finetune.start()
    qtbot.waitUntil(lambda: len(finetune.history) >= 3, timeout=60000)
    finetune.run_button.clicked.emit()  # Stop
    wait_for(qtbot, job)
    assert finetune.status.value.startswith("Stopped before the fine-tune was checked: the starting model is kept")
    assert finetune.history[-1].step < 400
    assert get_session(viewer).fine_tuned_path.is_file()


def test_autosave_and_restore(widgets, qtbot, isbi_folder, tiny_em, make_napari_viewer):
    viewer = widgets["viewer"]
    image, truth, labels = _predicted(widgets, qtbot, isbi_folder, tiny_em)
    paint_square(labels, 2, 80, 80)
    session = get_session(viewer)
    assert session.autosave_timer.interval() <= 60_000 and session.autosave_timer.isActive()
    session.autosave()  # what the timer does every minute
    store = CorrectionStore(isbi_folder.parent / "isbi_subset.napari-unet")
    assert store.exists()
    saved, state, edited = store.load()
    np.testing.assert_array_equal(saved, labels.data)
    assert state["corrected_slices"] == [2]
    np.testing.assert_array_equal(edited, get_session(viewer).tracker(labels).edited_mask())
    assert edited[2].any() and not edited[[0, 1, 3]].any()

    # Reopening the image (as after a crash) offers the corrections back, edited pixels included.
    other, load = reopen_in_new_window(make_napari_viewer, isbi_folder)
    assert not load.restore_button.native.isHidden() and "Saved corrections found (1 corrected" in load.status.value
    restored = load.restore_corrections()
    np.testing.assert_array_equal(restored.data, labels.data)
    tracker = get_session(other).tracker(restored)
    assert tracker.corrected == {2}
    np.testing.assert_array_equal(tracker.edited_mask(), edited)


def test_ignore_unedited_parts(widgets, qtbot, isbi_folder, tiny_em):
    viewer, correct = widgets["viewer"], widgets["correct"]
    image, truth, labels = _predicted(widgets, qtbot, isbi_folder, tiny_em)
    paint_square(labels, 1, 200, 200)
    viewer.dims.set_current_step(0, 1)
    correct.ignore_unedited_parts()
    assert (labels.data[1] == 2).mean() > 0.9  # far from the edit: ignored
    assert labels.data[1, 200, 200] != 2
    assert (labels.data[0] != 2).all()
    labels.undo()
    assert (labels.data[1] != 2).all()


def test_save_and_export_fields_refuse_an_input(widgets, qtbot, isbi_folder, tiny_em):
    """Fine-tune's "Save model to" and "Export to" never write over (or into) what is being
    used: the model in Predict, the image's file or folder. One message, nothing written."""
    finetune = widgets["finetune"]
    image, truth, labels = _predicted(widgets, qtbot, isbi_folder, tiny_em)
    paint_square(labels, 1, 100, 100)
    finetune.image.value, finetune.corrected_labels.value = image, labels
    model_bytes, models = tiny_em.read_bytes(), sorted(tiny_em.parent.glob("*.pt"))

    finetune.save_to.value = str(tiny_em)  # the model in use
    assert finetune.start() is None and finetune.job is None
    status = finetune.status.value
    assert "is the model in use" in status and status.count("never replaces an input") == 1, status
    finetune.export_to.value = str(isbi_folder / "train" / "image" / "model.zip")  # into the image's folder
    assert finetune.export() is None
    status = finetune.status.value
    assert "is inside the image" in status and status.count("never replaces an input") == 1, status

    assert tiny_em.read_bytes() == model_bytes and sorted(tiny_em.parent.glob("*.pt")) == models
    assert not list(isbi_folder.rglob("*.zip"))
    finetune.save_to.value = str(tiny_em.parent / "tuned.pt")  # another name is fine
    finetune.steps.value = 5
    wait_for(qtbot, finetune.start())
    assert (tiny_em.parent / "tuned.pt").is_file() and tiny_em.read_bytes() == model_bytes, finetune.status.value
