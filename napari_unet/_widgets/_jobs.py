"""Run core jobs in a worker thread and show their progress without freezing the GUI.

The worker never touches layers or widgets: it only writes plain numbers and events
into a `JobState`; a QTimer in the GUI thread reads them four times a second and
updates the widget, the activity dock and plots.

Errors: core raises ValueError (and its DataError, CheckpointError) whose text is
already the user's message; `user_message` turns any exception into the one line the
widget shows. Nothing reaches napari's error handler: one error, one message.

A job ends with its widget: closing the viewer, or removing the dock widget, cancels it,
stops its timer and drops its callbacks (they would touch deleted widgets). A job made with
``close_wait_s`` also holds the window's closing until its worker has stopped.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from napari.qt.threading import create_worker
from napari.utils import progress
from qtpy.QtCore import QEvent, QObject, QTimer

POLL_MS = 250
# Between two GUI steps of a job: time for the canvas to draw and other timers to fire.
STEP_GAP_MS = 15


def user_message(exc: BaseException) -> str:
    """The one line a user reads for an exception from a job."""
    if isinstance(exc, ValueError):  # bad input: core's message says what to do
        return str(exc)
    if isinstance(exc, MemoryError):
        return "Not enough memory for this job: close other programs, or work on fewer slices."
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return f"A file could not be read or written{where}: {exc.strerror or exc}. Check the folder and the disk."
    logging.getLogger(__name__).error("napari-unet job failed", exc_info=exc)
    return f"Unexpected error ({type(exc).__name__}: {exc}). Please report it."


class JobState:
    """Shared between the worker (writes) and the GUI (reads)."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0
        self.events: list = []
        self.cancel = threading.Event()
        self.abandoned = False  # the widget is gone: write nothing, just stop
        self.note = ""  # what the worker is doing, when it is not what the progress says

    def report(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def cancelled(self) -> bool:
        return self.cancel.is_set()


class _DetachWatcher(QObject):
    """Calls ``callback`` when ``widget`` loses its parent (its dock widget was removed)."""

    def __init__(self, widget, callback: Callable[[], None]) -> None:
        super().__init__(widget)
        self._callback = callback
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ParentChange and obj.parent() is None:
            self._callback()
        return False


class BackgroundJob:
    """One worker-thread job with polling, a napari progress bar, and error reporting.

    Args:
        function: called in the worker thread with the `JobState`; its return value is
            handed to ``on_done`` in the GUI thread.
        on_done: called with the result; ``on_error`` with a user-facing message. It may
            return a list of further steps (callables) for the GUI thread: they run one
            per turn of the event loop (adding a layer, writing a large result), so the
            GUI keeps drawing between them; the job is running until the last is done.
        owner: the magicgui widget that started the job; the job ends with it.
        on_poll: called in the GUI thread with the state, four times a second.
        on_finally: called after ``on_done`` / ``on_error``.
        description: shown in napari's activity dock.
        activity: also show a progress bar in napari's activity dock. Its first use builds
            widgets for ~0.2 s, so long jobs with their own bar in the dock (fine-tune) skip it.
        close_wait_s: when the widget is destroyed (the window closed), wait this long at most
            for the worker to stop (at its next cancel check): a worker thread still running
            when Python exits aborts the process. 0: do not wait.
    """

    def __init__(
        self,
        function: Callable[[JobState], object],
        on_done: Callable[[object], None],
        on_error: Callable[[str], None],
        owner,
        on_poll: Callable[[JobState], None] | None = None,
        on_finally: Callable[[], None] | None = None,
        description: str = "napari-unet",
        activity: bool = True,
        close_wait_s: float = 0,
    ) -> None:
        self._activity = activity
        self._close_wait_s = close_wait_s
        self.worker_done = threading.Event()  # set in the worker thread when ``function`` returns or raises
        self.state = JobState()
        self._on_poll = on_poll
        self._on_done = on_done
        self._on_error = on_error
        self._on_finally = on_finally
        self._description = description
        self._progress: progress | None = None
        self._steps: deque = deque()
        self._worker_finished = self._result_handled = False
        self.running = False
        # _ignore_errors: the error goes to `errored` only, not also to sys.excepthook.
        if close_wait_s:
            function = self._signalling(function)
        self.worker = create_worker(function, self.state, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.finished.connect(self._finished)
        self.timer = QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self._poll)
        self._native = owner.native
        self._on_destroyed = lambda *_: self._closed()
        self._native.destroyed.connect(self._on_destroyed)
        self._watcher = _DetachWatcher(self._native, self.abandon)

    def start(self) -> None:
        self.running = True
        self.timer.start()
        self.worker.start()

    def cancel(self) -> None:
        self.state.cancel.set()

    def abandon(self) -> None:
        """The widget is closing: cancel, stop polling, and call none of its callbacks."""
        if not self.running:
            return
        self.state.abandoned = True
        self.state.cancel.set()
        try:
            self.timer.stop()
        except RuntimeError:  # the application is quitting and Qt deleted the timer first
            pass

    def _signalling(self, function: Callable[[JobState], object]) -> Callable[[JobState], object]:
        """``function``, setting `worker_done` when it ends (in the worker thread)."""

        def run(state: JobState):
            try:
                return function(state)
            finally:
                self.worker_done.set()

        return run

    def _closed(self) -> None:
        """The widget was destroyed: abandon the job, and wait for its worker when asked to."""
        running = self.running
        self.abandon()
        if running and self._close_wait_s:
            self.worker_done.wait(self._close_wait_s)

    def _poll(self) -> None:
        state = self.state
        if state.total and self._activity:
            if self._progress is None:
                self._progress = progress(total=state.total, desc=self._description)
            self._progress.update(state.done - self._progress.n)
        if self._on_poll is not None:
            self._on_poll(state)

    def _returned(self, result) -> None:
        if not self.state.abandoned:
            self._poll()
            self._steps.extend(self._on_done(result) or [])
        self._handled()

    def _next_step(self) -> None:
        if not self.running:  # completed already (the widget went away)
            return
        if self.state.abandoned:
            self._steps.clear()
        if self._steps:
            step = self._steps.popleft()
            try:
                step()
            except Exception as exc:  # noqa: BLE001 (shown to the user, once)
                self._steps.clear()
                self._on_error(user_message(exc))
            QTimer.singleShot(STEP_GAP_MS, self._next_step)
            return
        self._complete()

    def _errored(self, exc: BaseException) -> None:
        if not self.state.abandoned:
            self._on_error(user_message(exc))
        self._handled()

    def _handled(self) -> None:
        """The result (or error) was handled; Qt may deliver it before or after `finished`."""
        self._result_handled = True
        if self._worker_finished and self.running:
            QTimer.singleShot(0, self._next_step)

    def _finished(self) -> None:
        """The worker ended; the GUI steps `on_done` returned (if any) run before the job completes."""
        self.timer.stop()
        self._worker_finished = True
        if self.state.abandoned:  # the widget is gone: nothing to show, and its result may never come
            self._steps.clear()
            self._complete()
        elif self._result_handled:
            QTimer.singleShot(0, self._next_step)

    def _complete(self) -> None:
        self.running = False
        try:  # the widget may be gone already
            self._native.destroyed.disconnect(self._on_destroyed)
            self._watcher.deleteLater()
        except (RuntimeError, TypeError):
            pass
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if self._on_finally is not None and not self.state.abandoned:
            self._on_finally()
