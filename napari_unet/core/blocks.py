"""One slice larger than memory (a montage), predicted block by block: the block plan,
and cells merged across block borders.

A slice of more than the settings' ``block_limit`` pixels is read, normalised, predicted
and written in blocks of about ``block`` x ``block`` output pixels, so memory holds one
block and its halo, never the slice. Each block is predicted by `Pipeline.infer_region`
from a reader that normalises what it reads (`NormalizedSlice`), so every pixel gets what
`Pipeline.run` gives it on the whole slice; the tiles on a block border, which two blocks
need, are computed once (`TileCache`). The intensity levels are the slice's own
percentiles, exact for 8- and 16-bit images (from a histogram of every block), else from
a sample of blocks; or the volume's.

Cells are labelled per block and merged where they touch across a block border
(watershed cells are grown on the block and a halo, `CELL_HALO`, from seeds whose depth
comes from the whole slice's enclosed regions).

Models that resample (another pixel size) or use a field of view (fundus photographs)
predict whole slices: `in_blocks` says which.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .data import DataError, normalize
from .predict import CancelCheck, ProgressCallback, Region
from .settings import BLOCK

#: Slices that cannot go in blocks are refused over this many pixels (on the model's grid).
WHOLE_LIMIT = 16384 * 16384
#: Pixels of mask read around a block to grow watershed cells: more than a cell's radius.
CELL_HALO = 256
#: Pixels sampled for the levels of a slice that is not 8- or 16-bit.
LEVEL_SAMPLE = 1 << 22


def block_grid(height: int, width: int, edge: int = BLOCK, first: int | None = None) -> list[Region]:
    """(y0, y1, x0, x1) of the blocks that tile a (height, width) slice, row by row: the
    first ``first`` pixels (default ``edge``), then every ``edge``."""
    first = first or edge
    cuts = [[0, *range(first, length, edge), length] for length in (height, width)]
    return [(y0, y1, x0, x1) for y0, y1 in zip(cuts[0], cuts[0][1:]) for x0, x1 in zip(cuts[1], cuts[1][1:])]


def slice_levels(plane, normalization: dict, name: str = "The slice", edge: int = BLOCK,
                 sample: int = LEVEL_SAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """The intensities `normalize` maps to 0 and 1 for one slice, read block by block.

    8- and 16-bit slices: the exact percentiles, from a histogram of every pixel. Others:
    the percentiles of an even sample of about ``sample`` pixels.

    Args:
        plane: (Y, X, C) array-like read by region (dask, zarr, numpy).
        edge: the edge of the blocks read at a time.

    Returns:
        (low, high), each (C,) float32.

    Raises:
        DataError: no finite value, or the same value everywhere (as `check_images`).
    """
    height, width, channels = plane.shape
    exact = plane.dtype.kind in "ui" and plane.dtype.itemsize <= 2
    stride = 1 if exact else max(1, math.ceil(math.sqrt(height * width / sample)))
    base = int(np.iinfo(plane.dtype).min) if exact else 0
    counts = [np.zeros(1 << (8 * plane.dtype.itemsize), np.int64) for _ in range(channels)] if exact else None
    samples = []
    for y0, y1, x0, x1 in block_grid(height, width, edge):
        block = np.asarray(plane[y0:y1:stride, x0:x1:stride])
        if exact:
            for c in range(channels):
                counts[c] += np.bincount((block[..., c].astype(np.int64) - base).ravel(), minlength=len(counts[c]))
        else:
            samples.append(block.reshape(-1, channels).astype(np.float64))
    if exact:
        levels = np.array([[_percentile_of_counts(count, q) + base for count in counts]
                           for q in (normalization["low"], normalization["high"])])
        low, high = levels
        lowest = min(np.nonzero(count)[0][0] for count in counts) + base
        highest = max(np.nonzero(count)[0][-1] for count in counts) + base
    else:
        values = np.concatenate(samples)
        finite = np.isfinite(values)
        if not finite.any():
            raise DataError(f"{name} has no finite value (only NaN or infinity): nothing to segment there. "
                            "Check how the image was exported.")
        values = np.where(finite, values, np.nan)
        low, high = np.nan_to_num(np.nanpercentile(values, [normalization["low"], normalization["high"]], axis=0))
        lowest, highest = np.nanmin(values), np.nanmax(values)
    if lowest == highest:
        raise DataError(f"{name} has the same value ({lowest}) everywhere: there is nothing to segment. "
                        "Check that the right image or channel was opened.")
    return np.asarray(low, np.float32), np.asarray(high, np.float32)


def _percentile_of_counts(counts: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear) of the values 0.. whose counts are ``counts``."""
    total = int(counts.sum())
    rank = q / 100 * (total - 1)
    below = math.floor(rank)
    cumulative = np.cumsum(counts)

    def value_at(rank: int) -> float:  # the value of the rank-th smallest pixel (from 0)
        return float(np.searchsorted(cumulative, rank, side="right"))

    lower, upper = value_at(below), value_at(min(below + 1, total - 1))
    return lower + (upper - lower) * (rank - below)


