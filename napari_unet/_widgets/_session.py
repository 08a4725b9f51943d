"""State shared by the dock widgets of one viewer: the current model, the corrections and
the sizes of large data."""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
from magicgui.widgets import Container
from napari.layers import Labels
from psygnal import Signal
from qtpy.QtCore import QTimer

from ..core.checkpoint import Checkpoint
from ..core.corrections import (
    CorrectionStore,
    VolumeState,
    corrections_folder,
    edited_mask,
    edited_planes,
    save_volume_state,
)
from ..core.regions import CHUNK, region_chunks
from ..core.settings import PredictSettings
from ..core.volume import SIZES, Sizes
from ._layers import layer_uid, plugin_meta
from ._montage import region_of, save_region

AUTOSAVE_MS = 60_000


class CorrectionTracker:
    """Which slices of a Labels layer the user edited, and which count as corrected.

    Edited slices are marked corrected at once (the user can unmark them); plugin writes
    happen inside `programmatic()` and are not counted as edits.
    """

    def __init__(self, layer: Labels) -> None:
        self._layer = weakref.ref(layer)
        self.edited: set[int] = set()
        self.corrected: set[int] = set()
        self.edited_pixels: dict[int, np.ndarray] = {}  # z -> (Y, X) bool
        self.dirty = False
        self.unsaved_slices: set[int] = set()  # slices edited since the last save
        self.region = region_of(layer)  # (z, (y0, y1, x0, x1)) of a montage region layer, else None
        # A montage region's pixels painted since the last save, and whether the user unmarked it.
        self.unsaved_pixels = np.zeros(self._plane_shape(), bool) if self.region is not None else None
        self._unmarked = False
        self.changed = _TrackerSignals()
        self._suspended = 0
        layer.events.paint.connect(self._on_paint)

    @property
    def layer(self) -> Labels | None:
        return self._layer()

    @contextmanager
    def programmatic(self):
        """Writes by the plugin itself (predictions, restores) are not user edits."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    def _on_paint(self, event) -> None:
        if self._suspended or self.layer is None:
            return
        for atom in event.value or []:
            for z, rows, cols in self._atom_pixels(atom):
                plane = self.edited_pixels.setdefault(z, np.zeros(self._plane_shape(), bool))
                plane[rows, cols] = True
                self.unsaved_slices.add(z)
                if self.unsaved_pixels is not None:
                    self.unsaved_pixels[rows, cols] = True
                if z not in self.edited:
                    self.edited.add(z)
                    self.corrected.add(z)
        self.dirty = True
        self.changed.emit()

    def _plane_shape(self) -> tuple[int, int]:
        return tuple(self.layer.data.shape[-2:])

    def _atom_pixels(self, atom):
        """Yield (z, rows, cols) of the pixels an undo-history atom changed."""
        three_d = self.layer.data.ndim == 3
        if hasattr(atom, "slice_key"):  # napari's masked paint atom: a box and a mask
            box = atom.slice_key
            shape = tuple(s.stop - s.start for s in box)
            mask = atom.mask if atom.mask is not None else np.ones(shape, bool)
            index = np.nonzero(mask)
            coords = [i + s.start for i, s in zip(index, box)]
        else:  # data_setitem's (indices, old values, new values)
            coords = [np.asarray(i) for i in atom[0]]
        if three_d:
            for z in np.unique(coords[0]):
                pick = coords[0] == z
                yield int(z), coords[1][pick], coords[2][pick]
        else:
            yield 0, coords[0], coords[1]

    def set_corrected(self, z: int, corrected: bool) -> None:
        (self.corrected.add if corrected else self.corrected.discard)(int(z))
        self._unmarked = not corrected
        self.dirty = True
        self.changed.emit()

    def restore(self, corrected: list[int], edited: list[int], edited_pixels: np.ndarray | dict) -> None:
        """Bring back a saved state; ``edited_pixels`` is bool, the layer's shape, or
        {z: (Y, X) bool} for the edited slices only (volumes)."""
        self.corrected, self.edited = set(corrected), set(edited)
        self._unmarked = False
        if isinstance(edited_pixels, dict):
            self.edited_pixels = {int(z): plane for z, plane in edited_pixels.items()}
        else:
            self.edited_pixels = edited_planes(edited_pixels)
        self.dirty = False
        self.changed.emit()

    def edited_mask(self) -> np.ndarray:
        """The edited pixels as one bool array of the layer's shape."""
        return edited_mask(self.edited_pixels, self.layer.data.shape)

    def part_name(self, z: int) -> str:
        """"slice 3", or for a montage's region "region y 2,048-4,096, x 0-2,048 of slice 1"."""
        if self.region is None:
            return f"slice {z}"
        montage_z, (y0, y1, x0, x1) = self.region
        return f"region y {y0:,}-{y1:,}, x {x0:,}-{x1:,} of slice {montage_z}"

    def summary(self) -> str:
        """What counts as corrected, in Correct's words: the slices, or for a montage's region
        what Fine-tune learns of it."""
        corrected = sorted(self.corrected)
        if self.region is None:
            return f"{len(corrected)} corrected slice(s): {corrected}."
        z, region = self.region
        what = ("This region counts as corrected: Fine-tune learns its" if corrected else
                "Paint this region, or mark it corrected, and Fine-tune learns its")
        return (f"{what} {len(region_chunks(z, region))} chunks of {CHUNK} px with the other "
                "corrected regions of the montage.")

    def store(self, root: Path | None = None) -> CorrectionStore:
        """Where this layer's corrections go: keyed by the image's path, or its pixels' hash."""
        meta = plugin_meta(self.layer)
        key = meta.get("image_hash") or layer_uid(self.layer)
        return CorrectionStore(corrections_folder(meta.get("image_source"), key, root))

    def save(self, root: Path | None = None) -> Path:
        """Write the labels, the slice lists and the edited pixels to disk (one atomic file).

        A layer backed by a store on disk (a volume's prediction) holds its labels there,
        written as they are painted; then only the slice lists and the edited slices' pixels
        are written (`core.corrections.save_volume_state`). A montage region's are written
        by chunk (`_montage.save_region`).
        """
        layer = self.layer
        self.dirty = False  # an edit made while saving sets it again
        if self.region is not None:  # a montage's region: by chunk, beside the montage
            return self._save_region()
        if not isinstance(layer.data, np.ndarray):
            folder = plugin_meta(layer).get("store") or self.store(root).folder  # e.g. a mask.zarr opened by hand
            return self._save_state(Path(folder))
        store, self.unsaved_slices = self.store(root), set()  # the whole stack is written
        store.save(np.asarray(layer.data), sorted(self.corrected), sorted(self.edited),
                   plugin_meta(layer).get("image_source", ""), self.edited_mask())
        return store.folder

    def _save_region(self) -> Path:
        """A montage region: its new strokes, and its chunks when it is corrected (or no longer
        is, when the user unmarked it). A region left untouched writes nothing, so opening a
        region beside a corrected one never unmarks that one's chunks."""
        corrected, unmarked = 0 in self.corrected, self._unmarked
        painted, self.unsaved_pixels = self.unsaved_pixels, np.zeros_like(self.unsaved_pixels)
        self._unmarked = False
        try:
            if corrected or unmarked or painted.any():
                save_region(self.layer, corrected, self.edited_pixels.get(0), painted)
        except BaseException:
            self.unsaved_pixels |= painted  # written next time
            self._unmarked = self._unmarked or unmarked
            raise
        return Path(plugin_meta(self.layer)["montage"])

    def _save_state(self, folder: Path) -> Path:
        changed, self.unsaved_slices = self.unsaved_slices, set()
        state = VolumeState(labels=plugin_meta(self.layer).get("labels", ""), corrected_slices=sorted(self.corrected),
                            edited_slices=sorted(self.edited))
        return save_volume_state(folder, state, {z: self.edited_pixels[z] for z in changed & set(self.edited_pixels)})


