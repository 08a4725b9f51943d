"""A montage slice corrected region by region, its corrections kept and learnt by chunk.

A slice too large for one napari Labels layer is corrected a region at a time: Predict
predicts the region in view (`region_around`, `predict_montage_region`: each pixel as
the whole slice's prediction has it), the user paints it, and the corrections are
kept per `CHUNK` x `CHUNK` chunk of the slice in `MontageCorrections`:

* ``labels.zarr`` and ``edited.zarr``: (Z, Y, X) arrays of the montage's shape, chunked by
  `CHUNK`; only corrected chunks are ever written (the rest are no files at all);
* ``state.json``: the corrected chunks (z, chunk row, chunk column) and each slice's
  intensity levels (`core.blocks.slice_levels`, computed once per model normalisation).

A fine-tune reads only the corrected chunks and `CONTEXT` pixels of image around each
(`MontageCorrections.training_windows`).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from .blocks import SliceOf, predict_region, region_tiles, slice_levels
from .files import atomic_write
from .finetune import MAX_FOLDS, FineTune, FineTuneOptions
from .labels import IGNORE
from .predict import Region
from .volume import SIZES

#: Corrections are tracked, saved and learnt per CHUNK x CHUNK pixels of a slice.
CHUNK = 512
#: Pixels of image read around a corrected chunk for a fine-tune: the model sees them, learns
#: no label there.
CONTEXT = 64

Chunk = tuple[int, int, int]  # (z, chunk row, chunk column)

_STATE_LOCK = threading.Lock()  # one read-modify-write of a state.json at a time


def region_around(shape: tuple[int, int], center: tuple[float, float], size: int = SIZES.correct_region) -> Region:
    """The ``size`` (the region Predict opens, `core.volume.Sizes.correct_region`) square region
    of a (Y, X) slice around ``center`` (y, x), its corner on the chunk grid, inside the slice
    (the whole side where the slice is smaller)."""
    bounds = []
    for length, middle in zip(shape, center):
        span = min(size, length)
        start = max(0, min(int(round(middle - span / 2)), length - span)) // CHUNK * CHUNK
        bounds += [start, start + span]
    return tuple(bounds)


def region_chunks(z: int, region: Region) -> list[Chunk]:
    """The chunks a region covers, row by row."""
    y0, y1, x0, x1 = region
    return [(z, cy, cx) for cy in range(y0 // CHUNK, -(-y1 // CHUNK)) for cx in range(x0 // CHUNK, -(-x1 // CHUNK))]


def chunk_region(chunk: Chunk, shape: tuple[int, int]) -> Region:
    """(y0, y1, x0, x1) of a chunk in a (Y, X) slice."""
    _z, cy, cx = chunk
    return cy * CHUNK, min(shape[0], (cy + 1) * CHUNK), cx * CHUNK, min(shape[1], (cx + 1) * CHUNK)


def chunks_touched(rows: np.ndarray, cols: np.ndarray, z: int, origin: tuple[int, int]) -> set[Chunk]:
    """The chunks holding pixels (rows, cols) of a region whose corner is ``origin`` in slice z."""
    cy = (np.asarray(rows) + origin[0]) // CHUNK
    cx = (np.asarray(cols) + origin[1]) // CHUNK
    return {(int(z), int(a), int(b)) for a, b in set(zip(cy.tolist(), cx.tolist()))}


def fold_order(count: int, folds: int) -> list[int]:
    """An order of ``count`` parts (sorted by place) such that `core.finetune.make_folds`,
    which holds out parts i, i + folds, i + 2 * folds, ..., holds out neighbouring parts
    together: a fold is scored on chunks away from those it learnt, not between them."""
    runs = np.array_split(np.arange(count), max(1, min(folds, count)))
    return [int(run[k]) for k in range(max(len(r) for r in runs)) for run in runs if k < len(run)]


class MontageCorrections:
    """The corrections of one montage (a (Z, Y, X) stack of large slices), kept by chunk.

    Args:
        folder: where they live (created on the first write).
        shape: (Z, Y, X) of the montage.

    Raises:
        ValueError: the folder holds corrections of another shape, or cannot be read.
    """

    def __init__(self, folder: str | Path, shape: tuple[int, int, int]) -> None:
        self.folder, self.shape = Path(folder), tuple(int(n) for n in shape)
        self.corrected: set[Chunk] = set()
        self._levels: dict[int, list] = {}
        self._arrays: dict[str, object] = {}
        self._read_state()

    def _read_state(self) -> None:
        state = self.folder / "state.json"
        if not state.is_file():
            return
        try:
            raw = json.loads(state.read_text())
            saved_shape = tuple(raw["shape"])
            self.corrected = {tuple(int(v) for v in chunk) for chunk in raw["corrected"]}
            self._levels = {int(z): levels for z, levels in raw.get("levels", {}).items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"The montage corrections in {self.folder} could not be read ({exc}).") from exc
        if saved_shape != self.shape:
            raise ValueError(f"The corrections in {self.folder} belong to a montage of shape {saved_shape}, not "
                             f"{self.shape}: choose another corrections folder in Correct.")

    # ------------------------------------------------------------------ levels

    def levels(self, z: int, normalization: dict) -> tuple[np.ndarray, np.ndarray] | None:
        """Slice z's intensity levels (low, high), each (C,), if computed before for a model
        with this ``normalization`` (its percentiles)."""
        saved = self._levels.get(int(z))
        if not isinstance(saved, dict) or saved.get("normalization") != normalization:
            return None  # none yet, another model's, or unreadable: measured again
        return np.asarray(saved["low"], np.float32), np.asarray(saved["high"], np.float32)

    def set_levels(self, z: int, normalization: dict, levels: tuple[np.ndarray, np.ndarray]) -> None:
        saved = {"normalization": dict(normalization), "low": np.asarray(levels[0], float).tolist(),
                 "high": np.asarray(levels[1], float).tolist()}
        self._update(lambda: self._levels.__setitem__(int(z), saved))

    # ------------------------------------------------------------------ labels

    def _array(self, name: str, create: bool):
        """labels.zarr (uint8) or edited.zarr (uint8 0/1), None when not written yet and not ``create``."""
        import zarr

        if name not in self._arrays:
            path = self.folder / f"{name}.zarr"
            if not path.exists() and not create:
                return None
            if path.exists():
                self._arrays[name] = zarr.open_array(str(path), mode="r+")
            else:
                self.folder.mkdir(parents=True, exist_ok=True)
                extra = {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}
                self._arrays[name] = zarr.open_array(str(path), mode="w", shape=self.shape, dtype=np.uint8,
                                                     chunks=(1, CHUNK, CHUNK), fill_value=0, **extra)
        return self._arrays[name]

    def read(self, z: int, region: Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels uint8, edited bool, corrected bool), each (h, w), of a region of slice z:
        the saved labels and painted pixels, and which pixels lie in corrected chunks (where
        the saved labels hold; elsewhere only painted pixels were saved)."""
        y0, y1, x0, x1 = region
        corrected = np.zeros((y1 - y0, x1 - x0), bool)
        for chunk in set(region_chunks(z, region)) & self.corrected:
            cy0, cy1, cx0, cx1 = chunk_region(chunk, self.shape[1:])
            corrected[max(cy0, y0) - y0 : min(cy1, y1) - y0, max(cx0, x0) - x0 : min(cx1, x1) - x0] = True
        out = []
        for name, dtype in (("labels", np.uint8), ("edited", bool)):
            array = self._array(name, create=False)
            part = np.zeros(corrected.shape, np.uint8) if array is None else np.asarray(array[z, y0:y1, x0:x1])
            out.append(part.astype(dtype))
        return out[0], out[1], corrected

    def write(self, z: int, region: Region, labels: np.ndarray, edited: np.ndarray, painted: np.ndarray,
              corrected: bool) -> int:
        """Save a region of slice z, by chunk.

        The pixels painted since the last save are merged into what is saved (another region
        layer may have saved the same chunk since), so nobody's edits are undone. Corrected:
        its chunks not corrected before are also written whole (the labels as the user saw
        and checked them) and all its chunks count as corrected. Not corrected (the user
        unmarked it): its chunks stop counting as corrected.

        Args:
            labels: (h, w) uint8; edited: (h, w) bool, every pixel the user painted;
            painted: (h, w) bool, those painted since the last save.

        Returns:
            The number of chunks written.
        """
        y0, y1, x0, x1 = region
        inside = set(region_chunks(z, region))
        self.refresh()
        fresh = inside - self.corrected if corrected else set()
        touched = chunks_touched(*np.nonzero(painted), z, (y0, x0)) & inside
        arrays = {name: self._array(name, create=True) for name in ("labels", "edited")}
        for chunk in sorted(fresh | touched):  # one whole chunk per write: zarr rewrites only that file
            cy0, cy1, cx0, cx1 = chunk_region(chunk, self.shape[1:])
            on_disk = (z, slice(max(cy0, y0), min(cy1, y1)), slice(max(cx0, x0), min(cx1, x1)))
            here = tuple(slice(part.start - start, part.stop - start) for part, start in zip(on_disk[1:], (y0, x0)))
            new_labels, new_edited = labels[here].astype(np.uint8), edited[here]
            if chunk not in fresh:  # merge this layer's new strokes into what is saved
                mine = painted[here]
                new_labels = np.where(mine, new_labels, np.asarray(arrays["labels"][on_disk])).astype(np.uint8)
                new_edited = mine | (np.asarray(arrays["edited"][on_disk]) != 0)
            arrays["labels"][on_disk] = new_labels
            arrays["edited"][on_disk] = new_edited.astype(np.uint8)
        self._update(lambda: setattr(self, "corrected",
                                     self.corrected | inside if corrected else self.corrected - inside))
        return len(fresh | touched)

    def refresh(self) -> None:
        """Read the corrected chunks and levels as they are on disk now (another writer's)."""
        with _STATE_LOCK:
            self._read_state()

    def _update(self, change) -> None:
        """Apply ``change`` to the state as it is on disk now and write it: two writers (a
        prediction saving levels, the autosave saving chunks) never undo each other."""
        with _STATE_LOCK:
            self._read_state()
            change()
            self._write_state()

    def _write_state(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"shape": list(self.shape), "corrected": sorted(list(c) for c in self.corrected),
                           "levels": {str(z): levels for z, levels in sorted(self._levels.items())},
                           "saved": datetime.now().isoformat("T", "seconds")})
        atomic_write(self.folder / "state.json", lambda tmp: Path(tmp).write_text(text))

    def regions(self) -> list[tuple[int, Region]]:
        """The corrected regions: (z, box) around each group of touching corrected chunks."""
        from scipy import ndimage

        found = []
        for z in sorted({chunk[0] for chunk in self.corrected}):
            cells = np.array([chunk[1:] for chunk in self.corrected if chunk[0] == z])
            grid = np.zeros(cells.max(axis=0) + 1, bool)
            grid[tuple(cells.T)] = True
            for rows, cols in ndimage.find_objects(ndimage.label(grid)[0]):
                first, last = (z, rows.start, cols.start), (z, rows.stop - 1, cols.stop - 1)
                y0, _, x0, _ = chunk_region(first, self.shape[1:])
                _, y1, _, x1 = chunk_region(last, self.shape[1:])
                found.append((z, (y0, y1, x0, x1)))
        return found

    # ------------------------------------------------------------------ learning

    def training_windows(self, volume, normalization: dict, context: int = CONTEXT, folds: int = MAX_FOLDS):
        """What a fine-tune learns from: each corrected chunk with ``context`` pixels of image
        around it, in an order that keeps neighbouring chunks in one fold (`fold_order`).

        Args:
            volume: (Z, Y, X, C) array-like of the montage read by region (dask, zarr).
            normalization: the model's (`ModelDescription.normalization`): whose levels.

        Returns:
            images: (N, H, W, C) raw windows, as the montage stores them;
            labels: (N, H, W) uint8, IGNORE outside the window's own chunk;
            edited: (N, H, W) bool, the painted pixels of that chunk;
            chunks: the N chunks;
            windows: their N (y0, y1, x0, x1) windows in their slices;
            levels: their N slices' (low, high) intensity levels, which Predict
                normalised them on (`core.blocks.slice_levels`).

        Raises:
            ValueError: no corrected chunk.
        """
        if not self.corrected:
            raise ValueError("No corrected region yet: predict a region, correct it, and it counts as corrected.")
        height, width = self.shape[1:]
        side = (min(CHUNK + 2 * context, height), min(CHUNK + 2 * context, width))
        ordered = sorted(self.corrected)
        ordered = [ordered[i] for i in fold_order(len(ordered), folds)]
        labels_store, edited_store = self._array("labels", create=False), self._array("edited", create=False)
        images, labels, edited, windows, window_levels = [], [], [], [], []
        for chunk in ordered:
            z = chunk[0]
            levels = self.levels(z, normalization)
            if levels is None:  # a model with other percentiles than Predict's: measured now, kept
                levels = slice_levels(SliceOf(volume, z), normalization, f"Slice {z}")
                try:
                    self.set_levels(z, normalization, levels)
                except OSError:  # not kept: measured again next time
                    pass
            cy0, cy1, cx0, cx1 = chunk_region(chunk, (height, width))
            wy0 = max(0, min(cy0 - context, height - side[0]))
            wx0 = max(0, min(cx0 - context, width - side[1]))
            window = (slice(wy0, wy0 + side[0]), slice(wx0, wx0 + side[1]))
            windows.append((wy0, wy0 + side[0], wx0, wx0 + side[1]))
            images.append(np.asarray(volume[(z, *window)]))
            window_levels.append(levels)
            own = np.zeros(side, bool)
            own[cy0 - wy0 : cy1 - wy0, cx0 - wx0 : cx1 - wx0] = True
            saved = np.asarray(labels_store[(z, *window)]) if labels_store is not None else np.zeros(side, np.uint8)
            labels.append(np.where(own, saved, IGNORE).astype(np.uint8))
            painted = np.asarray(edited_store[(z, *window)]) if edited_store is not None else np.zeros(side, np.uint8)
            edited.append(own & (painted != 0))
        return np.stack(images), np.stack(labels), np.stack(edited), ordered, windows, window_levels


