"""Which slice to correct next: one uncertainty number per slice, higher = more likely wrong.

Computed from the prediction the user already has (`core.pipeline`, so with the model's
own pixel size, FOV and standardisation), with at most one extra pass:

* ``margin``: pixels whose probability lies within `MARGIN` of the threshold, per pixel
  of predicted structure (a slice whose membranes or vessels the model half-sees);
* ``flips``: how much the probability changes when the slice is predicted upside down
  (one extra pass), per pixel of predicted structure;
* ``both``: margin + flips;
* ``scale``: margin + how much the probability changes when the slice is predicted at
  `SCALE_ZOOM` times the scale in use (one extra pass, on 0.62 x the pixels), per pixel
  of predicted structure: a model that sees a slice at the wrong scale, or blurred,
  answers a second look at another scale differently, though confidently each time;
* ``objects``: the share of cells (EM) or vessel segments (fundus) that appear, vanish
  or merge when the threshold moves by `MARGIN` either way.

`DEFAULT_METHODS` are, per kind of image, the ones that tracked the real per-slice error
best on stacks built from slices the choice may see (benchmarks/suggest.py: Spearman
0.74 for scale on EM, 0.91 for flips on fundus photographs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .blocks import SliceOf, in_blocks, predict_slice_in_blocks, refuse_whole
from .data import DataError
from .pipeline import Pipeline, PipelineResult
from .predict import CancelCheck, ProgressCallback
from .stream import VolumeOutputs

METHODS = ("margin", "flips", "both", "scale", "objects")
DEFAULT_METHODS = {"em": "scale", "fundus": "flips"}
MARGIN = 0.2
#: The second look of the "scale" method: 2**(-1/3), one step of the fine-tune's zoom grid.
SCALE_ZOOM = 0.79


def _per_structure(amount: float, structure: int, pixels: int) -> float:
    """``amount`` per pixel of predicted structure (of ``pixels``, at least one and 0.1 %
    of them, so an empty prediction of an empty slice is not infinitely uncertain)."""
    return float(amount) / max(1.0, float(structure), 0.001 * pixels)


def _objects(mask: np.ndarray, cells: bool) -> int:
    from scipy import ndimage

    return int(ndimage.label(~mask if cells else mask)[1])


def default_method(pipeline: Pipeline, shape: tuple[int, int] | None = None) -> str:
    """The measured best method for the pipeline's kind of image (`DEFAULT_METHODS`);
    "margin" for (Y, X) ``shape`` slices predicted in blocks (a montage), the only one
    ranked block by block."""
    if shape is not None and in_blocks(pipeline, shape):
        return "margin"
    return DEFAULT_METHODS["fundus" if pipeline.uses_fov else "em"]


def slice_uncertainty(probability: np.ndarray, threshold: float, method: str = "margin",
                      fov: np.ndarray | None = None, flipped: np.ndarray | None = None,
                      cells: bool = True, zoomed: np.ndarray | None = None) -> float:
    """The uncertainty of one slice's prediction.

    Args:
        probability: (Y, X) float32 in [0, 1], as `Pipeline.run` gives it.
        threshold: the mask's threshold.
        method: one of `METHODS`.
        fov: (Y, X) bool: only pixels inside count (fundus), or None.
        flipped: (Y, X) the same slice predicted flipped and flipped back ("flips").
        cells: "objects" counts cells between structure (EM) rather than structure segments.
        zoomed: (Y, X) the same slice predicted at `SCALE_ZOOM` and back ("scale").

    Returns:
        A number >= 0; higher = the prediction is more likely wrong.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown uncertainty method {method!r}: choose one of {', '.join(METHODS)}.")
    inside = np.ones(probability.shape, bool) if fov is None else fov
    values = probability[inside]
    mask = values > threshold
    if method == "margin":
        return _per_structure(np.count_nonzero(np.abs(values - threshold) < MARGIN), np.count_nonzero(mask),
                              mask.size)
    if method in ("flips", "both"):
        if flipped is None:
            raise ValueError(f"method '{method}' needs the slice predicted flipped (one more pass).")
        flips = _per_structure(np.abs(values - flipped[inside]).sum(), np.count_nonzero(mask), mask.size)
        return flips if method == "flips" else flips + slice_uncertainty(probability, threshold, "margin", fov)
    if method == "scale":
        if zoomed is None:
            raise ValueError("method 'scale' needs the slice predicted at another scale (one more pass).")
        change = _per_structure(np.abs(values - zoomed[inside]).sum(), np.count_nonzero(mask), mask.size)
        return change + slice_uncertainty(probability, threshold, "margin", fov)
    low, mid, high = (np.where(inside, probability > t, False) for t in (threshold - MARGIN, threshold,
                                                                         threshold + MARGIN))
    counts = [_objects(m, cells) for m in (low, mid, high)]
    return abs(counts[0] - counts[2]) / max(1, counts[1])


