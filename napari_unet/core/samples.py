"""The two sample data sets shipped with the package (napari_unet/samples/), read from disk.

They are seeded synthetic look-alikes of ISBI 2012 (EM) and DRIVE (fundus), made once by
`sample_data/generate.py` in the repository; they contain none of the real data. Labels
follow the project's convention: 0 = background (cell interior / retina), 1 = structure
(membrane / vessel).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
# What each file holds (key -> file name in SAMPLES_DIR); sample_data/generate.py writes them.
SAMPLE_FILES = {
    "em_image": "em_membranes_image.tif",
    "em_labels": "em_membranes_labels.tif",
    "fundus_image": "fundus_vessels_image.png",
    "fundus_labels": "fundus_vessels_labels.png",
    "fundus_fov": "fundus_vessels_fov.png",
}


def em_sample() -> tuple[np.ndarray, np.ndarray]:
    """The EM sample: serial sections with dark membranes, as in ISBI 2012.

    Returns:
        images: (5, 384, 384) uint8 stack (Z, Y, X).
        labels: (5, 384, 384) uint8, 1 = membrane, 0 = cell interior.
    """
    return tifffile.imread(_path("em_image")), tifffile.imread(_path("em_labels"))


def fundus_sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fundus sample: a colour photograph of DRIVE's size, with vessels and FOV.

    Returns:
        image: (584, 565, 3) uint8 RGB.
        labels: (584, 565) uint8, 1 = vessel inside the field of view, 0 elsewhere.
        fov: (584, 565) bool, True inside the field of view (the file stores 0/255).
    """
    return _png("fundus_image"), _png("fundus_labels"), _png("fundus_fov") > 0


def _path(key: str) -> Path:
    return SAMPLES_DIR / SAMPLE_FILES[key]


def _png(key: str) -> np.ndarray:
    with Image.open(_path(key)) as img:
        return np.array(img)  # a writable copy, as the tif reader gives
