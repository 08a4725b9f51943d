"""Correct widget: track edited slices, mark them corrected, paint 'ignore', autosave,
and rank the slices most worth correcting next (`core.uncertainty`)."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from napari.layers import Image, Labels
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QListWidget, QListWidgetItem

from ..core.checkpoint import Checkpoint
from ..core.corrections import ignore_unedited
from ..core.labels import IGNORE, STRUCTURE
from ..core.pipeline import Pipeline
from ..core.settings import PredictSettings
from ..core.predict import PredictionCancelled
from ..core.regions import CHUNK, region_chunks
from ..core.uncertainty import pixel_uncertainty, rank, suggest
from ._jobs import BackgroundJob
from ._layers import (
    current_slice,
    follow_new_layers,
    fov_of,
    image_stack,
    is_lazy,
    is_montage,
    labels_stack,
    layer_choices,
    layer_shaped,
    lazy_stack,
    plugin_meta,
    show_linked,
    spatial_ndim,
)
from ._session import get_session, real_viewer
from ._text import text_row

RANK = "Rank slices"
# Closing the window waits this long at most for a ranking to stop (it stops between two
# tiles): a worker thread still running when Python exits aborts the process.
CLOSE_WAIT_S = 30


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
        self.next_title = Label(value="Correct these next (most uncertain first; click to go there):")
        self.rank_button = PushButton(text=RANK, tooltip="Predict each slice with the model of the last prediction "
                                      "or fine-tune and score how unsure it is (done after each of them)")
        self.show_uncertainty = CheckBox(text="Show uncertainty as an image", value=False,
                                         tooltip="Per pixel: 1 where the probability is at the threshold, 0 where "
                                         "the model is sure (stacks held in memory)")
        self.rank_status = text_row()
        def row(*widgets):
            return Container(widgets=widgets, layout="horizontal", labels=False)

        self.extend([self.layer, self.help, row(self.paint_structure, self.paint_background),
                     row(self.mark, self.unmark), row(self.paint_ignore, self.ignore_rest),
                     self.folder, self.save_now, self.status, self.next_title,
                     row(self.rank_button, self.show_uncertainty), self.rank_status])
        self.slices = QListWidget()
        self.slices.setMinimumHeight(120)
        self.native.layout().insertWidget(2, self.slices)
        self.slices.itemChanged.connect(self._item_changed)
        self.slices.itemClicked.connect(self._item_clicked)
        self.suggestions = QListWidget()  # "Correct these next": one item per slice, its score
        self.suggestions.setMinimumHeight(90)
        layout = self.native.layout()
        layout.insertWidget(_row_of(layout, self.next_title.native) + 1, self.suggestions)
        self.suggestions.itemClicked.connect(self._item_clicked)
        self.rank_button.changed.connect(self._rank_clicked)
        self.show_uncertainty.changed.connect(self._uncertainty_toggled)
        self.session.prediction_done.connect(self._model_used)
        self.session.model_changed.connect(self._model_used)
        self.rank_job: BackgroundJob | None = None
        self._rank_again = False
        self._scores: list[float] | None = None  # the last ranking's score per slice
        self._ranked = lambda: None  # weak reference to the Labels layer it was made for
        self._ranking: list = []  # (JobState, threading.Event set when its worker returns) of the one under way
        self.native.destroyed.connect(lambda *_, ranking=self._ranking: _stop_ranking(ranking))
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
        """Rebuild the slice lists from the tracker (the ranking is not recomputed)."""
        self._show_suggestions()
        tracker = self.tracker
        self.slices.blockSignals(True)
        self.slices.clear()
        if tracker is not None:
            for z in sorted(tracker.edited | tracker.corrected):
                state = "edited" if z in tracker.edited else "marked"
                item = QListWidgetItem(f"{self._part_name(tracker, z)} ({state})")
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
            if tracker.region is not None:
                z, region = tracker.region
                what = ("This region counts as corrected: Fine-tune learns its" if corrected else
                        "Paint this region, or mark it corrected, and Fine-tune learns its")
                self.status.value = (f"{what} {len(region_chunks(z, region))} chunks of {CHUNK} px with the other "
                                     f"corrected regions of the montage.{saved}")
            else:
                self.status.value = f"{len(corrected)} corrected slice(s): {corrected}.{saved}"

    @staticmethod
    def _part_name(tracker, z: int) -> str:
        """"slice 3", or for a montage's region "region y 2,048-4,096, x 0-2,048 of slice 1"."""
        if tracker.region is None:
            return f"slice {z}"
        montage_z, (y0, y1, x0, x1) = tracker.region
        return f"region y {y0:,}-{y1:,}, x {x0:,}-{x1:,} of slice {montage_z}"

    def _item_changed(self, item: QListWidgetItem) -> None:
        z = item.data(Qt.ItemDataRole.UserRole)
        self.tracker.set_corrected(z, item.checkState() == Qt.CheckState.Checked)

    def _item_clicked(self, item: QListWidgetItem) -> None:
        layer = self.layer.value
        if layer is not None and spatial_ndim(layer) == 3:
            step = list(self.viewer.dims.current_step)
            region = self.tracker.region
            # A montage region's layer has one plane, placed on its slice of the montage.
            step[self.viewer.dims.ndim - 3] = item.data(Qt.ItemDataRole.UserRole) if region is None else region[0]
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

    # ------------------------------------------------------------------ what to correct next

    def _show_suggestions(self) -> None:
        """Fill "Correct these next" from the last ranking, without the corrected slices."""
        self.suggestions.clear()
        layer = self.layer.value
        if self._scores is None or layer is None or self._ranked() is not layer:
            return
        for z in rank(self._scores, self.session.tracker(layer).corrected):
            item = QListWidgetItem(f"slice {z}: uncertainty {self._scores[z]:.3f}")
            item.setData(Qt.ItemDataRole.UserRole, z)
            self.suggestions.addItem(item)

    def _rank_clicked(self) -> None:
        if self.rank_job is not None and self.rank_job.running:
            self._rank_again = False
            self.rank_job.cancel()
            self.rank_status.value = "Cancelling the ranking…"
            return
        self.rank_slices()

    def _model_used(self) -> None:
        """A prediction or fine-tune ended: rank again with its model (after the ranking
        under way, if any, which is stopped)."""
        try:
            if self.session.current is None or self.layer.value is None:
                return
            if self.rank_job is not None and self.rank_job.running:
                self._rank_again = True
                self.rank_job.cancel()
                return
            self.rank_slices()
        except RuntimeError:  # this widget was closed (its Qt objects are deleted)
            return

    def _uncertainty_toggled(self) -> None:
        layer = self.layer.value
        image = self._image_or_none(layer)
        if not self.show_uncertainty.value:
            if image is not None:  # the map is as large as the image in float32: free it
                for shown in [other for other in self.viewer.layers if _is_uncertainty_of(other, image)]:
                    self.viewer.layers.remove(shown)
            return
        if image is not None and is_lazy(image):
            self.rank_status.value = ("The uncertainty image is made only for stacks held in memory; this one is read "
                                      "from disk slice by slice: use the ranked list.")
            return
        self._model_used()  # the map comes from the ranking's probabilities: rank again

    def _image_or_none(self, layer: Labels | None) -> Image | None:
        try:
            return self._image_of(layer) if layer is not None else None
        except ValueError:
            return None

    def _image_of(self, layer: Labels) -> Image:
        """The image ``layer`` labels: the one it is linked to (predictions are), else the
        only image of its shape."""
        link = plugin_meta(layer).get("link")
        images = [other for other in self.viewer.layers if isinstance(other, Image) and link
                  and plugin_meta(other).get("uid") == link]
        if not images:
            shape = layer.data.shape
            images = [other for other in self.viewer.layers if isinstance(other, Image)
                      and plugin_meta(other).get("role", "image") == "image"
                      and tuple(other.data.shape[:-1] if other.rgb else other.data.shape) == shape]
        if len(images) != 1:
            raise ValueError(f"Which image does '{layer.name}' label? Predict it from its image first (Predict "
                             "links the two).")
        return images[0]

    def _pipeline(self, checkpoint: Checkpoint) -> Pipeline:
        """Predict as Predict did (its `PredictSettings`), with its threshold only when it
        predicted with this model (a fine-tuned model brings its own)."""
        settings = self.session.predict_settings or PredictSettings()
        if self.session.predicted_with is not checkpoint:
            settings = settings.but(threshold=None)
        return Pipeline(checkpoint, settings.but(instances=False))

    def rank_slices(self) -> BackgroundJob | None:
        """Rank the slices of the chosen Labels layer's image by the uncertainty of the
        current model's prediction, in a worker; returns the job (None when refused)."""
        layer = self.layer.value
        try:
            if layer is None:
                raise ValueError("Choose a Labels layer (predict first): its image's slices are ranked.")
            checkpoint = self.session.current
            if checkpoint is None:
                raise ValueError("Predict first: the slices are ranked with the model of the last prediction "
                                 "or fine-tune.")
            image = self._image_of(layer)
            lazy = is_lazy(image)
            stack = lazy_stack(image) if lazy else image_stack(image)
            if is_montage(stack.shape):
                source = plugin_meta(image).get("source") or "IMAGE.tif"
                raise ValueError(f"'{image.name}' is a montage: its slices are ranked block by block from the command "
                                 f"line, e.g. napari-unet suggest {source} --model em-membranes --json")
            if tuple(stack.shape[:3]) != labels_stack(layer).shape:
                raise ValueError(f"'{layer.name}' and '{image.name}' differ in shape: choose the labels of this image.")
            if stack.shape[-1] != checkpoint.config.in_channels:
                raise ValueError("The model of the last prediction does not take this kind of image (grey vs RGB): "
                                 "predict this image first.")
            pipeline = self._pipeline(checkpoint)
            given_fov = fov_of(self.viewer, image, tuple(stack.shape[:3]))
        except ValueError as exc:
            self.rank_status.value = str(exc)
            return None
        corrected = set(self.session.tracker(layer).corrected)
        make_map = self.show_uncertainty.value and not lazy
        count = stack.shape[0]

        over = threading.Event()

        def work(state):
            try:
                return _rank(pipeline, stack, corrected, given_fov, make_map, state)
            finally:
                over.set()

        def poll(state) -> None:
            if state.total:
                self.rank_status.value = (f"Ranking the {count} slice(s) of '{image.name}': "
                                          f"{len(state.events)} scored…")

        def done(result):
            if result is None:
                self.rank_status.value = "Ranking stopped; the list shows the last one."
                return None
            if layer not in self.viewer.layers:
                self.rank_status.value = f"'{layer.name}' was removed during the ranking."
                return None
            self._scores, self._ranked = result[0], weakref.ref(layer)
            self._show_suggestions()
            unscored = sum(1 for u in self._scores if not np.isfinite(u))
            blank = f" {unscored} slice(s) hold no image." if unscored else ""
            note = ""
            if self.show_uncertainty.value and lazy:
                note = (" No uncertainty image: it is made only for stacks held in memory, and this one is read "
                        "from disk slice by slice.")
            self.rank_status.value = (f"Ranked {count} slice(s) of '{image.name}' with {self.session.current_label} "
                                      f"(higher = more unsure).{blank}{note}")
            if result[1] is not None and self.show_uncertainty.value:
                return [lambda: self._show_map(image, layer, result[1])]
            return None

        def failed(message: str) -> None:
            self.rank_status.value = f"Ranking failed: {message}"

        self.rank_job = BackgroundJob(work, done, failed, self, poll, self._rank_ended,
                                      description=f"Ranking the slices of {image.name}")
        self._ranking[:] = [(self.rank_job.state, over)]
        self.rank_button.text = "Stop ranking"
        self.rank_status.value = f"Ranking the {count} slice(s) of '{image.name}' with {self.session.current_label}…"
        self.rank_job.start()
        return self.rank_job

    def _rank_ended(self) -> None:
        self.rank_button.text = RANK
        if self._rank_again:
            self._rank_again = False
            QTimer.singleShot(0, self._model_used)

    def _show_map(self, image: Image, layer: Labels, planes: np.ndarray) -> None:
        """Add (or update) the uncertainty image under the labels, and keep the labels active."""
        if image not in self.viewer.layers:
            return

        def add(data, meta) -> None:
            added = self.viewer.add_image(data, name=f"{image.name} uncertainty", colormap="inferno",
                                          contrast_limits=(0, 1), blending="additive", opacity=0.7, metadata=meta)
            if layer in self.viewer.layers:  # below the labels being corrected
                self.viewer.layers.move(self.viewer.layers.index(added), self.viewer.layers.index(layer))

        show_linked(self.viewer, "uncertainty", image, layer_shaped(planes, spatial_ndim(layer)), add)
        if layer in self.viewer.layers:
            self.viewer.layers.selection.active = layer