class NormalizedSlice:
    """One slice as the model reads it, by region: (1, C, Y, X) model-ready values, each
    region read from ``plane`` and normalised on the slice's ``levels`` when indexed.

    Args:
        plane: (Y, X, C) array-like read by region; normalization: the model's;
        levels: (low, high), each (C,): the slice's (`slice_levels`) or the volume's.
    """

    def __init__(self, plane, normalization: dict, levels: tuple[np.ndarray, np.ndarray]) -> None:
        self.plane, self.normalization, self.levels = plane, normalization, levels
        height, width, channels = plane.shape
        self.shape = (1, channels, height, width)

    def __getitem__(self, key) -> np.ndarray:
        _n, _c, rows, cols = key
        region = normalize(np.asarray(self.plane[rows, cols])[None], self.normalization, self.levels)
        return region.transpose(0, 3, 1, 2)


def prediction_blocks(pipeline, shape: tuple[int, int], chunked: bool = False) -> list[Region]:
    """A slice's prediction blocks: a whole number of tile steps near the settings' ``block``,
    cut through the middle of a tile, where no other tile overlaps it (a tile on a border
    is needed by both blocks: the fewest any cut gives). ``chunked``: cut every edge
    instead, so each block is whole chunks of a store chunked by `prediction_edge` (a
    cluster's workers then never write the same chunk)."""
    grid = pipeline.grid(*shape)
    edge = prediction_edge(pipeline, shape)
    first = edge if chunked else edge + grid.tile // 2 - grid.margin
    return block_grid(*shape, edge, first)


def prediction_edge(pipeline, shape: tuple[int, int]) -> int:
    """The edge of a slice's prediction blocks: the whole number of tile steps nearest the
    settings' ``block`` (a cluster chunks its stores by it)."""
    step = pipeline.grid(*shape).step
    return max(1, round(pipeline.settings.block / step)) * step


class TileCache:
    """The network's output for tiles that several blocks need (those on a block border):
    computed once, kept on disk (a row of them spans the slice) until the last block that
    needs one has used it.

    Args:
        needs: how many blocks need each tile, by key (n, flips, y, x).
    """

    def __init__(self, needs: Counter) -> None:
        self.needs, self.left = needs, Counter(needs)
        self.folder = Path(tempfile.mkdtemp(prefix="napari-unet-tiles-"))

    def _path(self, key) -> Path:
        n, flips, y, x = key
        return self.folder / f"{n}_{'-'.join(map(str, flips))}_{y}_{x}.npy"

    def get(self, key) -> np.ndarray | None:
        """A tile's output if an earlier block computed it, else None."""
        path = self._path(key)
        if not path.exists():
            return None
        values = np.load(path)
        self.left[key] -= 1
        if self.left[key] == 0:
            path.unlink()
        return values

    def put(self, key, values: torch.Tensor) -> None:
        """A tile just computed: kept when a later block needs it too."""
        self.left[key] -= 1
        if self.left[key] > 0:
            np.save(self._path(key), values.cpu().numpy())

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def region_tiles(pipeline, shape: tuple[int, int], region: Region) -> list:
    """The keys (0, flips, y, x) of the tiles a region of a (Y, X) slice needs (with the
    output shift's halo), as `Pipeline.infer_region` predicts it."""
    halo = pipeline.shift_halo()
    y0, y1, x0, x1 = region
    extended = (max(0, y0 - halo), min(shape[0], y1 + halo), max(0, x0 - halo), min(shape[1], x1 + halo))
    return [(0, *key) for key in pipeline.grid(*shape).keys(extended, pipeline.passes)]


