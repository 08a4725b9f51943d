"""Rounds of correct -> fine-tune -> re-predict: the slices `suggest` ranks first vs random ones.

    python benchmarks/rounds.py [--task em|fundus] [--split report|choose] [--rounds 3] [--seeds 0 1 2]

EM: another lab's EM (`_shift.foreign_em` of ISBI slices: rescaled x1.5, softer, noisier,
labels 2 px wide); pool ISBI 8-24, scored on ISBI 25-29. Fundus: another camera's
photographs (`_shift.foreign_fundus` of DRIVE test images); pool 01-14, scored on 15-20
(F1 inside the FOV). Also scored, as a larger set of untouched slices: DRIVE training
21-40 shifted the same way (20 photographs) or ISBI 0-7 (EM); the built-in models learnt
from these in their own colours and pixel size, so they tell forgetting more than
generalisation. The built-in model starts. Each round takes 2 slices of the pool,
"corrects" them by copying their ground truth into the labels, fine-tunes with the
default recipe from the previous round's model on every slice corrected so far, and
re-predicts. Suggested: the 2 slices `core.uncertainty.suggest` ranks first;
random: 2 random uncorrected slices (one run per seed). Scored after every round on
slices no arm may pick, at the model's own threshold; for EM also the mean V_Rand of the
cells there, beside the Dice (the fine-tune chooses its settings by both; the target is
on Dice). Prints the table and writes docs/rounds_<task>.png.

``--split choose`` runs the same rounds on slices choices may be made on (fundus: pool
DRIVE test 01-10, scored on 11-14, as benchmarks/finetune_pairs.py; EM: pool ISBI 8-19,
scored on 20-24), without the larger set, and writes no plot.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import ROOT, drive, isbi, table
from _shift import foreign_em, foreign_fundus

from napari_unet.core.cell_scores import em_challenge_scores
from napari_unet.core.checkpoint import Checkpoint, load_checkpoint
from napari_unet.core.finetune import FineTune, FineTuneOptions
from napari_unet.core.labels import IGNORE, STRUCTURE
from napari_unet.core.metrics import dice
from napari_unet.core.pipeline import Pipeline
from napari_unet.core.settings import PredictSettings
from napari_unet.core.uncertainty import suggest

POOLS = {"em": list(range(8, 25)), "fundus": list(range(0, 14))}
SCORED = {"em": list(range(25, 30)), "fundus": list(range(14, 20))}
#: The choosing split (``--split choose``): inside the report split's pool.
CHOOSE_POOLS = {"em": list(range(8, 20)), "fundus": list(range(0, 10))}
CHOOSE_SCORED = {"em": list(range(20, 25)), "fundus": list(range(10, 14))}
ALSO_SCORED = {"em": list(range(0, 8)), "fundus": list(range(20))}  # ISBI 0-7; DRIVE training 21-40
PER_ROUND = 2


def score(checkpoint: Checkpoint, images, labels, device: str, cells: bool = False):
    """Dice (F1) of the mask at the model's threshold, over labelled pixels (fundus: the FOV);
    with ``cells``, (Dice, mean V_Rand of the cells per slice after border thinning)."""
    mask = Pipeline(checkpoint, PredictSettings(device=device)).run(images).mask.astype(bool)
    overlap = dice(mask, labels == STRUCTURE, mask=labels != IGNORE)
    if not cells:
        return overlap
    vrand = [em_challenge_scores(m.astype(np.uint8), truth == STRUCTURE, thresholds=[0.5],
                                 mask=truth != IGNORE)["vrand"] for m, truth in zip(mask, labels)]
    return overlap, float(np.mean(vrand))


def data(task: str, pool: list[int], scored: list[int], with_also: bool = True):
    """(pool images, labels), (scored images, labels), (also scored images, labels, or
    None) of another lab's EM or camera's fundus."""
    if task == "em":
        em = isbi()
        return (foreign_em(em.images[pool], em.labels[pool]),
                foreign_em(em.images[scored], em.labels[scored], seed=1),
                foreign_em(em.images[ALSO_SCORED[task]], em.labels[ALSO_SCORED[task]], seed=2) if with_also else None)
    test = drive("test")
    images, labels, _fov = foreign_fundus(test.images, test.labels, test.fov)
    also = None
    if with_also:
        training = drive("training")
        also = foreign_fundus(training.images, training.labels, training.fov)[:2]
    return (images[pool], labels[pool]), (images[scored], labels[scored]), also


def scores(model: Checkpoint, scored, also, device: str, cells: bool) -> dict:
    """"dice" on the scored slices, "also" on the larger set (nan without it) and, with
    ``cells`` (EM), "cells": the mean V_Rand on the scored slices."""
    row = {"also": score(model, *also, device) if also else float("nan")}
    if cells:
        row["dice"], row["cells"] = score(model, *scored, device, cells=True)
    else:
        row["dice"] = score(model, *scored, device)
    return row


def run_arm(name: str, start: Checkpoint, pool, scored, also, rounds: int, device: str, seed: int | None,
            names: list[int], cells: bool = False) -> list[dict]:
    """One sequence of rounds; ``seed`` None = the suggested slices; ``cells``: score V_Rand too."""
    images, labels = pool
    rng = np.random.default_rng(seed)
    model, corrected, rows = start, [], []
    rows.append({"arm": name, "round": 0, "corrected": 0, **scores(model, scored, also, device, cells), "seconds": 0.0})
    for r in range(1, rounds + 1):
        tick = time.perf_counter()
        if seed is None:
            chosen = suggest(Pipeline(model, PredictSettings(device=device)), images, corrected).order[:PER_ROUND]
        else:
            left = [z for z in range(len(images)) if z not in corrected]
            chosen = [int(z) for z in rng.choice(left, PER_ROUND, replace=False)]
        corrected += chosen
        run = FineTune(model, images, labels, corrected, options=FineTuneOptions(device=device),
                       start_name=f"round {r - 1}")
        for _event in run.run():
            pass
        model = Checkpoint(run.result.model, run.result.metadata, f"{name} round {r}")
        seconds = time.perf_counter() - tick  # scoring not timed: no user waits for it
        rows.append({"arm": name, "round": r, "corrected": len(corrected), "picked": [names[z] for z in chosen],
                     **scores(model, scored, also, device, cells), "seconds": seconds,
                     "outcome": run.result.report.outcome})
        print(rows[-1], flush=True)
    return rows


def plot(rows: list[dict], path, title: str) -> None:
    """Dice on the scored slices after each round, one line per arm (Pillow)."""
    from PIL import Image, ImageDraw

    width, height, pad = 640, 400, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    values = [r["dice"] for r in rows]
    low, high = min(values) - 0.01, max(values) + 0.01
    rounds = max(r["round"] for r in rows)

    def at(round_: int, value: float) -> tuple[float, float]:
        return (pad + round_ / max(1, rounds) * (width - 2 * pad),
                height - pad - (value - low) / (high - low) * (height - 2 * pad))

    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    for k in range(rounds + 1):
        x, _ = at(k, low)
        draw.text((x - 4, height - pad + 8), str(k), fill="black")
    for v in np.linspace(low, high, 5):
        _, y = at(0, v)
        draw.text((5, y - 6), f"{v:.3f}", fill="black")
    draw.text((width // 2 - 60, height - 22), "round (2 slices each)", fill="black")
    draw.text((pad, 15), title, fill="black")
    colours = {"suggested": "crimson"}
    for n, arm in enumerate(dict.fromkeys(r["arm"] for r in rows)):
        points = [at(r["round"], r["dice"]) for r in rows if r["arm"] == arm]
        colour = colours.get(arm, ("grey", "steelblue", "darkgreen")[n % 3])
        draw.line(points, fill=colour, width=3 if arm == "suggested" else 1)
        draw.text((width - pad - 120, pad + 10 + 14 * n), arm, fill=colour)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("em", "fundus"), default="em")
    parser.add_argument("--split", choices=("report", "choose"), default="report")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    choose = args.split == "choose"
    pool_slices = (CHOOSE_POOLS if choose else POOLS)[args.task]
    pool, scored, also = data(args.task, pool_slices, (CHOOSE_SCORED if choose else SCORED)[args.task], not choose)
    start = load_checkpoint("em-membranes" if args.task == "em" else "fundus-vessels")
    names = pool_slices if args.task == "em" else [z + 1 for z in pool_slices]  # ISBI 0-29, DRIVE 01-20
    cells = args.task == "em"
    rows = run_arm("suggested", start, pool, scored, also, args.rounds, args.device, None, names, cells)
    for seed in args.seeds:
        rows += run_arm(f"random {seed}", start, pool, scored, also, args.rounds, args.device, seed, names, cells)
    print(table(rows, ["arm", "round", "corrected", "picked", "dice"] + ["cells"] * cells
                + ["also", "seconds", "outcome"]))
    summaries = [("dice", "scored slices")] + [("cells", "V_Rand of the cells, scored slices")] * cells
    for key, what in summaries + [("also", "also scored")] * (not choose):
        random_mean = {k: np.mean([r[key] for r in rows if r["arm"] != "suggested" and r["round"] == k])
                       for k in range(args.rounds + 1)}
        suggested = {r["round"]: r[key] for r in rows if r["arm"] == "suggested"}
        print(f"\n{what}\nround  suggested  random (mean)  difference")
        for k in range(args.rounds + 1):
            print(f"{k:5d}  {suggested[k]:.4f}     {random_mean[k]:.4f}         {suggested[k] - random_mean[k]:+.4f}")
    if choose:
        return
    path = ROOT / "docs" / f"rounds_{args.task}.png"
    title = ("membrane Dice on ISBI 25-29 (another lab's EM)" if args.task == "em"
             else "vessel F1 on DRIVE test 15-20 (another camera)")
    plot(rows, path, title)
    print(f"plot -> {path}")


if __name__ == "__main__":
    main()
