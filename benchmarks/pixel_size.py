"""Where resampling to the model's pixel size helps the EM model, and where it costs.

    python benchmarks/pixel_size.py [--device auto] [--step 0.05] [--plot docs/pixel_size_band.png]

For each ratio r = 0.60, 0.65, ..., 1.60, ISBI slices (4 nm pixels) are rescaled by 1/r
as if imaged at r x 4 nm (anti-aliased when shrunk; labels linearly and thresholded at
0.5). The built-in model (trained at 4 nm, `pixel_size_nm` in its metadata) predicts
them (a) as they are (no pixel size given) and (b) resampled to 4 nm and back
(`predict_resampled`, which always resamples, even inside the band where the
pipeline would not: `RESAMPLE_SKIP`). Scores: membrane Dice at the model's threshold and V_Rand
(thinned, best threshold), pooled over the slices of each split.

Two splits: the model's validation slices 22-24 CHOOSE the band [lo, hi] around r = 1
where resampling does not pay (its Dice gain, smoothed over neighbouring ratios, <= 0);
the held-out slices 25-29 (never seen in training nor in any choice) only check it.
Prints a table per split and the band, and saves a plot (Pillow).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import ISBI_VAL, ROOT, isbi, table
from skimage.transform import rescale

from napari_unet.core.cell_scores import em_challenge_scores
from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.metrics import dice
from napari_unet.core.pipeline import RESAMPLE_SKIP, Pipeline
from napari_unet.core.settings import PredictSettings

SPLITS = {"validation 22-24": [22, 23, 24], "held-out 25-29": ISBI_VAL}
CHOOSE_ON = "validation 22-24"
COLUMNS = ["r", "pixel (nm)", "side", "dice as-is", "dice resampled", "gain", "vrand as-is", "vrand resampled"]


def predict_as_is(checkpoint, images: np.ndarray, device: str = "auto") -> np.ndarray:
    """The slices as they are (no pixel size given)."""
    return Pipeline(checkpoint, PredictSettings(device=device)).probabilities(images)


def predict_resampled(checkpoint, images: np.ndarray, pixel_size: float, device: str = "auto") -> np.ndarray:
    """Resample to the model's pixel size, predict, resample back: always, whatever the
    ratio (the pipeline's skip band bypassed: the ratio is given as the zoom)."""
    zoom = pixel_size / checkpoint.info.pixel_size_nm[0]
    return Pipeline(checkpoint, PredictSettings(device=device), zoom=zoom).probabilities(images)


def simulate(data, slices: list[int], ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """ISBI slices as if imaged at ratio x 4 nm: images and membrane labels rescaled by 1 / ratio."""
    zoom = 1.0 / ratio
    images = np.stack([rescale(data.images[z][..., 0].astype(np.float32), zoom, order=1, anti_aliasing=zoom < 1)
                       for z in slices])[..., None]
    truth = np.stack([rescale((data.labels[z] == 1).astype(np.float32), zoom, order=1) > 0.5 for z in slices])
    return images, truth


def smoothed(ratios: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Mean over each ratio and its two neighbours (one at the ends).

    At r = 1 exactly the resampling is the identity, so its gain (0) says nothing about
    what resampling costs: it counts as the mean of its neighbours.
    """
    values = np.asarray(gains, float).copy()
    for i in np.flatnonzero(np.abs(ratios - 1.0) < 1e-9):
        values[i] = values[max(0, i - 1): i + 2][np.arange(max(0, i - 1), min(len(values), i + 2)) != i].mean()
    return np.array([values[max(0, i - 1): i + 2].mean() for i in range(len(values))])


def choose_band(ratios: np.ndarray, gains: np.ndarray) -> tuple[float, float] | None:
    """The widest run of consecutive ratios containing r = 1 whose smoothed Dice gain is <= 0.

    One run (no holes): it stops at the first ratio on each side where resampling pays.
    """
    smooth = smoothed(ratios, gains)
    centre = int(np.argmin(np.abs(ratios - 1.0)))
    if smooth[centre] > 0:
        return None
    lo = hi = centre
    while lo > 0 and smooth[lo - 1] <= 0:
        lo -= 1
    while hi < len(ratios) - 1 and smooth[hi + 1] <= 0:
        hi += 1
    return float(ratios[lo]), float(ratios[hi])


def plot(results: dict, band: tuple[float, float] | None, path: Path) -> None:
    """Three panels (Dice gain, Dice, V_Rand against r), drawn with Pillow (a dependency of
    the project; matplotlib is not). Validation in strong colours, held-out in pale ones."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    strong = {"as-is": (214, 39, 40), "resampled": (31, 119, 180), "gain": (30, 30, 30)}
    pale = {"as-is": (240, 160, 160), "resampled": (150, 190, 225), "gain": (160, 160, 160)}
    splits = list(results)
    panels = [("Dice gain of resampling (resampled - as is)", [("gain", "gain")], 0.01),
              ("membrane Dice (model's threshold)", [("dice as-is", "as-is"), ("dice resampled", "resampled")], 0.02),
              ("V_Rand (thinned, best threshold)", [("vrand as-is", "as-is"), ("vrand resampled", "resampled")], 0.01)]
    width, height = 470, 400
    left, right, top, bottom = 60, width - 15, 30, height - 95
    out = Image.new("RGB", (width * len(panels), height), "white")
    for k, (title, series, tick) in enumerate(panels):
        img = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(img)
        ratios = [row["r"] for row in results[splits[0]]]
        values = [row[key] for rows in results.values() for row in rows for key, _ in series]
        x0, x1 = min(ratios) - 0.02, max(ratios) + 0.02
        y0, y1 = np.floor(min(values + [0.0] * (k == 0)) / tick) * tick, np.ceil(max(values) / tick) * tick

        def xy(r: float, v: float, x0=x0, x1=x1, y0=y0, y1=y1) -> tuple[float, float]:
            return left + (r - x0) / (x1 - x0) * (right - left), bottom - (v - y0) / (y1 - y0) * (bottom - top)

        if band:
            draw.rectangle([xy(band[0] - 0.025, y1), xy(band[1] + 0.025, y0)], fill=(228, 228, 228))
        for v in np.arange(y0, y1 + tick / 2, tick):
            draw.line([xy(x0, v), xy(x1, v)], fill=(0, 0, 0) if k == 0 and abs(v) < 1e-9 else (238, 238, 238))
            draw.text((5, xy(x0, v)[1] - 7), f"{v:+.2f}" if k == 0 else f"{v:.2f}", fill="black", font=font)
        for r in np.arange(0.6, max(ratios) + 0.01, 0.2):
            draw.line([xy(r, y0), xy(r, y1)], fill=(238, 238, 238))
            draw.text((xy(r, y0)[0] - 10, bottom + 4), f"{r:.1f}", fill="black", font=font)
        draw.rectangle([left, top, right, bottom], outline="black")
        draw.text((left, 8), title, fill="black", font=font)
        draw.text((left + 60, bottom + 22), "r = data pixel size / 4 nm", fill="black", font=font)
        for split in reversed(splits):  # validation on top
            colours = strong if split == CHOOSE_ON else pale
            for key, kind in series:
                points = [xy(row["r"], row[key]) for row in results[split]]
                draw.line(points, fill=colours[kind], width=2)
                for x, y in points:
                    draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colours[kind])
            if k == 0 and split == CHOOSE_ON:  # the smoothed gain that chose the band
                points = [xy(row["r"], row["gain (smoothed)"]) for row in results[split]]
                for a, b in zip(points, points[1:]):
                    draw.line([a, b], fill=(230, 140, 0), width=3)
        legend = [(f"{name}, {split}", (strong if split == CHOOSE_ON else pale)[kind])
                  for split in splits for _, kind in series for name in [{"gain": "gain", "as-is": "as is",
                                                                         "resampled": "resampled to 4 nm"}[kind]]]
        if k == 0:
            legend.append((f"gain smoothed (3 ratios), {CHOOSE_ON}", (230, 140, 0)))
            if band:
                legend.append((f"band not resampled: r {band[0]:.2f}-{band[1]:.2f}", (200, 200, 200)))
        for i, (label, colour) in enumerate(legend):
            y = bottom + 42 + 13 * (i % 3)
            x = left + (i // 3) * 200 - 40
            draw.line([(x, y + 7), (x + 16, y + 7)], fill=colour, width=3)
            draw.text((x + 20, y), label, fill="black", font=ImageFont.load_default(size=11))
        out.paste(img, (k * width, 0))
    out.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--lo", type=float, default=0.6)
    parser.add_argument("--hi", type=float, default=1.6)
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "pixel_size_band.png")
    parser.add_argument("--json", type=Path, help="also save the rows here")
    parser.add_argument("--replot", type=Path, help="no prediction: choose the band and plot from a --json file")
    args = parser.parse_args()
    if args.replot:
        results = json.loads(args.replot.read_text())["results"]
        report(results, 4.0, args)
        return
    start = time.perf_counter()
    model = load_checkpoint("em-membranes")
    trained_nm = float(model.metadata["pixel_size_nm"][0])
    threshold = model.metadata["threshold"]
    data = isbi()
    ratios = np.round(np.arange(args.lo, args.hi + args.step / 2, args.step), 3)
    results: dict[str, list[dict]] = {split: [] for split in SPLITS}
    everything = [z for slices in SPLITS.values() for z in slices]
    for r in ratios:
        pixel_nm = float(r * trained_nm)
        images, truth = simulate(data, everything, r)
        as_is = predict_as_is(model, images, device=args.device)
        again = predict_resampled(model, images, pixel_nm, device=args.device)
        at = 0
        for split, slices in SPLITS.items():
            part = slice(at, at + len(slices))
            at += len(slices)
            row = {"r": float(r), "pixel (nm)": round(pixel_nm, 2), "side": images.shape[1],
                   "dice as-is": dice(as_is[part] > threshold, truth[part]),
                   "dice resampled": dice(again[part] > threshold, truth[part]),
                   "vrand as-is": em_challenge_scores(as_is[part], truth[part])["vrand"],
                   "vrand resampled": em_challenge_scores(again[part], truth[part])["vrand"]}
            row["gain"] = row["dice resampled"] - row["dice as-is"]
            results[split].append(row)
        print(f"r={r:.2f} ({time.perf_counter() - start:.0f} s) " + "  ".join(
            f"{split}: gain {rows[-1]['gain']:+.4f}" for split, rows in results.items()), flush=True)
    report(results, trained_nm, args, start)


def report(results: dict[str, list[dict]], trained_nm: float, args, start: float | None = None) -> None:
    """Tables, the band (chosen on the validation slices) and the plot."""
    ratios = np.array([row["r"] for row in results[CHOOSE_ON]])
    gains = {split: np.array([row["gain"] for row in rows]) for split, rows in results.items()}
    for split, rows in results.items():
        for row, smooth in zip(rows, smoothed(ratios, gains[split])):
            row["gain (smoothed)"] = smooth
        print(f"\nISBI slices {split}{' (chooses the band)' if split == CHOOSE_ON else ' (check only)'}")
        print(table(rows, COLUMNS + ["gain (smoothed)"]))
    band = choose_band(ratios, gains[CHOOSE_ON])
    if band is None:
        print(f"\nNo band: resampling pays even next to r = 1 on {CHOOSE_ON}.")
    else:
        print(f"\nBand chosen on {CHOOSE_ON}: r in [{band[0]:.2f}, {band[1]:.2f}] "
              f"({band[0] * trained_nm:.2f}-{band[1] * trained_nm:.2f} nm for a {trained_nm:g} nm model): "
              "there resampling's Dice gain (smoothed over neighbouring ratios) is <= 0. "
              f"core.pipeline.RESAMPLE_SKIP is {RESAMPLE_SKIP}.")
        check = choose_band(ratios, gains["held-out 25-29"])
        print(f"The same rule on held-out 25-29 (a check, not a choice) gives {check}.")
        inside = [row for row in results["held-out 25-29"] if band[0] <= row["r"] <= band[1]]
        print("Held-out Dice given up by skipping inside the band: at most "
              f"{max(row['gain'] for row in inside):+.4f} (r = {max(inside, key=lambda row: row['gain'])['r']:.2f}).")
    if args.json:
        args.json.write_text(json.dumps({"band": band, "results": results}, indent=1))
    plot(results, band, args.plot)
    took = "" if start is None else f" Wall time {time.perf_counter() - start:.0f} s."
    print(f"Plot: {args.plot}.{took}")

if __name__ == "__main__":
    main()
