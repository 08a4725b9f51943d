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
process's peak resident memory in each step. Saves the window as ``montage_gui.png`` (browsing) and
``montage_loop.png`` (after the loop) in the work folder.
"""

from __future__ import annotations

import argparse
import threading
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


def truth_region(z: int, region, size: int) -> np.ndarray:
    """(h, w) ISBI labels of a region of slice z of the stack `build_stack` writes (the
    slices `montage.write_montage` tiles, every other one mirrored left to right)."""
    labels = isbi().labels[:4]
    side = labels.shape[1]
    tiles = np.stack([labels[0], labels[1][:, ::-1], labels[2][::-1], labels[3][::-1, ::-1]])
    y0, y1, x0, x1 = region
    ys, xs = np.arange(y0, y1), np.arange(x0, x1)
    if z % 2:
        xs = size - 1 - xs
    which = (ys[:, None] // side + xs[None, :] // side) % 4
    return tiles[which, (ys % side)[:, None], (xs % side)[None, :]]


def region_dice(layer, size: int) -> float:
    """Dice of a region layer's mask against the ground truth of its region."""
    from napari_unet._widgets._montage import region_of
    from napari_unet.core.metrics import dice

    truth = truth_region(*region_of(layer), size)
    return float(dice(np.asarray(layer.data).reshape(truth.shape) == 1, truth == 1))


class ResidentPeak:
    """Samples the process's memory every 20 ms in a thread; `take` returns the peaks (MB)
    since the previous call, so each step of the table gets its own: resident (VmRSS, which
    counts the pages of the tif mapped while a region is read) and private (RssAnon)."""

    def __init__(self) -> None:
        self.peaks = {"VmRSS": 0.0, "RssAnon": 0.0}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            with open("/proc/self/status") as status:
                for line in status:
                    key = line.split(":")[0]
                    if key in self.peaks:
                        self.peaks[key] = max(self.peaks[key], int(line.split()[1]) / 1024)
            time.sleep(0.02)

    def take(self) -> dict:
        peaks, self.peaks = self.peaks, {"VmRSS": 0.0, "RssAnon": 0.0}
        return {"peak_rss_mb": peaks["VmRSS"], "peak_private_mb": peaks["RssAnon"]}


MEMORY = ResidentPeak()


def longest_gap(ticks: list[float]) -> float:
    return float(np.diff(ticks).max()) if len(ticks) > 1 else 0.0


def row(step: str, seconds: float, stall: float) -> dict:
    return {"step": step, "seconds": seconds, "longest_stall_s": stall, **MEMORY.take()}


