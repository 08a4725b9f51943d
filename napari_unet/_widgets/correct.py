"""Correct widget: track edited slices, mark them corrected, paint 'ignore', autosave."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, PushButton
from napari.layers import Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QListWidget, QListWidgetItem

from ..core.corrections import ignore_unedited
from ..core.labels import IGNORE, STRUCTURE
from ._layers import current_slice, follow_new_layers, labels_stack, layer_choices, spatial_ndim
from ._session import get_session, real_viewer
from ._text import text_row


class CorrectWidget(Container):
    """Lists the slices you edited; checked slices are the ones a fine-tune learns from."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer = real_viewer(napari_viewer)
        self.session = get_session(viewer)
        self.session.attach(self)
        self.layer = ComboBox(label="Labels", choices=self._labels_choices)
        self.help = text_row(value="Paint with label 1 (structure) or 0 (background); label 2 = ignore.")
        self.paint_structure = PushButton(text="Paint structure (1)")
        self.paint_background = PushButton(text="Erase to background (0)")
        self.paint_ignore = PushButton(text="Paint 'ignore' (2)")
        self.mark = PushButton(text="Mark slice corrected")
        self.unmark = PushButton(text="Unmark slice")
        self.ignore_rest = PushButton(text="Ignore unedited parts", tooltip="Only the pixels near your edits on this slice are learnt")
        self.folder = FileEdit(label="Autosave to", mode="d", tooltip="Empty: next to the image")
        self.save_now = PushButton(text="Save corrections now")
        self.status = text_row()
        def row(*widgets):
            return Container(widgets=widgets, layout="horizontal", labels=False)

        self.extend([self.layer, self.help, row(self.paint_structure, self.paint_background),
                     row(self.mark, self.unmark), row(self.paint_ignore, self.ignore_rest),
                     self.folder, self.save_now, self.status])
        self.slices = QListWidget()
        self.slices.setMinimumHeight(120)
        self.native.layout().insertWidget(2, self.slices)
        self.slices.itemChanged.connect(self._item_changed)
        self.slices.itemClicked.connect(self._item_clicked)
        self.layer.changed.connect(self._layer_changed)
        self.paint_structure.changed.connect(lambda: self._paint_with(STRUCTURE))
        self.paint_background.changed.connect(lambda: self._paint_with(0))
        self.paint_ignore.changed.connect(lambda: self._paint_with(IGNORE))
        self.mark.changed.connect(lambda: self.set_current_corrected(True))
        self.unmark.changed.connect(lambda: self.set_current_corrected(False))
        self.ignore_rest.changed.connect(self.ignore_unedited_parts)
        self.folder.changed.connect(self._folder_changed)
        self.save_now.changed.connect(self.save)
        self._connected: set[int] = set()
        follow_new_layers(viewer, self, {"prediction": self.layer})
        self._layer_changed()

    def _labels_choices(self, _widget=None):
        return layer_choices(self.viewer, Labels, "prediction")

    @property
    def tracker(self):
        layer = self.layer.value
        return self.session.tracker(layer) if layer is not None else None

    def _layer_changed(self) -> None:
        tracker = self.tracker
        if tracker is not None and id(tracker) not in self._connected:
            tracker.changed.connect(self.refresh)
            self._connected.add(id(tracker))
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the slice list from the tracker."""
        tracker = self.tracker
        self.slices.blockSignals(True)
        self.slices.clear()
        if tracker is not None:
            for z in sorted(tracker.edited | tracker.corrected):
                state = "edited" if z in tracker.edited else "marked"
                item = QListWidgetItem(f"slice {z} ({state})")
                item.setData(Qt.ItemDataRole.UserRole, z)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if z in tracker.corrected else Qt.CheckState.Unchecked)
                self.slices.addItem(item)
        self.slices.blockSignals(False)
        if tracker is None:
            self.status.value = "Predict first (or load labels), then correct them with napari's label tools."
        else:
            corrected = sorted(tracker.corrected)
            saved = f" Autosaved at {self.session.last_autosave}." if self.session.last_autosave else ""
            saved = f" {self.session.autosave_error}" if self.session.autosave_error else saved
            self.status.value = f"{len(corrected)} corrected slice(s): {corrected}.{saved}"

    def _item_changed(self, item: QListWidgetItem) -> None:
        z = item.data(Qt.ItemDataRole.UserRole)
        self.tracker.set_corrected(z, item.checkState() == Qt.CheckState.Checked)

    def _item_clicked(self, item: QListWidgetItem) -> None:
        layer = self.layer.value
        if layer is not None and spatial_ndim(layer) == 3:
            step = list(self.viewer.dims.current_step)
            step[self.viewer.dims.ndim - 3] = item.data(Qt.ItemDataRole.UserRole)
            self.viewer.dims.current_step = tuple(step)

    def _paint_with(self, value: int) -> None:
        layer = self.layer.value
        if layer is None:
            self.status.value = "Choose a Labels layer first."
            return
        self.viewer.layers.selection.active = layer
        layer.selected_label = value
        layer.mode = "paint"

    def set_current_corrected(self, corrected: bool) -> None:
        layer = self.layer.value
        if layer is None:
            self.status.value = "Choose a Labels layer first."
            return
        self.tracker.set_corrected(current_slice(self.viewer, layer), corrected)

    def ignore_unedited_parts(self) -> None:
        """Set IGNORE away from this slice's edits (one undoable step), so only they are learnt."""
        layer, tracker = self.layer.value, self.tracker
        if layer is None:
            self.status.value = "Choose a Labels layer first."
            return
        z = current_slice(self.viewer, layer)
        edited = tracker.edited_pixels.get(z)
        try:
            if edited is None:
                raise ValueError("Nothing was edited on this slice: paint the corrections first.")
            current = labels_stack(layer)[z]
            updated = ignore_unedited(current, edited)
        except ValueError as exc:
            self.status.value = str(exc)
            return
        rows, cols = (current != updated).nonzero()
        index = (rows, cols) if spatial_ndim(layer) == 2 else ((rows * 0 + z), rows, cols)
        with tracker.programmatic():
            layer.data_setitem(index, updated[rows, cols].astype(layer.data.dtype))
        tracker.set_corrected(z, True)
        self.status.value = f"Slice {z}: {rows.size} unedited pixels set to 'ignore' (Ctrl+Z undoes it)."

    def _folder_changed(self) -> None:
        value = str(self.folder.value)
        self.session.corrections_dir = Path(value) if value not in ("", ".") else None

    def save(self) -> Path | None:
        tracker = self.tracker
        if tracker is None:
            self.status.value = "Nothing to save: choose a Labels layer."
            return None
        try:
            folder = tracker.save(self.session.corrections_dir)
        except OSError as exc:
            self.status.value = f"Could not save the corrections ({exc}): choose another folder."
            return None
        self.status.value = f"Corrections saved to {folder}."
        return folder
