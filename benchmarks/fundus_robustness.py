"""The built-in fundus model on photographs from another camera, with and without
standardising each photograph to its training images (scale by FOV diameter, colour).

    python benchmarks/fundus_robustness.py [--device auto] [--images N] [--model NAME_OR_PATH]

DRIVE test images as taken, and as another camera's (`_shift.foreign_fundus`:
red-dominant, dark, almost no blue, 1,000 px, JPEG; no FOV given to the model). Scores
inside the DRIVE FOV masks, pooled (the DRIVE convention): F1 at the model's threshold,
AUC, clDice. "as before" = the same weights without `fundus_reference` in the metadata.
"""

from __future__ import annotations

import argparse
import copy
import time

from _common import drive, table
from _shift import foreign_fundus

from napari_unet.core.checkpoint import Checkpoint, load_checkpoint
from napari_unet.core.labels import STRUCTURE
from napari_unet.core.metrics import cl_dice, fundus_scores
from napari_unet.core.pipeline import predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=20, help="how many DRIVE test images (default all 20)")
    parser.add_argument("--model", default="fundus-vessels", help="a built-in name or a checkpoint file")
    args = parser.parse_args()
    model = load_checkpoint(args.model)
    before = copy.deepcopy(model.metadata)
    before.pop("fundus_reference")
    models = {"standardised (default)": model, "as before": Checkpoint(model.model, before, "as before")}
    data = drive("test")
    n = args.images
    sets = {"DRIVE test": (data.images[:n], data.labels[:n], data.fov[:n]),
            "another camera": foreign_fundus(data.images[:n], data.labels[:n], data.fov[:n])}
    rows = []
    for set_name, (images, labels, fov) in sets.items():
        truth = labels == STRUCTURE
        for name, checkpoint in models.items():
            tick = time.perf_counter()
            prob = predict(checkpoint, images, device=args.device).probabilities
            seconds = (time.perf_counter() - tick) / len(images)
            threshold = checkpoint.info.threshold
            scores = fundus_scores(prob, truth, fov, threshold)
            rows.append({"images": set_name, "model": name, "f1": scores["f1"], "auc": scores["auc"],
                         "cldice": cl_dice(prob > threshold, truth, fov), "s/image": seconds})
            print(rows[-1], flush=True)
    print(f"\n{n} DRIVE test images\n")
    print(table(rows, ["images", "model", "f1", "auc", "cldice", "s/image"]))


if __name__ == "__main__":
    main()
