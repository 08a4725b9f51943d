"""Does the per-slice uncertainty track the real per-slice error? (issue 26, point 4)

    python benchmarks/suggest.py [--device auto]

Stacks whose slices differ in quality and content are built from the real data, each
slice one of: as it is; blurred (sigma 2, 4); noisy (sigma 30, 60 grey levels);
low contrast (x0.25); gamma 3; rescaled (x0.6, x1.6: another pixel size). Fundus
photographs: as they are; another colour balance (red-dominant, dark); JPEG quality 10
and 25; blurred; noisy; rescaled x0.7. Every slice is predicted through the pipeline
(as `napari-unet suggest` predicts), then scored against its labels at the model's own
threshold: error = 1 - membrane Dice (EM), 1 - F1 inside the FOV (fundus).

The method is CHOSEN on stacks built from slices the choice may see (ISBI 22-24, the
model's validation slices; DRIVE training 21-25), and REPORTED on stacks built from
held-out ones (ISBI 25-29; DRIVE test 01-06). Prints the Spearman correlation between
each method's uncertainty and the error, per stack.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from _common import drive, isbi, table
from PIL import Image
from scipy import ndimage
from scipy.stats import spearmanr
from skimage.transform import rescale

from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.labels import IGNORE, STRUCTURE
from napari_unet.core.metrics import dice, fundus_scores
from napari_unet.core.pipeline import Pipeline
from napari_unet.core.settings import PredictSettings
from napari_unet.core.uncertainty import DEFAULT_METHODS, METHODS, SCALE_ZOOM, slice_uncertainty

EM_SIDE = 304  # every EM variant is cut to this (the x0.6 one is 307 px)


def _centre(array: np.ndarray, side: int) -> np.ndarray:
    y, x = (array.shape[0] - side) // 2, (array.shape[1] - side) // 2
    return array[y : y + side, x : x + side]


def em_variants(image: np.ndarray, labels: np.ndarray, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, (Y, X) uint8 image, (Y, X) labels) variants of one ISBI slice, all EM_SIDE²."""
    rng = np.random.default_rng(seed)
    grey = image.astype(np.float32)
    out = [("as is", grey, labels)]
    out += [(f"blur {s}", ndimage.gaussian_filter(grey, s), labels) for s in (2.0, 4.0)]
    out += [(f"noise {s}", grey + rng.normal(0, s, grey.shape), labels) for s in (30, 60)]
    out += [("contrast x0.25", 128 + 0.25 * (grey - 128), labels), ("gamma 3", 255 * (grey / 255) ** 3, labels)]
    for zoom in (0.6, 1.6):
        scaled = rescale(grey, zoom, order=1, anti_aliasing=zoom < 1, preserve_range=True)
        membrane = rescale((labels == STRUCTURE).astype(np.float32), zoom, order=1) > 0.5
        out.append((f"scale x{zoom}", scaled, membrane.astype(np.uint8)))
    return [(name, np.clip(_centre(img, EM_SIDE), 0, 255).astype(np.uint8), _centre(lab, EM_SIDE))
            for name, img, lab in out]


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


def fundus_variants(image: np.ndarray, labels: np.ndarray, seed: int):
    """(name, (Y, X, 3) uint8 photograph, (Y, X) labels with IGNORE outside the FOV)."""
    rng = np.random.default_rng(seed)
    rgb = image.astype(np.float32)
    recoloured = np.clip(rgb * np.array([1.1, 0.55, 0.2]) * 0.7, 0, 255)
    out = [("as is", rgb, labels), ("colour", recoloured, labels), ("jpeg 10", _jpeg(image, 10), labels),
           ("jpeg 25", _jpeg(image, 25), labels), ("blur 2", ndimage.gaussian_filter(rgb, (2, 2, 0)), labels),
           ("noise 25", rgb + rng.normal(0, 25, rgb.shape), labels)]
    scaled = rescale(rgb, 0.7, order=1, channel_axis=-1, anti_aliasing=True, preserve_range=True)
    small = np.stack([rescale((labels == v).astype(np.float32), 0.7, order=1) > 0.5 for v in (STRUCTURE, IGNORE)])
    out.append(("scale x0.7", scaled, np.where(small[1], IGNORE, small[0]).astype(np.uint8)))
    return [(name, np.clip(img, 0, 255).astype(np.uint8), lab) for name, img, lab in out]


