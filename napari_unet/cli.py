"""`napari-unet`: the headless twin of the plugin (predict, train, evaluate).

Bad input prints one line saying what is wrong and what to do, exits with code 2 and
leaves no output file behind; outputs are written atomically and never overwritten
without ``--force``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


def _number(kind, low=None, high=None, low_open=False, what="a number"):
    """An argparse type: ``kind`` (int/float) within [low, high] (``low_open``: > low)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high) or value != value:
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {what}")
        return value

    return parse


STEPS = _number(int, 1, what="a whole number of steps, at least 1")
TILE = _number(int, 16, 8192, what="a tile size in pixels between 16 and 8192")
OVERLAP = _number(float, 0.0, 0.9, what="an overlap fraction between 0 and 0.9")
PROBABILITY = _number(float, 0.0, 1.0, what="a threshold between 0 and 1")
BATCH = _number(int, 1, 1024, what="a batch size between 1 and 1024")
CROP = _number(int, 16, 8192, what="a crop size in pixels between 16 and 8192")
LEARNING_RATE = _number(float, 0.0, 1.0, low_open=True, what="a learning rate above 0 and at most 1, e.g. 1e-3")
WIDTH = _number(int, 2, 512, what="a width between 2 and 512")
DEPTH = _number(int, 1, 7, what="a depth between 1 and 7")
SEED = _number(int, 0, what="a seed of 0 or more")
WORKERS = _number(int, 1, 1024, what="a number of workers from 1")
PIXEL_SIZE = _number(float, 0.0, 1e6, low_open=True, what="a pixel size in nm above 0, e.g. 4")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        raise UsageError(f"{message} (see 'napari-unet {self.prog.split()[-1]} --help')")


