"""Montage-sized slices predicted by the CLI: peak memory and time against the slice's size.

    python benchmarks/montage.py [--sizes 4096 16384 40000] [--model tiny] [--baseline 16384] [--instances]

Builds one (size, size) uint8 EM slice per size from real ISBI slices (each tiled with its
mirror images), writes it as an uncompressed tif, and runs ``napari-unet predict SLICE.tif
--out MASK.zarr`` on it in a fresh process, printing that process's peak memory (VmHWM)
and time. ``--model tiny`` is a U-Net of width 4 and depth 2 with random weights (the
network's own cost is negligible, so the table shows what the data path costs);
``em-membranes`` is the built-in model. Slices up to ``--baseline`` pixels on a side are
also predicted the way they were before blocks (the whole slice at once, in the same
script), and the two masks compared pixel for pixel.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr
from _common import CLI_RUN, ROOT, isbi, table

# The CLI as it predicted before blocks: the same options to `predict`'s typed handler, with
# sizes that make no slice large (so none is predicted in blocks); prints as CLI_RUN does.
WHOLE_SLICE_RUN = """
import json, sys, time
from napari_unet.cli import build_parser
from napari_unet.cli.predict import pipeline_arguments, predict
from napari_unet.core.volume import Sizes
args = build_parser().parse_args(sys.argv[1:])
start = time.perf_counter()
predict(args.input, args.model, args.out, instances=args.instances, sizes=Sizes(large_slice=1 << 62),
        **pipeline_arguments(args))
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"code": 0, "seconds": time.perf_counter() - start, "peak_mb": peak / 1024}))
"""


def write_montage(path: Path, sources: np.ndarray, size: int) -> None:
    """A (size, size) uint8 tif of ISBI slices and their mirror images, written band by band."""
    side = sources.shape[1]
    mirrored = [sources[0], sources[1][:, ::-1], sources[2][::-1], sources[3][::-1, ::-1]]
    reps = -(-size // side)
    out = tifffile.memmap(path, shape=(size, size), dtype=np.uint8, photometric="minisblack")
    for row in range(reps):
        band = np.concatenate([mirrored[(row + col) % 4] for col in range(reps)], axis=1)[:, :size]
        out[row * side : min(size, (row + 1) * side)] = band[: size - row * side]
    out.flush()
    del out


def tiny_model(path: Path) -> None:
    """A width-4, depth-2 U-Net with random weights, described like the built-in EM model."""
    import torch

    from napari_unet.core.checkpoint import default_metadata, load_checkpoint, save_checkpoint
    from napari_unet.core.model import UNet, UNetConfig

    torch.manual_seed(0)
    model = UNet(UNetConfig(in_channels=1, classes=1, base_width=4, depth=2))
    builtin = load_checkpoint("em-membranes").info
    save_checkpoint(path, model, default_metadata("em", tile_size=builtin.tile_size, tile_margin=builtin.tile_margin,
                                                  instance_method=builtin.instance_method, name="tiny"))


def run(code: str, args: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"napari-unet {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def same_masks(a: Path, b: Path) -> str:
    first, second = zarr.open_array(str(a), mode="r"), zarr.open_array(str(b), mode="r")
    height = first.shape[1]
    for y in range(0, height, 2048):  # band by band: the masks may be larger than memory
        if not np.array_equal(first[:, y : y + 2048], second[:, y : y + 2048]):
            return "NO"
    return "yes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 40000])
    parser.add_argument("--model", default="tiny", help="'tiny' (random, width 4) or a model name or path")
    parser.add_argument("--baseline", type=int, default=16384,
                        help="also predict slices up to this size whole, as before blocks (0 = never)")
    parser.add_argument("--instances", action="store_true", help="also label cells (--instances)")
    parser.add_argument("--work", help="folder for the slices (default: a temporary one, removed)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="napari-unet-montage-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model == "tiny":
        model = str(work / "tiny.pt")
        tiny_model(Path(model))
    sources = isbi().images[:4, :, :, 0]
    rows = []
    for size in args.sizes:
        slice_path = work / f"slice_{size}.tif"
        if not slice_path.exists():
            start = time.perf_counter()
            write_montage(slice_path, sources, size)
            print(f"wrote {slice_path.name} ({size * size / 2**30:.2f} GB) in {time.perf_counter() - start:.0f} s",
                  flush=True)
        common = ["--model", args.model if args.model != "tiny" else model, "--device", "cpu"]
        outputs = {}
        for way, code in (("blocks", CLI_RUN), ("whole slice", WHOLE_SLICE_RUN)):
            if way == "whole slice" and size > args.baseline:
                continue
            out = work / f"mask_{size}_{way.replace(' ', '_')}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            extra = ["--instances", str(out.with_suffix(".cells.zarr"))] if args.instances else []
            for path in [out.with_suffix(".cells.zarr")]:
                shutil.rmtree(path, ignore_errors=True)
            result = run(code, ["predict", str(slice_path), "--out", str(out), *common, *extra])
            outputs[way] = out
            rows.append({"size": f"{size}²", "way": way, "seconds": result["seconds"], "peak_mb": result["peak_mb"],
                         "us_per_pixel": 1e6 * result["seconds"] / size**2})
            print(json.dumps(rows[-1]), flush=True)
        if len(outputs) == 2:
            rows[-1]["same_mask"] = same_masks(outputs["blocks"], outputs["whole slice"])
        for out in outputs.values():
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out.with_suffix(".cells.zarr"), ignore_errors=True)
    blocks = [r for r in rows if r["way"] == "blocks"]
    for row in rows:
        row["peak_vs_smallest_blocks"] = row["peak_mb"] / blocks[0]["peak_mb"]
    print(f"model: {args.model}; {'with' if args.instances else 'without'} cells")
    print(table(rows, ["size", "way", "seconds", "us_per_pixel", "peak_mb", "peak_vs_smallest_blocks", "same_mask"]))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
