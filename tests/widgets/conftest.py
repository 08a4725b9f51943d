"""Fixtures for widget tests: small real data folders and tiny checkpoints."""

import shutil

import numpy as np
import pytest
import torch

from napari_unet.core.checkpoint import default_metadata, save_checkpoint
from napari_unet.core.model import UNet, UNetConfig


@pytest.fixture
def isbi_folder(isbi_dir, tmp_path):
    """Four real ISBI slices in the ISBI PNG layout (train/image + train/label)."""
    root = tmp_path / "isbi_subset"
    for sub in ("image", "label"):
        (root / "train" / sub).mkdir(parents=True)
        for n in range(4):
            shutil.copy(isbi_dir / "train" / sub / f"{n}.png", root / "train" / sub / f"{n}.png")
    return root


@pytest.fixture
def drive_folder(drive_dir, tmp_path):
    """One real DRIVE test image in the DRIVE layout."""
    root = tmp_path / "drive_one"
    for sub, name in (("images", "01_test.tif"), ("1st_manual", "01_manual1.gif"), ("mask", "01_test_mask.gif")):
        (root / sub).mkdir(parents=True)
        shutil.copy(drive_dir / "test" / sub / name, root / sub / name)
    return root


def _tiny(tmp_path, channels, task):
    torch.manual_seed(0)
    model = UNet(UNetConfig(in_channels=channels, base_width=4, depth=2))
    meta = default_metadata(task, tile_size=128)
    return save_checkpoint(tmp_path / f"tiny_{task}.pt", model, meta)


@pytest.fixture(scope="module")
def em_slices(isbi_dir):
    """(30, 1024, 1024) uint8: real ISBI slices, each tiled with its mirror images."""
    import tifffile

    raw = tifffile.imread(isbi_dir / "train-volume.tif")
    return np.stack([np.block([[s, s[:, ::-1]], [s[::-1], s[::-1, ::-1]]]) for s in raw])


@pytest.fixture
def tiny_512(tmp_path):
    """A tiny untrained model whose probability straddles 0.5 on EM (about half the pixels)."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_width=4, depth=2))
    with torch.no_grad():
        model.outc.conv.bias += 0.0272  # its raw output centres on 0.4932
    return save_checkpoint(tmp_path / "tiny512.pt", model, default_metadata("em", tile_size=512))


@pytest.fixture
def tiny_em(tmp_path):
    return _tiny(tmp_path, 1, "em")


@pytest.fixture
def tiny_fundus(tmp_path):
    return _tiny(tmp_path, 3, "fundus")


@pytest.fixture
def widgets(make_napari_viewer):
    """A real viewer with the five widgets opened one by one from Plugins ▸ napari-unet."""
    viewer = make_napari_viewer()
    docked = {}
    for key, name in (("load", "Load"), ("predict", "Predict"), ("correct", "Correct"),
                      ("finetune", "Fine-tune"), ("evaluate", "Evaluate")):
        docked[key] = viewer.window.add_plugin_dock_widget("napari-unet", name)[1]
    docked["viewer"] = viewer
    return docked


def wait_for(qtbot, job, timeout_s=180):
    assert job is not None, "the widget refused to start"
    qtbot.waitUntil(lambda: not job.running, timeout=timeout_s * 1000)


def reopen_in_new_window(make_napari_viewer, path):
    """Open ``path`` with Load in a second viewer, as a user does after a crash or the next
    day. Returns (viewer, Load widget)."""
    other = make_napari_viewer()
    load = other.window.add_plugin_dock_widget("napari-unet", "Load")[1]
    load.path.value = str(path)
    load.load()
    return other, load


def paint_square(layer, z, y, x, value=None, size=6):
    """Paint like a user does (brush strokes recorded in the undo history).

    ``value`` None paints the opposite of what is there (so the stroke changes pixels).
    """
    if value is None:
        value = 1 - int(layer.data[(z, y, x) if layer.data.ndim == 3 else (y, x)])
    layer.brush_size = size
    for dy in range(0, 12, 3):
        coord = (z, y + dy, x) if layer.data.ndim == 3 else (y + dy, x)
        layer.paint(coord, value)
    return np.asarray(layer.data)
