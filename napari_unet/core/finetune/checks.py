"""What a fine-tune refuses before it trains, said in the user's words: inputs that do
not fit the model, and labels that could neither teach it nor score it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..checkpoint import Checkpoint
from ..labels import IGNORE, STRUCTURE
from ..train import TrainingData
from .calibrate import search_regions
from .options import FineTuneOptions
from .rules import Fold, has_cell

if TYPE_CHECKING:
    from .run import FineTune


def check_inputs(checkpoint: Checkpoint, images, labels, corrected: list[int], edited,
                 options: FineTuneOptions) -> None:
    """Refuse (ValueError) what cannot be read together: shapes, the model's channels,
    the corrected slices, the options."""
    if images.shape[:3] != labels.shape:
        raise ValueError(f"The labels {labels.shape} do not match the images {images.shape[:3]}.")
    if images.shape[-1] != checkpoint.config.in_channels:
        raise ValueError("The model does not take this kind of image (grey vs RGB): choose a matching model.")
    if edited is not None and edited.shape != labels.shape:
        raise ValueError(f"The edited-pixel mask {edited.shape} does not match the labels {labels.shape}.")
    if not 0.0 < options.update_share <= 1.0:
        raise ValueError(f"update_share={options.update_share}: choose a share above 0 and at most 1.")
    if not corrected:
        raise ValueError("No corrected slice yet: correct at least one slice.")
    outside = [z for z in corrected if not 0 <= z < images.shape[0]]
    if outside:
        raise ValueError(f"Slice {outside[0]} is not in the stack (slices 0-{images.shape[0] - 1}): choose "
                         "corrected slices of this image.")


def check_labels(run: FineTune) -> None:
    """Refuse (ValueError), before any training, corrected labels that teach nothing, or
    that the checks could not score: every corrected part needs labelled pixels, some
    need structure, and on EM every part a check scores needs a cell (V_Rand compares
    cells; without one it is undefined, and the run would fail after its training)."""
    parts, what = run.parts, run.part_names
    structure, inside = ("membrane", "cell") if run.task == "em" else ("vessel", "background")
    part = "slice" if what is None else "region"
    for i, label in enumerate(parts.raw_labels):
        if not np.any(label != IGNORE):
            raise ValueError(f"{_capital(parts.name([i], what))} has no labelled pixel: label it or leave it out.")
    if not np.any(parts.raw_labels == STRUCTURE):
        raise ValueError(f"The corrected {part}s hold no {structure} (label 1): their labels are all background, "
                         f"so there is nothing to learn. Paint the {structure}s as 1 where you corrected, or check "
                         f"that the labels are not inverted ({structure} = 1, {inside} = 0).")
    TrainingData(parts.images, parts.labels, list(range(len(parts))))  # the checks of training
    if run.task != "em" or not run.folds:
        return
    checked = [(run.fold_name(f), parts.truth(f.scored), parts.scored_region(f)) for f in run.folds]
    if run.recalibrates:  # the scale check scores each part a fold learns from, alone
        for fold in [*run.folds, Fold(list(range(len(parts))), [])]:
            for i, region, window in search_regions(run, fold):
                name = parts.name([i], what) if fold.half is None else parts.half_name(fold.half, parts.name([i], what))
                where = name if window == (slice(None), slice(None)) else f"the middle of {name}"
                checked.append((where, parts.truth([i])[0][window][None], region[window][None]))
    for where, truth, region in checked:
        if not has_cell(truth, region):
            raise ValueError(
                f"{_capital(where)} is labelled {structure} wherever it is labelled: with no {inside} pixel there, "
                f"the fine-tune cannot check that the model keeps the cells apart. Paint the inside of the cells as "
                f"background (0) there, or check that the labels are not inverted ({structure} = 1, {inside} = 0).")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]
