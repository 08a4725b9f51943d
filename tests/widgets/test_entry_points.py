"""One stack, every entry point, one mask: Predict, the CLI with a .tif and a .zarr output,
a zarr input, and a 2-worker dask cluster all predict through `core.pipeline`."""

import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.cli import main

from .conftest import wait_for


@pytest.fixture
def em_stack(isbi_stack, tmp_path):
    """Three real ISBI slices (256 x 256) as a tif stack and as a zarr volume."""
    slices = np.ascontiguousarray(isbi_stack.images[25:28, :256, :256, 0])
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, slices, photometric="minisblack")
    store = tmp_path / "stack.zarr"
    zarr.open_array(str(store), mode="w", shape=slices.shape, chunks=(1, 256, 256), dtype=slices.dtype)[:] = slices
    return tif, store


def _cli(*args) -> None:
    assert main(["predict", *map(str, args), "--model", "em-membranes", "--device", "cpu"]) == 0


def test_every_entry_point_gives_the_same_mask(make_napari_viewer, qtbot, em_stack, tmp_path):
    tif, store = em_stack
    _cli(tif, "--out", tmp_path / "in_memory.tif", "--probabilities", tmp_path / "p.tif",
         "--instances", tmp_path / "c.tif")
    reference = tifffile.imread(tmp_path / "in_memory.tif")
    masks = {
        "CLI, .zarr output": (tif, tmp_path / "streamed.zarr"),
        "CLI, zarr input": (store, tmp_path / "from_zarr.tif"),
    }
    for name, (source, out) in masks.items():
        _cli(source, "--out", out)
        masks[name] = np.asarray(zarr.open_array(str(out), mode="r")[:] if out.suffix == ".zarr"
                                 else tifffile.imread(out))
    pytest.importorskip("distributed", reason="dask.distributed is not installed: pip install 'napari-unet[all]'")
    _cli(store, "--out", tmp_path / "cluster.zarr", "--workers", "2", "--probabilities", tmp_path / "cp.zarr",
         "--instances", tmp_path / "cc.zarr")
    masks["2-worker cluster"] = zarr.open_array(str(tmp_path / "cluster.zarr"), mode="r")[:]

    viewer = make_napari_viewer()
    layer = viewer.open(str(tif), plugin="napari-unet")[0]
    predict = viewer.window.add_plugin_dock_widget("napari-unet", "Predict")[1]
    predict.image.value, predict.model.value, predict.device.value = layer, "em-membranes", "cpu"
    wait_for(qtbot, predict.predict())
    shown = [lay for lay in viewer.layers if lay.name == f"{layer.name} prediction"]
    masks["Predict widget"] = np.asarray(shown[0].data)

    assert reference.any() and not reference.all()
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, reference, err_msg=name)
    # The cluster writes probabilities and cells too, equal to one process's.
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "cp.zarr"), mode="r")[:],
                               tifffile.imread(tmp_path / "p.tif"), atol=1e-5)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "cc.zarr"), mode="r")[:],
                                  tifffile.imread(tmp_path / "c.tif"))


def test_painting_the_fov_larger_in_predict_is_used(make_napari_viewer, qtbot, drive_dir, tmp_path):
    """A photograph with a dark rim (vignetting): the FOV found leaves the rim out and no
    vessel is found there; the user paints the FOV layer larger and predicts again, and
    vessels appear in the added ring."""
    from scipy import ndimage

    from napari_unet.core.data import read_mask, read_stack

    image = np.asarray(read_stack(drive_dir / "training" / "images" / "22_training.tif")).astype(np.float32)
    vessels = read_mask(drive_dir / "training" / "1st_manual" / "22_manual1.gif")[0]
    fov = read_mask(drive_dir / "training" / "mask" / "22_training_mask.gif")[0]
    ring = fov & (ndimage.distance_transform_edt(fov) <= 60)
    image[ring] *= 0.25
    path = tmp_path / "dark_rim.tif"
    tifffile.imwrite(path, image.astype(np.uint8), photometric="rgb")

    viewer = make_napari_viewer()
    layer = viewer.open(str(path), plugin="napari-unet")[0]
    predict = viewer.window.add_plugin_dock_widget("napari-unet", "Predict")[1]
    predict.image.value, predict.model.value, predict.device.value = layer, "fundus-vessels", "cpu"
    wait_for(qtbot, predict.predict())
    prediction = next(lay for lay in viewer.layers if lay.name == f"{layer.name} prediction")
    found = next(lay for lay in viewer.layers if lay.name == f"{layer.name} field of view")
    in_ring = vessels & ring
    assert np.asarray(prediction.data)[in_ring].mean() < 0.1  # measured 0.0
    found.data = fov.astype(np.uint8)  # the user paints the FOV out to the retina's edge
    wait_for(qtbot, predict.predict())
    assert np.asarray(prediction.data)[in_ring].mean() > 0.15
    assert not np.asarray(prediction.data)[~fov].any()
    assert "your field of view" in predict.status.value
