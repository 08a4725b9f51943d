"""Accuracy of the built-in models with the core's metrics, against published scores.

    python benchmarks/accuracy.py [--models em-membranes fundus-vessels] [--device auto]

EM: ISBI 2012 slices 25-29 (never trained on): Dice of the membrane class and pixel error
(1 - accuracy) at the model's own threshold (as the CLI and the plugin use it), V_Rand and
V_Info (thinned borders, best threshold); a model with an output shift is also scored
without it.
Fundus: the 20 DRIVE test images, 1st_manual, inside the FOV, threshold 0.5, pooled.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _common import DATA, ISBI_VAL, drive, isbi, table

from napari_unet.core.calibration import SHIFT_KEY
from napari_unet.core.cell_scores import em_challenge_scores
from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.metrics import dice, fundus_scores, pixel_accuracy
from napari_unet.core.pipeline import predict


def em_scores(model: str, device: str, data=DATA, unshifted: bool = False) -> dict:
    """``unshifted``: the same model without its output shift (`core.calibration`)."""
    stack = isbi(data)
    checkpoint = load_checkpoint(model)
    if unshifted:
        checkpoint.metadata.pop(SHIFT_KEY)
        model = f"{model} without its output shift"
    start = time.perf_counter()
    prob = predict(checkpoint, stack.images[ISBI_VAL], device=device).probabilities
    seconds = time.perf_counter() - start
    truth = stack.labels[ISBI_VAL] == 1
    threshold = checkpoint.info.threshold  # the model's own, as the CLI uses it
    mask = prob > threshold
    scores = {"model": model, "data": "ISBI 25-29", "threshold": threshold, "dice": dice(mask, truth),
              "pixel_error": 1 - pixel_accuracy(mask, truth)}
    scores.update({k: v for k, v in em_challenge_scores(prob, truth).items()})
    scores["seconds"] = seconds
    return scores


def fundus_result(model: str, device: str, data=DATA) -> dict:
    stack = drive("test", data)
    start = time.perf_counter()
    prob = predict(load_checkpoint(model), stack.images, device=device).probabilities  # 0 outside the FOV found
    seconds = time.perf_counter() - start
    truth = stack.labels == 1
    scores = {"model": model, "data": "DRIVE test (20)"}
    scores.update(fundus_scores(prob, truth, stack.fov, threshold=0.5))
    scores["seconds"] = seconds
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["em-membranes", "fundus-vessels"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="also print the scores as JSON")
    args = parser.parse_args()
    results = []
    for model in args.models:
        if model.startswith("em") or "isbi" in model:
            row = em_scores(model, args.device)
            shifted = load_checkpoint(model).metadata.get(SHIFT_KEY)
            extra = [em_scores(model, args.device, unshifted=True)] if shifted else []
            print(table([row, *extra, {"model": "32-wide U-Net, 1,500 CPU steps (GUIDE baseline)", "dice": 0.806,
                               "pixel_error": 0.079}],
                        ["model", "data", "threshold", "dice", "pixel_error", "vrand", "vrand_threshold", "vinfo",
                         "vinfo_threshold", "seconds"]))
        else:
            row = fundus_result(model, args.device)
            print(table([row, {"model": "U-Net (published, DRIVE README)", "f1": 0.8161, "auc": 0.9790,
                               "se": 0.7671, "sp": 0.9835, "acc": 0.9560},
                         {"model": "FR-UNet (best published U-Net variant)", "f1": 0.8316}],
                        ["model", "data", "f1", "auc", "se", "sp", "acc", "seconds"]))
        print()
        results.append(row)
    if args.json:
        print(json.dumps([{k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()}
                          for r in results]))


if __name__ == "__main__":
    main()
