"""Pixel scores of binary segmentations: Dice, IoU, accuracy, ROC AUC, DRIVE scores, clDice.

Everything here is plain numpy / scipy (no Qt, napari or torch), so the CLI, the GUI,
the training loop and the benchmarks all score a prediction the same way. The scores of
the cells between membranes (V_Rand, V_Info; ISBI 2012) are in
`napari_unet.core.cell_scores`; what Evaluate does with a prediction and labels as stored
is in `napari_unet.core.evaluate`.

Conventions:

* A *mask* is any array whose nonzero entries mark the structure (membrane, vessel).
* A *probability map* is a floating array in [0, 1]; it is thresholded (``> 0.5`` by
  default) wherever a binary decision is needed.
* Arrays are ``(Y, X)`` images or ``(Z, Y, X)`` / ``(N, Y, X)`` stacks. Pixel metrics
  pool every pixel of the stack; clDice skeletonises each slice as 2D.

Reference scoring rule (see ``../shared/data/README.md``):

* DRIVE: threshold at 0.5, count only pixels inside the field-of-view (FOV) mask,
  pool the pixels of all test images, report Se, Sp, Acc, F1 and ROC AUC.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "confusion_counts",
    "dice",
    "iou",
    "pixel_accuracy",
    "roc_auc",
    "fundus_scores",
    "cl_dice",
]


# --------------------------------------------------------------------------------------
# Checks shared by the scoring modules (each caller names its arrays in the user's words)
# --------------------------------------------------------------------------------------


def require_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise ValueError unless ``a`` and ``b`` have one shape.

    Args:
        a, b: arrays of any shape.
        name_a, name_b: how the message calls them, e.g. ``"the prediction"``,
            ``"the ground truth"``.
    """
    if a.shape != b.shape:
        raise ValueError(
            f"{_capitalised(name_a)} and {name_b} differ in shape ({a.shape} and {b.shape}): "
            "compare a prediction with the ground truth of the same image(s)."
        )


def as_mask(mask: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    """Return ``mask`` as a bool array of ``shape`` (or None).

    A single ``(Y, X)`` mask is accepted for a ``(N, Y, X)`` stack and applied to every
    image, because a fixed FOV is common for stacks from one camera.

    Args:
        mask: None, or an array of ``shape`` or ``shape[1:]``; nonzero = scored.
        shape: ``(Y, X)`` or ``(N, Y, X)`` of the images scored.
        name: how the message calls the mask, e.g. ``"the FOV mask"``.

    Returns:
        ``shape`` bool (a read-only broadcast view for a shared ``(Y, X)`` mask), or None.
    """
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape == shape:
        return m.astype(bool, copy=False)
    if m.ndim == len(shape) - 1 and m.shape == shape[1:]:
        return np.broadcast_to(m.astype(bool, copy=False), shape)
    raise ValueError(
        f"The shape of {name}, {m.shape}, is not the images' {shape} (nor {shape[1:]}, one mask "
        "for every slice): choose the mask of these images."
    )


def as_slices(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as ``(Z, Y, X)``: a ``(Y, X)`` image becomes one slice.

    Args:
        array: ``(Y, X)`` or ``(Z, Y, X)``, one value per pixel.
        name: how the message calls it, e.g. ``"the ground truth"``.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        return a[np.newaxis]
    if a.ndim == 3:
        return a
    raise ValueError(
        f"The shape of {name}, {a.shape}, is neither (Y, X) nor (Z, Y, X): give one value per pixel "
        "of an image or a stack (no colour or channel axis)."
    )


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------------------
# Pixel metrics
# --------------------------------------------------------------------------------------


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
    require_same_shape(p, t, "the prediction", "the ground truth")
    p = p.astype(bool, copy=False)
    t = t.astype(bool, copy=False)
    m = as_mask(mask, p.shape, "the mask of scored pixels")
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
        raise ValueError("The mask of scored pixels (FOV) selects no pixel, so there is nothing to score: "
                         "choose the FOV mask of these images.")
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
    require_same_shape(p, t, "the probability map", "the ground truth")
    m = as_mask(mask, p.shape, "the mask of scored pixels")
    if m is None:
        scores = p.ravel()
        labels = t.ravel().astype(bool, copy=False)
    else:
        scores = p[m]
        labels = t[m].astype(bool, copy=False)
    if scores.dtype.kind == "f" and np.isnan(scores).any():
        raise ValueError("The probability map holds NaN values, so its ROC AUC is undefined: predict again.")
    n_pos = int(np.count_nonzero(labels))
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            "The ROC AUC needs both structure and background pixels in the ground truth (inside the FOV), but "
            f"it has {n_pos} structure and {n_neg} background pixel(s) there: score images that show both."
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
    require_same_shape(p, t, "the probability map", "the ground truth")
    is_prob = p.dtype.kind == "f"
    pred = p > threshold if is_prob else p != 0
    m = as_mask(fov, p.shape, "the FOV mask")
    tp, fp, tn, fn = confusion_counts(pred, t, m)
    total = tp + fp + tn + fn
    if total == 0:
        raise ValueError("The FOV mask selects no pixel, so there is nothing to score: choose the FOV mask of "
                         "these images (nonzero inside the field of view).")
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

    p = as_slices(np.asarray(pred) != 0, "the prediction")
    t = as_slices(np.asarray(truth) != 0, "the ground truth")
    require_same_shape(p, t, "the prediction", "the ground truth")
    if mask is not None:
        m = as_mask(mask, p.shape, "the mask of scored pixels")
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
