"""Montage slices predicted block by block: the same numbers as the whole slice, bounded memory."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import torch
import zarr

import napari_unet.core.blocks as blocks
import napari_unet.core.volume as volume_module
from napari_unet.cli import main
from napari_unet.cli.predict import predict as cli_predict
from napari_unet.cli.pyramid import pyramid as cli_pyramid
from napari_unet.core.checkpoint import Checkpoint, default_metadata, load_checkpoint, save_checkpoint
from napari_unet.core.data import DataError
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.pipeline import Pipeline
from napari_unet.core.predict import PredictionCancelled
from napari_unet.core.settings import PredictSettings
from napari_unet.core.stream import VolumeOutputs, predict_volume
from napari_unet.core.volume import Sizes, open_volume

#: Test-sized slices are montages: every slice over 2 blocks of 256 px is read by region and
#: predicted in blocks, so it crosses many block borders; display levels fit 256 px.
SMALL_SIZES = Sizes(large_slice=2 * 256 * 256, block=256, screen=256)
#: The same block sizes as prediction settings.
SMALL = {"block": SMALL_SIZES.block, "block_limit": SMALL_SIZES.large_slice}


@pytest.fixture(scope="module")
def montage(isbi_stack):
    """(1, 700, 900, 1) uint8: real ISBI slices and a mirror image side by side, cropped
    so that neither side is a multiple of a block."""
    a, b = isbi_stack.images[3, :, :, 0], isbi_stack.images[17, :, :, 0]
    return np.ascontiguousarray(np.block([[a, b[:, ::-1]], [b[::-1], a]])[:700, :900])[None, ..., None]


def _tiny(method: str) -> Checkpoint:
    """A random width-4 U-Net with every stage that needs care at a block border: flips in
    both axes, an output shift, a tile margin, and the given cell method."""
    torch.manual_seed(0)
    meta = default_metadata("em", tile_size=128, tile_margin=16, test_time_flips=["x", "y"],
                            output_shift_px=[0.4, -0.7], instance_method=method)
    return Checkpoint(UNet(UNetConfig(base_width=4, depth=2)).eval(), meta, "tiny")


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images split the pixels the same way (ids may differ)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


class _Counting:
    """A `TilePredictor` that counts the tiles it predicts."""

    def __init__(self, predictor) -> None:
        self.predictor, self.tiles = predictor, 0

    def __call__(self, batch):
        self.tiles += len(batch)
        return self.predictor(batch)

    def batch_size(self, tile: int) -> int:
        return self.predictor.batch_size(tile)


def _streamed(pipeline: Pipeline, images: np.ndarray):
    shape = images.shape[:3]
    outputs = VolumeOutputs(np.zeros(shape, np.uint8), np.zeros(shape, np.float32), np.zeros(shape, np.uint32))
    report = predict_volume(pipeline, images, outputs)
    return outputs, report


@pytest.mark.parametrize("model", ["em-membranes", "tiny-watershed", "tiny-components"])
def test_blocks_give_exactly_the_whole_slice_prediction(montage, model):
    """Each tile of the whole slice's grid predicted once (those on block borders are kept
    for the next block); probabilities equal to float rounding (tiles are batched
    differently), masks equal, cells equal up to their ids across 4-9 blocks ("components", the
    built-in model's), or up to where watershed lines go on ties (the flooding order follows
    the array's extent)."""
    checkpoint = load_checkpoint(model) if model == "em-membranes" else _tiny(model.split("-")[1])
    threshold = None
    if model != "em-membranes":  # a random model's probabilities hover near 0.5: a mask of a quarter
        probabilities = Pipeline(checkpoint, PredictSettings(device="cpu")).run(montage).probabilities
        threshold = float(np.quantile(probabilities, 0.75))
    pipeline = Pipeline(checkpoint, PredictSettings(device="cpu", instances=True, threshold=threshold, **SMALL))
    assert blocks.in_blocks(pipeline, montage.shape[1:3])
    whole = pipeline.run(montage)
    pipeline.predictor = _Counting(pipeline.predictor)
    outputs, report = _streamed(pipeline, montage)
    grid = pipeline.grid(*montage.shape[1:3])
    every = [len(grid.tiles((0, grid.height, 0, grid.width))[0][axis]) for axis in (0, 1)]
    assert pipeline.predictor.tiles == every[0] * every[1] * len(pipeline.passes)  # each tile once
    assert len(blocks.prediction_blocks(pipeline, montage.shape[1:3])) >= 4
    np.testing.assert_allclose(outputs.probabilities, whole.probabilities, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(outputs.mask, whole.mask)
    assert report.cells[0] == len(np.unique(whole.cells)) - 1 > 50
    if checkpoint.info.instance_method == "components":
        assert _same_partition(outputs.instances[0], whole.cells[0])
    else:
        from skimage.metrics import adapted_rand_error

        assert adapted_rand_error(whole.cells[0], outputs.instances[0].astype(np.int32))[0] < 0.01


def test_the_cells_of_the_next_slice_follow_on(montage):
    stack = np.concatenate([montage, montage[:, ::-1]])
    outputs, report = _streamed(Pipeline(_tiny("components"), PredictSettings(device="cpu", instances=True, **SMALL)),
                                stack)
    first, second = (set(np.unique(outputs.instances[z])) - {0} for z in (0, 1))
    assert max(first) == report.cells[0] == len(first) and min(second) == report.cells[0] + 1
    assert len(second) == report.cells[1]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_levels_of_8_and_16_bit_slices_are_exact(dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    plane = rng.integers(info.min, info.max, (700, 900, 1), dtype=dtype, endpoint=True)
    norm = {"method": "percentile", "low": 1.0, "high": 99.8}
    low, high = blocks.slice_levels(plane, norm, edge=256)
    expected = np.percentile(plane.astype(np.float32), [1.0, 99.8], axis=(0, 1))
    np.testing.assert_allclose([low, high], expected, rtol=1e-6)


def test_levels_of_float_slices_come_from_a_sample():
    plane = np.random.default_rng(2).normal(100, 10, (700, 900, 1)).astype(np.float32)
    plane[:50, :50] = np.nan
    low, high = blocks.slice_levels(plane, {"method": "percentile", "low": 1.0, "high": 99.8}, edge=256,
                                    sample=20_000)
    expected = np.nanpercentile(plane, [1.0, 99.8], axis=(0, 1))
    np.testing.assert_allclose([low, high], expected, atol=1.5)  # the percentiles' sampling error


def test_a_slice_with_one_value_is_left_empty_and_cancel_keeps_the_blocks_done(montage):
    stack = np.concatenate([np.full_like(montage, 9), montage])
    pipeline = Pipeline(_tiny("components"), PredictSettings(device="cpu", instances=True, **SMALL))
    with pytest.raises(DataError, match="same value"):
        blocks.slice_levels(stack[0], pipeline.info.normalization)
    outputs = VolumeOutputs(np.full(stack.shape[:3], 7, np.uint8), instances=np.full(stack.shape[:3], 7, np.uint32))
    calls = []
    report = predict_volume(pipeline, stack, outputs, cancel=lambda: calls.append(1) or len(calls) > 30)
    assert report.blank == [0] and report.done == [0] and report.cancelled
    assert (outputs.mask[0] == 0).all() and (outputs.instances[0] == 0).all()
    written = outputs.mask[1] != 7
    assert written[:256, :256].all() and not written[-256:, -256:].any()  # the first blocks, not the last


def test_uncompressed_tifs_are_read_by_region(tmp_path):
    grey = np.random.default_rng(3).integers(0, 255, (2, 300, 500), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "grey.tif", grey, photometric="minisblack", contiguous=True)
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([grey[0]] * 3, -1), photometric="rgb")
    grey_volume, rgb_volume = open_volume(tmp_path / "grey.tif").data, open_volume(tmp_path / "rgb.tif").data
    assert isinstance(grey_volume.dask.values().__iter__().__next__(), volume_module.TifRegions)
    np.testing.assert_array_equal(grey_volume[1, 17:233, 40:499, 0], grey[1, 17:233, 40:499])
    np.testing.assert_array_equal(rgb_volume[0, 5:70, 300:, 2], grey[0, 5:70, 300:])
    assert rgb_volume.shape == (1, 300, 500, 3)


def test_the_cli_predicts_a_large_slice_in_blocks_into_a_tif(montage, tmp_path):
    """A single slice over the limit is opened lazily and predicted in blocks, whatever the
    output: the same mask as the whole slice through the one pipeline."""
    tifffile.imwrite(tmp_path / "montage.tif", montage[0, ..., 0], photometric="minisblack")
    assert volume_module.is_volume_path(tmp_path / "montage.tif", SMALL_SIZES)
    assert not volume_module.is_volume_path(tmp_path / "montage.tif")  # at the users' sizes: read whole
    cli_predict(tmp_path / "montage.tif", "em-membranes", tmp_path / "mask.tif", instances=tmp_path / "cells.zarr",
                sizes=SMALL_SIZES)
    whole = Pipeline(load_checkpoint("em-membranes"), PredictSettings(instances=True)).run(montage)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "mask.tif").reshape(montage.shape[1:3]), whole.mask[0])
    assert _same_partition(zarr.open_array(str(tmp_path / "cells.zarr"), mode="r")[0], whole.cells[0])


