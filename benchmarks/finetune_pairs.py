"""Do the fine-tunes the folds keep help on the other photographs? A choosing split.

    python benchmarks/finetune_pairs.py [--pairs 45] [--device auto]

Every pair of DRIVE test 01-10 as another camera's photographs (`_shift.foreign_fundus`)
is "corrected" (ground truth copied into the labels) and fine-tuned from the built-in
model with the default recipe (`core.finetune`; the other 8 photographs are its
anchors). The model it ships is scored on photographs 11-14, F1 inside the FOV at its
own threshold. These are the photographs fine-tune choices may be made on: the rounds
benchmark scores 15-20 and the fine-tune benchmark's fundus proxies are built apart.
Prints one row per pair (the folds' held-out Dice, the outcome, the threshold shipped,
F1 change on 11-14) and a summary of the kept ones.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from _common import table
from rounds import CHOOSE_POOLS, CHOOSE_SCORED, data, score

from napari_unet.core.checkpoint import Checkpoint, load_checkpoint
from napari_unet.core.finetune import FineTune, FineTuneOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=45, help="how many pairs, in a fixed shuffled order")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    (images, labels), scored, _ = data("fundus", CHOOSE_POOLS["fundus"], CHOOSE_SCORED["fundus"], with_also=False)
    start = load_checkpoint("fundus-vessels")
    before = score(start, *scored, args.device)
    pairs = list(itertools.combinations(range(len(images)), 2))
    np.random.default_rng(0).shuffle(pairs)
    rows = []
    for pair in pairs[:args.pairs]:
        tick = time.perf_counter()
        run = FineTune(start, images, labels, list(pair), options=FineTuneOptions(device=args.device))
        for _event in run.run():
            pass
        report = run.result.report
        after = score(Checkpoint(run.result.model, run.result.metadata, "tuned"), *scored, args.device)
        rows.append({"pair": [p + 1 for p in pair], "outcome": report["outcome"], "threshold": report["threshold"],
                     "folds": " ".join(f"{f['start_dice']:.3f}→{f['dice']:.3f}" for f in report["folds"]),
                     "F1 change": after - before, "seconds": time.perf_counter() - tick})
        print(rows[-1], flush=True)
    print(f"F1 of the built-in model on photographs 11-14: {before:.4f}")
    print(table(rows, ["pair", "outcome", "threshold", "folds", "F1 change", "seconds"]))
    kept = np.array([r["F1 change"] for r in rows if r["outcome"] == "gain"])
    if len(kept):
        print(f"\nkept {len(kept)} of {len(rows)}: F1 change on 11-14 min {kept.min():+.4f}, "
              f"median {np.median(kept):+.4f}, max {kept.max():+.4f}; "
              f"{int((kept < -0.005).sum())} worse by more than 0.005")


if __name__ == "__main__":
    main()
