"""One slice larger than memory (a montage), predicted block by block.

A slice of more than `BLOCK_LIMIT` pixels is read, normalised, predicted and written in
blocks of `BLOCK` x `BLOCK` output pixels, so memory holds one block and its halo,
never the slice. Each block gets the numbers `Pipeline.run` gives the whole slice:

* its tiles are the whole slice's tile grid (`core.predict.sliding_window`), cut from
  the same mirror-padded image, blended in the same order, so every pixel is the same
  blend of the same tiles; mirror padding happens only at the slice's borders;
* each test-time flip runs the flipped slice's own grid, as `Pipeline.infer` does;
* the output shift reads a halo of a few pixels around the block;
* the intensity levels are the slice's own percentiles, exact for 8- and 16-bit images
  (from a histogram of every block), else from a sample of blocks; or the volume's;
* cells are labelled per block and merged where they touch across a block border
  (watershed cells are grown on the block and a halo, `CELL_HALO`, from seeds whose
  depth comes from the whole slice's enclosed regions).

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

from .calibration import shift_output
from .data import DataError, normalize
from .predict import FLIP_AXES, CancelCheck, PredictionCancelled, ProgressCallback, blend_window, tile_starts
from .volume import LARGE_SLICE

#: Block edge in pixels (a multiple of the outputs' 1,024-pixel chunks). Prediction blocks
#: are the nearest whole number of tile steps (`_Geometry.blocks`).
BLOCK = 3072
#: Slices with more pixels than this are predicted in blocks.
BLOCK_LIMIT = LARGE_SLICE
#: Slices that cannot go in blocks are refused over this many pixels (on the model's grid).
WHOLE_LIMIT = 16384 * 16384
#: Pixels of mask read around a block to grow watershed cells: more than a cell's radius.
CELL_HALO = 256
#: Pixels sampled for the levels of a slice that is not 8- or 16-bit.
LEVEL_SAMPLE = 1 << 22


def block_grid(height: int, width: int, edge: int | None = None, first: int | None = None
               ) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of the blocks that tile a (height, width) slice, row by row: the
    first ``first`` pixels, then every ``edge`` (default both `BLOCK`)."""
    edge = edge or BLOCK
    first = first or edge
    cuts = [[0, *range(first, length, edge), length] for length in (height, width)]
    return [(y0, y1, x0, x1) for y0, y1 in zip(cuts[0], cuts[0][1:]) for x0, x1 in zip(cuts[1], cuts[1][1:])]


def slice_levels(plane, normalization: dict, name: str = "The slice") -> tuple[np.ndarray, np.ndarray]:
    """The intensities `normalize` maps to 0 and 1 for one slice, read block by block.

    8- and 16-bit slices: the exact percentiles, from a histogram of every pixel. Others:
    the percentiles of an even sample of about `LEVEL_SAMPLE` pixels.

    Args:
        plane: (Y, X, C) array-like read by region (dask, zarr, numpy).

    Returns:
        (low, high), each (C,) float32.

    Raises:
        DataError: no finite value, or the same value everywhere (as `check_images`).
    """
    height, width, channels = plane.shape
    exact = plane.dtype.kind in "ui" and plane.dtype.itemsize <= 2
    stride = 1 if exact else max(1, math.ceil(math.sqrt(height * width / LEVEL_SAMPLE)))
    base = int(np.iinfo(plane.dtype).min) if exact else 0
    counts = [np.zeros(1 << (8 * plane.dtype.itemsize), np.int64) for _ in range(channels)] if exact else None
    samples = []
    for y0, y1, x0, x1 in block_grid(height, width):
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
    height, width = plane.shape[:2]
    own = slice_levels(plane, pipeline.info.normalization, name)  # also refuses a blank slice
    levels = pipeline.levels if pipeline.levels is not None else own
    geometry = _Geometry(pipeline, height, width)
    blocks = geometry.blocks()
    cache = _TileCache(Counter(key for block in blocks for key in geometry.tile_keys(block)))
    done, structure = 0, 0

    def tiles_done(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, len(cache.needs))

    try:
        for block in blocks:
            structure += predict_block_into(pipeline, plane, outputs, z, block, levels, cache, tiles_done, cancel,
                                            geometry)
    finally:
        cache.close()
    return structure


def predict_block_into(pipeline, plane, outputs, z: int, block: tuple[int, int, int, int], levels,
                       cache: _TileCache | None = None, progress=None, cancel: CancelCheck | None = None,
                       geometry: _Geometry | None = None) -> int:
    """Predict one (y0, y1, x0, x1) block of slice ``z`` and write its mask (and probability)
    into ``outputs``; returns its structure pixels. Without ``cache`` every tile it needs is
    predicted (a cluster's block, `core.cluster`)."""
    probability = predict_region(pipeline, plane, block, levels, progress, cancel, cache, geometry)
    y0, y1, x0, x1 = block
    mask = (probability > pipeline.threshold).astype(np.uint8)
    outputs.mask[z, y0:y1, x0:x1] = mask
    if outputs.probabilities is not None:
        outputs.probabilities[z, y0:y1, x0:x1] = probability
    return int(mask.sum())


