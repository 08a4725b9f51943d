"""Large writes into a Labels layer, spread over turns of the Qt event loop."""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QTimer

# About 0.1 s of `data_setitem` here: one undo step; larger writes are cut into such steps.
STEP_PIXELS = 2_000_000
_running: set[SliceWriter] = set()  # writers between two turns of the event loop


class SliceWriter:
    """Writes {z: (rows, cols, values)} into a Labels layer with `data_setitem` (undoable),
    as plugin writes (not user edits), at most STEP_PIXELS per turn of the event loop.

    A slice the user edits before its turn comes is left as the user made it.
    """

    def __init__(self, layer: Labels, tracker, updates: dict[int, tuple]) -> None:
        self.layer, self.tracker = layer, tracker
        self.queue = sorted(updates.items())

    def start(self) -> int:
        """Write the first step now and schedule the rest; returns the number of undo steps."""
        sizes = [len(rows) for _z, (rows, _c, _v) in self.queue]
        steps = 1 + int(np.sum(sizes) // (STEP_PIXELS + 1)) if sizes else 0
        if self.queue:
            _running.add(self)
            self._step()
        return steps

    def _step(self) -> None:
        batch, pixels = [], 0
        while self.queue and (not batch or pixels + len(self.queue[0][1][0]) <= STEP_PIXELS):
            z, update = self.queue.pop(0)
            batch.append((z, update))
            pixels += len(update[0])
        batch = [(z, update) for z, update in batch if z not in self.tracker.edited]
        if batch and self.tracker.layer is self.layer:
            three_d = self.layer.data.ndim == 3
            rows = np.concatenate([u[0] for _z, u in batch])
            cols = np.concatenate([u[1] for _z, u in batch])
            values = np.concatenate([u[2] for _z, u in batch]).astype(self.layer.data.dtype)
            index = (np.concatenate([np.full(len(u[0]), z) for z, u in batch]), rows, cols) if three_d else (rows, cols)
            with self.tracker.programmatic():
                self.layer.data_setitem(index, values)
        if self.queue:
            QTimer.singleShot(0, self._step)
        else:
            _running.discard(self)
