"""Predict widget: run a U-Net over an image layer and show the mask as Labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels

from ..core.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ..core.corrections import corrections_folder, fine_tuned_models
from ..core.data import data_hash, parse_slices
from ..core.finetune import describe_history
from ..core.pipeline import Pipeline
from ..core.predict import PredictionCancelled, describe_device, resolve_device
from ..core.settings import DEFAULT_OVERLAP, PredictSettings
from ._jobs import BackgroundJob
from ._layers import (
    current_slice,
    follow_new_layers,
    fov_of,
    image_stack,
    is_lazy,
    is_montage,
    label_colormap,
    labels_stack,
    layer_choices,
    layer_shaped,
    lazy_stack,
    linked_meta,
    plugin_meta,
    show_linked,
    slice_updates,
    spatial_ndim,
)
from ._predict_jobs import ImageWatch, predict_region_job, predict_volume_job, prediction_layer_for
from ._session import SessionWidget, get_session
from ._text import text_row
from ._writer_queue import write_steps

BUILTIN_EM = "em-membranes"
BUILTIN_FUNDUS = "fundus-vessels"
FROM_FILE = "file"
FINE_TUNED = "fine-tuned"
FINE_TUNED_BEFORE = "fine-tuned for this image"
KEEP_EDITS = "keep my edited slices"
NEW_LAYER = "make a new layer"
ALL_SLICES, CURRENT_SLICE, SLICE_RANGE = "all", "current slice", "these slices:"


class PredictWidget(SessionWidget):
    """Choose image, model, device and tiling; predict in a worker thread; Cancel."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        viewer = self.viewer
        self.image = ComboBox(label="Image", choices=self._image_choices)
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.checkpoint = FileEdit(label="Checkpoint", mode="r", filter="*.pt *.pth *.zip", visible=False,
                                  tooltip="A napari-unet checkpoint, or a bioimage.io package (.zip) exported by "
                                  "napari-unet")
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.device_info = text_row(label="In use")
        self.tile = SpinBox(label="Tile (0 = model's)", min=0, max=4096, step=16, value=0)
        self.overlap = FloatSpinBox(label="Overlap", min=0.0, max=0.75, step=0.05, value=DEFAULT_OVERLAP)
        self.threshold = FloatSpinBox(label="Threshold", min=0.0, max=1.0, step=0.05, value=0.5,
                                      tooltip="Mask = probability > threshold; set to the model's own when you "
                                      "choose it")
        self.pixel_size = FloatSpinBox(label="Pixel size (nm)", min=0.0, max=100000.0, step=0.5, value=0.0,
                                       tooltip="Your images' pixel size: they are resampled to the model's (EM "
                                       "built-in: 4 nm) and the result back. 0 = predict them as they are")
        self.show_probability = CheckBox(text="Add the probability as an image", value=False)
        self.show_instances = CheckBox(text="Add cell instances (EM)", value=False,
                                       tooltip="One id per cell, made from the membrane mask the way the model records "
                                       "(connected regions, or a seeded watershed that mends small gaps)")
        self.edited_policy = ComboBox(label="Edited labels", choices=[KEEP_EDITS, NEW_LAYER], value=KEEP_EDITS)
        self.slices = ComboBox(label="Slices", choices=[ALL_SLICES, CURRENT_SLICE, SLICE_RANGE], value=ALL_SLICES,
                               tooltip="Predict the whole stack, the slice on screen, or the slices you list")
        self.slice_range = LineEdit(label="Which", value="", visible=False,
                                    tooltip="Slice numbers such as 3 7 or a range 10-20 (several: 0-4, 9)")
        self.run_button = PushButton(text="Predict")
        self.progress_bar = ProgressBar(label="Progress", value=0, max=1)
        self.status = text_row()
        self.extend([
            self.image, self.model, self.checkpoint, self.device, self.device_info, self.tile, self.overlap,
            self.threshold, self.pixel_size, self.slices, self.slice_range, self.show_probability, self.show_instances,
            self.edited_policy, self.run_button,
            self.progress_bar, self.status,
        ])
        self.model.changed.connect(self._model_changed)
        self.checkpoint.changed.connect(self._use_model_threshold)
        self.device.changed.connect(self._device_changed)
        self.image.changed.connect(self._image_changed)
        self.run_button.changed.connect(self._run_clicked)
        self.slices.changed.connect(lambda: setattr(self.slice_range, "visible", self.slices.value == SLICE_RANGE))
        self.session.model_changed.connect(self._fine_tuned_available)
        self.job: BackgroundJob | None = None
        follow_new_layers(viewer, self, {"image": self.image})
        self._device_changed()
        self._image_changed()
        self._use_model_threshold()

    # ------------------------------------------------------------------ choices

    def _image_choices(self, _widget=None):
        return layer_choices(self.viewer, Image)

    def _model_choices(self, _widget=None):
        choices = [("EM membranes (built-in)", BUILTIN_EM), ("Fundus vessels (built-in)", BUILTIN_FUNDUS),
                   ("Checkpoint file…", FROM_FILE)]
        if self.session.fine_tuned is not None:
            choices.append((f"Fine-tuned in this session ({self.session.fine_tuned_path.name})", FINE_TUNED))
        earlier = self.fine_tuned_before()
        if earlier is not None:
            choices.append((earlier.describe(self.image.value.name), FINE_TUNED_BEFORE))
        return choices

    def fine_tuned_before(self):
        """The last model fine-tuned on the chosen image's corrections, in this session or an
        earlier one (`core.corrections.fine_tuned_models`), or None."""
        image = self.image.value if hasattr(self, "image") else None
        source = plugin_meta(image).get("source") if image is not None else None
        if not source:
            return None
        models = fine_tuned_models(corrections_folder(source, root=self.session.corrections_dir))
        return models[-1] if models else None

    def _fine_tuned_available(self) -> None:
        self.reset_choices()
        self.model.value = FINE_TUNED

    def _model_changed(self) -> None:
        self.checkpoint.visible = self.model.value == FROM_FILE
        self._use_model_threshold()

    def _use_model_threshold(self) -> None:
        """Show the threshold the model was tuned with (e.g. 0.55 for em-membranes), and the
        rounds of a fine-tuned model (slices, date, scores, kept or refused)."""
        try:
            checkpoint, name = self.selected_checkpoint()
        except (ValueError, CheckpointError):
            return  # no file chosen yet, or a bad one: predicting will say so
        self.threshold.value = checkpoint.info.threshold
        rounds = describe_history(checkpoint.info.history)
        if rounds:
            self.status.value = f"{name}; its fine-tune rounds: " + "; ".join(rounds) + "."

    def _image_changed(self) -> None:
        layer = self.image.value
        self.model.reset_choices()
        if layer is not None and self.model.value in (BUILTIN_EM, BUILTIN_FUNDUS):
            earlier = self.fine_tuned_before()
            self.model.value = (FINE_TUNED_BEFORE if earlier is not None
                                else BUILTIN_FUNDUS if layer.rgb else BUILTIN_EM)
        self.show_instances.enabled = layer is None or not layer.rgb
        recorded = plugin_meta(layer).get("pixel_size_nm") if layer is not None else None
        if recorded:  # from the file's metadata (tif, OME-Zarr): the user can still change it
            self.pixel_size.value = float(np.mean(recorded))

    def _device_changed(self) -> None:
        try:
            self.device_info.value = describe_device(resolve_device(self.device.value))
        except ValueError as exc:
            self.device_info.value = str(exc)

    # ------------------------------------------------------------------ running

    def selected_checkpoint(self) -> tuple[Checkpoint, str]:
        """The chosen model, loaded (raises ValueError with a message for the user)."""
        choice = self.model.value
        if choice == FINE_TUNED:
            if self.session.fine_tuned is None:
                raise ValueError("No model was fine-tuned in this session yet: fine-tune first, or choose another "
                                 "model.")
            return self.session.fine_tuned, f"fine-tuned ({self.session.fine_tuned_path.name})"
        if choice == FINE_TUNED_BEFORE:
            earlier = self.fine_tuned_before()
            if earlier is None:
                raise ValueError("The model fine-tuned for this image is gone: choose another model.")
            return load_checkpoint(earlier.path), earlier.describe(self.image.value.name)
        if choice == FROM_FILE:
            path = Path(str(self.checkpoint.value))
            if not path.is_file():
                raise ValueError("Choose a checkpoint file (.pt) first.")
            return load_checkpoint(path), path.name
        return load_checkpoint(choice), choice

    def pipeline(self, checkpoint: Checkpoint, device, instances: bool = False) -> Pipeline:
        """The prediction `Pipeline` of this widget's choices; its `PredictSettings` are
        remembered in the session, so Correct and the fine-tune predict the same way.

        Raises:
            ValueError: a choice that cannot work (e.g. an absurd pixel size), said for the user.
        """
        sizes = self.session.sizes  # which slices are predicted in blocks, and how large
        settings = PredictSettings(model=str(self.model.value), device=str(device), tile=self.tile.value or None,
                                   overlap=self.overlap.value, pixel_size=self.pixel_size.value or None,
                                   threshold=self.threshold.value, instances=instances, block=sizes.block,
                                   block_limit=sizes.large_slice)
        pipeline = Pipeline(checkpoint, settings)
        self.session.predict_settings, self.session.predicted_with = settings, checkpoint
        return pipeline

    def target_layer(self, image: Image) -> Labels | None:
        """The prediction layer a new prediction of ``image`` goes into (its edited slices
        kept), or None for a new layer."""
        return None if self.edited_policy.value == NEW_LAYER else prediction_layer_for(self.viewer, image)

    def _run_clicked(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.value = "Cancelling…"
            return
        self.predict()

    def chosen_slices(self, layer: Image, count: int) -> list[int] | None:
        """The slices to predict (None = all), from the Slices choice."""
        if self.slices.value == CURRENT_SLICE:
            return [current_slice(self.viewer, layer)]
        if self.slices.value == SLICE_RANGE:
            return parse_slices(self.slice_range.value, count, "Slices")
        return None

    def predict(self) -> BackgroundJob | None:
        """Start a prediction; returns the job (None when the input was refused)."""
        layer = self.image.value
        try:
            if layer is None:
                raise ValueError("No image chosen: load an image first (Load widget or File ▸ Open).")
            lazy = is_lazy(layer)
            stack = lazy_stack(layer) if lazy else image_stack(layer)
            checkpoint, model_name = self.selected_checkpoint()
            device = resolve_device(self.device.value)
            if stack.shape[-1] != checkpoint.config.in_channels:
                kind = "RGB" if stack.shape[-1] == 3 else "grey"
                wanted = "RGB (fundus)" if checkpoint.config.in_channels == 3 else "grey (EM)"
                raise ValueError(f"'{layer.name}' is {kind} but the model '{model_name}' takes {wanted} images: "
                                 "choose a matching model.")
            slices = self.chosen_slices(layer, stack.shape[0])
        except (ValueError, CheckpointError) as exc:
            self.status.value = str(exc)
            return None
        if is_montage(stack.shape, self.session.sizes):
            return predict_region_job(self, layer, stack, checkpoint, model_name, device)
        if lazy:
            return predict_volume_job(self, layer, stack, checkpoint, model_name, device, slices)
        with_cells = self.show_instances.value and not layer.rgb
        try:
            pipeline = self.pipeline(checkpoint, device, instances=with_cells)
        except ValueError as exc:
            self.status.value = str(exc)
            return None
        # Corrections of an image without a file are keyed by its pixels (hashed only then).
        needs_hash = not plugin_meta(layer).get("source")
        given_fov = fov_of(self.viewer, layer, stack.shape[:3])
        watch = ImageWatch(self.viewer, layer)
        chosen = slices if slices is not None else list(range(stack.shape[0]))
        # The layer the result will go into, read in the worker to find what changes.
        target = self.target_layer(layer)
        current, todo = None, []
        if target is not None and labels_stack(target).shape == stack.shape[:3]:
            tracker = self.session.tracker(target)
            current = labels_stack(target)
            todo = [z for z in chosen if z not in tracker.corrected | tracker.edited]

        def work(state):
            part = stack[chosen] if slices is not None else stack
            fov = given_fov[chosen] if given_fov is not None else None
            try:
                result = pipeline.run(part, fov, state.report, state.cancelled, name=f"'{layer.name}'")
            except PredictionCancelled:
                return None
            probabilities, mask, cells = result.probabilities, result.mask, result.cells
            found = result.fov if result.fov_found else None  # shown as a layer the user can edit
            if slices is not None:  # back to the stack's shape, 0 in the slices not predicted
                probabilities, mask, cells, found = (_in_stack(a, chosen, stack.shape[0])
                                                     for a in (probabilities, mask, cells, found))
            updates = slice_updates(current, mask[todo], todo) if current is not None else None
            return Prediction(probabilities, mask, cells, data_hash(stack) if needs_hash else "",
                              " ".join(result.notes), found, chosen if slices is not None else None, target, updates,
                              given_fov is not None)

        def done(result):
            if watch.changed:
                self.status.value = f"{watch.changed}: nothing was added. Predict again."
            elif result is None:
                self.status.value = "Prediction cancelled; nothing was changed."
            else:
                return self._show(layer, checkpoint, model_name, result)

        self.job = BackgroundJob(work, done, self._failed, self, self._poll, lambda: self._ended(watch),
                                 description=f"Predicting {layer.name}")
        watch.on_change = self.job.cancel
        self.run_button.text = "Cancel"
        self.status.value = f"Predicting {len(chosen)} slice(s) with {model_name} on {describe_device(device)}…"
        self.progress_bar.value = 0
        self.job.start()
        return self.job

    def _poll(self, state) -> None:
        if state.total:
            self.progress_bar.max = state.total
            self.progress_bar.value = state.done

    def _failed(self, message: str) -> None:
        self.status.value = message

    def _ended(self, watch: ImageWatch) -> None:
        watch.stop()
        self.run_button.text = "Predict"
        self.session.prediction_done.emit()

    # ------------------------------------------------------------------ results

    def _show(self, image: Image, checkpoint: Checkpoint, model_name: str, result: Prediction) -> list:
        """Show the result: the mask now, the rest as GUI steps (one layer or one part of a
        large write per turn of the event loop, see `BackgroundJob`)."""
        ndim = spatial_ndim(image)
        self.session.current, self.session.current_label = checkpoint, model_name
        target = self.target_layer(image)
        skip = None if result.slices is None else set(range(result.mask.shape[0])) - set(result.slices)
        updates = result.updates if target is result.target else None
        message, steps = write_prediction(self.viewer, image, result.mask, model_name, target, result.image_hash,
                                          skip, updates)
        if self.show_probability.value:
            steps.append(lambda: show_linked(self.viewer, "probability", image,
                                             layer_shaped(result.probabilities, ndim),
                                             lambda data, meta: self.viewer.add_image(
                                                 data, name=f"{image.name} probability", colormap="magma",
                                                 blending="additive", contrast_limits=(0, 1), metadata=meta)))
        if result.cells is not None:
            steps.append(lambda: show_linked(self.viewer, "cells", image, layer_shaped(result.cells, ndim),
                                             lambda data, meta: self.viewer.add_labels(
                                                 data, name=f"{image.name} cells", opacity=0.4, metadata=meta)))
        fov_text = ("Predicted inside your field of view layer (paint or erase it and predict again to change it)."
                    if result.given_fov else "")
        if result.found_fov is not None:
            def add_fov(data, meta):  # an outline: it shows the border without tinting the image
                self.viewer.add_labels(data, name=f"{image.name} field of view", opacity=0.9,
                                       colormap=label_colormap("fov"), metadata=meta).contour = 2

            steps.append(lambda: show_linked(self.viewer, "fov", image,
                                             layer_shaped(result.found_fov.astype(np.uint8), ndim), add_fov))
            fov_text = ("Predicted inside the field of view found in the image (layer 'field of view': paint or "
                        "erase it and predict again to change it).")
        self.status.value = f"{message} {fov_text} {result.note}".strip()
        return steps


@dataclass
class Prediction:
    """What a prediction job hands back to the GUI thread (all (Z, Y, X))."""

    probabilities: np.ndarray
    mask: np.ndarray
    cells: np.ndarray | None
    image_hash: str
    note: str = ""
    found_fov: np.ndarray | None = None  # (Z, Y, X) bool, when found from the image
    slices: list[int] | None = None  # the slices predicted, when not all
    target: Labels | None = None  # the layer ``updates`` were computed against
    updates: dict | None = None  # `slice_updates` of ``target``
    given_fov: bool = False  # predicted inside a field of view the user gave


def _in_stack(part: np.ndarray | None, slices: list[int], count: int) -> np.ndarray | None:
    """Results of some slices placed in a (count, Y, X) array of zeros."""
    if part is None:
        return None
    full = np.zeros((count, *part.shape[1:]), part.dtype)
    full[slices] = part
    return full


def write_prediction(viewer, image: Image, mask: np.ndarray, model_name: str, target: Labels | None,
                     image_hash: str = "", skip_slices: set[int] | None = None,
                     updates: dict | None = None) -> tuple[str, list]:
    """Put a (Z, Y, X) mask into ``target`` (or a new Labels layer linked to ``image``).

    In ``target``, slices the user edited or marked corrected (and ``skip_slices``) are
    kept. ``updates`` (`slice_updates`, computed in the worker) say which pixels change.

    Returns:
        A status line, and the GUI steps that write into ``target`` (`write_steps`: one
        undoable step when small, several when large; run them with `BackgroundJob`).
    """
    session = get_session(viewer)
    ndim = spatial_ndim(image)
    if target is not None and target.data.shape == layer_shaped(mask, ndim).shape:
        tracker = session.tracker(target)
        keep = set(tracker.corrected | tracker.edited) | set(skip_slices or ())
        if updates is None:
            todo = [z for z in range(mask.shape[0]) if z not in keep]
            updates = slice_updates(labels_stack(target), mask[todo], todo)
        steps = write_steps(target, tracker, {z: u for z, u in updates.items() if z not in keep})
        target.metadata.setdefault("napari_unet", {})["model"] = model_name
        kept = f"; kept your {len(keep)} edited slice(s): {sorted(keep)}" if keep else ""
        undo = "Ctrl+Z undoes it" if len(steps) <= 1 else f"Ctrl+Z undoes it in {len(steps)} steps"
        return f"Updated '{target.name}' with {model_name}{kept} ({undo}).", steps
    meta = linked_meta("prediction", image, model=model_name, image_source=plugin_meta(image).get("source", ""),
                       image_hash=image_hash, kind="fundus" if image.rgb else "em")
    layer = viewer.add_labels(layer_shaped(mask, ndim), name=f"{image.name} prediction",
                              colormap=label_colormap("prediction"), opacity=0.5, metadata=meta)
    session.tracker(layer)
    for other in viewer.layers:  # the new prediction is what to look at: hide the truth overlay
        if plugin_meta(other).get("role") == "truth":
            other.visible = False
    share = np.count_nonzero(mask) / max(1, mask.size)  # count_nonzero: 10x faster than mean on 100 M pixels
    return (f"Added '{layer.name}' ({100 * share:.1f}% structure) with {model_name}. Correct it with the "
            "paint tools."), []
