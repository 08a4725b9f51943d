"""napari writer: a Labels layer to a tif file (values kept: 0, 1 and 2 = ignore)."""

from __future__ import annotations

import numpy as np
import tifffile


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Save a Labels layer as tif; returns the written path."""
    array = np.asarray(data)
    if array.max(initial=0) <= 255:
        array = array.astype(np.uint8)
    tifffile.imwrite(path, array, photometric="minisblack")
    return [path]
