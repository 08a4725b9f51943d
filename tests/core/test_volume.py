"""Lazy volumes and streamed prediction: zarr / OME-Zarr / tif / folders, bounded memory."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_unet.cli import main
from napari_unet.core.checkpoint import default_metadata, load_checkpoint, save_checkpoint
from napari_unet.core.data import DataError
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.pipeline import Pipeline, predict
from napari_unet.core.settings import PredictSettings
from napari_unet.core.stream import VolumeOutputs, predict_volume
from napari_unet.core.volume import (
    SIZES,
    Sizes,
    is_volume_path,
    open_volume,
    padding_mask,
    pixel_size_of,
    volume_levels,
)


@pytest.fixture(scope="module")
def slices(isbi_stack):
    """Four real ISBI slices, (Z, Y, X) uint8, cropped to 256x256 to keep tests fast."""
    return np.ascontiguousarray(isbi_stack.images[20:24, :256, :256, 0])


def _zarr(path, array, chunks=(1, 128, 128)):
    store = zarr.open_array(str(path), mode="w", shape=array.shape, chunks=chunks, dtype=array.dtype)
    store[:] = array
    return path


def _ome_zarr(path, levels, unit="nanometer", size=6.0):
    group = zarr.open_group(str(path), mode="w")
    datasets = []
    for i, level in enumerate(levels):
        array = group.create_array(str(i), shape=level.shape, chunks=(1, 64, 64), dtype=level.dtype)
        array[:] = level
        datasets.append({"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [40.0, size * 2**i, size * 2**i]}]})
    axes = [{"name": "z", "type": "space", "unit": unit}, {"name": "y", "type": "space", "unit": unit},
            {"name": "x", "type": "space", "unit": unit}]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    return path


def test_zarr_tif_and_folder_open_lazily_with_the_same_pixels(slices, tmp_path):
    import dask.array as da

    tifffile.imwrite(tmp_path / "plain.tif", slices, photometric="minisblack")
    tifffile.imwrite(tmp_path / "zlib.tif", slices, photometric="minisblack", compression="zlib")
    (tmp_path / "folder").mkdir()
    for z, plane in enumerate(slices):
        tifffile.imwrite(tmp_path / "folder" / f"s{z}.tif", plane)
    for source in (_zarr(tmp_path / "v.zarr", slices), tmp_path / "plain.tif", tmp_path / "zlib.tif",
                   tmp_path / "folder"):
        volume = open_volume(source)
        assert isinstance(volume.data, da.Array), source
        assert volume.data.shape == (*slices.shape, 1)
        np.testing.assert_array_equal(np.asarray(volume.data[2, ..., 0]), slices[2])


def test_which_files_open_lazily_is_decided_by_the_sizes_passed(slices, tmp_path):
    """The users' sizes read these small files whole; smaller sizes, passed as a parameter,
    make the same files lazy by bytes (a tif, a folder) or by slice pixels (a tif)."""
    tifffile.imwrite(tmp_path / "plain.tif", slices, photometric="minisblack")
    (tmp_path / "folder").mkdir()
    for z, plane in enumerate(slices):
        tifffile.imwrite(tmp_path / "folder" / f"s{z}.tif", plane)
    few_bytes, few_pixels = Sizes(lazy_bytes=slices.nbytes // 2), Sizes(large_slice=256 * 256 - 1)
    for source in (tmp_path / "plain.tif", tmp_path / "folder"):
        assert not is_volume_path(source) and is_volume_path(source, few_bytes), source
    assert is_volume_path(tmp_path / "plain.tif", few_pixels) and not is_volume_path(tmp_path / "folder", few_pixels)
    assert is_volume_path(_zarr(tmp_path / "v.zarr", slices))  # zarr: always
    settings = PredictSettings()  # its block sizes are the users' sizes: one source for the numbers
    assert (settings.block, settings.block_limit) == (SIZES.block, SIZES.large_slice)


def test_ome_zarr_gives_every_level_and_its_pixel_size(slices, tmp_path):
    levels = [slices, slices[:, ::2, ::2].copy()]
    volume = open_volume(_ome_zarr(tmp_path / "img.ome.zarr", levels, unit="micrometer", size=0.006))
    assert [level.shape for level in volume.levels] == [(4, 256, 256, 1), (4, 128, 128, 1)]
    assert volume.pixel_size_nm == pytest.approx((6.0, 6.0))
    assert pixel_size_of(tmp_path / "img.ome.zarr") == pytest.approx(6.0)


def test_tif_pixel_size_from_imagej_and_ome_headers(slices, tmp_path):
    tifffile.imwrite(tmp_path / "ij.tif", slices, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"unit": "um"})
    tifffile.imwrite(tmp_path / "ome.tif", slices, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 5.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 5.0,
        "PhysicalSizeYUnit": "nm"})
    tifffile.imwrite(tmp_path / "none.tif", slices, photometric="minisblack")
    assert pixel_size_of(tmp_path / "ij.tif") == pytest.approx(4.0)
    assert pixel_size_of(tmp_path / "ome.tif") == pytest.approx(5.0)
    assert pixel_size_of(tmp_path / "none.tif") is None


def test_volumes_that_are_not_one_grey_or_rgb_stack_are_refused(tmp_path):
    group = zarr.open_group(str(tmp_path / "t.zarr"), mode="w")
    group.create_array("0", shape=(3, 2, 64, 64), dtype="uint8")
    group.attrs["multiscales"] = [{"axes": ["t", "z", "y", "x"], "datasets": [{"path": "0"}]}]
    with pytest.raises(DataError, match="3 points along 't'"):
        open_volume(tmp_path / "t.zarr")
    _zarr(tmp_path / "c.zarr", np.zeros((2, 64, 64, 5), np.uint8), chunks=(1, 64, 64, 5))
    with pytest.raises(DataError, match=r"shape \(2, 64, 64, 5\)"):
        open_volume(tmp_path / "c.zarr")
    (tmp_path / "mixed").mkdir()
    tifffile.imwrite(tmp_path / "mixed" / "a.tif", np.zeros((64, 64), np.uint8))
    tifffile.imwrite(tmp_path / "mixed" / "b.tif", np.zeros((32, 64), np.uint8))
    with pytest.raises(DataError, match="differ in size"):
        open_volume(tmp_path / "mixed")
    with pytest.raises(DataError, match="does not exist"):
        open_volume(tmp_path / "missing.zarr")


def test_black_registration_padding_does_not_shift_the_levels(slices):
    stack = slices[..., None]
    padded = stack.copy()
    padded[:, :, :90] = 0  # aligned slices: a third of each is black fill
    padded[1, 100:104, 100:104] = 0  # a dark spot inside the image is data
    mask = padding_mask(padded[1])
    assert mask[:, :90].all() and not mask[100:104, 100:104].any() and mask[:, 90:].mean() < 0.01
    without, with_padding = volume_levels(padded[:, :, 90:]), volume_levels(padded)
    np.testing.assert_allclose(with_padding, without, atol=1.0)
    assert with_padding[0][0] > 10  # counted, the zeros would have pulled the low level to 0
    with pytest.raises(DataError, match="padding"):
        volume_levels(np.zeros((3, 64, 64, 1), np.uint8))


def _tiny_checkpoint():
    torch.manual_seed(0)
    from napari_unet.core.checkpoint import Checkpoint

    return Checkpoint(UNet(UNetConfig(base_width=4, depth=2)).eval(), default_metadata("em"), "tiny")


@pytest.mark.parametrize("shared_levels", [False, True], ids=["slice-levels", "volume-levels"])
def test_streamed_prediction_equals_predicting_the_whole_stack(slices, tmp_path, shared_levels):
    """Each slice streamed is the slice predicted in memory: normalised on its own by
    default, or with the volume's levels when the pipeline is given them."""
    model = load_checkpoint("em-membranes")
    volume = open_volume(_zarr(tmp_path / "v.zarr", slices))
    levels = volume_levels(volume.data) if shared_levels else None
    mask = zarr.open_array(str(tmp_path / "m.zarr"), mode="w", shape=slices.shape, chunks=(1, 256, 256),
                           dtype="uint8")
    probabilities = np.zeros(slices.shape, np.float32)
    written = []
    pipeline = Pipeline(model, PredictSettings(threshold=0.5, levels=levels, device="cpu"))
    report = predict_volume(pipeline, volume.data, VolumeOutputs(mask, probabilities), on_slice=written.append)
    expected = predict(model, slices[..., None], levels=levels, threshold=0.5, device="cpu")
    np.testing.assert_array_equal(probabilities, expected.probabilities)
    np.testing.assert_array_equal(mask[:], (expected.probabilities > 0.5).astype(np.uint8))
    np.testing.assert_array_equal(mask[:], expected.mask)
    assert report.done == written == [0, 1, 2, 3] and not report.cancelled