def predict_region(pipeline, plane, region: tuple[int, int, int, int], levels, progress=None,
                   cancel: CancelCheck | None = None, cache: _TileCache | None = None,
                   geometry: _Geometry | None = None) -> np.ndarray:
    """(y1 - y0, x1 - x0) float32 probabilities of a (y0, y1, x0, x1) region of a large slice,
    each pixel as the whole slice's prediction has it (`in_blocks` must hold).

    Args:
        plane: (Y, X, C) array-like read by region; levels: the slice's (`slice_levels`).
        progress: called with the number of tiles computed after each batch.
        cache: tiles shared with the slice's other blocks; None: every tile is predicted.
    """
    geometry = geometry or _Geometry(pipeline, *plane.shape[:2])
    own = cache is None
    cache = cache or _TileCache(Counter(geometry.tile_keys(region)))
    try:
        return geometry.predict_block(plane, region, levels, cache, progress or (lambda count: None), cancel)
    finally:
        if own:
            cache.close()


def region_tile_count(pipeline, shape: tuple[int, int], region: tuple[int, int, int, int]) -> int:
    """How many tiles `predict_region` predicts for a region of a (Y, X) slice (for progress)."""
    return len(_Geometry(pipeline, *shape).tile_keys(region))


class _TileCache:
    """The network's output for tiles that several blocks need (those on a block border):
    computed once, kept on disk (a row of them spans the slice) until the last block that
    needs one has used it.

    Args:
        needs: how many blocks need each tile, by key.
    """

    def __init__(self, needs: Counter) -> None:
        self.needs, self.left = needs, Counter(needs)
        self.folder = Path(tempfile.mkdtemp(prefix="napari-unet-tiles-"))

    def _path(self, key) -> Path:
        return self.folder / ("_".join(map(str, (*key[0], "", *key[1:]))) + ".npy")

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


