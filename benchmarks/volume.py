"""A volume larger than its float copies, predicted by the CLI slice by slice: memory and time.

    python benchmarks/volume.py [--slices 48] [--size 4096] [--model em-membranes] [--compare 4] [--levels slice]

Builds a (slices, size, size) uint8 EM volume from real ISBI slices (each tiled with
mirror images to size², every third slice shifted behind black registration padding),
writes it as a chunked zarr store and as a tif, and runs ``napari-unet predict`` on it in
a fresh process: the whole zarr into a zarr store, then the first ``--compare`` slices of
the tif (``--slices``). Prints each process's peak memory (RSS), its time, what float32
copies of the volume and of its probabilities alone would need, and whether the two masks
agree slice for slice. ``--levels`` is passed to the CLI: "slice" (its default: each
slice normalised on its own, as in memory) or "volume" (levels sampled over the whole
volume first, the streamed default before the one prediction pipeline; the black
registration padding must then not shift them).
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


def em_slice(source: np.ndarray, size: int, z: int) -> np.ndarray:
    """(size, size) uint8: a 512² ISBI slice tiled with its mirror images; every third slice
    shifted by 1/8 of its width behind black padding, as aligned serial sections are."""
    reps = -(-size // source.shape[0])
    tiled = np.tile(np.block([[source, source[:, ::-1]], [source[::-1], source[::-1, ::-1]]]), (reps, reps))
    plane = np.ascontiguousarray(tiled[:size, :size])
    if z % 3 == 2:
        shift = size // 8
        plane = np.pad(plane[:, :-shift], [(0, 0), (shift, 0)])
    return plane


def cli(args: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", CLI_RUN, *args], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"napari-unet {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--model", default="em-membranes")
    parser.add_argument("--compare", type=int, default=4, help="slices predicted from the tif too (0 = none)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--levels", choices=("slice", "volume"), default="slice",
                        help="intensity levels per slice (the CLI's default) or sampled over the volume")
    parser.add_argument("--work", help="folder for the volumes (default: a temporary one, removed)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="napari-unet-volume-"))
    work.mkdir(parents=True, exist_ok=True)
    sources = isbi().images[:, :, :, 0]
    shape = (args.slices, args.size, args.size)
    start = time.perf_counter()
    volume = zarr.open_array(str(work / "volume.zarr"), mode="w", shape=shape, chunks=(1, 1024, 1024), dtype="uint8")
    with tifffile.TiffWriter(work / "volume.tif", bigtiff=True) as tif:
        for z in range(args.slices):
            plane = em_slice(sources[z % len(sources)], args.size, z)
            volume[z] = plane
            tif.write(plane, photometric="minisblack", contiguous=True)
    print(f"built a {'x'.join(map(str, shape))} uint8 volume ({np.prod(shape) / 2**30:.2f} GB) in "
          f"{time.perf_counter() - start:.0f} s in {work}")
    common = ["--model", args.model, "--device", args.device, "--levels", args.levels]
    rows = []
    whole = cli(["predict", str(work / "volume.zarr"), "--out", str(work / "mask.zarr"), *common])
    rows.append({"input": "zarr", "slices": args.slices, "levels": args.levels, **whole})
    if args.compare:
        last = min(args.compare, args.slices) - 1
        part = cli(["predict", str(work / "volume.tif"), "--out", str(work / "mask_tif.zarr"), "--slices",
                    f"0-{last}", *common])
        streamed = zarr.open_array(str(work / "mask.zarr"), mode="r")
        from_tif = zarr.open_array(str(work / "mask_tif.zarr"), mode="r")
        same = all(np.array_equal(streamed[z], from_tif[z]) for z in range(last + 1))
        rows.append({"input": "tif", "slices": last + 1, "levels": args.levels, **part,
                     "same_masks_as_zarr": "yes" if same else "NO"})
    float_copies = 2 * np.prod(shape) * 4 / 2**20  # normalised input + probabilities, float32
    for row in rows:
        row["s_per_slice"] = row["seconds"] / row["slices"]
        row["float32_copies_mb"] = float_copies
        row["peak_under_1.5GB"] = "yes" if row["peak_mb"] < 1536 else "NO"
    print(table(rows, ["input", "slices", "levels", "seconds", "s_per_slice", "peak_mb", "float32_copies_mb",
                       "peak_under_1.5GB", "same_masks_as_zarr"]))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
