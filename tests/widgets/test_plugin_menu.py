"""The plugin as napari users meet it: Plugins ▸ napari-unet, `napari -w napari-unet`, File ▸ Open."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

from napari_unet._widgets import CorrectWidget, EvaluateWidget, FineTuneWidget, LoadWidget, PredictWidget
from napari_unet._widgets._session import get_session

from .conftest import paint_square, wait_for

MENU = {"Load": LoadWidget, "Predict": PredictWidget, "Correct": CorrectWidget, "Fine-tune": FineTuneWidget,
        "Evaluate": EvaluateWidget}


def test_every_widget_opens_from_the_plugins_menu_and_shares_one_session(make_napari_viewer, qtbot, tmp_path,
                                                                       tiny_em):
    """Opened one by one from the menu (napari builds them and injects its viewer proxy),
    the widgets share one session: a prediction made in Predict is the one Correct tracks."""
    viewer = make_napari_viewer()
    opened = {name: viewer.window.add_plugin_dock_widget("napari-unet", name)[1] for name in MENU}
    for name, cls in MENU.items():
        assert isinstance(opened[name], cls), name
        assert opened[name].viewer is viewer  # the real viewer, not napari's proxy
    session = get_session(viewer)
    assert all(opened[name].session is session for name in ("Predict", "Correct", "Fine-tune"))

    rng = np.random.default_rng(0)
    image = viewer.add_image(rng.integers(0, 255, (2, 64, 64), dtype=np.uint8), name="stack")
    predict = opened["Predict"]
    predict.image.value = image
    predict.model.value = "file"
    predict.checkpoint.value = str(tiny_em)
    wait_for(qtbot, predict.predict())
    labels = viewer.layers["stack prediction"]
    assert opened["Correct"].layer.value is labels and opened["Fine-tune"].corrected_labels.value is labels
    paint_square(labels, 1, 20, 20)
    assert opened["Correct"].slices.count() == 1  # Correct sees the edit made on Predict's layer
    assert session.tracker(labels).corrected == {1}


DRIVER = textwrap.dedent("""
    import os, sys, time
    from napari._qt.qt_event_loop import get_qapp
    from qtpy.QtCore import QTimer

    app = get_qapp()
    wanted, deadline = int(os.environ["DOCKED_WANTED"]), time.monotonic() + 120

    def report():  # once the widgets are docked (importing them may take a while on a loaded machine)
        import napari
        viewer = napari.current_viewer()
        docked = sorted(viewer.window._wrapped_dock_widgets) if viewer is not None else []
        if len(docked) < wanted and time.monotonic() < deadline:
            QTimer.singleShot(250, report)
            return
        print("DOCKED", docked, flush=True)
        viewer.close()
        app.quit()

    QTimer.singleShot(250, report)
    sys.argv = ["napari", *sys.argv[1:]]
    from napari.__main__ import main
    main()
""")


@pytest.mark.parametrize("args, docked", [
    (["-w", "napari-unet"], ["Load (napari-unet)"]),
    (["-w", "napari-unet", "Predict", "Fine-tune"], ["Fine-tune (napari-unet)", "Predict (napari-unet)"]),
])
def test_napari_dash_w_opens_the_widgets(tmp_path, args, docked):
    """`napari -w napari-unet [WIDGET...]` as typed in a terminal (under Xvfb): no traceback."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, DOCKED_WANTED=str(len(docked)))
    result = subprocess.run([sys.executable, str(driver), *args], capture_output=True, text=True, timeout=180,
                            env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "Error" not in output, output[-3000:]
    assert f"DOCKED {docked}" in result.stdout, output[-3000:]


def test_file_open_then_predict_from_the_menu(make_napari_viewer, qtbot, isbi_dir, tmp_path, tiny_em):
    """File ▸ Open of a tif stack goes through our reader; Predict (from the menu) takes it."""
    path = tmp_path / "three slices.tif"
    tifffile.imwrite(path, tifffile.imread(isbi_dir / "train-volume.tif")[:3], photometric="minisblack")
    viewer = make_napari_viewer()
    [image] = viewer.open(str(path), plugin="napari-unet")
    predict = viewer.window.add_plugin_dock_widget("napari-unet", "Predict")[1]
    assert predict.image.value is image and predict.model.value == "em-membranes"
    predict.model.value = "file"
    predict.checkpoint.value = str(tiny_em)
    wait_for(qtbot, predict.predict())
    labels = viewer.layers["three slices prediction"]
    assert labels.data.shape == (3, 512, 512)
    assert labels.metadata["napari_unet"]["image_source"] == str(path)