def predict_slice_in_blocks(pipeline, plane, outputs, z: int, progress: ProgressCallback | None = None,
                            cancel: CancelCheck | None = None, name: str = "The slice") -> int:
    """Predict one large slice block by block into ``outputs`` (a `core.stream.VolumeOutputs`).

    Args:
        pipeline: a `core.pipeline.Pipeline` for which `in_blocks` holds.
        plane: (Y, X, C) array-like read by region.
        z: the slice's index in the outputs.
        progress: called with (tiles done, tiles total) for this slice.

    Returns:
        The number of structure pixels.

    Raises:
        DataError: a slice with nothing to segment (`slice_levels`).
        PredictionCancelled: ``cancel`` returned True (the blocks written so far stay).
    """
    shape = tuple(plane.shape[:2])
    own = slice_levels(plane, pipeline.info.normalization, name, pipeline.settings.block)  # refuses a blank slice
    levels = pipeline.levels if pipeline.levels is not None else own
    blocks = prediction_blocks(pipeline, shape)
    cache = TileCache(Counter(key for block in blocks for key in region_tiles(pipeline, shape, block)))
    earlier, this_block, structure = 0, [0], 0  # tiles computed by the earlier blocks, by this one

    def block_progress(done: int, _total: int) -> None:
        this_block[0] = done
        if progress is not None:
            progress(earlier + done, len(cache.needs))

    try:
        for block in blocks:
            this_block[0] = 0
            structure += predict_block_into(pipeline, plane, outputs, z, block, levels, cache, block_progress, cancel)
            earlier += this_block[0]
    finally:
        cache.close()
    return structure