def _row_of(layout, native) -> int:
    """The index of the layout item holding ``native`` (magicgui wraps labelled widgets in a row)."""
    for index in range(layout.count()):
        holder = layout.itemAt(index).widget()
        if holder is not None and (holder is native or holder.isAncestorOf(native)):
            return index
    return layout.count() - 1


def _stop_ranking(ranking: list) -> None:
    """The widget is gone (window closed, dock removed): stop its ranking and wait for it."""
    for state, over in ranking:
        state.cancel.set()
        over.wait(CLOSE_WAIT_S)


def _is_uncertainty_of(layer, image: Image) -> bool:
    meta = plugin_meta(layer)
    return meta.get("role") == "uncertainty" and meta.get("link") == plugin_meta(image).get("uid")


def _rank(pipeline: Pipeline, stack, corrected: set[int], fov, make_map: bool, state):
    """The ranking job (worker thread): scores per slice, and the (Z, Y, X) uncertainty
    map when ``make_map``; None when cancelled. One slice at a time: a lazy stack streams."""
    planes = np.zeros(tuple(stack.shape[:3]), np.float32) if make_map else None

    def on_slice(z: int, score: float, result) -> None:
        if planes is not None and result is not None:
            planes[z] = pixel_uncertainty(result.probabilities[0], pipeline.threshold,
                                          None if result.fov is None else result.fov[0])
        state.events.append((z, score))

    try:
        found = suggest(pipeline, stack, corrected, fov=fov, progress=state.report, cancel=state.cancelled,
                        on_slice=on_slice)
    except PredictionCancelled:
        return None
    return found.uncertainty, planes
