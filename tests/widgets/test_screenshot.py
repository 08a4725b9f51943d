"""The whole window renders: `napari-unet gui --screenshot` (smoke mode) under Xvfb."""

import subprocess
import sys

import numpy as np
from PIL import Image


def test_gui_smoke_mode_saves_a_screenshot(tmp_path):
    """The README's first command in smoke mode: EM sample, built-in model, predict, picture."""
    shot = tmp_path / "window.png"
    result = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", "gui", "--screenshot", str(shot)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    picture = np.asarray(Image.open(shot))
    assert picture.shape[0] > 500 and picture.shape[1] > 800  # the whole window, not the canvas
    assert picture[..., :3].std() > 20  # something was drawn
    magenta = (picture[..., 0] > 150) & (picture[..., 1] < 110) & (picture[..., 2] > 150)
    assert magenta.mean() > 0.01  # the predicted membranes are on the canvas


def test_docked_window_with_a_prediction(widgets, qtbot, isbi_folder, tiny_em, tmp_path):
    """Dock everything, predict on real ISBI slices, and keep the picture for a human to look at."""
    from .conftest import wait_for

    viewer = widgets["viewer"]
    widgets["load"].path.value = str(isbi_folder)
    widgets["load"].load()
    widgets["predict"].model.value = "file"
    widgets["predict"].checkpoint.value = str(tiny_em)
    wait_for(qtbot, widgets["predict"].predict())
    path = tmp_path / "docked.png"
    viewer.screenshot(str(path), canvas_only=False)
    assert np.asarray(Image.open(path)).shape[1] > 600


TEXT_ROWS = ("help", "device_info", "eta", "status")  # the word-wrapped rows made by text_row


def _dock_of(native):
    from qtpy.QtWidgets import QDockWidget

    while native is not None and not isinstance(native, QDockWidget):
        native = native.parentWidget()
    return native


def _hidden_part(row) -> str:
    """'' when the whole wrapped text of ``row`` (a QLabel) can be seen; else what hides it.

    The text must fit the label (by the label's own heightForWidth and, independently, by the
    font metrics of the wrapped text), and the label must lie inside every parent up to the
    window, except that inside a scroll area it need only lie where the scroll bar reaches.
    """
    from qtpy.QtCore import QPoint, QRect, Qt
    from qtpy.QtWidgets import QAbstractScrollArea

    if not row.isVisible():
        return "not visible"
    box = row.contentsRect()
    flags = int(Qt.TextFlag.TextWordWrap.value) | int(Qt.AlignmentFlag.AlignLeft.value) | int(
        Qt.AlignmentFlag.AlignTop.value)
    text_height = row.fontMetrics().boundingRect(QRect(0, 0, box.width(), 100000), flags, row.text()).height()
    if text_height > box.height():
        return f"wrapped text is {text_height} px tall, its box {box.height()} px"
    if row.heightForWidth(row.width()) > row.height():
        return f"needs {row.heightForWidth(row.width())} px at width {row.width()}, has {row.height()} px"
    child, parent = row, row.parentWidget()
    while parent is not None:
        scroll = parent.parentWidget()
        if isinstance(scroll, QAbstractScrollArea) and parent is scroll.viewport():
            # Scrolled content: the scroll bar must reach all of it.
            reach = scroll.verticalScrollBar().maximum() + parent.height()
            bottom = child.geometry().bottom() + 1
            if bottom > reach:
                return f"{bottom} px of scrolled content, the scroll bar reaches {reach} px"
            child, parent = scroll, scroll.parentWidget()
            continue
        top_left = row.mapTo(parent, QPoint(0, 0))
        if not parent.rect().contains(QRect(top_left, row.size())):
            return f"cut by {type(parent).__name__} ({parent.width()}x{parent.height()} px) at {top_left.y()} px"
        child, parent = parent, parent.parentWidget()
    return ""


def test_five_widgets_from_the_menu_show_every_status_in_full(make_napari_viewer, qtbot, tmp_path):
    """Plugins ▸ napari-unet stacks the five widgets in one dock column; after predicting the
    fundus sample with the built-in model (and evaluating it) every status row shows its whole
    text: the row is as tall as its wrapped text at the width it gets, not one clipped line."""
    from qtpy.QtWidgets import QApplication

    from .conftest import wait_for

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    names = ("Load", "Predict", "Correct", "Fine-tune", "Evaluate")
    opened = {name: viewer.window.add_plugin_dock_widget("napari-unet", name)[1] for name in names}
    viewer.open_sample("napari-unet", "fundus_vessels")
    predict = opened["Predict"]
    predict.image.value = viewer.layers["fundus_sample"]
    predict.model.value = "fundus-vessels"
    wait_for(qtbot, predict.predict())
    assert "'fundus_sample prediction'" in predict.status.value
    evaluate = opened["Evaluate"]
    evaluate.prediction.value = viewer.layers["fundus_sample prediction"]
    evaluate.truth.value = viewer.layers["fundus_sample ground truth"]
    wait_for(qtbot, evaluate.run())
    assert evaluate.status.value.startswith("Overall")
    for _ in range(5):  # let the layouts settle
        QApplication.processEvents()
        qtbot.wait(20)

    path = tmp_path / "five_widgets.png"
    viewer.screenshot(str(path), canvas_only=False)
    assert np.asarray(Image.open(path)).shape[1] > 600
    # The five docks share one group of tabs (a column of five would be taller than a
    # screen): each is brought to the front as a user clicks its tab, then its rows checked.
    docks = {name: _dock_of(widget.native) for name, widget in opened.items()}
    assert all(docks.values())
    window = viewer.window._qt_window
    others = {dock for name, dock in docks.items() if name != "Load"}
    assert set(window.tabifiedDockWidgets(docks["Load"])) == others, "the five widgets are not in one group of tabs"
    assert window.minimumSizeHint().height() < 1100  # the window fits a 1080 px screen
    hidden, rows = {}, {}
    for name, widget in opened.items():
        docks[name].raise_()
        for _ in range(3):
            QApplication.processEvents()
            qtbot.wait(20)
        for attr in TEXT_ROWS:
            row = getattr(widget, attr, None)
            if row is not None:
                rows[f"{name}.{attr}"] = row
                if row.value and (why := _hidden_part(row.native)):
                    hidden[f"{name}.{attr}"] = why
    assert len(rows) >= 7
    assert not hidden, f"{hidden}; see {path}"
    docks["Predict"].raise_()
    QApplication.processEvents()
    status = rows["Predict.status"].native
    assert status.height() > 2 * status.fontMetrics().height()  # the prediction's report takes several lines