class _TrackerSignals:
    """A tiny signal: weak references to bound methods, so closed widgets drop out."""

    def __init__(self) -> None:
        self._callbacks: list[weakref.WeakMethod] = []

    def connect(self, callback) -> None:
        self._callbacks.append(weakref.WeakMethod(callback))

    def emit(self) -> None:
        for ref in list(self._callbacks):
            callback = ref()
            if callback is None:
                self._callbacks.remove(ref)
                continue
            try:
                callback()
            except RuntimeError:  # its Qt widget was deleted
                self._callbacks.remove(ref)


OUR_WIDGET = "napari_unet_widget"  # a Qt property that marks our dock widgets' contents (its opening order)
_opened = iter(range(1, 1 << 30))


def dock_beside_ours(native) -> None:
    """Put a newly docked widget in a tab beside the other napari-unet docks of its area,
    and show it. Plugins ▸ napari-unet would otherwise stack the five widgets in one column
    over 2,000 px tall, and Qt makes the window at least that tall: off most screens."""
    from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

    try:
        dock = native.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
    except RuntimeError:  # closed before it was docked
        return
    window = dock.parentWidget() if dock is not None else None
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return
    area = window.dockWidgetArea(dock)
    def opened(other) -> int:  # when its widget was made; 0 for others' docks
        return max([child.property(OUR_WIDGET) or 0 for child in other.findChildren(QWidget)], default=0)

    earlier = [other for other in window.findChildren(QDockWidget)
               if other is not dock and 0 < opened(other) < opened(dock) and not other.isFloating()
               and other.toggleViewAction().isChecked() and window.dockWidgetArea(other) == area]
    if earlier and not set(window.tabifiedDockWidgets(dock)) & set(earlier):  # (`napari-unet gui` tabs them itself)
        window.tabifyDockWidget(min(earlier, key=opened), dock)  # beside the first opened: one group of tabs
        dock.raise_()


