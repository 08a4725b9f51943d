"""Predict widget: run a U-Net over an image layer and show the mask as Labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels

from ..core.blocks import in_blocks, refuse_whole
from ..core.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ..core.corrections import corrections_folder, fine_tuned_models
from ..core.data import data_hash, parse_slices
from ..core.finetune import describe_history
from ..core.files import check_writable, free_path, napari_unet_home
from ..core.pipeline import Pipeline
from ..core.settings import PredictSettings
from ..core.predict import PredictionCancelled, describe_device, resolve_device
from ..core.regions import predict_montage_region
from ..core.stream import VolumeOutputs, predict_volume
from ..core.volume import create_output
from ._jobs import BackgroundJob
from ._layers import (
    is_montage,
    follow_new_layers,
    current_slice,
    fov_of,
    image_stack,
    is_lazy,
    label_colormap,
    layer_uid,
    lazy_stack,
    labels_stack,
    layer_choices,
    layer_shaped,
    linked_layers,
    linked_meta,
    plugin_meta,
    show_linked,
    slice_updates,
    spatial_ndim,
)
from ._montage import add_region_layer, montage_corrections, region_in_view, region_layers, region_of
from ._writer_queue import write_steps
from ._session import get_session, real_viewer
from ._text import text_row

BUILTIN_EM = "em-membranes"
BUILTIN_FUNDUS = "fundus-vessels"
FROM_FILE = "file"
FINE_TUNED = "fine-tuned"
FINE_TUNED_BEFORE = "fine-tuned for this image"
KEEP_EDITS = "keep my edited slices"
NEW_LAYER = "make a new layer"
ALL_SLICES, CURRENT_SLICE, SLICE_RANGE = "all", "current slice", "these slices:"


class PredictWidget(Container):
    """Choose image, model, device and tiling; predict in a worker thread; Cancel."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer = real_viewer(napari_viewer)
        self.session = get_session(viewer)
        self.session.attach(self)
        self.image = ComboBox(label="Image", choices=self._image_choices)
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.checkpoint = FileEdit(label="Checkpoint", mode="r", filter="*.pt *.pth *.zip", visible=False,
                                  tooltip="A napari-unet checkpoint, or a bioimage.io package (.zip) exported by napari-unet")
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.device_info = text_row(label="In use")
        self.tile = SpinBox(label="Tile (0 = model's)", min=0, max=4096, step=16, value=0)
        self.overlap = FloatSpinBox(label="Overlap", min=0.0, max=0.75, step=0.05, value=0.25)
        self.threshold = FloatSpinBox(label="Threshold", min=0.0, max=1.0, step=0.05, value=0.5,
                                      tooltip="Mask = probability > threshold; set to the model's own when you choose it")
        self.pixel_size = FloatSpinBox(label="Pixel size (nm)", min=0.0, max=100000.0, step=0.5, value=0.0,
                                       tooltip="Your images' pixel size: they are resampled to the model's (EM built-in: "
                                       "4 nm) and the result back. 0 = predict them as they are")
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
                raise ValueError("No model was fine-tuned in this session yet: fine-tune first, or choose another model.")
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
            return self._predict_region(layer, stack, checkpoint, model_name, device)
        if lazy:
            return self._predict_volume(layer, stack, checkpoint, model_name, device, slices)
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
        target = None if self.edited_policy.value == NEW_LAYER else prediction_layer_for(self.viewer, layer)
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

    def _predict_volume(self, layer: Image, volume, checkpoint: Checkpoint, model_name: str, device,
                        slices: list[int] | None) -> BackgroundJob | None:
        """A volume read on demand: predicted slice by slice into zarr stores on disk that
        back the result layers, which show each slice as soon as it is written. Cancel
        keeps the slices done; slices the user edited are never predicted over."""
        shape = tuple(volume.shape[:3])
        target = None if self.edited_policy.value == NEW_LAYER else prediction_layer_for(self.viewer, layer)
        try:
            pipeline = self.pipeline(checkpoint, device, instances=self.show_instances.value and not layer.rgb)
            folder = prediction_folder(layer, self.session.corrections_dir)
            mask_path = free_path(folder / "prediction.zarr")
            outputs = {"mask": target.data if target is not None else create_output(mask_path, shape, np.uint8)}
            if self.show_probability.value:
                outputs["probabilities"] = create_output(free_path(folder / "probability.zarr"), shape, np.float32)
            if pipeline.instances:
                outputs["instances"] = create_output(free_path(folder / "cells.zarr"), shape, np.uint32)
        except (OSError, ValueError) as exc:
            self.status.value = f"Cannot create the prediction store ({exc}): choose a folder in Correct."
            return None
        keep = set()
        if target is None:
            meta = linked_meta("prediction", layer, model=model_name, kind="fundus" if layer.rgb else "em",
                               image_source=plugin_meta(layer).get("source", ""), store=str(folder),
                               labels=str(mask_path))
            target = self.viewer.add_labels(outputs["mask"], name=f"{layer.name} prediction", opacity=0.5,
                                            colormap=label_colormap("prediction"), metadata=meta)
        else:
            tracker = self.session.tracker(target)
            keep = tracker.corrected | tracker.edited
        self.session.tracker(target)
        shown = [target]
        if "probabilities" in outputs:
            shown.append(self.viewer.add_image(outputs["probabilities"], name=f"{layer.name} probability",
                                               colormap="magma", blending="additive", contrast_limits=(0, 1),
                                               metadata=linked_meta("probability", layer)))
        if "instances" in outputs:
            shown.append(self.viewer.add_labels(outputs["instances"], name=f"{layer.name} cells", opacity=0.4,
                                                metadata=linked_meta("cells", layer)))
        todo = [z for z in (slices if slices is not None else range(shape[0])) if z not in keep]
        given_fov = fov_of(self.viewer, layer, shape)
        watch = ImageWatch(self.viewer, layer)

        def work(state):
            return predict_volume(pipeline, volume, VolumeOutputs(**outputs), todo, fov=given_fov,
                                  progress=state.report, cancel=state.cancelled, on_slice=state.events.append)

        def show_written(state) -> None:
            self._poll(state)
            if state.events:  # slices written since the last look: show them
                state.events.clear()
                for shown_layer in shown:
                    if shown_layer in self.viewer.layers:
                        shown_layer.refresh()

        def done(report):
            show_written(self.job.state)
            self.session.current, self.session.current_label = checkpoint, model_name
            kept = f"; kept your {len(keep)} edited slice(s)" if keep else ""
            blank = f"; slice(s) {report.blank[:10]} hold no image and stay empty" if report.blank else ""
            if watch.changed:
                what = f"{watch.changed}: stopped after {len(report.done)} slice(s)"
            elif report.cancelled:
                what = f"Cancelled: kept the {len(report.done)} slice(s) done"
            else:
                what = f"Predicted {len(report.done)} slice(s)"
            self.status.value = (f"{what} into '{target.name}' with {model_name} ({100 * report.structure:.1f}% "
                                 f"structure{kept}{blank}), stored in {folder}. Correct it with the paint tools.")

        self.job = BackgroundJob(work, done, self._failed, self, show_written, lambda: self._ended(watch),
                                 description=f"Predicting {layer.name}")
        watch.on_change = self.job.cancel
        self.run_button.text = "Cancel"
        self.status.value = (f"Predicting {len(todo)} slice(s) of {layer.name} one by one with {model_name} on "
                             f"{describe_device(device)}; they appear as they are done…")
        self.progress_bar.value = 0
        self.job.start()
        return self.job

    def _predict_region(self, layer: Image, volume, checkpoint: Checkpoint, model_name: str, device
                        ) -> BackgroundJob | None:
        """A montage slice: predict the region around the centre of the view, each pixel as
        the whole slice's prediction has it, into a Labels layer placed over it. Chunks
        corrected before come back as the user left them."""
        try:
            pipeline = self.pipeline(checkpoint, device)
            refuse_whole(pipeline, tuple(volume.shape[1:3]))  # photographs this large; resampling too large
            if not in_blocks(pipeline, tuple(volume.shape[1:3])):
                raise ValueError(f"'{layer.name}' is a montage: it is predicted a region at a time, which needs the "
                                 "model's own pixel size. Set Pixel size to 0, or resample the montage first.")
            corrections = montage_corrections(layer, volume.shape, self.session.corrections_dir)
            z, region = region_in_view(self.viewer, layer, volume.shape, self.session.sizes.correct_region)
        except (ValueError, OSError) as exc:  # DataError is a ValueError
            self.status.value = str(exc)
            return None
        y0, y1, x0, x1 = region
        shown = [other for other in region_layers(self.viewer, layer) if region_of(other) == (z, region)]
        if shown and (self.session.tracker(shown[-1]).edited or self.session.tracker(shown[-1]).corrected):
            self.viewer.layers.selection.active = shown[-1]
            self.status.value = (f"'{shown[-1].name}' holds your corrections and is kept as it is. Pan to a region "
                                 "you have not corrected and Predict again.")
            return None
        watch = ImageWatch(self.viewer, layer)

        def work(state):
            self.session.save_quietly()  # edits of open regions reach the disk, so an overlapping region shows them

            def note(text: str) -> None:
                state.note = text

            try:
                return predict_montage_region(pipeline, volume, corrections, z, region, state.report,
                                              state.cancelled, note)
            except PredictionCancelled:
                return None

        def done(result):
            if watch.changed:
                self.status.value = f"{watch.changed}: nothing was added. Predict again."
                return None
            if result is None:
                self.status.value = "Prediction cancelled; nothing was changed."
                return None
            mask, edited, corrected, probability = result.mask, result.edited, result.corrected, result.probability
            self.session.current, self.session.current_label = checkpoint, model_name
            if shown and shown[-1] in self.viewer.layers:
                target = shown[-1]
                if self.session.tracker(target).edited or self.session.tracker(target).corrected:
                    self.status.value = (f"You painted '{target.name}' while it was predicted: your strokes are kept "
                                         "and nothing was replaced.")
                    return None
                with self.session.tracker(target).programmatic():
                    target.data = mask.reshape(target.data.shape)
            else:
                target = add_region_layer(self.viewer, layer, z, region, mask, model_name, corrections)
            tracker = self.session.tracker(target)
            if corrected.any() or edited.any():
                # Corrected (and listed as edited) only when all of it was: a region beside a corrected
                # one shows those chunks as saved, and counts as corrected once the user paints it.
                whole = bool(corrected.all())
                tracker.restore([0] if whole else [], [0] if whole and edited.any() else [],
                                {0: edited} if edited.any() else {})
            if self.show_probability.value:
                self.viewer.add_image(probability.reshape(target.data.shape), name=f"{target.name} probability",
                                      colormap="magma", blending="additive", contrast_limits=(0, 1), scale=target.scale,
                                      translate=target.translate, metadata=linked_meta("probability", target))
            self.viewer.layers.selection.active = target
            kept = " with your saved corrections" if corrected.any() else ""
            self.status.value = (f"Predicted the region y {y0:,}-{y1:,}, x {x0:,}-{x1:,} of slice {z}{kept} with "
                                 f"{model_name} ({100 * mask.mean():.1f}% structure) into '{target.name}'. Correct it "
                                 "with the paint tools: it is saved by chunk and learnt by Fine-tune. The whole "
                                 f"montage: napari-unet predict {plugin_meta(layer).get('source') or 'IMAGE.tif'} "
                                 "--model MODEL --out mask.ome.zarr")
            return None

        def poll(state) -> None:
            self._poll(state)
            if state.note and not state.done:
                self.status.value = state.note

        self.job = BackgroundJob(work, done, self._failed, self, poll, lambda: self._ended(watch),
                                 description=f"Predicting a region of {layer.name}")
        watch.on_change = self.job.cancel
        self.run_button.text = "Cancel"
        self.status.value = (f"'{layer.name}' is a montage ({volume.shape[1]:,} x {volume.shape[2]:,} px a slice): "
                             f"predicting the region in view, y {y0:,}-{y1:,}, x {x0:,}-{x1:,} of slice {z}, with "
                             f"{model_name} on {describe_device(device)}…")
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
        target = None if self.edited_policy.value == NEW_LAYER else prediction_layer_for(self.viewer, image)
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


