"""Prediction of a zarr volume on a local dask cluster: 1 worker against 2 (and more).

    python benchmarks/cluster.py [--slices 30] [--workers 1 2] [--model em-membranes]

Writes ``--slices`` real ISBI slices (512x512, repeated when more than 30) as a zarr
store and runs ``napari-unet predict VOLUME --workers N`` for each N in ``--workers`` (a
fresh process each, cluster start-up included), then once without a cluster (streamed in
one process). Each worker gets cores / N torch threads. Prints the wall times, the
speed-up over 1 worker, and whether every run wrote the same masks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from _common import ROOT, isbi, table


def run(args: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", *args], capture_output=True, text=True,
                            cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"napari-unet {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="em-membranes")
    args = parser.parse_args()
    volume = isbi().images[..., 0]
    slices = np.concatenate([volume] * (1 + args.slices // len(volume)))[: args.slices]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        store = zarr.open_array(str(folder / "volume.zarr"), mode="w", shape=slices.shape, chunks=(1, 512, 512),
                                dtype=slices.dtype)
        store[:] = slices
        common = [str(folder / "volume.zarr"), "--model", args.model, "--device", "cpu"]
        rows, masks = [], {}
        for workers in args.workers:
            out = folder / f"mask_{workers}.zarr"
            seconds = run(["predict", *common, "--out", str(out), "--workers", str(workers)])
            masks[workers] = zarr.open_array(str(out), mode="r")[:]
            rows.append({"run": f"{workers} local worker(s)", "threads_each": max(1, os.cpu_count() // workers),
                         "seconds": seconds})
        seconds = run(["predict", *common, "--out", str(folder / "mask_single.zarr")])
        single = zarr.open_array(str(folder / "mask_single.zarr"), mode="r")[:]
        rows.append({"run": "one process, no cluster", "threads_each": os.cpu_count(), "seconds": seconds})
        first = rows[0]["seconds"]
        for row, mask in zip(rows, [*masks.values(), single]):
            row["speed_up_vs_1_worker"] = first / row["seconds"]
            row["same_masks"] = "yes" if np.array_equal(mask, single) else \
                f"{np.count_nonzero(mask != single)} px differ"
    print(f"{args.slices} slices of 512x512, {args.model}, {os.cpu_count()} cores")
    print(table(rows, ["run", "threads_each", "seconds", "speed_up_vs_1_worker", "same_masks"]))


if __name__ == "__main__":
    main()