def correction_loop(viewer, widgets, image, args, settle, ticks, app, work: Path) -> list[dict]:
    """Predict the region in view, paint, autosave, fine-tune, pan and predict again; a row each."""
    from napari_unet._widgets._montage import region_of
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
        stall = max(longest_gap(ticks) if len(ticks) > 1 else seconds, settle(1.0))
        return row(step, seconds, stall)

    rows = []
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    predict, finetune = widgets["Predict"], widgets["Fine-tune"]
    session = get_session(viewer)
    session.autosave_timer.stop()  # each save below is timed on its own
    predict.image.value = image
    predict.model.value = "em-membranes"
    rows.append(run(predict.predict(), "Predict the region in view (slice levels measured once)"))
    print(predict.status.value)
    corrected = viewer.layers.selection.active
    center = list(camera.center)
    camera.center = (*center[:-1], center[-1] + 2048)  # the next region to the right, left uncorrected
    rows.append(run(predict.predict(), "pan, Predict the next region"))
    unseen = viewer.layers.selection.active
    before = region_dice(unseen, args.size)

    ticks.clear()
    start = time.perf_counter()
    corrected.brush_size = 8
    prefix = (0,) * (corrected.data.ndim - 2)  # a region of a stack's slice is a (1, Y, X) layer
    for k in range(10):  # ten strokes of 12 dabs (then undone), as a user paints a missed membrane
        for d in range(0, 36, 3):
            corrected.paint((*prefix, 200 + 150 * k + d, 300 + d), 1)
            app.processEvents()
    rows.append(row("paint 10 strokes", time.perf_counter() - start, max(longest_gap(ticks), settle(0.5))))
    for _ in range(10):
        corrected.undo()
    # The correction: the region's ground truth, written as the user's edits (as rounds.py does).
    truth = truth_region(*region_of(corrected), args.size)
    now = np.asarray(corrected.data).reshape(truth.shape)
    rows_, cols_ = np.nonzero(now != truth)
    corrected.data_setitem((*(np.zeros_like(rows_),) * len(prefix), rows_, cols_), truth[rows_, cols_])
    for step, strokes in (("autosave, first (the region's 16 chunks)", 0), ("autosave after one stroke", 1)):
        for d in range(0, 12 * strokes, 3):
            corrected.paint((*prefix, 1000 + d, 1000), int(truth[1000 + d, 1000]))
        ticks.clear()
        start = time.perf_counter()
        session._autosave_quietly()  # as the 60 s timer does: in a thread
        while session.autosave_thread.is_alive():
            app.processEvents()
            time.sleep(0.005)
        rows.append(row(step, time.perf_counter() - start, max(longest_gap(ticks), settle(0.5))))
    finetune.image.value = image
    finetune.corrected_labels.value = corrected
    finetune.steps.value = args.steps
    rows.append(run(finetune.start(), f"Fine-tune on the corrected chunks ({args.steps} steps)"))
    print(finetune.status.value)
    rows.append(run(predict.predict(), "Predict the next region again"))
    after = region_dice(unseen, args.size)
    print(f"Dice of the uncorrected next region against its ground truth: {before:.4f} before the fine-tune, "
          f"{after:.4f} after")
    viewer.screenshot(str(work / "montage_loop.png"), canvas_only=False)
    # Baseline: what napari alone takes to add a Labels layer of a region's size (GUI thread).
    settle(0.5)
    start = time.perf_counter()
    reference = viewer.add_labels(np.zeros(corrected.data.shape, np.uint8), name="reference")
    app.processEvents()
    rows.append(row("napari adds a Labels layer of a region's size (reference)", time.perf_counter() - start,
                    time.perf_counter() - start))
    viewer.layers.remove(reference)
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
    rows.append(row("Load, first in the session", load_seconds, load_seconds))
    rows.append(row("napari draws it", 5.0, settle(5.0)))
    viewer.dims.set_current_step(0, 1)
    rows.append(row("next slice", 5.0, settle(5.0)))
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.zoom = 1.0  # one screen pixel per image pixel: the finest level
    camera.center = (0, args.size / 2, args.size / 2)
    rows.append(row("zoom to full resolution", 5.0, settle(5.0)))
    viewer.screenshot(str(work / "montage_gui.png"), canvas_only=False)
    # Once napari and dask are imported (the first Load imports them): Load it again.
    start = time.perf_counter()
    widgets["Load"].load()
    again = time.perf_counter() - start
    rows.append(row("Load again", again, max(again, settle(3.0))))
    image = layers[0]
    if not args.no_loop:
        rows += correction_loop(viewer, widgets, image, args, settle, ticks, app, work)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
    print(f"{path.name}: {args.slices} x {args.size}² uint8, display levels; "
          f"layer multiscale={image.multiscale} with {len(image.data) if image.multiscale else 1} level(s); "
          f"status: {widgets['Load'].status.value}")
    print(table(rows, ["step", "seconds", "longest_stall_s", "peak_rss_mb", "peak_private_mb"]))
    print(f"peak memory (VmHWM): {peak:.0f} MB; window saved as {work / 'montage_gui.png'}")
    viewer.close()


if __name__ == "__main__":
    main()
