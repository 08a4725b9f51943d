"""The corrected parts of one fine-tune: read once, on their own grid and as the model is
shown them, with the labels each fold learns and the anchors learnt beside them."""

from __future__ import annotations

import numpy as np

from ..labels import IGNORE, STRUCTURE
from ..pipeline import Pipeline
from ..train import TrainingData
from .rules import Fold, centre_window, half_mask

#: Of a grey slice, an anchor is a window of at most this edge at its centre, so the
#: anchors cost at most two 1,024² predictions whatever the slices' size.
ANCHOR_EDGE = 512


class SlicesOf:
    """Some slices of a stack, indexed as the stack: ``SlicesOf(part, [3, 7], shape)[[7]]``
    is ``part[1:2]``. Lets `FineTune` take just the corrected slices of a large stack."""

    def __init__(self, part: np.ndarray, slices: list[int], shape: tuple) -> None:
        self.part, self.position, self.shape = part, {z: i for i, z in enumerate(slices)}, tuple(shape)

    def __getitem__(self, slices: list[int]) -> np.ndarray:
        return self.part[[self.position[z] for z in slices]]


class CorrectedParts:
    """The corrected slices (or a montage's parts) and what is learnt from them.

    Args:
        images: (Z, Y, X, C) raw stack, any array indexable by a list of slices (only
            the corrected and anchor slices are read).
        labels: (Z, Y, X) uint8 in the project convention, indexable the same way.
        corrected: stack indices of the corrected slices, without repeats.
        edited: (Z, Y, X) bool painted pixels, or None.
        fov: (Z, Y, X) bool FOV the user gave, or None.
        pipeline: how Predict predicts (`FineTune.predicting`).
        anchored: stack indices of the uncorrected slices to learn as anchors.
        levels: per corrected part, the (low, high) intensities it is normalised on (the
            windows of a montage, each on its slice's levels); None: as Predict's settings say.

    Attributes:
        raw, raw_labels, fov, painted: (N, Y, X[, C]) of the corrected slices on their
            own grid (fov, painted: None when there are none).
        images, labels: (N, Y', X', C) float32 and (N, Y', X') uint8 as the model is
            shown them (`prepare`).
        anchors: (M, Y'', X'', C) images and (M, Y'', X'') labels of the anchors, once
            `prepare_anchors` ran with some left, else None.
    """

    def __init__(self, images, labels, corrected: list[int], edited, fov, pipeline: Pipeline,
                 anchored: list[int], levels: list | None = None) -> None:
        self.corrected, self.anchored, self.levels = corrected, anchored, levels
        # Only the corrected slices are copied: painting during training changes nothing.
        self.raw = np.asarray(images[corrected])
        self.raw_labels = np.array(labels[corrected], dtype=np.uint8)
        self.painted = None if edited is None else np.array(edited[corrected], dtype=bool)
        self.fov, _found = pipeline.fov_for(self.raw, None if fov is None else np.asarray(fov[corrected]))
        self.photo_zoom = self._photo_zoom(pipeline)
        self.anchor_raw = self.anchor_fov = self.anchors = None
        if anchored:
            window = (slice(None), slice(None))
            if not pipeline.uses_fov:  # photographs are standardised by their whole FOV
                window = centre_window(np.ones(images.shape[1:3], bool), ANCHOR_EDGE)
            self.anchor_raw = np.asarray(images[anchored][(slice(None), *window)])
            given = None if fov is None else np.asarray(fov[anchored])
            self.anchor_fov = pipeline.fov_for(self.anchor_raw, given)[0]
        self.prepare(pipeline)

    def __len__(self) -> int:
        return len(self.corrected)

    def _photo_zoom(self, pipeline: Pipeline) -> float | None:
        """Photographs: the one zoom all slices are prepared at (the corrected ones' median),
        so they stack; None for grey slices."""
        if not pipeline.is_fundus:
            return None
        fovs = self.fov if self.fov is not None else [pipeline.found_fov(image) for image in self.raw]
        return float(np.median([pipeline.fundus_zoom(fov) for fov in fovs]))

    def prepare(self, pipeline: Pipeline) -> None:
        """Set `images` and `labels`: the corrected slices as ``pipeline`` shows them."""
        self.images, self.labels = self.as_the_model_sees(pipeline, self.raw, self.raw_labels, self.fov, self.levels)

    def as_the_model_sees(self, pipeline: Pipeline, raw: np.ndarray, raw_labels: np.ndarray,
                          fov: np.ndarray | None, levels: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, Y', X', C) raw slices prepared as Predict prepares them (`Pipeline.prepare`),
        and their (N, Y', X') labels resampled alongside, so the model learns what it will
        be shown."""
        prepared = [pipeline.prepare(image, None if fov is None else fov[i], zoom=self.photo_zoom,
                                     levels=None if levels is None else levels[i]) for i, image in enumerate(raw)]
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

    def to_model_grid(self, stack: np.ndarray) -> np.ndarray:
        """(N, Y, X) labels or masks of the corrected slices on the prepared images' grid
        (nearest neighbour)."""
        if stack.shape[1:3] == self.images.shape[1:3]:
            return stack
        from skimage.transform import resize

        return np.stack([resize(m, self.images.shape[1:3], order=0, preserve_range=True, anti_aliasing=False)
                         for m in stack]).astype(stack.dtype)

    # ------------------------------------------------------------------ what is learnt

    def edits(self, shown: np.ndarray) -> np.ndarray:
        """(N, Y, X) bool edited pixels, on the slices' own grid: painted, or where
        ``shown`` (the starting model's (N, Y, X) bool mask, as Predict shows it)
        disagrees with the labels."""
        edited = (shown != (self.raw_labels == STRUCTURE)) & (self.raw_labels != IGNORE)
        return edited if self.painted is None else edited | self.painted

    def learnt_labels(self, fold: Fold | None) -> np.ndarray:
        """(N, Y', X') labels on the model's grid that ``fold``'s model learns (the rest
        IGNORE); all of them without a fold."""
        if fold is None:
            return self.labels
        labels = np.full_like(self.labels, IGNORE)
        labels[fold.learn] = self.labels[fold.learn]
        if fold.half is not None:
            labels[:, ~half_mask(labels.shape[1:], fold.half)] = IGNORE
        return labels

    def prepare_anchors(self, pipeline: Pipeline, threshold: float) -> list[int]:
        """Set `anchors`: the anchors on the model's grid (a grey slice's centre window, a
        whole photograph), labelled with the starting model's mask as ``pipeline`` shows
        it at ``threshold`` (nothing learnt outside the FOV); an anchor left with no
        labelled pixel is dropped. Returns the stack indices of the anchors kept."""
        probability = pipeline.probabilities(self.anchor_raw, self.anchor_fov)
        labels = (probability > threshold).astype(np.uint8)
        if self.anchor_fov is not None:
            labels[~self.anchor_fov] = IGNORE
        images, labels = self.as_the_model_sees(pipeline, self.anchor_raw, labels, self.anchor_fov)
        kept = [i for i, label in enumerate(labels) if np.any(label != IGNORE)]
        self.anchors = (images[kept], labels[kept]) if kept else None
        return [self.anchored[i] for i in kept]

    def training_data(self, fold: Fold | None, edits: np.ndarray, edit_weight: float) -> TrainingData:
        """What a fold's model (all corrected slices without one) learns: the corrections,
        edited pixels (``edits``, `edits`) weighing ``edit_weight`` and centring crops,
        then the anchors (slices of their own size: a window of a grey slice is smaller)."""
        labels = self.learnt_labels(fold)
        edited = self.to_model_grid(edits) & (labels != IGNORE)  # crops centred on what it may learn
        weights = np.where(edited, edit_weight, 1.0).astype(np.float32)
        slices = fold.learn if fold is not None else list(range(len(self)))
        if self.anchors is None:
            return TrainingData(self.images, labels, slices, weights=weights, focus=edited)
        images, anchor_labels = self.anchors
        first = len(self.images)
        return TrainingData([*self.images, *images], [*labels, *anchor_labels],
                            slices + list(range(first, first + len(images))),
                            weights=[*weights, *np.ones(anchor_labels.shape, np.float32)],
                            focus=[*edited, *np.zeros(anchor_labels.shape, bool)])

    # ------------------------------------------------------------------ what is scored

    def region(self, part: int, half: int | None = None) -> np.ndarray:
        """(Y, X) bool: the labelled pixels of one corrected part inside the FOV (the user
        sees a prediction there), of its ``half`` when given."""
        region = self.raw_labels[part] != IGNORE
        if self.fov is not None:
            region &= self.fov[part]
        if half is not None:
            region &= half_mask(region.shape, half)
        return region

    def scored_region(self, fold: Fold) -> np.ndarray:
        """(n, Y, X) bool: the labelled pixels of the fold's held-out part (inside the FOV)."""
        held_out = None if fold.half is None else 1 - fold.half
        return np.stack([self.region(i, held_out) for i in fold.scored])

    def truth(self, parts: list[int]) -> np.ndarray:
        """(n, Y, X) bool: the structure the user labelled on some corrected parts."""
        return self.raw_labels[parts] == STRUCTURE

    def name(self, parts: list[int], part_names=None) -> str:
        """How the user reads some corrected parts: "slice 7", "slices 3, 9", or
        ``part_names`` of their stack indices (e.g. a montage's chunks)."""
        stack = [self.corrected[i] for i in parts]
        if part_names is not None:
            return part_names(stack)
        return f"slice {stack[0]}" if len(stack) == 1 else "slices " + ", ".join(map(str, stack))

    def half_name(self, half: int, what: str) -> str:
        """"the top half of slice 2": ``half`` (0 or 1, see `rules.half_mask`) of ``what``."""
        wide = self.raw.shape[2] > self.raw.shape[1]
        side = ("left", "right") if wide else ("top", "bottom")
        return f"the {side[half]} half of {what}"
