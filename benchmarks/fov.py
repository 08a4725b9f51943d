"""Is the automatic field of view (`core.fov`) the one the DRIVE annotators drew?

    python benchmarks/fov.py

For the 20 DRIVE test images, as taken and as another camera's (`_shift.foreign_fundus`:
red-dominant, dark, no blue, 1,000 px, JPEG), the found FOV is compared with the DRIVE
FOV masks: IoU, and the share of true vessel pixels left outside (they would be lost).
"""

from __future__ import annotations

import time

import numpy as np
from _common import drive, table
from _shift import foreign_fundus

from napari_unet.core.fov import field_of_view
from napari_unet.core.labels import STRUCTURE


def main() -> None:
    data = drive("test")
    sets = {"DRIVE test": (data.images, data.labels, data.fov),
            "another camera": foreign_fundus(data.images, data.labels, data.fov)}
    rows = []
    for name, (images, labels, fov) in sets.items():
        tick = time.perf_counter()
        found = np.stack([field_of_view(image) for image in images])
        seconds = (time.perf_counter() - tick) / len(images)
        iou = [np.sum(f & t) / np.sum(f | t) for f, t in zip(found, fov)]
        vessels = labels == STRUCTURE
        lost = np.sum(vessels & ~found) / np.sum(vessels)
        rows.append({"data": name, "mean IoU": float(np.mean(iou)), "worst IoU": float(np.min(iou)),
                     "vessel pixels outside": float(lost), "s/image": seconds})
    print(table(rows, ["data", "mean IoU", "worst IoU", "vessel pixels outside", "s/image"]))


if __name__ == "__main__":
    main()