class _Geometry:
    """The whole slice's tile grid, and the tiles and source region each block needs."""

    def __init__(self, pipeline, height: int, width: int) -> None:
        self.pipeline = pipeline
        self.tile, self.margin = pipeline.tile, pipeline.info.tile_margin
        if self.margin is None:
            self.margin = self.tile // 8
        self.height, self.width = height, width
        self.padded = (height + 2 * self.margin, width + 2 * self.margin)
        if min(self.padded) < self.tile:
            raise ValueError("A slice smaller than a tile is predicted whole, not in blocks.")
        self.step = max(1, int(round(self.tile * (1 - pipeline.overlap))))
        self.starts = [tile_starts(length, self.tile, self.step) for length in self.padded]
        shift = pipeline.info.output_shift_px
        self.halo = math.ceil(max(abs(shift[0]), abs(shift[1]))) + 1 if any(shift) else 0
        self.flips = [()] + [(FLIP_AXES[name] - 1,) for name in pipeline.info.test_time_flips]  # 0 = y, 1 = x

    @property
    def edge(self) -> int:
        """The prediction blocks' edge: the whole number of tile steps nearest `BLOCK`."""
        return max(1, round(BLOCK / self.step)) * self.step

    def blocks(self, chunked: bool = False) -> list[tuple[int, int, int, int]]:
        """The slice's prediction blocks, cut through the middle of a tile, where no other tile
        overlaps it: a tile on a border is needed by both blocks, the fewest any cut gives.
        ``chunked``: cut every `edge` pixels instead, so each block is whole chunks of a
        store chunked by `edge` (a cluster's workers then never write the same chunk)."""
        first = self.edge if chunked else self.edge + self.tile // 2 - self.margin
        return block_grid(self.height, self.width, self.edge, first)

    def _extended(self, block: tuple[int, int, int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(y, x) ranges of the block and its shift halo, inside the slice."""
        y0, y1, x0, x1 = block
        return ((max(0, y0 - self.halo), min(self.height, y1 + self.halo)),
                (max(0, x0 - self.halo), min(self.width, x1 + self.halo)))

    def _frame(self, span: tuple[int, int], axis: int, flips: tuple[int, ...]) -> tuple[int, int]:
        """A padded-coordinate range in the (un)flipped slice's frame (the map is its own inverse)."""
        if axis not in flips:
            return span
        return self.padded[axis] - span[1], self.padded[axis] - span[0]

    def _tiles(self, block, flips) -> tuple[list[list[int]], list[tuple[int, int]]]:
        """Per axis, the tile starts (in the pass's frame) covering the extended block, and
        per axis the padded range those tiles read (in the unflipped frame)."""
        starts, sources = [], []
        for axis, (lo, hi) in enumerate(self._extended(block)):
            target = self._frame((lo + self.margin, hi + self.margin), axis, flips)
            chosen = [s for s in self.starts[axis] if s < target[1] and s + self.tile > target[0]]
            starts.append(chosen)
            sources.append(self._frame((chosen[0], chosen[-1] + self.tile), axis, flips))
        return starts, sources

    def tile_keys(self, block) -> list[tuple[tuple[int, ...], int, int]]:
        """(flips, y, x) of every tile the block needs, each pass's in its own frame."""
        return [(flips, y, x) for flips in self.flips for ys, xs in [self._tiles(block, flips)[0]]
                for y in ys for x in xs]

    def predict_block(self, plane, block, levels, cache: _TileCache, progress, cancel) -> np.ndarray:
        """(y1 - y0, x1 - x0) float32 probabilities of one block, as the whole slice has them.

        Tiles another block computed come from ``cache``; ``progress`` is called with the
        number of tiles computed after each batch."""
        plans = [(flips, *self._tiles(block, flips)) for flips in self.flips]
        # One source region (padded coordinates) serves every pass.
        source = [(min(p[2][axis][0] for p in plans), max(p[2][axis][1] for p in plans)) for axis in (0, 1)]
        image = self._read(plane, source, levels)
        predictor = self.pipeline.predictor
        device = self.pipeline.device
        batch = self.pipeline.batch_size or predictor.batch_size(self.tile)
        window = torch.from_numpy(blend_window(self.tile, self.pipeline.blend)).to(device)
        extended = self._extended(block)
        total = None
        with torch.inference_mode():
            for flips, (ys, xs), _sources in plans:
                frame = torch.from_numpy(image).to(device)
                if flips:
                    frame = torch.flip(frame, [axis + 1 for axis in flips])
                # The source region's origin in this pass's frame.
                origin = [self._frame(source[axis], axis, flips)[0] for axis in (0, 1)]
                output = torch.zeros(frame.shape[1:], dtype=torch.float32, device=device)
                weights = torch.zeros_like(output)
                jobs = [((flips, y, x), y - origin[0], x - origin[1]) for y in ys for x in xs]
                for _key, y, x in jobs:
                    weights[y : y + self.tile, x : x + self.tile] += window
                pending: list = []

                def run(pending: list) -> None:
                    if cancel is not None and cancel():
                        raise PredictionCancelled("Prediction cancelled.")
                    tiles = torch.stack([frame[:, y : y + self.tile, x : x + self.tile] for _key, y, x in pending])
                    for (key, y, x), values in zip(pending, predictor(tiles).float()):
                        cache.put(key, values[0])
                        output[y : y + self.tile, x : x + self.tile] += values[0] * window
                    progress(len(pending))
                    pending.clear()

                # In the whole slice's order (so the same sums): batches of new tiles, and
                # between them the tiles an earlier block computed.
                for key, y, x in jobs:
                    cached = cache.get(key)
                    if cached is None:
                        pending.append((key, y, x))
                        if len(pending) == batch:
                            run(pending)
                        continue
                    if pending:
                        run(pending)
                    output[y : y + self.tile, x : x + self.tile] += torch.from_numpy(cached).to(device) * window
                if pending:
                    run(pending)
                # The extended block in this frame, relative to the source region.
                cut = [self._frame((lo + self.margin, hi + self.margin), axis, flips)
                       for axis, (lo, hi) in enumerate(extended)]
                blended = (output / weights)[cut[0][0] - origin[0] : cut[0][1] - origin[0],
                                             cut[1][0] - origin[1] : cut[1][1] - origin[1]]
                if flips:
                    blended = torch.flip(blended, list(flips))
                total = blended if total is None else total + blended
            probability = torch.clamp(total / len(self.flips), 0.0, 1.0).cpu().numpy()
        probability = shift_output(probability[None], self.pipeline.info.output_shift_px)[0]
        (ey0, _), (ex0, _) = extended
        y0, y1, x0, x1 = block
        return probability[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0]

    def _read(self, plane, source, levels) -> np.ndarray:
        """(C, Y, X) float32: the padded-coordinate ``source`` range of the slice, normalised,
        mirror-padded where it passes the slice's borders."""
        (py0, py1), (px0, px1) = source
        m = self.margin
        y0, y1 = max(0, py0 - m), min(self.height, py1 - m)
        x0, x1 = max(0, px0 - m), min(self.width, px1 - m)
        region = normalize(np.asarray(plane[y0:y1, x0:x1])[None], self.pipeline.info.normalization, levels)[0]
        pad = [(y0 - (py0 - m), (py1 - m) - y1), (x0 - (px0 - m), (px1 - m) - x1), (0, 0)]
        region = np.pad(region, pad, mode="symmetric")
        return np.ascontiguousarray(region.transpose(2, 0, 1))


def prediction_edge(pipeline, shape: tuple[int, int]) -> int:
    """The edge of a slice's prediction blocks (`_Geometry.edge`): a cluster chunks its stores by it."""
    return _Geometry(pipeline, *shape).edge


def in_blocks(pipeline, shape: tuple[int, int]) -> bool:
    """Whether a (Y, X) slice is predicted block by block: more than `BLOCK_LIMIT` pixels,
    a grey model predicting at its own pixel size (no resampling, no field of view)."""
    return shape[0] * shape[1] > BLOCK_LIMIT and not pipeline.uses_fov and pipeline.scale is None


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


def label_cells_in_blocks(mask, z: int, cells, method: str, offset: int = 0, seed_depth: float = 0.7) -> int:
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

    Returns:
        The number of cells in the slice.
    """
    blocks = block_grid(*mask.shape[1:])
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
