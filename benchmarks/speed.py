"""Prediction speed: the built-in models, the pipeline's throughput, the CLI, the GUI.

    python benchmarks/speed.py [--device auto] [--repeats 5] [--slices 8] [--compile] [--gui]

1. Median wall time to predict one 512x512 ISBI slice and one 584x565 DRIVE image with
   each model's own tile settings, and the ratio to the classic U-Net (64 wide, depth 4)
   predicted by the same pipeline with 512-pixel tiles.
2. One forward pass of a 576x576 one-channel tile by U-Net width (depth 4), the speed
   side of the model cards' width trade-off.
3. Throughput in slices/s on ``--slices`` 512x512 ISBI slices, against the classic
   per-slice loop of U-Net tutorials timed in the same run (64 wide, float32, batch 1,
   autograd left on, one whole slice per forward): the pipeline (`core.pipeline.Pipeline`: tiles
   of several slices per batch, blended on the device, weights cast once, bfloat16 or
   float16 on GPUs) with the same 64-wide U-Net and with the built-in EM model; with
   ``--compile`` also under `torch.compile`.
4. The whole ``napari-unet predict`` process (start-up included) on 6 ISBI slices with
   the built-in EM model: wall time, peak memory, ratio against the classic loop on the
   same 6 slices.
5. With ``--gui`` (needs a display, e.g. ``xvfb-run -a``): time from Predict to the first
   slice on screen for a 12-slice zarr volume streamed by the Predict widget.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import CLI_RUN, ROOT, drive, isbi, table

from napari_unet.core.checkpoint import Checkpoint, default_metadata, load_checkpoint
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.pipeline import Pipeline, predict
from napari_unet.core.predict import TilePredictor, describe_device, inference_dtype, resolve_device
from napari_unet.core.settings import PredictSettings


def median_seconds(run, device, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, after one warm-up call."""
    run()  # warm-up (allocations, kernels)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def baseline(channels: int, task: str, tile: int = 512) -> Checkpoint:
    model = UNet(UNetConfig(in_channels=channels, base_width=64, depth=4)).eval()
    return Checkpoint(model, default_metadata(task, tile_size=tile), "classic 64-wide U-Net")


def forward_seconds(width: int, device, repeats: int) -> float:
    model = UNet(UNetConfig(in_channels=1, base_width=width, depth=4)).to(device).eval()
    tile = torch.rand(1, 1, 576, 576, device=device)

    def forward() -> None:
        with torch.no_grad():
            model(tile)

    return median_seconds(forward, device, repeats)


def classic_loop(model: torch.nn.Module, slices: np.ndarray, device) -> float:
    """Seconds for the per-slice loop of U-Net tutorials: one whole slice per forward,
    batch 1, float32, autograd left on, each result copied back before the next slice."""
    model = model.to(device).eval()
    start = time.perf_counter()
    for plane in slices:
        x = torch.from_numpy(plane.astype(np.float32) / 255.0)[None, None].to(device)
        torch.sigmoid(model(x)).detach().cpu().numpy()
    return time.perf_counter() - start


def pipeline_seconds(checkpoint: Checkpoint, slices: np.ndarray, device, compile_model: bool = False) -> float:
    """Seconds for `Pipeline.run` on the slices (after one warm-up slice)."""
    pipeline = Pipeline(checkpoint, PredictSettings(device=device))
    if compile_model:
        pipeline.predictor = TilePredictor(checkpoint.model, device, compile=True)
    images = slices[..., None]
    pipeline.run(images[:1])  # warm-up: kernels, cudnn.benchmark, compile
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    pipeline.run(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def throughput(slices: np.ndarray, device, compile_model: bool) -> list[dict]:
    """Table 3: slices/s, each as a ratio to the classic loop."""
    torch.manual_seed(0)
    classic = baseline(1, "em", tile=640)  # one tile: a 512² slice and its 64-pixel mirror margin
    classic.metadata["tile_margin"] = 64
    classic_loop(classic.model, slices[:1], device)  # warm-up
    loop = classic_loop(classic.model, slices, device)
    dtype = str(inference_dtype(device)).replace("torch.", "")
    cases = [("classic loop, 64-wide", None, False), (f"pipeline, 64-wide, {dtype}", classic, False),
             (f"pipeline, em-membranes, {dtype}", load_checkpoint("em-membranes"), False)]
    if compile_model:
        cases.append((f"pipeline, 64-wide, {dtype}, torch.compile", classic, True))
    rows = []
    for name, checkpoint, compiled in cases:
        seconds = loop if checkpoint is None else pipeline_seconds(checkpoint, slices, device, compiled)
        rows.append({"run": name, "slices": len(slices), "seconds": seconds, "slices_per_s": len(slices) / seconds,
                     "x_classic_loop": loop / seconds})
    return rows


def cli_process(slices: np.ndarray, device, folder: Path) -> dict:
    """Table 4: the whole CLI process (start-up, reading, predicting, writing) on the slices."""
    import tifffile

    tifffile.imwrite(folder / "six.tif", slices, photometric="minisblack")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CLI_RUN, "predict", str(folder / "six.tif"), "--model",
                             "em-membranes", "--out", str(folder / "mask.tif"), "--device", str(device)],
                            capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"napari-unet predict failed:\n{result.stderr[-2000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    torch.manual_seed(0)
    loop = classic_loop(baseline(1, "em").model, slices, device)
    return {"run": "napari-unet predict (whole process)", "slices": len(slices), "seconds": seconds,
            "peak_mb": measured["peak_mb"], "classic_loop_s": loop, "x_classic_loop": loop / seconds}


