"""`napari-unet train --from`: the widget's one-click fine-tune (`core.finetune`), from files.

Two modes: a label stack (`fine_tune`), or a montage's corrections folder saved by the
widgets (`fine_tune_montage`, `core.regions`). Both cross-validate on the corrections
and keep the starting model when nothing beats it; both write a checkpoint either way.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._common import (
    PathLike,
    check_output,
    is_main_process,
    progress_bar,
    read_mask,
    slice_numbers,
    training_device,
)
from .train import CHECKPOINT_SUFFIXES, read_training_pairs, recipe_overrides

if TYPE_CHECKING:
    import torch

    from ..core.finetune import FineTune, FineTuneOptions


def fine_tune_options(model: str, steps: int | None, validate: bool, device: str | torch.device, seed: int,
                      recipe: dict) -> FineTuneOptions:
    """The `core.finetune.FineTuneOptions` of the command line (the only place that makes them).

    Args:
        model: the starting model as the user named it (for the record).
        steps: steps of each model; None: the recipe's.
        validate: cross-validate and keep the result only on a gain; False: keep it unchecked.
        device: the torch device this process trains (and predicts) on.
        recipe: overrides of the training recipe (`recipe_overrides`).
    """
    from ..core.finetune import FineTuneOptions
    from ..core.settings import PredictSettings

    # `train` has no prediction options: every check predicts as `predict` does by default.
    return FineTuneOptions(steps=FineTuneOptions.steps if steps is None else steps, verify=validate,
                           device=str(device), seed=seed, recipe=recipe, predict=PredictSettings(model=str(model)))


def fine_tune(images: PathLike, labels: PathLike, model: str, out: PathLike, *, fov: PathLike | None = None,
              invert_labels: bool = False, slices: str | Sequence[int] | None = None,
              edited: PathLike | None = None, steps: int | None = None, validate: bool = True,
              crop_size: int | None = None, batch_size: int | None = None, learning_rate: float | None = None,
              border_weights: bool = False, seed: int = 0, device: str = "auto", distributed: bool = False,
              force: bool = False) -> Path:
    """Fine-tune ``model`` on the corrected slices of ``labels``; write the result to ``out``.

    Args:
        images: the (Z, Y, X[, 3]) stack the corrections are of.
        labels: its (Z, Y, X) labels: nonzero = structure (or 0/1/2 with 2 = ignore).
        model: the starting checkpoint file or built-in name.
        out: the checkpoint to write (.pt or .pth): the fine-tuned model, or the starting
            one with this round in its history when the fine-tune was refused.
        fov, invert_labels: as `cli.train.train_from_scratch`.
        slices: the corrected slices, e.g. "3 7" or [3, 7]; None: every slice with a label.
        edited: (Z, Y, X) mask file of the pixels painted, nonzero = edited.
        steps: steps of each model; None: the recipe's (30).
        validate: hold each corrected slice out in turn and keep the result only on a gain;
            False: train on all of them and keep it unchecked.
        Others: as `cli.train.train_from_scratch`.

    Returns:
        ``out``.
    """
    from ..core.checkpoint import load_checkpoint
    from ..core.finetune import FineTune, describe_plan
    from ..core.labels import IGNORE
    from ..core.predict import describe_device

    out = check_output(out, force, CHECKPOINT_SUFFIXES, {
        "the --images stack": images, "the --labels file": labels, "the --fov mask": fov,
        "the --from model": model, "the --edited mask": edited})
    recipe = recipe_overrides(crop_size, batch_size, learning_rate, border_weights)
    with training_device(device, distributed) as torch_device:
        stack, truth = read_training_pairs(images, labels, fov, invert_labels)
        count = truth.shape[0]
        if slices:
            corrected = slice_numbers(slices, count, "--slices")
        else:
            corrected = [z for z in range(count) if np.any(truth[z] != IGNORE)]
        painted = None
        if edited:
            painted = read_mask(edited, truth.shape, "--edited", "a mask of the pixels you painted")
        checkpoint = load_checkpoint(model)
        options = fine_tune_options(model, steps, validate, torch_device, seed, recipe)
        run = FineTune(checkpoint, stack.images, truth, corrected, painted, options, start_name=str(model))
        plan = describe_plan(corrected, options, run.anchored)
        return _run(run, model, f"{plan} on {describe_device(torch_device)}", out, distributed)


def fine_tune_montage(images: PathLike, corrections: PathLike, model: str, out: PathLike, *,
                      steps: int | None = None, validate: bool = True, crop_size: int | None = None,
                      batch_size: int | None = None, learning_rate: float | None = None,
                      border_weights: bool = False, seed: int = 0, device: str = "auto", distributed: bool = False,
                      force: bool = False) -> Path:
    """Fine-tune ``model`` on the corrected chunks of a montage (`core.regions.fine_tune_on_chunks`),
    read by region from the montage.

    Args:
        images: the montage: a tif, zarr / OME-Zarr or folder of slices, read lazily.
        corrections: its corrections folder (``<image>.napari-unet/montage``, saved by the
            widgets): which chunks were corrected, their labels and the pixels painted.
        Others: as `fine_tune`.

    Returns:
        ``out``.
    """
    from ..core.checkpoint import load_checkpoint
    from ..core.finetune import describe_montage_plan
    from ..core.predict import describe_device
    from ..core.regions import CHUNK, CONTEXT, MontageCorrections, fine_tune_on_chunks
    from ..core.volume import open_volume

    out = check_output(out, force, CHECKPOINT_SUFFIXES, {
        "the --images montage": images, "the --labels corrections folder": corrections, "the --from model": model})
    recipe = recipe_overrides(crop_size, batch_size, learning_rate, border_weights)
    with training_device(device, distributed) as torch_device:
        volume = open_volume(images).data
        options = fine_tune_options(model, steps, validate, torch_device, seed, recipe)
        store = MontageCorrections(corrections, tuple(volume.shape[:3]))
        run, chunks = fine_tune_on_chunks(load_checkpoint(model), volume, store, options, start_name=str(model))
        plan = (f" on {len(chunks)} corrected chunk(s) of {CHUNK} px (read with {CONTEXT} px around): "
                f"{describe_montage_plan(len(chunks), options)}, on {describe_device(torch_device)}")
        return _run(run, model, plan, out, distributed)


def _run(run: FineTune, model: str, plan: str, out: Path, distributed: bool) -> Path:
    """Run a fine-tune with a progress bar; write the model (the starting one when refused)."""
    from ..core.checkpoint import save_checkpoint
    from ..core.finetune import describe_outcome

    # Under torchrun every process trains (train() shares the gradients); rank 0 reports and writes.
    main_process = is_main_process(distributed)
    if main_process:
        print(f"fine-tuning {model}{plan}", file=sys.stderr)
    bar = progress_bar(run.options.steps * (len(run.folds) + 1), "step", disable=not main_process)  # folds + final
    try:
        for event in run.run():
            bar.total = event.total
            bar.update(event.step - bar.n)
            postfix = {"stage": event.stage, "loss": f"{event.loss:.3f}" if event.loss is not None else "-"}
            if event.val_dice is not None:  # a fold was scored on its held-out part
                postfix["held-out Dice"] = f"{event.best_dice:.3f} -> {event.val_dice:.3f}"
            bar.set_postfix(postfix, refresh=False)
    finally:
        bar.close()
    result = run.result
    if main_process:
        save_checkpoint(out, result.model, result.metadata)
        kept = "" if result.report.kept else " (the starting model, with this round in its history)"
        print(f"{describe_outcome(result.report)} -> {out}{kept}")
    return out
