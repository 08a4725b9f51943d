"""The scale and threshold check of grey slices: with the starting weights unchanged, each
fold chooses a zoom and a threshold on the parts it learns from, and is scored on its
held-out part, whole, as Predict shows it; verified on every fold, the setting best on
all corrected parts becomes the baseline the training must beat."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..labels import STRUCTURE
from ..metrics import dice
from ..train import TrainEvent
from .options import Calibration, FineTuneReport
from .rules import MIN_GAIN, Fold, centre_window, decide

if TYPE_CHECKING:
    from .run import FineTune

#: Thresholds a fine-tuned model of grey slices may be given (docs/decisions/finetune-thresholds.md).
THRESHOLDS = [round(float(t), 2) for t in np.arange(0.2, 0.81, 0.05)]

#: Zooms the scale check tries on grey slices, 2**(k/3) from 0.5 to 1.6 (docs/decisions/finetune-zooms.md).
ZOOMS = [round(2 ** (k / 3), 2) for k in range(-3, 3)]

#: Edge (slice pixels) of the window the scale check chooses on, per part (docs/decisions/finetune-zooms.md).
SEARCH_EDGE = 512


def search_regions(run: FineTune, fold: Fold) -> list[tuple[int, np.ndarray, tuple[slice, slice]]]:
    """(part, (Y, X) bool labelled region, (Y, X) window) of each part ``fold`` learns
    from, where the scale check scores the starting weights: on a stack's slices with
    zooms to try, a window of at most `SEARCH_EDGE`² at the centre of what it learns;
    else the whole part."""
    out = []
    for i in fold.learn:
        region = run.parts.region(i, fold.half)
        out.append((i, region, centre_window(region, SEARCH_EDGE) if run.zooms else (slice(None), slice(None))))
    return out


class ScaleSearch:
    """The scale and threshold check of one fine-tune (``run``, whose zoom, threshold,
    pipeline and prepared slices it changes when verified)."""

    def __init__(self, run: FineTune) -> None:
        self.run = run
        self._windows: dict = {}  # (zoom, part, half) -> search window's probability

    def search_data(self, fold: Fold, zoom: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(probability, truth, scored region) of each part ``fold`` learns from, for the
        starting weights at ``zoom`` (see `search_regions`): a window predicted alone, or
        the whole part as Predict made it."""
        run, data = self.run, []
        for i, region, window in search_regions(run, fold):
            if run.zooms:
                key = (zoom, i, fold.half)
                if key not in self._windows:
                    # One tile covering the resampled window and its mirrored margin: at
                    # zoom 1.6, 0.8 million pixels where overlapping tiles take 1.3.
                    edge = math.ceil(max(s.stop - s.start for s in window) * zoom)
                    margin = run.start.info.tile_margin
                    tile = edge + 2 * margin if margin is not None else math.ceil(edge * 4 / 3)  # tile // 8 each side
                    pipeline = run.predicting(run.start.model, zoom, tile=max(tile, run.pipeline.tile))
                    self._windows[key] = pipeline.probabilities(run.parts.raw[i][window][None])[0]
                probability = self._windows[key]
            else:
                probability = run.scorer.start_probability([i], zoom)[0]
            data.append((probability, run.parts.raw_labels[i][window] == STRUCTURE, region[window]))
        return data

    def search_scores(self, data: list, threshold: float, guard: bool = True) -> tuple[float, float | None]:
        """Mean (Dice, guard) over `search_data` at ``threshold`` (guard None when not asked for)."""
        masks = [probability > threshold for probability, _, _ in data]
        dices = [dice(m, truth, mask=region) for m, (_, truth, region) in zip(masks, data)]
        if not guard:
            return float(np.mean(dices)), None
        guards = [self.run.scorer.guard(m, truth, region) for m, (_, truth, region) in zip(masks, data)]
        return float(np.mean(dices)), float(np.mean(guards))

    def choose_setting(self, fold: Fold, candidates: list | None = None) -> tuple[float, float]:
        """The (zoom, threshold) the starting weights do best at on the parts ``fold``
        learns from: of the settings with Dice up and the guard (cells, vessels) not down
        there, the one with the best Dice + guard, if that sum beats the one in use by
        `MIN_GAIN`; else the one in use. ``candidates``: the settings to try (default
        every zoom of ``run.zooms`` with every threshold of `THRESHOLDS`; without zooms,
        the one in use). Dice and guard count alike (docs/decisions/finetune-zooms.md)."""
        run = self.run
        in_use = self.search_scores(self.search_data(fold, run.zoom), run.threshold)
        best = (sum(in_use) + MIN_GAIN, run.zoom, run.threshold)
        settings = candidates or [(zoom, t) for zoom in run.zooms or [run.zoom] for t in THRESHOLDS]
        for zoom, threshold in settings:
            data = self.search_data(fold, zoom)
            score = self.search_scores(data, threshold, guard=False)[0]
            if score <= in_use[0] or score + 1.0 <= best[0]:  # the guard is at most 1: no need to measure it
                continue
            guard = self.search_scores(data, threshold)[1]
            if guard >= in_use[1] and score + guard > best[0]:
                best = (score + guard, zoom, threshold)
        return best[1], best[2]

    def recalibrate(self, report: FineTuneReport):
        """Stage 1 (a generator of events): each fold chooses a zoom and threshold on the
        parts it learns from and is scored on its held-out part, whole, as Predict makes
        it; `decide` keeps them when every fold gains (the guard not down at all). Then
        the fold setting best on every corrected part becomes the baseline the training
        must beat. Sets ``report.calibration``; returns whether the setting changed."""
        run = self.run
        scorer = run.scorer
        yield TrainEvent(0, run.config.steps * (len(run.folds) + 1), None, stage="scale")
        start, after, chosen = [], [], []
        for fold in run.folds:
            zoom, threshold = self.choose_setting(fold)
            if (zoom, threshold) == (run.zoom, run.threshold):
                break  # this fold sees no better setting: the rule needs every fold better
            start.append(scorer.score(scorer.start_probability(fold.scored, run.zoom), fold, run.threshold))
            after.append(scorer.score(scorer.start_probability(fold.scored, zoom), fold, threshold))
            chosen.append((zoom, threshold))
        outcome = decide(start, after, tolerance=0.0) if len(after) == len(run.folds) else "no gain"
        folds = [run.fold_score(f, b, a, setting=c) for f, c, b, a in zip(run.folds, chosen, start, after)]
        report.calibration = calibration = Calibration(outcome, run.zoom, run.zoom, run.threshold, folds)
        if outcome != "gain":
            return False
        # Shipped: of the settings the folds verified, the best on every corrected part.
        zoom, threshold = self.choose_setting(Fold(list(range(len(run.parts))), []), list(dict.fromkeys(chosen)))
        if (zoom, threshold) == (run.zoom, run.threshold):  # every fold moved, all parts together do not
            calibration.outcome = "small"
            return False
        calibration.zoom, calibration.threshold = zoom, threshold
        run.use_setting(zoom, threshold)
        return True