class Session:
    """Per-viewer state: the model in use, the fine-tuned model, correction trackers, sizes."""

    model_changed = Signal()  # a fine-tune made a new model (`fine_tuned`, now also `current`)
    prediction_done = Signal()  # a Predict job ended (its model, when it predicted, is `current`)

    def __init__(self) -> None:
        self.current: Checkpoint | None = None  # the model of the last prediction or fine-tune
        self.current_label = ""
        # Predict's last choices: tile, overlap, pixel_size, threshold, device, and the model
        # they were made with. The fine-tune re-predicts with its tile and overlap (keeping its
        # own threshold); Correct ranks slices by predicting as Predict did.
        self.predict_settings: PredictSettings | None = None
        self.predicted_with: Checkpoint | None = None  # the model of the last Predict
        # When data is large (read lazily, by region, predicted in blocks, a montage): every
        # widget of this viewer reads these; a test sets small ones.
        self.sizes: Sizes = SIZES
        self.fine_tuned: Checkpoint | None = None
        self.fine_tuned_path: Path | None = None
        self.corrections_dir: Path | None = None  # None = beside the image
        self._trackers: dict[int, CorrectionTracker] = {}
        self.autosave_timer = QTimer()
        self.autosave_timer.setInterval(AUTOSAVE_MS)
        self.autosave_timer.timeout.connect(self._autosave_quietly)
        self.autosave_timer.start()
        self.last_autosave: str = ""
        self.autosave_error: str = ""
        self._saving = threading.Lock()
        self.autosave_thread: threading.Thread | None = None
        self._widgets = 0

    def last_settings(self) -> PredictSettings:
        """Predict's last settings; before any prediction, the defaults at this session's
        block sizes."""
        if self.predict_settings is not None:
            return self.predict_settings
        return PredictSettings(block=self.sizes.block, block_limit=self.sizes.large_slice)

    def attach(self, widget) -> None:
        """Count ``widget`` as open; when the last one closes (the viewer was closed, or
        every dock widget removed), the autosave timer stops."""
        self._widgets += 1
        widget.native.destroyed.connect(self._detach)
        widget.native.setProperty(OUR_WIDGET, next(_opened))
        QTimer.singleShot(0, lambda: dock_beside_ours(widget.native))

    def _detach(self, *_args) -> None:
        self._widgets -= 1
        if self._widgets <= 0:
            try:
                self.autosave_timer.stop()
            except RuntimeError:  # Qt is shutting down and deleted the timer first
                pass

    def tracker(self, layer: Labels) -> CorrectionTracker:
        key = id(layer)
        tracker = self._trackers.get(key)
        if tracker is None or tracker.layer is not layer:
            tracker = self._trackers[key] = CorrectionTracker(layer)
        return tracker

    def known_tracker(self, layer: Labels) -> CorrectionTracker | None:
        tracker = self._trackers.get(id(layer))
        return tracker if tracker is not None and tracker.layer is layer else None

    def autosave(self) -> list[Path]:
        """Save every tracker with unsaved edits (called before fine-tunes; the timer saves
        in a thread, `_autosave_quietly`)."""
        saved = []
        with self._saving:  # one save at a time: the timer's may be running
            for tracker in list(self._trackers.values()):
                if tracker.layer is not None and tracker.dirty:
                    saved.append(tracker.save(self.corrections_dir))
        if saved:
            self.last_autosave = datetime.now().strftime("%H:%M:%S")
        return saved

    def _autosave_quietly(self) -> None:
        """The timer's autosave, in a thread: compressing and writing a large stack takes
        seconds the GUI must not wait for. A failure is shown in the Correct widget's next
        refresh, not raised; a save still running when the timer fires again is left to end."""
        if self._saving.locked():
            return
        self.autosave_thread = threading.Thread(target=self.save_quietly, name="napari-unet autosave", daemon=True)
        self.autosave_thread.start()

    def save_quietly(self) -> None:
        """`autosave` without raising (a worker thread's): a failure is shown in the Correct
        widget's next refresh and the edits are saved again next time."""
        try:
            self.autosave()
            self.autosave_error = ""
        except Exception as exc:  # noqa: BLE001 (a thread: shown in Correct, never lost in a log)
            self.autosave_error = f"Autosave failed ({exc}): choose another folder in Correct."
            for tracker in list(self._trackers.values()):
                if tracker.layer is not None:
                    tracker.dirty = True  # try again next time

    def autosave_note(self) -> str:
        """" Autosaved at 14:02:11." (or why the last autosave failed) for Correct's status; "" before any."""
        if self.autosave_error:
            return f" {self.autosave_error}"
        return f" Autosaved at {self.last_autosave}." if self.last_autosave else ""

    def set_fine_tuned(self, checkpoint: Checkpoint, path: Path) -> None:
        self.fine_tuned, self.fine_tuned_path = checkpoint, path
        self.current, self.current_label = checkpoint, f"fine-tuned ({path.name})"
        self.model_changed.emit()


_sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def real_viewer(napari_viewer):
    """The viewer itself. napari hands plugin widgets a proxy (``PublicOnlyProxy``) that
    wraps every object it returns anew, so layers fetched through it are never ``is`` the
    layers in events; the widgets keep the real viewer to link layers by identity."""
    return getattr(napari_viewer, "__wrapped__", napari_viewer)


def get_session(viewer) -> Session:
    """The one session of ``viewer``, shared by all its widgets however they were opened."""
    viewer = real_viewer(viewer)
    session = _sessions.get(viewer)
    if session is None:
        session = _sessions[viewer] = Session()
    return session


class SessionWidget(Container):
    """A dock widget of the plugin: it keeps the real viewer (`real_viewer`) and its
    session, and counts as open there (docked in a tab beside the others).

    Args:
        napari_viewer: the viewer napari hands the widget (the name tells napari to).
        labels: show the sub-widgets' labels beside them.
    """

    def __init__(self, napari_viewer, labels: bool = True) -> None:
        super().__init__(labels=labels)
        self.viewer = real_viewer(napari_viewer)
        self.session = get_session(self.viewer)
        self.session.attach(self)
