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