def test_cancel_keeps_the_slices_done_and_blank_slices_stay_empty(slices):
    stack = slices[..., None].copy()
    stack[1] = 0  # a missing section
    outputs = VolumeOutputs(np.full(slices.shape, 7, np.uint8), instances=np.zeros(slices.shape, np.uint32))
    seen = []
    pipeline = Pipeline(_tiny_checkpoint(), PredictSettings(instances=True, device="cpu"))
    report = predict_volume(pipeline, stack, outputs, on_slice=seen.append, cancel=lambda: len(seen) >= 3)
    assert report.cancelled and report.done == [0, 1, 2] and report.blank == [1]
    assert (outputs.mask[1] == 0).all() and (outputs.mask[3] == 7).all()  # slice 3 was never written
    ids = [set(np.unique(outputs.instances[z])) - {0} for z in (0, 2)]
    assert not ids[0] & ids[1]  # cell ids unique across slices


def test_cli_streams_zarr_to_zarr_and_matches_the_tif_path(slices, tmp_path, tiny_model_path):
    _zarr(tmp_path / "v.zarr", slices)
    tifffile.imwrite(tmp_path / "v.tif", slices, photometric="minisblack")
    args = ["--model", tiny_model_path, "--threshold", "0.5"]
    assert main(["predict", str(tmp_path / "v.zarr"), "--out", str(tmp_path / "m.zarr"),
                 "--probabilities", str(tmp_path / "p.tif"), *args]) == 0
    assert main(["predict", str(tmp_path / "v.tif"), "--out", str(tmp_path / "m2.zarr"), *args]) == 0
    streamed = zarr.open_array(str(tmp_path / "m.zarr"), mode="r")
    assert streamed.chunks[0] == 1 and streamed.dtype == np.uint8
    np.testing.assert_array_equal(streamed[:], zarr.open_array(str(tmp_path / "m2.zarr"), mode="r")[:])
    assert tifffile.imread(tmp_path / "p.tif").shape == slices.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr", "m2.zarr", "p.tif", "v.tif", "v.zarr"]
    # Never overwritten without --force; with it, the old store is replaced whole.
    assert main(["predict", str(tmp_path / "v.zarr"), "--out", str(tmp_path / "m.zarr"), *args]) == 2
    assert main(["predict", str(tmp_path / "v.zarr"), "--out", str(tmp_path / "m.zarr"), "--force", *args]) == 0