@dataclass
class RegionPrediction:
    """A montage region as Predict shows it, each (h, w).

    Attributes:
        mask: uint8 1 = structure: the prediction, with the saved corrections in place
            (in corrected chunks, and the user's strokes anywhere).
        edited: bool, the pixels the user painted before; corrected: bool, those in
            corrected chunks; probability: float32 in [0, 1].
    """

    mask: np.ndarray
    edited: np.ndarray
    corrected: np.ndarray
    probability: np.ndarray


def region_tile_count(pipeline, shape: tuple[int, int], region: Region) -> int:
    """How many tiles predicting a region of a (Y, X) slice computes (for progress)."""
    return len(region_tiles(pipeline, shape, region))


def predict_montage_region(pipeline, volume, corrections: MontageCorrections, z: int, region: Region,
                           progress=None, cancel=None, note=None) -> RegionPrediction:
    """Predict a region of montage slice ``z`` as the whole slice's prediction has it, on
    the slice's levels (measured once, block by block, and kept beside the montage), with
    the corrections saved there put back.

    Args:
        pipeline: a `Pipeline` for which `core.blocks.in_blocks` holds.
        volume: (Z, Y, X, C) array-like of the montage read by region.
        progress: called with (tiles done, tiles total); note: called with a sentence for
            the user before a long step.

    Raises:
        DataError: a slice with nothing to segment; PredictionCancelled: ``cancel`` said so.
    """
    plane = SliceOf(volume, z)
    corrections.refresh()
    normalization = pipeline.info.normalization
    levels = corrections.levels(z, normalization)
    if levels is None:
        if note is not None:
            note(f"Measuring the intensities of slice {z} (once, {volume.shape[1] * volume.shape[2]:,} px)…")
        levels = slice_levels(plane, normalization, f"Slice {z}", pipeline.settings.block)
        try:
            corrections.set_levels(z, normalization, levels)
        except OSError:  # not kept (measured again next time); the autosave will say where it failed
            pass
    probability = predict_region(pipeline, plane, region, levels, progress, cancel)
    mask = pipeline.mask(probability[None])[0]
    saved, edited, corrected = corrections.read(z, region)
    mask[corrected | edited] = saved[corrected | edited]  # corrected chunks, and strokes anywhere
    return RegionPrediction(mask, edited, corrected, probability)


