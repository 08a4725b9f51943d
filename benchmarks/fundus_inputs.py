"""Which input makes the fundus model camera-independent? The same short recipe on each,
scored on DRIVE test as taken and as another camera's.

    python benchmarks/fundus_inputs.py [--steps 600] [--threads N] [--device auto]

Trains 16-wide U-Nets from scratch with the built-in recipe's settings (crops, batch,
learning rate, seed) for the same number of steps, one per input:
- RGB: each channel normalised (1st-99.8th percentile);
- green: the green channel alone (best vessel contrast, much of the literature);
- green + CLAHE: the green channel after contrast-limited adaptive histogram
  equalisation (`skimage.exposure.equalize_adapthist`), the classic vessel preprocessing;
- RGB standardised + camera augmentation: the built-in recipe (`core.pipeline.
  Pipeline.prepare`: FOV diameter and colour matched to the training images; half the
  crops as if from another camera, `Augmentation.camera`).

The other camera is `_shift.foreign_fundus` (red-dominant, dark, no blue, 1,000 px, JPEG).
Every input but the last is given the same scale step by hand (resampled so its FOV has
the training images' diameter, the result resampled back), so the table compares the
inputs, not the scale handling. Scores: 1st_manual inside the DRIVE FOV masks, threshold
0.5, pooled.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DATA, drive, table
from _shift import foreign_fundus
from skimage.exposure import equalize_adapthist
from skimage.transform import rescale, resize
from train_builtin import RECIPES, training_data

from napari_unet.core.augment import Augmentation
from napari_unet.core.checkpoint import default_metadata, load_checkpoint
from napari_unet.core.data import normalize
from napari_unet.core.fov import field_of_view, fov_diameter
from napari_unet.core.labels import STRUCTURE
from napari_unet.core.metrics import fundus_scores
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.pipeline import predict
from napari_unet.core.train import TrainConfig, TrainingData, train


def green(images: np.ndarray) -> np.ndarray:
    return images[..., 1:2]


def green_clahe(images: np.ndarray) -> np.ndarray:
    """(N, Y, X, 3) -> (N, Y, X, 1) float32: CLAHE of the normalised green channel."""
    normalised = normalize(images[..., 1:2])
    return np.stack([equalize_adapthist(g[..., 0], clip_limit=0.01)[..., None] for g in normalised]).astype(np.float32)


INPUTS = {"RGB": None, "green": green, "green + CLAHE": green_clahe, "RGB standardised + camera augmentation": "recipe"}


def at_scale(checkpoint, images: np.ndarray, prepare, diameter: float, device: str) -> np.ndarray:
    """Predict each photograph resampled so its FOV has ``diameter``, then resampled back."""
    out = []
    for image in images:
        zoom = diameter / fov_diameter(field_of_view(image))
        small = rescale(image.astype(np.float32), zoom, order=1, channel_axis=-1, preserve_range=True,
                        anti_aliasing=zoom < 1) if abs(zoom - 1) > 0.05 else image
        ready = small if prepare is None else prepare(small[None])[0]
        # fov="none": as the other inputs were scored before the pipeline (no FOV zeroing; scores are inside the FOV).
        prob = predict(checkpoint, ready[None], device=device, fov="none").probabilities[0]
        out.append(resize(prob, image.shape[:2], order=1))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    recipe = RECIPES["fundus-vessels"]
    stack, plain = training_data("fundus-vessels", DATA)
    test = drive("test")
    shifted = foreign_fundus(test.images, test.labels, test.fov)
    sets = {"DRIVE test": (test.images, test.labels, test.fov), "another camera": shifted}
    diameter = float(np.median([fov_diameter(field_of_view(image)) for image in stack.images]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, prepare in INPUTS.items():
            metadata = default_metadata("fundus", tile_size=recipe["tile"], tile_margin=recipe["margin"])
            augmentation = Augmentation()
            if prepare == "recipe":
                _, data = training_data("fundus-vessels", DATA, metadata)  # adds fundus_reference
                augmentation = Augmentation(camera=recipe["camera"])
            else:
                images = plain.images if prepare is None else normalize(prepare(stack.images))
                data = TrainingData(images, plain.labels, plain.train_slices)
            config = UNetConfig(in_channels=data.images.shape[-1], base_width=recipe["width"], depth=recipe["depth"])
            model = UNet(config)
            config = TrainConfig(steps=args.steps, batch_size=recipe["batch"], crop_size=recipe["crop"],
                                 learning_rate=recipe["lr"], validate_every=args.steps, device=args.device,
                                 augmentation=augmentation)
            path = Path(tmp) / "model.pt"
            start = time.perf_counter()
            for event in train(model, data, config, path, metadata):
                if event.step % 100 == 0:
                    print(f"{name} step {event.step}/{event.total} loss {event.loss or 0:.4f}", flush=True)
            minutes = (time.perf_counter() - start) / 60
            checkpoint = load_checkpoint(path)
            for set_name, (images, labels, fov) in sets.items():
                start = time.perf_counter()
                if prepare == "recipe":
                    prob = predict(checkpoint, images, device=args.device).probabilities
                else:
                    prob = at_scale(checkpoint, images, prepare, diameter, args.device)
                seconds = (time.perf_counter() - start) / len(prob)
                row = {"input": name, "images": set_name, "steps": args.steps, "train_min": minutes,
                       "s_per_image": seconds}
                row.update(fundus_scores(prob, labels == STRUCTURE, fov, threshold=0.5))
                rows.append(row)
                print(rows[-1], flush=True)
    print(table(rows, ["input", "images", "steps", "train_min", "f1", "auc", "se", "sp", "s_per_image"]))


if __name__ == "__main__":
    main()