def _add_pipeline_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--overlap", type=OVERLAP, default=0.25, help="tile overlap fraction (default 0.25)")
    p.add_argument("--threshold", type=PROBABILITY, help="probability threshold for the mask (default: the model's, 0.5)")
    p.add_argument("--batch-size", type=BATCH, help="tiles per batch (default: 4 on CPU; on a GPU, from its free memory)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="napari-unet", description="U-Net segmentation of EM membranes and fundus vessels.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = commands.add_parser("predict", help="predict a mask (and probabilities) for an image, stack or folder")
    p.add_argument("input", help="image file, multi-page tif stack, folder of images (stacked in name order), or a "
                   "zarr / OME-Zarr volume; zarr, and tifs or folders over 1 GB, are streamed slice by slice")
    p.add_argument("--model", required=True, help="checkpoint file or built-in name (em-membranes, fundus-vessels)")
    p.add_argument("--out", required=True, help="output mask, uint8 (0/1), same Z/Y/X as the input: a tif, or a "
                   "chunked zarr store when it ends in .zarr (written slice by slice), an OME-Zarr pyramid napari browses "
                   "without reading whole slices when it ends in .ome.zarr (for montages)")
    p.add_argument("--probabilities", help="also write the float32 probability map here (.tif, .zarr or .ome.zarr)")
    p.add_argument("--instances", help="also write one id per cell (EM; the model's instance method, else a seeded watershed) here (uint32, .tif, .zarr or .ome.zarr)")
    p.add_argument("--slices", nargs="+", help="predict only these slices, e.g. 3 7 or 0-99 (streamed; the others "
                   "stay 0 in the outputs)")
    p.add_argument("--workers", type=WORKERS, help="predict a volume on a local dask cluster of N worker processes "
                   "(--out must be a .zarr store; a rerun resumes it)")
    p.add_argument("--scheduler", help="predict a volume on an existing dask cluster, e.g. tcp://10.0.0.5:8786 (its "
                   "workers must see the input and --out at the same paths)")
    _add_pipeline_options(p)
    p.add_argument("--force", action="store_true", help="overwrite existing output files")

    s = commands.add_parser("suggest", help="rank the slices of a stack (or a folder of photographs) by how much "
                            "correcting them is worth")
    s.add_argument("input", help="image stack, folder of images or zarr / OME-Zarr volume (streamed slice by slice)")
    s.add_argument("--model", required=True, help="checkpoint file or built-in name (em-membranes, fundus-vessels)")
    s.add_argument("--top", type=WORKERS, default=10, help="how many slices to list (default 10)")
    s.add_argument("--corrected", nargs="+", help="slices already corrected, e.g. 3 7 or 0-4: left out of the order")
    s.add_argument("--method", choices=("margin", "flips", "both", "scale", "objects"), help="the uncertainty (default: "
                   "the one that tracked the real error best for this kind of image, see README)")
    s.add_argument("--json", action="store_true", help="print one JSON object on the last line: 'uncertainty' "
                   "(one number per slice, in slice order) and 'order' (slices, most worth correcting first)")
    _add_pipeline_options(s)

    t = commands.add_parser("train", help="train from scratch, or fine-tune with --from")
    t.add_argument("--images", required=True, help="image file, stack or folder")
    t.add_argument("--labels", required=True, help="labels: nonzero = structure (or 0/1/2 with 2 = ignore); with "
                   "--from, also a montage's corrections folder (<image>.napari-unet/montage, saved by the widgets)")
    t.add_argument("--fov", help="field-of-view mask(s); pixels outside are ignored")
    t.add_argument("--invert-labels", action="store_true", help="structure is 0 in the label files (ISBI 2012)")
    t.add_argument("--from", dest="from_model", help="checkpoint or built-in name to fine-tune")
    t.add_argument("--out", required=True, help="checkpoint file to write (the best model)")
    t.add_argument("--steps", type=STEPS, help="training steps (default 1500 from scratch; to fine-tune, 30 per model)")
    t.add_argument("--val-slices", nargs="+", help="held-out slices, e.g. 25 26 or 25-29 (default: last 10%% of >=4 "
                   "slices; not with --from, which holds out each corrected slice in turn)")
    t.add_argument("--no-val", action="store_true", help="train on every slice, without validation (with --from: keep the model unchecked)")
    t.add_argument("--slices", nargs="+", help="with --from: the corrected slices to learn from, e.g. 3 7 or 0-4 "
                   "(default: every slice with a labelled pixel)")
    t.add_argument("--edited", help="with --from: mask of the pixels you painted, nonzero = edited (added to "
                   "those where the starting model disagrees with the labels)")
    t.add_argument("--task", choices=["em", "fundus"], help="default: fundus for RGB images, em otherwise")
    t.add_argument("--base-width", type=WIDTH, default=32, help="U-Net width of the first level (from scratch)")
    t.add_argument("--depth", type=DEPTH, default=4, help="U-Net depth (from scratch)")
    t.add_argument("--crop-size", type=CROP, help="training crop size in pixels")
    t.add_argument("--batch-size", type=BATCH, help="crops per step")
    t.add_argument("--lr", type=LEARNING_RATE, help="peak learning rate")
    t.add_argument("--border-weights", action="store_true", help="U-Net border weight map (touching cells)")
    t.add_argument("--seed", type=SEED, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    t.add_argument("--distributed", action="store_true", help="one process of a multi-GPU (or multi-process) run "
                   "started by torchrun, e.g. torchrun --nproc_per_node=4 $(which napari-unet) train ... --distributed")
    t.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")

    e = commands.add_parser("evaluate", help="score a prediction against ground truth")
    e.add_argument("--pred", required=True, help="mask (nonzero = structure) or float probability map")
    e.add_argument("--truth", required=True, help="ground truth, nonzero = structure")
    e.add_argument("--fov", help="field-of-view mask(s): score only inside")
    e.add_argument("--invert-truth", action="store_true", help="structure is 0 in the truth file (ISBI 2012)")
    e.add_argument("--task", required=True, choices=["em", "fundus"])
    e.add_argument("--json", action="store_true", help="print the scores as one JSON object on the last line")

    x = commands.add_parser("export", help="write a model as a bioimage.io package (needs napari-unet[bioimageio])")
    x.add_argument("--model", required=True, help="checkpoint file or built-in name")
    x.add_argument("--out", required=True, help="the package to write, MODEL.zip")
    x.add_argument("--sample", help="an image the model is meant for: its centre becomes the test image and the "
                   "cover (default: a generated one)")
    x.add_argument("--name", help="the model's name in the package")
    x.add_argument("--author", action="append", help="an author's name (repeat for several)")
    x.add_argument("--license", default="MIT", help="SPDX licence id (default MIT)")
    x.add_argument("--force", action="store_true", help="overwrite an existing package")

    y = commands.add_parser("pyramid", help="write a large grey image (a montage) as an OME-Zarr pyramid, each "
                            "level averaged from the one below, for browsing in napari")
    y.add_argument("input", help="a tif, zarr or folder of slices")
    y.add_argument("--out", required=True, help="the pyramid to write, e.g. montage.ome.zarr")
    y.add_argument("--force", action="store_true", help="replace an existing pyramid")

    g = commands.add_parser("gui", help="open napari with the napari-unet widgets docked and a sample loaded")
    g.add_argument("data", nargs="?", help="image, stack or folder to open instead of a sample")
    g.add_argument("--sample", choices=["em", "fundus", "none"], default="em", help="sample to load (default em)")
    g.add_argument("--screenshot", help="smoke mode: predict, save a PNG of the whole window to this path, exit")
    g.add_argument("--no-predict", action="store_true", help="with --screenshot: do not predict first")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        commands = {"predict": _predict, "suggest": _suggest, "train": _train, "evaluate": _evaluate,
                    "export": _export, "pyramid": _pyramid, "gui": _gui}
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("napari-unet: interrupted; no output was written.", file=sys.stderr)
        return 130
    except (ValueError, FileExistsError, MemoryError) as exc:  # DataError, CheckpointError, UsageError
        print(f"napari-unet: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


# ---------------------------------------------------------------------------- helpers


def _check_output(path: str, force: bool, suffixes: tuple[str, ...], inputs: dict | None = None,
                  what: str = "--out") -> Path:
    """The output ``path``, checked before any work: its suffix, its folder, never one of the
    command's ``inputs`` ({"the input image": path, ...}; not even with --force), and not
    an existing file unless ``force``."""
    from .core.files import refuse_input

    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise UsageError(f"{out.name}: the output must end in {' or '.join(suffixes)}.")
    try:
        refuse_input(out, inputs or {}, what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists: choose another name or add --force to overwrite it.")
    if not out.parent.exists():
        raise UsageError(f"The folder {out.parent} does not exist: create it first.")
    return out


def _predict_inputs(args) -> dict:
    """What `predict` reads, for `_check_output`: no output may be one of them."""
    fov = args.fov if args.fov not in ("auto", "none") else None
    return {"the input image": args.input, "the --model checkpoint": args.model, "the --fov mask": fov}


def _write_tif_atomic(path: Path, array: np.ndarray) -> None:
    import tifffile

    from .core.files import atomic_write

    # (3, Y, X) is 3 slices, not an RGB image.
    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, array, photometric="minisblack"))


def _progress_bar(total: int, unit: str, disable: bool = False):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False, disable=disable)


def _parse_slices(values: list[str], count: int, option: str = "--val-slices") -> list[int]:
    from .core.data import parse_slices

    return parse_slices(" ".join(values), count, option)


# ---------------------------------------------------------------------------- commands


def _predict(args) -> int:
    from .core.checkpoint import load_checkpoint
    from .core.data import as_stack, read_stack
    from .core.predict import describe_device
    from .core.volume import is_volume_path

    if args.workers or args.scheduler:
        return _predict_cluster(args)
    suffixes = (".tif", ".tiff", ".zarr")
    inputs = _predict_inputs(args)
    out = _check_output(args.out, args.force, suffixes, inputs)
    extra = {name: _check_output(path, args.force, suffixes, inputs, name)
             for name, path in (("--probabilities", args.probabilities), ("--instances", args.instances)) if path}
    names = [out.resolve()] + [p.resolve() for p in extra.values()]
    if len(set(names)) < len(names):
        raise UsageError("--out, --probabilities and --instances name the same file: choose different names.")
    checkpoint = load_checkpoint(args.model)
    if args.slices or is_volume_path(args.input) or any(p.suffix.lower() == ".zarr" for p in [out, *extra.values()]):
        return _predict_streamed(args, out, extra, checkpoint)
    raw = read_stack(args.input)
    images = as_stack(raw)
    fov = _fov_mask(args.fov, images.shape[:3])
    pipeline = _pipeline(args, checkpoint, images, instances="--instances" in extra)
    start = time.perf_counter()
    progress, bar = _tile_progress()
    try:
        result = pipeline.run(images, fov, progress, name=Path(args.input).name)
    finally:
        bar.close()
    outputs = {out: result.mask}
    if "--probabilities" in extra:
        outputs[extra["--probabilities"]] = result.probabilities
    if "--instances" in extra:
        outputs[extra["--instances"]] = result.cells.astype(np.uint32)
    # Same Z/Y/X as the input: a single 2D (or RGB) image gives a 2D mask.
    squeeze = images.shape[0] == 1 and (raw.ndim == 2 or images.shape[-1] == 3 and raw.ndim == 3)
    try:
        for path, array in outputs.items():
            _write_tif_atomic(path, array[0] if squeeze else array)
    except BaseException:
        for path in outputs:
            path.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    z, y, x = images.shape[:3]
    print(
        f"predicted {z} slice(s) of {y}x{x} with {args.model} on {describe_device(pipeline.device)} in {seconds:.1f} s: "
        f"{100 * result.mask.mean():.1f}% structure -> {out}"
    )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _pipeline(args, checkpoint, volume, instances: bool = False):
    """The `core.pipeline.Pipeline` of `predict`'s options (the same for every path).

    Args:
        volume: (Z, Y, X, C) array-like: the input, for ``--levels volume``.
    """
    from .core.pipeline import Pipeline
    from .core.settings import PredictSettings
    from .core.volume import pixel_size_of, volume_levels

    pixel_size = args.pixel_size
    if pixel_size is None and checkpoint.info.pixel_size_nm is not None:
        pixel_size = pixel_size_of(args.input)
        if pixel_size is not None:
            print(f"note: pixel size {pixel_size:g} nm, from {Path(args.input).name}'s metadata "
                  "(--pixel-size overrides it)", file=sys.stderr)
    levels = volume_levels(volume, checkpoint.normalization) if args.levels == "volume" else None
    fov = args.fov if args.fov in ("auto", "none") else "auto"  # a mask file is given to `run`
    pipeline = Pipeline(checkpoint, PredictSettings(device=args.device, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, pixel_size=pixel_size, fov=fov, threshold=args.threshold, instances=instances, levels=levels))
    if instances and pipeline.uses_fov:
        raise UsageError("--instances is for grey (EM) images: cells of vessels are not defined.")
    return pipeline


def _fov_mask(option: str, shape: tuple) -> np.ndarray | None:
    """The --fov mask file as (Z, Y, X) bool (one mask serves every slice), or None for
    'auto' / 'none'.

    Args:
        shape: (Z, Y, X) of the images.
    """
    from .core.data import as_stack, check_same_shape, read_stack

    if option in ("auto", "none"):
        return None
    fov = as_stack(read_stack(option))[..., 0] != 0
    if fov.shape[0] == 1 and shape[0] > 1:
        fov = np.broadcast_to(fov, shape)
    check_same_shape(np.broadcast_to(False, shape), fov, "--fov mask")
    return fov


def _tile_progress():
    """A (progress callback, bar) pair: the tqdm bar appears at the first report."""

    class LazyBar:
        bar = None

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()

    holder = LazyBar()

    def progress(done: int, total: int) -> None:
        if holder.bar is None:
            holder.bar = _progress_bar(total, "tile")
        holder.bar.update(done - holder.bar.n)

    return progress, holder


def _predict_streamed(args, out: Path, extra: dict, checkpoint) -> int:
    """Predict a volume slice by slice into zarr stores or memory-mapped tifs (bounded memory).

    Outputs are written beside their final names and renamed when every slice is done,
    so an interrupted run leaves no half-written result under the name asked for.
    """
    from .core.blocks import in_blocks
    from .core.predict import describe_device
    from .core.pyramid import add_levels, multiscale_output
    from .core.stream import VolumeOutputs, predict_volume
    from .core.volume import create_output, open_volume

    volume = open_volume(args.input)
    shape = tuple(volume.data.shape[:3])
    fov = _fov_mask(args.fov, shape)
    slices = _parse_slices(args.slices, shape[0], "--slices") if args.slices else None
    pipeline = _pipeline(args, checkpoint, volume.data, instances="--instances" in extra)
    wanted = {out: np.uint8, extra.get("--probabilities"): np.float32, extra.get("--instances"): np.uint32}
    reduce = {out: "max", extra.get("--probabilities"): "mean", extra.get("--instances"): "pick"}
    temps = {path: path.with_name(f".{path.name}.partial{path.suffix}") for path in wanted if path is not None}
    multiscale = {path for path in temps if path.name.lower().endswith(".ome.zarr")}
    progress, bar = _tile_progress()
    try:
        arrays = {path: multiscale_output(temps[path], shape, wanted[path]) if path in multiscale
                  else create_output(temps[path], shape, wanted[path]) for path in temps}
        outputs = VolumeOutputs(arrays[out], arrays.get(extra.get("--probabilities")),
                                arrays.get(extra.get("--instances")))
        report = predict_volume(pipeline, volume.data, outputs, slices, fov=fov, progress=progress)
        bar.close()
        for array in arrays.values():
            if hasattr(array, "flush"):  # memory-mapped tif
                array.flush()
        del arrays, outputs
        for path in multiscale:  # levels napari browses: the one that fits the screen is read
            add_levels(temps[path], reduce[path], volume.pixel_size_nm, path.name)
        for path, temp in temps.items():
            _replace(temp, path)
    except BaseException:
        bar.close()
        for temp in temps.values():
            _remove(temp)
        raise
    device = pipeline.device
    _z, y, x = shape
    print(f"predicted {len(report.done)} slice(s) of {y}x{x} with {args.model} on {describe_device(device)} in "
          f"{report.seconds:.1f} s, slice by slice: {100 * report.structure:.1f}% structure -> {out}")
    if pipeline.scale_note:
        print(f"note: {pipeline.scale_note}", file=sys.stderr)
    if report.blank:
        print(f"note: slice(s) {report.blank[:20]} hold one value only (no image): left empty.", file=sys.stderr)
    if in_blocks(pipeline, (y, x)) and len(multiscale) < len(temps):
        print("note: slices this large open in napari without a freeze as a multiscale store: write them with "
              "--out mask.ome.zarr (also --probabilities prob.ome.zarr, --instances cells.ome.zarr).", file=sys.stderr)
    return 0


def _predict_cluster(args) -> int:
    """`predict --workers N` / `--scheduler ADDRESS`: blocks of slices on a dask cluster
    (`core.cluster`), into a zarr store that a rerun of the same job resumes."""
    import os

    from .core.checkpoint import load_checkpoint
    from .core.cluster import predict_on_cluster, record_folder
    from .core.volume import open_volume

    if args.workers and args.scheduler:
        raise UsageError("--workers starts a local cluster and --scheduler uses an existing one: give one of them.")
    if args.fov not in ("auto", "none"):
        raise UsageError("On a cluster the field of view is found in each image: use --fov auto or none.")
    out = Path(args.out)
    if out.suffix.lower() != ".zarr" or any(str(p).lower().endswith(".ome.zarr") for p in
                                            (args.out, args.probabilities, args.instances) if p):
        raise UsageError(f"{out.name}: on a cluster the outputs are flat zarr stores, e.g. --out mask.zarr (a "
                         "multiscale .ome.zarr is written by one process, without --workers).")
    if not out.parent.exists():
        raise UsageError(f"The folder {out.parent} does not exist: create it first.")
    _check_output(args.out, True, (".zarr",), _predict_inputs(args))  # never over an input, even with --force
    extra = {}
    for name, path in (("--probabilities", args.probabilities), ("--instances", args.instances)):
        if path:
            if Path(path).suffix.lower() != ".zarr":
                raise UsageError(f"{Path(path).name}: on a cluster {name} is a zarr store too, e.g. {name} x.zarr.")
            extra[name] = _check_output(path, True, (".zarr",), _predict_inputs(args), name)
    if len({p.resolve() for p in [out, *extra.values()]}) < 1 + len(extra):
        raise UsageError("--out, --probabilities and --instances name the same store: choose different names.")
    records = record_folder(out)
    if args.force:
        for path in [out, records, *extra.values()]:
            _remove(path)
    elif out.exists() and not records.is_dir():
        raise FileExistsError(f"{out} exists: choose another name or add --force to overwrite it.")
    checkpoint = load_checkpoint(args.model)
    pipeline = _pipeline(args, checkpoint, open_volume(args.input).data, instances="--instances" in extra)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--workers and --scheduler need dask.distributed: pip install 'napari-unet[all]'.") from None
    if args.scheduler:
        client, cluster, threads = Client(args.scheduler, timeout="30s"), None, None
    else:  # one torch thread pool per worker, sharing the cores between them
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        client, threads = Client(cluster), max(1, (os.cpu_count() or 1) // args.workers)
    bar = _progress_bar(0, "slice")
    try:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = predict_on_cluster(client, checkpoint, args.input, out, threshold=pipeline.threshold,
                                    pixel_size=pipeline.pixel_size, tile=args.tile, overlap=args.overlap,
                                    batch_size=args.batch_size, fov=pipeline.fov_mode, levels=pipeline.levels,
                                    probabilities=extra.get("--probabilities"), instances=extra.get("--instances"),
                                    threads=threads, cpu=args.device == "cpu", progress=progress)
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
    where = f"{args.workers} local worker(s)" if args.workers else args.scheduler
    skipped = f", {len(report.skipped)} done by an earlier run" if report.skipped else ""
    print(f"predicted {len(report.done)} slice(s) on {where} in {report.seconds:.1f} s{skipped} -> {out}")
    if report.blank:
        print(f"note: slice(s) {sorted(report.blank)[:20]} hold one value only (no image): left empty.", file=sys.stderr)
    return 0


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; an old ``target`` (allowed by --force) goes only once
    the new one is in place."""
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        _remove(old)
        target.rename(old)
    source.rename(target)
    _remove(old)


def _join_process_group(device):
    """Join the torchrun run this process belongs to (NCCL between GPUs, gloo on CPUs);
    returns this process's device (its own GPU, ``LOCAL_RANK``)."""
    import os

    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise UsageError("--distributed runs under torchrun, which starts the processes: torchrun "
                         "--nproc_per_node=N $(which napari-unet) train ... --distributed")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def _train(args) -> int:
    from .core.checkpoint import default_metadata
    from .core.description import ModelDescription
    from .core.data import apply_fov, check_images, data_hash, load_pairs, normalize
    from .core.model import UNet, UNetConfig
    from .core.predict import describe_device, resolve_device
    from .core.train import TrainConfig, TrainingData, train

    out = _check_output(args.out, args.force, (".pt", ".pth"), {
        "the --images stack": args.images, "the --labels file": args.labels, "the --fov mask": args.fov,
        "the --from model": args.from_model, "the --edited mask": args.edited})
    device = _join_process_group(resolve_device(args.device)) if args.distributed else resolve_device(args.device)
    if args.from_model and (Path(args.labels) / "state.json").is_file():  # a montage's corrected chunks
        return _fine_tune_montage(args, out, device)
    stack = load_pairs(args.images, args.labels, args.fov, invert_labels=args.invert_labels)
    note = check_images(stack.images, Path(args.images).name)
    if note:
        print(f"note: {note}", file=sys.stderr)
    channels = stack.images.shape[-1]
    labels = apply_fov(stack.labels, stack.fov)
    if args.from_model:
        try:
            return _fine_tune(args, stack.images, labels, out, device)
        finally:
            if args.distributed:
                import torch.distributed as dist

                dist.destroy_process_group()
    if args.slices or args.edited:
        raise UsageError("--slices and --edited describe corrections: they go with --from (a fine-tune).")
    model = UNet(UNetConfig(in_channels=channels, base_width=args.base_width, depth=args.depth))
    metadata = default_metadata(args.task or stack.kind)
    count = labels.shape[0]
    if args.no_val or count < 2:
        val = []
    elif args.val_slices:
        val = _parse_slices(args.val_slices, count)
    else:
        val = list(range(count - max(1, count // 10), count)) if count >= 4 else []
    train_slices = [z for z in range(count) if z not in val]
    if not train_slices:
        raise UsageError("Every slice is held out for validation: leave at least one to train on.")
    config = TrainConfig(steps=1500 if args.steps is None else args.steps, seed=args.seed, device=str(device),
                         **_recipe_overrides(args))
    data = TrainingData(normalize(stack.images, ModelDescription.from_metadata(metadata).normalization), labels, train_slices, val)
    metadata["data_hash"] = data_hash(stack.images, labels)
    metadata["tile_size"] = max(256, config.crop_size)

    main_process = not args.distributed or _rank() == 0  # the one that reports and writes
    if main_process:
        print(f"training on {len(train_slices)} slice(s), validating on {len(val)}, {config.steps} steps "
              f"on {describe_device(device)}", file=sys.stderr)
    bar = _progress_bar(config.steps, "step", disable=not main_process)
    last = None
    try:
        for event in train(model, data, config, out, metadata):
            last = event
            bar.update(event.step - bar.n)
            postfix = {"loss": f"{event.loss:.3f}" if event.loss is not None else "-"}
            if event.best_dice is not None:
                postfix["best val dice"] = f"{event.best_dice:.3f}"
            bar.set_postfix(postfix, refresh=False)
    except BaseException:
        bar.close()
        if last is None and main_process:  # nothing saved yet: leave no file behind
            out.unlink(missing_ok=True)
        raise
    finally:
        if args.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    bar.close()
    if main_process:
        score = f", best validation Dice {last.best_dice:.3f}" if last.best_dice is not None else ""
        processes = f" x {metadata['history'][-1]['processes']} processes" if args.distributed else ""
        print(f"trained {config.steps} steps{processes} in {last.elapsed_s:.0f} s{score} -> {out}")
    return 0


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank()


def _recipe_overrides(args) -> dict:
    """The training options the user gave (the recipe's defaults stand for the others)."""
    given = {"batch_size": args.batch_size, "crop_size": args.crop_size, "learning_rate": args.lr,
             "border_weights": args.border_weights or None}
    return {k: v for k, v in given.items() if v is not None}


def _fine_tune(args, images, labels, out: Path, device) -> int:
    """``train --from``: the fine-tune of the widget (`core.finetune`), from files."""
    from .core.checkpoint import load_checkpoint
    from .core.data import DataError, check_same_shape, read_stack
    from .core.finetune import FineTune, describe_plan
    from .core.labels import IGNORE
    from .core.predict import describe_device

    count = labels.shape[0]
    if args.slices:
        corrected = _parse_slices(args.slices, count, "--slices")
    else:
        corrected = [z for z in range(count) if np.any(labels[z] != IGNORE)]
    if args.val_slices:
        raise UsageError("--val-slices: a fine-tune holds out each corrected slice in turn (cross-validation); "
                         "leave it out (or use --no-val to train on all of them without a check).")
    edited = None
    if args.edited:
        edited = read_stack(args.edited)
        edited = (edited[..., 0] if edited.ndim == 4 else edited) != 0
        check_same_shape(labels, edited, "--edited mask")
    checkpoint = load_checkpoint(args.from_model)
    options = _fine_tune_options(args, device)
    try:
        run = FineTune(checkpoint, images, labels, corrected, edited, options, start_name=args.from_model)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    plan = describe_plan(corrected, options, run.anchored)
    return _run_fine_tune(args, run, f"{plan} on {describe_device(device)}", out)


def _fine_tune_options(args, device):
    from .core.finetune import FineTuneOptions

    return FineTuneOptions(steps=FineTuneOptions.steps if args.steps is None else args.steps, verify=not args.no_val,
                           device=str(device), seed=args.seed, recipe=_recipe_overrides(args))


def _fine_tune_montage(args, out: Path, device) -> int:
    """``train --from`` on a montage's corrections folder: the widget's fine-tune on the
    corrected chunks (`core.regions.fine_tune_on_chunks`), read by region from the montage."""
    from .core.checkpoint import load_checkpoint
    from .core.data import DataError
    from .core.predict import describe_device
    from .core.regions import CHUNK, CONTEXT, MontageCorrections, fine_tune_on_chunks
    from .core.volume import open_volume

    if args.slices or args.edited or args.val_slices or args.fov:
        raise UsageError("--slices, --edited, --val-slices and --fov do not go with a montage's corrections folder: "
                         "it says which chunks were corrected and which pixels painted.")
    volume = open_volume(args.images).data
    options = _fine_tune_options(args, device)
    try:
        corrections = MontageCorrections(args.labels, tuple(volume.shape[:3]))
        run, chunks = fine_tune_on_chunks(load_checkpoint(args.from_model), volume, corrections, options,
                                          start_name=args.from_model)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return _run_fine_tune(args, run, f" on {len(chunks)} corrected chunk(s) of {CHUNK} px (read with {CONTEXT} px "
                          f"around), cross-validated over neighbouring chunks, on {describe_device(device)}", out)


def _run_fine_tune(args, run, plan: str, out: Path) -> int:
    """Run a fine-tune with a progress bar; write the model (the starting one when refused)."""
    from .core.checkpoint import save_checkpoint
    from .core.finetune import describe_outcome

    # Under torchrun every process trains (train() shares the gradients); rank 0 reports and writes.
    main_process = not args.distributed or _rank() == 0
    if main_process:
        print(f"fine-tuning {args.from_model}{plan}", file=sys.stderr)
    bar = _progress_bar(run.options.steps * (len(run.folds) + 1), "step", disable=not main_process)  # folds + final
    for event in run.run():
        bar.total = event.total
        bar.update(event.step - bar.n)
        postfix = {"stage": event.stage, "loss": f"{event.loss:.3f}" if event.loss is not None else "-"}
        if event.val_dice is not None:  # a fold was scored on its held-out part
            postfix["held-out Dice"] = f"{event.best_dice:.3f} -> {event.val_dice:.3f}"
        bar.set_postfix(postfix, refresh=False)
    bar.close()
    result = run.result
    if main_process:
        save_checkpoint(out, result.model, result.metadata)
        what = "" if result.report["kept"] else " (the starting model, with this round in its history)"
        print(f"{describe_outcome(result.report)} -> {out}{what}")
    return 0


def _suggest(args) -> int:
    """`suggest`: which slices to correct next (`core.uncertainty`), streamed slice by slice."""
    import json

    from .core.checkpoint import load_checkpoint
    from .core.uncertainty import default_method, suggest
    from .core.volume import open_volume

    volume = open_volume(args.input).data
    shape = tuple(volume.shape[:3])
    corrected = _parse_slices(args.corrected, shape[0], "--corrected") if args.corrected else []
    fov = _fov_mask(args.fov, shape)
    pipeline = _pipeline(args, load_checkpoint(args.model), volume)
    method = args.method or default_method(pipeline, shape[1:])
    progress, bar = _tile_progress()
    try:
        result = suggest(pipeline, volume, corrected, method, fov, progress)
    finally:
        bar.close()
    print(f"{len(result.order)} slice(s) ranked by uncertainty ({method}); correct these next:")
    for z in result.order[: args.top]:
        print(f"  slice {z}: {result.uncertainty[z]:.4f}")
    if args.json:
        print(json.dumps({"uncertainty": [None if u != u else round(u, 6) for u in result.uncertainty],
                          "order": result.order, "method": method}))
    return 0


def _evaluate(args) -> int:
    from .core.data import read_stack
    from .core.metrics import evaluate, scoring_inputs

    fov = read_stack(args.fov) if args.fov else None
    pred, truth, scored = scoring_inputs(read_stack(args.pred), read_stack(args.truth), fov, args.invert_truth)
    scores = evaluate(pred, truth, args.task, fov=scored)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
    print(f"{args.task} scores over {truth.shape[0]} slice(s): {summary}")
    if args.json:
        print(json.dumps({k: float(v) for k, v in scores.items()}))
    return 0


def _export(args) -> int:
    from .core.export import default_sample, export_package
    from .core.checkpoint import load_checkpoint
    from .core.data import as_stack, read_stack

    out = _check_output(args.out, args.force, (".zip",), {"the --model checkpoint": args.model,
                                                          "the --sample image": args.sample})
    checkpoint = load_checkpoint(args.model)
    sample = as_stack(read_stack(args.sample))[0] if args.sample else default_sample(checkpoint.task)
    if sample.shape[-1] != checkpoint.config.in_channels:
        raise UsageError(f"--sample has {sample.shape[-1]} channel(s) but the model takes "
                         f"{checkpoint.config.in_channels}: give an image of the kind the model is for.")
    path = export_package(checkpoint, out, sample, name=args.name, authors=args.author, license=args.license)
    print(f"exported {args.model} as a bioimage.io package -> {path}")
    return 0


def _pyramid(args) -> int:
    """`pyramid`: an OME-Zarr pyramid of a large image (`core.pyramid`), block by block."""
    from .core.pyramid import write_pyramid
    from .core.volume import open_volume

    out = _check_output(args.out, args.force, (".zarr",), {"the input image": args.input})
    volume = open_volume(args.input)
    if args.force:
        _remove(out)
    start = time.perf_counter()
    bar = _progress_bar(0, "block")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        shapes = write_pyramid(volume, out, progress)
    finally:
        bar.close()
    sizes = ", ".join(f"{y}x{x}" for _z, y, x in shapes)
    print(f"wrote {len(shapes)} level(s) ({sizes}) in {time.perf_counter() - start:.1f} s -> {out}")
    return 0


def _gui(args) -> int:
    from ._launch import run

    sample = None if args.sample == "none" else args.sample
    if args.screenshot:
        _check_output(args.screenshot, True, (), {"the image to open": args.data}, "--screenshot")
    return run(args.data, sample, args.screenshot, predict=not args.no_predict)


if __name__ == "__main__":
    sys.exit(main())
