"""RGB or green channel for the fundus model? The same recipe on both, scored on DRIVE test.

    python benchmarks/fundus_channels.py [--steps 600] [--threads N] [--device auto]

Much of the vessel literature keeps only the green channel (best vessel contrast). This
trains two 16-wide U-Nets from scratch with the built-in recipe's settings (crops, batch,
learning rate, augmentation, seed), one on RGB and one on green only, for the same number
of steps, and scores both on the 20 DRIVE test images (1st_manual, FOV, threshold 0.5,
pooled), with the seconds per image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import DATA, drive, table
from train_builtin import RECIPES, training_data

from napari_unet.core.checkpoint import default_metadata, load_checkpoint
from napari_unet.core.metrics import fundus_scores
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.predict import predict_stack
from napari_unet.core.train import TrainConfig, TrainingData, train

CHANNELS = {"RGB": [0, 1, 2], "green": [1]}


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
    # Normalisation is per channel, so the green channel of the normalised RGB images is
    # exactly what a green-only model would be fed.
    _, rgb = training_data("fundus-vessels", DATA)
    test_stack = drive("test")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, channels in CHANNELS.items():
            model = UNet(UNetConfig(in_channels=len(channels), base_width=recipe["width"], depth=recipe["depth"]))
            data = TrainingData(rgb.images[..., channels], rgb.labels, rgb.train_slices)
            config = TrainConfig(steps=args.steps, batch_size=recipe["batch"], crop_size=recipe["crop"],
                                 learning_rate=recipe["lr"], validate_every=args.steps, device=args.device)
            path = Path(tmp) / f"{name}.pt"
            start = time.perf_counter()
            for event in train(model, data, config, path, default_metadata("fundus", tile_size=recipe["tile"],
                                                                        tile_margin=recipe["margin"])):
                if event.step % 100 == 0:
                    print(f"{name} step {event.step}/{event.total} loss {event.loss or 0:.4f}", flush=True)
            minutes = (time.perf_counter() - start) / 60
            start = time.perf_counter()
            prob = predict_stack(load_checkpoint(path), test_stack.images[..., channels], device=args.device)
            seconds = (time.perf_counter() - start) / len(prob)
            row = {"input": name, "steps": args.steps, "train_min": minutes, "s_per_image": seconds}
            row.update(fundus_scores(prob, test_stack.labels == 1, test_stack.fov, threshold=0.5))
            rows.append(row)
    print(table(rows, ["input", "steps", "train_min", "f1", "auc", "se", "sp", "acc", "s_per_image"]))


if __name__ == "__main__":
    main()
