"""`napari-unet evaluate`: score a prediction against ground truth, as the Evaluate widget does."""

from __future__ import annotations

import argparse
import json

from ..core.evaluate import TASKS
from ._common import PathLike, UsageError


def add_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("--pred", required=True, help="mask (nonzero = structure) or float probability map")
    e.add_argument("--truth", required=True, help="ground truth, nonzero = structure")
    e.add_argument("--fov", help="field-of-view mask(s): score only inside")
    e.add_argument("--invert-truth", action="store_true", help="structure is 0 in the truth file (ISBI 2012)")
    e.add_argument("--task", required=True, choices=TASKS, help="em (Dice, IoU, V_Rand, V_Info) or fundus "
                   "(Se, Sp, Acc, F1, AUC)")
    e.add_argument("--json", action="store_true", help="print the scores as one JSON object on the last line")


def run(args: argparse.Namespace) -> int:
    evaluate(args.pred, args.truth, args.task, fov=args.fov, invert_truth=args.invert_truth, as_json=args.json)
    return 0


def evaluate(pred: PathLike, truth: PathLike, task: str, *, fov: PathLike | None = None, invert_truth: bool = False,
             as_json: bool = False) -> dict[str, float]:
    """Score the prediction file ``pred`` against the ground-truth file ``truth``; print the scores.

    Args:
        pred: (Z, Y, X) or (Y, X): a mask (nonzero = structure) or a float probability map in [0, 1].
        truth: the same shape: nonzero = structure (or 0/1/2 with 2 = ignore).
        task: "em" or "fundus": which scores.
        fov: field-of-view mask(s): only pixels inside count (one (Y, X) mask may serve a stack).
        invert_truth: structure is 0 in ``truth`` (ISBI 2012 files).
        as_json: also print the scores as one JSON object.

    Returns:
        The scores, e.g. {"dice": 0.81, ...}.
    """
    from ..core.data import read_stack
    from ..core.evaluate import evaluate as score
    from ..core.evaluate import scoring_inputs

    if task not in TASKS:
        raise UsageError(f"--task {task}: choose em or fundus.")
    mask = read_stack(fov) if fov else None
    p, t, scored = scoring_inputs(read_stack(pred), read_stack(truth), mask, invert_truth)
    scores = score(p, t, task, fov=scored)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
    print(f"{task} scores over {t.shape[0]} slice(s): {summary}")
    if as_json:
        print(json.dumps({k: float(v) for k, v in scores.items()}))
    return scores
