"""The masks a fine-tune weighs, made as Predict shows them, and scored as Evaluate scores them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..cell_scores import em_challenge_scores
from ..metrics import cl_dice, dice
from ..model import UNet
from ..pipeline import Pipeline
from .parts import CorrectedParts
from .rules import Fold


class Scorer:
    """The corrected parts as Predict shows them, and their scores.

    Args:
        parts: the corrected parts.
        task: "em" (guard: V_Rand of the cells) or "fundus" (clDice of the vessels).
        start: the starting weights, whose probabilities are computed once per zoom.
        predicting: ``(model, zoom) -> Pipeline``, how Predict predicts (`FineTune.predicting`).
        finish: `Pipeline.finish` of a pipeline of the fine-tune (FOV zeroing and threshold
            do not depend on the zoom).
        predict_parts: ``(pipeline, parts) -> (n, Y, X)`` probabilities of some corrected
            parts as Predict made them, when that is not `Pipeline.probabilities` of the
            part alone (e.g. windows of a montage on the whole slice's tile grid).
    """

    def __init__(self, parts: CorrectedParts, task: str, start: UNet, predicting: Callable[..., Pipeline],
                 finish: Callable, predict_parts=None) -> None:
        self.parts, self.task, self.start = parts, task, start
        self.predicting, self.finish, self.predict_parts = predicting, finish, predict_parts
        self._whole: dict = {}  # (zoom, part) -> whole part's probability, as Predict makes it

    def probabilities(self, model: UNet, parts: list[int], zoom: float | None = None) -> np.ndarray:
        """(n, Y, X) float32: ``model``'s probability on some corrected parts (indices into
        ``corrected``), as Predict computes it (or as ``predict_parts`` does), at ``zoom``
        (default the one in use)."""
        if self.predict_parts is not None:
            return self.predict_parts(self.predicting(model), parts)
        fov = None if self.parts.fov is None else self.parts.fov[parts]
        return self.predicting(model, zoom).probabilities(self.parts.raw[parts], fov)

    def start_probability(self, parts: list[int], zoom: float) -> np.ndarray:
        """(n, Y, X) float32: the starting weights' probability on some corrected parts, as
        Predict computes it at ``zoom``; each part computed once (the edits, every fold's
        baseline and the scale check use them)."""
        missing = [i for i in parts if (zoom, i) not in self._whole]
        if missing:
            for i, probability in zip(missing, self.probabilities(self.start, missing, zoom)):
                self._whole[zoom, i] = probability
        return np.stack([self._whole[zoom, i] for i in parts])

    def shown(self, probability: np.ndarray, parts: list[int], threshold: float) -> np.ndarray:
        """(n, Y, X) bool: the mask Predict shows for ``probability`` of some corrected parts."""
        fov = None if self.parts.fov is None else self.parts.fov[parts]
        return self.finish(probability, fov, threshold=threshold)[0].astype(bool)

    def score(self, probability: np.ndarray, fold: Fold, threshold: float, guard: bool = True):
        """(Dice, guard) of the mask Predict shows at ``threshold`` for the (n, Y, X)
        ``probability`` of the fold's held-out part (see `scores`)."""
        return self.scores(self.shown(probability, fold.scored, threshold), fold, guard)

    def scores(self, mask: np.ndarray, fold: Fold, guard: bool = True) -> tuple[float, float | None]:
        """(Dice, guard) of a (n, Y, X) mask of the fold's held-out part, as Evaluate
        scores it (guard None when not asked for: V_Rand takes a second on a large slice)."""
        region = self.parts.scored_region(fold)
        truth = self.parts.truth(fold.scored)
        return dice(mask, truth, mask=region), self.guard(mask, truth, region) if guard else None

    def guard(self, mask: np.ndarray, truth: np.ndarray, labelled: np.ndarray) -> float:
        """The segmentation a biologist uses: V_Rand of the cells (EM) or clDice (vessels),
        of a mask against the truth on the ``labelled`` pixels (all (n, Y, X) bool)."""
        if self.task == "em":  # unlabelled pixels are not scored (unless nothing labelled is a cell)
            vrand = em_challenge_scores(mask, truth, thresholds=[0.5], mask=labelled)["vrand"]
            return vrand if np.isfinite(vrand) else em_challenge_scores(mask, truth, thresholds=[0.5])["vrand"]
        return cl_dice(mask, truth, labelled)
