"""Run core jobs in a worker thread and show their progress without freezing the GUI.

The worker never touches layers or widgets: it only writes plain numbers and events
into a `JobState`; a QTimer in the GUI thread reads them four times a second and
updates the widget, the activity dock and plots.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

POLL_MS = 250


class JobState:
    """Shared between the worker (writes) and the GUI (reads)."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0
        self.events: list = []
        self.cancel = threading.Event()

    def report(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def cancelled(self) -> bool:
        return self.cancel.is_set()


class BackgroundJob:
    """One worker-thread job with polling, a napari progress bar, and error reporting.

    Args:
        function: called in the worker thread with the `JobState`; its return value is
            handed to ``on_done`` in the GUI thread.
        on_poll: called in the GUI thread with the state, four times a second.
        on_done: called with the result; ``on_error`` with a user-facing message.
        description: shown in napari's activity dock.
        activity: also show a progress bar in napari's activity dock. Its first use builds
            widgets for ~0.2 s, so long jobs with their own bar in the dock (fine-tune) skip it.
    """

    def __init__(
        self,
        function: Callable[[JobState], object],
        on_done: Callable[[object], None],
        on_error: Callable[[str], None],
        on_poll: Callable[[JobState], None] | None = None,
        on_finally: Callable[[], None] | None = None,
        description: str = "napari-unet",
        activity: bool = True,
    ) -> None:
        self._activity = activity
        self.state = JobState()
        self._on_poll = on_poll
        self._on_done = on_done
        self._on_error = on_error
        self._on_finally = on_finally
        self._description = description
        self._progress: progress | None = None
        self.running = False
        self.worker = create_worker(function, self.state, _start_thread=False)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.finished.connect(self._finished)
        self.timer = QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self._poll)

    def start(self) -> None:
        self.running = True
        self.timer.start()
        self.worker.start()

    def cancel(self) -> None:
        self.state.cancel.set()

    def _poll(self) -> None:
        state = self.state
        if state.total and self._activity:
            if self._progress is None:
                self._progress = progress(total=state.total, desc=self._description)
            self._progress.update(state.done - self._progress.n)
        if self._on_poll is not None:
            self._on_poll(state)

    def _returned(self, result) -> None:
        self._poll()
        self._on_done(result)

    def _errored(self, exc: BaseException) -> None:
        if isinstance(exc, (ValueError, MemoryError)):  # bad input: the message says what to do
            message = str(exc)
        else:
            message = f"Unexpected error ({type(exc).__name__}: {exc}). Please report it."
            logging.getLogger(__name__).debug("worker failed", exc_info=exc)
        show_error(message)
        self._on_error(message)

    def _finished(self) -> None:
        self.timer.stop()
        self.running = False
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if self._on_finally is not None:
            self._on_finally()
