"""Evaluate widget: the core's metrics per slice and overall, in a table."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, PushButton
from napari.layers import Image, Labels
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem

from ..core.evaluate import TASKS, evaluate, evaluate_per_slice, scoring_inputs
from ._jobs import BackgroundJob
from ._layers import follow_new_layers, layer_choices, plugin_meta
from ._session import SessionWidget
from ._text import text_row

NO_FOV = None


def _plane(layer) -> tuple[int, ...]:
    """(Y, X) of a layer's slices (an RGB image's last axis is its colour)."""
    shape = layer.data.shape
    return shape[-3:-1] if isinstance(layer, Image) and layer.rgb else shape[-2:]


class EvaluateWidget(SessionWidget):
    """Compare a prediction (Labels or probability Image) with ground-truth Labels."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        viewer = self.viewer
        self.prediction = ComboBox(label="Prediction", choices=self._prediction_choices)
        self.truth = ComboBox(label="Ground truth", choices=self._truth_choices)
        self.fov = ComboBox(label="FOV mask", choices=self._fov_choices)
        self.task = ComboBox(label="Task", choices=list(TASKS), value="em")
        self.run_button = PushButton(text="Evaluate")
        self.status = text_row()
        self.extend([self.prediction, self.truth, self.fov, self.task, self.run_button, self.status])
        self.table = QTableWidget()
        self.table.setMinimumHeight(200)
        self.native.layout().addWidget(self.table)
        self.run_button.changed.connect(self.run)
        self.truth.changed.connect(self._guess_task)
        self.job: BackgroundJob | None = None
        follow_new_layers(viewer, self, {"prediction": self.prediction, "truth": self.truth, "fov": self.fov})
        self._guess_task()

    def _prediction_choices(self, _widget=None):
        def not_the_image(layer):
            # A float image may be a probability map (a CLI --probabilities tif opened with
            # File > Open is read as an image): Evaluate says so when its values are not in [0, 1].
            image = isinstance(layer, Image) and plugin_meta(layer).get("role") == "image"
            return not image or (not layer.multiscale and layer.data.dtype.kind == "f")

        return layer_choices(self.viewer, (Labels, Image), "prediction", keep=not_the_image)

    def _truth_choices(self, _widget=None):
        return layer_choices(self.viewer, Labels, "truth")

    def _fov_choices(self, _widget=None):
        def is_fov(layer):
            return plugin_meta(layer).get("role") == "fov"

        return [("none", NO_FOV)] + layer_choices(self.viewer, (Labels, Image), keep=is_fov)

    def _guess_task(self) -> None:
        for layer in (self.truth.value, self.prediction.value):
            kind = plugin_meta(layer).get("kind") if layer is not None else None
            if kind in ("em", "fundus"):
                self.task.value = kind
                return

    def run(self) -> BackgroundJob | None:
        pred_layer, truth_layer, fov_layer = self.prediction.value, self.truth.value, self.fov.value
        try:
            if pred_layer is None or truth_layer is None:
                raise ValueError("Choose a prediction and a ground-truth Labels layer.")
            if pred_layer is truth_layer:
                raise ValueError("The prediction and the ground truth are the same layer: choose two.")
            if isinstance(pred_layer, Image) and pred_layer.rgb:
                raise ValueError(f"'{pred_layer.name}' is an RGB image: choose a prediction or a probability map.")
            shapes = pred_layer.data.shape, truth_layer.data.shape
            if shapes[0][-2:] != shapes[1][-2:] or len(shapes[0]) == len(shapes[1]) and shapes[0] != shapes[1]:
                raise ValueError(f"'{pred_layer.name}' has shape {pred_layer.data.shape} but '{truth_layer.name}' "
                                 f"has {truth_layer.data.shape}: choose layers of one image.")
            if fov_layer is not None and _plane(fov_layer) != shapes[1][-2:]:  # checked before the work starts
                raise ValueError(f"The FOV mask '{fov_layer.name}' has shape {fov_layer.data.shape} but "
                                 f"'{truth_layer.name}' has {truth_layer.data.shape}: choose the FOV mask of this "
                                 "image, or none.")
        except ValueError as exc:
            self.status.value = str(exc)
            return None
        task = self.task.value
        pred_data, truth_data = pred_layer.data, truth_layer.data
        fov = fov_layer.data if fov_layer is not None else None

        def work(state):  # the conversions read every pixel: not on the GUI thread
            pred, truth, scored = scoring_inputs(pred_data, truth_data, fov)
            per_slice = evaluate_per_slice(pred, truth, task, fov=scored) if pred.shape[0] > 1 else []
            return per_slice, evaluate(pred, truth, task, fov=scored)

        self.job = BackgroundJob(work, self._show, self._failed, self, description="Evaluating")
        self.status.value = f"Evaluating '{pred_layer.name}' against '{truth_layer.name}'…"
        self.job.start()
        return self.job

    def _failed(self, message: str) -> None:
        self.status.value = message

    def _show(self, result) -> None:
        per_slice, overall = result
        keys = list(overall)
        rows = [(f"slice {z}", scores) for z, scores in enumerate(per_slice)] + [("all", overall)]
        self.table.clear()
        self.table.setColumnCount(len(keys))
        self.table.setRowCount(len(rows))
        self.table.setHorizontalHeaderLabels(keys)
        self.table.setVerticalHeaderLabels([name for name, _ in rows])
        for r, (_, scores) in enumerate(rows):
            for c, key in enumerate(keys):
                value = scores.get(key, float("nan"))
                self.table.setItem(r, c, QTableWidgetItem("–" if np.isnan(value) else f"{value:.4f}"))
        self.table.resizeColumnsToContents()
        self.status.value = "Overall: " + ", ".join(f"{k} {v:.4f}" for k, v in overall.items())