def describe_chunks(chunks: list[Chunk]) -> str:
    """How a user reads a few chunks: "slice 0, y 1,024-2,048, x 512-1,536" (their bounding box)."""
    by_slice: dict[int, list[Chunk]] = {}
    for chunk in chunks:
        by_slice.setdefault(chunk[0], []).append(chunk)
    parts = []
    for z, group in sorted(by_slice.items()):
        rows, cols = [c[1] for c in group], [c[2] for c in group]
        parts.append(f"slice {z}, y {min(rows) * CHUNK:,}-{(max(rows) + 1) * CHUNK:,}, "
                     f"x {min(cols) * CHUNK:,}-{(max(cols) + 1) * CHUNK:,}")
    return "; ".join(parts)


def fine_tune_on_chunks(checkpoint, volume, corrections: MontageCorrections, options: FineTuneOptions | None = None,
                        start_name: str | None = None) -> tuple[FineTune, list[Chunk]]:
    """The one-click fine-tune (`core.finetune.FineTune`: cross-validated, kept only when
    verified) on a montage's corrected chunks, each read with its `CONTEXT`.

    Args:
        volume: (Z, Y, X, C) array-like of the montage read by region.
        options: ``options.predict`` as Predict predicted the regions (tile, overlap, ...).

    Returns:
        (the fine-tune, to run; the chunks, in the order of its parts).
    """
    options = options or FineTuneOptions()
    normalization = checkpoint.info.normalization
    images, labels, edited, chunks, windows, levels = corrections.training_windows(volume, normalization)
    # Predict predicts a montage's regions at the model's own pixel size only
    # (`core.blocks.in_blocks`), so the fine-tune learns them there too.
    options = replace(options, predict=options.predict.but(pixel_size=None))

    def predict_windows(pipeline, parts: list[int]) -> np.ndarray:
        """Each window as Predict predicts it: on its whole slice's tile grid and levels. The
        windows of one slice are predicted together, as the box around them, when that box
        is not much larger than they are (neighbouring chunks: their tiles overlap)."""
        out = {}
        for z in sorted({chunks[i][0] for i in parts}):
            group = [i for i in parts if chunks[i][0] == z]
            y0, x0 = (min(windows[i][k] for i in group) for k in (0, 2))
            y1, x1 = (max(windows[i][k] for i in group) for k in (1, 3))
            area = sum((windows[i][1] - windows[i][0]) * (windows[i][3] - windows[i][2]) for i in group)
            boxes = [(y0, y1, x0, x1)] if (y1 - y0) * (x1 - x0) <= 2 * area else [windows[i] for i in group]
            for box in boxes:
                probability = predict_region(pipeline, SliceOf(volume, z), box, corrections.levels(z, normalization))
                for i in group:
                    wy0, wy1, wx0, wx1 = windows[i]
                    if box[0] <= wy0 and wy1 <= box[1] and box[2] <= wx0 and wx1 <= box[3]:
                        out[i] = probability[wy0 - box[0] : wy1 - box[0], wx0 - box[2] : wx1 - box[2]]
        return np.stack([out[i] for i in parts])

    run = FineTune(checkpoint, images, labels, list(range(len(chunks))), edited, options=options,
                   start_name=start_name, part_names=lambda parts: describe_chunks([chunks[i] for i in parts]),
                   predict_parts=predict_windows, part_levels=levels)
    return run, chunks