def _peak_growth(tmp_path, model_path: str, size: int) -> float:
    """Predict a random (size, size) uint8 zarr slice in 512-px blocks in a fresh process;
    returns how much its peak memory grew while predicting (MB)."""
    source = tmp_path / f"s{size}.zarr"
    plane = zarr.open_array(str(source), mode="w", shape=(1, size, size), chunks=(1, 512, 512), dtype="uint8")
    rng = np.random.default_rng(0)
    for y in range(0, size, 512):
        plane[0:1, y : y + 512] = rng.integers(0, 255, (1, min(512, size - y), size), dtype=np.uint8)
    script = textwrap.dedent(f"""
        import json, numpy as np
        import napari_unet.core.blocks as blocks
        from napari_unet.core.checkpoint import load_checkpoint
        from napari_unet.core.pipeline import Pipeline
        from napari_unet.core.settings import PredictSettings
        from napari_unet.core.stream import VolumeOutputs, predict_volume
        from napari_unet.core.volume import create_output, open_volume
        volume = open_volume({str(source)!r})
        out = create_output({str(tmp_path / f"out{size}.zarr")!r}, volume.data.shape[:3], np.uint8, chunk=512)
        def status(key):  # this process's own figures (ru_maxrss would count the parent's)
            return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
        before = status("VmHWM:")
        settings = PredictSettings(device="cpu", tile=256, block=512, block_limit=2 * 512 * 512)
        report = predict_volume(Pipeline(load_checkpoint({model_path!r}), settings), volume.data, VolumeOutputs(out))
        print(json.dumps({{"grew_mb": (status("VmHWM:") - before) / 2**20, "done": len(report.done)}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["done"] == 1
    return measured["grew_mb"]


def test_memory_does_not_grow_with_the_slice(tmp_path):
    """Whole, a 3072² slice would hold float32 copies of it and of its output (36 MB each,
    several of them); in blocks memory grows by one block's work whatever the slice size."""
    torch.manual_seed(0)
    model = str(save_checkpoint(tmp_path / "tiny.pt", UNet(UNetConfig(base_width=4, depth=2)),
                                default_metadata("em")))
    small, large = (_peak_growth(tmp_path, model, size) for size in (1024, 3072))
    assert large - small < 30, (small, large)


def test_a_large_flat_tif_opens_with_display_levels_read_from_the_file(tmp_path):
    """napari is given every 2nd, 4th... pixel of a large slice, read straight from the tif,
    and shows the level that fits the screen; the finest level is the data predicted."""
    from napari_unet._reader import read_layers

    stack = np.random.default_rng(4).integers(0, 255, (2, 700, 900), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "montage.tif", stack, photometric="minisblack")
    assert open_volume(tmp_path / "montage.tif").levels == []  # not large at the users' sizes
    volume = open_volume(tmp_path / "montage.tif", SMALL_SIZES)
    assert [level.shape[1:3] for level in volume.levels] == [(700, 900), (350, 450), (175, 225)]
    np.testing.assert_array_equal(volume.levels[2][1, ..., 0], stack[1, ::4, ::4])
    np.testing.assert_array_equal(volume.levels[1][0, 100:200, 7:, 0], stack[0, ::2, ::2][100:200, 7:])
    data, meta, kind = read_layers(str(tmp_path / "montage.tif"), sizes=SMALL_SIZES)[0]
    assert kind == "image" and meta["multiscale"] and [level.shape for level in data][0] == (2, 700, 900)


def test_a_montage_is_ranked_block_by_block_as_whole(montage):
    """`suggest` (by default "margin" on a montage) scores a montage slice in blocks with
    the number the whole slice gives; the other methods, which need whole slices, are refused."""
    from napari_unet.core.uncertainty import suggest

    stack = np.concatenate([montage, montage[:, ::-1], np.zeros_like(montage)])
    pipeline = Pipeline(load_checkpoint("em-membranes"), PredictSettings(device="cpu", **SMALL))
    in_blocks = suggest(pipeline, stack, corrected=[1])
    whole_slices = Pipeline(load_checkpoint("em-membranes"), PredictSettings(device="cpu", block_limit=10**12))
    whole = suggest(whole_slices, stack, corrected=[1], method="margin")
    np.testing.assert_allclose(in_blocks.uncertainty, whole.uncertainty, rtol=1e-6)
    assert in_blocks.order == whole.order == [0] and np.isnan(in_blocks.uncertainty[2])
    with pytest.raises(DataError, match="margin"):
        suggest(pipeline, stack, method="flips")


def test_a_montage_the_model_would_resample_is_refused_before_anything_is_read():
    """A 40,000² slice at twice the model's pixel size cannot go in blocks (resampling is
    whole-slice) and would need ~140 GB whole: one message, nothing read or written."""
    import dask.array as da

    montage = da.zeros((1, 40000, 40000, 1), dtype=np.uint8, chunks=(1, 2048, 2048, 1))
    pipeline = Pipeline(load_checkpoint("em-membranes"), PredictSettings(device="cpu", pixel_size=8.0))
    outputs = VolumeOutputs(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(DataError, match="resample the montage to the model's pixel size"):
        predict_volume(pipeline, montage, outputs)
    assert blocks.in_blocks(Pipeline(load_checkpoint("em-membranes"), PredictSettings(device="cpu")), (40000, 40000))
    # A model re-scaled by a fine-tune on other images (no pixel size of its own) says so.
    builtin = load_checkpoint("em-membranes")
    metadata = {k: v for k, v in builtin.metadata.items() if k != "pixel_size_nm"}
    tuned = Checkpoint(builtin.model, dict(metadata, input_zoom=0.79), "tuned")
    with pytest.raises(DataError, match="resamples them by 0.79"):
        predict_volume(Pipeline(tuned, PredictSettings(device="cpu")), montage, outputs)


def test_a_pyramid_averages_each_level_and_opens_with_every_level(tmp_path, capsys):
    """`napari-unet pyramid` writes an OME-Zarr whose levels are 2 x 2 means of the one below,
    with the tif's pixel size; it opens lazily with every level; an existing one is kept."""
    import napari_unet.core.pyramid as pyramid

    stack = np.random.default_rng(5).integers(0, 255, (2, 701, 903), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "montage.tif", stack, imagej=True, resolution=(1 / 0.008, 1 / 0.008),
                     metadata={"unit": "um"})
    out = tmp_path / "montage.ome.zarr"
    cli_pyramid(tmp_path / "montage.tif", out, sizes=Sizes(screen=256, region=128))  # blocks cross odd edges
    assert "3 level(s) (701x903, 351x452, 176x226)" in capsys.readouterr().out
    volume = open_volume(out)
    assert [level.shape[:3] for level in volume.levels] == [(2, 701, 903), (2, 351, 452), (2, 176, 226)]
    np.testing.assert_allclose(volume.pixel_size_nm, (8.0, 8.0))
    np.testing.assert_array_equal(volume.levels[0][..., 0], stack)
    first = np.asarray(volume.levels[1][1, ..., 0]).astype(float)
    padded = np.pad(stack[1].astype(float), [(0, 1), (0, 1)], mode="edge")
    expected = padded.reshape(351, 2, 452, 2).mean(axis=(1, 3))
    assert np.abs(first - expected).max() <= 0.5
    assert main(["pyramid", str(tmp_path / "montage.tif"), "--out", str(out)]) == 2  # never over it unasked
    cancelled = tmp_path / "cancelled.ome.zarr"
    with pytest.raises(PredictionCancelled):
        pyramid.write_pyramid(open_volume(tmp_path / "montage.tif"), cancelled, cancel=lambda: True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["montage.ome.zarr", "montage.tif"]


def test_a_montage_prediction_is_written_as_a_pyramid_napari_browses(montage, tmp_path, capsys):
    """`--out mask.ome.zarr`: level 0 is the mask (the flat store's), each next level the
    2 x 2 max of the one below (membranes stay visible far out), probabilities averaged,
    cell ids picked; File ▸ Open shows it as multiscale labels. A flat store gets a note."""
    from napari_unet._reader import read_layers

    source = tmp_path / "montage.tif"
    tifffile.imwrite(source, montage[0, ..., 0], photometric="minisblack")
    cli_predict(source, "em-membranes", tmp_path / "flat.zarr", sizes=SMALL_SIZES)
    assert "--out mask.ome.zarr" in capsys.readouterr().err
    cli_predict(source, "em-membranes", tmp_path / "mask.ome.zarr", probabilities=tmp_path / "p.ome.zarr",
                instances=tmp_path / "cells.ome.zarr", sizes=SMALL_SIZES)
    masks = open_volume(tmp_path / "mask.ome.zarr").levels
    assert [level.shape[:3] for level in masks] == [(1, 700, 900), (1, 350, 450), (1, 175, 225)]
    flat = zarr.open_array(str(tmp_path / "flat.zarr"), mode="r")[0]
    np.testing.assert_array_equal(np.asarray(masks[0][0, ..., 0]), flat)
    np.testing.assert_array_equal(np.asarray(masks[1][0, ..., 0]), flat.reshape(350, 2, 450, 2).max(axis=(1, 3)))
    probability = open_volume(tmp_path / "p.ome.zarr").levels
    np.testing.assert_allclose(np.asarray(probability[1][0, ..., 0]),
                               np.asarray(probability[0][0, ..., 0]).reshape(350, 2, 450, 2).mean(axis=(1, 3)),
                               atol=1e-6)
    cells = open_volume(tmp_path / "cells.ome.zarr").levels
    np.testing.assert_array_equal(np.asarray(cells[1][0, ..., 0]), np.asarray(cells[0][0, ::2, ::2, 0]))
    (data, meta, kind), = read_layers(str(tmp_path / "mask.ome.zarr"))
    assert kind == "labels" and len(data) == 3 and meta["metadata"]["napari_unet"]["role"] == "prediction"
    args = ["predict", str(source), "--model", "em-membranes", "--out", str(tmp_path / "c.ome.zarr")]
    assert main([*args, "--workers", "2"]) == 2  # a cluster writes flat stores
    assert "without --workers" in capsys.readouterr().err


def test_a_pyramidal_tif_opens_with_its_own_levels(tmp_path):
    """An OME-TIFF with sub-resolutions (tiled, compressed): every level is read by tile, so
    napari shows the one that fits the screen."""
    from napari_unet._reader import read_layers

    image = np.random.default_rng(2).integers(0, 255, (1024, 1536), dtype=np.uint8)
    path = tmp_path / "pyramidal.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, subifds=2, tile=(256, 256), compression="zlib", photometric="minisblack")
        for level in (image[::2, ::2], image[::4, ::4]):
            tif.write(level, subfiletype=1, tile=(256, 256), compression="zlib", photometric="minisblack")
    volume = open_volume(path)
    assert [level.shape[:3] for level in volume.levels] == [(1, 1024, 1536), (1, 512, 768), (1, 256, 384)]
    np.testing.assert_array_equal(np.asarray(volume.levels[1][0, ..., 0]), image[::2, ::2])
    (data, meta, kind), = read_layers(str(path), sizes=SMALL_SIZES)  # a large slice: opened lazily
    assert kind == "image" and meta["multiscale"] and len(data) == 3
