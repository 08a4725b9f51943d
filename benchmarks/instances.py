"""Cells as instances: connected components vs seeded watershed, scored as cells.

    python benchmarks/instances.py [--device auto]

The built-in EM model predicts ISBI slices 25-29 (never trained on) and, to stand for
another lab's data, the same slices as `_shift.foreign_em` makes them, with and without
their pixel size given. Its mask (at the model's threshold) is turned into cells by each
method of `core.predict.cell_instances` (the model records the one it uses);
the cells are scored against the ground-truth cells with V_Rand and V_Info after border
thinning (Arganda-Carreras et al. 2015), like `cell_scores.em_challenge_scores`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import ISBI_VAL, isbi, table
from _shift import EM_SCALE, foreign_em

from napari_unet.core.cell_scores import cell_labels, segmentation_scores, thin_borders
from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.pipeline import predict
from napari_unet.core.predict import INSTANCE_METHODS, cell_instances


def thinned(labels: np.ndarray) -> np.ndarray:
    return np.stack([thin_borders(s) for s in labels])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    model = load_checkpoint("em-membranes")
    data = isbi()
    foreign = foreign_em(data.images[ISBI_VAL], data.labels[ISBI_VAL])
    # (images, labels, the pixel size given to Predict: None = not given)
    sets = {"ISBI 25-29": (data.images[ISBI_VAL], data.labels[ISBI_VAL], None),
            "another lab (x1.5), pixel size given": (*foreign, 4.0 / EM_SCALE),
            "another lab (x1.5), pixel size not given": (*foreign, None)}
    chosen = model.info.instance_method
    rows = []
    for name, (images, labels, pixel_size) in sets.items():
        images = images if images.ndim == 4 else images[..., None]
        mask = predict(model, images, device=args.device, pixel_size=pixel_size).mask  # at the model's threshold
        truth = thinned(np.stack([cell_labels(s == 1) for s in labels]))
        for method in INSTANCE_METHODS:
            tick = time.perf_counter()
            cells = cell_instances(mask, method)
            seconds = (time.perf_counter() - tick) / len(images)
            scores = segmentation_scores(truth, thinned(cells))
            rows.append({"data": name, "method": method + (" (the model's)" if method == chosen else ""),
                         "vrand": scores["vrand"], "vinfo": scores["vinfo"], "rand_split": scores["rand_split"],
                         "rand_merge": scores["rand_merge"],
                         "s/slice": seconds})
    print(table(rows, ["data", "method", "vrand", "vinfo", "rand_split", "rand_merge", "s/slice"]))


if __name__ == "__main__":
    main()
