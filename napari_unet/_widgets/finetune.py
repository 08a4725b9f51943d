"""Fine-tune widget: one click trains on the corrected slices, with a live curve and Stop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch._dynamo  # noqa: F401  (see below)
from magicgui.widgets import CheckBox, ComboBox, FileEdit, LineEdit, ProgressBar, PushButton, SpinBox
from napari.layers import Image, Labels

from ..core.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ..core.export import export_package
from ..core.files import napari_unet_home
from ..core.finetune import (
    FineTune,
    FineTuneOptions,
    SlicesOf,
    anchor_slices,
    describe_montage_plan,
    describe_plan,
    describe_progress,
    make_folds,
)
from ..core.labels import labels_from_array, labels_note
from ..core.predict import describe_device, resolve_device
from ..core.regions import CHUNK, CONTEXT, fine_tune_on_chunks, region_chunks
from ._finetune_job import Saved, chosen_path, repredict, run_and_save, save_corrections
from ._jobs import BackgroundJob
from ._layers import (
    follow_new_layers,
    fov_of,
    image_stack,
    is_lazy,
    is_montage,
    label_colormap,
    layer_choices,
    layer_shaped,
    lazy_stack,
    plugin_meta,
    show_linked,
)
from ._montage import montage_corrections, region_of
from ._plot import LossPlot
from ._session import SessionWidget
from ._text import text_row
from ._writer_queue import write_steps

# torch's optimizers import torch._dynamo lazily on their first step; in a worker thread
# that big import (and the full garbage collections it triggers in napari's large heap)
# pauses the GUI for ~0.3 s. Importing it with the plugin moves that cost to start-up.

START = "Fine-tune on corrected slices"


class FineTuneWidget(SessionWidget):
    """Trains from the current model on the corrected slices; the button turns into Stop."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        viewer = self.viewer
        self.image = ComboBox(label="Image", choices=lambda _w=None: layer_choices(viewer, Image))
        self.corrected_labels = ComboBox(label="Corrected labels",
                                         choices=lambda _w=None: layer_choices(viewer, Labels, "prediction"))
        self.steps = SpinBox(label="Steps", min=5, max=5000, value=FineTuneOptions.steps)
        self.verify = CheckBox(text="Keep it only if it does better where it did not learn", value=True,
                               tooltip="Each corrected slice (one slice: each half) is held out in turn and "
                                       "scored as Predict shows it; unchecked: train on all and keep it unchecked")
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.save_to = FileEdit(label="Save model to", mode="w", filter="*.pt",
                                tooltip="Empty: next to the image, never overwriting")
        self.run_button = PushButton(text=START)
        self.progress_bar = ProgressBar(label="Progress", value=0, max=1)
        # Room kept for the lines these rows usually need: the ETA is rewritten at each
        # step, and a row that changes height re-lays out the window and makes the canvas
        # redraw (a visible stall with software OpenGL). Longer text still grows the row.
        self.eta = text_row(lines=2)
        self.status = text_row(lines=3)
        self.export_to = FileEdit(label="Export to", mode="w", filter="*.zip",
                                  tooltip="A bioimage.io package of the model in Predict. Empty: next to it")
        self.export_authors = LineEdit(label="Authors", tooltip="Names for the package, separated by commas")
        self.export_button = PushButton(text="Export for bioimage.io…")
        self.extend([self.image, self.corrected_labels, self.steps, self.verify, self.device, self.save_to,
                     self.run_button, self.progress_bar, self.eta, self.status, self.export_to, self.export_authors,
                     self.export_button])
        self.plot = LossPlot()
        self.native.layout().insertWidget(7, self.plot)
        self.run_button.changed.connect(self._clicked)
        self.export_button.changed.connect(self.export)
        self.job: BackgroundJob | None = None
        self.history: list = []
        follow_new_layers(viewer, self, {"image": self.image, "prediction": self.corrected_labels})

    def _clicked(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.run_button.text = "Stopping…"
            self.status.value = "Stopping after this step; the starting model is kept (nothing verified yet)."
            return
        self.start()

    # ------------------------------------------------------------------ start

    def _starting_model(self, image: Image) -> tuple[Checkpoint, str]:
        if self.session.current is not None and self.session.current.config.in_channels == (3 if image.rgb else 1):
            return self.session.current, self.session.current_label
        name = "fundus-vessels" if image.rgb else "em-membranes"
        return load_checkpoint(name), name

    def start(self) -> BackgroundJob | None:
        """Check the input here, then autosave the corrections, read the corrected slices and
        train in a worker: nothing that reads the whole stack runs on the GUI thread."""
        image, labels_layer = self.image.value, self.corrected_labels.value
        if image is not None and labels_layer is not None and region_of(labels_layer) is not None:
            return self._start_on_montage(image, labels_layer)
        try:
            if image is None or labels_layer is None:
                raise ValueError("Choose the image and the corrected Labels layer (predict first).")
            lazy = is_lazy(image) or not isinstance(labels_layer.data, np.ndarray)
            stack = lazy_stack(image) if is_lazy(image) else image_stack(image)
            if is_montage(stack.shape, self.session.sizes):
                raise ValueError(f"'{image.name}' is a montage: it is corrected and fine-tuned a region at a time. "
                                 "Predict makes the region in view; choose its Labels layer as Corrected labels.")
            labels = labels_layer.data if labels_layer.data.ndim == 3 else np.asarray(labels_layer.data)[None]
            if labels.shape != stack.shape[:3]:
                raise ValueError(f"'{labels_layer.name}' has shape {labels.shape} but '{image.name}' has "
                                 f"{stack.shape[:3]}: choose the labels that belong to this image.")
            tracker = self.session.tracker(labels_layer)
            corrected = sorted(tracker.corrected)
            if not corrected:
                raise ValueError("No corrected slice yet: paint your corrections on a slice (the Correct widget "
                                 "lists them), or mark a checked slice as corrected.")
            checkpoint, start_name, device, options = self._model_and_options(image, stack.shape[-1])
            out = self._output_path(image)
        except (ValueError, CheckpointError) as exc:
            self.status.value = str(exc)
            return None
        # A volume read on demand is re-predicted by Predict, slice by slice, not here.
        uncorrected = [] if lazy else [z for z in range(stack.shape[0]) if z not in corrected]
        given_fov = fov_of(self.viewer, image, stack.shape[:3])
        edited = {z: tracker.edited_pixels[z].copy() for z in corrected if z in tracker.edited_pixels}
        corrections_dir = self.session.corrections_dir

        def work(state):
            save_corrections(self.session, tracker, corrections_dir)
            # Only the corrected slices are read and converted: painting during training changes nothing.
            raw = np.asarray(labels[corrected])
            note = labels_note(raw)
            run = FineTune(checkpoint, stack, SlicesOf(labels_from_array(raw), corrected, labels.shape), corrected,
                           SlicesOf(np.stack([edited.get(z, np.zeros(labels.shape[1:], bool)) for z in corrected]),
                                    corrected, labels.shape),
                           options=options, start_name=start_name, fov=given_fov)
            saved = run_and_save(run, state, out, tracker.store(corrections_dir).folder, corrected, note)
            if saved is None:
                return None
            state.total = 0
            if not (uncorrected and saved.report.kept):
                return saved, None, None
            settings = options.predict.but(device=str(device))
            return saved, *repredict(saved.model, settings, stack, labels, uncorrected, given_fov,
                                     lambda: state.abandoned)

        plan = describe_plan(corrected, options, anchor_slices(stack.shape[0], corrected, options.anchors))
        return self._launch(work, lambda result: self._finished(image, labels_layer, uncorrected, *result),
                            len(corrected), options, f"Fine-tuning on {len(corrected)} slice(s)",
                            f"Fine-tuning {start_name}{plan} on {describe_device(device)}…")

    def _launch(self, work, done, parts: int, options: FineTuneOptions, description: str, status: str):
        """Start the fine-tune job of ``parts`` corrected parts: the plot of its steps, Stop."""
        folds = len(make_folds(parts)) if options.verify else 0
        self.plot.reset((folds + 1) * options.steps)
        self.history = []
        self.job = BackgroundJob(work, done, self._failed, self, self._poll, self._ended, description=description,
                                 activity=False)
        self.run_button.text = "Stop"
        self.status.value = status
        self.job.start()
        return self.job

    def _model_and_options(self, image: Image, channels: int):
        """(starting model, its name, device, `FineTuneOptions`): this widget's steps, check and
        device, and Predict's settings whole (tile, overlap, pixel size, ...), so every check
        predicts as Predict does.

        Raises:
            ValueError, CheckpointError: with a message for the user.
        """
        checkpoint, start_name = self._starting_model(image)
        if checkpoint.config.in_channels != channels:
            raise ValueError("The current model does not take this kind of image (grey vs RGB).")
        device = resolve_device(self.device.value)
        options = FineTuneOptions(steps=self.steps.value, verify=self.verify.value, device=str(device),
                                  predict=self.session.last_settings())
        return checkpoint, start_name, device, options

    def _start_on_montage(self, image: Image, labels_layer: Labels) -> BackgroundJob | None:
        """A montage region's labels: fine-tune on every corrected chunk of the montage (this
        region's and those corrected before), each read with its context, nothing else."""
        try:
            volume = lazy_stack(image)
            corrections = montage_corrections(image, volume.shape, self.session.corrections_dir)
            if plugin_meta(labels_layer).get("montage") != str(corrections.folder):
                raise ValueError(f"'{labels_layer.name}' is a region of another montage: choose its image.")
            tracker = self.session.tracker(labels_layer)
            z, region = region_of(labels_layer)
            chunks = corrections.corrected | (set(region_chunks(z, region)) if 0 in tracker.corrected else set())
            if not chunks:
                raise ValueError("No corrected region yet: paint your corrections on the region (it then counts as "
                                 "corrected), or mark it corrected in Correct.")
            checkpoint, start_name, device, options = self._model_and_options(image, volume.shape[-1])
            out = self._output_path(image)
        except (ValueError, CheckpointError) as exc:
            self.status.value = str(exc)
            return None
        corrections_dir = self.session.corrections_dir

        def work(state):
            save_corrections(self.session, tracker, corrections_dir)
            saved = montage_corrections(image, volume.shape, corrections_dir)  # as just saved
            run, learnt = fine_tune_on_chunks(checkpoint, volume, saved, options, start_name)
            slices = sorted({chunk[0] for chunk in learnt})
            saved = run_and_save(run, state, out, tracker.store(corrections_dir).folder, slices, "")
            return None if saved is None else (saved, None, None)

        return self._launch(work, lambda result: self._finished(image, labels_layer, [], *result), len(chunks),
                            options, f"Fine-tuning on {len(chunks)} chunk(s)",
                            f"Fine-tuning {start_name} on the {len(chunks)} corrected chunk(s) of '{image.name}' "
                            f"({CHUNK} px, read with {CONTEXT} px around): "
                            f"{describe_montage_plan(len(chunks), options)}, on {describe_device(device)}…")

    def _output_path(self, image: Image) -> Path:
        """Where the new model goes (never over an existing file); its folder is checked now,
        not after the training (raises ValueError naming the folder)."""
        source = plugin_meta(image).get("source")
        folder = Path(source).parent if source else napari_unet_home() / "models"
        stem = Path(source).stem if source else image.name.replace("/", "_")
        return chosen_path(str(self.save_to.value), ".pt", folder / f"{stem}_finetuned.pt", self._inputs(image),
                           "Save model to")

    # ------------------------------------------------------------------ export

    def export(self) -> BackgroundJob | None:
        """Write the model in Predict (the fine-tuned one after a fine-tune) as a bioimage.io
        package; the image's current slice becomes its test image and cover."""
        image = self.image.value
        try:
            if image is None:
                raise ValueError("Choose the image the model is for: its current slice becomes the package's "
                                 "test image.")
            checkpoint, name = self._starting_model(image)
            stack = image_stack(image)
            z = int(self.viewer.dims.current_step[0]) if stack.shape[0] > 1 else 0
            sample = np.asarray(stack[min(z, stack.shape[0] - 1)])
            out = self._export_path(name)
        except (ValueError, CheckpointError) as exc:
            self.status.value = str(exc)
            return None

        def done(path) -> None:
            self.status.value = (f"Exported {name} as a bioimage.io package: {path}. It runs in ilastik, deepImageJ, "
                                 "Fiji and QuPath, and in Predict as a checkpoint file.")

        def failed(message: str) -> None:
            self.status.value = f"Export failed: {message}"

        self.status.value = f"Exporting {name} (traced, with a test image from slice {z})…"
        authors = [a.strip() for a in self.export_authors.value.split(",") if a.strip()] or None
        self.export_job = BackgroundJob(
            lambda state: export_package(checkpoint, out, sample, name=Path(out).stem, authors=authors),
            done, failed, self, description="Exporting for bioimage.io")
        self.export_job.start()
        return self.export_job

    def _inputs(self, image: Image) -> dict:
        """What a chosen output may not be: the image's file and the models in use."""
        current = self.session.current
        source = (plugin_meta(image).get("source") or image.source.path) if image is not None else None
        return {"the image": source, "the model in use": current.source if current is not None else None}

    def _export_path(self, name: str) -> Path:
        model_file = self.session.fine_tuned_path
        folder = model_file.parent if model_file else napari_unet_home() / "models"
        stem = model_file.stem if model_file else name.replace("/", "_").replace(" ", "_")
        return chosen_path(str(self.export_to.value), ".zip", folder / f"{stem}.bioimageio.zip",
                           self._inputs(self.image.value), "Export to")

    # ------------------------------------------------------------------ progress

    def _poll(self, state) -> None:
        new = state.events[len(self.history):]
        self.history.extend(new)
        for event in new:
            if event.stage == "scale":  # no step or score to draw yet
                continue
            self.plot.add(event.step, event.loss, event.val_dice, event.refused, event.stage, event.total,
                          event.best_dice if event.val_dice is not None else None)
        if not self.history:
            return
        last = self.history[-1]
        self.progress_bar.max = last.total
        self.progress_bar.value = last.step
        repredicting = state.total == 0 and self.job and self.job.running
        self.eta.value = "Re-predicting the uncorrected slices…" if repredicting else describe_progress(self.history)

    def _failed(self, message: str) -> None:
        self.status.value = f"Fine-tuning failed: {message} Your corrections are saved."

    def _ended(self) -> None:
        self.run_button.text = START

    def _finished(self, image, labels_layer, uncorrected, saved: Saved, updates, changed) -> list:
        """Show the outcome; returns the GUI steps that write the re-prediction and show
        what changed (see `BackgroundJob`)."""
        report, out = saved.report, saved.path
        self.session.set_fine_tuned(saved.model, out)
        self.progress_bar.value = self.progress_bar.max  # also when refused before the last stage
        changed_text, steps = "", []
        if region_of(labels_layer) is not None and report.kept:
            changed_text = " Pan to a region you have not corrected and Predict to see what it learnt."
        elif not uncorrected and is_lazy(image) and report.kept:
            changed_text = " Predict again to apply it to the volume (slice by slice; your corrected slices are kept)."
        elif updates is not None and labels_layer not in self.viewer.layers:
            changed_text = f" '{labels_layer.name}' was removed during training, so nothing was re-predicted."
        elif updates is not None:
            tracker = self.session.tracker(labels_layer)
            painted = tracker.edited & set(uncorrected)  # during training: left as the user made them
            updates = {z: u for z, u in updates.items() if z not in painted}
            changed[sorted(painted)] = 0
            steps = write_steps(labels_layer, tracker, updates)
            labels_layer.metadata.setdefault("napari_unet", {})["model"] = f"fine-tuned ({out.name})"
            steps.append(lambda: show_linked(
                self.viewer, "changed", labels_layer, layer_shaped(changed, labels_layer.data.ndim),
                lambda data, meta: self.viewer.add_labels(
                    data, name=f"{labels_layer.name} changed by fine-tune", colormap=label_colormap("changed"),
                    opacity=0.8, metadata=meta)))
            share = sum(len(u[0]) for u in updates.values()) / (len(uncorrected) * changed[0].size)
            changed_text = (f" Re-predicted {len(uncorrected)} uncorrected slice(s) into '{labels_layer.name}': "
                            f"{100 * share:.2f}% of their pixels changed (yellow layer).")
        self.eta.value = f"{self.history[-1].step if self.history else 0} steps done"
        self.status.value = f"{saved.describe()}; it is now the model in Predict.{changed_text} {saved.note}".strip()
        return steps

