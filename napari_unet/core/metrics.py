"""Scores for binary segmentations: pixel metrics, ROC AUC, DRIVE and ISBI 2012 scores.

Everything here is plain numpy / scipy (no Qt, napari or torch), so the CLI, the GUI,
the training loop and the benchmarks all score a prediction the same way.

Conventions:

* A *mask* is any array whose nonzero entries mark the structure (membrane, vessel).
* A *probability map* is a floating array in [0, 1]; it is thresholded (``> 0.5`` by
  default) wherever a binary decision is needed.
* Arrays are ``(Y, X)`` images or ``(Z, Y, X)`` / ``(N, Y, X)`` stacks. Pixel metrics
  pool every pixel of the stack; the EM challenge scores treat each slice as 2D.

Reference scoring rules (see ``../shared/data/README.md``):

* DRIVE: threshold at 0.5, count only pixels inside the field-of-view (FOV) mask,
  pool the pixels of all test images, report Se, Sp, Acc, F1 and ROC AUC.
* ISBI 2012: foreground-restricted V_Rand and V_Info after border thinning
  (Arganda-Carreras et al. 2015, Front. Neuroanat. 9:142), best of 11 thresholds;
  see :func:`em_challenge_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, sparse

from .labels import IGNORE, STRUCTURE, first_channel, labels_from_array

__all__ = [
    "DEFAULT_EM_THRESHOLDS",
    "TASKS",
    "confusion_counts",
    "dice",
    "iou",
    "pixel_accuracy",
    "roc_auc",
    "fundus_scores",
    "cl_dice",
    "cell_labels",
    "thin_borders",
    "segmentation_scores",
    "em_challenge_scores",
    "evaluate",
    "evaluate_per_slice",
    "scoring_inputs",
]

#: The 11 thresholds of the ISBI 2012 evaluation script (0.0, 0.1, ..., 1.0), rounded so
#: that reported thresholds print as 0.3 rather than 0.30000000000000004.
DEFAULT_EM_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.round(np.linspace(0.0, 1.0, 11), 10))

#: Tasks understood by :func:`evaluate`.
TASKS: tuple[str, ...] = ("em", "fundus")

# 4-connectivity in 2D: cells (and thinned borders) are defined with it in the challenge.
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


# --------------------------------------------------------------------------------------
# Pixel metrics
# --------------------------------------------------------------------------------------


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}; "
            "pass the prediction and the ground truth of the same image(s)."
        )


def _as_mask(mask: np.ndarray | None, shape: tuple[int, ...], name: str = "mask") -> np.ndarray | None:
    """Return ``mask`` as a bool array of ``shape`` (or None).

    A single ``(Y, X)`` mask is accepted for a ``(N, Y, X)`` stack and applied to every
    image, because a fixed FOV is common for stacks from one camera.
    """
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape == shape:
        return m.astype(bool, copy=False)
    if m.ndim == len(shape) - 1 and m.shape == shape[1:]:
        return np.broadcast_to(m.astype(bool, copy=False), shape)
    raise ValueError(
        f"{name} must have the shape of the images {shape} (or {shape[1:]} to apply one "
        f"mask to every image of a stack), got {m.shape}."
    )


def confusion_counts(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None
) -> tuple[int, int, int, int]:
    """Count true/false positives/negatives of a binary prediction.

    Args:
        pred: predicted mask, any shape; nonzero (True) = structure.
        truth: ground-truth mask of the same shape; nonzero = structure.
        mask: optional bool array of the same shape; only pixels where it is True are
            counted (e.g. the FOV of a fundus image). None counts every pixel.

    Returns:
        ``(tp, fp, tn, fn)`` as Python ints.

    Raises:
        ValueError: if the shapes differ.
    """
    p = np.asarray(pred)
    t = np.asarray(truth)
    _check_same_shape(p, t, "pred", "truth")
    p = p.astype(bool, copy=False)
    t = t.astype(bool, copy=False)
    m = _as_mask(mask, p.shape)
    if m is None:
        total = p.size
        tp = np.count_nonzero(p & t)
        n_pred = np.count_nonzero(p)
        n_true = np.count_nonzero(t)
    else:
        total = np.count_nonzero(m)
        pm = p & m
        tp = np.count_nonzero(pm & t)
        n_pred = np.count_nonzero(pm)
        n_true = np.count_nonzero(t & m)
    fp = n_pred - tp
    fn = n_true - tp
    tn = total - tp - fp - fn
    return int(tp), int(fp), int(tn), int(fn)


def dice(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Dice coefficient ``2 tp / (2 tp + fp + fn)`` (equals the pixel F1 score).

    Args:
        pred: predicted mask (nonzero = structure), any shape.
        truth: ground-truth mask of the same shape.
        mask: optional bool array of the same shape restricting the counted pixels.

    Returns:
        Dice in [0, 1]; 1.0 when prediction and truth are both empty (nothing to find,
        nothing found: a perfect answer).
    """
    tp, fp, _, fn = confusion_counts(pred, truth, mask)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def iou(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Intersection over union (Jaccard) ``tp / (tp + fp + fn)``.

    Args:
        pred: predicted mask (nonzero = structure), any shape.
        truth: ground-truth mask of the same shape.
        mask: optional bool array of the same shape restricting the counted pixels.

    Returns:
        IoU in [0, 1]; 1.0 when prediction and truth are both empty.
    """
    tp, fp, _, fn = confusion_counts(pred, truth, mask)
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def pixel_accuracy(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of (masked) pixels classified correctly, ``(tp + tn) / n``.

    Args:
        pred: predicted mask (nonzero = structure), any shape.
        truth: ground-truth mask of the same shape.
        mask: optional bool array of the same shape restricting the counted pixels.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: if the mask selects no pixel (the accuracy is then undefined).
    """
    tp, fp, tn, fn = confusion_counts(pred, truth, mask)
    total = tp + fp + tn + fn
    if total == 0:
        raise ValueError("the mask selects no pixel: nothing to score; check the FOV / mask.")
    return (tp + tn) / total


def roc_auc(prob: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Exact area under the ROC curve, pooled over all (masked) pixels.

    Computed as the Mann-Whitney statistic: the probability that a random structure
    pixel scores higher than a random background pixel, ties counting one half. This is
    exactly the trapezoidal area under the full ROC curve (every distinct score is a
    threshold), so no threshold grid is involved.

    Implementation: the distinct scores are sorted once (``np.unique``) and positives and
    negatives are counted per score with ``np.bincount``; all counting is in int64, so
    the result is exact, and ~5 million pixels take well under a couple of seconds.

    Args:
        prob: scores (probabilities or any real numbers), any shape.
        truth: ground-truth mask of the same shape; nonzero = structure (positive).
        mask: optional bool array of the same shape; only pixels where it is True count.

    Returns:
        AUC in [0, 1].

    Raises:
        ValueError: on a shape mismatch, NaN scores, or when the truth has only one class
            inside the mask (the AUC is then undefined).
    """
    p = np.asarray(prob)
    t = np.asarray(truth)
    _check_same_shape(p, t, "prob", "truth")
    m = _as_mask(mask, p.shape)
    if m is None:
        scores = p.ravel()
        labels = t.ravel().astype(bool, copy=False)
    else:
        scores = p[m]
        labels = t[m].astype(bool, copy=False)
    if scores.dtype.kind == "f" and np.isnan(scores).any():
        raise ValueError("prob contains NaN values; the ROC AUC is undefined.")
    n_pos = int(np.count_nonzero(labels))
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            "roc_auc needs both classes inside the mask, but the truth has "
            f"{n_pos} structure and {n_neg} background pixel(s) there."
        )
    values, inverse = np.unique(scores, return_inverse=True)
    inverse = inverse.ravel()
    total_per_value = np.bincount(inverse, minlength=values.size)
    pos_per_value = np.bincount(inverse[labels], minlength=values.size)
    neg_per_value = total_per_value - pos_per_value
    # Negatives strictly below each score value (exclusive cumulative sum).
    neg_below = np.cumsum(neg_per_value) - neg_per_value
    # 2 * (pairs won + half the tied pairs), kept in integers for exactness.
    twice_wins = 2 * int(np.dot(pos_per_value, neg_below)) + int(np.dot(pos_per_value, neg_per_value))
    return twice_wins / (2.0 * n_pos * n_neg)


def _div(num: float, den: float) -> float:
    """``num / den`` or NaN when the ratio is undefined (den == 0)."""
    return float(num) / den if den else float("nan")


def fundus_scores(
    prob: np.ndarray,
    truth: np.ndarray,
    fov: np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """DRIVE-style vessel scores, pooled over all pixels inside the FOV.

    The convention of the DRIVE literature: binarise at ``threshold`` (``prob >
    threshold``), count only pixels inside the FOV mask, pool all pixels of all images
    (not a mean of per-image scores), report

    * ``se`` sensitivity (recall) ``tp / (tp + fn)``,
    * ``sp`` specificity ``tn / (tn + fp)``,
    * ``acc`` accuracy ``(tp + tn) / n``,
    * ``f1`` = Dice ``2 tp / (2 tp + fp + fn)``,
    * ``auc`` exact ROC AUC of the scores (only when ``prob`` is a floating array,
      because the AUC of a hard mask says little).

    Args:
        prob: ``(Y, X)`` or ``(N, Y, X)`` vessel probability (float in [0, 1]) or a
            binary mask (integer/bool, nonzero = vessel; the threshold is then unused).
        truth: ground truth of the same shape, nonzero = vessel.
        fov: optional FOV mask, same shape (or one ``(Y, X)`` mask for a stack);
            None scores every pixel (this inflates Sp and Acc).
        threshold: probability above which a pixel is called vessel.

    Returns:
        Dict with float values for ``se, sp, acc, f1`` (+ ``auc``). Se/Sp are NaN when
        undefined (no vessel / no background pixel inside the FOV); f1 is 1.0 when
        both prediction and truth are empty.
    """
    p = np.asarray(prob)
    t = np.asarray(truth)
    _check_same_shape(p, t, "prob", "truth")
    is_prob = p.dtype.kind == "f"
    pred = p > threshold if is_prob else p != 0
    m = _as_mask(fov, p.shape, "fov")
    tp, fp, tn, fn = confusion_counts(pred, t, m)
    total = tp + fp + tn + fn
    if total == 0:
        raise ValueError("the FOV mask selects no pixel: nothing to score.")
    f1_den = 2 * tp + fp + fn
    scores = {
        "se": _div(tp, tp + fn),
        "sp": _div(tn, tn + fp),
        "acc": (tp + tn) / total,
        "f1": 1.0 if f1_den == 0 else 2.0 * tp / f1_den,
    }
    if is_prob:
        scores["auc"] = roc_auc(p, t, m)
    return scores


def cl_dice(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Centreline Dice (Shit et al. 2021, CVPR): how whole thin structures are.

    Topology precision = share of the predicted centreline inside the true vessels;
    topology sensitivity = share of the true centreline inside the predicted vessels; a
    vessel broken in two loses its centreline over the gap, so clDice drops where pixel
    scores barely move. Slices are skeletonised one by one (2D).

    Args:
        pred, truth: ``(Y, X)`` or ``(N, Y, X)`` masks, nonzero = structure.
        mask: optional bool mask of the pixels scored (e.g. the FOV), same shape, or
            one ``(Y, X)`` mask for every slice.

    Returns:
        clDice in [0, 1]; 1.0 when both are empty.
    """
    from skimage.morphology import skeletonize

    p = _as_slices(np.asarray(pred) != 0, "pred")
    t = _as_slices(np.asarray(truth) != 0, "truth")
    _check_same_shape(p, t, "pred", "truth")
    if mask is not None:
        m = _as_mask(mask, p.shape, "mask")
        p, t = p & m, t & m
    skel_p = np.stack([skeletonize(s) for s in p])
    skel_t = np.stack([skeletonize(s) for s in t])
    if not skel_p.any() and not skel_t.any():
        return 1.0
    precision = _div(np.count_nonzero(skel_p & t), np.count_nonzero(skel_p))
    sensitivity = _div(np.count_nonzero(skel_t & p), np.count_nonzero(skel_t))
    if not (precision > 0 and sensitivity > 0):
        return 0.0
    return 2 * precision * sensitivity / (precision + sensitivity)


# --------------------------------------------------------------------------------------
# ISBI 2012: V_Rand and V_Info after border thinning
# --------------------------------------------------------------------------------------


def cell_labels(membrane: np.ndarray) -> np.ndarray:
    """Label the cells of one 2D membrane map.

    Args:
        membrane: ``(Y, X)`` bool, True = membrane (border).

    Returns:
        ``(Y, X)`` int32 labels: 4-connected components of the non-membrane pixels
        numbered from 1; membrane pixels are 0. 4-connectivity as in the challenge:
        two cells touching only diagonally through a 1-pixel membrane stay separate.
    """
    labels, _ = ndimage.label(~np.asarray(membrane, dtype=bool), structure=_FOUR_CONNECTED)
    return labels.astype(np.int32, copy=False)


def thin_borders(labels: np.ndarray) -> np.ndarray:
    """Thin the borders of a 2D label image to one pixel, keeping every cell distinct.

    What is done: every border pixel (label 0) is given the label of its nearest cell
    (Euclidean distance transform with indices, i.e. the cells grow at equal speed
    until they meet, along the medial line of the border); then, wherever two
    different cells are 4-adjacent, one pixel of the pair is set back to 0 (the one
    that was border before, else the upper / left one). The result: borders one pixel
    wide along the middle of the original (possibly thick) borders, a border that was
    already one pixel wide left where it is, no two different cells 4-adjacent, and
    membrane spurs or blobs that separate nothing (dangling ends, closed blobs inside
    one cell) absorbed into their cell. Labels are not renumbered, so no cell is ever
    merged with or split from another: the cells keep the topology of the input.

    Why: Arganda-Carreras et al. (2015) found that the old ISBI scores punished border
    *width* (the thick predicted border pixels are not inside any predicted cell), so
    the challenge thins borders before scoring. Growing regions to a medial line does
    this in a few milliseconds per 512x512 slice and, unlike skeletonising the
    membrane, it cannot open a gap in a border (skeletons of 4-connected borders may
    be 8-connected, which would merge cells under 4-connectivity).

    Args:
        labels: ``(Y, X)`` integer labels, 0 = border, >0 = cells.

    Returns:
        ``(Y, X)`` int32 labels with 1-pixel borders (0). An image without any cell is
        returned unchanged (all border).
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"thin_borders works on one 2D slice, got shape {lab.shape}.")
    lab = lab.astype(np.int32, copy=False)
    border = lab == 0
    if not border.any() or border.all():
        return lab.copy()
    # Indices of the nearest cell pixel for every pixel (cells map to themselves).
    nearest = ndimage.distance_transform_edt(border, return_distances=False, return_indices=True)
    grown = lab[nearest[0], nearest[1]]
    thinned = grown.copy()
    # For every 4-adjacent pair of different cells, one pixel becomes border: the one that
    # was border before if only one of them was (so a border that is already 1 px wide
    # stays where it is), else the upper / left one. Every such pair then has a border
    # pixel, so no two different cells touch, and the new border is 1 px wide.
    for first, second in (
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),  # vertical pairs
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),  # horizontal pairs
    ):
        differ = grown[first] != grown[second]
        mark_second = differ & border[second] & ~border[first]
        thinned[first][differ & ~mark_second] = 0
        thinned[second][mark_second] = 0
    return thinned


def _sparse_contingency(gt: np.ndarray, pred: np.ndarray) -> sparse.csr_matrix:
    """Sparse contingency table ``c[i, j]`` = #pixels with gt label i and pred label j."""
    g = gt.ravel().astype(np.int64, copy=False)
    p = pred.ravel().astype(np.int64, copy=False)
    shape = (int(g.max(initial=0)) + 1, int(p.max(initial=0)) + 1)
    table = sparse.coo_matrix((np.ones(g.size, dtype=np.int64), (g, p)), shape=shape)
    return table.tocsr()  # duplicates are summed by the conversion


def _slice_statistics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Foreground-restricted Rand sums and entropies of one 2D slice.

    ``gt`` and ``pred`` are thinned label images (0 = border). Only pixels with
    ``gt > 0`` are scored; predicted border pixels there (``pred == 0``) are
    singletons. Returns raw pair sums (not normalised, so that slices can be pooled)
    and entropies in nats (normalised per slice, as the reference does).
    """
    inside = gt > 0
    n = int(np.count_nonzero(inside))
    if n == 0:
        return {"n": 0}
    table = _sparse_contingency(gt[inside], pred[inside])
    coo = table.tocoo()
    rows, cols, counts = coo.row, coo.col, coo.data.astype(np.float64)
    in_cell = cols > 0
    # Predicted border pixels inside GT cells: each is its own segment.
    n_single = float(counts[~in_cell].sum())
    c_cells = counts[in_cell]
    a = np.bincount(rows, weights=counts)  # GT cell sizes (a[0] == 0: not scored)
    b = np.bincount(cols[in_cell], weights=c_cells)  # predicted cell sizes inside GT cells
    b = b[b > 0]
    a = a[a > 0]

    # Rand (pair counting incl. self-pairs, the "N^2 normalisation" of the reference):
    # sum_ij c_ij^2 counts pairs together in both, sum a_i^2 pairs together in GT,
    # sum b_j^2 pairs together in the prediction; a singleton adds 1 to the last two.
    sum_ab = float(np.dot(c_cells, c_cells)) + n_single
    sum_a = float(np.dot(a, a))
    sum_b = float(np.dot(b, b)) + n_single

    # Entropies with p = count / n; a singleton has p = 1/n, contributing log(n)/n.
    log_n = np.log(n)

    def plogp_sum(c: np.ndarray) -> float:
        # sum p log p with p = c / n, written to avoid forming tiny probabilities.
        return float(np.dot(c, np.log(c)) / n - c.sum() / n * log_n)

    h_gt = -plogp_sum(a)
    h_pred = -plogp_sum(b) + n_single * log_n / n
    h_joint = -plogp_sum(c_cells) + n_single * log_n / n
    mutual = max(0.0, h_gt + h_pred - h_joint)
    return {
        "n": n,
        "sum_ab": sum_ab,
        "sum_a": sum_a,
        "sum_b": sum_b,
        "h_gt": h_gt,
        "h_pred": h_pred,
        "mutual": mutual,
    }


def _info_fscore(stats: dict[str, float]) -> tuple[float, float, float]:
    """(V_Info, split, merge) of one slice from its entropies."""
    h_gt, h_pred, mutual = stats["h_gt"], stats["h_pred"], stats["mutual"]
    if h_gt + h_pred == 0.0:
        # One GT cell and one predicted cell covering it: identical partitions. (The Fiji
        # script returns 0 here; we return the score of a perfect answer.)
        return 1.0, 1.0, 1.0
    split = mutual / h_pred if h_pred > 0 else 1.0
    merge = mutual / h_gt if h_gt > 0 else 1.0
    return 2.0 * mutual / (h_gt + h_pred), split, merge


def _pool(per_slice: list[dict[str, float]]) -> dict[str, float]:
    """Combine slice statistics the way the Fiji ISBI 2012 script does.

    V_Rand: the pair sums of all slices are added, then one F-score is taken (the
    reference adds the tp/fp/fn of the slices). V_Info: the F-score is computed per
    slice and averaged over the slices (the reference averages per-slice F-scores).
    Slices without any GT cell pixel are skipped.
    """
    used = [s for s in per_slice if s["n"] > 0]
    if not used:
        raise ValueError(
            "the ground truth has no cell (non-membrane) pixel: V_Rand / V_Info are undefined; "
            "check that truth marks membranes (nonzero) and cells (zero)."
        )
    sum_ab = sum(s["sum_ab"] for s in used)
    sum_a = sum(s["sum_a"] for s in used)
    sum_b = sum(s["sum_b"] for s in used)
    info = np.array([_info_fscore(s) for s in used])
    return {
        "vrand": 2.0 * sum_ab / (sum_a + sum_b),
        "rand_split": sum_ab / sum_a,
        "rand_merge": sum_ab / sum_b,
        "vinfo": float(info[:, 0].mean()),
        "info_split": float(info[:, 1].mean()),
        "info_merge": float(info[:, 2].mean()),
    }


def _as_slices(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2:
        return a[np.newaxis]
    if a.ndim == 3:
        return a
    raise ValueError(f"{name} must be (Y, X) or (Z, Y, X), got shape {a.shape}.")


def segmentation_scores(gt_labels: np.ndarray, pred_labels: np.ndarray) -> dict[str, float]:
    """Foreground-restricted V_Rand / V_Info of label images (no thresholding, no thinning).

    The scoring core of :func:`em_challenge_scores`, exposed for label images that are
    already final (e.g. a watershed result) and for testing. Only pixels inside a GT
    cell (``gt_labels > 0``) are scored; there, every predicted border pixel
    (``pred_labels == 0``) is its own one-pixel segment.

    With ``c[i, j]`` the contingency counts (GT cell i, predicted cell j),
    ``a_i = sum_j c[i, j]``, ``b_j = sum_i c[i, j]`` and ``s`` the number of singletons:

    * ``rand_split = (sum c^2 + s) / sum a^2`` (drops when GT cells are split),
    * ``rand_merge = (sum c^2 + s) / (sum b^2 + s)`` (drops when GT cells are merged),
    * ``vrand = 2 (sum c^2 + s) / (sum a^2 + sum b^2 + s)``, their harmonic mean;
    * ``info_split = I / H(pred)``, ``info_merge = I / H(gt)``,
      ``vinfo = 2 I / (H(gt) + H(pred))`` (mutual information I, entropies in nats).

    Args:
        gt_labels: ``(Y, X)`` or ``(Z, Y, X)`` GT cell labels, 0 = border.
        pred_labels: predicted cell labels, same shape, 0 = border.

    Returns:
        Dict with ``vrand, vinfo, rand_split, rand_merge, info_split, info_merge``;
        each in [0, 1], 1.0 for identical segmentations. Stacks are pooled per slice
        as in :func:`em_challenge_scores`.
    """
    g = _as_slices(gt_labels, "gt_labels")
    p = _as_slices(pred_labels, "pred_labels")
    _check_same_shape(g, p, "gt_labels", "pred_labels")
    return _pool([_slice_statistics(g[z], p[z]) for z in range(g.shape[0])])


def em_challenge_scores(
    membrane_prob: np.ndarray,
    truth_membrane: np.ndarray,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_EM_THRESHOLDS,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """ISBI 2012 challenge scores: best V_Rand and V_Info after border thinning.

    Follows the Fiji evaluation script of the challenge (Arganda-Carreras et al. 2015):

    1. For each threshold ``t`` the prediction is binarised: a pixel is membrane when
       ``membrane_prob > t``. (The Fiji script receives a *cell* map ``c = 1 - p`` and
       calls cell ``c > t'``; with ``t = 1 - t'`` the same 11 maps result except for
       pixels exactly equal to a threshold.) At ``t = 1.0`` nothing is membrane and
       each slice is one predicted cell; at ``t = 0.0`` every pixel with a nonzero
       probability is membrane. A binary 0/1 map gives the same result for every
       ``t < 1``.
    2. Predicted cells = 4-connected components of non-membrane pixels of each slice;
       ground-truth cells likewise from ``truth_membrane``.
    3. Borders of *both* are thinned to one pixel with :func:`thin_borders` (cells grown
       to the medial line of the border; no cell is merged or split).
    4. Only pixels inside a (thinned) GT cell are scored; predicted border pixels there
       are singletons (each its own segment), see :func:`segmentation_scores`. With a
       ``mask``, pixels outside it (IGNORE labels, outside a FOV) are left out of the
       counts as well, like GT border pixels: the GT cells are found and thinned with
       them read as cell interior (so an unlabelled patch over a membrane joins the
       cells on either side), then those pixels are dropped. The prediction there still
       shapes the predicted cells, as predicted borders on GT borders do.
    5. Slices are scored as independent 2D images (labels never cross slices) and pooled
       like the Fiji script: V_Rand from the pair counts added over slices, V_Info as
       the mean of the per-slice F-scores.
    6. The best score over the thresholds is reported, each with its own threshold
       (the first one on ties).

    Args:
        membrane_prob: ``(Y, X)`` or ``(Z, Y, X)`` probability of membrane (1 =
            membrane), float in [0, 1]; a bool/integer mask is read as 0/1 (nonzero =
            membrane).
        truth_membrane: same shape, nonzero / True = membrane. For the ISBI files
            (255 = cell, 0 = membrane) pass ``labels == 0``.
        thresholds: membrane-probability thresholds to try (default 0.0, 0.1, ..., 1.0).
        mask: optional bool array of the same shape (or one ``(Y, X)`` mask for every
            slice), True = scored; None scores every GT-cell pixel.

    Returns:
        ``{"vrand", "vinfo", "vrand_threshold", "vinfo_threshold"}`` as floats. Higher is
        better; 1.0 for a prediction whose cells match the GT cells.

    Raises:
        ValueError: on a shape mismatch, no threshold, or a GT without any (scored) cell.
    """
    prob = _as_slices(membrane_prob, "membrane_prob")
    truth = _as_slices(truth_membrane, "truth_membrane")
    _check_same_shape(prob, truth, "membrane_prob", "truth_membrane")
    scored = _as_mask(mask, truth.shape, "mask")  # a (Y, X) mask is used for every slice
    ts = [float(t) for t in np.atleast_1d(np.asarray(thresholds, dtype=np.float64))]
    if not ts:
        raise ValueError("thresholds is empty: give at least one membrane threshold.")
    if prob.dtype.kind not in "f":
        prob = prob != 0  # masks: nonzero = membrane, compared as 0/1 below

    gt_thin = [thin_borders(cell_labels(truth[z] != 0)) for z in range(truth.shape[0])]
    if scored is not None:  # IGNORE / outside the FOV: out of the counts, like GT borders
        for z, g in enumerate(gt_thin):
            g[~scored[z]] = 0
    if not any(g.any() for g in gt_thin):
        raise ValueError(
            "truth_membrane has no cell (non-membrane) pixel"
            + (" among the scored pixels" if scored is not None else "")
            + ": V_Rand / V_Info are undefined; truth must be True on membranes and False inside cells."
        )

    best = {"vrand": -1.0, "vinfo": -1.0, "vrand_threshold": ts[0], "vinfo_threshold": ts[0]}
    previous_membrane: np.ndarray | None = None
    pooled: dict[str, float] | None = None
    for t in ts:
        membrane = prob > t
        # Binary maps give identical masks at most thresholds: reuse the last scores.
        if previous_membrane is None or not np.array_equal(membrane, previous_membrane):
            per_slice = [
                _slice_statistics(gt_thin[z], thin_borders(cell_labels(membrane[z])))
                for z in range(prob.shape[0])
            ]
            pooled = _pool(per_slice)
            previous_membrane = membrane
        assert pooled is not None
        if pooled["vrand"] > best["vrand"]:
            best["vrand"], best["vrand_threshold"] = pooled["vrand"], t
        if pooled["vinfo"] > best["vinfo"]:
            best["vinfo"], best["vinfo_threshold"] = pooled["vinfo"], t
    return {k: float(v) for k, v in best.items()}


# --------------------------------------------------------------------------------------
# One entry point for the CLI and the GUI
# --------------------------------------------------------------------------------------


def _check_prediction(pred: np.ndarray) -> bool:
    """Return True if ``pred`` is a probability map (float), validating its range."""
    if pred.dtype.kind != "f":
        return False
    if np.isnan(pred).any():
        raise ValueError("the prediction contains NaN values; predict again or fill them before scoring.")
    lo, hi = float(pred.min(initial=0.0)), float(pred.max(initial=0.0))
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"a float prediction must be a probability map in [0, 1], got values in [{lo:g}, {hi:g}]; "
            "apply a sigmoid/softmax, or pass a binary mask as an integer/bool array (nonzero = structure)."
        )
    return True


def scoring_inputs(
    pred: np.ndarray,
    truth: np.ndarray,
    fov: np.ndarray | None = None,
    invert_truth: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Bring a prediction, labels and a FOV as stored to what :func:`evaluate` scores.

    The CLI (files) and the Evaluate widget (layers) both call this, so the same data
    give the same numbers. Labels follow the project convention
    (:func:`napari_unet.core.labels.labels_from_array`): pixels labelled IGNORE in the
    truth, and pixels outside the FOV, are not counted by the pixel scores (Dice, IoU,
    accuracy, Se/Sp/F1/AUC) nor by V_Rand / V_Info (which, like the ISBI protocol,
    count only pixels inside a ground-truth cell: IGNORE pixels are left out of those
    counts).

    Args:
        pred: ``(Y, X)`` or ``(Z, Y, X)``: a float probability map in [0, 1], or labels
            (integer/bool; structure = 1, or nonzero for a binary 0/255 mask).
        truth: labels of the same shape (an RGB label image is read from its first channel).
        fov: optional mask of the same shape (or one (Y, X) mask for a stack), nonzero = inside.
        invert_truth: zero = structure in the truth (ISBI 2012 files).

    Returns:
        ``(pred, truth, scored)`` as ``(Z, Y, X)``: float32 probabilities or a uint8 0/1
        mask; bool truth (structure); bool scored-pixel mask, or None when every pixel counts.

    Raises:
        ValueError: shapes differ, a float prediction outside [0, 1] or not finite, or
            no structure pixel left to score.
    """
    p = np.asarray(pred)
    if p.dtype.kind == "f":
        p = p.astype(np.float32)
        if not np.all(np.isfinite(p)):
            raise ValueError("The prediction holds NaN or infinite values: predict again, or choose another layer.")
        if p.size and (p.min() < 0 or p.max() > 1):
            raise ValueError(f"A float prediction must be a probability map in [0, 1], got values in "
                             f"[{p.min():g}, {p.max():g}]: choose the probability map or a mask.")
    else:
        p = (labels_from_array(p) == STRUCTURE).astype(np.uint8)
    labels = labels_from_array(truth, invert=invert_truth)
    p, labels = (a[None] if a.ndim == 2 else a for a in (p, labels))
    if p.shape != labels.shape:
        raise ValueError(f"The prediction has shape {p.shape} but the truth {labels.shape}: "
                         "compare a prediction with the ground truth of the same image.")
    scored = labels != IGNORE
    if fov is not None:
        inside = np.asarray(fov)
        inside = first_channel(inside) != 0
        if inside.shape == labels.shape[1:]:  # one FOV for every slice of a stack
            inside = np.broadcast_to(inside, labels.shape)
        if inside.shape != labels.shape:
            raise ValueError(f"The FOV mask has shape {inside.shape} but the truth {labels.shape}: "
                             "choose the FOV of the same image.")
        scored &= inside
    truth_fg = labels == STRUCTURE
    if not np.any(truth_fg & scored):
        raise ValueError("The ground truth has no structure pixel (label 1, or nonzero in a 0/255 mask) to "
                         "score: choose the ground-truth labels (ISBI 2012 files store membranes as 0: invert them).")
    return p, truth_fg, (None if scored.all() else scored)


def evaluate(
    pred: np.ndarray,
    truth: np.ndarray,
    task: str,
    fov: np.ndarray | None = None,
) -> dict[str, float]:
    """Score a prediction against ground truth, as the CLI and the GUI report it.

    Args:
        pred: ``(Y, X)`` or ``(Z, Y, X)`` prediction: either a binary mask
            (integer/bool, nonzero = structure) or a float probability map in [0, 1]
            (binarised at 0.5 for the pixel metrics).
        truth: ground truth of the same shape, nonzero = structure (membrane for EM,
            vessel for fundus). For the ISBI label files (255 = cell) pass
            ``labels == 0``.
        task: ``"em"`` or ``"fundus"``.
        fov: optional bool mask of the scored pixels (same shape, or one ``(Y, X)``
            mask for a stack; :func:`scoring_inputs` gives the FOV without the IGNORE
            pixels); every score counts only pixels inside it (V_Rand / V_Info: the
            GT-cell pixels inside it, see :func:`em_challenge_scores`).

    Returns:
        Dict of floats. Always ``dice, iou, pixel_accuracy`` (pooled over all pixels).
        ``"em"`` adds ``vrand, vinfo`` (:func:`em_challenge_scores`, from the
        probability if float, else from the mask read as a 0/1 map; NaN when no pixel
        inside ``fov`` lies in a GT cell). ``"fundus"`` adds
        ``se, sp, acc, f1`` and, for a float prediction, ``auc``
        (:func:`fundus_scores`).

    Raises:
        ValueError: unknown task, shape mismatch, a float prediction outside [0, 1],
            or a truth without any structure pixel (inside the FOV).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(repr(t) for t in TASKS)}.")
    p = np.asarray(pred)
    t = np.asarray(truth)
    _check_same_shape(p, t, "pred", "truth")
    if p.ndim not in (2, 3):
        raise ValueError(
            f"pred and truth must be (Y, X) or (Z, Y, X) arrays, got shape {p.shape}; "
            "squeeze channel axes and pass one label per pixel."
        )
    m = _as_mask(fov, p.shape, "fov")
    truth_fg = t != 0
    n_fg = np.count_nonzero(truth_fg if m is None else truth_fg & m)
    if n_fg == 0:
        where = " inside the FOV" if m is not None else ""
        raise ValueError(
            f"the ground truth has no structure pixel{where} (nonzero = structure); "
            "check that the right label layer / file was chosen (for ISBI labels use labels == 0)."
        )
    is_prob = _check_prediction(p)
    pred_fg = p > 0.5 if is_prob else p != 0

    tp, fp, tn, fn = confusion_counts(pred_fg, truth_fg, m)
    total = tp + fp + tn + fn
    results: dict[str, float] = {
        "dice": 2.0 * tp / (2 * tp + fp + fn),  # denominator > 0: truth has structure
        "iou": tp / (tp + fp + fn),
        "pixel_accuracy": (tp + tn) / total,
    }
    if task == "em":
        membrane_prob = p if is_prob else pred_fg.astype(np.float32)
        try:
            em = em_challenge_scores(membrane_prob, truth_fg, mask=m)
        except ValueError:
            if m is None:
                raise
            # Every cell pixel is IGNORE / outside the FOV (e.g. only membranes labelled):
            # the pixel scores stand, the cell scores are undefined.
            em = {"vrand": float("nan"), "vinfo": float("nan")}
        results["vrand"] = em["vrand"]
        results["vinfo"] = em["vinfo"]
    else:
        results.update(fundus_scores(p if is_prob else pred_fg, truth_fg, m))
    return {k: float(v) for k, v in results.items()}


def _metric_keys(task: str, is_prob: bool) -> list[str]:
    keys = ["dice", "iou", "pixel_accuracy"]
    if task == "em":
        keys += ["vrand", "vinfo"]
    else:
        keys += ["se", "sp", "acc", "f1"] + (["auc"] if is_prob else [])
    return keys


def evaluate_per_slice(
    pred: np.ndarray,
    truth: np.ndarray,
    task: str,
    fov: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """:func:`evaluate` on each slice of a ``(Z, Y, X)`` stack (for a per-slice table).

    Args:
        pred: ``(Z, Y, X)`` binary mask or float probability map.
        truth: ``(Z, Y, X)`` ground truth, nonzero = structure.
        task: ``"em"`` or ``"fundus"``.
        fov: optional ``(Z, Y, X)`` (or ``(Y, X)``, shared) bool mask.

    Returns:
        One dict per slice, in slice order, with the keys :func:`evaluate` returns. A
        slice whose truth has no structure pixel cannot be scored: its dict holds the
        same keys with NaN values instead of stopping the whole table.

    Raises:
        ValueError: unknown task, shape mismatch, input that is not 3D.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(repr(t) for t in TASKS)}.")
    p = np.asarray(pred)
    t = np.asarray(truth)
    _check_same_shape(p, t, "pred", "truth")
    if p.ndim != 3:
        raise ValueError(
            f"evaluate_per_slice needs (Z, Y, X) stacks, got shape {p.shape}; use evaluate() for one image."
        )
    m = _as_mask(fov, p.shape, "fov")
    is_prob = _check_prediction(p)
    rows: list[dict[str, float]] = []
    for z in range(p.shape[0]):
        m_z = None if m is None else m[z]
        if not np.any((t[z] != 0) if m_z is None else (t[z] != 0) & m_z):
            rows.append({k: float("nan") for k in _metric_keys(task, is_prob)})
            continue
        rows.append(evaluate(p[z], t[z], task, m_z))
    return rows