def pixel_uncertainty(probability: np.ndarray, threshold: float, fov: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel uncertainty, to show as an image: 1 at the threshold, 0 where the
    probability is as far from it as it can be.

    Args:
        probability: (Y, X) float32 in [0, 1]; threshold: the mask's threshold.
        fov: (Y, X) bool: 0 outside (fundus), or None.

    Returns:
        (Y, X) float32 in [0, 1].
    """
    span = max(threshold, 1.0 - threshold, 1e-6)
    out = np.clip(1.0 - np.abs(probability - threshold) / span, 0.0, 1.0).astype(np.float32)
    if fov is not None:
        out[~fov] = 0
    return out


class UncertaintyMap:
    """The per-pixel uncertainty (`pixel_uncertainty`) of the slices `suggest` predicts, to
    show as an image: call `add` from its ``on_slice``.

    Attributes:
        planes: (Z, Y, X) float32 in [0, 1]; 0 on slices without image or predicted in blocks.
    """

    def __init__(self, shape: tuple[int, ...], threshold: float) -> None:
        self.planes = np.zeros(tuple(shape[:3]), np.float32)
        self.threshold = threshold

    def add(self, z: int, result: PipelineResult | None) -> None:
        """Slice ``z``'s map from its `PipelineResult` (None: left at 0)."""
        if result is not None:
            self.planes[z] = pixel_uncertainty(result.probabilities[0], self.threshold,
                                               None if result.fov is None else result.fov[0])


@dataclass
class Suggestion:
    """Slices ranked by how much correcting them is worth.

    Attributes:
        uncertainty: one number per slice of the input, in slice order (NaN for a slice
            left out: no image in it).
        order: slice indices, most worth correcting first, without the corrected ones
            (and without slices holding no image).
    """

    uncertainty: list[float]
    order: list[int]


def rank(uncertainty: list[float], corrected=()) -> list[int]:
    """Slice indices by decreasing uncertainty, leaving out ``corrected`` and NaN."""
    done = set(int(z) for z in corrected)
    keep = [z for z, u in enumerate(uncertainty) if z not in done and np.isfinite(u)]
    return sorted(keep, key=lambda z: (-uncertainty[z], z))


def unscored(uncertainty: list[float]) -> int:
    """How many slices were not scored (NaN: no image in them)."""
    return sum(1 for u in uncertainty if not np.isfinite(u))


def suggest(pipeline: Pipeline, volume, corrected=(), method: str | None = None, fov=None,
            progress: ProgressCallback | None = None, cancel: CancelCheck | None = None,
            on_slice: Callable[[int, float, PipelineResult | None], None] | None = None) -> Suggestion:
    """Predict each slice (one at a time: a lazy volume streams) and rank them.

    Args:
        pipeline: how the user predicts (model, pixel size, FOV, threshold).
        volume: (Z, Y, X, C) array-like.
        corrected: slices already corrected: scored, but left out of ``order``.
        method: one of `METHODS`; default `default_method`.
        fov: (Z, Y, X) FOV the user gave (fundus), or None.
        on_slice: called with (z, uncertainty, the slice's `PipelineResult`, None for a
            slice without image or one predicted in blocks) after each slice.

    Raises:
        PredictionCancelled: ``cancel`` returned True.
    """
    method = method or default_method(pipeline, volume.shape[1:3])
    refuse_whole(pipeline, volume.shape[1:3])
    count = volume.shape[0]
    passes = 2 if method in ("flips", "both", "scale") else 1
    scores: list[float] = []
    for z in range(count):

        def slice_progress(done: int, total: int, z: int = z, p: int = 0) -> None:
            if progress is not None:
                progress((z * passes + p) * total + done, count * passes * total)

        if in_blocks(pipeline, volume.shape[1:3]):  # a montage: never the whole slice at once
            scores.append(_margin_in_blocks(pipeline, volume, z, method, slice_progress, cancel))
            if on_slice is not None:
                on_slice(z, scores[-1], None)
            continue
        image = np.asarray(volume[z])[None]
        given = None if fov is None else np.asarray(fov[z])[None]
        try:
            result = pipeline.run(image, given, slice_progress, cancel)
        except DataError:
            if np.ptp(image) > 0:
                raise
            scores.append(float("nan"))  # no image: nothing to correct
            if on_slice is not None:
                on_slice(z, scores[-1], None)
            continue
        flipped = zoomed = None

        def second_progress(done: int, total: int, z: int = z) -> None:
            slice_progress(done, total, z, 1)

        if method == "scale":
            zoomed = pipeline.rescaled(SCALE_ZOOM).run(image, given, second_progress, cancel).probabilities[0]
        elif passes == 2:
            again = pipeline.run(np.ascontiguousarray(image[:, ::-1]), None if given is None else given[:, ::-1],
                                 second_progress, cancel)
            flipped = again.probabilities[0, ::-1]
        in_use = None if result.fov is None else result.fov[0]
        score = slice_uncertainty(result.probabilities[0], pipeline.threshold, method, in_use, flipped,
                                  cells=not pipeline.uses_fov, zoomed=zoomed)
        scores.append(score)
        if on_slice is not None:
            on_slice(z, score, result)
    return Suggestion(scores, rank(scores, corrected))


class _MarginCounts:
    """Takes one slice's probabilities block by block, where `core.blocks` writes them, and
    counts what the "margin" uncertainty needs."""

    def __init__(self, threshold: float) -> None:
        self.threshold, self.near, self.structure, self.pixels = threshold, 0, 0, 0

    def __setitem__(self, where, probability: np.ndarray) -> None:
        self.near += int(np.count_nonzero(np.abs(probability - self.threshold) < MARGIN))
        self.structure += int(np.count_nonzero(probability > self.threshold))
        self.pixels += probability.size


class _Discard:
    def __setitem__(self, where, values) -> None:
        pass


def _margin_in_blocks(pipeline: Pipeline, volume, z: int, method: str, progress, cancel) -> float:
    """The "margin" uncertainty of a slice too large for memory, predicted block by block
    (`core.blocks`): the number `slice_uncertainty` gives the whole slice. NaN without image."""
    if method != "margin":
        raise DataError(f"Slices of {volume.shape[1]:,} x {volume.shape[2]:,} pixels are ranked block by block, "
                        "with the 'margin' method only: choose --method margin.")
    counts = _MarginCounts(pipeline.threshold)
    try:
        predict_slice_in_blocks(pipeline, SliceOf(volume, z), VolumeOutputs(_Discard(), counts), z, progress, cancel)
    except DataError:  # no image in it: nothing to correct
        return float("nan")
    return _per_structure(counts.near, counts.structure, counts.pixels)
