"""The typed description of a model, read from and written to its checkpoint's metadata.

A checkpoint stores its metadata as JSON (`core.checkpoint`); code reads it through
`ModelDescription`, so a key's default and type are written once, here. Keys this
class does not know (training notes, data hashes, where a choice was made) are kept in
``extra`` and written back unchanged, so nothing is lost on a round trip.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

from .data import DEFAULT_NORMALIZATION
from .labels import LABEL_CONVENTION

INSTANCE_METHODS = ("watershed", "components")
FLIP_NAMES = ("x", "y")


@dataclass
class ModelDescription:
    """What napari-unet knows of a model besides its weights.

    Attributes:
        task: "em" (grey, membranes) or "fundus" (RGB, vessels).
        threshold: the mask is probability > threshold.
        normalization: ``{"method": "percentile", "low": p, "high": q}``.
        tile_size: tile edge the model predicts best with (pixels).
        tile_margin: mirror border around the image, or None (tile // 8).
        test_time_flips: axes ("x", "y") whose mirror images are averaged in.
        pixel_size_nm: (y, x) pixel size the model was trained at, or None.
        output_shift_px: (y, x) sub-pixel move onto the training labels' grid.
        input_zoom: slices are resampled by this (both axes) before the model sees them,
            and back: the scale a fine-tune found for the user's images, whose pixel size
            it does not know; None = as they are.
        instance_method: how masks become cells ("components" or "watershed").
        fundus_reference: FOV diameter and colour statistics of the training
            photographs (``fov_diameter_px``, ``mean``, ``std``), or None.
        history: one record per training run, oldest first.
        extra: every other key of the metadata, kept as it was.
    """

    task: str = "em"
    threshold: float = 0.5
    normalization: dict = field(default_factory=lambda: dict(DEFAULT_NORMALIZATION))
    label_convention: dict = field(default_factory=lambda: dict(LABEL_CONVENTION))
    tile_size: int = 256
    tile_margin: int | None = None
    test_time_flips: tuple[str, ...] = ()
    pixel_size_nm: tuple[float, float] | None = None
    output_shift_px: tuple[float, float] = (0.0, 0.0)
    input_zoom: float | None = None
    instance_method: str = "watershed"
    fundus_reference: dict | None = None
    name: str = ""
    description: str = ""
    fine_tuned_from: str | None = None
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, metadata: dict | None) -> ModelDescription:
        """Read a checkpoint's metadata dict; missing keys take their defaults, and the
        older spellings (``flips``, ``pixel_size`` as one number) are still read."""
        meta = copy.deepcopy(dict(metadata or {}))
        known = {f.name for f in fields(cls)} - {"extra"}
        if "flips" in meta and "test_time_flips" not in meta:
            meta["test_time_flips"] = meta.pop("flips")
        if "pixel_size" in meta and "pixel_size_nm" not in meta:
            meta["pixel_size_nm"] = meta.pop("pixel_size")
        values = {key: meta.pop(key) for key in list(meta) if key in known and meta[key] is not None}
        description = cls(**values, extra=meta)
        description.threshold = float(description.threshold)
        description.tile_size = int(description.tile_size)
        description.test_time_flips = tuple(f for f in description.test_time_flips if f in FLIP_NAMES)
        size = description.pixel_size_nm
        if size is not None:
            size = (size, size) if isinstance(size, (int, float)) else tuple(size)
            description.pixel_size_nm = (float(size[0]), float(size[1])) if all(size) else None
        description.output_shift_px = tuple(float(v) for v in description.output_shift_px)
        if description.instance_method not in INSTANCE_METHODS:
            description.instance_method = "watershed"
        return description

    def to_metadata(self) -> dict:
        """The JSON-able dict a checkpoint stores (unset optional keys left out)."""
        meta = copy.deepcopy(self.extra)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            meta[f.name] = list(value) if isinstance(value, tuple) else copy.deepcopy(value)
        return meta
