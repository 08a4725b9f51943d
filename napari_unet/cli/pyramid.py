"""`napari-unet pyramid`: a large grey image (a montage) as an OME-Zarr pyramid (`core.pyramid`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..core.volume import SIZES, Sizes
from ._common import LazyBar, PathLike, check_output, remove


def add_arguments(y: argparse.ArgumentParser) -> None:
    y.add_argument("input", help="a tif, zarr or folder of slices")
    y.add_argument("--out", required=True, help="the pyramid to write, e.g. montage.ome.zarr")
    y.add_argument("--force", action="store_true", help="replace an existing pyramid")


def run(args: argparse.Namespace) -> int:
    pyramid(args.input, args.out, force=args.force)
    return 0


def pyramid(source: PathLike, out: PathLike, *, force: bool = False,
            sizes: Sizes = SIZES) -> list[tuple[int, int, int]]:
    """Write ``source`` as the OME-Zarr pyramid ``out``, each level the 2 x 2 mean of the
    one below, block by block.

    Args:
        source: a grey (Z, Y, X) tif, zarr or folder of slices, read lazily.
        out: the store to write (ending in .zarr, e.g. montage.ome.zarr).
        force: replace an existing ``out`` (kept until the new one is complete).
        sizes: how the source is read, the levels' size and the blocks' (`core.volume.Sizes`).

    Returns:
        The (Z, Y, X) of each level written.
    """
    from ..core.pyramid import write_pyramid
    from ..core.volume import open_volume

    out = check_output(out, force, (".zarr",), {"the input image": source})
    volume = open_volume(source, sizes)
    old = out.with_name(f".{out.name}.old")
    if out.exists():  # set aside, not deleted: a failed run gives it back
        remove(old)
        out.rename(old)
    start = time.perf_counter()
    progress = LazyBar("block")
    try:
        shapes = write_pyramid(volume, out, progress, sizes=sizes)
    except BaseException:
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    finally:
        progress.close()
    remove(old)
    sizes = ", ".join(f"{y}x{x}" for _z, y, x in shapes)
    print(f"wrote {len(shapes)} level(s) ({sizes}) in {time.perf_counter() - start:.1f} s -> {Path(out)}")
    return shapes