def prediction_folder(image: Image, root=None):
    """Where the stores of a volume's prediction go: beside the image with its corrections
    (`core.corrections.corrections_folder`), or under ``$NAPARI_UNET_HOME/predictions`` when
    the image has no file or its folder cannot be written."""
    source = plugin_meta(image).get("source")
    if source:
        try:
            return check_writable(corrections_folder(source, root=root))
        except ValueError:
            pass
    return check_writable(napari_unet_home() / "predictions" / layer_uid(image))


class ImageWatch:
    """Notices when an image layer is removed or its data replaced while a job runs."""

    def __init__(self, viewer, layer: Image) -> None:
        self.viewer, self.layer, self.data = viewer, layer, layer.data
        self.changed = ""
        self.on_change = lambda: None
        viewer.layers.events.removed.connect(self._removed)
        layer.events.data.connect(self._data)

    def _removed(self, event) -> None:
        if event.value is self.layer:
            self.changed = f"'{self.layer.name}' was removed while the job ran"
            self.on_change()

    def _data(self, _event=None) -> None:
        if self.layer.data is not self.data:
            self.changed = f"The data of '{self.layer.name}' changed while the job ran"
            self.on_change()

    def stop(self) -> None:
        self.viewer.layers.events.removed.disconnect(self._removed)
        self.layer.events.data.disconnect(self._data)


def prediction_layer_for(viewer, image: Image) -> Labels | None:
    """The newest prediction Labels layer linked to ``image`` (same shape), if any."""
    shape = image.data.shape[:-1] if image.rgb else image.data.shape
    layers = [layer for layer in linked_layers(viewer, "prediction", image, Labels) if layer.data.shape == shape]
    return layers[-1] if layers else None


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
