"""The fine-tune's orchestrator: check the inputs, then scale check, cross-validation,
the final training and the model's history, in the order of the recipe (`core.finetune`)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np

from ..checkpoint import Checkpoint
from ..data import data_hash
from ..labels import STRUCTURE
from ..model import UNet
from ..pipeline import Pipeline
from ..predict import resolve_device
from ..train import TrainEvent, fine_tune_recipe, train
from .blend import move_toward
from .calibrate import THRESHOLDS, ZOOMS, ScaleSearch
from .checks import check_inputs, check_labels
from .options import FineTuneOptions, FineTuneReport, FineTuneResult, FoldScore
from .parts import CorrectedParts
from .rules import Fold, anchor_slices, better_threshold, decide, make_folds
from .scores import Scorer


class FineTune:
    """One fine-tune run; iterate `run()` for progress, then read `result`.

    Every prediction is made as Predict makes it with ``options.predict``. When that
    gives a pixel size the starting model knows its own for, the slices are resampled
    to the model's pixel size as Predict resamples them, and the zoom search is skipped
    (the user's pixel size sets the scale; the threshold is still checked); the model
    kept then stays one of its pixel size. Without one, the zooms of `ZOOMS` are
    searched around the model's own (``input_zoom``).

    Args:
        checkpoint: the starting model (left unchanged).
        images: (Z, Y, X, C) raw stack (only the corrected and anchor slices are read, so
            a lazy array, dask or zarr, of a volume larger than memory will do).
        labels: (Z, Y, X) uint8 in the project convention (IGNORE = not learnt); any
            array indexable by a list of slices.
        corrected: indices of the corrected slices, in the order they were corrected.
        edited: optional (Z, Y, X) bool, the pixels the user painted (indexable the same way).
        options: see `FineTuneOptions`.
        start_name: how the starting model is called in the new model's history.
        fov: fundus: (Z, Y, X) bool field of view the user gave (indexable the same
            way), or None (``options.predict.fov``: found in each photograph, or none).
        part_names: names some corrected parts (a list of ``corrected``'s entries) for the
            user, e.g. a montage's chunks (`core.regions.describe_chunks`); default
            "slice 7", "slices 3, 9".
        predict_parts: ``(pipeline, parts) -> (n, Y, X)`` probabilities of some corrected
            parts as Predict made them (see `scores.Scorer`).
        part_levels: per corrected part, the (low, high) intensities Predict normalised it
            on (a montage's windows, each on its slice's levels); None: ``options.predict``'s.

    Raises:
        ValueError: with a message for the user (no corrected slice, labels that cannot
            teach or be scored, shapes), before any training.
    """

    def __init__(self, checkpoint: Checkpoint, images: np.ndarray, labels: np.ndarray, corrected: list[int],
                 edited: np.ndarray | None = None, options: FineTuneOptions | None = None,
                 start_name: str | None = None, fov: np.ndarray | None = None, part_names=None,
                 predict_parts=None, part_levels: list | None = None) -> None:
        self.options = options = options or FineTuneOptions()
        self.corrected = list(dict.fromkeys(int(z) for z in corrected))
        check_inputs(checkpoint, images, labels, self.corrected, edited, options)
        self.start, self.start_name, self.part_names = checkpoint, start_name or checkpoint.source, part_names
        self.device, self.task = resolve_device(options.device), checkpoint.task
        self.threshold = checkpoint.info.threshold
        self.zoom = checkpoint.info.input_zoom or 1.0  # changed only by a verified scale check
        # Border weights keep thin membranes whole (docs/decisions/finetune-border-weights.md).
        recipe = {"border_weights": self.task == "em", **options.recipe}
        self.config = fine_tune_recipe(options.steps, device=str(self.device), seed=options.seed,
                                       focus_fraction=options.focus_fraction, **recipe)
        self.pipeline = self.predicting(checkpoint.model)  # checks the inputs as Predict does
        # The pixel size Predict resamples by (it ignores a zoom then), or None.
        self.pixel_size = self.pipeline.pixel_size if checkpoint.info.pixel_size_nm is not None else None
        # Anchors: a few uncorrected slices of a stack (a montage's parts are not slices).
        anchored = anchor_slices(images.shape[0], self.corrected, options.anchors) if predict_parts is None else []
        self.parts = CorrectedParts(images, labels, self.corrected, edited, fov, self.pipeline, anchored, part_levels)
        self.hash = data_hash(self.parts.raw, self.parts.raw_labels)
        self.scorer = Scorer(self.parts, self.task, checkpoint.model, self.predicting, self.pipeline.finish,
                             predict_parts)
        # Scale and threshold move on grey slices only (docs/decisions/finetune-thresholds.md);
        # zooms on a stack's slices given no pixel size (a montage's blocks are not resampled).
        self.recalibrates = not self.pipeline.uses_fov
        searched = self.recalibrates and predict_parts is None and self.pixel_size is None
        self.zooms = [round(self.zoom * z, 3) for z in ZOOMS] if searched else []
        self.search = ScaleSearch(self)
        self.result: FineTuneResult | None = None
        # A fold whose part to learn holds no structure (e.g. the half of a slice with no
        # membrane) cannot train: it is left out. One always remains when the labels hold
        # structure anywhere (it is learnt by a fold that holds out some other part).
        folds = make_folds(len(self.corrected)) if options.verify else []
        self.folds = [f for f in folds if np.any(self.parts.learnt_labels(f)[f.learn] == STRUCTURE)]
        check_labels(self)

    @property
    def anchored(self) -> list[int]:
        """Stack indices of the uncorrected slices learnt as anchors (before any is dropped)."""
        return self.parts.anchored

    def predicting(self, model: UNet, zoom: float | None = None, tile: int | None = None) -> Pipeline:
        """How Predict would predict with ``model`` (the starting model's description, the
        user's `PredictSettings`), at ``zoom`` (default the one in use; ignored given a
        pixel size, see the class) and the threshold in use; ``tile`` overrides the tile edge."""
        predict = self.options.predict
        settings = predict.but(device=str(self.device), threshold=self.threshold, instances=False,
                               tile=tile or predict.tile)
        return Pipeline(self.start, settings, model=model, zoom=self.zoom if zoom is None else zoom)

    def use_setting(self, zoom: float, threshold: float) -> None:
        """Take a verified zoom and threshold as the baseline: predict and prepare the slices at them."""
        self.zoom, self.threshold = zoom, threshold
        self.pipeline = self.predicting(self.start.model)
        self.parts.prepare(self.pipeline)

    def fold_name(self, fold: Fold) -> str:
        """How the user reads a fold's held-out part: "slice 7", "slices 3, 9", "the left half of slice 2"."""
        what = self.parts.name(fold.scored, self.part_names)
        return what if fold.half is None else self.parts.half_name(1 - fold.half, what)

    def fold_score(self, fold: Fold, start: tuple, after: tuple, setting: tuple | None = None) -> FoldScore:
        """The report's record of a fold: its held-out (Dice, guard) before and after."""
        held_out = [self.corrected[i] for i in fold.scored]
        scores = (round(float(v), 4) for v in (*start, *after))
        return FoldScore(self.fold_name(fold), held_out, *scores, *(setting or (None, None)))

    def _edits(self) -> np.ndarray:
        """(N, Y, X) bool: painted, or where the starting model's mask, as Predict shows it, disagrees."""
        every = list(range(len(self.corrected)))
        return self.parts.edits(self.scorer.shown(self.scorer.start_probability(every, self.zoom), every,
                                                  self.threshold))

    def run(self) -> Iterator[TrainEvent]:
        """Scale check, cross-validation, then (when kept) training on every corrected
        slice, yielding `TrainEvent`s (``stage`` "scale", "fold k/K", then "all slices";
        the event that ends a fold carries its held-out Dice). Closing the generator
        stops; the starting model is then kept. `result` is set at the end."""
        tick = time.perf_counter()
        steps, threshold, zoom = self.config.steps, self.threshold, self.zoom
        total = steps * (len(self.folds) + 1)
        report = FineTuneReport(part="slice" if self.part_names is None else "region", zoom=zoom, start_zoom=zoom,
                                threshold=threshold, start_threshold=threshold, pixel_size=self.pixel_size,
                                guard_name="V_Rand" if self.task == "em" else "clDice",
                                update_share=self.options.update_share)
        model, record = self.start.model, None
        try:
            edits = self._edits()
            if not edits.any():
                report.outcome, report.stopped = "agree", False
                return
            calibrated = False
            if self.folds and self.recalibrates:
                calibrated = yield from self.search.recalibrate(report)
            if self.anchored:
                report.anchors = self.parts.prepare_anchors(self.predicting(self.start.model), self.threshold)
            outcome = (yield from self._cross_validate(edits, report, total)) if self.folds else "unverified"
            report.outcome, report.threshold = outcome, self.threshold
            if outcome in ("gain", "unverified"):
                final, meta = copy.deepcopy(self.start.model), {}
                data = self.parts.training_data(None, edits, self.options.edit_weight)
                yield from _relay(train(final, data, self.config, None, meta), "all slices", total - steps, total)
                move_toward(self.start.model, final, self.options.update_share)
                model, record = final, meta["history"][-1]
                report.trained, report.steps = True, record["steps"]
            report.kept, report.zoom, report.stopped = report.trained or calibrated, self.zoom, False
        finally:
            if report.stopped:  # nothing verified and finished: the starting model stays
                model, record = self.start.model, None
                report = replace(report, kept=False, trained=False, steps=0, threshold=threshold, zoom=zoom,
                                 outcome="stopped")
            report.seconds = round(time.perf_counter() - tick, 1)
            self.result = _result(self, model, record, report)

    def _cross_validate(self, edits: np.ndarray, report: FineTuneReport, total: int):
        """Train and score one model per fold (a generator of events); sets the report's
        folds and gains; returns `decide`'s outcome (and takes the threshold it verified)."""
        steps, threshold, scorer = self.config.steps, self.threshold, self.scorer
        start, tuned, dices = [], [], []  # per fold: the baseline's scores; the tuned one's probability, Dice
        for k, fold in enumerate(self.folds):
            stage = f"fold {k + 1}/{len(self.folds)}"
            model = copy.deepcopy(self.start.model)
            data = self.parts.training_data(fold, edits, self.options.edit_weight)
            yield from _relay(train(model, data, self.config), stage, k * steps, total)
            move_toward(self.start.model, model, self.options.update_share)
            tuned.append(scorer.probabilities(model, fold.scored))
            start.append(scorer.score(scorer.start_probability(fold.scored, self.zoom), fold, threshold))
            dices.append({t: scorer.score(tuned[-1], fold, t, guard=False)[0] for t in {*THRESHOLDS, threshold}})
            hopeless = max(dices[-1].values()) <= start[-1][0]  # no threshold makes it better here
            yield TrainEvent((k + 1) * steps, total, None, val_dice=dices[-1][threshold], best_dice=start[-1][0],
                             refused=hopeless, stage=stage)
            if hopeless:  # the rule needs every fold better: no need to train the others
                break
        # On grey slices, a threshold the folds agree on is tried first; if the cells do
        # not hold at it, the model's own threshold is tried.
        agreed = self.recalibrates and len(tuned) == len(self.folds)
        for shipped in dict.fromkeys([better_threshold(dices, threshold) if agreed else threshold, threshold]):
            after = [scorer.score(p, f, shipped) for p, f in zip(tuned, self.folds)]
            outcome = decide(start, after)
            if outcome == "gain":
                self.threshold = shipped  # the one the folds verified, shipped with the final model
                break
        report.folds = [self.fold_score(f, s, a) for f, s, a in zip(self.folds, start, after)]
        gains = np.mean(np.asarray(after) - np.asarray(start), axis=0)
        report.dice_gain, report.guard_gain = round(float(gains[0]), 4), round(float(gains[1]), 4)
        return outcome


def _result(run: FineTune, model: UNet, record: dict | None, report: FineTuneReport) -> FineTuneResult:
    """The model to ship, and the starting model's metadata with this round in its history."""
    metadata = copy.deepcopy(run.start.metadata)
    if record is None:  # refused or stopped: the round is still recorded, with why
        record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "train_slices": [], "steps": 0}
    # Indices into the stack; the anchors (learnt after the corrected slices) are in the report.
    in_stack = [run.corrected[i] for i in record.get("train_slices", []) if i < len(run.corrected)]
    record = dict(record, train_slices=in_stack, val_slices=[], data_hash=run.hash,
                  corrected_slices=run.corrected, fine_tune=report.to_dict())
    if run.part_names is not None:  # e.g. a montage's chunks, not slices of a stack
        record["corrected_parts"] = run.part_names(run.corrected)
    metadata.setdefault("history", []).append(record)
    if report.kept:
        metadata["fine_tuned_from"] = run.start_name
        metadata["threshold"] = float(report.threshold)
        if report.pixel_size is None:
            # It learnt the user's slices as they are, whose pixel size is not known: predicting
            # with it must not resample them to the starting model's, only by the zoom it was
            # verified at. (Given a pixel size, it learnt them at the model's: it keeps its own.)
            metadata.pop("pixel_size_nm", None)
            metadata.pop("input_zoom", None)
            if report.zoom != 1.0:
                metadata["input_zoom"] = float(report.zoom)
    model = model if report.trained else copy.deepcopy(run.start.model)
    return FineTuneResult(model.eval(), metadata, report)


def _relay(events: Iterator[TrainEvent], stage: str, offset: int, total: int) -> Iterator[TrainEvent]:
    """Pass on ``train``'s events as one run's: steps shifted by ``offset`` out of ``total``,
    the estimate including the steps of the later stages."""
    try:
        for event in events:
            per_step = event.elapsed_s / max(1, event.step)
            yield replace(event, step=offset + event.step, total=total, stage=stage,
                          eta_s=(total - offset - event.step) * per_step)
    finally:
        events.close()
