"""`napari-unet suggest`: which slices to correct next (`core.uncertainty`), streamed slice by slice."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..core.settings import DEFAULT_OVERLAP
from ..core.volume import SIZES, Sizes
from ._common import LazyBar, PathLike, UsageError, number, slice_numbers
from .predict import add_pipeline_arguments, fov_mask, make_pipeline, pipeline_arguments, predict_settings

if TYPE_CHECKING:
    from ..core.uncertainty import Suggestion

TOP = number("--top", int, 1, None, what="the number of slices to list, at least 1", example="10")
METHODS = ("margin", "flips", "both", "scale", "objects")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="image stack, folder of images or zarr / OME-Zarr volume (streamed slice by slice)")
    p.add_argument("--model", required=True, help="checkpoint file or built-in name (em-membranes, fundus-vessels)")
    p.add_argument("--top", type=TOP, default=10, help="how many slices to list (default 10)")
    p.add_argument("--corrected", nargs="+", help="slices already corrected, e.g. 3 7 or 0-4: left out of the order")
    p.add_argument("--method", choices=METHODS, help="the uncertainty (default: the one that tracked the real error "
                   "best for this kind of image, see README)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line: 'uncertainty' "
                   "(one number per slice, in slice order) and 'order' (slices, most worth correcting first)")
    add_pipeline_arguments(p)


def run(args: argparse.Namespace) -> int:
    suggest(args.input, args.model, top=args.top, corrected=args.corrected, method=args.method, as_json=args.json,
            **pipeline_arguments(args))
    return 0


def suggest(source: PathLike, model: str, *, top: int = 10, corrected: str | Sequence[int] | None = None,
            method: str | None = None, as_json: bool = False, pixel_size: float | None = None,
            fov: PathLike = "auto", levels: str = "slice", device: str = "auto", tile: int | None = None,
            overlap: float = DEFAULT_OVERLAP, threshold: float | None = None,
            batch_size: int | None = None, sizes: Sizes = SIZES) -> Suggestion:
    """Rank the slices of ``source`` by how much correcting them is worth; print the ``top``.

    Args:
        source: a (Z, Y, X[, 3]) stack, a folder of images or a zarr / OME-Zarr volume.
        model: a checkpoint file or a built-in name.
        top: how many slices to print, at least 1.
        corrected: slices already corrected, e.g. "0-4" or [3, 7]: scored, left out of the order.
        method: one of `METHODS`; None: the measured best for this kind of image.
        as_json: also print one JSON object: "uncertainty" (per slice), "order", "method".
        Others: the pipeline options and ``sizes``, as `cli.predict.predict`.

    Returns:
        The `core.uncertainty.Suggestion` (uncertainty per slice, order).
    """
    from ..core.checkpoint import load_checkpoint
    from ..core.uncertainty import default_method
    from ..core.uncertainty import suggest as rank_slices
    from ..core.volume import open_volume

    if top < 1:
        raise UsageError(f"--top {top}: give the number of slices to list, at least 1, e.g. --top 10.")
    if method is not None and method not in METHODS:
        raise UsageError(f"--method {method}: choose one of {', '.join(METHODS)}.")
    volume = open_volume(source, sizes).data
    shape = tuple(volume.shape[:3])
    done = slice_numbers(corrected, shape[0], "--corrected") if corrected else []
    mask = fov_mask(fov, shape)
    checkpoint = load_checkpoint(model)
    settings = predict_settings(checkpoint, source, volume, model=model, pixel_size=pixel_size, fov=fov,
                                levels=levels, device=device, tile=tile, overlap=overlap, threshold=threshold,
                                batch_size=batch_size, instances=False, sizes=sizes)
    pipeline = make_pipeline(checkpoint, settings)
    method = method or default_method(pipeline, shape[1:])
    progress = LazyBar("tile")
    try:
        result = rank_slices(pipeline, volume, done, method, mask, progress)
    finally:
        progress.close()
    print(f"{len(result.order)} slice(s) ranked by uncertainty ({method}); correct these next:")
    for z in result.order[:top]:
        print(f"  slice {z}: {result.uncertainty[z]:.4f}")
    if as_json:
        print(json.dumps({"uncertainty": [None if u != u else round(u, 6) for u in result.uncertainty],
                          "order": result.order, "method": method}))
    return result
