"""`napari-unet gui`: napari with the napari-unet widgets docked and a sample (or your data) loaded."""

from __future__ import annotations

import argparse

from ._common import PathLike, UsageError, check_output

SAMPLES = ("em", "fundus", "none")


def add_arguments(g: argparse.ArgumentParser) -> None:
    g.add_argument("data", nargs="?", help="image, stack or folder to open instead of a sample")
    g.add_argument("--sample", choices=SAMPLES, default="em", help="sample to load (default em)")
    g.add_argument("--screenshot", help="smoke mode: predict, save a PNG of the whole window to this path, exit")
    g.add_argument("--no-predict", action="store_true", help="with --screenshot: do not predict first")


def run(args: argparse.Namespace) -> int:
    return gui(args.data, sample=args.sample, screenshot=args.screenshot, predict=not args.no_predict)


def gui(data: PathLike | None = None, *, sample: str = "em", screenshot: PathLike | None = None,
        predict: bool = True) -> int:
    """Open napari with the widgets; with ``screenshot``, predict, save the window there and close.

    Args:
        data: an image, stack or folder to open instead of a sample.
        sample: "em", "fundus" or "none".
        screenshot: a PNG path (smoke mode); replaced if it exists.
        predict: with ``screenshot``, predict first.

    Returns:
        The exit code of the napari session.
    """
    from .._launch import run as launch

    if sample not in SAMPLES:
        raise UsageError(f"--sample {sample}: choose em, fundus or none.")
    if screenshot:
        check_output(screenshot, True, (), {"the image to open": data}, "--screenshot")
    return launch(None if data is None else str(data), None if sample == "none" else sample,
                  None if screenshot is None else str(screenshot), predict=predict)
