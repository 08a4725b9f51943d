"""The fine-tune in the user's words: the plan before, the progress during, the outcome
after, and one line per round of a model's history. The GUI and the CLI both show these."""

from __future__ import annotations

import numpy as np

from ..train import TrainEvent
from .options import FineTuneOptions, FineTuneReport, FoldScore
from .rules import make_folds


def describe_plan(corrected: list[int], options: FineTuneOptions, anchors: list[int] = ()) -> str:
    """What the fine-tune will do, e.g. ": 2 models trained with each corrected slice held out
    in turn, kept only if they beat it there; then trained on slices [3, 7] (30 steps each),
    keeping the model's own mask on slices [0, 29]"."""
    keeping = f", keeping the model's own mask on slice(s) {list(anchors)}" if anchors else ""
    if not options.verify:
        return f" on slice(s) {corrected}{keeping}, kept unchecked ({options.steps} steps)"
    held = "each corrected slice" if len(corrected) > 1 else "each half of the corrected slice"
    return (f": {len(make_folds(len(corrected)))} models trained with {held} held out in turn, kept only if they "
            f"beat it there; then trained on slice(s) {corrected} ({options.steps} steps each){keeping}")


def describe_montage_plan(chunks: int, options: FineTuneOptions) -> str:
    """What a fine-tune on ``chunks`` corrected chunks of a montage will do, e.g. "2 models
    trained with neighbouring chunks held out in turn, kept only if they beat it there
    (30 steps each)"."""
    if not options.verify:
        return f"trained on all of them and kept unchecked ({options.steps} steps)"
    held = "neighbouring chunks held out in turn" if chunks > 1 else "each half of the chunk held out in turn"
    return (f"{len(make_folds(chunks))} models trained with {held}, kept only if they beat it there "
            f"({options.steps} steps each)")


def describe_progress(events: list[TrainEvent]) -> str:
    """One line on a running fine-tune from its events so far (the last one's stage and
    step, the last held-out check), e.g. "step 12/45, loss 0.312, check fold 2/2: a model
    trained without one held-out part; last held-out Dice 0.701 → 0.733, about 40 s left"."""
    last = events[-1]
    if last.stage == "scale":
        return "Checking the scale and threshold the model sees your corrected slices at…"
    if last.stage.startswith("fold"):
        what = f"check {last.stage}: a model trained without one held-out part"
    else:
        what = "verified: training on all corrected slices"
    checks = [e for e in events if e.val_dice is not None]
    if checks:  # the last fold scored: the starting model's held-out Dice, then the new one's
        what += (f"; last held-out Dice {checks[-1].best_dice:.3f} → {checks[-1].val_dice:.3f}"
                 + (" (no gain there)" if checks[-1].refused else ""))
    loss = f"loss {last.loss:.3f}, " if last.loss is not None else ""
    return f"step {last.step}/{last.total}, {loss}{what}, about {last.eta_s:.0f} s left"


def describe_outcome(report: FineTuneReport) -> str:
    """One plain line on what the fine-tune kept and why (`FineTuneResult.report`; a
    history record: ``FineTuneReport.from_dict``)."""
    outcome, part = report.outcome, report.part  # what the user corrects: slices, or a montage's regions
    if outcome == "agree":
        return ("Your corrections agree with the model's prediction: there is nothing to learn, so the starting "
                f"model is kept. Correct a {part} where it is clearly wrong.")
    if outcome == "stopped":
        return "Stopped before the fine-tune was checked: the starting model is kept."
    if outcome == "unverified":
        return f"Trained on all corrected {part}s and kept without a check (verification was off)."
    if report.calibration is not None and report.calibration.outcome == "gain" and report.kept:
        # The scale or threshold changed; then training on top was kept or not.
        return f"{describe_calibration(report)} {_describe_weights(report, 'Training on top was not kept')}"
    return _describe_weights(report)


def describe_calibration(report: FineTuneReport) -> str:
    """The verified change of scale and threshold, e.g. "Re-scaled: your slices are shown to
    the model at 0.79 x and its threshold is 0.50 → 0.80, verified where it was not chosen
    (2 held-out parts, better on each: Dice 0.361 → 0.426, V_Rand 0.798 → 0.904)."."""
    calibration, guard = report.calibration, report.guard_name
    mean = _means(calibration.folds)
    changes = []
    if calibration.zoom != calibration.start_zoom:
        changes.append(f"your {report.part}s are shown to the model at {calibration.zoom:.2f} x")
    if calibration.threshold != report.start_threshold:
        changes.append(f"its threshold is {report.start_threshold:.2f} → {calibration.threshold:.2f}")
    return (f"Re-scaled: {' and '.join(changes)}, verified where it was not chosen ({len(calibration.folds)} "
            f"held-out parts, better on each: Dice {mean['start_dice']:.3f} → {mean['dice']:.3f}, {guard} "
            f"{mean['start_guard']:.3f} → {mean['guard']:.3f}).")