def test_an_interrupted_stream_leaves_no_output(slices, tmp_path, tiny_model_path, monkeypatch):
    import napari_unet.core.pipeline as pipeline

    _zarr(tmp_path / "v.zarr", slices)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "cell_instances", interrupted)  # while streaming, after the first mask
    code = main(["predict", str(tmp_path / "v.zarr"), "--out", str(tmp_path / "m.zarr"), "--instances",
                 str(tmp_path / "c.zarr"), "--model", tiny_model_path])
    assert code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.zarr"]


@pytest.fixture()
def tiny_model_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    return str(save_checkpoint(path, UNet(UNetConfig(base_width=4, depth=2)), default_metadata("em")))


def _stream_memory(tmp_path, model_path: str, slices: int) -> dict:
    """Stream a random (slices, 2048, 2048) uint8 zarr through the model in a fresh
    process; returns how much its peak memory grew while predicting (MB)."""
    source = tmp_path / f"v{slices}.zarr"
    volume = zarr.open_array(str(source), mode="w", shape=(slices, 2048, 2048), chunks=(1, 1024, 1024),
                             dtype="uint8")
    rng = np.random.default_rng(0)
    for z in range(slices):
        volume[z] = rng.integers(0, 255, (2048, 2048), dtype=np.uint8)
    script = textwrap.dedent(f"""
        import json, numpy as np
        from napari_unet.core.checkpoint import load_checkpoint
        from napari_unet.core.pipeline import Pipeline
        from napari_unet.core.settings import PredictSettings
        from napari_unet.core.stream import VolumeOutputs, predict_volume
        from napari_unet.core.volume import create_output, open_volume
        model = load_checkpoint({model_path!r})
        volume = open_volume({str(source)!r})
        out = create_output({str(tmp_path / f"out{slices}.zarr")!r}, volume.data.shape[:3], np.uint8)
        def status(key):  # this process's own figures (ru_maxrss would count the parent's, inherited at fork)
            return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
        before = status("VmHWM:")
        pipeline = Pipeline(model, PredictSettings(device="cpu", tile=512))
        report = predict_volume(pipeline, volume.data, VolumeOutputs(out))
        peak = status("VmHWM:")
        print(json.dumps({{"grew_mb": (peak - before) / 2**20, "done": len(report.done)}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["done"] == slices
    return measured


def test_memory_does_not_grow_with_the_volume(tmp_path, tiny_model_path):
    """Predicting whole, 16 slices of 2048² would hold float32 copies of the input and the
    output (> 500 MB, 400 MB more than 4 slices); streamed, memory grows by one slice's
    work whatever the number of slices."""
    small, large = (_stream_memory(tmp_path, tiny_model_path, n)["grew_mb"] for n in (4, 16))
    assert large < 500, (small, large)
    assert large - small < 100, (small, large)
