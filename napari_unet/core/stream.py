"""Streamed prediction: a volume of any size, one slice at a time, into arrays on disk.

Memory holds one slice and its copies, never the volume: each slice is read from the lazy
volume, predicted through the one `Pipeline` (so it is the mask the same slice gets in
memory), and its mask (and probability, cell ids) written into the outputs before the
next one is read. What is written stays written when the job is cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .blocks import SliceOf, block_grid, in_blocks, label_cells_in_blocks, predict_slice_in_blocks, refuse_whole
from .data import DataError
from .pipeline import Pipeline, PipelineResult
from .predict import CancelCheck, PredictionCancelled, ProgressCallback


@dataclass
class VolumeOutputs:
    """Where the results go: (Z, Y, X) arrays written slice by slice (zarr, memmap, numpy).

    Attributes:
        mask: uint8, 1 = structure.
        probabilities: float32 in [0, 1], or None.
        instances: uint32 cell ids (EM), unique across the slices of one run, or None.
    """

    mask: object
    probabilities: object = None
    instances: object = None


@dataclass
class StreamReport:
    """What a streamed prediction did.

    Attributes:
        done: slices predicted and written, in order.
        blank: slices left empty because they hold no image (one value everywhere).
        cancelled: True when it stopped early (what is in ``done`` is written).
        structure: share of structure pixels in the predicted slices.
        cells: number of cells in each slice predicted with instances (z -> count).
    """

    done: list[int] = field(default_factory=list)
    blank: list[int] = field(default_factory=list)
    cancelled: bool = False
    structure: float = 0.0
    seconds: float = 0.0
    cells: dict = field(default_factory=dict)


def predict_volume(
    pipeline: Pipeline,
    volume,
    outputs: VolumeOutputs,
    slices: list[int] | None = None,
    fov=None,
    global_ids: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    on_slice: Callable[[int], None] | None = None,
) -> StreamReport:
    """Predict ``slices`` of a volume one by one through ``pipeline``, writing each
    result as it is done (each slice exactly as `Pipeline.run` predicts it in memory).

    Args:
        volume: (Z, Y, X, C) array-like read one slice at a time (dask, zarr, numpy).
        outputs: arrays of shape (Z, Y, X) to write into.
        slices: which slices, in order (default all).
        fov: (Z, Y, X) array-like FOV the user gave (fundus), or None (the pipeline's mode).
        global_ids: cell ids follow on from the previous slice's (unique in the run);
            False writes each slice's own ids from 1 (a cluster numbers them afterwards,
            `core.cluster`).
        progress: called with (tiles done, tiles total) over all the slices.
        on_slice: called with z after slice z is written (e.g. to refresh a display).

    Returns:
        A `StreamReport`; a cancel stops between batches and is reported, not raised.
    """
    start = time.perf_counter()
    refuse_whole(pipeline, volume.shape[1:3])
    slices = list(range(volume.shape[0])) if slices is None else list(slices)
    report = StreamReport()
    offset, structure, pixels = 0, 0, 0
    for i, z in enumerate(slices):

        def slice_progress(done: int, total: int, i: int = i) -> None:
            if progress is not None:
                progress(i * total + done, len(slices) * total)

        if in_blocks(pipeline, volume.shape[1:3]):
            try:
                count = _predict_in_blocks(pipeline, volume, z, outputs, offset if global_ids else 0,
                                           slice_progress, cancel, report)
            except PredictionCancelled:
                report.cancelled = True
                break
            structure, pixels = structure + count, pixels + volume.shape[1] * volume.shape[2]
            offset += report.cells.get(z, 0) if global_ids else 0
            report.done.append(z)
            if on_slice is not None:
                on_slice(z)
            continue
        image = np.asarray(volume[z])[None]
        given = None if fov is None else np.asarray(fov[z])[None]
        try:
            result = pipeline.run(image, given, slice_progress, cancel)
        except PredictionCancelled:
            report.cancelled = True
            break
        except DataError:
            if np.ptp(image) > 0:  # a real problem, not an empty slice
                raise
            report.blank.append(z)
            empty = np.zeros(image.shape[:3], np.float32)
            result = PipelineResult(empty, empty.astype(np.uint8), empty.astype(np.int32) if pipeline.instances
                                    else None)
        outputs.mask[z] = result.mask[0]
        if outputs.probabilities is not None:
            outputs.probabilities[z] = result.probabilities[0]
        if outputs.instances is not None and result.cells is not None:
            cells = result.cells[0].astype(np.uint32)
            outputs.instances[z] = np.where(cells > 0, cells + offset, 0) if global_ids else cells
            report.cells[z] = int(cells.max())
            offset += report.cells[z]
        structure, pixels = structure + int(result.mask.sum()), pixels + result.mask.size
        report.done.append(z)
        if on_slice is not None:
            on_slice(z)
    report.structure = structure / max(1, pixels)
    report.seconds = time.perf_counter() - start
    return report


def _predict_in_blocks(pipeline: Pipeline, volume, z: int, outputs: VolumeOutputs, offset: int,
                       progress: ProgressCallback, cancel: CancelCheck | None, report: StreamReport) -> int:
    """One slice too large for memory, block by block (`core.blocks`); its cells numbered
    from ``offset + 1``. Returns its structure pixels; a slice with nothing to segment is
    written empty and listed in ``report.blank``."""
    plane = SliceOf(volume, z)
    try:
        structure = predict_slice_in_blocks(pipeline, plane, outputs, z, progress, cancel)
    except DataError:  # one value everywhere (or no finite one): no image, left empty
        report.blank.append(z)
        for y0, y1, x0, x1 in block_grid(*plane.shape[:2], pipeline.settings.block):
            for array in (outputs.mask, outputs.probabilities, outputs.instances):
                if array is not None:
                    array[z, y0:y1, x0:x1] = 0
        if outputs.instances is not None and pipeline.instances:
            report.cells[z] = 0
        return 0
    if outputs.instances is not None and pipeline.instances:
        report.cells[z] = label_cells_in_blocks(outputs.mask, z, outputs.instances, pipeline.info.instance_method,
                                                offset, edge=pipeline.settings.block)
    return structure
