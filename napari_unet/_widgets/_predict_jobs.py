"""Predict's jobs on data larger than memory (a volume read on demand, predicted slice by
slice into stores on disk; a region of a montage slice, predicted as the whole slice has
it, `core.regions.predict_montage_region`), and what all of Predict's jobs share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels

from ..core.blocks import in_blocks, refuse_whole
from ..core.checkpoint import Checkpoint
from ..core.corrections import corrections_folder
from ..core.files import check_writable, free_path, napari_unet_home
from ..core.predict import PredictionCancelled, describe_device
from ..core.regions import predict_montage_region
from ..core.stream import VolumeOutputs, predict_volume
from ..core.volume import create_output
from ._jobs import BackgroundJob
from ._layers import fov_of, label_colormap, layer_uid, linked_layers, linked_meta, plugin_meta
from ._montage import add_region_layer, montage_corrections, region_in_view, region_layers, region_of

if TYPE_CHECKING:
    from .predict import PredictWidget


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


def predict_volume_job(widget: PredictWidget, layer: Image, volume, checkpoint: Checkpoint, model_name: str, device,
                    slices: list[int] | None) -> BackgroundJob | None:
    """A volume read on demand: predicted slice by slice into zarr stores on disk that
    back the result layers, which show each slice as soon as it is written. Cancel
    keeps the slices done; slices the user edited are never predicted over."""
    shape = tuple(volume.shape[:3])
    target = widget.target_layer(layer)
    try:
        pipeline = widget.pipeline(checkpoint, device, instances=widget.show_instances.value and not layer.rgb)
        folder = prediction_folder(layer, widget.session.corrections_dir)
        mask_path = free_path(folder / "prediction.zarr")
        outputs = {"mask": target.data if target is not None else create_output(mask_path, shape, np.uint8)}
        if widget.show_probability.value:
            outputs["probabilities"] = create_output(free_path(folder / "probability.zarr"), shape, np.float32)
        if pipeline.instances:
            outputs["instances"] = create_output(free_path(folder / "cells.zarr"), shape, np.uint32)
    except (OSError, ValueError) as exc:
        widget.status.value = f"Cannot create the prediction store ({exc}): choose a folder in Correct."
        return None
    keep = set()
    if target is None:
        meta = linked_meta("prediction", layer, model=model_name, kind="fundus" if layer.rgb else "em",
                           image_source=plugin_meta(layer).get("source", ""), store=str(folder),
                           labels=str(mask_path))
        target = widget.viewer.add_labels(outputs["mask"], name=f"{layer.name} prediction", opacity=0.5,
                                        colormap=label_colormap("prediction"), metadata=meta)
    else:
        tracker = widget.session.tracker(target)
        keep = tracker.corrected | tracker.edited
    widget.session.tracker(target)
    shown = [target]
    if "probabilities" in outputs:
        shown.append(widget.viewer.add_image(outputs["probabilities"], name=f"{layer.name} probability",
                                           colormap="magma", blending="additive", contrast_limits=(0, 1),
                                           metadata=linked_meta("probability", layer)))
    if "instances" in outputs:
        shown.append(widget.viewer.add_labels(outputs["instances"], name=f"{layer.name} cells", opacity=0.4,
                                            metadata=linked_meta("cells", layer)))
    todo = [z for z in (slices if slices is not None else range(shape[0])) if z not in keep]
    given_fov = fov_of(widget.viewer, layer, shape)
    watch = ImageWatch(widget.viewer, layer)

    def work(state):
        return predict_volume(pipeline, volume, VolumeOutputs(**outputs), todo, fov=given_fov,
                              progress=state.report, cancel=state.cancelled, on_slice=state.events.append)

    def show_written(state) -> None:
        widget._poll(state)
        if state.events:  # slices written since the last look: show them
            state.events.clear()
            for shown_layer in shown:
                if shown_layer in widget.viewer.layers:
                    shown_layer.refresh()

    def done(report):
        show_written(widget.job.state)
        widget.session.current, widget.session.current_label = checkpoint, model_name
        kept = f"; kept your {len(keep)} edited slice(s)" if keep else ""
        blank = f"; slice(s) {report.blank[:10]} hold no image and stay empty" if report.blank else ""
        if watch.changed:
            what = f"{watch.changed}: stopped after {len(report.done)} slice(s)"
        elif report.cancelled:
            what = f"Cancelled: kept the {len(report.done)} slice(s) done"
        else:
            what = f"Predicted {len(report.done)} slice(s)"
        widget.status.value = (f"{what} into '{target.name}' with {model_name} ({100 * report.structure:.1f}% "
                             f"structure{kept}{blank}), stored in {folder}. Correct it with the paint tools.")

    widget.job = BackgroundJob(work, done, widget._failed, widget, show_written, lambda: widget._ended(watch),
                             description=f"Predicting {layer.name}")
    watch.on_change = widget.job.cancel
    widget.run_button.text = "Cancel"
    widget.status.value = (f"Predicting {len(todo)} slice(s) of {layer.name} one by one with {model_name} on "
                         f"{describe_device(device)}; they appear as they are done…")
    widget.progress_bar.value = 0
    widget.job.start()
    return widget.job


def predict_region_job(widget: PredictWidget, layer: Image, volume, checkpoint: Checkpoint, model_name: str, device
                    ) -> BackgroundJob | None:
    """A montage slice: predict the region around the centre of the view, each pixel as
    the whole slice's prediction has it, into a Labels layer placed over it. Chunks
    corrected before come back as the user left them."""
    try:
        pipeline = widget.pipeline(checkpoint, device)
        refuse_whole(pipeline, tuple(volume.shape[1:3]))  # photographs this large; resampling too large
        if not in_blocks(pipeline, tuple(volume.shape[1:3])):
            raise ValueError(f"'{layer.name}' is a montage: it is predicted a region at a time, which needs the "
                             "model's own pixel size. Set Pixel size to 0, or resample the montage first.")
        corrections = montage_corrections(layer, volume.shape, widget.session.corrections_dir)
        z, region = region_in_view(widget.viewer, layer, volume.shape, widget.session.sizes.correct_region)
    except (ValueError, OSError) as exc:  # DataError is a ValueError
        widget.status.value = str(exc)
        return None
    y0, y1, x0, x1 = region
    shown = [other for other in region_layers(widget.viewer, layer) if region_of(other) == (z, region)]
    if shown and (widget.session.tracker(shown[-1]).edited or widget.session.tracker(shown[-1]).corrected):
        widget.viewer.layers.selection.active = shown[-1]
        widget.status.value = (f"'{shown[-1].name}' holds your corrections and is kept as it is. Pan to a region "
                             "you have not corrected and Predict again.")
        return None
    watch = ImageWatch(widget.viewer, layer)

    def work(state):
        widget.session.save_quietly()  # edits of open regions reach the disk, so an overlapping region shows them

        def note(text: str) -> None:
            state.note = text

        try:
            return predict_montage_region(pipeline, volume, corrections, z, region, state.report,
                                          state.cancelled, note)
        except PredictionCancelled:
            return None

    def done(result):
        if watch.changed:
            widget.status.value = f"{watch.changed}: nothing was added. Predict again."
            return None
        if result is None:
            widget.status.value = "Prediction cancelled; nothing was changed."
            return None
        mask, edited, corrected, probability = result.mask, result.edited, result.corrected, result.probability
        widget.session.current, widget.session.current_label = checkpoint, model_name
        if shown and shown[-1] in widget.viewer.layers:
            target = shown[-1]
            if widget.session.tracker(target).edited or widget.session.tracker(target).corrected:
                widget.status.value = (f"You painted '{target.name}' while it was predicted: your strokes are kept "
                                     "and nothing was replaced.")
                return None
            with widget.session.tracker(target).programmatic():
                target.data = mask.reshape(target.data.shape)
        else:
            target = add_region_layer(widget.viewer, layer, z, region, mask, model_name, corrections)
        tracker = widget.session.tracker(target)
        if corrected.any() or edited.any():
            # Corrected (and listed as edited) only when all of it was: a region beside a corrected
            # one shows those chunks as saved, and counts as corrected once the user paints it.
            whole = bool(corrected.all())
            tracker.restore([0] if whole else [], [0] if whole and edited.any() else [],
                            {0: edited} if edited.any() else {})
        if widget.show_probability.value:
            widget.viewer.add_image(probability.reshape(target.data.shape), name=f"{target.name} probability",
                                  colormap="magma", blending="additive", contrast_limits=(0, 1), scale=target.scale,
                                  translate=target.translate, metadata=linked_meta("probability", target))
        widget.viewer.layers.selection.active = target
        kept = " with your saved corrections" if corrected.any() else ""
        widget.status.value = (f"Predicted the region y {y0:,}-{y1:,}, x {x0:,}-{x1:,} of slice {z}{kept} with "
                             f"{model_name} ({100 * mask.mean():.1f}% structure) into '{target.name}'. Correct it "
                             "with the paint tools: it is saved by chunk and learnt by Fine-tune. The whole "
                             f"montage: napari-unet predict {plugin_meta(layer).get('source') or 'IMAGE.tif'} "
                             "--model MODEL --out mask.ome.zarr")
        return None

    def poll(state) -> None:
        widget._poll(state)
        if state.note and not state.done:
            widget.status.value = state.note

    widget.job = BackgroundJob(work, done, widget._failed, widget, poll, lambda: widget._ended(watch),
                             description=f"Predicting a region of {layer.name}")
    watch.on_change = widget.job.cancel
    widget.run_button.text = "Cancel"
    widget.status.value = (f"'{layer.name}' is a montage ({volume.shape[1]:,} x {volume.shape[2]:,} px a slice): "
                         f"predicting the region in view, y {y0:,}-{y1:,}, x {x0:,}-{x1:,} of slice {z}, with "
                         f"{model_name} on {describe_device(device)}…")
    widget.progress_bar.value = 0
    widget.job.start()
    return widget.job
