"""Does the one-click fine-tune help on another lab's data, for the segmentation a biologist uses?

    python benchmarks/finetune_gain.py [--task em fundus] [--recipes default ...] [--device auto]

Data (see `_shift.py`): EM = ISBI slices 25-29 (never used to train the built-in model) at
x1.5 pixel size, another contrast and noise, membranes drawn 2 px wide; fundus = DRIVE
test images recoloured (red-dominant, dark, no blue), resampled to 1,000 px and
JPEG-compressed. As a user would: the first 2 slices / images are corrected (their
labels are the correction; the edited pixels are where the built-in model disagreed),
the rest are never seen and are scored. EM: membrane Dice and V_Rand of the cells
(thinned, best threshold, as the challenge scores); fundus: F1 and AUC inside the FOV,
and clDice (are vessels whole?). Seconds = the fine-tune's wall time.
"""

from __future__ import annotations

import argparse
import time

from _common import ISBI_VAL, drive, isbi, table
from _shift import foreign_em, foreign_fundus

from napari_unet.core.checkpoint import Checkpoint, load_checkpoint
from napari_unet.core.data import normalize
from napari_unet.core.finetune import FineTune, FineTuneOptions
from napari_unet.core.labels import STRUCTURE
from napari_unet.core.metrics import cl_dice, dice, em_challenge_scores, fundus_scores
from napari_unet.core.pipeline import predict
from napari_unet.core.train import TrainingData, fine_tune_recipe, train

CORRECTED = [0, 1]

RECIPES = {
    "default": {},
    "no refit": {"refit": False},
    "edits weigh 1, uniform crops": {"edit_weight": 1.0, "focus_fraction": 0.0},
    "border weights on": {"recipe": {"border_weights": True}},
    "border weights off": {"recipe": {"border_weights": False}},
    "border term, classes unbalanced": {"recipe": {"border_weights": True, "balance_classes": False}},
    "90 steps": {"steps": 90},
}


def foreign_data(task: str):
    if task == "em":
        data = isbi()
        images, labels = foreign_em(data.images[ISBI_VAL], data.labels[ISBI_VAL])
        return images, labels, None
    data = drive("test")
    return foreign_fundus(data.images, data.labels, data.fov)


def scores(checkpoint: Checkpoint, images, labels, fov, task: str, device: str) -> dict:
    unseen = [z for z in range(images.shape[0]) if z not in CORRECTED]
    result = predict(checkpoint, images[unseen], device=device)  # fundus: 0 outside the FOV found
    prob, mask = result.probabilities, result.mask.astype(bool)  # at the model's threshold
    truth = labels[unseen] == STRUCTURE
    if task == "em":
        return {"dice": dice(mask, truth), "vrand": em_challenge_scores(prob, truth)["vrand"]}
    inside = fov[unseen]
    pixel = fundus_scores(prob, truth, inside, checkpoint.info.threshold)
    return {"f1": pixel["f1"], "auc": pixel["auc"], "cldice": cl_dice(mask, truth, inside)}


def old_recipe(start: Checkpoint, images, labels, steps: int, device: str) -> Checkpoint:
    """What the widget did before: uniform crops, whole-slice Dice on the held-out slice, no refit."""
    model = start.model.__class__(start.config)
    model.load_state_dict(start.model.state_dict())
    data = TrainingData(normalize(images[CORRECTED], start.normalization), labels[CORRECTED], [0], [1])
    for _ in train(model, data, fine_tune_recipe(steps, device=device)):
        pass
    return Checkpoint(model, start.metadata, "old recipe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", nargs="+", default=["em", "fundus"], choices=["em", "fundus"])
    parser.add_argument("--recipes", nargs="+", default=["default"], choices=[*RECIPES, "old"])
    parser.add_argument("--steps", type=int, default=FineTuneOptions.steps)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    for task in args.task:
        start = load_checkpoint("em-membranes" if task == "em" else "fundus-vessels")
        images, labels, fov = foreign_data(task)
        columns = ["recipe", "dice", "vrand"] if task == "em" else ["recipe", "f1", "auc", "cldice"]
        rows = [{"recipe": "built-in (start)", **scores(start, images, labels, fov, task, args.device)}]
        print(rows[-1], flush=True)
        for name in args.recipes:
            tick = time.perf_counter()
            if name == "old":
                tuned, report = old_recipe(start, images, labels, args.steps, args.device), {}
            else:
                options = dict(RECIPES[name])
                options.setdefault("steps", args.steps)
                run = FineTune(start, images, labels, CORRECTED, None, FineTuneOptions(device=args.device, **options))
                for _ in run.run():
                    pass
                tuned = Checkpoint(run.result.model, run.result.metadata, name)
                report = run.result.report
            seconds = time.perf_counter() - tick
            rows.append({"recipe": name, **scores(tuned, images, labels, fov, task, args.device),
                         "seconds": seconds, "kept step": report.get("best_step"), "refit": report.get("refit")})
            print(rows[-1], flush=True)
        where = "ISBI 25-29 as another lab's EM" if task == "em" else "DRIVE test as another camera's fundus"
        print(f"\n{where}: fine-tuned on {CORRECTED}, scored on the rest, {args.steps} steps\n")
        print(table(rows, columns + ["seconds", "kept step", "refit"]) + "\n", flush=True)


if __name__ == "__main__":
    main()
