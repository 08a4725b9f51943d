"""The npe2 manifest, the reader and the writer, as napari uses them."""

import importlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from npe2 import PluginManifest

import napari_unet
from napari_unet._reader import get_reader, read_layers
from napari_unet._writer import write_labels

MANIFEST = Path(napari_unet.__file__).parent / "napari.yaml"


def test_every_python_name_imports():
    manifest = PluginManifest.from_file(MANIFEST)
    names = [command.python_name for command in manifest.contributions.commands]
    assert len(names) >= 7
    for name in names:
        module, attr = name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_manifest_is_registered_for_napari():
    from importlib.metadata import entry_points

    points = [ep for ep in entry_points(group="napari.manifest") if ep.name == "napari-unet"]
    assert points and points[0].value == "napari_unet:napari.yaml"


def test_reader_declines_what_it_does_not_take(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "missing.zarr")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without images
    assert get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None
    assert get_reader(12345) is None


def test_reader_isbi_and_drive_layouts(isbi_dir, drive_dir):
    image, truth = read_layers(str(isbi_dir))
    assert image[0].shape == (30, 512, 512) and image[2] == "image" and truth[2] == "labels"
    assert truth[0].mean() == pytest.approx(0.2196, abs=0.002)  # membranes = 1
    layers = get_reader(str(drive_dir / "test"))(str(drive_dir / "test"))
    assert [kind for _, _, kind in layers] == ["image", "labels", "labels"]
    assert layers[0][1]["rgb"] and layers[0][0].shape == (20, 584, 565, 3)


def test_reader_single_files(isbi_dir, drive_dir):
    manual = get_reader(str(drive_dir / "test" / "1st_manual" / "01_manual1.gif"))
    (data, meta, kind), = manual(str(drive_dir / "test" / "1st_manual" / "01_manual1.gif"))
    assert kind == "labels" and set(np.unique(data)) == {0, 1}
    (fov, meta, kind), = read_layers(str(drive_dir / "test" / "mask" / "01_test_mask.gif"))
    assert kind == "labels" and meta["metadata"]["napari_unet"]["role"] == "fov"
    (labels, _, _), = read_layers(str(isbi_dir / "train-labels.tif"))
    assert labels.mean() == pytest.approx(0.2196, abs=0.002)  # ISBI's 0 = membrane converted
    (image, meta, kind), = read_layers(str(drive_dir / "test" / "images" / "01_test.tif"))
    assert kind == "image" and meta["rgb"] and image.shape == (584, 565, 3)


def test_writer_round_trip(tmp_path):
    labels = np.zeros((3, 20, 30), np.int32)
    labels[1, 5:10, 5:10] = 1
    labels[2, 0, :] = 2
    path = write_labels(str(tmp_path / "corrected.tif"), labels, {})[0]
    back = tifffile.imread(path)
    assert back.dtype == np.uint8 and back.shape == (3, 20, 30)
    np.testing.assert_array_equal(back, labels)
