"""`napari-unet predict`: a mask (and probabilities, cells) for an image, stack, folder or volume.

Three paths, one pipeline (`core.pipeline.Pipeline`, made from one `PredictSettings`):
in memory (a small stack, written as tifs), streamed slice by slice (zarr, large tifs,
``--slices``), and on a dask cluster (``--workers`` / ``--scheduler``, `cli.cluster`).
The pipeline options are shared with `suggest`, which predicts the same way.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.settings import DEFAULT_OVERLAP, FOV_MODES, PredictSettings
from ..core.volume import SIZES, Sizes
from ._common import (
    LazyBar,
    PathLike,
    UsageError,
    check_output,
    note,
    number,
    refuse_same,
    remove,
    replace,
    slice_numbers,
)

PIXEL_SIZE = number("--pixel-size", float, 0.0, 1e6, low_open=True, what="the images' pixel size in nm, above 0",
                    example="4")
TILE = number("--tile", int, 16, 8192, what="a tile size in pixels between 16 and 8192", example="512")
OVERLAP = number("--overlap", float, 0.0, 0.9, what="the fraction of a tile shared with its neighbour, between 0 "
                 "and 0.9", example=str(DEFAULT_OVERLAP))
THRESHOLD = number("--threshold", float, 0.0, 1.0, what="a probability threshold between 0 and 1", example="0.5")
TILE_BATCH = number("--batch-size", int, 1, 1024, what="a number of tiles per batch between 1 and 1024", example="4")
WORKERS = number("--workers", int, 1, 1024, what="a number of worker processes between 1 and 1024", example="4")
OUT_SUFFIXES = (".tif", ".tiff", ".zarr")

if TYPE_CHECKING:
    from ..core.checkpoint import Checkpoint
    from ..core.pipeline import Pipeline


@dataclass(frozen=True)
class PredictOutputs:
    """The files a prediction wrote: the mask, and the probabilities and cells when asked."""

    mask: Path
    probabilities: Path | None = None
    instances: Path | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="image file, multi-page tif stack, folder of images (stacked in name order), or a "
                   "zarr / OME-Zarr volume; zarr, and tifs or folders over 1 GB, are streamed slice by slice")
    p.add_argument("--model", required=True, help="checkpoint file or built-in name (em-membranes, fundus-vessels)")
    p.add_argument("--out", required=True, help="output mask, uint8 (0/1), same Z/Y/X as the input: a tif, or a "
                   "chunked zarr store when it ends in .zarr (written slice by slice), an OME-Zarr pyramid napari "
                   "browses without reading whole slices when it ends in .ome.zarr (for montages)")
    p.add_argument("--probabilities", help="also write the float32 probability map here (.tif, .zarr or .ome.zarr)")
    p.add_argument("--instances", help="also write one id per cell (EM; the model's instance method, else a seeded "
                   "watershed) here (uint32, .tif, .zarr or .ome.zarr)")
    p.add_argument("--slices", nargs="+", help="predict only these slices, e.g. 3 7 or 0-99 (streamed; the others "
                   "stay 0 in the outputs)")
    p.add_argument("--workers", type=WORKERS, help="predict a volume on a local dask cluster of N worker processes "
                   "(--out must be a .zarr store; a rerun resumes it)")
    p.add_argument("--scheduler", help="predict a volume on an existing dask cluster, e.g. tcp://10.0.0.5:8786 (its "
                   "workers must see the input and --out at the same paths)")
    add_pipeline_arguments(p)
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the prediction pipeline, the same for `predict` and `suggest`."""
    p.add_argument("--pixel-size", type=PIXEL_SIZE, help="the images' pixel size in nm: they are resampled to the "
                   "model's (em-membranes: 4 nm) and the result back (default: the file's, from its tif or "
                   "OME-Zarr metadata, else as they are)")
    p.add_argument("--fov", default="auto", help="RGB (fundus): the field of view, 'auto' (found from the image; "
                   "default), 'none' (predict everywhere), or a mask file, which wins: colour is measured and the "
                   "mask kept inside it")
    p.add_argument("--levels", choices=("slice", "volume"), default="slice", help="intensity normalisation: each "
                   "slice between its own percentiles (default, as the model was trained), or the same levels for "
                   "the whole volume, sampled over it; the same on every path (in memory, streamed, cluster)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    p.add_argument("--tile", type=TILE, help="tile size in pixels (default: the model's)")
    p.add_argument("--overlap", type=OVERLAP, default=DEFAULT_OVERLAP,
                   help=f"tile overlap fraction (default {DEFAULT_OVERLAP})")
    p.add_argument("--threshold", type=THRESHOLD, help="probability threshold for the mask (default: the model's, "
                   "0.5)")
    p.add_argument("--batch-size", type=TILE_BATCH, help="tiles per batch (default: 4 on CPU; on a GPU, from its "
                   "free memory)")


def pipeline_arguments(args: argparse.Namespace) -> dict:
    """The pipeline options of the command line, as keyword arguments of `predict` / `suggest`."""
    return {"pixel_size": args.pixel_size, "fov": args.fov, "levels": args.levels, "device": args.device,
            "tile": args.tile, "overlap": args.overlap, "threshold": args.threshold, "batch_size": args.batch_size}


def run(args: argparse.Namespace) -> int:
    predict(args.input, args.model, args.out, probabilities=args.probabilities, instances=args.instances,
            slices=args.slices, workers=args.workers, scheduler=args.scheduler, force=args.force,
            **pipeline_arguments(args))
    return 0


def predict(source: PathLike, model: str, out: PathLike, *, probabilities: PathLike | None = None,
            instances: PathLike | None = None, slices: str | Sequence[int] | None = None,
            workers: int | None = None, scheduler: str | None = None, pixel_size: float | None = None,
            fov: PathLike = "auto", levels: str = "slice", device: str = "auto", tile: int | None = None,
            overlap: float = DEFAULT_OVERLAP, threshold: float | None = None, batch_size: int | None = None,
            force: bool = False, sizes: Sizes = SIZES) -> PredictOutputs:
    """Predict ``source`` with ``model`` into ``out`` (and ``probabilities``, ``instances``).

    Args:
        source: an image, a (Z, Y, X) or (Z, Y, X, 3) tif stack, a folder of images or a
            zarr / OME-Zarr volume; zarr, large tifs and ``slices`` are streamed.
        model: a checkpoint file or a built-in name ("em-membranes", "fundus-vessels").
        out: the (Z, Y, X) uint8 0/1 mask (same Z/Y/X as the input; a single image gives
            (Y, X)): .tif, .zarr, or .ome.zarr for a pyramid.
        probabilities, instances: also the float32 probabilities / uint32 cell ids there.
        slices: only these slices, e.g. "0-9" or [3, 7]; the others stay 0.
        workers, scheduler: on a local dask cluster of N processes / an existing one.
        pixel_size: the images' pixel size in nm; None: the file's, else as they are.
        fov: "auto", "none" or a field-of-view mask file (fundus).
        levels: "slice" (each slice's own percentiles) or "volume" (the same for all).
        device, tile, overlap, threshold, batch_size: see `core.settings.PredictSettings`.
        force: replace outputs that exist (never an input).
        sizes: which inputs are streamed, which slices are predicted in blocks and how
            large (`core.volume.Sizes`; not a command-line option: tests and benchmarks
            pass small or huge ones).

    Returns:
        The files written.

    Raises:
        UsageError, DataError, CheckpointError (ValueError): bad input, before any work.
        FileExistsError: an output exists and ``force`` is False.
    """
    from ..core.checkpoint import load_checkpoint
    from ..core.volume import is_volume_path

    pipeline_options = {"pixel_size": pixel_size, "fov": fov, "levels": levels, "device": device, "tile": tile,
                        "overlap": overlap, "threshold": threshold, "batch_size": batch_size}
    if workers or scheduler:
        from .cluster import predict_on_cluster

        if slices:  # the cluster's blocks cover the whole volume
            raise UsageError("--slices is not for a cluster, which predicts every slice: leave out --slices, or "
                             "predict them without --workers / --scheduler.")
        return predict_on_cluster(source, model, out, probabilities=probabilities, instances=instances,
                                  workers=workers, scheduler=scheduler, force=force, sizes=sizes, **pipeline_options)
    inputs = predict_inputs(source, model, fov)
    outputs = PredictOutputs(
        check_output(out, force, OUT_SUFFIXES, inputs),
        *(check_output(path, force, OUT_SUFFIXES, inputs, option) if path else None
          for option, path in (("--probabilities", probabilities), ("--instances", instances))))
    refuse_same({"--out": outputs.mask, "--probabilities": outputs.probabilities, "--instances": outputs.instances})
    checkpoint = load_checkpoint(model)
    written = [p for p in (outputs.mask, outputs.probabilities, outputs.instances) if p]
    if slices or is_volume_path(source, sizes) or any(p.suffix.lower() == ".zarr" for p in written):
        _predict_streamed(source, model, checkpoint, outputs, slices, pipeline_options, sizes)
    else:
        _predict_in_memory(source, model, checkpoint, outputs, pipeline_options, sizes)
    return outputs


def predict_inputs(source: PathLike, model: str, fov: PathLike) -> dict:
    """What `predict` reads, for `check_output`: no output may be one of them."""
    mask = fov if str(fov) not in FOV_MODES else None
    return {"the input image": source, "the --model checkpoint": model, "the --fov mask": mask}


def predict_settings(checkpoint: Checkpoint, source: PathLike, volume, *, model: str, pixel_size: float | None,
                     fov: PathLike, levels: str, device: str, tile: int | None, overlap: float,
                     threshold: float | None, batch_size: int | None, instances: bool,
                     sizes: Sizes = SIZES) -> PredictSettings:
    """The one `PredictSettings` of the command's options, the same on every path.

    Args:
        checkpoint: the model (its pixel size and normalisation).
        source: the input path (its pixel size, when ``pixel_size`` is None).
        volume: (Z, Y, X, C) array-like: the input, for ``levels="volume"``.
        fov: "auto", "none" or a mask file (read apart, by `fov_mask`: "auto" here).
        sizes: the block size and the slices predicted in blocks (`core.volume.Sizes`).
    """
    from ..core.volume import pixel_size_of, volume_levels

    if levels not in ("slice", "volume"):
        raise UsageError(f"--levels {levels}: choose slice or volume.")
    if pixel_size is None and checkpoint.info.pixel_size_nm is not None:
        pixel_size = pixel_size_of(source)
        if pixel_size is not None:
            note(f"pixel size {pixel_size:g} nm, from {Path(source).name}'s metadata (--pixel-size overrides it)")
    shared = volume_levels(volume, checkpoint.normalization) if levels == "volume" else None
    return PredictSettings(model=str(model), device=device, tile=tile, overlap=overlap, pixel_size=pixel_size,
                           fov=str(fov) if str(fov) in FOV_MODES else "auto", threshold=threshold, levels=shared,
                           instances=instances, batch_size=batch_size, block=sizes.block,
                           block_limit=sizes.large_slice)


def make_pipeline(checkpoint: Checkpoint, settings: PredictSettings) -> Pipeline:
    """The `core.pipeline.Pipeline` of ``settings``, refused when it cannot do what was asked."""
    from ..core.pipeline import Pipeline

    pipeline = Pipeline(checkpoint, settings)
    if settings.instances and pipeline.uses_fov:
        raise UsageError("--instances is for grey (EM) images: cells of vessels are not defined; leave it out.")
    return pipeline


def fov_mask(fov: PathLike, shape: tuple[int, int, int]) -> np.ndarray | None:
    """The field-of-view mask file as (Z, Y, X) bool (one mask may serve every slice), or
    None for "auto" / "none".

    Args:
        shape: (Z, Y, X) of the images.
    """
    from ._common import read_mask

    if str(fov) in FOV_MODES:
        return None
    return read_mask(fov, shape, "--fov", "a field-of-view mask", one_for_all=True)


def _predict_in_memory(source: PathLike, model: str, checkpoint: Checkpoint, outputs: PredictOutputs,
                       options: dict, sizes: Sizes) -> None:
    """Read the whole input, predict it, write tifs (each atomically: all or none)."""
    from ..core.data import as_stack, read_stack
    from ..core.predict import describe_device
    from ._common import write_tif_atomic

    raw = read_stack(source)
    images = as_stack(raw)
    fov = fov_mask(options["fov"], images.shape[:3])
    settings = predict_settings(checkpoint, source, images, model=model, instances=outputs.instances is not None,
                                sizes=sizes, **options)
    pipeline = make_pipeline(checkpoint, settings)
    start = time.perf_counter()
    progress = LazyBar("tile")
    try:
        result = pipeline.run(images, fov, progress, name=Path(source).name)
    finally:
        progress.close()
    arrays = {outputs.mask: result.mask, outputs.probabilities: result.probabilities,
              outputs.instances: None if result.cells is None else result.cells.astype(np.uint32)}
    arrays = {path: array for path, array in arrays.items() if path is not None}
    # Same Z/Y/X as the input: a single 2D (or RGB) image gives a 2D mask.
    squeeze = images.shape[0] == 1 and (raw.ndim == 2 or images.shape[-1] == 3 and raw.ndim == 3)
    try:
        for path, array in arrays.items():
            write_tif_atomic(path, array[0] if squeeze else array)
    except BaseException:
        for path in arrays:
            path.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    z, y, x = images.shape[:3]
    print(f"predicted {z} slice(s) of {y}x{x} with {model} on {describe_device(pipeline.device)} in {seconds:.1f} "
          f"s: {100 * result.mask.mean():.1f}% structure -> {outputs.mask}")
    for text in result.notes:
        note(text)


def _predict_streamed(source: PathLike, model: str, checkpoint: Checkpoint, outputs: PredictOutputs,
                      slices: str | Sequence[int] | None, options: dict, sizes: Sizes) -> None:
    """Predict a volume slice by slice into zarr stores or memory-mapped tifs (bounded memory).

    Outputs are written beside their final names and renamed when every slice is done,
    so an interrupted run leaves no half-written result under the name asked for.
    """
    from ..core.blocks import in_blocks
    from ..core.predict import describe_device
    from ..core.pyramid import add_levels, multiscale_output
    from ..core.stream import VolumeOutputs, predict_volume
    from ..core.volume import create_output, open_volume

    volume = open_volume(source, sizes)
    shape = tuple(volume.data.shape[:3])
    fov = fov_mask(options["fov"], shape)
    chosen = slice_numbers(slices, shape[0], "--slices") if slices else None
    settings = predict_settings(checkpoint, source, volume.data, model=model,
                                instances=outputs.instances is not None, sizes=sizes, **options)
    pipeline = make_pipeline(checkpoint, settings)
    wanted = {outputs.mask: np.uint8, outputs.probabilities: np.float32, outputs.instances: np.uint32}
    reduce = {outputs.mask: "max", outputs.probabilities: "mean", outputs.instances: "pick"}
    temps = {path: path.with_name(f".{path.name}.partial{path.suffix}") for path in wanted if path is not None}
    multiscale = {path for path in temps if path.name.lower().endswith(".ome.zarr")}
    progress = LazyBar("tile")
    try:
        arrays = {path: multiscale_output(temps[path], shape, wanted[path]) if path in multiscale
                  else create_output(temps[path], shape, wanted[path]) for path in temps}
        into = VolumeOutputs(arrays[outputs.mask], arrays.get(outputs.probabilities), arrays.get(outputs.instances))
        report = predict_volume(pipeline, volume.data, into, chosen, fov=fov, progress=progress)
        progress.close()
        for array in arrays.values():
            if hasattr(array, "flush"):  # memory-mapped tif
                array.flush()
        del arrays, into
        for path in multiscale:  # levels napari browses: the one that fits the screen is read
            add_levels(temps[path], reduce[path], volume.pixel_size_nm, path.name, sizes=sizes)
        for path, temp in temps.items():
            replace(temp, path)
    except BaseException:
        progress.close()
        for temp in temps.values():
            remove(temp)
        raise
    _z, y, x = shape
    print(f"predicted {len(report.done)} slice(s) of {y}x{x} with {model} on {describe_device(pipeline.device)} in "
          f"{report.seconds:.1f} s, slice by slice: {100 * report.structure:.1f}% structure -> {outputs.mask}")
    if pipeline.scale_note:
        note(pipeline.scale_note)
    if report.blank:
        note(f"slice(s) {report.blank[:20]} hold one value only (no image): left empty.")
    if in_blocks(pipeline, (y, x)) and len(multiscale) < len(temps):
        note("slices this large open in napari without a freeze as a multiscale store: write them with "
             "--out mask.ome.zarr (also --probabilities prob.ome.zarr, --instances cells.ome.zarr).")
