"""The one-click fine-tune: learn from a few corrected slices, keep the result only when
slices it never learnt from show the gain.

One recipe for the Fine-tune widget and ``napari-unet train --from``:

1. **Edits.** The pixels the user painted (the widget tracks them) and the pixels where
   the starting model's mask, as Predict shows it, disagrees with the labels. Without
   any, there is nothing to learn: the starting model is kept at once.
2. **Scale and threshold** (`FineTune._recalibrate`; grey slices only). The starting
   weights may see the user's slices at the wrong scale (another microscope's pixel
   size, which the user need not know) or draw structures wider than their annotator
   does. Each fold (step 4) chooses a zoom (`ZOOMS`; not on a montage) and a threshold
   on the parts it learns from, with the starting weights (best Dice + guard, both up),
   and is scored on its held-out part; when `decide` keeps them (the cells not down at
   all), the one of the folds' settings best on every corrected part becomes the
   baseline to beat.
3. **Learn from the corrections.** Half of the crops are centred on edited pixels, the
   others on labelled ones (never an unlabelled crop), and edited pixels weigh more.
   A few uncorrected slices of the stack are learnt too, labelled with the starting
   model's own mask (`ANCHORS`), so the model keeps what it did well elsewhere. The
   weights then go only half-way from the starting ones to the trained ones
   (`UPDATE_SHARE`): a few steps on a few slices overshoot.
4. **Cross-validate.** Each corrected slice is held out in turn (at most `MAX_FOLDS`
   folds; with one corrected slice, each half of it): a model trained on the rest, and
   moved half-way as it would ship, is scored on the whole held-out part, as Predict
   shows it, at the model's threshold: Dice, and V_Rand of the cells (EM) or clDice
   (vessels). No score is ever taken on a pixel the scored model learnt from, or chose
   its setting on.
5. **Decide** (`decide`): the recipe is kept only if the fine-tuned models beat the
   baseline on every held-out part (Dice up, the cells or vessels not worse by more
   than `TOLERANCE`) and by at least `MIN_GAIN` on average. On grey slices, a new
   threshold is taken only when it is better in every fold by `MIN_GAIN` too;
   photographs keep theirs. Otherwise the baseline (the starting model, re-scaled when
   step 2 was verified) is kept, and the report says why.
6. **Then use everything.** When kept, the model is trained from the start on all
   corrected slices with the same recipe (the one the folds verified).

The slices are prepared as Predict prepares them (`core.pipeline`: pixel size, FOV
diameter and colour of photographs), so the model learns from what it will be shown.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import numpy as np
import torch

from .checkpoint import Checkpoint
from .data import data_hash
from .labels import IGNORE, STRUCTURE
from .metrics import cl_dice, dice, em_challenge_scores
from .model import UNet
from .pipeline import Pipeline
from .settings import PredictSettings
from .predict import resolve_device
from .train import TrainEvent, TrainingData, fine_tune_recipe, train

#: Thresholds a fine-tuned model of grey slices may be given (only when every fold agrees, see `better_threshold`).
THRESHOLDS = [round(float(t), 2) for t in np.arange(0.2, 0.81, 0.05)]

#: Zooms the scale check tries on grey slices: 2**(k/3), from 0.5 (structures twice the
#: model's size: another microscope's smaller pixels) to 1.6. Larger zooms cost their
#: square in time; data with pixels more than 1.6 times the model's are best given
#: their pixel size.
ZOOMS = [round(2 ** (k / 3), 2) for k in range(-3, 3)]

#: The scale check chooses on a window of at most this edge at the centre of each part a
#: fold learns from (slice pixels), predicted alone, in one tile, at every zoom: a tenth
#: of the time of whole slices; the held-out parts are scored whole, as Predict makes them.
SEARCH_EDGE = 512

#: The least gain, averaged over the folds, that counts: the benchmark's "never worse by
#: more than 0.005" bound, so a smaller change is one the folds cannot tell from noise.
MIN_GAIN = 0.005

#: How much the cells (V_Rand) or the vessels (clDice) may fall on any one held-out part.
TOLERANCE = 0.005

#: At most this many folds (each trains a model): corrected slices are grouped beyond it.
MAX_FOLDS = 3

#: Uncorrected slices of the stack the fine-tune also learns from, with the starting
#: model's own mask as labels ("anchors"), so it keeps what it did well where the user
#: corrected nothing: a few, spread over the stack (each costs one prediction). Chosen on
#: rounds on DRIVE test 01-10 as another camera's photographs, scored on 11-14 (a choosing
#: split, never the rounds benchmark's scored photographs 15-20): the F1 change of the
#: fine-tunes kept was -0.009 on average without anchors, -0.004 with 2 and -0.001 with 4
#: (40 steps); at 30 steps -0.003 with 4 (worst -0.004) and +0.001 with 8 (worst -0.001).
#: Every pixel of the mask is learnt: leaving out those within 0.2 of the threshold did
#: as well on average and worse at worst (-0.005 against -0.003, 4 anchors).
ANCHORS = 8

#: The model a fine-tune ships, and each fold scores, is the starting weights moved this
#: share of the way to the trained ones, w0 + share x (w1 - w0): "WiSE-FT" (Wortsman et
#: al. 2022), at 0.5, their default, taken without tuning. 30 steps on 2 photographs
#: overshoot: on a choosing split (benchmarks/finetune_seeds.py: 8 pairs of DRIVE test
#: 01-10 as another camera's photographs, 3 training seeds each, F1 on 11-14), the trained
#: weights of the 22 runs the folds kept changed F1 by -0.0059 to +0.0035 (mean +0.0005)
#: depending on the seed; half-way, by +0.0015 to +0.0048 (mean +0.0032). With the folds
#: scoring half-way models too (benchmarks/finetune_pairs.py, 45 pairs): 30 kept, +0.0011
#: to +0.0048 (trained weights: 23 kept, -0.0002 to +0.0035).
UPDATE_SHARE = 0.5

#: Of a grey slice, the anchor is a window of at most this edge at its centre, so the
#: anchors cost at most two 1,024² predictions whatever the slices' size.
ANCHOR_EDGE = 512


@dataclass
class FineTuneOptions:
    """Choices of one fine-tune (the rest is the recipe of :func:`fine_tune_recipe`).

    Attributes:
        steps: training steps of each model (every fold's and the final one).
        verify: cross-validate and keep the result only when it shows a gain; False
            trains on all corrected slices and keeps the model unchecked.
        edit_weight: loss weight of edited pixels (others weigh 1).
        focus_fraction: share of crops centred on edited pixels.
        device, seed: where and how reproducibly to train.
        tile, overlap, fov: how Predict predicts (`core.pipeline.Pipeline`): every check
            scores the mask the user will see, made the same way.
        recipe: overrides of the training recipe (batch_size, crop_size, learning_rate,
            border_weights: default on for EM, off for vessels, ...), see `TrainConfig`.
        levels: the intensity levels Predict used (`core.pipeline.Pipeline`), e.g. (0, 1)
            for windows of a montage normalised on their slice's levels; None: each
            slice's own percentiles.
        anchors: how many uncorrected slices of the stack are learnt with the starting
            model's own mask as labels (see `ANCHORS`); 0: none.
        update_share: how far the shipped weights move from the starting ones towards
            the trained ones (see `UPDATE_SHARE`); 1: the trained weights.
    """

    steps: int = 30
    verify: bool = True
    edit_weight: float = 3.0
    focus_fraction: float = 0.5
    device: str = "auto"
    seed: int = 0
    recipe: dict = field(default_factory=dict)
    tile: int | None = None
    overlap: float = 0.25
    fov: str = "auto"
    levels: tuple | None = None
    anchors: int = ANCHORS
    update_share: float = UPDATE_SHARE


@dataclass
class FineTuneResult:
    """The model to use (the starting one when the fine-tune was refused), its checkpoint
    metadata and what happened.

    ``report`` keys: kept (the fine-tuned model replaced the starting one), outcome
    ("gain", "no gain", "guard", "small", "agree", "unverified", "stopped"), folds (one
    dict per fold run: name, held_out (stack indices), start_dice, dice, start_guard,
    guard, on the held-out part at the threshold shipped), dice_gain / guard_gain (their
    means), threshold (shipped), start_threshold, guard_name, steps (of the kept model),
    stopped, seconds, update_share (see `UPDATE_SHARE`); anchors (stack indices of the
    anchors learnt, when there were any).
    """

    model: UNet
    metadata: dict
    report: dict


@dataclass
class Fold:
    """One cross-validation fold: the corrected slices (indices into ``corrected``) its
    model learns from and is scored on. With one corrected slice, ``half`` (0 or 1) is the
    half of it learnt (along its longer side); the other half is scored."""

    learn: list[int]
    scored: list[int]
    half: int | None = None


def make_folds(count: int, max_folds: int = MAX_FOLDS) -> list[Fold]:
    """Folds over ``count`` corrected slices: each held out in turn (grouped round-robin
    beyond ``max_folds``); one slice: its two halves."""
    if count == 1:
        return [Fold([0], [0], 0), Fold([0], [0], 1)]
    folds = min(count, max_folds)
    groups = [[i for i in range(count) if i % folds == g] for g in range(folds)]
    return [Fold([i for i in range(count) if i not in group], group) for group in groups]


def anchor_slices(slices: int, corrected: list[int], count: int = ANCHORS) -> list[int]:
    """The anchors of a stack of ``slices``: at most ``count`` uncorrected slices, evenly
    spread (the first and last uncorrected ones included)."""
    uncorrected = [z for z in range(slices) if z not in corrected]
    if count <= 0 or len(uncorrected) <= count:
        return uncorrected[:max(count, 0)]
    return [uncorrected[round(k)] for k in np.linspace(0, len(uncorrected) - 1, count)]


def half_mask(shape: tuple[int, int], half: int) -> np.ndarray:
    """(Y, X) bool: the first (0) or second (1) half of a slice, cut across its longer side."""
    mask = np.zeros(shape, bool)
    axis = int(shape[1] > shape[0])
    part = [slice(None), slice(None)]
    part[axis] = slice(None, shape[axis] // 2) if half == 0 else slice(shape[axis] // 2, None)
    mask[tuple(part)] = True
    return mask


def centre_window(region: np.ndarray, edge: int) -> tuple[slice, slice]:
    """The (Y, X) slices of a window of at most ``edge`` x ``edge`` at the centre of the
    bounding box of ``region`` ((Y, X) bool; the whole array when it is empty)."""
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    if not len(rows):
        return slice(None), slice(None)
    window = []
    for first, last in ((rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)):
        start = max(first, (first + last) // 2 - edge // 2)
        window.append(slice(int(start), int(min(last, start + edge))))
    return tuple(window)


def better_threshold(dices: list[dict[float, float]], threshold: float) -> float:
    """The threshold to ship: the one with the best mean held-out Dice over the folds
    (``dices[k][t]``), but only if it beats ``threshold`` by `MIN_GAIN` in every fold (a
    threshold picked on one slice is noise); else ``threshold``."""
    best = max(dices[0], key=lambda t: (np.mean([d[t] for d in dices]), t == threshold))
    if all(d[best] - d[threshold] >= MIN_GAIN for d in dices):
        return best
    return threshold


def decide(start: list[tuple[float, float]], tuned: list[tuple[float, float]], tolerance: float = TOLERANCE) -> str:
    """Whether the fine-tune is kept, from the held-out (Dice, guard) of the starting and
    the fine-tuned model in each fold: "gain" (keep it), or why not: "no gain" (Dice not
    up in some fold), "guard" (the cells or vessels fell by more than ``tolerance`` in
    some fold), "small" (the mean gain is under `MIN_GAIN`)."""
    gains = np.asarray(tuned, float) - np.asarray(start, float)  # (folds, [Dice, guard])
    if (gains[:, 0] <= 0).any():
        return "no gain"
    if (gains[:, 1] < -tolerance).any():
        return "guard"
    if gains.mean(axis=0).max() < MIN_GAIN:
        return "small"
    return "gain"


class FineTune:
    """One fine-tune run; iterate `run()` for progress, then read `result`.

    Args:
        checkpoint: the starting model (left unchanged).
        images: (Z, Y, X, C) raw stack (only the corrected slices are read, so a lazy
            array, dask or zarr, of a volume larger than memory will do).
        labels: (Z, Y, X) uint8 in the project convention (IGNORE = not learnt); any
            array indexable by a list of slices.
        corrected: indices of the corrected slices, in the order they were corrected.
        edited: optional (Z, Y, X) bool, the pixels the user painted (indexable the same way).
        options: see `FineTuneOptions`.
        fov: fundus: (Z, Y, X) bool field of view the user gave (indexable the same
            way), or None (``options.fov``: found in each photograph, or none).
        start_name: how the starting model is called in the new model's history.
        part_names: names some corrected parts (a list of ``corrected``'s entries) for the
            user, e.g. a montage's chunks (`core.regions.describe_chunks`); default
            "slice 7", "slices 3, 9".
        predict_parts: ``(pipeline, parts) -> (n, Y, X)`` probabilities of some corrected
            parts as Predict made them, when that is not `Pipeline.probabilities` of the
            part alone (e.g. windows of a montage predicted on the whole slice's tile grid).

    Raises:
        ValueError: with a message for the user (no corrected slice, no labels, shapes).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        images: np.ndarray,
        labels: np.ndarray,
        corrected: list[int],
        edited: np.ndarray | None = None,
        options: FineTuneOptions | None = None,
        start_name: str | None = None,
        fov: np.ndarray | None = None,
        part_names=None,
        predict_parts=None,
    ) -> None:
        self.options = options = options or FineTuneOptions()
        self.part_names, self.predict_parts = part_names, predict_parts
        if images.shape[:3] != labels.shape:
            raise ValueError(f"The labels {labels.shape} do not match the images {images.shape[:3]}.")
        if images.shape[-1] != checkpoint.config.in_channels:
            raise ValueError("The model does not take this kind of image (grey vs RGB): choose a matching model.")
        if edited is not None and edited.shape != labels.shape:
            raise ValueError(f"The edited-pixel mask {edited.shape} does not match the labels {labels.shape}.")
        if not 0.0 < options.update_share <= 1.0:
            raise ValueError(f"update_share={options.update_share}: choose a share above 0 and at most 1.")
        self.corrected = list(dict.fromkeys(int(z) for z in corrected))
        if not self.corrected:
            raise ValueError("No corrected slice yet: correct at least one slice.")
        self.start = checkpoint
        self.start_name = start_name or checkpoint.source
        self.device = resolve_device(options.device)
        self.threshold = checkpoint.info.threshold
        self.zoom = checkpoint.info.input_zoom or 1.0  # changed only by a verified scale check
        self.task = checkpoint.task
        # The U-Net border weights keep thin membranes between cells whole (they raised V_Rand
        # on another lab's EM in benchmarks/finetune_gain.py) but lowered F1 on vessels.
        recipe = {"border_weights": self.task == "em", **options.recipe}
        self.config = fine_tune_recipe(
            options.steps, device=str(self.device), seed=options.seed, focus_fraction=options.focus_fraction, **recipe
        )
        # Only the corrected slices are copied: painting during training changes nothing.
        self.raw = np.asarray(images[self.corrected])
        self.raw_labels = np.array(labels[self.corrected], dtype=np.uint8)
        self.hash = data_hash(self.raw, self.raw_labels)
        self.pipeline = self.predicting(self.start.model)  # checks the inputs as Predict does
        self.fov, _found = self.pipeline.fov_for(self.raw, None if fov is None else np.asarray(fov[self.corrected]))
        self.photo_zoom = self._photo_zoom()
        self.images, self.labels = self._as_the_model_sees(self.raw, self.raw_labels, self.fov)
        # Anchors: a few uncorrected slices of a stack (a montage's parts are not slices).
        self.anchored = anchor_slices(images.shape[0], self.corrected, options.anchors) if predict_parts is None else []
        self.anchor_raw = self.anchor_fov = None
        if self.anchored:
            window = (slice(None), slice(None))
            if not self.pipeline.uses_fov:  # photographs are standardised by their whole FOV
                window = centre_window(np.ones(images.shape[1:3], bool), ANCHOR_EDGE)
            self.anchor_raw = np.asarray(images[self.anchored][(slice(None), *window)])
            given = None if fov is None else np.asarray(fov[self.anchored])
            self.anchor_fov = self.pipeline.fov_for(self.anchor_raw, given)[0]
        self.anchors: tuple[np.ndarray, np.ndarray] | None = None  # prepared in `run` (a prediction each)
        # The pixels the user painted, on the slices' own grid (see `_edits`).
        self.painted = None if edited is None else np.array(edited[self.corrected], dtype=bool)
        # The scale and threshold move on grey slices only. Photographs are standardised by
        # their FOV already, and a threshold chosen on two of them lowered F1 on the others:
        # by the scale check (benchmarks/rounds.py, fundus: -0.031), and by the folds after
        # training (benchmarks/finetune_pairs.py, a choosing split: of 23 pairs kept, the
        # one whose folds moved the threshold, 0.50 → 0.35, changed F1 on the other
        # photographs by -0.010; kept at 0.50 it gains +0.0009, and no kept pair then loses
        # more than 0.0002). The zooms are tried on a stack's slices only: a montage's
        # blocks are not resampled (`core.blocks`).
        self.recalibrates = not self.pipeline.uses_fov
        self.zooms = [round(self.zoom * z, 3) for z in ZOOMS] if self.recalibrates and predict_parts is None else []
        self._windows: dict = {}  # (zoom, part, half) -> search window's probability
        self._whole: dict = {}  # (zoom, part) -> whole part's probability, as Predict makes it
        self.result: FineTuneResult | None = None
        for z, label in zip(self.corrected, self.labels):
            if not np.any(label != IGNORE):
                raise ValueError(f"Corrected slice {z} has no labelled pixel: label it or leave it out.")
        TrainingData(self.images, self.labels, list(range(len(self.corrected))))  # the checks of training
        # A fold whose part to learn holds no structure (e.g. the half of a slice with no
        # membrane) cannot train: it is left out. One always remains when the labels hold
        # structure anywhere (it is learnt by a fold that holds out some other part).
        folds = make_folds(len(self.corrected)) if options.verify else []
        self.folds = [f for f in folds if np.any(self._learnt_labels(f)[f.learn] == STRUCTURE)]

    # ------------------------------------------------------------------ inputs

    def predicting(self, model: UNet, zoom: float | None = None, tile: int | None = None) -> Pipeline:
        """How Predict would predict with ``model`` (the starting model's description:
        normalisation, flips, output shift; the user's tile, overlap and FOV), at ``zoom``
        (default the one in use); ``tile`` overrides the tile edge."""
        return Pipeline(self.start, PredictSettings(device=self.device, tile=tile or self.options.tile, overlap=self.options.overlap, fov=self.options.fov, levels=self.options.levels), model=model, zoom=self.zoom if zoom is None else zoom)

    def _photo_zoom(self) -> float | None:
        """Photographs: the one zoom all slices are prepared at (the corrected ones' median),
        so they stack; None for grey slices."""
        if not self.pipeline.is_fundus:
            return None
        fovs = self.fov if self.fov is not None else [self.pipeline.found_fov(image) for image in self.raw]
        return float(np.median([self.pipeline.fundus_zoom(fov) for fov in fovs]))

    def _as_the_model_sees(self, raw: np.ndarray, raw_labels: np.ndarray, fov: np.ndarray | None):
        """(N, Y, X, C) raw slices prepared as Predict prepares them (`Pipeline.prepare`),
        and their (N, Y, X) labels resampled alongside, so the model learns what it will be
        shown."""
        prepared = [self.pipeline.prepare(image, None if fov is None else fov[i], zoom=self.photo_zoom)
                    for i, image in enumerate(raw)]
        images = np.stack([p.image for p in prepared])
        shape = images.shape[1:3]
        if raw_labels.shape[1:3] == shape:
            return images, raw_labels
        from skimage.transform import resize

        # Labelled and structure fractions interpolated, not the nearest label: thin
        # membranes stay whole when a slice is shrunk.
        labels = []
        for label in raw_labels:
            unlabelled, structure = (resize((label == v).astype(np.float32), shape, order=1) >= 0.5
                                     for v in (IGNORE, STRUCTURE))
            labels.append(np.where(unlabelled, IGNORE, structure).astype(np.uint8))
        return images, np.stack(labels)

    def to_model_grid(self, stack: np.ndarray | None) -> np.ndarray | None:
        """(N, Y, X) labels or masks of the corrected slices on the prepared images' grid
        (nearest neighbour), or None."""
        if stack is None or stack.shape[1:3] == self.images.shape[1:3]:
            return stack
        from skimage.transform import resize

        return np.stack([resize(m, self.images.shape[1:3], order=0, preserve_range=True, anti_aliasing=False)
                         for m in stack]).astype(stack.dtype)

    def probabilities(self, model: UNet, parts: list[int], zoom: float | None = None) -> np.ndarray:
        """(n, Y, X) float32: ``model``'s probability on some corrected parts (indices into
        ``corrected``), as Predict computes it (or as ``predict_parts`` does), at ``zoom``."""
        if self.predict_parts is not None:
            return self.predict_parts(self.predicting(model), parts)
        fov = None if self.fov is None else self.fov[parts]
        return self.predicting(model, zoom).probabilities(self.raw[parts], fov)

    def start_probability(self, parts: list[int] | None = None, zoom: float | None = None) -> np.ndarray:
        """(n, Y, X) float32: the starting weights' probability on some corrected parts
        (default all), as Predict computes it at ``zoom`` (default the one in use); each
        part computed once (the edits, every fold's baseline and the scale check use them)."""
        zoom = self.zoom if zoom is None else zoom
        parts = list(range(len(self.corrected))) if parts is None else list(parts)
        missing = [i for i in parts if (zoom, i) not in self._whole]
        if missing:
            for i, probability in zip(missing, self.probabilities(self.start.model, missing, zoom)):
                self._whole[zoom, i] = probability
        return np.stack([self._whole[zoom, i] for i in parts])

    def _shown(self, probability: np.ndarray, slices: list[int], threshold: float) -> np.ndarray:
        """(n, Y, X) bool: the mask Predict shows for ``probability`` of ``slices``."""
        fov = None if self.fov is None else self.fov[slices]
        return self.pipeline.finish(probability, fov, threshold=threshold)[0].astype(bool)

    def _edits(self) -> np.ndarray:
        """(N, Y, X) bool edited pixels of the corrected slices, on their own grid: painted,
        or where the starting model's mask, as Predict shows it, disagrees with the labels."""
        slices = list(range(len(self.corrected)))
        before = self._shown(self.start_probability(), slices, self.threshold)
        edited = (before != (self.raw_labels == STRUCTURE)) & (self.raw_labels != IGNORE)
        return edited if self.painted is None else edited | self.painted

    def _learnt_labels(self, fold: Fold | None) -> np.ndarray:
        """(N, Y, X) labels on the model's grid that ``fold``'s model learns (the rest
        IGNORE); all of them without a fold."""
        if fold is None:
            return self.labels
        labels = np.full_like(self.labels, IGNORE)
        labels[fold.learn] = self.labels[fold.learn]
        if fold.half is not None:
            labels[:, ~half_mask(labels.shape[1:], fold.half)] = IGNORE
        return labels

    def _prepare_anchors(self) -> list[int]:
        """Sets `anchors`: (M, Y', X', C) images and (M, Y', X') labels of the anchors on the
        model's grid (a grey slice's centre window, a whole photograph), the starting
        model's mask as Predict shows it (at the zoom and threshold in use; nothing learnt
        outside the FOV); an anchor left with no labelled pixel is dropped. Returns the
        stack indices of the anchors kept."""
        probability = self.predicting(self.start.model).probabilities(self.anchor_raw, self.anchor_fov)
        labels = (probability > self.threshold).astype(np.uint8)
        if self.anchor_fov is not None:
            labels[~self.anchor_fov] = IGNORE
        images, labels = self._as_the_model_sees(self.anchor_raw, labels, self.anchor_fov)
        kept = [i for i, label in enumerate(labels) if np.any(label != IGNORE)]
        self.anchors = (images[kept], labels[kept]) if kept else None
        return [self.anchored[i] for i in kept]

    def _training_data(self, fold: Fold | None, edits: np.ndarray) -> TrainingData:
        """What a fold's model (all corrected slices without one) learns: the corrections,
        edited pixels weighing more and centring crops, then the anchors (slices of their
        own size: a window of a grey slice is smaller)."""
        labels = self._learnt_labels(fold)
        edited = self.to_model_grid(edits) & (labels != IGNORE)  # crops centred on what it may learn
        weights = np.where(edited, self.options.edit_weight, 1.0).astype(np.float32)
        slices = fold.learn if fold is not None else list(range(len(self.corrected)))
        if self.anchors is None:
            return TrainingData(self.images, labels, slices, weights=weights, focus=edited)
        images, anchor_labels = self.anchors
        first = len(self.images)
        return TrainingData([*self.images, *images], [*labels, *anchor_labels],
                            slices + list(range(first, first + len(images))),
                            weights=[*weights, *np.ones(anchor_labels.shape, np.float32)],
                            focus=[*edited, *np.zeros(anchor_labels.shape, bool)])

    # ------------------------------------------------------------------ scores

    def fold_name(self, fold: Fold) -> str:
        """How the user reads a fold's held-out part: "slice 7", "slices 3, 9", "the left half of slice 2"."""
        stack = [self.corrected[i] for i in fold.scored]
        if self.part_names is not None:
            what = self.part_names(stack)
        else:
            what = f"slice {stack[0]}" if len(stack) == 1 else "slices " + ", ".join(map(str, stack))
        if fold.half is not None:
            wide = self.raw.shape[2] > self.raw.shape[1]
            side = ("right", "left") if wide else ("bottom", "top")
            return f"the {side[fold.half]} half of {what}"
        return what

    def _scored_region(self, fold: Fold) -> np.ndarray:
        """(n, Y, X) bool: the labelled pixels of the fold's held-out part (inside the FOV)."""
        region = self.raw_labels[fold.scored] != IGNORE
        if self.fov is not None:  # scored where the user sees a prediction
            region &= self.fov[fold.scored]
        if fold.half is not None:
            region &= half_mask(region.shape[1:], 1 - fold.half)
        return region

    def scores(self, mask: np.ndarray, fold: Fold, guard: bool = True) -> tuple[float, float | None]:
        """(Dice, guard) of a mask of the fold's held-out slices, as Evaluate scores it
        (guard None when not asked for: V_Rand takes a second on a large slice)."""
        region = self._scored_region(fold)
        truth = self.raw_labels[fold.scored] == STRUCTURE
        return dice(mask, truth, mask=region), self._guard(mask, truth, region) if guard else None

    def _guard(self, mask: np.ndarray, truth: np.ndarray, labelled: np.ndarray) -> float:
        """The segmentation a biologist uses: V_Rand of the cells (EM) or clDice (vessels)."""
        if self.task == "em":  # unlabelled pixels are not scored (unless nothing labelled is a cell)
            vrand = em_challenge_scores(mask, truth, thresholds=[0.5], mask=labelled)["vrand"]
            return vrand if np.isfinite(vrand) else em_challenge_scores(mask, truth, thresholds=[0.5])["vrand"]
        return cl_dice(mask, truth, labelled)

    # ------------------------------------------------------------------ scale and threshold

    def _search_data(self, fold: Fold, zoom: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(probability, truth, scored region) of each part ``fold`` learns from, for the
        starting weights at ``zoom``: on grey slices a window of at most `SEARCH_EDGE`² at
        the centre of what it learns, predicted alone; else the whole part as Predict made it."""
        data = []
        for i in fold.learn:
            region = self.raw_labels[i] != IGNORE
            if self.fov is not None:
                region &= self.fov[i]
            if fold.half is not None:
                region &= half_mask(region.shape, fold.half)
            if self.zooms:
                window = centre_window(region, SEARCH_EDGE)
                key = (zoom, i, fold.half)
                if key not in self._windows:
                    # One tile covering the resampled window and its mirrored margin: at
                    # zoom 1.6, 0.8 million pixels where overlapping tiles take 1.3.
                    edge = math.ceil(max(s.stop - s.start for s in window) * zoom)
                    margin = self.start.info.tile_margin
                    tile = edge + 2 * margin if margin is not None else math.ceil(edge * 4 / 3)  # tile // 8 each side
                    pipeline = self.predicting(self.start.model, zoom, tile=max(tile, self.pipeline.tile))
                    self._windows[key] = pipeline.probabilities(self.raw[i][window][None])[0]
                probability = self._windows[key]
            else:
                window = (slice(None), slice(None))
                probability = self.start_probability([i], zoom)[0]
            data.append((probability, self.raw_labels[i][window] == STRUCTURE, region[window]))
        return data

    def _search_scores(self, data: list, threshold: float, guard: bool = True) -> tuple[float, float | None]:
        """Mean (Dice, guard) over `_search_data` at ``threshold`` (guard None when not asked for)."""
        masks = [probability > threshold for probability, _, _ in data]
        dices = [dice(m, truth, mask=region) for m, (_, truth, region) in zip(masks, data)]
        guards = [self._guard(m, truth, region) for m, (_, truth, region) in zip(masks, data)] if guard else [None]
        return float(np.mean(dices)), (float(np.mean(guards)) if guard else None)

    def choose_setting(self, fold: Fold, candidates: list | None = None) -> tuple[float, float]:
        """The (zoom, threshold) the starting weights do best at on the parts ``fold``
        learns from: of the settings with Dice up and the guard (cells, vessels) not down
        there, the one with the best Dice + guard, if that sum beats the one in use by
        `MIN_GAIN`; else the one in use. ``candidates``: the settings to try (default
        every zoom of `zooms` with every threshold of `THRESHOLDS`).

        Dice and guard count alike: the best Dice alone sits near the threshold where thin
        membranes start to break, and a held-out slice then loses cells (measured on pairs of
        the pool of benchmarks/rounds.py: 2 of 5 pairs verified by Dice alone, 4 by the sum).
        """
        in_use = self._search_scores(self._search_data(fold, self.zoom), self.threshold)
        best = (sum(in_use) + MIN_GAIN, self.zoom, self.threshold)
        settings = candidates or [(zoom, t) for zoom in self.zooms or [self.zoom] for t in THRESHOLDS]
        for zoom, threshold in settings:
            data = self._search_data(fold, zoom)
            score = self._search_scores(data, threshold, guard=False)[0]
            if score <= in_use[0] or score + 1.0 <= best[0]:  # the guard is at most 1: no need to measure it
                continue
            guard = self._search_scores(data, threshold)[1]
            if guard >= in_use[1] and score + guard > best[0]:
                best = (score + guard, zoom, threshold)
        return best[1], best[2]

    def _recalibrate(self, report: dict):
        """Stage 1 (a generator of events): each fold chooses a zoom and threshold on the
        parts it learns from and is scored on its held-out part, whole, as Predict makes
        it; `decide` keeps them when every fold gains (the guard not down at all). Then
        the fold setting best on every corrected part becomes the baseline the training
        must beat. Fills ``report["calibration"]``; returns whether it changed."""
        yield TrainEvent(0, self.config.steps * (len(self.folds) + 1), None, stage="scale")
        start, after, chosen = [], [], []
        for fold in self.folds:
            zoom, threshold = self.choose_setting(fold)
            if (zoom, threshold) == (self.zoom, self.threshold):
                break  # this fold sees no better setting: the rule needs every fold better
            before = self.start_probability(fold.scored)
            start.append(self.scores(self._shown(before, fold.scored, self.threshold), fold))
            probability = self.start_probability(fold.scored, zoom)
            after.append(self.scores(self._shown(probability, fold.scored, threshold), fold))
            chosen.append((zoom, threshold))
        outcome = decide(start, after, tolerance=0.0) if len(after) == len(self.folds) else "no gain"
        calibration = {"outcome": outcome, "start_zoom": self.zoom, "zoom": self.zoom, "threshold": self.threshold,
                       "folds": [{"name": self.fold_name(f), "zoom": c[0], "threshold": c[1],
                                  "start_dice": round(b[0], 4), "start_guard": round(b[1], 4),
                                  "dice": round(a[0], 4), "guard": round(a[1], 4)}
                                 for f, c, b, a in zip(self.folds, chosen, start, after)]}
        report["calibration"] = calibration
        if outcome != "gain":
            return False
        # Shipped: of the settings the folds verified, the best on every corrected part.
        zoom, threshold = self.choose_setting(Fold(list(range(len(self.corrected))), []), list(dict.fromkeys(chosen)))
        if (zoom, threshold) == (self.zoom, self.threshold):  # every fold moved, all parts together do not
            calibration["outcome"] = "small"
            return False
        calibration.update(zoom=zoom, threshold=threshold)
        self.zoom, self.threshold = zoom, threshold
        self.pipeline = self.predicting(self.start.model)
        self.images, self.labels = self._as_the_model_sees(self.raw, self.raw_labels, self.fov)
        return True

    # ------------------------------------------------------------------ run

    def run(self) -> Iterator[TrainEvent]:
        """Cross-validate, then (when kept) train on every corrected slice, yielding
        `TrainEvent`s (``stage`` "fold k/K", then "all slices"; the event that ends a fold
        carries its held-out Dice). Closing the generator stops; the starting model is
        then kept. `result` is set at the end."""
        tick = time.perf_counter()
        steps, threshold, zoom = self.config.steps, self.threshold, self.zoom
        total = steps * (len(self.folds) + 1)
        report = {"kept": False, "trained": False, "outcome": "stopped", "folds": [], "threshold": threshold,
                  "part": "slice" if self.part_names is None else "region", "zoom": zoom, "start_zoom": zoom,
                  "start_threshold": threshold, "guard_name": "V_Rand" if self.task == "em" else "clDice",
                  "steps": 0, "stopped": True, "update_share": self.options.update_share}
        model, record = self.start.model, None
        try:
            edits = self._edits()
            if not edits.any():
                report.update(outcome="agree", stopped=False)
                return
            calibrated = False
            if self.folds and self.recalibrates:
                calibrated = yield from self._recalibrate(report)
            if self.anchored:
                report["anchors"] = self._prepare_anchors()
            if self.folds:
                outcome = yield from self._cross_validate(edits, report, total)
            else:
                outcome = "unverified"
            report.update(outcome=outcome, threshold=self.threshold)
            if outcome in ("gain", "unverified"):
                final, meta = copy.deepcopy(self.start.model), {}
                events = train(final, self._training_data(None, edits), self.config, None, meta)
                yield from _relay(events, "all slices", total - steps, total)
                move_toward(self.start.model, final, self.options.update_share)
                model, record = final, meta["history"][-1]
                report.update(trained=True, steps=record["steps"])
            report.update(kept=report["trained"] or calibrated, zoom=self.zoom, stopped=False)
        finally:
            if report["stopped"]:  # nothing verified and finished: the starting model stays
                model, record = self.start.model, None
                report.update(kept=False, trained=False, steps=0, threshold=threshold, zoom=zoom, outcome="stopped")
            report["seconds"] = round(time.perf_counter() - tick, 1)
            self.result = self._result(model, record, report)

    def _cross_validate(self, edits: np.ndarray, report: dict, total: int):
        """Train and score one model per fold (a generator of events); fills the report's
        folds and threshold; returns `decide`'s outcome."""
        steps, threshold = self.config.steps, self.threshold
        start, tuned, dices = [], [], []  # per fold: the starting model's scores; the tuned one's probability, Dice
        for k, fold in enumerate(self.folds):
            stage = f"fold {k + 1}/{len(self.folds)}"
            model = copy.deepcopy(self.start.model)
            yield from _relay(train(model, self._training_data(fold, edits), self.config), stage, k * steps, total)
            move_toward(self.start.model, model, self.options.update_share)
            tuned.append(self.probabilities(model, fold.scored))
            start.append(self.scores(self._shown(self.start_probability(fold.scored), fold.scored, threshold), fold))
            dices.append({t: self.scores(self._shown(tuned[-1], fold.scored, t), fold, guard=False)[0]
                          for t in {*THRESHOLDS, threshold}})
            hopeless = max(dices[-1].values()) <= start[-1][0]  # no threshold makes it better here
            yield TrainEvent((k + 1) * steps, total, None, val_dice=dices[-1][threshold], best_dice=start[-1][0],
                             refused=hopeless, stage=stage)
            if hopeless:  # the rule needs every fold better: no need to train the others
                break
        # On grey slices, a threshold the folds agree on is tried first; if the cells do
        # not hold at it, the model's own threshold is tried.
        agreed = self.recalibrates and len(tuned) == len(self.folds)
        candidates = dict.fromkeys([better_threshold(dices, threshold) if agreed else threshold, threshold])
        for shipped in candidates:
            after = [self.scores(self._shown(p, f.scored, shipped), f) for p, f in zip(tuned, self.folds)]
            outcome = decide(start, after)
            if outcome == "gain":
                break
        report["folds"] = [
            {"name": self.fold_name(f), "held_out": [self.corrected[i] for i in f.scored],
             "start_dice": round(s[0], 4), "start_guard": round(s[1], 4), "dice": round(a[0], 4),
             "guard": round(a[1], 4)} for f, s, a in zip(self.folds, start, after)]
        gains = np.mean(np.asarray(after) - np.asarray(start), axis=0)
        report.update(dice_gain=round(float(gains[0]), 4), guard_gain=round(float(gains[1]), 4))
        if outcome == "gain":
            self.threshold = shipped  # the one the folds verified, shipped with the final model
        return outcome

    def _result(self, model: UNet, record: dict | None, report: dict) -> FineTuneResult:
        metadata = copy.deepcopy(self.start.metadata)
        if record is None:  # refused or stopped: the round is still recorded, with why
            record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "train_slices": [], "steps": 0}
        # Indices into the stack; the anchors (learnt after the corrected slices) are in the report.
        in_stack = [self.corrected[i] for i in record.get("train_slices", []) if i < len(self.corrected)]
        record = dict(record, train_slices=in_stack, val_slices=[], data_hash=self.hash,
                      corrected_slices=self.corrected, fine_tune=dict(report))
        if self.part_names is not None:  # e.g. a montage's chunks, not slices of a stack
            record["corrected_parts"] = self.part_names(self.corrected)
        metadata.setdefault("history", []).append(record)
        if report["kept"]:
            metadata["fine_tuned_from"] = self.start_name
            metadata["threshold"] = float(report["threshold"])
            # It learnt from the user's slices, whose pixel size is not known here: predicting
            # with it must not resample them to the starting model's, only by the zoom it
            # was verified at.
            metadata.pop("pixel_size_nm", None)
            metadata.pop("input_zoom", None)
            if report["zoom"] != 1.0:
                metadata["input_zoom"] = float(report["zoom"])
        model = model if report["trained"] else copy.deepcopy(self.start.model)
        return FineTuneResult(model.eval(), metadata, report)


def move_toward(start: UNet, trained: UNet, share: float) -> None:
    """Set ``trained``'s weights and normalisation statistics to start + share x (trained
    - start), in place (see `UPDATE_SHARE`); share 1 leaves them as trained."""
    if share == 1.0:
        return
    begin = start.state_dict()
    with torch.no_grad():
        for name, value in trained.state_dict().items():
            if value.is_floating_point():  # not the batch counters
                value.copy_(begin[name].to(value.device, value.dtype).lerp(value, share))


def _relay(events: Iterator[TrainEvent], stage: str, offset: int, total: int) -> Iterator[TrainEvent]:
    """Pass on ``train``'s events as one run's: steps shifted by ``offset`` out of ``total``,
    the estimate including the steps of the later stages."""
    try:
        for event in events:
            per_step = event.elapsed_s / max(1, event.step)
            yield replace(event, step=offset + event.step, total=total, stage=stage,
                          eta_s=(total - offset - event.step) * per_step)
    finally:
        events.close()


def describe_plan(corrected: list[int], options: FineTuneOptions, anchors: list[int] = ()) -> str:
    """What the fine-tune will do, e.g. ": 2 models trained with each corrected slice held out
    in turn, kept only if they beat it there; then trained on slices [3, 7] (30 steps each),
    keeping the model's own mask on slices [0, 29]"."""
    keeping = f", keeping the model's own mask on slice(s) {list(anchors)}" if anchors else ""
    if not options.verify:
        return f" on slice(s) {corrected}{keeping}, kept unchecked ({options.steps} steps)"
    held = "each corrected slice" if len(corrected) > 1 else "each half of the corrected slice"
    return (f": {len(make_folds(len(corrected)))} models trained with {held} held out in turn, kept only if they "
            f"beat it there; then trained on slice(s) {corrected} ({options.steps} steps each){keeping}")


def describe_outcome(report: dict) -> str:
    """One plain line on what the fine-tune kept and why, from `FineTuneResult.report`."""
    outcome = report["outcome"]
    part = report.get("part", "slice")  # what the user corrects: slices, or a montage's regions
    if outcome == "agree":
        return ("Your corrections agree with the model's prediction: there is nothing to learn, so the starting "
                f"model is kept. Correct a {part} where it is clearly wrong.")
    if outcome == "stopped":
        return "Stopped before the fine-tune was checked: the starting model is kept."
    if outcome == "unverified":
        return f"Trained on all corrected {part}s and kept without a check (verification was off)."
    calibrated = report.get("calibration", {}).get("outcome") == "gain" and report["kept"]
    if calibrated:  # the scale or threshold changed; then training on top was kept or not
        text = _describe_weights(report, part, refused="Training on top was not kept")
        return f"{describe_calibration(report)} {text}"
    return _describe_weights(report, part)


def describe_calibration(report: dict) -> str:
    """The verified change of scale and threshold, e.g. "Re-scaled: your slices are shown to
    the model at 0.79 x and its threshold is 0.50 → 0.80, verified where it was not chosen
    (2 held-out parts, better on each: Dice 0.361 → 0.426, V_Rand 0.798 → 0.904)."."""
    calibration, guard = report["calibration"], report["guard_name"]
    folds = calibration["folds"]
    mean = {key: float(np.mean([f[key] for f in folds])) for key in ("start_dice", "dice", "start_guard", "guard")}
    changes = []
    if calibration["zoom"] != calibration["start_zoom"]:
        changes.append(f"your {report.get('part', 'slice')}s are shown to the model at {calibration['zoom']:.2f} x")
    if calibration["threshold"] != report["start_threshold"]:
        changes.append(f"its threshold is {report['start_threshold']:.2f} → {calibration['threshold']:.2f}")
    return (f"Re-scaled: {' and '.join(changes)}, verified where it was not chosen ({len(folds)} held-out parts, "
            f"better on each: Dice {mean['start_dice']:.3f} → {mean['dice']:.3f}, {guard} {mean['start_guard']:.3f} "
            f"→ {mean['guard']:.3f}).")


def _describe_weights(report: dict, part: str, refused: str = "The starting model is kept") -> str:
    """The line on the training stage (`describe_outcome` after any re-scaling);
    ``refused`` opens it when the training was not kept."""
    outcome, guard = report["outcome"], report["guard_name"]
    folds = report["folds"]
    mean = {key: float(np.mean([f[key] for f in folds])) for key in ("start_dice", "dice", "start_guard", "guard")}
    scores = (f"Dice {mean['start_dice']:.3f} → {mean['dice']:.3f}, {guard} {mean['start_guard']:.3f} → "
              f"{mean['guard']:.3f}")
    if outcome == "gain":
        where = folds[0]["name"] if len(folds) == 1 else f"{len(folds)} held-out parts, better on each"
        threshold, before = "", report.get("calibration", {}).get("threshold", report["start_threshold"])
        if report["threshold"] != before:
            threshold = f", threshold {before:.2f} → {report['threshold']:.2f}"
        return (f"Verified where it did not learn ({where}): {scores}{threshold}. Trained on all corrected {part}s "
                f"and kept.")
    if outcome == "small":
        return (f"{refused}: where the fine-tuned models did not learn, the gain is too small to "
                f"trust ({scores}). Correct a {part} where the model is clearly wrong.")
    worst = min(folds, key=lambda f: (f["dice"] - f["start_dice"]) if outcome == "no gain"
                else (f["guard"] - f["start_guard"]))
    if outcome == "guard":
        broken = "cells merged" if guard == "V_Rand" else "vessels broken"
        return (f"{refused}: trained without {worst['name']}, the model got worse there for the "
                f"segmentation ({guard} {worst['start_guard']:.3f} → {worst['guard']:.3f}: {broken}), although "
                f"Dice went {worst['start_dice']:.3f} → {worst['dice']:.3f}. Correct more {part}s.")
    advice = (f"your corrections agree with the model where it did not learn from them: correct a {part} where it is "
              "clearly wrong" if worst["start_dice"] >= 0.7 else f"correct more {part}s, or train for more steps")
    return (f"{refused}: trained without {worst['name']}, the model did not beat it there (Dice "
            f"{worst['start_dice']:.3f} → {worst['dice']:.3f}); {advice}.")


def describe_history(history: list[dict]) -> list[str]:
    """One line per fine-tune round of a model's history (`ModelDescription.history`):
    date, the slices learnt, the held-out score before and after, kept or refused."""
    lines = []
    for record in history:
        report = record.get("fine_tune")
        if not report:
            continue
        slices = record.get("corrected_slices", record.get("train_slices", []))
        learnt = record.get("corrected_parts") or f"slices {slices}"
        calibration = report.get("calibration", {})
        rescaled = calibration.get("outcome") == "gain" and report.get("kept")
        if report.get("folds"):  # cross-validated (after a verified re-scaling, from its baseline)
            first = calibration["folds"] if rescaled else report["folds"]
            before = np.mean([f["start_dice"] for f in first])
            last = report["folds"] if report.get("trained", True) or not rescaled else calibration["folds"]
            after = np.mean([f["dice"] for f in last])
            scores = f"held-out Dice {before:.3f} → {after:.3f}"
        elif "start_score" in report:  # models fine-tuned before cross-validation
            scores = f"Dice on the held-out edits {report['start_score']:.3f} → {report['best_score']:.3f}"
        else:
            scores = "not checked"
        kept = report.get("kept", report.get("best_step", 0) > 0)
        outcome = "kept" if kept else "refused (the starting model was kept)"
        if rescaled:
            trained = "trained" if report.get("trained") else "training refused"
            outcome = (f"re-scaled ({calibration['zoom']:.2f} x, threshold {calibration['threshold']:.2f}), "
                       f"{trained}, kept")
        lines.append(f"{str(record.get('date', ''))[:10]}: {learnt}, {scores}, {outcome}")
    return lines
