"""A montage in the GUI: open it, browse it, and correct it a region at a time, timing each
step and the longest stall of the window.

    xvfb-run -a python benchmarks/montage_gui.py [--size 40000] [--slices 3] [--work DIR]
                                                 [--steps 40] [--no-loop]

Builds a (slices, size, size) uint8 EM stack as an uncompressed tif (ISBI slices and their
mirror images; 4.8 GB for 3 x 40,000²) unless ``--work`` holds it already, opens napari with
the napari-unet widgets, and with a 20 ms heartbeat timer running: Load it, let napari
draw it, step to the next slice, zoom in to full resolution. Then the correction loop,
as a user clicks it with the built-in EM model: Predict the region in view (the slice's
levels are measured once), paint strokes on it, autosave, Fine-tune on it (``--steps``),
pan to the next region and Predict again. Prints each step's time, the longest gap
between heartbeat ticks in it (the first Load of a session also imports dask), and the
process's peak memory. Saves the window as ``montage_gui.png`` (browsing) and
``montage_loop.png`` (after the loop) in the work folder.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tifffile
from _common import isbi, table
from montage import write_montage


def build_stack(path: Path, size: int, slices: int) -> None:
    single = path.with_name(f"slice_{size}.tif")
    if not single.exists():
        write_montage(single, isbi().images[:4, :, :, 0], size)
    source = tifffile.memmap(single, mode="r")
    out = tifffile.memmap(path, shape=(slices, size, size), dtype=np.uint8, photometric="minisblack", bigtiff=True)
    for z in range(slices):
        for y in range(0, size, 4096):
            out[z, y : y + 4096] = source[y : y + 4096] if z % 2 == 0 else source[y : y + 4096, ::-1]
    out.flush()
    del out, source


def correction_loop(viewer, widgets, image, args, settle, ticks, app, work: Path) -> list[dict]:
    """Predict the region in view, paint, autosave, fine-tune, pan and predict again; a row each."""
    from napari_unet._widgets._session import get_session

    def run(job, step: str) -> dict:
        if job is None:
            raise SystemExit(f"{step}: refused")
        ticks.clear()
        start = time.perf_counter()
        while job.running:
            app.processEvents()
            time.sleep(0.005)
        seconds = time.perf_counter() - start
        stall = max(float(np.diff(ticks).max()) if len(ticks) > 1 else seconds, settle(1.0))
        return {"step": step, "seconds": seconds, "longest_stall_s": stall}

    rows = []
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    predict, finetune = widgets["Predict"], widgets["Fine-tune"]
    predict.image.value = image
    predict.model.value = "em-membranes"
    rows.append(run(predict.predict(), "Predict the region in view (slice levels measured once)"))
    print(predict.status.value)
    region = viewer.layers.selection.active
    ticks.clear()
    start = time.perf_counter()
    region.brush_size = 8
    prefix = (0,) * (region.data.ndim - 2)  # a region of a stack's slice is a (1, Y, X) layer
    for k in range(10):  # ten strokes of 12 dabs, as a user paints a missed membrane
        for d in range(0, 36, 3):
            region.paint((*prefix, 200 + 150 * k + d, 300 + d), 1)
            app.processEvents()
    rows.append({"step": "paint 10 strokes", "seconds": time.perf_counter() - start,
                 "longest_stall_s": max(float(np.diff(ticks).max()) if len(ticks) > 1 else 0, settle(0.5))})
    session = get_session(viewer)
    ticks.clear()
    start = time.perf_counter()
    session._autosave_quietly()  # as the 60 s timer does: in a thread
    while session.autosave_thread.is_alive():
        app.processEvents()
        time.sleep(0.005)
    rows.append({"step": "autosave (its thread)", "seconds": time.perf_counter() - start,
                 "longest_stall_s": max(float(np.diff(ticks).max()) if len(ticks) > 1 else 0, settle(0.5))})
    finetune.image.value = image
    finetune.corrected_labels.value = region
    finetune.steps.value = args.steps
    rows.append(run(finetune.start(), f"Fine-tune on the corrected chunks ({args.steps} steps)"))
    print(finetune.status.value)
    center = list(camera.center)
    center[-1] += 2048
    camera.center = tuple(center)
    rows.append(run(predict.predict(), "pan, Predict the next region"))
    viewer.screenshot(str(work / "montage_loop.png"), canvas_only=False)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=40000)
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--work", default="/tmp/napari-unet-montage")
    parser.add_argument("--steps", type=int, default=40, help="fine-tune steps (the widget's default: 40)")
    parser.add_argument("--no-loop", action="store_true", help="open and browse only")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"stack{args.slices}_{args.size}.tif"
    if not path.exists():
        build_stack(path, args.size, args.slices)
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_unet._launch import open_viewer

    viewer, widgets = open_viewer(sample=None, show=True)
    viewer.window._qt_window.resize(1500, 950)
    app = QApplication.instance()
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()

    def settle(seconds: float) -> float:
        """Process events for ``seconds``; the longest gap between heartbeat ticks in them."""
        ticks.clear()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.005)
        return float(np.diff(ticks).max()) if len(ticks) > 1 else seconds

    settle(1.0)
    rows = []
    start = time.perf_counter()
    widgets["Load"].path.value = str(path)
    layers = widgets["Load"].load()
    load_seconds = time.perf_counter() - start
    rows.append({"step": "Load, first in the session", "seconds": load_seconds, "longest_stall_s": load_seconds})
    rows.append({"step": "napari draws it", "seconds": 5.0, "longest_stall_s": settle(5.0)})
    viewer.dims.set_current_step(0, 1)
    rows.append({"step": "next slice", "seconds": 5.0, "longest_stall_s": settle(5.0)})
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.zoom = 1.0  # one screen pixel per image pixel: the finest level
    camera.center = (0, args.size / 2, args.size / 2)
    rows.append({"step": "zoom to full resolution", "seconds": 5.0, "longest_stall_s": settle(5.0)})
    viewer.screenshot(str(work / "montage_gui.png"), canvas_only=False)
    # Once napari and dask are imported (the first Load imports them): Load it again.
    start = time.perf_counter()
    widgets["Load"].load()
    again = time.perf_counter() - start
    rows.append({"step": "Load again", "seconds": again, "longest_stall_s": max(again, settle(3.0))})
    image = layers[0]
    if not args.no_loop:
        rows += correction_loop(viewer, widgets, image, args, settle, ticks, app, work)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
    print(f"{path.name}: {args.slices} x {args.size}² uint8, display levels; "
          f"layer multiscale={image.multiscale} with {len(image.data) if image.multiscale else 1} level(s); "
          f"status: {widgets['Load'].status.value}")
    print(table(rows, ["step", "seconds", "longest_stall_s"]))
    print(f"peak memory (VmHWM): {peak:.0f} MB; window saved as {work / 'montage_gui.png'}")
    viewer.close()


if __name__ == "__main__":
    main()