def _means(folds: list[FoldScore]) -> dict[str, float]:
    return {key: float(np.mean([getattr(f, key) for f in folds])) for key in ("start_dice", "dice", "start_guard",
                                                                               "guard")}


def _describe_weights(report: FineTuneReport, refused: str = "The starting model is kept") -> str:
    """The line on the training stage (`describe_outcome` after any re-scaling);
    ``refused`` opens it when the training was not kept."""
    outcome, guard, folds, part = report.outcome, report.guard_name, report.folds, report.part
    mean = _means(folds)
    scores = (f"Dice {mean['start_dice']:.3f} → {mean['dice']:.3f}, {guard} {mean['start_guard']:.3f} → "
              f"{mean['guard']:.3f}")
    if outcome == "gain":
        where = folds[0].name if len(folds) == 1 else f"{len(folds)} held-out parts, better on each"
        before = report.calibration.threshold if report.calibration is not None else report.start_threshold
        threshold = f", threshold {before:.2f} → {report.threshold:.2f}" if report.threshold != before else ""
        return (f"Verified where it did not learn ({where}): {scores}{threshold}. Trained on all corrected {part}s "
                f"and kept.")
    if outcome == "small":
        return (f"{refused}: where the fine-tuned models did not learn, the gain is too small to "
                f"trust ({scores}). Correct a {part} where the model is clearly wrong.")
    worst = min(folds, key=lambda f: (f.dice - f.start_dice) if outcome == "no gain" else (f.guard - f.start_guard))
    if outcome == "guard":
        broken = "cells merged" if guard == "V_Rand" else "vessels broken"
        return (f"{refused}: trained without {worst.name}, the model got worse there for the "
                f"segmentation ({guard} {worst.start_guard:.3f} → {worst.guard:.3f}: {broken}), although "
                f"Dice went {worst.start_dice:.3f} → {worst.dice:.3f}. Correct more {part}s.")
    advice = (f"your corrections agree with the model where it did not learn from them: correct a {part} where it is "
              "clearly wrong" if worst.start_dice >= 0.7 else f"correct more {part}s, or train for more steps")
    return (f"{refused}: trained without {worst.name}, the model did not beat it there (Dice "
            f"{worst.start_dice:.3f} → {worst.dice:.3f}); {advice}.")


def describe_history(history: list[dict]) -> list[str]:
    """One line per fine-tune round of a model's history (`ModelDescription.history`, as
    stored: `FineTuneReport.to_dict` records, and older ones): date, the slices learnt,
    the held-out score before and after, kept or refused."""
    lines = []
    for record in history:
        report = record.get("fine_tune")
        if not report:
            continue
        slices = record.get("corrected_slices", record.get("train_slices", []))
        learnt = record.get("corrected_parts") or f"slices {slices}"
        calibration = report.get("calibration") or {}
        rescaled = calibration.get("outcome") == "gain" and report.get("kept")
        if report.get("folds"):  # cross-validated (after a verified re-scaling, from its baseline)
            first = calibration["folds"] if rescaled else report["folds"]
            before = np.mean([f["start_dice"] for f in first])
            last = report["folds"] if report.get("trained", True) or not rescaled else calibration["folds"]
            after = np.mean([f["dice"] for f in last])
            scores = f"held-out Dice {before:.3f} → {after:.3f}"
        elif "start_score" in report:  # models fine-tuned before cross-validation
            scores = f"Dice on the held-out edits {report['start_score']:.3f} → {report['best_score']:.3f}"
        else:
            scores = "not checked"
        kept = report.get("kept", report.get("best_step", 0) > 0)
        outcome = "kept" if kept else "refused (the starting model was kept)"
        if rescaled:
            trained = "trained" if report.get("trained") else "training refused"
            outcome = (f"re-scaled ({calibration['zoom']:.2f} x, threshold {calibration['threshold']:.2f}), "
                       f"{trained}, kept")
        lines.append(f"{str(record.get('date', ''))[:10]}: {learnt}, {scores}, {outcome}")
    return lines
