"""Retrain a built-in model from ../shared/data and package it into napari_unet/models/.

    python benchmarks/train_builtin.py em-membranes      # ISBI 2012 slices 0-24
    python benchmarks/train_builtin.py fundus-vessels    # the 20 DRIVE training images

Each run writes its best checkpoint to runs/<name>.pt (resumable by rerunning with
--package-from), then stores it in fp16 with its metadata as the built-in model.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
from _common import DATA, ROOT, drive, isbi

from napari_unet.core.augment import Augmentation
from napari_unet.core.calibration import SHIFT_KEY, annotation_offset
from napari_unet.core.checkpoint import (
    BUILTIN_DIR,
    BUILTIN_MODELS,
    Checkpoint,
    default_metadata,
    load_checkpoint,
    save_checkpoint,
)
from napari_unet.core.data import apply_fov, data_hash, normalize
from napari_unet.core.fov import fundus_reference
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.pipeline import Pipeline, predict
from napari_unet.core.predict import describe_device, resolve_device
from napari_unet.core.settings import PredictSettings
from napari_unet.core.train import TrainConfig, TrainingData, train

# The recipes (see the model cards for why: accuracy against CPU speed).
RECIPES = {
    "em-membranes": dict(
        # 6,000 steps: bfloat16 on an AMX CPU makes a step 2.3x cheaper (see the model card).
        task="em", width=24, depth=4, steps=6000, crop=256, batch=4, lr=1e-3, tile=576, margin=32,
        # Three validation slices: slice 24 alone moved 0.80-0.821 between checkpoints, so
        # the step it picked was partly luck (see the model card).
        val_slices=[22, 23, 24],
        pixel_size_nm=[4.0, 4.0],  # ISBI 2012's; Predict and the CLI resample other pixel sizes to it
        description="Neuronal membranes in serial-section TEM (ISBI 2012), 1 = membrane.",
    ),
    "fundus-vessels": dict(
        task="fundus", width=16, depth=4, steps=2000, crop=256, batch=4, lr=1e-3, tile=656, margin=32,
        # Trained on the photographs standardised as they are at prediction (FOV diameter,
        # colour inside the FOV: `fundus_reference`), half the crops as if from another
        # camera (`Augmentation.camera`).
        standardised=True, camera=0.5,
        # A second, gentler stage (fresh AdamW, warm-up, cosine) from the first one's weights.
        stages=[dict(steps=1000, lr=3e-4)],
        flips=["x"],  # test-time mirror averaging: F1 +0.0014, AUC +0.0012 on DRIVE test
        description="Retinal vessels in RGB fundus photographs (DRIVE), 1 = vessel, FOV-masked.",
    ),
}


def training_data(name: str, data: Path, metadata: dict | None = None):
    """The stack and the `TrainingData` of a recipe. A standardised fundus recipe also
    stores its ``fundus_reference`` (measured on these images) in ``metadata``."""
    if name == "em-membranes":
        stack = isbi(data)
        # Slices 0-24 only; the validation slices pick the best step, 25-29 stay unseen for scoring.
        val = RECIPES[name]["val_slices"]
        return stack, TrainingData(normalize(stack.images), stack.labels, list(range(min(val))), val)
    stack = drive("training", data)
    labels = apply_fov(stack.labels, stack.fov)
    if not (RECIPES[name].get("standardised") and metadata is not None):
        return stack, TrainingData(normalize(stack.images), labels, list(range(20)), [])
    metadata["fundus_reference"] = fundus_reference(stack.images, metadata["normalization"],
                                                    "DRIVE training images 21-40 (the model's training set)")
    images, labels = standardised_photographs(metadata, name, stack.images, labels)
    return stack, TrainingData(images, labels, list(range(20)), [])


def standardised_photographs(metadata: dict, name: str, raw: np.ndarray, labels: np.ndarray):
    """Training photographs prepared as Predict prepares them (`Pipeline.prepare`: FOV
    diameter and colour, FOV found in each photograph), one zoom for the stack, labels
    resampled alongside (nearest neighbour), so the model learns what it will be shown.

    Args:
        metadata: the model's, with its ``fundus_reference``.
        raw: (N, Y, X, 3) photographs; labels: (N, Y, X).
    """
    from skimage.transform import resize

    # Preparation reads only the description: any 3-channel model stands in for the one to train.
    stand_in = UNet(UNetConfig(in_channels=3, base_width=4, depth=2))
    pipeline = Pipeline(Checkpoint(stand_in, metadata, name), PredictSettings(device="cpu"))
    fovs = [pipeline.found_fov(image) for image in raw]
    zoom = float(np.median([pipeline.fundus_zoom(fov) for fov in fovs]))
    images = np.stack([pipeline.prepare(image, fov, zoom=zoom).image for image, fov in zip(raw, fovs)])
    if labels.shape[1:3] != images.shape[1:3]:
        labels = np.stack([resize(m, images.shape[1:3], order=0, preserve_range=True, anti_aliasing=False)
                           for m in labels]).astype(labels.dtype)
    return images, labels


def em_threshold(checkpoint, data: Path) -> float:
    """The mask threshold with the best membrane Dice on the recipe's validation slices."""
    from napari_unet.core.metrics import dice

    stack = isbi(data)
    val = RECIPES["em-membranes"]["val_slices"]
    prob = Pipeline(checkpoint, PredictSettings(device="cpu")).probabilities(stack.images[val])
    truth = stack.labels[val] == 1
    candidates = np.round(np.arange(0.3, 0.71, 0.05), 2)
    return float(max(candidates, key=lambda t: dice(prob > t, truth)))