def predict_block_into(pipeline, plane, outputs, z: int, block: Region, levels, cache: TileCache | None = None,
                       progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> int:
    """Predict one (y0, y1, x0, x1) block of slice ``z`` and write its mask (and probability)
    into ``outputs``; returns its structure pixels. Without ``cache`` every tile it needs is
    predicted (a cluster's block, `core.cluster`)."""
    source = NormalizedSlice(plane, pipeline.info.normalization, levels)
    probability = pipeline.infer_region(source, block, progress, cancel, cache)
    mask = pipeline.mask(probability)[0]
    y0, y1, x0, x1 = block
    outputs.mask[z, y0:y1, x0:x1] = mask
    if outputs.probabilities is not None:
        outputs.probabilities[z, y0:y1, x0:x1] = probability[0]
    return int(mask.sum())


def predict_region(pipeline, plane, region: Region, levels, progress: ProgressCallback | None = None,
                   cancel: CancelCheck | None = None) -> np.ndarray:
    """(y1 - y0, x1 - x0) float32 probabilities of a (y0, y1, x0, x1) region of a large slice,
    each pixel as the whole slice's prediction has it (`in_blocks` must hold).

    Args:
        plane: (Y, X, C) array-like read by region; levels: the slice's (`slice_levels`).
        progress: called with (tiles done, tiles total).
    """
    source = NormalizedSlice(plane, pipeline.info.normalization, levels)
    return pipeline.infer_region(source, region, progress, cancel)[0]


def in_blocks(pipeline, shape: tuple[int, int]) -> bool:
    """Whether a (Y, X) slice is predicted block by block: more than the settings'
    ``block_limit`` pixels, a grey model predicting at its own pixel size (no resampling,
    no field of view)."""
    return shape[0] * shape[1] > pipeline.settings.block_limit and not pipeline.uses_fov and pipeline.scale is None


def refuse_whole(pipeline, shape: tuple[int, int]) -> None:
    """Raise DataError for a slice that cannot go in blocks (the model resamples it, or uses a
    field of view) and is over `WHOLE_LIMIT` pixels on the model's grid: predicted whole it
    would need about 22 bytes a pixel (over 6 GB)."""
    zoom = 1.0 if pipeline.scale is None else pipeline.scale[0] * pipeline.scale[1]
    if in_blocks(pipeline, shape) or shape[0] * shape[1] * zoom <= WHOLE_LIMIT:
        return
    if pipeline.uses_fov:
        raise DataError(f"Photographs of {shape[0]:,} x {shape[1]:,} pixels are too large to predict whole: "
                        "downscale them (the model works at about 565 pixels across the field of view).")
    if pipeline.info.pixel_size_nm is None:  # the zoom a fine-tune found for other images
        raise DataError(f"Slices of {shape[0]:,} x {shape[1]:,} pixels are predicted block by block only as they "
                        f"are, and this model resamples them by {pipeline.scale[0]:.2f} (the scale its fine-tune "
                        "found for other images), which would not fit in memory: use the model it was fine-tuned "
                        "from, or fine-tune on regions of this montage.")
    raise DataError(f"Slices of {shape[0]:,} x {shape[1]:,} pixels are predicted block by block only at the "
                    f"model's own pixel size ({pipeline.info.pixel_size_nm[0]:g} nm), and resampled whole they "
                    "would not fit in memory: resample the montage to the model's pixel size first, or predict it as "
                    "it is (no pixel size given: 0 in Predict).")


class SliceOf:
    """Slice ``z`` of a (Z, Y, X, C) array-like, read by region only when indexed (a zarr
    array's ``volume[z]`` would read the whole slice)."""

    def __init__(self, volume, z: int) -> None:
        self.volume, self.z = volume, z
        self.shape, self.dtype = tuple(volume.shape[1:]), volume.dtype

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.volume[(self.z, *key)])


def label_cells_in_blocks(mask, z: int, cells, method: str, offset: int = 0, seed_depth: float = 0.7,
                          edge: int = BLOCK) -> int:
    """Cells of slice ``z`` of a (Z, Y, X) membrane mask, block by block, into ``cells``.

    The partition is `core.predict.cell_instances`'s of the whole slice: "components"
    exactly (regions that touch across a block border are one region); "watershed" but
    for where a watershed line falls on a tie (each block grows its cells with `CELL_HALO`
    pixels of mask around it, from seeds whose depth is the whole slice's median radius;
    the flooding order of ties follows the array's extent).

    Args:
        mask: (Z, Y, X) array-like read by region (the prediction's mask store).
        cells: (Z, Y, X) uint32 array written by region.
        offset: ids start at ``offset + 1`` (unique across slices).
        edge: the edge of the blocks labelled at a time.

    Returns:
        The number of cells in the slice.
    """
    blocks = block_grid(*mask.shape[1:], edge)
    depth = None
    if method == "watershed":
        parts = [_block_cells(mask, z, block, "components", with_radius=True) for block in blocks]
        radii, _ = _merge(blocks, parts, reduce_radius=True)
        depth = seed_depth * float(np.median(radii)) if radii.size else 0.0
    parts = []
    for block in blocks:
        ids, edges, _ = _block_cells(mask, z, block, method, depth=depth)
        start = sum(int(p[0]) for p in parts)  # ids numbered after the earlier blocks'
        y0, y1, x0, x1 = block
        cells[z, y0:y1, x0:x1] = np.where(ids > 0, ids + start, 0).astype(np.uint32)
        parts.append((ids.max(), [np.where(e > 0, e + start, 0) for e in edges], None))
    lookup, count = _merge(blocks, parts)
    for y0, y1, x0, x1 in blocks:
        local = np.asarray(cells[z, y0:y1, x0:x1])
        cells[z, y0:y1, x0:x1] = np.where(local > 0, lookup[local] + offset, 0).astype(np.uint32)
    return count


