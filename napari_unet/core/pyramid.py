"""An OME-Zarr pyramid of a large grey image, written block by block.

napari browses a multiscale image at the level that fits the screen. A flat tif of
montage slices opens with levels that pick every n-th pixel (`core.volume`); a pyramid
averages each level from the one below, so far out the image looks like itself rather
than like noise, and a compressed tif is then read by chunk. Memory holds a block.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from .blocks import block_grid
from .data import DataError
from .predict import CancelCheck, PredictionCancelled, ProgressCallback
from .volume import SIZES, Sizes, Volume


def pyramid_path(path: str | Path) -> Path:
    """Where the pyramid of ``path`` goes: beside it, ``<stem>.ome.zarr``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.ome.zarr")


def level_shapes(shape: tuple[int, int, int], sizes: Sizes = SIZES) -> list[tuple[int, int, int]]:
    """(Z, Y, X) of each level, finest first: halved until the longer side is at most ``sizes.screen``."""
    shapes = [tuple(shape)]
    while max(shapes[-1][1:]) > sizes.screen:
        z, y, x = shapes[-1]
        shapes.append((z, math.ceil(y / 2), math.ceil(x / 2)))
    return shapes


def write_pyramid(volume: Volume, out: str | Path, progress: ProgressCallback | None = None,
                  cancel: CancelCheck | None = None, sizes: Sizes = SIZES) -> list[tuple[int, int, int]]:
    """Write ``volume`` as an OME-Zarr (v0.4, zarr format 2) pyramid at ``out``.

    Level 0 is the image; each next level is the 2 x 2 mean of the one below (rounded to
    the image's dtype). Written beside ``out`` and renamed when complete, so a cancelled
    or failed run leaves nothing under ``out``.

    Args:
        volume: a grey volume (`core.volume.open_volume`); its pixel size, if known, is
            recorded as each level's scale in nanometres.
        progress: called with (blocks done, blocks in all levels).
        sizes: the levels fit ``sizes.screen``; blocks are ``sizes.region`` a side.

    Returns:
        The (Z, Y, X) of each level written.

    Raises:
        DataError: an RGB volume, or ``out`` exists.
        PredictionCancelled: ``cancel`` returned True.
    """
    out = Path(out)
    if out.exists():
        raise DataError(f"{out} exists: choose another name or remove it first.")
    data = volume.data
    if data.shape[-1] != 1:
        raise DataError("Pyramids are written for grey (EM) images; this one is RGB.")
    shapes = level_shapes(tuple(data.shape[:3]), sizes)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    group = _new_group(partial)
    levels = [_new_array(group, str(k), shape, data.dtype) for k, shape in enumerate(shapes)]
    counter = _Progress(shapes, sizes.region, progress, cancel)
    try:
        for z in range(shapes[0][0]):
            # Bands of whole rows: a striped (compressed) tif decompresses each strip once.
            for y0, y1, _x0, _x1 in block_grid(shapes[0][1], 1, sizes.region):
                band = np.asarray(data[z, y0:y1, :, 0])
                for _, _, x0, x1 in block_grid(1, band.shape[1], sizes.region):
                    counter.tick()
                    levels[0][z, y0:y1, x0:x1] = band[:, x0:x1]
        _fill_levels(levels, "mean", counter, sizes.region)
        group.attrs["multiscales"] = [_multiscale(len(shapes), volume.pixel_size_nm, out.name)]
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(out)
    return shapes


def multiscale_output(path: str | Path, shape: tuple[int, int, int], dtype):
    """A new OME-Zarr group at ``path`` and its level-0 (Z, Y, X) array, returned, for a
    prediction to be written into; `add_levels` then makes the coarser levels."""
    return _new_array(_new_group(path), "0", shape, dtype)


