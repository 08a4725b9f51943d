"""Random transforms of training samples: crops around a pixel, flips, rotations, elastic
deformation, intensity and camera changes.

Training (`napari_unet.core.train`) draws a crop of an image and its labels (and loss
weights) with :func:`crop_around`, then :func:`augment` moves them together; the image
alone gets the intensity and camera changes. Arrays are ``(Y, X, C)`` float32 images in
[0, 1], ``(Y, X)`` uint8 labels in the project convention and ``(Y, X)`` float32 weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Augmentation", "crop_around", "augment"]


@dataclass
class Augmentation:
    """Random transforms used in training (all on by default).

    Elastic deformation follows the U-Net paper: displacements on a coarse 3x3 grid
    with ``elastic_sigma`` px standard deviation, smoothly interpolated.

    ``camera`` (off by default; the fundus recipe uses it) is the share of crops made to
    look as if from another camera: each channel its own gain and gamma (another colour
    balance and response), a softer focus (resampling, optics) and sensor noise.
    """

    flips: bool = True
    rotations: bool = True
    elastic: bool = True
    elastic_sigma: float = 10.0
    elastic_probability: float = 0.5
    intensity: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.25
    camera: float = 0.0


def crop_around(
    arrays: list[np.ndarray], size: int, centre: tuple[int, int], rng: np.random.Generator
) -> list[np.ndarray]:
    """Crop the same (size x size) window, holding pixel ``centre`` at a random place in
    it, from arrays sharing (Y, X, ...). Arrays smaller than the crop are mirror-padded.

    Args:
        arrays: (Y, X) or (Y, X, C) arrays of one sample (image, labels, weights).
        size: the crop's side in pixels.
        centre: (y, x) pixel the crop must hold.

    Returns:
        The crops, (size, size) or (size, size, C), views of the (padded) arrays.
    """
    y, x = arrays[0].shape[:2]
    pad_y, pad_x = max(0, size - y), max(0, size - x)
    if pad_y or pad_x:
        arrays = [
            np.pad(a, [(0, pad_y), (0, pad_x)] + [(0, 0)] * (a.ndim - 2), mode="symmetric")
            for a in arrays
        ]
        y, x = arrays[0].shape[:2]
    top = int(np.clip(centre[0] - rng.integers(0, size), 0, y - size))
    left = int(np.clip(centre[1] - rng.integers(0, size), 0, x - size))
    return [a[top : top + size, left : left + size] for a in arrays]


def augment(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    aug: Augmentation,
    weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Apply random geometric (to all) and intensity (to the image) transforms.

    Args:
        image: (Y, X, C) float32 in [0, 1].
        label: (Y, X) uint8.
        weight: optional (Y, X) float32 per-pixel loss weight, moved with the label.

    Returns:
        The transformed (image, label, weight), contiguous.
    """
    arrays = [image, label] + ([weight] if weight is not None else [])
    if aug.flips:
        if rng.random() < 0.5:
            arrays = [a[:, ::-1] for a in arrays]
        if rng.random() < 0.5:
            arrays = [a[::-1] for a in arrays]
    if aug.rotations:
        k = int(rng.integers(0, 4))
        arrays = [np.rot90(a, k, axes=(0, 1)) for a in arrays]
    if aug.elastic and rng.random() < aug.elastic_probability:
        arrays = _elastic(arrays, rng, aug.elastic_sigma)
    image = np.ascontiguousarray(arrays[0], dtype=np.float32)
    if aug.camera and rng.random() < aug.camera:
        image = _camera(image, rng)
    if aug.intensity:
        image = _intensity(image, rng, aug)
    label = np.ascontiguousarray(arrays[1])
    weight = np.ascontiguousarray(arrays[2]) if weight is not None else None
    return image, label, weight


def _elastic(arrays: list[np.ndarray], rng: np.random.Generator, sigma: float) -> list[np.ndarray]:
    """The same smooth random warp of (Y, X) or (Y, X, C) arrays; the second (labels) by
    nearest neighbour, the others linearly."""
    y, x = arrays[0].shape[:2]
    coarse = rng.normal(0.0, sigma, size=(2, 3, 3))
    # Bicubic up-sampling of the coarse grid gives a smooth displacement field.
    field_ = np.stack([ndimage.zoom(c, (y / 3, x / 3), order=3, mode="nearest")[:y, :x] for c in coarse])
    grid = np.mgrid[0:y, 0:x].astype(np.float32)
    coords = grid + field_
    out = []
    for i, a in enumerate(arrays):
        order = 0 if i == 1 else 1  # labels stay integer: nearest neighbour
        if a.ndim == 3:
            warped = np.stack(
                [ndimage.map_coordinates(a[..., c], coords, order=order, mode="mirror") for c in range(a.shape[2])],
                axis=-1,
            )
        else:
            warped = ndimage.map_coordinates(a, coords, order=order, mode="mirror")
        out.append(warped.astype(a.dtype))
    return out


def _camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(Y, X, C) in [0, 1] as another camera might give it (see `Augmentation.camera`)."""
    channels = image.shape[-1]
    gain = np.exp(rng.uniform(-0.3, 0.3, channels)).astype(np.float32)
    gamma = np.exp(rng.uniform(-0.4, 0.4, channels)).astype(np.float32)
    image = np.clip(image * gain, 0.0, 1.0) ** gamma
    if rng.random() < 0.5:
        image = ndimage.gaussian_filter(image, (*[rng.uniform(0.3, 1.2)] * 2, 0))
    image = image + rng.normal(0.0, rng.uniform(0.0, 0.02), image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _intensity(image: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """(Y, X, C) in [0, 1] with a random gamma, contrast and brightness, clipped to [0, 1]."""
    gamma = float(np.exp(rng.uniform(-aug.gamma, aug.gamma)))
    contrast = 1.0 + rng.uniform(-aug.contrast, aug.contrast)
    brightness = rng.uniform(-aug.brightness, aug.brightness)
    image = np.clip(image, 0.0, 1.0) ** gamma
    mean = image.mean()
    return np.clip((image - mean) * contrast + mean + brightness, 0.0, 1.0).astype(np.float32)
