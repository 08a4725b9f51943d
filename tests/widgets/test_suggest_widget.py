"""Correct ▸ "Correct these next": after a prediction the slices are ranked in a worker,
most uncertain first; a click goes to the slice, corrected slices drop out, and the
uncertainty can be shown as an image."""

import threading

import numpy as np
from qtpy.QtCore import Qt
from scipy import ndimage

from .conftest import wait_for


def test_correct_these_next(widgets, qtbot, isbi_folder, monkeypatch):
    import napari_unet._widgets.correct as correct_module

    viewer, predict, correct = widgets["viewer"], widgets["predict"], widgets["correct"]
    ranked_in = []  # the threads the rankings ran in
    real_suggest = correct_module.suggest

    def spy(*args, **kwargs):
        ranked_in.append(threading.current_thread())
        return real_suggest(*args, **kwargs)

    monkeypatch.setattr(correct_module, "suggest", spy)
    widgets["load"].path.value = str(isbi_folder)
    image, _truth = widgets["load"].load()
    data = np.array(image.data)
    data[2] = ndimage.gaussian_filter(data[2], 4)  # the model cannot see membranes there
    image.data = data
    predict.image.value = image
    predict.model.value = "em-membranes"
    predict.device.value = "cpu"
    wait_for(qtbot, predict.predict())
    prediction = viewer.layers[f"{image.name} prediction"]
    assert correct.layer.value is prediction

    # The ranking starts by itself when the prediction ends, and runs in a worker.
    qtbot.waitUntil(lambda: correct.rank_job is not None, timeout=5000)
    wait_for(qtbot, correct.rank_job)
    assert ranked_in and all(thread is not threading.main_thread() for thread in ranked_in)
    items = [correct.suggestions.item(i) for i in range(correct.suggestions.count())]
    order = [item.data(Qt.ItemDataRole.UserRole) for item in items]
    assert sorted(order) == [0, 1, 2, 3]
    assert order[0] == 2, [item.text() for item in items]  # the blurred slice first
    assert items[0].text().startswith("slice 2: uncertainty ")
    assert "Ranked 4 slice(s)" in correct.rank_status.value

    # One click goes to the slice.
    viewer.dims.set_current_step(0, 0)
    correct.suggestions.itemClicked.emit(items[0])
    assert viewer.dims.current_step[0] == 2

    # Marked corrected, it drops out of the list; nothing is predicted again.
    correct.mark.clicked.emit()
    assert 2 in correct.tracker.corrected
    order = [correct.suggestions.item(i).data(Qt.ItemDataRole.UserRole) for i in range(correct.suggestions.count())]
    assert order and 2 not in order and sorted(order) == [0, 1, 3]
    assert len(ranked_in) == 1 and not correct.rank_job.running

    # The toggle adds the per-pixel uncertainty under the labels; the labels stay active.
    correct.show_uncertainty.value = True
    wait_for(qtbot, correct.rank_job)
    qtbot.waitUntil(lambda: f"{image.name} uncertainty" in viewer.layers, timeout=5000)
    shown = viewer.layers[f"{image.name} uncertainty"]
    assert shown.data.shape == (4, 512, 512) and shown.data.dtype == np.float32
    assert 0 <= shown.data.min() and shown.data.max() <= 1
    assert shown.data[2].mean() > max(shown.data[z].mean() for z in (0, 1, 3))  # the blurred slice is the unsure one
    assert viewer.layers.index(shown) < viewer.layers.index(prediction)
    assert viewer.layers.selection.active is prediction
    assert 2 not in [correct.suggestions.item(i).data(Qt.ItemDataRole.UserRole)
                     for i in range(correct.suggestions.count())]
    correct.show_uncertainty.value = False
    assert f"{image.name} uncertainty" not in viewer.layers
