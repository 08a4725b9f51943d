"""Does the GUI keep drawing while napari-unet works? Heartbeat gaps against 250 ms.

    xvfb-run -a python benchmarks/responsiveness.py [--slices 4] [--steps 10] [--model em-membranes]

(Without a display, it starts a virtual one itself: PyVirtualDisplay when installed, else
an ``Xvfb`` process.) Opens a real napari viewer with the napari-unet widgets docked from
Plugins ▸ napari-unet, and runs a 20 ms QTimer (the heartbeat) in napari's event loop.
Each phase runs in a real Qt event loop (``QEventLoop.exec``, as in napari), and a gap
between two ticks is a time the window could not redraw or react to a click. Phases:

1. baseline: the viewer idle for a few seconds with the stack shown (what Qt, vispy and the
   machine give when napari-unet does nothing; measured in the same process, same load);
2. Predict: ``--slices`` real ISBI 2012 slices (512²) with ``--model``, from the Predict
   widget (probability and cells shown too);
3. Fine-tune: slices 1 and 2 corrected (painted, then pasted from the ground truth), a
   fine-tune of ``--steps`` steps from the Fine-tune widget as the user runs it (checked on
   held-out parts: several short trainings and predictions in the worker); then again
   unchecked, so that it is kept and re-predicts the other slices into the corrected layer
   (the updates are written, and the "changed" layer added, on the GUI thread).

Prints, per phase: its seconds (the settling after a job included), the longest gap and
the 99th percentile of the gaps, the number of gaps over the 250 ms target, and the
longest gap outside the turns in which napari itself added a layer (building a layer's
visual takes napari 0.15-0.4 s on the GUI thread, as when a user adds one by hand). The
tests (tests/widgets) assert only that no gap exceeds 1 s (a freeze), since a loaded test
machine can miss 250 ms; this script is where the 250 ms target is measured, on a quiet
machine (it prints the load average: other processes on the CPUs lengthen the gaps).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DATA, require, table

TARGET_S = 0.25  # a GUI that answers within 250 ms feels responsive
FREEZE_S = 1.0  # what the tests assert (tests/widgets/test_workflow.py: FREEZE_S)
TICK_MS = 20


def ensure_display() -> object | None:
    """A display for Qt: the one there is, else a virtual one (returned, to stop at the end)."""
    if os.environ.get("DISPLAY"):
        return None
    try:
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1500, 950), color_depth=24)
        display.start()
        return display
    except Exception as exc:  # noqa: BLE001 - fall back to Xvfb itself, say why
        reason = f"PyVirtualDisplay: {exc}"
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        sys.exit(f"No display and no Xvfb ({reason}): install xvfb, or run under xvfb-run -a.")
    number = 99
    while Path(f"/tmp/.X11-unix/X{number}").exists():
        number += 1
    process = subprocess.Popen([xvfb, f":{number}", "-screen", "0", "1500x950x24", "-nolisten", "tcp"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if Path(f"/tmp/.X11-unix/X{number}").exists():
            break
        time.sleep(0.05)
    os.environ["DISPLAY"] = f":{number}"
    return process


def isbi_subset(folder: Path, slices: int) -> Path:
    """The first ``slices`` ISBI 2012 training slices in the ISBI PNG layout."""
    source = require(DATA / "isbi2012" / "train")
    for sub in ("image", "label"):
        (folder / "train" / sub).mkdir(parents=True)
        for n in range(slices):
            shutil.copy(source / sub / f"{n}.png", folder / "train" / sub / f"{n}.png")
    return folder


class Heartbeat:
    """A 20 ms QTimer noting when it ticks, and when napari inserts a layer."""

    def __init__(self, viewer) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.inserted: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        viewer.layers.events.inserted.connect(lambda _event: self.inserted.append(time.perf_counter()))
        self.timer.start()

    def phase(self, name: str, until, settle_s: float = 0.5) -> dict:
        """Run Qt's event loop until ``until()`` is true (then ``settle_s`` more, so the
        last steps of a job and napari's first draw of its layers are counted)."""
        from qtpy.QtCore import QEventLoop, QTimer

        self.ticks.clear()
        self.inserted.clear()
        start = time.perf_counter()
        loop = QEventLoop()
        done_at: list[float] = []

        def check() -> None:
            now = time.perf_counter()
            if not done_at and until():
                done_at.append(now)
            if done_at and now - done_at[0] >= settle_s:
                loop.quit()

        poll = QTimer()
        poll.setInterval(10)
        poll.timeout.connect(check)
        poll.start()
        loop.exec()
        poll.stop()
        return self.summary(name, time.perf_counter() - start)

    def summary(self, name: str, seconds: float) -> dict:
        ticks = np.asarray(self.ticks)
        gaps = np.diff(ticks)
        adding = np.array([any(a < t <= b for t in self.inserted) for a, b in zip(ticks[:-1], ticks[1:])], bool)
        adding[1:] |= adding[:-1]  # the insertion's turn and the next (napari draws the new layer)
        ours = gaps[~adding]
        return {
            "phase": name,
            "seconds": f"{seconds:.1f}",
            "gaps": len(gaps),
            "max_ms": round(1000 * gaps.max()),
            "p99_ms": round(1000 * float(np.percentile(gaps, 99))),
            f"over_{round(1000 * TARGET_S)}ms": int(np.sum(gaps > TARGET_S)),
            "layers_added": len(self.inserted),
            "max_ms_outside_layer_adds": round(1000 * ours.max()) if ours.size else 0,
            "target": "met" if gaps.max() <= TARGET_S else ("missed" if gaps.max() <= FREEZE_S else "FREEZE"),
        }


