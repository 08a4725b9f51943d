"""`napari-unet train`: a new model from labelled slices, or, with ``--from``, a fine-tune.

Three modes, one function each: `train_from_scratch`; `cli.finetune.fine_tune` (``--from``
with a label stack: the widget's one-click recipe); `cli.finetune.fine_tune_montage`
(``--from`` with a montage's corrections folder). `run` picks the mode and refuses the
options that do not belong to it, before anything is read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._common import (
    PathLike,
    UsageError,
    check_output,
    is_main_process,
    note,
    number,
    progress_bar,
    slice_numbers,
    training_device,
)

STEPS = number("--steps", int, 1, what="a whole number of training steps, at least 1", example="1500")
CROP = number("--crop-size", int, 16, 8192, what="a crop size in pixels between 16 and 8192", example="256")
CROP_BATCH = number("--batch-size", int, 1, 1024, what="a number of crops per step between 1 and 1024", example="4")
LEARNING_RATE = number("--lr", float, 0.0, 1.0, low_open=True, what="a learning rate above 0 and at most 1",
                       example="1e-3")
WIDTH = number("--base-width", int, 2, 512, what="a U-Net width (channels of its first level) between 2 and 512",
               example="32")
DEPTH = number("--depth", int, 1, 7, what="a U-Net depth (levels) between 1 and 7", example="4")
SEED = number("--seed", int, 0, what="a random seed, a whole number from 0", example="0")
#: A new model's shape and training length, unless the user gives them.
BASE_WIDTH, DEPTH_LEVELS, SCRATCH_STEPS = 32, 4, 1500
CHECKPOINT_SUFFIXES = (".pt", ".pth")


def add_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--images", required=True, help="image file, stack or folder")
    t.add_argument("--labels", required=True, help="labels: nonzero = structure (or 0/1/2 with 2 = ignore); with "
                   "--from, also a montage's corrections folder (<image>.napari-unet/montage, saved by the widgets)")
    t.add_argument("--fov", help="field-of-view mask(s); pixels outside are ignored")
    t.add_argument("--invert-labels", action="store_true", help="structure is 0 in the label files (ISBI 2012)")
    t.add_argument("--from", dest="from_model", help="checkpoint or built-in name to fine-tune")
    t.add_argument("--out", required=True, help="checkpoint file to write (the best model)")
    t.add_argument("--steps", type=STEPS, help=f"training steps (default {SCRATCH_STEPS} from scratch; to fine-tune, "
                   "30 per model)")
    t.add_argument("--val-slices", nargs="+", help="held-out slices, e.g. 25 26 or 25-29 (default: last 10%% of >=4 "
                   "slices; not with --from, which holds out each corrected slice in turn)")
    t.add_argument("--no-val", action="store_true", help="train on every slice, without validation (with --from: "
                   "keep the model unchecked)")
    t.add_argument("--slices", nargs="+", help="with --from: the corrected slices to learn from, e.g. 3 7 or 0-4 "
                   "(default: every slice with a labelled pixel)")
    t.add_argument("--edited", help="with --from: mask of the pixels you painted, nonzero = edited (added to "
                   "those where the starting model disagrees with the labels)")
    t.add_argument("--task", choices=["em", "fundus"], help="from scratch: em or fundus (default: fundus for RGB "
                   "images, em otherwise)")
    t.add_argument("--base-width", type=WIDTH, help=f"from scratch: U-Net width of the first level (default "
                   f"{BASE_WIDTH})")
    t.add_argument("--depth", type=DEPTH, help=f"from scratch: U-Net depth (default {DEPTH_LEVELS})")
    t.add_argument("--crop-size", type=CROP, help="training crop size in pixels")
    t.add_argument("--batch-size", type=CROP_BATCH, help="crops per step")
    t.add_argument("--lr", type=LEARNING_RATE, help="peak learning rate")
    t.add_argument("--border-weights", action="store_true", help="U-Net border weight map (touching cells)")
    t.add_argument("--seed", type=SEED, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    t.add_argument("--distributed", action="store_true", help="one process of a multi-GPU (or multi-process) run "
                   "started by torchrun, e.g. torchrun --nproc_per_node=4 $(which napari-unet) train ... --distributed")
    t.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")


def run(args: argparse.Namespace) -> int:
    """Pick the mode from ``--from`` and ``--labels``; refuse the options of another mode."""
    from .finetune import fine_tune, fine_tune_montage

    common = {"steps": args.steps, "validate": not args.no_val, "crop_size": args.crop_size,
              "batch_size": args.batch_size, "learning_rate": args.lr, "border_weights": args.border_weights,
              "seed": args.seed, "device": args.device, "distributed": args.distributed, "force": args.force}
    if not args.from_model:
        _refuse(args, ("--slices", "--edited"), "Only a fine-tune of corrections takes {names}: add --from MODEL, "
                "or leave out {names}.")
        train_from_scratch(args.images, args.labels, args.out, fov=args.fov, invert_labels=args.invert_labels,
                           task=args.task, base_width=BASE_WIDTH if args.base_width is None else args.base_width,
                           depth=DEPTH_LEVELS if args.depth is None else args.depth, val_slices=args.val_slices,
                           **common)
        return 0
    _refuse(args, ("--task", "--base-width", "--depth"), "A fine-tune keeps the kind and shape of --from "
            f"{args.from_model}: leave out {{names}} (for a new model only).")
    if args.val_slices:
        raise UsageError("--val-slices: a fine-tune holds out each corrected slice in turn (cross-validation); "
                         "leave it out (or use --no-val to train on all of them without a check).")
    if (Path(args.labels) / "state.json").is_file():  # a montage's corrected chunks
        _refuse(args, ("--slices", "--edited", "--fov", "--invert-labels"), "A montage's corrections folder "
                "says which chunks were corrected and which pixels painted: leave out {names}.")
        fine_tune_montage(args.images, args.labels, args.from_model, args.out, **common)
    else:
        fine_tune(args.images, args.labels, args.from_model, args.out, fov=args.fov,
                  invert_labels=args.invert_labels, slices=args.slices, edited=args.edited, **common)
    return 0


def _refuse(args: argparse.Namespace, options: tuple[str, ...], message: str) -> None:
    """Refuse those of ``options`` the user gave: ``message`` with ``{names}`` naming them."""
    given = [o for o in options if getattr(args, o.lstrip("-").replace("-", "_"))]
    if given:
        names = given[0] if len(given) == 1 else ", ".join(given[:-1]) + f" and {given[-1]}"
        raise UsageError(message.replace("{names}", names))


def read_training_pairs(images: PathLike, labels: PathLike, fov: PathLike | None, invert_labels: bool):
    """The images and labels to learn from (`core.data.load_pairs`), a warning about the
    images said once, and the labels with IGNORE outside the FOV.

    Returns:
        (the `core.data.Stack`, (Z, Y, X) uint8 labels).
    """
    from ..core.data import apply_fov, check_images, load_pairs

    stack = load_pairs(images, labels, fov, invert_labels=invert_labels)
    warning = check_images(stack.images, Path(images).name)
    if warning:
        note(warning)
    return stack, apply_fov(stack.labels, stack.fov)


def recipe_overrides(crop_size: int | None, batch_size: int | None, learning_rate: float | None,
                     border_weights: bool) -> dict:
    """The training options the user gave (the recipe's defaults stand for the others)."""
    given = {"batch_size": batch_size, "crop_size": crop_size, "learning_rate": learning_rate,
             "border_weights": border_weights or None}
    return {k: v for k, v in given.items() if v is not None}


def train_from_scratch(images: PathLike, labels: PathLike, out: PathLike, *, fov: PathLike | None = None,
                       invert_labels: bool = False, task: str | None = None, base_width: int = BASE_WIDTH,
                       depth: int = DEPTH_LEVELS, steps: int | None = None,
                       val_slices: str | Sequence[int] | None = None, validate: bool = True,
                       crop_size: int | None = None, batch_size: int | None = None,
                       learning_rate: float | None = None, border_weights: bool = False, seed: int = 0,
                       device: str = "auto", distributed: bool = False, force: bool = False) -> Path:
    """Train a new U-Net on ``images`` and ``labels``; write the best model to ``out``.

    Args:
        images: a (Z, Y, X[, 3]) stack, an image or a folder of images.
        labels: the same Z/Y/X: nonzero = structure (or 0/1/2 with 2 = ignore).
        out: the checkpoint to write (.pt or .pth).
        fov: field-of-view mask(s): pixels outside are not learnt.
        invert_labels: structure is 0 in ``labels`` (ISBI 2012 files).
        task: "em" or "fundus"; None: fundus for RGB images, em otherwise.
        base_width, depth: the U-Net's width of its first level and number of levels.
        steps: training steps (None: `SCRATCH_STEPS`).
        val_slices: held-out slices, e.g. "25-29"; None: the last 10% of 4 slices or more.
        validate: False trains on every slice, without validation.
        crop_size, batch_size, learning_rate, border_weights: the recipe (None: its default).
        seed, device: how reproducibly and where.
        distributed: one process of a torchrun run (rank 0 reports and writes).
        force: replace an existing ``out``.

    Returns:
        ``out``.
    """
    from ..core.checkpoint import default_metadata
    from ..core.data import data_hash, normalize
    from ..core.description import ModelDescription
    from ..core.model import UNet, UNetConfig
    from ..core.predict import describe_device
    from ..core.train import TrainConfig, TrainingData, train

    if val_slices and not validate:
        raise UsageError("--val-slices holds slices out for validation and --no-val trains on all of them: give "
                         "one of them.")
    out = check_output(out, force, CHECKPOINT_SUFFIXES, {"the --images stack": images, "the --labels file": labels,
                                                         "the --fov mask": fov})
    with training_device(device, distributed) as torch_device:
        stack, truth = read_training_pairs(images, labels, fov, invert_labels)
        count = truth.shape[0]
        if not validate or count < 2:
            val = []
        elif val_slices:
            val = slice_numbers(val_slices, count, "--val-slices")
        else:
            val = list(range(count - max(1, count // 10), count)) if count >= 4 else []
        train_slices = [z for z in range(count) if z not in val]
        if not train_slices:
            raise UsageError("--val-slices holds out every slice: leave at least one to train on.")
        model = UNet(UNetConfig(in_channels=stack.images.shape[-1], base_width=base_width, depth=depth))
        metadata = default_metadata(task or stack.kind)
        config = TrainConfig(steps=SCRATCH_STEPS if steps is None else steps, seed=seed, device=str(torch_device),
                             **recipe_overrides(crop_size, batch_size, learning_rate, border_weights))
        normalization = ModelDescription.from_metadata(metadata).normalization
        data = TrainingData(normalize(stack.images, normalization), truth, train_slices, val)
        metadata["data_hash"] = data_hash(stack.images, truth)
        metadata["tile_size"] = max(256, config.crop_size)
        main_process = is_main_process(distributed)  # the one that reports and writes
        if main_process:
            print(f"training on {len(train_slices)} slice(s), validating on {len(val)}, {config.steps} steps "
                  f"on {describe_device(torch_device)}", file=sys.stderr)
        bar = progress_bar(config.steps, "step", disable=not main_process)
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
            if last is None and main_process:  # nothing saved yet: leave no file behind
                out.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
    if main_process:
        score = f", best validation Dice {last.best_dice:.3f}" if last.best_dice is not None else ""
        processes = f" x {metadata['history'][-1]['processes']} processes" if distributed else ""
        print(f"trained {config.steps} steps{processes} in {last.elapsed_s:.0f} s{score} -> {out}")
    return out
