"""Streamed prediction: a volume of any size, one slice at a time, into arrays on disk.

Memory holds one slice and its copies, never the volume: each slice is read from the lazy
volume, normalised with levels shared by the whole volume (`volume.volume_levels`),
predicted, and its mask (and probability, cell ids) written into the outputs before the
next one is read. What is written stays written when the job is cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .checkpoint import Checkpoint
from .data import DataError
from .predict import (
    CancelCheck,
    PredictionCancelled,
    ProgressCallback,
    TilePredictor,
    cell_instances,
    instance_method,
    predict_stack,
)
from .volume import volume_levels


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
    """

    done: list[int] = field(default_factory=list)
    blank: list[int] = field(default_factory=list)
    cancelled: bool = False
    structure: float = 0.0
    seconds: float = 0.0


def predict_volume(
    checkpoint: Checkpoint,
    volume,
    outputs: VolumeOutputs,
    slices: list[int] | None = None,
    threshold: float = 0.5,
    levels: tuple[np.ndarray, np.ndarray] | None = None,
    fov: str = "auto",
    pixel_size: float | None = None,
    tile: int | None = None,
    overlap: float = 0.25,
    batch_size: int | None = None,
    device="auto",
    precision: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    on_slice: Callable[[int], None] | None = None,
) -> StreamReport:
    """Predict ``slices`` of a volume one by one, writing each result as it is done.

    Args:
        volume: (Z, Y, X, C) array-like read one slice at a time (dask, zarr, numpy).
        outputs: arrays of shape (Z, Y, X) to write into.
        slices: which slices, in order (default all).
        levels: normalisation shared by all slices; default `volume_levels` of the volume
            for grey volumes; RGB photographs are each normalised on their own.
        fov: RGB only: "auto" sets the probability to 0 outside the field of view found
            in each photograph, "none" predicts everywhere.
        progress: called with (tiles done, tiles total) over all the slices.
        on_slice: called with z after slice z is written (e.g. to refresh a display).

    Returns:
        A `StreamReport`; a cancel stops between batches and is reported, not raised.
    """
    from .fov import field_of_view

    start = time.perf_counter()
    slices = list(range(volume.shape[0])) if slices is None else list(slices)
    grey = volume.shape[-1] == 1
    if levels is None and grey:
        levels = volume_levels(volume, checkpoint.normalization)
    predictor = TilePredictor(checkpoint.model, device, precision)
    report = StreamReport()
    offset, structure, pixels = 0, 0, 0
    for i, z in enumerate(slices):

        def slice_progress(done: int, total: int, i: int = i) -> None:
            if progress is not None:
                progress(i * total + done, len(slices) * total)

        image = np.asarray(volume[z])[None]
        try:
            probability = predict_stack(checkpoint, image, tile=tile, overlap=overlap, batch_size=batch_size,
                                        progress=slice_progress, cancel=cancel, pixel_size=pixel_size,
                                        levels=levels, predictor=predictor)[0]
        except PredictionCancelled:
            report.cancelled = True
            break
        except DataError:
            if np.ptp(image) > 0:  # a real problem, not an empty slice
                raise
            report.blank.append(z)
            probability = np.zeros(image.shape[1:3], np.float32)
        if not grey and fov == "auto" and z not in report.blank:
            probability[~field_of_view(image[0])] = 0.0
        mask = (probability > threshold).astype(np.uint8)
        outputs.mask[z] = mask
        if outputs.probabilities is not None:
            outputs.probabilities[z] = probability
        if outputs.instances is not None:
            cells = cell_instances(mask[None], instance_method(checkpoint))[0].astype(np.uint32)
            outputs.instances[z] = np.where(cells > 0, cells + offset, 0)
            offset += int(cells.max())
        structure, pixels = structure + int(mask.sum()), pixels + mask.size
        report.done.append(z)
        if on_slice is not None:
            on_slice(z)
    report.structure = structure / max(1, pixels)
    report.seconds = time.perf_counter() - start
    return report
