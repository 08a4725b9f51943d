"""Prediction speed of the built-in models against a classic 64-wide U-Net, same process.

    python benchmarks/speed.py [--device auto] [--repeats 5]

Median wall time to predict one 512x512 ISBI slice and one 584x565 DRIVE image with each
model's own tile settings (what the plugin and the CLI do), and the ratio to the baseline:
the classic U-Net (64 wide, depth 4) with 512-pixel tiles and 25 % overlap. A second
table gives one forward pass of a 576x576 one-channel tile by U-Net width (depth 4), the
speed side of the model cards' width trade-off.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import drive, isbi, table

from napari_unet.core.checkpoint import Checkpoint, default_metadata, load_checkpoint
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.predict import describe_device, predict_stack, resolve_device


def median_seconds(run, device, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, after one warm-up call."""
    run()  # warm-up (allocations, kernels)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def baseline(channels: int, task: str) -> Checkpoint:
    model = UNet(UNetConfig(in_channels=channels, base_width=64, depth=4)).eval()
    return Checkpoint(model, default_metadata(task, tile_size=512), "classic 64-wide U-Net")


def forward_seconds(width: int, device, repeats: int) -> float:
    model = UNet(UNetConfig(in_channels=1, base_width=width, depth=4)).to(device).eval()
    tile = torch.rand(1, 1, 576, 576, device=device)

    def forward() -> None:
        with torch.no_grad():
            model(tile)

    return median_seconds(forward, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device: {describe_device(device)}\n")
    cases = [("em-membranes", isbi().images[25:26], "em", 1.0),
             ("fundus-vessels", drive("test").images[0:1], "fundus", 1.5)]
    rows = []
    for name, image, task, target in cases:
        base_model, our_model = baseline(image.shape[-1], task), load_checkpoint(name)
        base = median_seconds(lambda: predict_stack(base_model, image, device=device), device, args.repeats)
        ours = median_seconds(lambda: predict_stack(our_model, image, device=device), device, args.repeats)
        rows.append({"model": name, "image": "x".join(map(str, image.shape[1:3])), "seconds": ours,
                     "baseline_seconds": base, "ratio": ours / base, "target_s": target,
                     "meets": "yes" if ours <= target or device.type != "cpu" else "NO"})
    print(table(rows, ["model", "image", "seconds", "baseline_seconds", "ratio", "target_s", "meets"]))
    widths = [{"width": w, "forward_576_s": forward_seconds(w, device, args.repeats)} for w in (16, 24, 32, 64)]
    print()
    print(table(widths, ["width", "forward_576_s"]))


if __name__ == "__main__":
    main()
