"""What the user chose for a prediction, made once and passed whole.

Predict, the CLI and a cluster's task each make one `PredictSettings`; the Correct
tab's ranking, the fine-tune's checks and re-prediction and the montage regions receive
it whole, so each predicts as the user's Predict did (same tile, overlap, pixel size,
field of view, threshold and levels). Each default is written here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .volume import SIZES

#: Fraction of a tile shared with its neighbour.
DEFAULT_OVERLAP = 0.25
#: Tile blending (`core.predict.blend_window`).
DEFAULT_BLEND = "gaussian"
FOV_MODES = ("auto", "none")
#: Edge in pixels of the blocks a slice too large for memory is predicted in (`core.blocks`);
#: the number is `core.volume.Sizes.block`, with the other sizes of large data.
BLOCK = SIZES.block


@dataclass(frozen=True)
class PredictSettings:
    """The user's prediction choices (the model itself is passed beside them).

    Attributes:
        model: the model as the user named it (a built-in name or a path), for the
            record and for cluster workers, which load it themselves; "" when unknown.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps" (`core.predict.resolve_device`).
        tile: tile edge in pixels; None = the model's.
        overlap: fraction of a tile shared with its neighbour, in [0, 0.9].
        pixel_size: the images' pixel size in nm (EM); None = predict them as they are.
        fov: fundus: "auto" (found in each photograph) or "none" (no field of view).
        threshold: mask threshold in [0, 1]; None = the model's own.
        levels: (low, high), each (C,) float32: the intensities mapped to 0 and 1 for
            every slice (a volume's or a montage slice's); None = each slice's own.
        instances: also label cells (EM).
        precision, batch_size, blend: see `core.predict`.
        block: edge of the blocks a slice too large for memory is predicted in.
        block_limit: slices of more pixels are predicted block by block; default a
            montage's (`core.volume.Sizes.large_slice`: those are read by region too).
            Callers holding a `Sizes` pass ``block=sizes.block, block_limit=sizes.large_slice``.
    """

    model: str = ""
    device: str = "auto"
    tile: int | None = None
    overlap: float = DEFAULT_OVERLAP
    pixel_size: float | None = None
    fov: str = "auto"
    threshold: float | None = None
    levels: tuple[np.ndarray, np.ndarray] | None = None
    instances: bool = False
    precision: str = "auto"
    batch_size: int | None = None
    blend: str = DEFAULT_BLEND
    block: int = BLOCK
    block_limit: int = SIZES.large_slice

    def __post_init__(self) -> None:
        if self.fov not in FOV_MODES:
            raise ValueError(f"fov={self.fov!r}: choose 'auto', 'none' or give a mask.")
        if not 0.0 <= self.overlap <= 0.9:
            raise ValueError(f"overlap={self.overlap}: choose a fraction between 0 and 0.9.")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold}: choose a value between 0 and 1.")

    def but(self, **changes) -> PredictSettings:
        """A copy with ``changes`` (e.g. ``settings.but(threshold=None)``)."""
        return replace(self, **changes)
