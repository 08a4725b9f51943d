"""Opening a montage in the GUI: how long Load takes and the longest stall while napari shows it.

    xvfb-run -a python benchmarks/montage_gui.py [--size 40000] [--slices 3] [--work DIR]

Builds a (slices, size, size) uint8 EM stack as an uncompressed tif (ISBI slices and their
mirror images; 4.8 GB for 3 x 40,000²) unless ``--work`` holds it already, opens napari with
the napari-unet widgets, and with a 20 ms heartbeat timer running: Load it, let napari
draw it, step to the next slice, zoom in to full resolution. Prints how long Load took on
the GUI thread (the first Load of a session also imports dask), the longest gap between
heartbeat ticks in each step, and the process's peak memory. Saves the window as
``montage_gui.png`` in the work folder.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=40000)
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--work", default="/tmp/napari-unet-montage")
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
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
    image = layers[0]
    print(f"{path.name}: {args.slices} x {args.size}² uint8, display levels; "
          f"layer multiscale={image.multiscale} with {len(image.data) if image.multiscale else 1} level(s); "
          f"status: {widgets['Load'].status.value}")
    print(table(rows, ["step", "seconds", "longest_stall_s"]))
    print(f"peak memory (VmHWM): {peak:.0f} MB; window saved as {work / 'montage_gui.png'}")
    viewer.close()


if __name__ == "__main__":
    main()