def measure(pipeline: Pipeline, slices, fundus: bool) -> list[dict]:
    """Per slice: the real error at the model's threshold and each method's uncertainty."""
    rows = []
    for name, image, labels in slices:
        stack = image[None] if fundus else image[None, ..., None]
        result = pipeline.run(stack)
        flipped = pipeline.run(np.ascontiguousarray(stack[:, ::-1])).probabilities[0, ::-1]
        zoomed = pipeline.rescaled(SCALE_ZOOM).run(stack).probabilities[0]  # no other scale for photographs
        probability, mask = result.probabilities[0], result.mask[0].astype(bool)
        scored = labels != IGNORE
        truth = labels == STRUCTURE
        if fundus:
            error = 1 - fundus_scores(mask[None].astype(np.float32), truth[None], scored[None])["f1"]
        else:
            error = 1 - dice(mask, truth, mask=scored)
        fov = None if result.fov is None else result.fov[0]
        row = {"slice": name, "error": error}
        for method in METHODS:
            row[method] = slice_uncertainty(probability, pipeline.threshold, method, fov, flipped, cells=not fundus,
                                            zoomed=zoomed)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", choices=("em", "fundus"), help="one kind of data only")
    args = parser.parse_args()
    start = time.perf_counter()
    em = isbi()
    em_pipeline = Pipeline(load_checkpoint("em-membranes"), PredictSettings(device=args.device))
    fundus_pipeline = Pipeline(load_checkpoint("fundus-vessels"), PredictSettings(device=args.device))
    train, test = drive("training"), drive("test")

    def em_stack(slices):
        return [(f"{z} {n}", i, lab) for z in slices
                for n, i, lab in em_variants(em.images[z][..., 0], em.labels[z], z)]

    def fundus_stack(data, count):
        return [(f"{k} {n}", i, lab) for k in range(count)
                for n, i, lab in fundus_variants(data.images[k], np.where(data.fov[k], data.labels[k], IGNORE), k)]

    stacks = {
        ("EM", "choose: ISBI 22-24"): (em_pipeline, em_stack([22, 23, 24]), False),
        ("EM", "report: ISBI 25-29"): (em_pipeline, em_stack(range(25, 30)), False),
        ("fundus", "choose: DRIVE training 21-25"): (fundus_pipeline, fundus_stack(train, 5), True),
        ("fundus", "report: DRIVE test 01-06"): (fundus_pipeline, fundus_stack(test, 6), True),
    }
    rows, chosen = [], {}
    for (kind, split), (pipeline, slices, fundus) in stacks.items():
        if args.only and kind.lower() != args.only:
            continue
        measured = measure(pipeline, slices, fundus)
        errors = [r["error"] for r in measured]
        row = {"data": kind, "stack": split, "slices": len(measured),
               "error range": f"{min(errors):.2f}-{max(errors):.2f}"}
        for method in METHODS:
            row[method] = float(spearmanr([r[method] for r in measured], errors).statistic)
        rows.append(row)
        if split.startswith("choose"):
            chosen[kind] = max(METHODS, key=lambda m: row[m])
        print(table(measured, ["slice", "error", *METHODS]), "\n", flush=True)
    print("Spearman correlation between the uncertainty and the real per-slice error\n")
    print(table(rows, ["data", "stack", "slices", "error range", *METHODS]))
    print(f"\nbest on the 'choose' stacks: {chosen}; core.uncertainty.DEFAULT_METHODS = {DEFAULT_METHODS}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