def add_levels(path: str | Path, reduce: str, pixel_size_nm=None, name: str = "",
               cancel: CancelCheck | None = None, sizes: Sizes = SIZES) -> list[tuple[int, int, int]]:
    """Make the group `multiscale_output` wrote a browsable OME-Zarr pyramid: levels halved
    from its level 0 until they fit the screen, block by block, then the metadata.

    Args:
        reduce: how 2 x 2 pixels become one: "mean" (probabilities), "max" (a mask:
            thin membranes stay visible far out) or "pick" (cell ids: never mixed).
        sizes: as `write_pyramid`.

    Returns:
        The (Z, Y, X) of each level.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    base = group["0"]
    shapes = level_shapes(tuple(base.shape), sizes)
    levels = [base] + [_new_array(group, str(k), shape, base.dtype) for k, shape in enumerate(shapes) if k > 0]
    _fill_levels(levels, reduce, _Progress(shapes[1:], sizes.region, None, cancel), sizes.region)
    group.attrs["multiscales"] = [_multiscale(len(shapes), pixel_size_nm, name or Path(path).name)]
    return shapes


def _new_group(path: Path):
    """A new zarr group in zarr format 2 (which every OME-Zarr reader takes), with zarr 2 or 3."""
    import zarr

    if int(zarr.__version__.split(".")[0]) >= 3:
        return zarr.open_group(str(path), mode="w", zarr_format=2)
    return zarr.open_group(str(path), mode="w")


def _new_array(group, name: str, shape: tuple[int, int, int], dtype):
    """A (Z, Y, X) array of ``group`` in chunks of one slice and at most 1,024² pixels."""
    create = getattr(group, "create_array", None) or group.create_dataset  # zarr 3, zarr 2
    return create(name, shape=shape, chunks=(1, min(shape[1], 1024), min(shape[2], 1024)), dtype=dtype, fill_value=0)


class _Progress:
    """Counts blocks of ``edge`` over the levels of ``shapes`` for ``progress``; raises when ``cancel`` says so."""

    def __init__(self, shapes, edge: int, progress: ProgressCallback | None, cancel: CancelCheck | None) -> None:
        self.total = sum(len(block_grid(*shape[1:], edge)) * shape[0] for shape in shapes)
        self.done, self.progress, self.cancel = 0, progress, cancel

    def tick(self) -> None:
        if self.cancel is not None and self.cancel():
            raise PredictionCancelled("Cancelled: no pyramid was written.")
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _fill_levels(levels: list, reduce: str, counter: _Progress, edge: int) -> None:
    """Write each level after the first from the one below it, in blocks of ``edge`` a side."""
    for k in range(1, len(levels)):
        below, level = levels[k - 1], levels[k]
        for z in range(level.shape[0]):
            for y0, y1, x0, x1 in block_grid(*level.shape[1:], edge):
                counter.tick()
                level[z, y0:y1, x0:x1] = _halved(np.asarray(below[z, 2 * y0 : 2 * y1, 2 * x0 : 2 * x1]),
                                                 (y1 - y0, x1 - x0), reduce)


def _halved(block: np.ndarray, shape: tuple[int, int], reduce: str = "mean") -> np.ndarray:
    """(h, w) from a (2h, 2w) block (an odd last row or column is repeated): the mean of each
    2 x 2 pixels (rounded to the block's dtype), their max, or the first of them ("pick")."""
    height, width = shape
    if reduce == "pick":
        return block[::2, ::2]
    padded = np.pad(block, [(0, 2 * height - block.shape[0]), (0, 2 * width - block.shape[1])], mode="edge")
    quads = padded.reshape(height, 2, width, 2)
    if reduce == "max":
        return quads.max(axis=(1, 3))
    mean = quads.astype(np.float32).mean(axis=(1, 3))
    return np.round(mean).astype(block.dtype) if block.dtype.kind in "ui" else mean.astype(block.dtype)


def _multiscale(count: int, pixel_size_nm, name: str) -> dict:
    """OME-Zarr v0.4 ``multiscales`` metadata for ``count`` levels halving Y and X."""
    size = pixel_size_nm or (1.0, 1.0)
    unit = {"unit": "nanometer"} if pixel_size_nm else {}
    axes = [{"name": "z", "type": "space"}] + [{"name": a, "type": "space", **unit} for a in "yx"]
    datasets = [{"path": str(k), "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, size[0] * 2**k, size[1] * 2**k]}]} for k in range(count)]
    return {"version": "0.4", "name": name, "axes": axes, "datasets": datasets}
