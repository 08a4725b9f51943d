"""napari sample data (File ▸ Open Sample ▸ napari-unet): the project's generated samples.

The arrays are package data (napari_unet/samples/, read by `core.samples`); the seeded
generator that made them is `sample_data/generate.py` in the repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core import samples
from .core.files import napari_unet_home
from .core.labels import label_colours


def sample_source(name: str) -> Path:
    """The path a sample stands for: where its corrections and fine-tunes go."""
    return napari_unet_home() / "samples" / name


def _meta(name: str, role: str, kind: str, **extra) -> dict:
    meta = {"name": name, "metadata": {"napari_unet": {"role": role, "kind": kind,
                                                       "source": str(sample_source(name.split()[0]))}}}
    if role != "image":
        meta.update(colormap=label_colours(role), opacity=0.5 if role == "truth" else 0.3)
    meta.update(extra)
    return meta


def em_sample() -> list[tuple]:
    """EM membranes: a (5, 384, 384) stack with its membrane ground truth."""
    image, labels = samples.em_sample()
    return [
        (image, _meta("em_sample", "image", "em", contrast_limits=[0, 255]), "image"),
        (labels, _meta("em_sample ground truth", "truth", "em"), "labels"),
    ]


def fundus_sample() -> list[tuple]:
    """Fundus vessels: a (584, 565) RGB image with vessel ground truth and FOV mask."""
    rgb, vessels, fov = samples.fundus_sample()
    truth = np.where(fov, vessels, 2).astype(np.uint8)  # outside the FOV: ignore
    return [
        (rgb, _meta("fundus_sample", "image", "fundus", rgb=True), "image"),
        (truth, _meta("fundus_sample ground truth", "truth", "fundus"), "labels"),
        (fov.astype(np.uint8), _meta("fundus_sample FOV", "fov", "fundus", visible=False), "labels"),
    ]


def add_sample_layers(viewer, which: str) -> list:
    """Add the "em" or "fundus" sample to a viewer; returns the layers."""
    from napari.layers import Layer

    tuples = {"em": em_sample, "fundus": fundus_sample}[which]()
    return [viewer.add_layer(Layer.create(data, meta, kind)) for data, meta, kind in tuples]
