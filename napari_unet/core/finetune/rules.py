"""The fine-tune's decision rules: pure functions of indices and scores, no model.

Which parts each fold learns and scores (`make_folds`, `half_mask`), which uncorrected
slices anchor the model (`anchor_slices`), where the scale check looks
(`centre_window`), whether a fold can be scored for the cells (`has_cell`), and the
two decisions: keep the fine-tune (`decide`) and move the threshold (`better_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cell_scores import cell_labels, thin_borders

#: The least mean gain that counts (docs/decisions/finetune-decision.md).
MIN_GAIN = 0.005

#: How much the cells (V_Rand) or vessels (clDice) may fall on one held-out part (docs/decisions/finetune-decision.md).
TOLERANCE = 0.005

#: At most this many folds, each training a model; corrected slices are grouped beyond it.
MAX_FOLDS = 3

#: Uncorrected slices learnt with the starting model's own mask (docs/decisions/finetune-anchors.md).
ANCHORS = 8


@dataclass
class Fold:
    """One cross-validation fold: the corrected slices (indices into ``corrected``) its
    model learns from and is scored on. With one corrected slice, ``half`` (0 or 1) is the
    half of it learnt (along its longer side); the other half is scored."""

    learn: list[int]
    scored: list[int]
    half: int | None = None


def make_folds(count: int, max_folds: int = MAX_FOLDS) -> list[Fold]:
    """Folds over ``count`` corrected slices: each held out in turn (grouped round-robin
    beyond ``max_folds``); one slice: its two halves."""
    if count == 1:
        return [Fold([0], [0], 0), Fold([0], [0], 1)]
    folds = min(count, max_folds)
    groups = [[i for i in range(count) if i % folds == g] for g in range(folds)]
    return [Fold([i for i in range(count) if i not in group], group) for group in groups]


def anchor_slices(slices: int, corrected: list[int], count: int = ANCHORS) -> list[int]:
    """The anchors of a stack of ``slices``: at most ``count`` uncorrected slices, evenly
    spread (the first and last uncorrected ones included)."""
    uncorrected = [z for z in range(slices) if z not in corrected]
    if count <= 0 or len(uncorrected) <= count:
        return uncorrected[:max(count, 0)]
    return [uncorrected[round(k)] for k in np.linspace(0, len(uncorrected) - 1, count)]


def half_mask(shape: tuple[int, int], half: int) -> np.ndarray:
    """(Y, X) bool: the first (0) or second (1) half of a slice, cut across its longer side."""
    mask = np.zeros(shape, bool)
    axis = int(shape[1] > shape[0])
    part = [slice(None), slice(None)]
    part[axis] = slice(None, shape[axis] // 2) if half == 0 else slice(shape[axis] // 2, None)
    mask[tuple(part)] = True
    return mask


def centre_window(region: np.ndarray, edge: int) -> tuple[slice, slice]:
    """The (Y, X) slices of a window of at most ``edge`` x ``edge`` at the centre of the
    bounding box of ``region`` ((Y, X) bool; the whole array when it is empty)."""
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    if not len(rows):
        return slice(None), slice(None)
    window = []
    for first, last in ((rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)):
        start = max(first, (first + last) // 2 - edge // 2)
        window.append(slice(int(start), int(min(last, start + edge))))
    return tuple(window)


def has_cell(truth: np.ndarray, region: np.ndarray) -> bool:
    """Whether V_Rand can score ``region``: some of its pixels lie inside a cell of the
    labels, once their borders are thinned as the challenge's scoring thins them
    (`core.cell_scores.em_challenge_scores`).

    Args:
        truth: (n, Y, X) bool, True = membrane (unlabelled pixels False: read as inside
            a cell, as the scoring reads them).
        region: (n, Y, X) bool, the pixels scored.
    """
    return any((thin_borders(cell_labels(t)) > 0)[r].any() for t, r in zip(truth, region) if r.any())


def better_threshold(dices: list[dict[float, float]], threshold: float) -> float:
    """The threshold to ship: the one with the best mean held-out Dice over the folds
    (``dices[k][t]``), but only if it beats ``threshold`` by `MIN_GAIN` in every fold (a
    threshold picked on one slice is noise); else ``threshold``."""
    best = max(dices[0], key=lambda t: (np.mean([d[t] for d in dices]), t == threshold))
    if all(d[best] - d[threshold] >= MIN_GAIN for d in dices):
        return best
    return threshold


def decide(start: list[tuple[float, float]], tuned: list[tuple[float, float]], tolerance: float = TOLERANCE) -> str:
    """Whether the fine-tune is kept, from the held-out (Dice, guard) of the starting and
    the fine-tuned model in each fold: "gain" (keep it), or why not: "no gain" (Dice not
    up in some fold), "guard" (the cells or vessels fell by more than ``tolerance`` in
    some fold), "small" (the mean gain is under `MIN_GAIN`)."""
    gains = np.asarray(tuned, float) - np.asarray(start, float)  # (folds, [Dice, guard])
    if (gains[:, 0] <= 0).any():
        return "no gain"
    if (gains[:, 1] < -tolerance).any():
        return "guard"
    if gains.mean(axis=0).max() < MIN_GAIN:
        return "small"
    return "gain"
