"""Tests of the scores (napari_unet.core.metrics, .cell_scores, .evaluate): hand-computed cases,
brute-force cross-checks, real data.

No Qt. The real-data tests read ``../shared/data`` next to the repository and are
skipped (with the reason) when it is absent, as in a user checkout.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.core import metrics
from napari_unet.core.cell_scores import cell_labels, em_challenge_scores, segmentation_scores, thin_borders
from napari_unet.core.evaluate import evaluate, evaluate_per_slice

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ISBI_LABELS = DATA_ROOT / "isbi2012" / "train-labels.tif"
DRIVE_TEST = DATA_ROOT / "drive" / "test"


# --------------------------------------------------------------------------------------
# Pixel metrics
# --------------------------------------------------------------------------------------

# pred  = 1 1 0      truth = 1 0 0
#         0 1 0              1 1 0
# pixel by pixel: (0,0) TP, (0,1) FP, (0,2) TN, (1,0) FN, (1,1) TP, (1,2) TN
PRED = np.array([[1, 1, 0], [0, 1, 0]], dtype=np.uint8)
TRUTH = np.array([[1, 0, 0], [1, 1, 0]], dtype=np.uint8)


def test_confusion_counts_by_hand():
    assert metrics.confusion_counts(PRED, TRUTH) == (2, 1, 2, 1)  # tp, fp, tn, fn
    # Nonzero means structure whatever the dtype or value.
    assert metrics.confusion_counts(PRED * 255, TRUTH.astype(bool)) == (2, 1, 2, 1)


def test_confusion_counts_with_mask():
    # Mask out the FP (0,1) and the FN (1,0): tp=2, fp=0, tn=2, fn=0.
    mask = np.array([[1, 0, 1], [0, 1, 1]], dtype=bool)
    assert metrics.confusion_counts(PRED, TRUTH, mask) == (2, 0, 2, 0)
    assert metrics.dice(PRED, TRUTH, mask) == 1.0
    assert metrics.pixel_accuracy(PRED, TRUTH, mask) == 1.0


def test_dice_iou_accuracy_by_hand():
    # dice = 2*2 / (2*2 + 1 + 1) = 4/6; iou = 2 / (2 + 1 + 1) = 1/2; acc = (2 + 2) / 6.
    assert metrics.dice(PRED, TRUTH) == pytest.approx(2 / 3)
    assert metrics.iou(PRED, TRUTH) == pytest.approx(0.5)
    assert metrics.pixel_accuracy(PRED, TRUTH) == pytest.approx(4 / 6)


def test_pixel_metrics_any_ndim_and_empty():
    stack_p = np.stack([PRED, PRED])
    stack_t = np.stack([TRUTH, TRUTH])
    assert metrics.confusion_counts(stack_p, stack_t) == (4, 2, 4, 2)
    assert metrics.dice(stack_p, stack_t) == pytest.approx(2 / 3)
    empty = np.zeros((4, 5), dtype=bool)
    assert metrics.dice(empty, empty) == 1.0  # nothing to find, nothing found
    assert metrics.iou(empty, empty) == 1.0
    assert metrics.pixel_accuracy(empty, empty) == 1.0
    assert metrics.dice(empty, ~empty) == 0.0


def test_pixel_metrics_reject_shape_mismatch():
    with pytest.raises(ValueError, match=r"The prediction and the ground truth differ in shape \(\(2, 3\) and \(2, 2"):
        metrics.confusion_counts(PRED, TRUTH[:, :2])
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.dice(PRED, TRUTH.T)
    with pytest.raises(ValueError, match=r"The shape of the mask of scored pixels, \(3, 3\), is not the images'"):
        metrics.confusion_counts(PRED, TRUTH, mask=np.ones((3, 3), bool))


# --------------------------------------------------------------------------------------
# ROC AUC
# --------------------------------------------------------------------------------------


def _brute_force_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Count every (positive, negative) pair: win = 1, tie = 1/2."""
    pos = scores[labels][:, None]
    neg = scores[~labels][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def test_roc_auc_by_hand_with_ties():
    # positives 0.4 and 0.8, negatives 0.1 and 0.4; the 4 pairs:
    # 0.4>0.1 -> 1, 0.4=0.4 -> 1/2, 0.8>0.1 -> 1, 0.8>0.4 -> 1; AUC = 3.5 / 4 = 0.875.
    scores = np.array([0.1, 0.4, 0.4, 0.8])
    truth = np.array([0, 1, 0, 1])
    assert metrics.roc_auc(scores, truth) == pytest.approx(0.875)
    # The same as a 2D image, and the mask drops the tied negative -> 3 / 3 pairs won.
    assert metrics.roc_auc(scores.reshape(2, 2), truth.reshape(2, 2)) == pytest.approx(0.875)
    assert metrics.roc_auc(scores, truth, mask=np.array([1, 1, 0, 1], bool)) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    # Few distinct values so that many ties occur; a mask drops a third of the pixels.
    scores = rng.integers(0, 7, size=(30, 40)) / 6.0
    labels = rng.random((30, 40)) < 0.2 + 0.1 * scores
    mask = rng.random((30, 40)) < 0.66
    expected = _brute_force_auc(scores[mask], labels[mask])
    assert metrics.roc_auc(scores, labels, mask) == pytest.approx(expected, abs=1e-12)
    # Continuous scores (no ties), float32 input.
    cont = rng.random((30, 40)).astype(np.float32)
    assert metrics.roc_auc(cont, labels) == pytest.approx(_brute_force_auc(cont.ravel(), labels.ravel()), abs=1e-12)


def test_roc_auc_needs_both_classes():
    with pytest.raises(ValueError, match="both structure and background pixels"):
        metrics.roc_auc(np.array([0.2, 0.7]), np.array([1, 1]))
    with pytest.raises(ValueError, match="0 structure and 1 background pixel"):
        metrics.roc_auc(np.array([0.2, 0.7]), np.array([0, 1]), mask=np.array([True, False]))


def test_roc_auc_five_million_pixels_is_fast_and_exact():
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    labels = rng.random(5_000_000) < 0.13
    scores = np.clip(rng.normal(0.3 + 0.3 * labels, 0.2), 0, 1).astype(np.float32)
    start = time.perf_counter()
    auc = metrics.roc_auc(scores, labels)
    elapsed = time.perf_counter() - start
    # Mann-Whitney with average ranks (scipy) as the independent reference.
    ranks = rankdata(scores)
    n_pos = labels.sum()
    n_neg = labels.size - n_pos
    expected = (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    assert auc == pytest.approx(expected, abs=1e-9)
    assert elapsed < 10.0, f"roc_auc took {elapsed:.1f} s on 5e6 pixels"


# --------------------------------------------------------------------------------------
# Fundus scores
# --------------------------------------------------------------------------------------

# prob  = 0.9 0.7 0.2    truth = 1 0 0    fov = 1 0 1
#         0.6 0.3 0.1            1 1 0          1 1 1
FUNDUS_PROB = np.array([[0.9, 0.7, 0.2], [0.6, 0.3, 0.1]])
FUNDUS_TRUTH = np.array([[1, 0, 0], [1, 1, 0]], dtype=np.uint8)
FUNDUS_FOV = np.array([[1, 0, 1], [1, 1, 1]], dtype=bool)


def test_fundus_scores_inside_fov_by_hand():
    # At 0.5 inside the FOV: TP (0,0),(1,0); FN (1,1); TN (0,2),(1,2); the FP (0,1) is
    # outside. se = 2/3, sp = 2/2, acc = 4/5, f1 = 4 / (4 + 0 + 1) = 0.8.
    # AUC: positives {0.9, 0.6, 0.3} all above negatives {0.2, 0.1} -> 1.
    s = metrics.fundus_scores(FUNDUS_PROB, FUNDUS_TRUTH, FUNDUS_FOV)
    assert s["se"] == pytest.approx(2 / 3)
    assert s["sp"] == pytest.approx(1.0)
    assert s["acc"] == pytest.approx(0.8)
    assert s["f1"] == pytest.approx(0.8)
    assert s["auc"] == pytest.approx(1.0)


def test_fundus_scores_without_fov_by_hand():
    # The 0.7 background pixel is now a FP: sp = 2/3, acc = 4/6, f1 = 4 / (4 + 1 + 1).
    # AUC: 0.9 beats 3 negatives, 0.6 and 0.3 beat 2 each -> 7 / 9.
    s = metrics.fundus_scores(FUNDUS_PROB, FUNDUS_TRUTH)
    assert s["se"] == pytest.approx(2 / 3)
    assert s["sp"] == pytest.approx(2 / 3)
    assert s["acc"] == pytest.approx(4 / 6)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["auc"] == pytest.approx(7 / 9)


def test_fundus_scores_binary_mask_has_no_auc_and_stacks_pool():
    binary = (FUNDUS_PROB > 0.5).astype(np.uint8)
    s = metrics.fundus_scores(binary, FUNDUS_TRUTH, FUNDUS_FOV)
    assert "auc" not in s
    assert s["f1"] == pytest.approx(0.8)
    # (N, Y, X) stacks pool pixels; a single (Y, X) FOV applies to every image.
    stack = metrics.fundus_scores(np.stack([FUNDUS_PROB] * 3), np.stack([FUNDUS_TRUTH] * 3), FUNDUS_FOV)
    assert stack == pytest.approx(metrics.fundus_scores(FUNDUS_PROB, FUNDUS_TRUTH, FUNDUS_FOV))
    # Pooled, not averaged: an image with 1 TP + an image with 1 FN -> se = 1/2.
    p = np.array([[[0.9, 0.1]], [[0.1, 0.1]]])
    t = np.array([[[1, 0]], [[1, 0]]])
    assert metrics.fundus_scores(p, t)["se"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------
# V_Rand / V_Info
# --------------------------------------------------------------------------------------


def _grid_membrane(size: int = 41) -> np.ndarray:
    """Four square cells separated by 1-px membranes (a cross) inside a 1-px frame."""
    mem = np.zeros((size, size), dtype=bool)
    mem[[0, -1, size // 2], :] = True
    mem[:, [0, -1, size // 2]] = True
    return mem


def _voronoi_membrane(shape=(128, 128), n_cells=12, seed=0) -> np.ndarray:
    """Irregular cells: boundaries of a Voronoi partition of well-spread random seeds."""
    rng = np.random.default_rng(seed)
    points: list[np.ndarray] = []
    while len(points) < n_cells:
        p = rng.integers(8, shape[0] - 8, 2)
        if all(np.hypot(*(p - q)) > 25 for q in points):
            points.append(p)
    seeds = np.zeros(shape, dtype=int)
    for k, p in enumerate(points):
        seeds[tuple(p)] = k + 1
    idx = ndimage.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    vor = seeds[idx[0], idx[1]]
    mem = np.zeros(shape, dtype=bool)
    mem[:-1] |= vor[:-1] != vor[1:]
    mem[:, :-1] |= vor[:, :-1] != vor[:, 1:]
    return mem


def test_rand_fscore_hand_computed_contingency():
    # Scored pixels: gt > 0 (the middle gt-0 pixel is ignored whatever its prediction).
    gt = np.array([[1, 1, 1, 0, 2, 2, 2]])
    pred = np.array([[1, 1, 2, 1, 2, 2, 0]])
    # Contingency over the 6 scored pixels (rows: GT cells 1, 2; singleton = pred 0):
    #            pred1 pred2 singleton
    #   gt1        2     1      0
    #   gt2        0     2      1
    # sum c^2 + s = (4 + 1 + 4) + 1 = 10
    # GT sizes a = (3, 3): sum a^2 = 18
    # pred sizes b = (2, 3) plus the singleton: sum b^2 + s = 13 + 1 = 14
    # split = 10/18, merge = 10/14, V_Rand = 2*10 / (18 + 14) = 0.625
    s = segmentation_scores(gt, pred)
    assert s["rand_split"] == pytest.approx(10 / 18)
    assert s["rand_merge"] == pytest.approx(10 / 14)
    assert s["vrand"] == pytest.approx(0.625)
    # Entropies (nats, p = count / 6):
    #   H(gt)   = -2 * (3/6) log(3/6) = log 2
    #   H(pred) = -[(2/6) log(2/6) + (3/6) log(3/6) + (1/6) log(1/6)]
    #   H(joint)= -[2 * (2/6) log(2/6) + 2 * (1/6) log(1/6)]
    #   I = H(gt) + H(pred) - H(joint);  V_Info = 2 I / (H(gt) + H(pred))
    h_gt = math.log(2)
    h_pred = -(2 / 6 * math.log(2 / 6) + 3 / 6 * math.log(3 / 6) + 1 / 6 * math.log(1 / 6))
    h_joint = -(2 * 2 / 6 * math.log(2 / 6) + 2 * 1 / 6 * math.log(1 / 6))
    mutual = h_gt + h_pred - h_joint
    assert s["vinfo"] == pytest.approx(2 * mutual / (h_gt + h_pred))
    assert s["info_split"] == pytest.approx(mutual / h_pred)
    assert s["info_merge"] == pytest.approx(mutual / h_gt)


def test_singletons_equal_unique_labels():
    # Counting predicted border pixels as singletons must equal giving each one a
    # label of its own (a brute-force restatement of the rule).
    rng = np.random.default_rng(5)
    gt = rng.integers(0, 4, size=(20, 20))
    pred = rng.integers(0, 6, size=(20, 20))
    relabelled = pred.copy()
    zeros = np.flatnonzero(pred == 0)
    relabelled.flat[zeros] = pred.max() + 1 + np.arange(zeros.size)
    a = segmentation_scores(gt, pred)
    b = segmentation_scores(gt, relabelled)
    assert a == pytest.approx(b)


def test_em_scores_perfect_prediction_is_one():
    mem = _grid_membrane()
    for prob in (mem.astype(np.float32), mem.astype(np.uint8), mem):
        s = em_challenge_scores(prob, mem)
        assert s["vrand"] == pytest.approx(1.0)
        assert s["vinfo"] == pytest.approx(1.0)
        assert set(s) == {"vrand", "vinfo", "vrand_threshold", "vinfo_threshold"}
    # A soft map of the same membranes is perfect at a middle threshold too.
    soft = np.where(mem, 0.8, 0.1).astype(np.float32)
    s = em_challenge_scores(soft, mem)
    assert s["vrand"] == pytest.approx(1.0)
    assert 0.1 <= s["vrand_threshold"] < 0.8


def test_merge_lowers_the_merge_side():
    mem = _grid_membrane()
    merged = mem.copy()
    merged[1:20, 20] = False  # remove the upper half of the vertical membrane
    gt = thin_borders(cell_labels(mem))
    s = segmentation_scores(gt, thin_borders(cell_labels(merged)))
    assert s["rand_merge"] < 0.8
    assert s["rand_split"] == pytest.approx(1.0)
    assert s["info_merge"] < 1.0
    assert s["info_split"] == pytest.approx(1.0)
    assert em_challenge_scores(merged.astype(np.float32), mem)["vrand"] == pytest.approx(s["vrand"])
    assert s["vrand"] < 0.95


def test_split_lowers_the_split_side():
    mem = _grid_membrane()
    split = mem.copy()
    split[10, 1:20] = True  # an extra membrane cuts the upper-left cell in two
    gt = thin_borders(cell_labels(mem))
    s = segmentation_scores(gt, thin_borders(cell_labels(split)))
    assert s["rand_split"] < 0.9
    assert s["rand_merge"] == pytest.approx(1.0)  # the extra border pixels are singletons
    assert s["info_split"] < 1.0
    assert s["vrand"] < 0.95
    em = em_challenge_scores(split.astype(np.float32), mem)
    assert em["vrand"] < 0.95 and em["vinfo"] < 1.0


def test_edge_thresholds_are_handled():
    mem = _grid_membrane()
    # At 1.0 nothing is membrane (one predicted cell), at 0.0 everything nonzero is.
    # An all-membrane prediction has no cell: every scored pixel is a singleton.
    everything = em_challenge_scores(np.ones(mem.shape, np.float32), mem, thresholds=[0.0])
    nothing = em_challenge_scores(np.zeros(mem.shape, np.float32), mem, thresholds=[0.0])
    assert 0.0 < everything["vrand"] < 0.1
    assert 0.0 < nothing["vrand"] < 0.5  # 4 cells merged into one: 2*sum a^2/(sum a^2 + n^2) = 0.4
    assert nothing["vinfo"] == 0.0  # one predicted segment carries no information
    assert em_challenge_scores(mem.astype(np.float32), mem, thresholds=[1.0])["vrand"] < 0.5


def test_thin_borders_one_pixel_and_topology():
    mem = _voronoi_membrane()
    thick = ndimage.binary_dilation(mem, iterations=3)
    labels = cell_labels(thick)
    thinned = thin_borders(labels)
    # No cell lost, none merged, and no two different cells 4-adjacent afterwards.
    assert set(np.unique(thinned)) == set(np.unique(labels))
    for a, b in ((thinned[:-1], thinned[1:]), (thinned[:, :-1], thinned[:, 1:])):
        touching = (a != b) & (a > 0) & (b > 0)
        assert not touching.any()
    # Much thinner border than the input; a 1-px border is left where it is.
    assert (thinned == 0).sum() < 0.5 * (labels == 0).sum()
    # Grid: the 1-px cross stays exactly where it is; the frame separates nothing and
    # is absorbed into the cells.
    grid_mem = _grid_membrane()
    cross = np.zeros_like(grid_mem)
    cross[20, :] = cross[:, 20] = True
    assert np.array_equal(thin_borders(cell_labels(grid_mem)) == 0, cross)


def test_thick_borders_still_score_about_one():
    mem = _voronoi_membrane()
    gt = thin_borders(cell_labels(mem))
    for iterations in (1, 2, 3):
        thick = ndimage.binary_dilation(mem, iterations=iterations)
        s = em_challenge_scores(thick.astype(np.float32), mem)
        assert s["vrand"] > 0.98 and s["vinfo"] > 0.97, (iterations, s)
        # Without thinning the thick border pixels would be singletons and cost a lot.
        unthinned = segmentation_scores(gt, cell_labels(thick))
        assert unthinned["vrand"] < s["vrand"] - 0.05


def test_em_scores_stack_and_errors():
    mem = _grid_membrane()
    stack = np.stack([mem, _grid_membrane()])
    s = em_challenge_scores(stack.astype(np.float32), stack)
    assert s["vrand"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="The membrane probability and the ground truth differ in shape"):
        em_challenge_scores(mem[:-1].astype(np.float32), mem)
    with pytest.raises(ValueError, match="The ground truth has no cell pixel, only membrane"):
        em_challenge_scores(mem.astype(np.float32), np.ones_like(mem))


def test_em_challenge_scores_mask_leaves_pixels_out_of_the_counts():
    """Pixels outside ``mask`` (IGNORE labels, outside a FOV) are not counted, like GT borders."""
    mem = _grid_membrane()
    cells = cell_labels(mem)
    one_cell = cells == cells[cells > 0].min()
    split = mem.copy()
    ys, xs = np.nonzero(one_cell)
    split[ys.min():ys.max() + 1, (xs.min() + xs.max()) // 2] = True  # splits that cell in two
    assert em_challenge_scores(split.astype(np.float32), mem)["vrand"] < 1.0
    # The cell and the 1-px frame around it (thinning gives the outer frame to the cell).
    mask = ~ndimage.binary_dilation(one_cell, np.ones((3, 3), bool))
    masked = em_challenge_scores(split.astype(np.float32), mem, mask=mask)
    assert masked["vrand"] == pytest.approx(1.0) and masked["vinfo"] == pytest.approx(1.0)
    # A (Y, X) mask is used for every slice of a stack, and the counts equal those of the
    # thinned GT cells with the masked pixels set to border.
    stack = np.stack([mem, mem]).astype(np.float32)
    noisy = np.clip(stack + 0.6 * (np.random.default_rng(1).random(stack.shape) < 0.05), 0, 1)
    truth = np.stack([mem, mem])
    by_mask = em_challenge_scores(noisy, truth, thresholds=[0.5], mask=mask)
    gt = np.stack([thin_borders(cell_labels(m)) for m in truth])
    gt[:, ~mask] = 0
    pred = np.stack([thin_borders(cell_labels(p > 0.5)) for p in noisy])
    direct = segmentation_scores(gt, pred)
    assert by_mask["vrand"] == pytest.approx(direct["vrand"]) and by_mask["vinfo"] == pytest.approx(direct["vinfo"])
    with pytest.raises(ValueError, match="scored pixels"):
        em_challenge_scores(stack, truth, mask=np.zeros(mem.shape, bool))
    # evaluate: pixel scores stand when no scored pixel lies in a GT cell (only the
    # membrane between two cells scored); the cell scores are then undefined (NaN).
    on_membrane = np.zeros(mem.shape, bool)
    on_membrane[mem.shape[0] // 2, 5:15] = True
    only = evaluate(mem.astype(np.uint8), mem, "em", fov=on_membrane)
    assert only["dice"] == 1.0 and math.isnan(only["vrand"]) and math.isnan(only["vinfo"])


# --------------------------------------------------------------------------------------
# evaluate / evaluate_per_slice
# --------------------------------------------------------------------------------------


def test_evaluate_keys_and_values():
    mem = _grid_membrane()
    em = evaluate(mem.astype(np.uint8), mem, "em")
    assert set(em) == {"dice", "iou", "pixel_accuracy", "vrand", "vinfo"}
    assert all(v == pytest.approx(1.0) for v in em.values())
    em_prob = evaluate(np.where(mem, 0.9, 0.05).astype(np.float32), mem, "em")
    assert em_prob["vrand"] == pytest.approx(1.0)

    fundus = evaluate(FUNDUS_PROB, FUNDUS_TRUTH, "fundus", fov=FUNDUS_FOV)
    assert set(fundus) == {"dice", "iou", "pixel_accuracy", "se", "sp", "acc", "f1", "auc"}
    assert fundus["dice"] == pytest.approx(0.8)
    assert fundus["pixel_accuracy"] == pytest.approx(0.8)
    binary = evaluate((FUNDUS_PROB > 0.5).astype(np.uint8), FUNDUS_TRUTH, "fundus", fov=FUNDUS_FOV)
    assert "auc" not in binary
    assert binary["f1"] == pytest.approx(0.8)


def test_evaluate_errors_say_what_to_do():
    mem = _grid_membrane()
    with pytest.raises(ValueError, match="Unknown task 'cells': choose 'em'"):
        evaluate(mem, mem, "cells")
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate(mem[:-1], mem, "em")
    with pytest.raises(ValueError, match="no structure"):
        evaluate(mem, np.zeros_like(mem), "em")
    with pytest.raises(ValueError, match="inside the FOV"):
        evaluate(FUNDUS_PROB, FUNDUS_TRUTH, "fundus", fov=np.array([[0, 1, 1], [0, 0, 1]], bool))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(FUNDUS_PROB * 255, FUNDUS_TRUTH, "fundus")


# Each bad input, the words the message must hold; no message may name a variable of the code.
_GRID = np.zeros((12, 12), bool)
_GRID[6, :] = True
BAD_SCORES = [
    ("pixel-shape", lambda: metrics.dice(PRED, TRUTH.T), "The prediction and the ground truth differ in shape"),
    ("auc-nan", lambda: metrics.roc_auc(np.array([np.nan, 0.5]), np.array([0, 1])), "predict again"),
    ("fov-empty", lambda: metrics.fundus_scores(FUNDUS_PROB, FUNDUS_TRUTH, np.zeros((2, 3), bool)),
     "The FOV mask selects no pixel"),
    ("fov-shape", lambda: metrics.fundus_scores(FUNDUS_PROB, FUNDUS_TRUTH, np.ones((3, 3), bool)),
     r"The shape of the FOV mask, \(3, 3\)"),
    ("accuracy-empty-mask", lambda: metrics.pixel_accuracy(PRED, TRUTH, np.zeros((2, 3), bool)),
     "selects no pixel, so there is nothing to score"),
    ("cldice-4d", lambda: metrics.cl_dice(np.zeros((1, 2, 8, 8)), np.zeros((1, 2, 8, 8))),
     r"The shape of the prediction, \(1, 2, 8, 8\), is neither \(Y, X\) nor \(Z, Y, X\)"),
    ("em-no-threshold", lambda: em_challenge_scores(_GRID.astype(np.float32), _GRID, thresholds=[]),
     "No membrane threshold to try"),
    ("em-no-scored-cell", lambda: em_challenge_scores(_GRID.astype(np.float32), _GRID, mask=_GRID),
     "no cell pixel among the scored pixels .*only membrane.*Label some cell interiors"),
    ("labels-shape", lambda: segmentation_scores(np.ones((4, 4), int), np.ones((4, 5), int)),
     "The ground-truth cell labels and the predicted cell labels differ in shape"),
    ("labels-no-cell", lambda: segmentation_scores(np.zeros((4, 4), int), np.ones((4, 4), int)),
     r"no cell pixel \(label above 0\).*numbered from 1"),
    ("thin-3d", lambda: thin_borders(np.ones((2, 4, 4), int)), "thin a stack slice by slice"),
    ("evaluate-task", lambda: evaluate(_GRID, _GRID, "cells"), "Unknown task 'cells': choose 'em'"),
    ("evaluate-4d", lambda: evaluate(np.ones((1, 1, 4, 4)), np.ones((1, 1, 4, 4)), "em"),
     "The shape of the prediction"),
    ("evaluate-inf", lambda: evaluate(np.where(_GRID, np.inf, 0.2), _GRID, "em"), "NaN or infinite values"),
    ("evaluate-range", lambda: evaluate(np.where(_GRID, 0.9, 0.5) * 4, _GRID, "em"),
     r"holds values in \[2, 3.6\]: choose the probability map"),
    ("per-slice-2d", lambda: evaluate_per_slice(_GRID, _GRID, "em"), r"needs a \(Z, Y, X\) stack"),
]
CODE_NAMES = ("pred ", "pred_", "prob ", "truth_membrane", "membrane_prob", "gt_labels", "thresholds", "roc_auc",
              "thin_borders", " fov ", "fov=", "must have the same shape")


@pytest.mark.parametrize("call, words", [b[1:] for b in BAD_SCORES], ids=[b[0] for b in BAD_SCORES])
def test_score_errors_name_the_problem_in_the_users_words(call, words):
    with pytest.raises(ValueError, match=words) as info:
        call()
    message = str(info.value)
    assert not [name for name in CODE_NAMES if name in message], message
    assert message[0].isupper() and message.endswith("."), message


def test_evaluate_per_slice():
    mem = _grid_membrane()
    stack = np.stack([mem, mem, mem])
    pred = stack.copy()
    pred[1, 1:20, 20] = False  # slice 1 merges two cells
    truth = stack.copy()
    truth[2] = False  # slice 2 has nothing to score
    rows = evaluate_per_slice(pred.astype(np.uint8), truth, "em")
    assert len(rows) == 3
    assert rows[0]["vrand"] == pytest.approx(1.0)
    assert rows[1]["vrand"] < 1.0
    assert set(rows[2]) == set(rows[0]) and all(math.isnan(v) for v in rows[2].values())
    with pytest.raises(ValueError, match="Z, Y, X"):
        evaluate_per_slice(mem, mem, "em")


# --------------------------------------------------------------------------------------
# Real data (../shared/data)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def isbi_membranes() -> np.ndarray:
    if not ISBI_LABELS.is_file():
        pytest.skip(f"ISBI 2012 labels not found at {ISBI_LABELS} (../shared/data is absent in this checkout)")
    import tifffile

    labels = tifffile.imread(ISBI_LABELS)[25:30]
    return labels == 0  # 255 = cell, 0 = membrane


def test_isbi_labels_against_themselves_and_perturbed(isbi_membranes):
    mem = isbi_membranes
    assert mem.shape == (5, 512, 512)
    start = time.perf_counter()
    perfect = em_challenge_scores(mem.astype(np.float32), mem)
    assert perfect["vrand"] == pytest.approx(1.0)
    assert perfect["vinfo"] == pytest.approx(1.0)
    dilated = np.stack([ndimage.binary_dilation(m, iterations=2) for m in mem])
    eroded = np.stack([ndimage.binary_erosion(m) for m in mem])
    soft = np.clip(np.stack([ndimage.gaussian_filter(m.astype(np.float32), 1.5) for m in mem]) * 2.5, 0, 1)
    for name, pred in (("dilated", dilated.astype(np.float32)), ("eroded", eroded.astype(np.float32)), ("soft", soft)):
        s = em_challenge_scores(pred, mem)
        assert s["vrand"] < 1.0 and s["vinfo"] < 1.0, (name, s)
        assert 0.0 < s["vrand"] and 0.0 < s["vinfo"], (name, s)
    # Opening gaps in the thin membranes merges cells: much worse than thicker borders.
    assert em_challenge_scores(eroded.astype(np.float32), mem)["vrand"] < em_challenge_scores(
        dilated.astype(np.float32), mem
    )["vrand"]
    assert time.perf_counter() - start < 40.0
    ev = evaluate(mem.astype(np.uint8), mem, "em")
    assert ev["dice"] == 1.0 and ev["vrand"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def drive_test_01() -> tuple[np.ndarray, np.ndarray]:
    gt_path = DRIVE_TEST / "1st_manual" / "01_manual1.gif"
    fov_path = DRIVE_TEST / "mask" / "01_test_mask.gif"
    if not (gt_path.is_file() and fov_path.is_file()):
        pytest.skip(f"DRIVE test image 01 not found under {DRIVE_TEST} (../shared/data is absent in this checkout)")
    from PIL import Image

    return np.asarray(Image.open(gt_path)), np.asarray(Image.open(fov_path)) > 0


def test_drive_ground_truth_against_itself(drive_test_01):
    gt, fov = drive_test_01
    prob = gt.astype(np.float32) / 255.0
    s = evaluate(prob, gt, "fundus", fov=fov)
    assert s["f1"] == pytest.approx(1.0)
    assert s["auc"] == pytest.approx(1.0)
    assert s["se"] == s["sp"] == s["acc"] == pytest.approx(1.0)
    # Errors outside the FOV do not count: call every outside pixel a vessel.
    wrong_outside = np.where(fov, prob, 1.0).astype(np.float32)
    assert evaluate(wrong_outside, gt, "fundus", fov=fov)["f1"] == pytest.approx(1.0)
    assert evaluate(wrong_outside, gt, "fundus")["f1"] < 0.9


def test_drive_second_observer_matches_published_f1():
    """Pooled F1 of the 2nd human observer inside the FOV: 0.789 per the data README."""
    from PIL import Image

    paths = [
        (
            DRIVE_TEST / "1st_manual" / f"{i:02d}_manual1.gif",
            DRIVE_TEST / "2nd_manual" / f"{i:02d}_manual2.gif",
            DRIVE_TEST / "mask" / f"{i:02d}_test_mask.gif",
        )
        for i in range(1, 21)
    ]
    if not all(p.is_file() for triple in paths for p in triple):
        pytest.skip(f"DRIVE test set not complete under {DRIVE_TEST} (../shared/data is absent in this checkout)")
    first, second, fov = (np.stack([np.asarray(Image.open(t[k])) for t in paths]) for k in range(3))
    fov = fov > 0
    tp, fp, tn, fn = metrics.confusion_counts(first, first, fov)
    assert tp + fp + tn + fn == 4_538_143 and tp == 577_649  # the counts in the README
    s = metrics.fundus_scores((second > 0).astype(np.uint8), first, fov)  # palette {0, 1}: > 0
    assert s["f1"] == pytest.approx(0.789, abs=5e-4)
