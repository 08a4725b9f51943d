"""Correct widget: track edited slices, mark them corrected, paint 'ignore', autosave,
and rank the slices most worth correcting next (`core.uncertainty`)."""

from __future__ import annotations

import weakref
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from napari.layers import Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QListWidgetItem

from ..core.checkpoint import Checkpoint
from ..core.corrections import ignore_unedited_changes
from ..core.labels import IGNORE, STRUCTURE
from ..core.pipeline import Pipeline
from ..core.predict import PredictionCancelled
from ..core.uncertainty import UncertaintyMap, rank, suggest, unscored
from ._jobs import BackgroundJob
from ._layers import (
    current_slice,
    follow_new_layers,
    fov_of,
    image_stack,
    is_lazy,
    is_montage,
    labelled_image,
    labels_stack,
    layer_choices,
    lazy_stack,
    plugin_meta,
    remove_linked,
    set_plane_pixels,
    show_slice,
    show_under,
    spatial_ndim,
)
from ._lists import SliceList, is_checked, slice_of
from ._session import SessionWidget
from ._text import text_row

RANK = "Rank slices"
# Closing the window waits this long at most for a ranking to stop (it stops between two
# tiles): a worker thread still running when Python exits aborts the process.
CLOSE_WAIT_S = 30


class CorrectWidget(SessionWidget):
    """Lists the slices you edited; checked slices are the ones a fine-tune learns from."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        viewer = self.viewer
        self.layer = ComboBox(label="Labels", choices=self._labels_choices)
        self.help = text_row(value="Paint with label 1 (structure) or 0 (background); label 2 = ignore.")
        self.paint_structure = PushButton(text="Paint structure (1)")
        self.paint_background = PushButton(text="Erase to background (0)")
        self.paint_ignore = PushButton(text="Paint 'ignore' (2)")
        self.mark = PushButton(text="Mark slice corrected")
        self.unmark = PushButton(text="Unmark slice")
        self.ignore_rest = PushButton(text="Ignore unedited parts",
                                      tooltip="Only the pixels near your edits on this slice are learnt")
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
        self.extend([self.layer, self.help, _row(self.paint_structure, self.paint_background),
                     _row(self.mark, self.unmark), _row(self.paint_ignore, self.ignore_rest),
                     self.folder, self.save_now, self.status, self.next_title,
                     _row(self.rank_button, self.show_uncertainty), self.rank_status])
        layout = self.native.layout()
        self.slices = SliceList(120, self._item_clicked, self._item_changed)
        layout.insertWidget(2, self.slices)
        self.suggestions = SliceList(90, self._item_clicked)  # "Correct these next": one item per slice, its score
        layout.insertWidget(_row_of(layout, self.next_title.native) + 1, self.suggestions)
        self.rank_button.changed.connect(self._rank_clicked)
        self.show_uncertainty.changed.connect(self._uncertainty_toggled)
        self.session.prediction_done.connect(self._model_used)
        self.session.model_changed.connect(self._model_used)
        self.rank_job: BackgroundJob | None = None
        self._rank_again = False
        self._scores: list[float] | None = None  # the last ranking's score per slice
        self._ranked = lambda: None  # weak reference to the Labels layer it was made for
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
        self.slices.fill([] if tracker is None else [
            (z, f"{tracker.part_name(z)} ({'edited' if z in tracker.edited else 'marked'})", z in tracker.corrected)
            for z in sorted(tracker.edited | tracker.corrected)])
        if tracker is None:
            self.status.value = "Predict first (or load labels), then correct them with napari's label tools."
        else:
            self.status.value = tracker.summary() + self.session.autosave_note()

    def _item_changed(self, item: QListWidgetItem) -> None:
        self.tracker.set_corrected(slice_of(item), is_checked(item))

    def _item_clicked(self, item: QListWidgetItem) -> None:
        layer = self.layer.value
        if layer is not None and spatial_ndim(layer) == 3:
            region = self.tracker.region
            # A montage region's layer has one plane, placed on its slice of the montage.
            show_slice(self.viewer, slice_of(item) if region is None else region[0])

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
        try:
            rows, cols, values = ignore_unedited_changes(labels_stack(layer)[z], tracker.edited_pixels.get(z))
        except ValueError as exc:
            self.status.value = str(exc)
            return
        with tracker.programmatic():
            set_plane_pixels(layer, z, rows, cols, values)
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
        layer = self.layer.value
        if self._scores is None or layer is None or self._ranked() is not layer:
            self.suggestions.fill([])
            return
        self.suggestions.fill((z, f"slice {z}: uncertainty {self._scores[z]:.3f}", None)
                              for z in rank(self._scores, self.session.tracker(layer).corrected))

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
        try:
            image = labelled_image(self.viewer, layer) if layer is not None else None
        except ValueError:
            image = None
        if not self.show_uncertainty.value:
            if image is not None:  # the map is as large as the image in float32: free it
                remove_linked(self.viewer, "uncertainty", image)
            return
        if image is not None and is_lazy(image):
            self.rank_status.value = ("The uncertainty image is made only for stacks held in memory; this one is read "
                                      "from disk slice by slice: use the ranked list.")
            return
        self._model_used()  # the map comes from the ranking's probabilities: rank again

    def _pipeline(self, checkpoint: Checkpoint) -> Pipeline:
        """Predict as Predict did (its `PredictSettings`), with its threshold only when it
        predicted with this model (a fine-tuned model brings its own)."""
        settings = self.session.last_settings()
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
            image = labelled_image(self.viewer, layer)
            lazy = is_lazy(image)
            stack = lazy_stack(image) if lazy else image_stack(image)
            if is_montage(stack.shape, self.session.sizes):
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

        def work(state):
            return _rank(pipeline, stack, corrected, given_fov, make_map, state)

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
            missing = unscored(self._scores)
            blank = f" {missing} slice(s) hold no image." if missing else ""
            note = ""
            if self.show_uncertainty.value and lazy:
                note = (" No uncertainty image: it is made only for stacks held in memory, and this one is read "
                        "from disk slice by slice.")
            self.rank_status.value = (f"Ranked {count} slice(s) of '{image.name}' with {self.session.current_label} "
                                      f"(higher = more unsure).{blank}{note}")
            if result[1] is not None and self.show_uncertainty.value:
                return [lambda: show_under(self.viewer, "uncertainty", image, layer, result[1],
                                           name=f"{image.name} uncertainty", colormap="inferno",
                                           contrast_limits=(0, 1), blending="additive", opacity=0.7)]
            return None

        def failed(message: str) -> None:
            self.rank_status.value = f"Ranking failed: {message}"

        self.rank_job = BackgroundJob(work, done, failed, self, poll, self._rank_ended,
                                      description=f"Ranking the slices of {image.name}", close_wait_s=CLOSE_WAIT_S)
        self.rank_button.text = "Stop ranking"
        self.rank_status.value = f"Ranking the {count} slice(s) of '{image.name}' with {self.session.current_label}…"
        self.rank_job.start()
        return self.rank_job

    def _rank_ended(self) -> None:
        self.rank_button.text = RANK
        if self._rank_again:
            self._rank_again = False
            QTimer.singleShot(0, self._model_used)


def _row(*widgets) -> Container:
    """Widgets side by side in one row of the dock widget."""
    return Container(widgets=widgets, layout="horizontal", labels=False)


def _row_of(layout, native) -> int:
    """The index of the layout item holding ``native`` (magicgui wraps labelled widgets in a row)."""
    for index in range(layout.count()):
        holder = layout.itemAt(index).widget()
        if holder is not None and (holder is native or holder.isAncestorOf(native)):
            return index
    return layout.count() - 1


def _rank(pipeline: Pipeline, stack, corrected: set[int], fov, make_map: bool, state):
    """The ranking job (worker thread): scores per slice, and the (Z, Y, X) uncertainty
    map when ``make_map``; None when cancelled. One slice at a time: a lazy stack streams."""
    shown = UncertaintyMap(stack.shape, pipeline.threshold) if make_map else None

    def on_slice(z: int, score: float, result) -> None:
        if shown is not None:
            shown.add(z, result)
        state.events.append((z, score))

    try:
        found = suggest(pipeline, stack, corrected, fov=fov, progress=state.report, cancel=state.cancelled,
                        on_slice=on_slice)
    except PredictionCancelled:
        return None
    return found.uncertainty, None if shown is None else shown.planes
