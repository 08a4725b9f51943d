"""`napari-unet evaluate` and the Evaluate widget give the same numbers for the same files.

Each test runs the CLI command (in-process, on files) and the real Evaluate widget, docked
from Plugins ▸ napari-unet in a real viewer, on layers made from the same files as a user
makes them (File ▸ Open with the napari-unet reader, the Load widget, or a layer holding a
file's array), and compares the two: exactly (the scores the widget's job hands to its
table, before formatting) and as the user reads them (the table's "all" row and the
status line, 4 decimals).

What each case pins beside the equality: the IGNORE label (2) and the FOV leave pixels
out of every score; a 0/255 mask is the 0/1 mask it is; ISBI's membranes-as-0 label files
with ``--invert-truth`` score as the ground truth the Load widget reads from them.
(The label and scoring conventions against hand-computed values: tests/core/test_conventions.py.)
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from napari_unet.cli import main

from .conftest import wait_for

STRUCTURE, IGNORE = 1, 2  # the project's label convention (core/labels.py)


def _tif(path, array):
    tifffile.imwrite(path, array, photometric="minisblack")
    return path


def _same(cli: dict, gui: dict) -> None:
    """The same keys in the same order, and equal floats (NaN equal to NaN)."""
    assert list(cli) == list(gui), (cli, gui)
    for key in cli:
        assert (math.isnan(cli[key]) and math.isnan(gui[key])) or cli[key] == gui[key], (key, cli[key], gui[key])


def _cli(capsys, pred, truth, task, fov=None, invert_truth=False) -> dict:
    """`napari-unet evaluate ... --json`, run in-process: its last line, parsed."""
    argv = ["evaluate", "--pred", str(pred), "--truth", str(truth), "--task", task, "--json"]
    if fov is not None:
        argv += ["--fov", str(fov)]
    if invert_truth:
        argv.append("--invert-truth")
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])


@pytest.fixture
def evaluate_widget(make_napari_viewer, monkeypatch):
    """(viewer, Evaluate widget, results): the widget docked from the Plugins menu;
    ``results`` collects the overall scores each run hands to the table, unformatted."""
    from napari_unet._widgets.evaluate import EvaluateWidget

    results = []
    show = EvaluateWidget._show

    def recording(self, result):
        results.append(result[1])
        return show(self, result)

    monkeypatch.setattr(EvaluateWidget, "_show", recording)
    viewer = make_napari_viewer()
    widget = viewer.window.add_plugin_dock_widget("napari-unet", "Evaluate")[1]
    assert isinstance(widget, EvaluateWidget)
    return viewer, widget, results


def _gui(qtbot, evaluate_widget, pred, truth, task, fov=None) -> dict:
    """Choose the layers in the Evaluate widget, press Evaluate; the overall scores, after
    checking that the table and the status line show them."""
    _viewer, widget, results = evaluate_widget
    widget.prediction.value, widget.truth.value = pred, truth
    widget.fov.value, widget.task.value = fov, task
    count = len(results)
    wait_for(qtbot, widget.run())
    assert len(results) == count + 1, widget.status.value
    scores = results[-1]
    table = widget.table
    last = table.rowCount() - 1
    assert table.verticalHeaderItem(last).text() == "all"
    headers = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    row = {key: table.item(last, c).text() for c, key in enumerate(headers)}
    status = dict(item.split(" ") for item in widget.status.value.removeprefix("Overall: ").split(", "))
    assert list(row) == list(status) == list(scores)
    for key, value in scores.items():
        assert row[key] == ("–" if math.isnan(value) else f"{value:.4f}"), key
        assert status[key] == f"{value:.4f}", key
    return scores


def _open(viewer, path):
    """File ▸ Open with the napari-unet reader: one layer."""
    (layer,) = viewer.open(str(path), plugin="napari-unet")
    return layer


# ----------------------------------------------------------------- a small synthetic stack


def _membrane_truth(z: int, size: int, step: int) -> np.ndarray:
    """(Z, Y, X) 0/1 labels: a grid of 1-px membranes around square cells."""
    truth = np.zeros((z, size, size), np.uint8)
    truth[:, ::step, :] = STRUCTURE
    truth[:, :, ::step] = STRUCTURE
    return truth


@pytest.fixture
def synthetic_case(tmp_path):
    """A 2-slice prediction (0/1 mask and probabilities), a 0/1/2 truth with ignored
    blocks, a FOV: the arrays and the tif files holding them."""
    truth = _membrane_truth(z=2, size=64, step=16)
    truth[0, 40:60, 10:50] = IGNORE
    truth[1, 5:12, :] = IGNORE
    rng = np.random.default_rng(7)
    prob = np.clip(np.where(truth == STRUCTURE, 0.7, 0.3) + rng.normal(0, 0.25, truth.shape), 0, 1).astype(np.float32)
    prob[0, 40:60, 10:50] = 0.95  # confident structure where the truth says "ignore"
    mask = (prob > 0.5).astype(np.uint8)
    fov = np.zeros(truth.shape, np.uint8)
    fov[:, 3:61, 3:61] = 255
    arrays = {"truth": truth, "prob": prob, "mask": mask, "fov": fov}
    # File names as the reader reads them: "truth"/"labels" -> Labels, "fov" -> a FOV mask.
    names = {"truth": "truth.tif", "prob": "prob.tif", "mask": "pred_labels.tif", "fov": "fov.tif"}
    files = {key: _tif(tmp_path / names[key], array) for key, array in arrays.items()}
    return arrays, files


def _prediction_layer(viewer, files, kind):
    """The mask or the probability map opened with the reader, as a user opens the CLI's
    outputs (a float tif is read as an image: Evaluate must offer it as a prediction too,
    or choosing it in `_gui` fails)."""
    return _open(viewer, files[kind])


@pytest.mark.parametrize("task", ["em", "fundus"])
@pytest.mark.parametrize("pred_kind", ["mask", "prob"])
def test_same_numbers_on_a_stack_with_ignored_pixels_and_a_fov(evaluate_widget, qtbot, capsys, synthetic_case,
                                                              task, pred_kind):
    viewer = evaluate_widget[0]
    arrays, files = synthetic_case
    truth, fov = _open(viewer, files["truth"]), _open(viewer, files["fov"])
    np.testing.assert_array_equal(truth.data, arrays["truth"])  # 2 stays IGNORE in the layer
    pred = _prediction_layer(viewer, files, pred_kind)
    scores = {}
    for with_fov in (True, False):
        cli = _cli(capsys, files[pred_kind], files["truth"], task, files["fov"] if with_fov else None)
        scores[with_fov] = _gui(qtbot, evaluate_widget, pred, truth, task, fov if with_fov else None)
        _same(cli, scores[with_fov])
        assert ("auc" in cli) == (task == "fundus" and pred_kind == "prob")
    assert scores[True] != scores[False]  # the FOV leaves a 3-px rim out (membranes there too)
    # The ignored block (predicted structure) is not scored: scored as background, the
    # same prediction does worse, in the widget as in the CLI.
    counted = viewer.add_labels((arrays["truth"] == STRUCTURE).astype(np.uint8), name="ignored block as background")
    assert _gui(qtbot, evaluate_widget, pred, counted, task)["dice"] < scores[False]["dice"]


def test_a_0_255_mask_scores_as_the_0_1_mask_it_is(evaluate_widget, qtbot, capsys, synthetic_case, tmp_path):
    viewer = evaluate_widget[0]
    arrays, files = synthetic_case
    path = _tif(tmp_path / "pred255_labels.tif", arrays["mask"] * 255)
    cli = _cli(capsys, path, files["truth"], "fundus", files["fov"])
    _same(cli, _cli(capsys, files["mask"], files["truth"], "fundus", files["fov"]))
    truth, fov = _open(viewer, files["truth"]), _open(viewer, files["fov"])
    # Opened with the reader, and as a Labels layer holding the 0/255 values themselves.
    for pred in (_open(viewer, path), viewer.add_labels(tifffile.imread(path), name="0/255 as stored")):
        _same(cli, _gui(qtbot, evaluate_widget, pred, truth, "fundus", fov))


# ----------------------------------------------------------------- real data


@pytest.mark.parametrize("pred_kind", ["mask", "prob"])
def test_same_numbers_on_real_drive(evaluate_widget, qtbot, capsys, drive_dir, tmp_path, pred_kind):
    """DRIVE test image 01: its 1st manual (gif, 0/255), its FOV mask (gif) and a crude
    dark-line vessel detector's probability or mask."""
    viewer = evaluate_widget[0]
    test = drive_dir / "test"
    green = tifffile.imread(test / "images" / "01_test.tif")[..., 1].astype(np.float32)
    darkness = ndimage.uniform_filter(green, 15) - green  # vessels are darker than their surroundings
    prob = np.clip(darkness / 20.0, 0.0, 1.0).astype(np.float32)
    files = {"truth": test / "1st_manual" / "01_manual1.gif", "fov": test / "mask" / "01_test_mask.gif",
             "prob": _tif(tmp_path / "01_prob.tif", prob),
             "mask": _tif(tmp_path / "01_vessels_labels.tif", (prob > 0.3).astype(np.uint8))}
    truth, fov = _open(viewer, files["truth"]), _open(viewer, files["fov"])
    pred = _prediction_layer(viewer, files, pred_kind)
    cli = _cli(capsys, files[pred_kind], files["truth"], "fundus", files["fov"])
    _same(cli, _gui(qtbot, evaluate_widget, pred, truth, "fundus", fov))
    # A crude dark-line detector finds vessels, far from perfectly.
    assert 0.3 < cli["f1"] < 0.95 and 0.8 < cli["acc"] < 1.0
    if pred_kind == "prob":
        assert 0.75 < cli["auc"] < 1.0
    else:
        assert "auc" not in cli
    # The FOV counts: without it, the false vessels the detector sees along the aperture's
    # rim (dark surround beside bright retina, outside the FOV) are scored too.
    whole = _cli(capsys, files[pred_kind], files["truth"], "fundus")
    _same(whole, _gui(qtbot, evaluate_widget, pred, truth, "fundus"))
    assert whole["sp"] < cli["sp"] - 0.01 and whole["f1"] < cli["f1"] - 0.05


