"""How much does a kept fine-tune depend on its training seed, and does shipping the
weights half-way between the starting and the trained ones (`core.finetune.UPDATE_SHARE`)
steady it? A choosing split.

    python benchmarks/finetune_seeds.py [--seeds 0 1 2] [--device auto]

8 pairs of DRIVE test 01-10 as another camera's photographs (`_shift.foreign_fundus`),
ones the folds kept in benchmarks/finetune_pairs.py, are "corrected" (ground truth copied
in) and fine-tuned from the built-in model with each training seed, the folds deciding
on the trained weights (``update_share=1``, the rule before half-way weights). For each
run kept, F1 on photographs 11-14 (inside the FOV, at the model's threshold) of the
trained weights and of the half-way ones. Prints one row per run and a summary.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
from _common import table
from rounds import CHOOSE_POOLS, CHOOSE_SCORED, data, score

from napari_unet.core.checkpoint import Checkpoint, load_checkpoint
from napari_unet.core.finetune import UPDATE_SHARE, FineTune, FineTuneOptions, move_toward

PAIRS = [(3, 7), (4, 5), (6, 8), (7, 10), (5, 9), (3, 6), (7, 8), (4, 9)]  # DRIVE numbering


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    (images, labels), scored, _ = data("fundus", CHOOSE_POOLS["fundus"], CHOOSE_SCORED["fundus"], with_also=False)
    start = load_checkpoint("fundus-vessels")
    before = score(start, *scored, args.device)
    rows = []
    for pair in PAIRS:
        for seed in args.seeds:
            options = FineTuneOptions(device=args.device, seed=seed, update_share=1.0)
            run = FineTune(start, images, labels, [p - 1 for p in pair], options=options)
            for _event in run.run():
                pass
            row = {"pair": list(pair), "seed": seed, "outcome": run.result.report.outcome}
            if run.result.report.trained:
                halfway = copy.deepcopy(run.result.model)
                move_toward(start.model, halfway, UPDATE_SHARE)
                for name, model in (("trained", run.result.model), ("half-way", halfway)):
                    row[name] = score(Checkpoint(model, run.result.metadata, name), *scored, args.device) - before
            rows.append(row)
            print(row, flush=True)
    print(f"F1 of the built-in model on photographs 11-14: {before:.4f}")
    print(table(rows, ["pair", "seed", "outcome", "trained", "half-way"]))
    for name in ("trained", "half-way"):
        values = np.array([r[name] for r in rows if name in r])
        if len(values):
            print(f"{name}: {len(values)} runs kept, F1 change on 11-14 min {values.min():+.4f}, "
                  f"mean {values.mean():+.4f}, max {values.max():+.4f}")


if __name__ == "__main__":
    main()
