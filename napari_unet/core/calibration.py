"""Where a model's output sits relative to the labels it learnt from.

Annotators draw boundaries with a convention of their own: ISBI 2012's membrane labels
lie about 0.3 px up and 0.25 px left of the membranes the images show (measured with
`annotation_offset` on slices 0-24; see the em-membranes model card). A model trained
with flips and 90-degree rotations cannot learn such an offset (each flip turns it
around), so its membranes are centred and miss the labels by that fraction of a pixel.
The offset is measured once, on labelled slices the model was trained or selected on,
stored in the checkpoint (``output_shift_px``, (y, x)), and every prediction is moved by
it. A model without the key is left as it is.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .labels import IGNORE, STRUCTURE

SHIFT_KEY = "output_shift_px"


def annotation_offset(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The sub-pixel (y, x) shift that moves the predictions onto the labels.

    Phase correlation (`skimage.registration.phase_cross_correlation`, 1/20 px) of each
    slice's probability with its structure mask; the median over slices.

    Args:
        probabilities: (Z, Y, X) float in [0, 1]; labels: (Z, Y, X) project convention.
    """
    from skimage.registration import phase_cross_correlation

    shifts = []
    for prob, label in zip(probabilities, labels):
        if not np.any(label == STRUCTURE) or np.any(label == IGNORE):
            continue  # only fully labelled slices: unlabelled pixels would count as background
        shift, _, _ = phase_cross_correlation((label == STRUCTURE).astype(np.float32), prob, upsample_factor=20)
        shifts.append(shift)
    if not shifts:
        return (0.0, 0.0)
    dy, dx = np.median(shifts, axis=0)
    return (round(float(dy), 3), round(float(dx), 3))


def shift_output(probabilities: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Move (Z, Y, X) probabilities by the model's ``output_shift_px`` (y, x) (linear
    interpolation, edges repeated); unchanged for (0, 0)."""
    dy, dx = shift
    if not (dy or dx):
        return probabilities
    return ndimage.shift(probabilities, (0, dy, dx), order=1, mode="nearest").astype(np.float32)