def test_same_numbers_on_real_isbi_with_invert_truth(evaluate_widget, qtbot, capsys, isbi_folder, tmp_path):
    """ISBI 2012 label files store membranes as 0: ``--invert-truth`` on the label folder
    scores as the ground truth the Load widget reads from the ISBI folder."""
    viewer = evaluate_widget[0]
    load = viewer.window.add_plugin_dock_widget("napari-unet", "Load")[1]
    load.path.value = str(isbi_folder)
    image, truth = load.load()
    assert truth.data.shape == (4, 512, 512) and set(np.unique(truth.data)) == {0, 1}
    smooth = ndimage.gaussian_filter(np.asarray(image.data, np.float32), (0, 1, 1))
    path = _tif(tmp_path / "isbi_pred_labels.tif", (smooth < 110).astype(np.uint8))  # membranes are dark
    label_folder = isbi_folder / "train" / "label"
    assert np.asarray(Image.open(label_folder / "0.png")).min() == 0  # stored: 0 = membrane, 255 = cell
    cli = _cli(capsys, path, label_folder, "em", invert_truth=True)
    _same(cli, _gui(qtbot, evaluate_widget, _open(viewer, path), truth, "em"))
    assert 0.3 < cli["dice"] < 1.0 and 0.0 < cli["vrand"] < 1.0
    # Not inverted, the cells would be the structure: the option is what makes them agree.
    assert _cli(capsys, path, label_folder, "em")["dice"] < 0.5 * cli["dice"]
