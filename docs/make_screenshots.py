"""Make the README's screenshots by driving the real GUI (run under Xvfb on a server).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py

Opens napari with the widgets and the EM sample, predicts with the built-in model, pastes
corrections into slices 1 and 2 (their ground truth, as a careful user would paint it), fine-tunes
with one click and evaluates; saves the whole window at each step into docs/.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QApplication

from napari_unet._launch import _raise_tab, open_viewer

HERE = Path(__file__).resolve().parent


def wait(job) -> None:
    app = QApplication.instance()
    while job is not None and job.running:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(10):
        app.processEvents()


def shot(viewer, widget, name: str) -> None:
    _raise_tab(widget)
    for _ in range(10):
        QApplication.instance().processEvents()
    viewer.screenshot(str(HERE / name), canvas_only=False)
    print("saved", HERE / name)


def main() -> None:
    viewer, w = open_viewer(sample="em", show=True)
    viewer.window._qt_window.resize(1500, 950)
    QApplication.instance().processEvents()
    viewer.reset_view()
    image = viewer.layers["em_sample"]
    truth = viewer.layers["em_sample ground truth"]
    wait(w["Predict"].predict())
    labels = viewer.layers["em_sample prediction"]
    viewer.dims.set_current_step(0, 1)
    shot(viewer, w["Predict"], "1_predict.png")
    # The corrections: slices 1 and 2 painted to their ground truth (a brush stroke each,
    # then the rest pasted in); each is held out in turn to check the fine-tune.
    labels.brush_size = 8
    for z in (1, 2):
        labels.paint((z, 100, 100), 1 - int(labels.data[z, 100, 100]))
        labels.data[z] = truth.data[z]
    labels.refresh()
    wait(w["Fine-tune"].start())
    shot(viewer, w["Fine-tune"], "2_finetune.png")
    w["Evaluate"].prediction.value = labels
    w["Evaluate"].truth.value = truth
    wait(w["Evaluate"].run())
    shot(viewer, w["Evaluate"], "3_evaluate.png")
    print(w["Fine-tune"].status.value)
    print(w["Evaluate"].status.value)
    assert np.asarray(labels.data).shape == image.data.shape
    viewer.close()


if __name__ == "__main__":
    main()
