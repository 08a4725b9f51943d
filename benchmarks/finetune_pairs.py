"""Do the fine-tunes the folds keep help on the other slices, and which pair teaches most?

    python benchmarks/finetune_pairs.py [--task fundus|em] [--split choose|report] [--pairs N] [--device auto]

Every pair of the pool of benchmarks/rounds.py is "corrected" (ground truth copied into
the labels) and fine-tuned from the built-in model with the default recipe
(`core.finetune`; other slices of the pool are its anchors). The model it ships is
scored on the scored slices at its own threshold (F1 inside the FOV for photographs,
membrane Dice for EM, and the V_Rand of its cells beside it). By default on the
choosing split (fundus: another camera's photographs, DRIVE test 01-10, scored on
11-14; EM: another lab's ISBI 8-19, scored on 20-24): fine-tune and ranking choices may
be made on it, never on the rounds benchmark's report split. Prints one row per pair
(the folds' held-out Dice, the outcome, the threshold shipped, the change on the scored
slices) and a summary of the kept ones.

Then the first round of benchmarks/rounds.py without its sampling noise: for each
ranking method of `core.uncertainty` (the default first), the pair it ranks first and
its change, against the mean over every pair (what 2 random slices gain on average, the
random arm's expectation). The methods' pairs are run first; ``--pairs N`` runs only N
random pairs besides (a fixed shuffled order), and the mean over them is an estimate.

``--split report`` does the same on the report split (fundus: every pair of 01-14,
scored on 15-20; EM: ISBI 8-24, scored on 25-29): a result to report, never to choose on.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from _common import table
from rounds import CHOOSE_POOLS, CHOOSE_SCORED, PER_ROUND, POOLS, SCORED, data, score

from napari_unet.core.checkpoint import Checkpoint, load_checkpoint
from napari_unet.core.finetune import FineTune, FineTuneOptions
from napari_unet.core.pipeline import Pipeline
from napari_unet.core.settings import PredictSettings
from napari_unet.core.uncertainty import METHODS, default_method, suggest


def first_pairs(pipeline: Pipeline, images: np.ndarray) -> dict[str, tuple[int, int]]:
    """The pair (pool indices, sorted) each ranking method puts first, the default first."""
    default = default_method(pipeline, images.shape[1:3])
    methods = [default] + [m for m in METHODS if m != default]
    return {m: tuple(sorted(suggest(pipeline, images, method=m).order[:PER_ROUND])) for m in methods}


def compare(what: str, changes: dict, sample: list, total: int, firsts: dict, name) -> None:
    """Print the mean of ``changes`` over the random ``sample`` of ``total`` pairs (the random
    arm's first-round expectation) and each method's first pair against it."""
    mean = np.mean([changes[pair] for pair in sample])
    print(f"\n{what}, first round: mean change over {len(sample)} of {total} pairs {mean:+.4f} (the random arm's "
          f"expectation{'' if len(sample) == total else ', estimated'})")
    for method, pair in firsts.items():
        better = sum(changes[other] > changes[pair] for other in sample)
        print(f"{method:8s} first pair {[name(z) for z in pair]}: change {changes[pair]:+.4f} "
              f"({changes[pair] - mean:+.4f} against the mean; {better} of {len(sample)} pairs gain more)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("fundus", "em"), default="fundus")
    parser.add_argument("--split", choices=("choose", "report"), default="choose")
    parser.add_argument("--pairs", type=int, default=None, help="how many random pairs for the mean (default all)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    pool_slices, scored_slices = ((CHOOSE_POOLS, CHOOSE_SCORED) if args.split == "choose" else (POOLS, SCORED))
    pool_slices, scored_slices = pool_slices[args.task], scored_slices[args.task]
    (images, labels), scored, _ = data(args.task, pool_slices, scored_slices, with_also=False)
    fundus = args.task == "fundus"
    name = (lambda z: z + 1) if fundus else (lambda z: z)  # DRIVE 01-20, ISBI 0-29
    where = f"{'photographs' if fundus else 'ISBI'} {name(scored_slices[0])}-{name(scored_slices[-1])}"
    start = load_checkpoint("fundus-vessels" if fundus else "em-membranes")
    before = np.atleast_1d(score(start, *scored, args.device, cells=not fundus))  # (Dice,) or (Dice, V_Rand)
    firsts = first_pairs(Pipeline(start, PredictSettings(device=args.device)), images)
    print({method: [name(pool_slices[z]) for z in pair] for method, pair in firsts.items()}, flush=True)
    others = list(itertools.combinations(range(len(images)), 2))
    np.random.default_rng(0).shuffle(others)
    sample = others[:args.pairs]  # random pairs: the mean over them is the random arm's expectation
    pairs = list(dict.fromkeys([*firsts.values(), *sample]))
    rows, changes, cells = [], {}, {}  # pair -> change of Dice (F1); of V_Rand (EM)
    for pair in pairs:
        tick = time.perf_counter()
        run = FineTune(start, images, labels, list(pair), options=FineTuneOptions(device=args.device))
        for _event in run.run():
            pass
        report = run.result.report
        after = np.atleast_1d(score(Checkpoint(run.result.model, run.result.metadata, "tuned"), *scored,
                                    args.device, cells=not fundus))
        changes[pair] = float(after[0] - before[0])
        if not fundus:
            cells[pair] = float(after[1] - before[1])
        rows.append({"pair": [name(pool_slices[z]) for z in pair], "outcome": report.outcome,
                     "threshold": report.threshold, "zoom": report.zoom,
                     "folds": " ".join(f"{f.start_dice:.3f}→{f.dice:.3f}" for f in report.folds),
                     "change": changes[pair], "V_Rand change": cells.get(pair, "-"),
                     "seconds": time.perf_counter() - tick})
        print(rows[-1], flush=True)
    print(f"{'F1' if fundus else 'Dice, V_Rand'} of the built-in model on {where}: "
          f"{', '.join(f'{b:.4f}' for b in before)}")
    print(table(rows, ["pair", "outcome", "threshold", "zoom", "folds", "change", "V_Rand change", "seconds"]))
    kept = np.array([r["change"] for r in rows if r["outcome"] == "gain"])
    if len(kept):
        print(f"\nkept {len(kept)} of {len(rows)}: change on {where} min {kept.min():+.4f}, "
              f"median {np.median(kept):+.4f}, max {kept.max():+.4f}; "
              f"{int((kept < -0.005).sum())} worse by more than 0.005")
    if not sample:
        return
    pool_name = lambda z: name(pool_slices[z])  # noqa: E731
    compare("F1" if fundus else "Dice", changes, sample, len(others), firsts, pool_name)
    if cells:
        compare("V_Rand of the cells", cells, sample, len(others), firsts, pool_name)


if __name__ == "__main__":
    main()