def em_instance_method(checkpoint, data: Path) -> str:
    """The way to cells (`core.predict.INSTANCE_METHODS`) with the best V_Rand of the cells
    (thinned borders) on the recipe's validation slices, at the model's threshold."""
    from napari_unet.core.cell_scores import cell_labels, segmentation_scores, thin_borders
    from napari_unet.core.predict import INSTANCE_METHODS, cell_instances

    stack = isbi(data)
    val = RECIPES["em-membranes"]["val_slices"]
    mask = predict(checkpoint, stack.images[val], device="cpu").mask  # at the model's threshold

    def thinned(cells):
        return np.stack([thin_borders(c) for c in cells])

    truth = thinned(np.stack([cell_labels(label == 1) for label in stack.labels[val]]))
    scores = {m: segmentation_scores(truth, thinned(cell_instances(mask, m)))["vrand"] for m in INSTANCE_METHODS}
    print("V_Rand of the cells on the validation slices:", scores)
    return max(scores, key=scores.get)


def package(name: str, run: Path, recipe: dict, seconds: float | None, device: str, data: Path = DATA) -> Path:
    checkpoint = load_checkpoint(run)
    meta = checkpoint.metadata
    # One 576 / 656 tile covers a whole ISBI slice / DRIVE image with a 32-pixel mirror
    # border: 1.5x faster than tile // 8 margins, same scores (see the model cards).
    meta.update(name=name, description=recipe["description"], tile_size=recipe["tile"],
                tile_margin=recipe["margin"], threshold=0.5, test_time_flips=recipe.get("flips", []))
    if "pixel_size_nm" in recipe:
        meta["pixel_size_nm"] = recipe["pixel_size_nm"]
    if name == "em-membranes":
        # First the labels' offset (`core.calibration`), then the threshold on the moved output.
        stack = isbi(data)
        labelled = list(range(25))
        unshifted = Checkpoint(checkpoint.model, {**meta, SHIFT_KEY: None}, name)
        raw = Pipeline(unshifted).probabilities(stack.images[labelled])
        meta[SHIFT_KEY] = list(annotation_offset(raw, stack.labels[labelled]))
        meta["output_shift_measured_on"] = "ISBI slices 0-24 (training and validation), phase correlation"
        meta["threshold"] = em_threshold(checkpoint, data)
        val = RECIPES[name]["val_slices"]
        meta["threshold_chosen_on"] = f"best membrane Dice on ISBI slices {val} (training side), 0.30-0.70"
        meta["instance_method"] = em_instance_method(checkpoint, data)
    # Fundus keeps 0.5: the DRIVE scoring convention.
    meta["training"] = {
        "recipe": {k: v for k, v in recipe.items() if k != "description"},
        "device": device,
        "hardware": f"{platform.processor() or platform.machine()}, {describe_device(resolve_device(device))}",
        "seconds": seconds,
        "date": date.today().isoformat(),
    }
    out = save_checkpoint(BUILTIN_DIR / BUILTIN_MODELS[name], checkpoint.model, meta, half=True)
    print(f"packaged {run} -> {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--package-from", type=Path, help="skip training: package this run checkpoint")
    parser.add_argument("--training-seconds", type=float, help="with --package-from: how long its training took")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    parser.add_argument("--continue-from", type=Path, help="skip the first stage: start the later stages from this run")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    recipe = dict(RECIPES[args.model])
    if args.steps:
        recipe["steps"] = args.steps
    if args.package_from:
        package(args.model, args.package_from, recipe, args.training_seconds, args.device, args.data)
        return
    run = ROOT / "runs" / f"{args.model}.pt"
    stages = [dict(steps=recipe["steps"], lr=recipe["lr"])] + recipe.get("stages", [])
    first = 1
    if args.continue_from:
        checkpoint = load_checkpoint(args.continue_from)
        model, metadata = checkpoint.model, checkpoint.metadata
        stages, first = stages[1:], 2
    else:
        model = None
        metadata = default_metadata(recipe["task"])
    stack, data = training_data(args.model, args.data, metadata)
    if model is None:
        model = UNet(UNetConfig(in_channels=stack.images.shape[-1], base_width=recipe["width"], depth=recipe["depth"]))
    start = time.perf_counter()
    for number, stage in enumerate(stages, start=first):
        config = TrainConfig(steps=stage["steps"], batch_size=recipe["batch"], crop_size=recipe["crop"],
                             learning_rate=stage["lr"], validate_every=100, device=args.device,
                             seed=len(metadata["history"]), augmentation=Augmentation(camera=recipe.get("camera", 0.0)))
        metadata["data_hash"] = data_hash(stack.images, data.labels)
        for event in train(model, data, config, run, metadata):
            if event.step % 50 == 0 or event.done:
                val = f" val dice {event.val_dice:.4f}" if event.val_dice is not None else ""
                print(f"stage {number} step {event.step}/{event.total} loss {event.loss or 0:.4f}{val} "
                      f"eta {event.eta_s / 60:.1f} min", flush=True)
        metadata = load_checkpoint(run).metadata  # carries this stage's history entry
    package(args.model, run, recipe, time.perf_counter() - start, str(resolve_device(args.device)), args.data)


if __name__ == "__main__":
    main()
