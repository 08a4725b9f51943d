"""The one-click fine-tune: learn from a few corrected slices without breaking what worked.

One recipe for the Fine-tune widget and ``napari-unet train --from``:

1. **Edits.** The pixels the user painted (the widget tracks them) and the pixels where
   the starting model disagrees with the labels: what a user correcting its prediction
   changed, also when the correction was pasted or filled rather than painted.
2. **Learn from the corrections.** Half of the crops are centred on edited pixels, the
   others on labelled ones (never an unlabelled crop), and edited pixels weigh more.
3. **Select honestly.** With two or more corrected slices, the last one is held out.
   It is scored on its edited pixels grown by a margin, where the starting model was
   wrong, so keeping the old model scores nothing there; and a **guard** refuses any
   model whose segmentation got worse on the whole held-out slice than the starting
   model's: V_Rand of the cells after border thinning (EM: broken membranes merge
   cells) or clDice (vessels: broken vessels). The best accepted step wins; the
   starting model is kept when none beats it.
4. **Then use everything.** The model is trained again from the start on all corrected
   slices for the chosen number of steps (same schedule and seed), and kept if it passes
   the same guard; so no correction is wasted.

With one corrected slice there is nothing to hold out: the score and the guard are
measured on that slice itself (the guard still refuses broken membranes). The slices are
prepared as Predict prepares them (`core.pipeline`: FOV diameter and colour of
photographs), so the model learns from what it will be shown, and every check scores
the mask Predict would show (flips, tiles, output shift, FOV, threshold).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import ndimage

from .checkpoint import Checkpoint
from .data import data_hash
from .labels import IGNORE, STRUCTURE
from .metrics import cl_dice, dice, em_challenge_scores
from .model import UNet
from .pipeline import Pipeline
from .predict import resolve_device
from .train import TrainEvent, TrainingData, fine_tune_recipe, train


@dataclass
class FineTuneOptions:
    """Choices of one fine-tune (the rest is the recipe of :func:`fine_tune_recipe`).

    Attributes:
        steps: training steps of the selection run (the refit runs at most as many).
        hold_out: choose the steps on a held-out corrected slice.
        refit: then train again on all corrected slices for the chosen steps.
        edit_weight: loss weight of edited pixels (others weigh 1).
        focus_fraction: share of crops centred on edited pixels.
        margin: pixels around the edits that the held-out score also counts.
        device, seed: where and how reproducibly to train.
        tile, overlap, fov: how Predict predicts (`core.pipeline.Pipeline`): every check
            scores the mask the user will see, made the same way.
        recipe: overrides of the training recipe (batch_size, crop_size, learning_rate,
            border_weights: default on for EM, off for vessels, ...), see `TrainConfig`.
    """

    steps: int = 90
    hold_out: bool = True
    refit: bool = True
    edit_weight: float = 3.0
    focus_fraction: float = 0.5
    margin: int = 8
    device: str = "auto"
    seed: int = 0
    recipe: dict = field(default_factory=dict)
    tile: int | None = None
    overlap: float = 0.25
    fov: str = "auto"


@dataclass
class FineTuneResult:
    """The fine-tuned model, its checkpoint metadata and what happened.

    ``report`` keys: held_out (slice or None), start_score / best_score (held-out score),
    held_out_dice (the kept model's Dice on the whole held-out slice, as Evaluate scores it),
    best_step (0 = the starting model was kept), start_guard / guard (V_Rand or clDice of
    the kept model; refit_guard of a refused refit), threshold (chosen with the score),
    guard_name, refit ("done", "refused", "stopped", "skipped"), stopped, seconds,
    validations ([score, guard] of every validation of the selection run).
    """

    model: UNet
    metadata: dict
    report: dict


def held_out_index(corrected: int, hold_out: bool = True) -> int | None:
    """Which of ``corrected`` slices is held out to choose the steps: the last, when there
    are two or more and ``hold_out`` is on; else None."""
    return corrected - 1 if hold_out and corrected >= 2 else None


class FineTune:
    """One fine-tune run; iterate `run()` for progress, then read `result`.

    Args:
        checkpoint: the starting model (left unchanged).
        images: (Z, Y, X, C) raw stack (only the corrected slices are read, so a lazy
            array, dask or zarr, of a volume larger than memory will do).
        labels: (Z, Y, X) uint8 in the project convention (IGNORE = not learnt); any
            array indexable by a list of slices.
        corrected: indices of the corrected slices, in the order they were corrected.
        edited: optional (Z, Y, X) bool, the pixels the user painted (indexable the same way).
        options: see `FineTuneOptions`.
        fov: fundus: (Z, Y, X) bool field of view the user gave (indexable the same
            way), or None (``options.fov``: found in each photograph, or none).
        start_name: how the starting model is called in the new model's history.

    Raises:
        ValueError: with a message for the user (no corrected slice, no labels, shapes).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        images: np.ndarray,
        labels: np.ndarray,
        corrected: list[int],
        edited: np.ndarray | None = None,
        options: FineTuneOptions | None = None,
        start_name: str | None = None,
        fov: np.ndarray | None = None,
    ) -> None:
        self.options = options = options or FineTuneOptions()
        if images.shape[:3] != labels.shape:
            raise ValueError(f"The labels {labels.shape} do not match the images {images.shape[:3]}.")
        if images.shape[-1] != checkpoint.config.in_channels:
            raise ValueError("The model does not take this kind of image (grey vs RGB): choose a matching model.")
        if edited is not None and edited.shape != labels.shape:
            raise ValueError(f"The edited-pixel mask {edited.shape} does not match the labels {labels.shape}.")
        self.corrected = list(dict.fromkeys(int(z) for z in corrected))
        if not self.corrected:
            raise ValueError("No corrected slice yet: correct at least one slice.")
        self.start = checkpoint
        self.start_name = start_name or checkpoint.source
        self.device = resolve_device(options.device)
        self.threshold = checkpoint.info.threshold
        self.task = checkpoint.task
        # The U-Net border weights keep thin membranes between cells whole (they raised V_Rand
        # on another lab's EM in benchmarks/finetune_gain.py) but lowered F1 on vessels.
        recipe = {"border_weights": self.task == "em", **options.recipe}
        self.config = fine_tune_recipe(
            options.steps, device=str(self.device), seed=options.seed, focus_fraction=options.focus_fraction, **recipe
        )
        # Only the corrected slices are copied: painting during training changes nothing.
        self.raw = np.asarray(images[self.corrected])
        self.raw_labels = np.array(labels[self.corrected], dtype=np.uint8)
        self.hash = data_hash(self.raw, self.raw_labels)
        self.pipeline = self.predicting(self.start.model)  # checks the inputs as Predict does
        self.fov, _found = self.pipeline.fov_for(self.raw, None if fov is None else np.asarray(fov[self.corrected]))
        self.images, self.labels = self._as_the_model_sees()
        self.held_out = held_out_index(len(self.corrected), options.hold_out)
        self.train_slices = [i for i in range(len(self.corrected)) if i != self.held_out]
        # The pixels the user painted, on the slices' own grid (see `_edits`).
        self.painted = None if edited is None else np.array(edited[self.corrected], dtype=bool)
        self.edited: np.ndarray | None = None
        self.result: FineTuneResult | None = None
        for z, label in zip(self.corrected, self.labels):
            if not np.any(label != IGNORE):
                raise ValueError(f"Corrected slice {z} has no labelled pixel: label it or leave it out.")
        TrainingData(self.images, self.labels, self.train_slices)  # the same checks as training

    # ------------------------------------------------------------------ inputs

    def predicting(self, model: UNet) -> Pipeline:
        """How Predict would predict with ``model`` (the starting model's description:
        normalisation, flips, output shift; the user's tile, overlap and FOV)."""
        return Pipeline(self.start, device=self.device, tile=self.options.tile, overlap=self.options.overlap,
                        fov=self.options.fov, model=model)

    def _as_the_model_sees(self):
        """The corrected slices prepared as Predict prepares them (`Pipeline.prepare`;
        fundus: one zoom for them all, so they stack), labels resampled alongside, so the
        model learns what it will be shown."""
        pipeline = self.pipeline
        zoom = None
        if pipeline.is_fundus:
            fovs = self.fov if self.fov is not None else [pipeline.found_fov(image) for image in self.raw]
            zoom = float(np.median([pipeline.fundus_zoom(fov) for fov in fovs]))
        prepared = [pipeline.prepare(image, None if self.fov is None else self.fov[i], zoom=zoom)
                    for i, image in enumerate(self.raw)]
        images = np.stack([p.image for p in prepared])
        self.images_shape = images.shape[1:3]
        return images, self.to_model_grid(self.raw_labels)

    def to_model_grid(self, stack: np.ndarray | None) -> np.ndarray | None:
        """(N, Y, X) labels or masks of the corrected slices on the prepared images' grid
        (nearest neighbour), or None."""
        if stack is None or stack.shape[1:3] == self.images_shape:
            return stack
        from skimage.transform import resize

        return np.stack([resize(m, self.images_shape, order=0, preserve_range=True, anti_aliasing=False)
                         for m in stack]).astype(stack.dtype)

    def _edits(self) -> np.ndarray:
        """(N, Y, X) bool edited pixels of the corrected slices, on their own grid: painted,
        or where the starting model's mask, as Predict shows it, disagrees with the labels."""
        if self.edited is None:
            before = self.checked_masks(self.start.model, [self.threshold])[self.threshold]
            self.edited = (before != (self.raw_labels == STRUCTURE)) & (self.raw_labels != IGNORE)
            if self.painted is not None:
                self.edited |= self.painted
        return self.edited

    def checked_masks(self, model: UNet, thresholds: list[float], slices: list[int] | None = None) -> dict:
        """The masks Predict would show with ``model`` at each threshold, on the corrected
        slices' own grid: {threshold: (N, Y, X) bool}."""
        slices = list(range(len(self.corrected))) if slices is None else slices
        pipeline = self.predicting(model)
        fov = None if self.fov is None else self.fov[slices]
        probability = pipeline.probabilities(self.raw[slices], fov)
        return {t: pipeline.finish(probability, fov, threshold=t)[0].astype(bool) for t in thresholds}

    def _training_data(self, slices: list[int]) -> TrainingData:
        edited = self.to_model_grid(self._edits())
        weights = np.where(edited, self.options.edit_weight, 1.0).astype(np.float32)
        return TrainingData(self.images, self.labels, slices, weights=weights, focus=edited)

    # ------------------------------------------------------------------ validation

    def _scorer(self):
        """The validation given to `train`, and the check of a finished model.

        Returns:
            ``check(model, thresholds, baseline) -> {"score", "guard", "threshold",
            "accepted"}`` on the held-out slice (all corrected slices without one): the
            Dice on the edits grown by a margin, and the guard. A fine-tune changes how
            sure the model is, so the threshold is chosen again (the best accepted one).
        """
        slices = [self.held_out] if self.held_out is not None else self.train_slices
        labels = self.raw_labels[slices]
        labelled = labels != IGNORE
        if self.fov is not None:  # scored where the user sees a prediction
            labelled &= self.fov[slices]
        grown = ndimage.binary_dilation(self._edits()[slices], iterations=self.options.margin, axes=(1, 2))
        region = grown & labelled
        if not region.any():  # a slice checked without a change: score all of it
            region = labelled
        truth = labels == STRUCTURE

        def check(model: UNet, thresholds: list[float], baseline: float = -1.0) -> dict:
            """The best score over ``thresholds`` whose guard is at least ``baseline``."""
            masks = self.checked_masks(model, thresholds, slices)
            scored = sorted(((dice(masks[t], truth, mask=region), t) for t in thresholds), reverse=True)
            for score, threshold in scored:
                guard = self._guard(masks[threshold], truth, labelled)
                if guard >= baseline - GUARD_TOLERANCE:
                    return {"score": score, "guard": guard, "threshold": threshold, "accepted": True}
            score, threshold = scored[0]
            return {"score": score, "guard": guard, "threshold": threshold, "accepted": False}

        return check

    def _guard(self, mask: np.ndarray, truth: np.ndarray, labelled: np.ndarray) -> float:
        """The segmentation a biologist uses: V_Rand of the cells (EM) or clDice (vessels)."""
        if self.task == "em":  # unlabelled pixels are not scored (unless nothing labelled is a cell)
            vrand = em_challenge_scores(mask, truth, thresholds=[0.5], mask=labelled)["vrand"]
            return vrand if np.isfinite(vrand) else em_challenge_scores(mask, truth, thresholds=[0.5])["vrand"]
        return cl_dice(mask, truth, labelled)

    # ------------------------------------------------------------------ run

    def run(self) -> Iterator[TrainEvent]:
        """Train, yielding `TrainEvent`s (``stage`` "select", then "refit"); closing the
        generator stops and keeps the best model so far. `result` is set at the end."""
        tick = time.perf_counter()
        steps = self.config.steps
        check = self._scorer()
        checks: list[dict] = []  # every validation of the selection run, in order
        kept: dict = {}

        def validate(model: UNet, device: torch.device) -> tuple[float, bool]:
            if checks:
                result = check(model, THRESHOLDS, checks[0]["guard"])
            else:  # the starting model, as it predicts today: the one to beat
                result = check(model, [self.threshold])
            if result["accepted"] and (not kept or result["score"] > kept["score"] + 1e-4):
                kept.update(result)  # the same rule as `train` keeps the model by
            checks.append(result)
            return result["score"], result["accepted"]

        model = copy.deepcopy(self.start.model)
        select_meta: dict = {}
        record: dict | None = None  # the history record of the kept model
        report = {"held_out": self.corrected[self.held_out] if self.held_out is not None else None,
                  "guard_name": "V_Rand" if self.task == "em" else "clDice", "best_step": 0,
                  "refit": "skipped", "stopped": True}
        try:
            refit_planned = self.held_out is not None and self.options.refit
            planned = 2 * steps if refit_planned else steps
            select = train(model, self._training_data(self.train_slices), self.config, None, select_meta, validate)
            yield from _relay(select, "select", 0, planned, planned - steps)
            record = select_meta["history"][-1]
            report["best_step"] = record["steps"]
            if refit_planned and report["best_step"] > 0:
                report["refit"] = "stopped"
                refit, refit_meta = copy.deepcopy(self.start.model), {}
                every_slice = list(range(len(self.corrected)))
                events = train(refit, self._training_data(every_slice), self.config, None, refit_meta)
                yield from _relay(events, "refit", steps, steps + report["best_step"], stop_at=report["best_step"])
                # Scored on a slice it learnt from: this only checks that nothing broke.
                refit_check = check(refit, [kept["threshold"]], checks[0]["guard"])
                if refit_check["accepted"]:
                    model, record = refit, refit_meta["history"][-1]
                    report.update(refit="done", guard=refit_check["guard"])
                else:
                    report.update(refit="refused", refit_guard=refit_check["guard"])
            report["stopped"] = False
        finally:
            if record is None:  # stopped while selecting: the best step so far is kept
                record = (select_meta.get("history") or [{}])[-1]
                report["best_step"] = record.get("steps", 0)
            if checks:
                report.update(start_score=checks[0]["score"], best_score=kept["score"], start_guard=checks[0]["guard"],
                              threshold=kept["threshold"])
                report.setdefault("guard", kept["guard"])
            report["seconds"] = round(time.perf_counter() - tick, 1)
            report["validations"] = [[round(c["score"], 4), round(c["guard"], 4)] for c in checks]
            self.result = self._result(model, record, report)

    def slice_dice(self, model: UNet, index: int, threshold: float) -> float:
        """Dice of the mask Predict shows with ``model`` at ``threshold`` on the whole of
        corrected slice ``index`` (labelled pixels inside the FOV): what Evaluate reports."""
        mask = self.checked_masks(model, [threshold], [index])[threshold]
        labels = self.raw_labels[[index]]
        scored = (labels != IGNORE) if self.fov is None else (labels != IGNORE) & self.fov[[index]]
        return dice(mask, labels == STRUCTURE, mask=scored)

    def _result(self, model: UNet, record: dict, report: dict) -> FineTuneResult:
        if self.held_out is not None and "threshold" in report:
            report["held_out_dice"] = round(self.slice_dice(model, self.held_out, report["threshold"]), 4)
        metadata = copy.deepcopy(self.start.metadata)
        in_stack = [self.corrected[i] for i in record.get("train_slices", [])]  # indices into the stack
        held_out = [report["held_out"]] if report["held_out"] is not None else []
        record = dict(record, train_slices=in_stack, val_slices=held_out, data_hash=self.hash,
                      corrected_slices=self.corrected, fine_tune=dict(report))
        metadata.setdefault("history", []).append(record)
        metadata["fine_tuned_from"] = self.start_name
        metadata["threshold"] = float(report.get("threshold", self.threshold))
        # It learnt from the user's slices, whose pixel size is not known here: predicting
        # with it must not resample them to the starting model's.
        metadata.pop("pixel_size_nm", None)
        return FineTuneResult(model.eval(), metadata, report)


