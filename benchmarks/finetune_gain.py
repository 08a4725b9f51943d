"""Does the one-click fine-tune help on slices it never saw? (and does the guard matter?)

    python benchmarks/finetune_gain.py [--steps 120] [--device auto]

Starts from the built-in EM model and a *different* EM-like stack (the project's generator,
seed 1: other cells, other texture). Slices 0 and 1 play the user's corrected slices (their
ground truth is the correction); as in the widget, the last one is held out for validation.
Scores are measured on slices 2-5, which the fine-tune never sees, for: the starting model,
the project's recipe (`fine_tune_recipe`), and a naive recipe (AdamW 3e-4, no warm-up,
BatchNorm statistics updated, no hold-out: the last step is kept).
"""

from __future__ import annotations

import argparse
import copy
import time

from _common import table

from napari_unet.core.checkpoint import Checkpoint, load_checkpoint
from napari_unet.core.data import normalize
from napari_unet.core.metrics import dice, em_challenge_scores
from napari_unet.core.predict import predict_stack
from napari_unet.core.synthetic import em_stack
from napari_unet.core.train import TrainConfig, TrainingData, fine_tune_recipe, train

UNSEEN = [2, 3, 4, 5]


def score(checkpoint: Checkpoint, images, labels, device) -> dict:
    prob = predict_stack(checkpoint, images[UNSEEN], device=device)
    truth = labels[UNSEEN] == 1
    challenge = em_challenge_scores(prob, truth)
    return {"dice": dice(prob > 0.5, truth), "vrand": challenge["vrand"], "vinfo": challenge["vinfo"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    start = load_checkpoint("em-membranes")
    image, labels = em_stack(1, (6, 384, 384))
    images = image[..., None]
    normalized = normalize(images, start.normalization)
    rows = [{"model": "built-in em-membranes (start)", **score(start, images, labels, args.device)}]
    recipes = {
        "fine_tune_recipe (project)": (fine_tune_recipe(args.steps, device=args.device), [0], [1]),
        "naive (lr 3e-4, BN updated, last step)": (
            TrainConfig(steps=args.steps, crop_size=192, learning_rate=3e-4, warmup_steps=1,
                        validate_every=10**6, device=args.device), [0, 1], []),
    }
    for name, (config, train_slices, val_slices) in recipes.items():
        model = copy.deepcopy(start.model)
        data = TrainingData(normalized, labels, train_slices, val_slices)
        tick = time.perf_counter()
        for _ in train(model, data, config):
            pass
        seconds = time.perf_counter() - tick
        tuned = Checkpoint(model, start.metadata, name)
        rows.append({"model": name, **score(tuned, images, labels, args.device), "seconds": seconds})
    print(f"EM-like stack (generator seed 1), scored on unseen slices {UNSEEN}, {args.steps} steps\n")
    print(table(rows, ["model", "dice", "vrand", "vinfo", "seconds"]))


if __name__ == "__main__":
    main()
