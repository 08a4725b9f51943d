"""Large writes into a Labels layer, cut into steps the GUI runs one per turn of its event loop."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.layers import Labels

# About 0.05 s of `data_setitem` on a 2-core machine: one undo step; larger writes are cut into such steps.
STEP_PIXELS = 500_000


def write_steps(layer: Labels, tracker, updates: dict[int, tuple]) -> list[Callable[[], None]]:
    """Steps that write {z: (rows, cols, values)} into ``layer`` with `data_setitem` (each
    one undoable), as plugin writes (not user edits), STEP_PIXELS at most each.

    A slice the user edits before its step comes is left as the user made it. Run them
    with `BackgroundJob` (one per turn of the event loop, so the GUI keeps drawing).
    """
    batches, batch, pixels = [], [], 0
    for z, update in sorted(updates.items()):
        if batch and pixels + len(update[0]) > STEP_PIXELS:
            batches.append(batch)
            batch, pixels = [], 0
        batch.append((z, update))
        pixels += len(update[0])
    if batch:
        batches.append(batch)

    def write(batch: list) -> None:
        batch = [(z, update) for z, update in batch if z not in tracker.edited]
        if not batch:
            return
        rows = np.concatenate([u[0] for _z, u in batch])
        cols = np.concatenate([u[1] for _z, u in batch])
        values = np.concatenate([u[2] for _z, u in batch]).astype(layer.data.dtype)
        if layer.data.ndim == 3:
            index = (np.concatenate([np.full(len(u[0]), z) for z, u in batch]), rows, cols)
        else:
            index = (rows, cols)
        with tracker.programmatic():
            layer.data_setitem(index, values)

    return [lambda batch=batch: write(batch) for batch in batches]