#: Thresholds a fine-tuned model may be given (chosen on the held-out corrections).
THRESHOLDS = [round(float(t), 2) for t in np.arange(0.2, 0.81, 0.05)]

#: How much the guard (V_Rand / clDice on the held-out slice) may fall before a model is refused.
GUARD_TOLERANCE = 1e-3


def _relay(events: Iterator[TrainEvent], stage: str, offset: int, total: int, later: int = 0,
           stop_at: int | None = None) -> Iterator[TrainEvent]:
    """Pass on ``train``'s events as one run's: steps shifted by ``offset`` out of ``total``,
    the estimate including ``later`` steps still to come; stops after step ``stop_at``."""
    try:
        for event in events:
            per_step = event.elapsed_s / max(1, event.step)
            end = stop_at if stop_at is not None else event.total
            yield replace(event, step=offset + event.step, total=total, stage=stage,
                          eta_s=(end - event.step + later) * per_step)
            if stop_at is not None and event.step >= stop_at:
                return
    finally:
        events.close()  # the model holds the kept weights of this run


def describe_outcome(report: dict) -> str:
    """One or two sentences on what the fine-tune kept, from `FineTuneResult.report`."""
    if "start_score" not in report:
        return "Stopped before the first check: the starting model is kept."
    where = f"slice {report['held_out']}" if report["held_out"] is not None else "the corrected slice(s)"
    guard = report["guard_name"]
    if report["best_step"] == 0:
        return (f"No step beat the starting model on your edits of {where} without lowering its {guard}, "
                f"so it is kept (correct more slices).")
    text = (f"On your edits of {where}: Dice {report['start_score']:.3f} → {report['best_score']:.3f} "
            f"(step {report['best_step']}, {guard} {report['start_guard']:.3f} → {report['guard']:.3f}, "
            f"threshold {report['threshold']:.2f}).")
    if "held_out_dice" in report:
        text += f" Dice on the whole of {where}: {report['held_out_dice']:.3f}."
    if report["refit"] == "done":
        text += " Then trained on all corrected slices for those steps."
    elif report["refit"] == "refused":
        text += f" Training again on all corrected slices lowered the {guard}, so the checked model is kept."
    return text


def describe_history(history: list[dict]) -> list[str]:
    """One line per fine-tune round of a model's history (`ModelDescription.history`):
    date, the slices learnt, the held-out score before and after, kept or refused."""
    lines = []
    for record in history:
        report = record.get("fine_tune")
        if not report:
            continue
        slices = record.get("corrected_slices", record.get("train_slices", []))
        if "start_score" in report:
            scores = f"Dice on the held-out edits {report['start_score']:.3f} → {report['best_score']:.3f}"
        else:
            scores = "stopped before the first check"
        outcome = "kept" if report.get("best_step", 0) > 0 else "refused (the starting model was kept)"
        lines.append(f"{str(record.get('date', ''))[:10]}: slices {slices}, {scores}, {outcome}")
    return lines