def paint(layer, z: int, y: int, x: int) -> None:
    """A user's brush stroke (recorded in the undo history, marks the slice edited)."""
    layer.brush_size = 6
    value = 1 - int(layer.data[z, y, x])
    for dy in range(0, 12, 3):
        layer.paint((z, y + dy, x), value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=4, help="ISBI slices to predict (512² each)")
    parser.add_argument("--steps", type=int, default=10, help="fine-tune steps (the widget's minimum is 5)")
    parser.add_argument("--model", default="em-membranes", help="built-in name or checkpoint file")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of the idle baseline")
    args = parser.parse_args()
    if args.slices < 2:
        parser.error("--slices: at least 2 (one corrected, one to re-predict)")
    display = ensure_display()
    work = Path(tempfile.mkdtemp(prefix="napari-unet-responsiveness-"))
    os.environ.setdefault("NAPARI_UNET_HOME", str(work / "home"))  # models and notes go here, not home
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if display is not None:
            display.stop() if hasattr(display, "stop") else display.terminate()


def run(args, work: Path) -> None:
    import napari
    import torch

    from napari_unet._widgets._session import get_session

    folder = isbi_subset(work / "isbi", args.slices)
    viewer = napari.Viewer(title="napari-unet responsiveness", show=True)
    viewer.window._qt_window.resize(1500, 950)
    widgets = {name: viewer.window.add_plugin_dock_widget("napari-unet", name)[1]
               for name in ("Load", "Predict", "Correct", "Fine-tune", "Evaluate")}
    beat = Heartbeat(viewer)
    rows = []
    load_before = os.getloadavg()[0]
    beat.phase("(warm-up: window shown)", lambda: True, settle_s=2.0)

    widgets["Load"].path.value = str(folder)
    image, truth = widgets["Load"].load()
    beat.phase("(warm-up: stack drawn)", lambda: True, settle_s=2.0)
    rows.append(beat.phase(f"baseline: idle viewer, {args.slices} x 512² shown", lambda: True, settle_s=args.idle))

    predict = widgets["Predict"]
    predict.image.value = image
    if Path(args.model).is_file():
        predict.model.value, predict.checkpoint.value = "file", args.model
    else:
        predict.model.value = args.model
    predict.show_probability.value = predict.show_instances.value = True
    job = predict.predict()
    if job is None:
        sys.exit(f"Predict refused: {predict.status.value}")
    rows.append(beat.phase(f"Predict {args.slices} slice(s) ({args.model}, probability, cells)",
                           lambda: not job.running))
    print("Predict:", predict.status.value)

    labels = viewer.layers[f"{image.name} prediction"]
    for z in ((1, 2) if args.slices >= 3 else (1,)):  # slice 0 and any beyond 2 stay uncorrected
        paint(labels, z, 100, 100)
        labels.data[z] = truth.data[z]  # the rest of the correction, pasted in
    labels.refresh()
    corrected = sorted(get_session(viewer).tracker(labels).corrected)
    finetune = widgets["Fine-tune"]
    finetune.image.value, finetune.corrected_labels.value = image, labels
    finetune.steps.value = args.steps
    # As the user runs it (checked on held-out parts, kept only if better), then unchecked:
    # kept whatever it does, so the other slices are re-predicted into the layer.
    for verify in (True, False):
        finetune.verify.value = verify
        job = finetune.start()
        if job is None:
            sys.exit(f"Fine-tune refused: {finetune.status.value}")
        row = beat.phase("", lambda job=job: not job.running)
        kept = "Re-predicted" in finetune.status.value
        how = "checked" if verify else "unchecked"
        row["phase"] = (f"Fine-tune {args.steps} steps on slices {corrected}, {how}: "
                        + ("kept, others re-predicted" if kept else "starting model kept"))
        rows.append(row)
        print(f"Fine-tune ({how}):", finetune.status.value)
    beat.timer.stop()

    load_after = os.getloadavg()[0]
    print(f"\nnapari {napari.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} CPU(s), 1-min load average {load_before:.2f} before, {load_after:.2f} after "
          f"(other processes share the CPUs when it exceeds ~1); heartbeat {TICK_MS} ms; "
          f"target: every gap <= {round(1000 * TARGET_S)} ms (the tests fail only on a gap > {FREEZE_S:g} s)")
    print(table(rows, list(rows[0])))
    viewer.close()


if __name__ == "__main__":
    main()
