"""What a pixel-size mismatch costs the EM model, with and without resampling.

    python benchmarks/pixel_size.py [--device auto]

ISBI slices 25-29 (4 nm pixels, never trained on) are resampled as if imaged at other
pixel sizes (2.67 nm = x1.5 finer, 6 nm = x1.5 coarser); labels likewise. The built-in
model (trained at 4 nm, `pixel_size_nm` in its metadata) predicts them as they are, and
with `predict_stack(..., pixel_size=...)`, which resamples to 4 nm and back. Scores:
membrane Dice at the model's threshold and V_Rand (thinned, best threshold).
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import ISBI_VAL, isbi, table
from skimage.transform import rescale

from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.metrics import dice, em_challenge_scores
from napari_unet.core.predict import predict_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    model = load_checkpoint("em-membranes")
    data = isbi()
    rows = []
    for pixel_nm in (4.0, 4.0 / 1.5, 6.0):
        zoom = 4.0 / pixel_nm
        images = np.stack([rescale(img[..., 0].astype(np.float32), zoom, order=1, anti_aliasing=zoom < 1)
                           for img in data.images[ISBI_VAL]])[..., None]
        truth = np.stack([rescale((lbl == 1).astype(np.float32), zoom, order=1) > 0.5 for lbl in data.labels[ISBI_VAL]])
        for resample in (False, True):
            if pixel_nm == 4.0 and resample:
                continue
            prob = predict_stack(model, images, device=args.device, pixel_size=pixel_nm if resample else None)
            rows.append({"pixel size (nm)": round(pixel_nm, 2), "image side": images.shape[1],
                         "resampled to 4 nm": "yes" if resample else "no",
                         "dice": dice(prob > model.metadata["threshold"], truth),
                         "vrand": em_challenge_scores(prob, truth)["vrand"]})
            print(rows[-1], flush=True)
    print(table(rows, ["pixel size (nm)", "image side", "resampled to 4 nm", "dice", "vrand"]))


if __name__ == "__main__":
    main()