def _block_cells(mask, z: int, block, method: str, depth: float | None = None, with_radius: bool = False):
    """One block's cells: (ids from 1 (Y, X) or their count, [top, bottom, left, right] edge
    ids, each id's inner radius or None). ``with_radius`` returns the count instead of ids."""
    from scipy import ndimage
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential

    from .predict import watershed_cells

    y0, y1, x0, x1 = block
    height, width = mask.shape[1:]
    halo = CELL_HALO if (method == "watershed" or with_radius) else 0
    ey0, ey1, ex0, ex1 = max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo)
    inside = np.asarray(mask[z, ey0:ey1, ex0:ex1]) == 0
    core = (slice(y0 - ey0, y1 - ey0), slice(x0 - ex0, x1 - ex0))
    distance = ndimage.distance_transform_edt(inside) if halo else None
    if method == "watershed":
        ids = relabel_sequential(watershed_cells(inside, distance, depth)[core])[0]
    else:
        ids = label(inside[core], connectivity=1)
    edges = [ids[0], ids[-1], ids[:, 0], ids[:, -1]]
    radius = None
    if with_radius:
        radius = ndimage.maximum(distance[core], ids, np.arange(1, ids.max() + 1)) if ids.max() else np.zeros(0)
        return ids.max(), edges, np.asarray(radius, np.float64)
    return ids, edges, radius


def _merge(blocks, parts, reduce_radius: bool = False):
    """Join the ids of neighbouring blocks that touch across their shared border.

    Args:
        parts: per block (id count, its [top, bottom, left, right] edge ids numbered after
            the earlier blocks', radii or None); with ``reduce_radius`` the edges are the
            block's own ids (from 1) and are numbered here.

    Returns:
        (lookup from ids to merged ids 1..n (index 0 -> 0), n), or with ``reduce_radius``
        (each merged region's radius, the largest of its parts', n).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    starts = np.cumsum([0] + [int(p[0]) for p in parts])
    edges = [[np.where(e > 0, e + starts[i], 0) for e in p[1]] if reduce_radius else p[1]
             for i, p in enumerate(parts)]
    where = {(b[0], b[2]): i for i, b in enumerate(blocks)}
    pairs = []
    for i, (y0, y1, x0, x1) in enumerate(blocks):
        for j, mine, theirs in ((where.get((y1, x0)), 1, 0), (where.get((y0, x1)), 3, 2)):
            if j is not None:
                a, b = edges[i][mine], edges[j][theirs]
                touching = (a > 0) & (b > 0)
                pairs.append(np.stack([a[touching], b[touching]]))
    total = int(starts[-1])
    pairs = np.concatenate(pairs, axis=1) if pairs else np.zeros((2, 0), np.int64)
    graph = coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(total + 1, total + 1))
    component = connected_components(graph, directed=False)[1]
    # Merged ids in the order their first part appears (component 0 holds id 0 alone).
    firsts = np.unique(component[1:], return_index=True)[1]
    rank = np.zeros(component.max() + 1, np.int64)
    rank[component[1:][np.sort(firsts)]] = np.arange(1, len(firsts) + 1)
    lookup = rank[component]
    lookup[0] = 0
    if reduce_radius:
        radius = np.zeros(len(firsts) + 1)
        np.maximum.at(radius, lookup[1:], np.concatenate([p[2] for p in parts]))
        return radius[1:], len(firsts)
    return lookup, len(firsts)
