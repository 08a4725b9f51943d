"""The loop survives a restart: the next day, Load brings the corrections back, Predict
offers the model fine-tuned on this image, and a new fine-tune starts from it and learns
from every corrected slice; the model's history lists each round."""

import numpy as np

from napari_unet._widgets._session import get_session
from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.corrections import corrections_folder, fine_tuned_models
from napari_unet.core.finetune import describe_history

from .conftest import paint_square, reopen_in_new_window, wait_for


def _open_widgets(viewer):
    names = {"predict": "Predict", "correct": "Correct", "finetune": "Fine-tune"}
    return {key: viewer.window.add_plugin_dock_widget("napari-unet", name)[1] for key, name in names.items()}


def _correct_and_fine_tune(qtbot, viewer, widgets, image, slices):
    labels = viewer.layers[f"{image.name} prediction"]
    truth = next(layer for layer in viewer.layers if layer.name.endswith("ground truth"))
    for z in slices:
        paint_square(labels, z, 100, 100)
        labels.data[z] = truth.data[z]  # the rest of the correction, pasted in
    labels.refresh()
    finetune = widgets["finetune"]
    finetune.image.value, finetune.corrected_labels.value, finetune.steps.value = image, labels, 5
    wait_for(qtbot, finetune.start(), 300)
    return labels


def test_the_loop_resumes_the_next_day(make_napari_viewer, qtbot, isbi_folder, tiny_em):
    # Day 1: predict with a checkpoint, correct slices 0 and 1, fine-tune.
    viewer, load = reopen_in_new_window(make_napari_viewer, isbi_folder)
    image = viewer.layers[0]
    day1 = _open_widgets(viewer)
    day1["predict"].image.value = image
    day1["predict"].model.value, day1["predict"].checkpoint.value = "file", str(tiny_em)
    wait_for(qtbot, day1["predict"].predict())
    _correct_and_fine_tune(qtbot, viewer, day1, image, [0, 1])
    get_session(viewer).autosave()
    recorded = fine_tuned_models(corrections_folder(isbi_folder))
    assert len(recorded) == 1 and recorded[0].slices == [0, 1]
    viewer.close()

    # Day 2, a new window: the corrections come back, and Predict offers day 1's model.
    other, load = reopen_in_new_window(make_napari_viewer, isbi_folder)
    assert not load.restore_button.native.isHidden()
    restored = load.restore_corrections()
    assert get_session(other).tracker(restored).corrected == {0, 1}
    day2 = _open_widgets(other)
    predict = day2["predict"]
    predict.image.value = other.layers[0]
    assert predict.model.value == "fine-tuned for this image"
    _checkpoint, name = predict.selected_checkpoint()
    assert name.startswith("fine-tuned on") and "2 slice(s)" in name, name
    assert "its fine-tune rounds" in predict.status.value and "slices [0, 1]" in predict.status.value
    wait_for(qtbot, predict.predict())
    assert "fine-tuned on" in predict.status.value

    # A new round starts from day 1's model and learns from old and new corrections.
    labels = _correct_and_fine_tune(qtbot, other, day2, other.layers[0], [2])
    assert get_session(other).tracker(labels).corrected == {0, 1, 2}
    models = fine_tuned_models(corrections_folder(isbi_folder))
    assert len(models) == 2 and models[-1].slices == [0, 1, 2]
    rounds = describe_history(load_checkpoint(models[-1].path).info.history)
    assert len(rounds) == 2 and "slices [0, 1]" in rounds[0] and "slices [0, 1, 2]" in rounds[1]
    assert np.asarray(labels.data).shape == (4, 512, 512)
