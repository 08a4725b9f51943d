"""The field of view (FOV) of a fundus photograph, found from the image itself.

A fundus camera images the retina through a round aperture: outside it the photograph
is (nearly) black. Predicting there gives haze and a bright ring along the aperture's
edge, and scoring there inflates specificity, so napari-unet predicts inside the FOV
only. When the user gives no FOV mask, it is found as the bright disc: the brightest
channel of each pixel (works whatever the camera's colour balance), smoothed, and
split from the black surround at half-way between the surround's level and Otsu's
threshold; the largest region is kept and its holes filled. Otsu alone (with a
one-pixel erosion) cut off the dim rim of the retina: 1.7 % of the DRIVE FOV and 0.4 %
of its vessels, which cost the built-in model 0.004 AUC (benchmarks/fov.py).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def field_of_view(image: np.ndarray) -> np.ndarray:
    """The FOV of one colour fundus photograph.

    Args:
        image: (Y, X, C) any dtype.

    Returns:
        (Y, X) bool, True inside the field of view. An image without a dark surround
        (already cropped to the retina) gives all True.
    """
    from skimage.filters import threshold_otsu

    brightest = np.nan_to_num(np.asarray(image, dtype=np.float32)).max(axis=-1)
    smooth = ndimage.gaussian_filter(brightest, max(1.0, image.shape[1] / 500))
    if smooth.max() - smooth.min() < 1e-6:
        return np.ones(image.shape[:2], bool)
    otsu = threshold_otsu(smooth)
    surround = float(np.median(smooth[smooth <= otsu]))
    inside = smooth > surround + 0.5 * (otsu - surround)
    regions, count = ndimage.label(inside)
    if count == 0:
        return np.ones(image.shape[:2], bool)
    sizes = ndimage.sum_labels(inside, regions, np.arange(1, count + 1))
    disc = ndimage.binary_fill_holes(regions == 1 + int(np.argmax(sizes)))
    # No black surround (a photograph cropped to the retina): Otsu then only splits
    # brighter from darker retina, and the "outside" is not much darker than the inside.
    if disc.mean() > 0.97 or np.median(brightest[~disc]) > 0.25 * np.median(brightest[disc]):
        return np.ones(image.shape[:2], bool)
    return disc


def fields_of_view(images: np.ndarray) -> np.ndarray:
    """`field_of_view` of every image of a (N, Y, X, C) stack, as (N, Y, X) bool."""
    return np.stack([field_of_view(image) for image in images])


def fov_diameter(fov: np.ndarray) -> float:
    """Diameter in pixels of the disc with the FOV's area (robust to a clipped disc edge)."""
    return float(2.0 * np.sqrt(np.count_nonzero(fov) / np.pi))


def fundus_reference(images: np.ndarray, normalization: dict, source: str) -> dict:
    """What a fundus model's training photographs look like, for `match_colour` and the
    resampling to their FOV diameter (stored as ``fundus_reference`` in the metadata).

    Args:
        images: (N, Y, X, 3) raw training photographs; normalization: the model's
            (``Checkpoint.normalization``); source: says which images, for the record.

    Returns:
        {"fov_diameter_px", "mean" (3,), "std" (3,), "measured_on"}: the median FOV
        diameter, and per channel the mean and spread inside the FOVs after normalisation.
    """
    from .data import normalize

    fovs = fields_of_view(images)
    normalised = normalize(images, normalization)
    inside = normalised[fovs]  # (pixels, 3)
    return {
        "fov_diameter_px": round(float(np.median([fov_diameter(f) for f in fovs])), 1),
        "mean": [round(float(v), 4) for v in inside.mean(axis=0)],
        "std": [round(float(v), 4) for v in inside.std(axis=0)],
        "measured_on": f"{source}, FOV found by core.fov",
    }


def match_colour(image: np.ndarray, fov: np.ndarray, mean, std, blank_outside: bool = True) -> np.ndarray:
    """Give each channel, inside the FOV, the mean and spread of the model's training images.

    Cameras differ in colour balance, exposure and contrast; after this (Reinhard-style
    standardisation of a normalised image), a red-dominant, dark photograph looks to the
    model like the ones it learnt from. Outside the FOV the image is 0 (unless
    ``blank_outside`` is False: the FOV then only says where the colour is measured).

    Args:
        image: (Y, X, C) float32 in [0, 1]; fov: (Y, X) bool; mean, std: C values.

    Returns:
        (Y, X, C) float32 in [0, 1].
    """
    out = np.zeros_like(image, dtype=np.float32)
    if not fov.any():
        return out
    for c in range(image.shape[-1]):
        values = image[..., c][fov]
        spread = float(values.std()) or 1.0
        out[..., c] = (image[..., c] - float(values.mean())) / spread * std[c] + mean[c]
    if blank_outside:
        out[~fov] = 0.0
    return np.clip(out, 0.0, 1.0)
