"""What Evaluate scores: a prediction, labels and a FOV as stored, checked and scored.

The CLI (files) and the Evaluate widget (layers) both call :func:`scoring_inputs` and
then :func:`evaluate` (and :func:`evaluate_per_slice` for a table), so the same data give
the same numbers; the checks here say, in the user's words, which input to choose again.
The scores themselves are in `napari_unet.core.metrics` (pixels) and
`napari_unet.core.cell_scores` (cells: V_Rand, V_Info).

Arrays are ``(Y, X)`` images or ``(Z, Y, X)`` stacks; labels follow the project convention
(`napari_unet.core.labels`: 0 background, 1 structure, 2 ignore).
"""

from __future__ import annotations

import numpy as np

from .cell_scores import em_challenge_scores
from .labels import IGNORE, STRUCTURE, first_channel, labels_from_array
from .metrics import as_mask, as_slices, confusion_counts, fundus_scores, require_same_shape

__all__ = ["TASKS", "scoring_inputs", "evaluate", "evaluate_per_slice"]

#: Tasks understood by :func:`evaluate`.
TASKS: tuple[str, ...] = ("em", "fundus")


# --------------------------------------------------------------------------------------
# Checks, in the user's words
# --------------------------------------------------------------------------------------


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}: choose 'em' (membranes in electron microscopy) or 'fundus' "
                         "(vessels in retinal photographs).")


def _is_probability_map(pred: np.ndarray) -> bool:
    """True for a float prediction (a probability map), after checking it is one.

    Args:
        pred: any shape; float = probabilities, integer/bool = a mask or labels.

    Raises:
        ValueError: a float prediction with NaN or infinite values, or outside [0, 1].
    """
    if pred.dtype.kind != "f":
        return False
    if not np.all(np.isfinite(pred)):
        raise ValueError("The prediction holds NaN or infinite values: predict again, or choose another layer.")
    if pred.size and (pred.min() < 0 or pred.max() > 1):
        raise ValueError(f"A float prediction must be a probability map in [0, 1], but this one holds values in "
                         f"[{pred.min():g}, {pred.max():g}]: choose the probability map or a mask.")
    return True


def _require_structure(truth_fg: np.ndarray, scored: np.ndarray | None, where: str) -> None:
    """Raise unless the ground truth has a structure pixel among the scored ones.

    Args:
        truth_fg: bool, True = structure; scored: bool of the same shape, or None (all).
        where: what ``scored`` leaves, for the message (e.g. ``" inside the FOV"``), or "".
    """
    if not np.any(truth_fg if scored is None else truth_fg & scored):
        raise ValueError(f"The ground truth has no structure pixel{where} to score: choose the ground-truth labels "
                         "(structure = 1, or nonzero in a 0/255 mask; ISBI 2012 files store membranes as 0: "
                         "invert them).")


# --------------------------------------------------------------------------------------
# Inputs as stored -> what is scored
# --------------------------------------------------------------------------------------


def scoring_inputs(
    pred: np.ndarray,
    truth: np.ndarray,
    fov: np.ndarray | None = None,
    invert_truth: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Bring a prediction, labels and a FOV as stored to what :func:`evaluate` scores.

    Labels follow the project convention
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
        _is_probability_map(p)
    else:
        p = (labels_from_array(p) == STRUCTURE).astype(np.uint8)
    labels = labels_from_array(truth, invert=invert_truth)
    p, labels = (a[None] if a.ndim == 2 else a for a in (p, labels))
    require_same_shape(p, labels, "the prediction", "the ground truth")
    scored = labels != IGNORE
    if fov is not None:
        scored &= as_mask(first_channel(np.asarray(fov)) != 0, labels.shape, "the FOV mask")
    truth_fg = labels == STRUCTURE
    _require_structure(truth_fg, scored, " inside the FOV" if fov is not None else "")
    return p, truth_fg, (None if scored.all() else scored)


# --------------------------------------------------------------------------------------
# Scores, as the CLI and the GUI report them
# --------------------------------------------------------------------------------------


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
            GT-cell pixels inside it, see
            :func:`napari_unet.core.cell_scores.em_challenge_scores`).

    Returns:
        Dict of floats. Always ``dice, iou, pixel_accuracy`` (pooled over all pixels).
        ``"em"`` adds ``vrand, vinfo`` (``em_challenge_scores``, from the
        probability if float, else from the mask read as a 0/1 map; NaN when no pixel
        inside ``fov`` lies in a GT cell). ``"fundus"`` adds
        ``se, sp, acc, f1`` and, for a float prediction, ``auc``
        (:func:`napari_unet.core.metrics.fundus_scores`).

    Raises:
        ValueError: unknown task, shape mismatch, a float prediction outside [0, 1],
            or a truth without any structure pixel (inside the FOV).
    """
    _check_task(task)
    p = np.asarray(pred)
    t = np.asarray(truth)
    require_same_shape(p, t, "the prediction", "the ground truth")
    as_slices(p, "the prediction")  # (Y, X) or (Z, Y, X): one label per pixel
    m = as_mask(fov, p.shape, "the FOV mask")
    truth_fg = t != 0
    _require_structure(truth_fg, m, " inside the FOV (among the scored pixels)" if m is not None else "")
    is_prob = _is_probability_map(p)
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
    _check_task(task)
    p = np.asarray(pred)
    t = np.asarray(truth)
    require_same_shape(p, t, "the prediction", "the ground truth")
    if p.ndim != 3:
        raise ValueError(f"A per-slice table needs a (Z, Y, X) stack, got shape {p.shape}: score one image "
                         "with evaluate().")
    m = as_mask(fov, p.shape, "the FOV mask")
    is_prob = _is_probability_map(p)
    rows: list[dict[str, float]] = []
    for z in range(p.shape[0]):
        m_z = None if m is None else m[z]
        if not np.any((t[z] != 0) if m_z is None else (t[z] != 0) & m_z):
            rows.append({k: float("nan") for k in _metric_keys(task, is_prob)})
            continue
        rows.append(evaluate(p[z], t[z], task, m_z))
    return rows