def first_slice_on_screen(slices: np.ndarray, folder: Path) -> dict:
    """Table 5: Predict on a lazily opened zarr volume, until its first slice is shown."""
    import napari
    import zarr
    from qtpy.QtWidgets import QApplication

    store = zarr.open_array(str(folder / "volume.zarr"), mode="w", shape=slices.shape, chunks=(1, 512, 512),
                            dtype=slices.dtype)
    store[:] = slices
    viewer = napari.Viewer()
    image = viewer.open(str(folder / "volume.zarr"), plugin="napari-unet")[0]
    widget = viewer.window.add_plugin_dock_widget("napari-unet", "Predict")[1]
    widget.image.value = image
    start = time.perf_counter()
    job = widget.predict()
    labels = viewer.layers[f"{image.name} prediction"]
    first = None
    while job.running:
        QApplication.processEvents()
        if first is None and job.state.done and not job.state.events and np.asarray(labels.data[0]).any():
            first = time.perf_counter() - start  # written, and the poll that refreshes the layer has run
        time.sleep(0.01)
    total = time.perf_counter() - start
    viewer.close()
    return {"run": "Predict widget, zarr volume", "slices": len(slices), "first_slice_on_screen_s": first,
            "all_slices_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=8, help="ISBI slices for the throughput table")
    parser.add_argument("--compile", action="store_true", help="also time the pipeline under torch.compile")
    parser.add_argument("--gui", action="store_true", help="also time the first slice on screen in napari")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device: {describe_device(device)}\n")
    cases = [("em-membranes", isbi().images[25:26], "em", 1.0),
             ("fundus-vessels", drive("test").images[0:1], "fundus", 1.5)]
    rows = []
    for name, image, task, target in cases:
        base_model, our_model = baseline(image.shape[-1], task), load_checkpoint(name)
        base = median_seconds(lambda m=base_model, i=image: predict(m, i, device=device), device, args.repeats)
        ours = median_seconds(lambda m=our_model, i=image: predict(m, i, device=device), device, args.repeats)
        rows.append({"model": name, "image": "x".join(map(str, image.shape[1:3])), "seconds": ours,
                     "baseline_seconds": base, "ratio": ours / base, "target_s": target,
                     "meets": "yes" if ours <= target or device.type != "cpu" else "NO"})
    print(table(rows, ["model", "image", "seconds", "baseline_seconds", "ratio", "target_s", "meets"]))
    widths = [{"width": w, "forward_576_s": forward_seconds(w, device, args.repeats)} for w in (16, 24, 32, 64)]
    print()
    print(table(widths, ["width", "forward_576_s"]))
    volume = isbi().images[:, :, :, 0]
    slices = np.concatenate([volume] * (1 + args.slices // len(volume)))[: args.slices]
    print()
    print(table(throughput(slices, device, args.compile), ["run", "slices", "seconds", "slices_per_s",
                                                            "x_classic_loop"]))
    with tempfile.TemporaryDirectory() as folder:
        print()
        print(table([cli_process(volume[:6], device, Path(folder))],
                    ["run", "slices", "seconds", "peak_mb", "classic_loop_s", "x_classic_loop"]))
        if args.gui:
            print()
            print(table([first_slice_on_screen(volume[:12], Path(folder))],
                        ["run", "slices", "first_slice_on_screen_s", "all_slices_s"]))


if __name__ == "__main__":
    main()
