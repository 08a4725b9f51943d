"""The project's shared conventions, as a user meets them.

* one label convention (0 background, 1 structure, 2 ignore) for files, layers and the CLI;
* one way to score: IGNORE and outside-FOV pixels count for nothing, checked against
  hand-computed values, in the core and in `napari-unet evaluate` (that the Evaluate widget
  gives the CLI's numbers is tested with a real viewer: tests/widgets/test_evaluate_parity.py);
* corrections kept per image, in one atomic file;
* atomic, permission-friendly file writing;
* images that cannot be segmented are refused with a readable message.

Fast (no Qt, no napari): small arrays written to ``tmp_path`` and a few real ISBI 2012 /
DRIVE files from ``../shared/data`` (skipped when absent).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_unet.cli import main
from napari_unet.core import corrections as C
from napari_unet.core.data import DataError, check_images, normalize
from napari_unet.core.evaluate import evaluate, scoring_inputs
from napari_unet.core.files import atomic_write, check_writable, free_path
from napari_unet.core.labels import (
    IGNORE,
    STRUCTURE,
    labels_from_array,
    labels_note,
    unknown_label_pixels,
)


def _tif(path: Path, array: np.ndarray) -> str:
    tifffile.imwrite(path, array, photometric="minisblack")
    return str(path)


# ======================================================================================
# Labels: labels_from_array, unknown_label_pixels, labels_note
# ======================================================================================


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64])
@pytest.mark.parametrize("values", [[0, 1, 2], [0, 1], [0, 2], [1, 2], [0], [1], [2]])
def test_values_within_the_convention_are_kept(values, dtype):
    """Labels already in 0/1/2 mean background/structure/ignore, whatever their dtype."""
    raw = np.resize(np.array(values, dtype), (4, 6))
    out = labels_from_array(raw)
    assert out.dtype == np.uint8 and out.shape == raw.shape
    np.testing.assert_array_equal(out, raw.astype(np.uint8))
    assert unknown_label_pixels(raw) == 0 and labels_note(raw) == ""


def test_bool_mask_true_is_structure():
    raw = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(labels_from_array(raw), [[1, 0], [0, 1]])


@pytest.mark.parametrize("on", [1, 255, 7, 65535, -1, 0.5])
def test_binary_mask_nonzero_is_structure(on):
    """A two-valued mask 0/v (0/255 from an image editor, 0/1, ...) is read as nonzero = structure."""
    dtype = np.float32 if isinstance(on, float) else (np.int32 if on < 0 else np.uint16)
    raw = np.zeros((5, 7), dtype)
    raw[1:3, 2:6] = on
    out = labels_from_array(raw)
    expected = (raw != 0).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8
    assert unknown_label_pixels(raw) == 0 and labels_note(raw) == ""


def test_binary_mask_on_a_stack_keeps_its_shape():
    raw = np.zeros((3, 8, 9), np.uint8)
    raw[:, 2, :] = 255
    out = labels_from_array(raw)
    assert out.shape == (3, 8, 9)
    assert out.sum() == 3 * 9 and set(np.unique(out)) == {0, 1}


def test_invert_zero_is_structure():
    """ISBI 2012 stores membranes as 0 and cells as 255: ``invert=True`` makes 0 the structure."""
    raw = np.array([[0, 255, 255], [0, 0, 255]], np.uint8)
    np.testing.assert_array_equal(labels_from_array(raw, invert=True), [[1, 0, 0], [1, 1, 0]])
    # Invert applies before every other rule: 0/1/2 labels are inverted too, nothing is ignored.
    raw = np.array([[0, 1, 2, 7]], np.uint8)
    np.testing.assert_array_equal(labels_from_array(raw, invert=True), [[1, 0, 0, 0]])
    assert unknown_label_pixels(raw, invert=True) == 0
    assert labels_note(raw, invert=True) == ""


def test_other_ids_keep_0_and_1_and_ignore_the_rest():
    """Instance ids or a stray brush value: 0 and 1 keep their meaning, everything else is IGNORE."""
    raw = np.array([[0, 1, 2, 7], [7, 7, 0, 1]], np.uint8)
    out = labels_from_array(raw)
    np.testing.assert_array_equal(out, [[0, 1, 2, 2], [2, 2, 0, 1]])
    # Only the 7s were turned into IGNORE because their id is unknown; the 2 was already IGNORE.
    assert unknown_label_pixels(raw) == 3
    note = labels_note(raw)
    assert "3 labelled pixel(s)" in note and "ignored" in note


def test_huge_ids_become_ignore_not_wrapped():
    """Ids beyond uint8 (70000 = 4464 + 256 * 273) must not wrap around into 0/1/2."""
    raw = np.array([[0, 1, 70000, 65536], [65537, 258, 257, 1]], np.uint32)
    out = labels_from_array(raw)
    np.testing.assert_array_equal(out, [[0, 1, 2, 2], [2, 2, 2, 1]])
    assert unknown_label_pixels(raw) == 5
    assert labels_note(raw).startswith("5 labelled pixel(s)")


def test_thousands_separator_in_note():
    raw = np.zeros((50, 50), np.uint16)
    raw[:, :30] = 9
    raw[0, 0] = 1  # a known id
    raw[0, 1] = 5  # another unknown id: 1,498 nines + one 5
    assert unknown_label_pixels(raw) == 1499
    assert "1,499 labelled pixel(s)" in labels_note(raw)


def test_nan_with_other_ids_becomes_ignore():
    raw = np.array([[0.0, 1.0, np.nan], [np.nan, 3.0, 0.0]], np.float32)
    out = labels_from_array(raw)
    np.testing.assert_array_equal(out, [[0, 1, 2], [2, 2, 0]])
    assert unknown_label_pixels(raw) == 3
    assert labels_note(raw) != ""


@pytest.mark.parametrize("other", [0.0, 1.0])
def test_nan_is_never_structure(other):
    """NaN is no label: it is IGNORE, even when the only other value is 0 or 1.

    (Float labels with NaN for unlabelled pixels are a common export from analysis tools.)
    """
    raw = np.full((4, 4), other, np.float32)
    raw[0, :] = np.nan
    out = labels_from_array(raw)
    assert np.all(out[0] == IGNORE), out
    assert np.all(out[1:] == int(other))
    assert unknown_label_pixels(raw) == 4
    assert labels_note(raw).startswith("4 labelled pixel(s)")


def test_rgb_label_image_read_from_first_channel():
    """A label or mask saved as RGB(A) (Y, X, 3|4), e.g. a 0/255 PNG, is read from its first channel."""
    grey = np.zeros((20, 30), np.uint8)
    grey[5:9, 3:25] = 255
    for channels in (3, 4):
        rgb = np.repeat(grey[..., None], channels, axis=-1)
        out = labels_from_array(rgb)
        assert out.shape == (20, 30)
        np.testing.assert_array_equal(out, labels_from_array(grey))
    rgb_ids = np.repeat(np.array([[0, 1, 9] * 3] * 6, np.uint8)[..., None], 3, axis=-1)
    assert unknown_label_pixels(rgb_ids) == 18  # counted on one channel, not three


def test_same_labels_from_png_and_tif_files(tmp_path):
    """The same labels saved as PNG (also as RGB) and as tif mean the same thing once read."""
    from napari_unet.core.data import read_labels

    raw = np.zeros((24, 32), np.uint8)
    raw[4:10, :] = 255
    raw[15, 3:30] = 255
    Image.fromarray(raw).save(tmp_path / "l.png")
    Image.fromarray(np.repeat(raw[..., None], 3, -1)).save(tmp_path / "rgb.png")
    _tif(tmp_path / "l.tif", raw)
    expected = (raw != 0).astype(np.uint8)[None]
    for name in ("l.png", "rgb.png", "l.tif"):
        np.testing.assert_array_equal(read_labels(tmp_path / name), expected, err_msg=name)


def test_real_drive_manuals_read_the_same(drive_dir):
    """DRIVE's 1st manual is {0, 255}, its 2nd manual a palette {0, 1}: both give nonzero = vessel."""
    first = np.asarray(Image.open(drive_dir / "test" / "1st_manual" / "01_manual1.gif"))
    second = np.asarray(Image.open(drive_dir / "test" / "2nd_manual" / "01_manual2.gif"))
    for raw in (first, second):
        out = labels_from_array(raw)
        np.testing.assert_array_equal(out, (raw != 0).astype(np.uint8))
        assert labels_note(raw) == ""
        assert 0.05 < out.mean() < 0.2  # vessels are ~12 % of a DRIVE image


# ======================================================================================
# Scoring: scoring_inputs + evaluate
# ======================================================================================


def _scores(pred, truth, fov, task) -> dict:
    """The core's scoring path: `scoring_inputs` then `evaluate` (what the CLI and the
    Evaluate widget call; their agreement is tested in tests/widgets/test_evaluate_parity.py)."""
    p, t, scored = scoring_inputs(pred, truth, fov)
    return evaluate(p, t, task, fov=scored)



def _membrane_truth(z: int = 2, size: int = 48, step: int = 12) -> np.ndarray:
    """(Z, Y, X) 0/1 labels: a grid of 1-px membranes around square cells."""
    truth = np.zeros((z, size, size), np.uint8)
    truth[:, ::step, :] = STRUCTURE
    truth[:, :, ::step] = STRUCTURE
    return truth


def _noisy_prediction(truth: np.ndarray, seed: int = 0, flip: float = 0.08) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ((truth == STRUCTURE) ^ (rng.random(truth.shape) < flip)).astype(np.uint8)


def _manual_pixel_scores(pred_fg: np.ndarray, truth_fg: np.ndarray, scored: np.ndarray) -> dict[str, float]:
    p, t = pred_fg[scored], truth_fg[scored]
    tp, fp = np.sum(p & t), np.sum(p & ~t)
    fn, tn = np.sum(~p & t), np.sum(~p & ~t)
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn), "pixel_accuracy": (tp + tn) / p.size}


@pytest.mark.parametrize("task", ["em", "fundus"])
def test_ignore_label_is_not_scored(task):
    """Pixels labelled 2 in the truth count for nothing, even where the prediction says structure."""
    truth = _membrane_truth()
    pred = _noisy_prediction(truth)
    truth[:, 20:40, 5:30] = IGNORE
    pred[:, 20:40, 5:30] = 1  # the prediction calls the whole ignored block structure
    p, t, scored = scoring_inputs(pred, truth)
    assert scored is not None and not scored[:, 20:40, 5:30].any() and scored.sum() == truth.size - 2 * 20 * 25
    scores = evaluate(p, t, task, fov=scored)
    manual = _manual_pixel_scores(pred == 1, truth == STRUCTURE, truth != IGNORE)
    for key, value in manual.items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    # Changing the prediction inside the ignored block changes no pixel score.
    other = pred.copy()
    other[:, 20:40, 5:30] = 0
    again = _scores(other, truth, None, task)
    for key in ("dice", "iou", "pixel_accuracy") + (("se", "sp", "acc", "f1") if task == "fundus" else ()):
        assert again[key] == scores[key], key


def test_ignore_label_is_not_scored_by_vrand_vinfo():
    """IGNORE means "not scored" (core/labels.py): a predicted membrane only inside an ignored cell changes nothing."""
    truth = _membrane_truth(z=1, size=48, step=12)
    truth[0, 13:24, 13:24] = IGNORE  # one whole cell interior is unlabelled
    pred = (truth == STRUCTURE).astype(np.uint8)
    split = pred.copy()
    split[0, 13:24, 18] = 1  # a predicted membrane splitting that cell, only inside the ignored block
    scores = _scores(pred, truth, None, "em")
    assert scores == _scores(split, truth, None, "em")
    assert scores["vrand"] == scores["vinfo"] == 1.0
    # Labelled as cell (0), the same split is an error: the test above is not vacuous.
    labelled = truth.copy()
    labelled[labelled == IGNORE] = 0
    assert _scores(split, labelled, None, "em")["vrand"] < 1.0


def test_fov_restricts_scoring():
    """Outside the field of view nothing is scored: errors there change no number."""
    truth = _membrane_truth(z=1)[0]
    fov = np.zeros(truth.shape, np.uint8)
    fov[4:44, 4:44] = 255
    pred = _noisy_prediction(truth, seed=3)
    p, t, scored = scoring_inputs(pred, truth, fov)
    np.testing.assert_array_equal(scored[0], fov != 0)
    scores = evaluate(p, t, "fundus", fov=scored)
    manual = _manual_pixel_scores(pred == 1, truth == 1, fov != 0)
    for key, value in manual.items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    assert scores["f1"] == pytest.approx(manual["dice"], abs=1e-12)
    assert scores["acc"] == pytest.approx(manual["pixel_accuracy"], abs=1e-12)
    spoiled = pred.copy()
    spoiled[fov == 0] = 1 - spoiled[fov == 0]
    assert _scores(spoiled, truth, fov, "fundus") == scores


def test_fov_and_ignore_combine():
    truth = _membrane_truth(z=1)
    truth[0, 30:, 30:] = IGNORE
    fov = np.ones(truth.shape, bool)
    fov[0, :10] = False
    _, _, scored = scoring_inputs(_noisy_prediction(truth), truth, fov)
    np.testing.assert_array_equal(scored, (truth != IGNORE) & fov)


def test_clean_labels_score_every_pixel():
    truth = _membrane_truth(z=1)[0]
    p, t, scored = scoring_inputs(truth * 255, truth)
    assert scored is None and p.shape == t.shape == (1, 48, 48)
    assert p.dtype == np.uint8 and t.dtype == bool
    assert evaluate(p, t, "em")["dice"] == 1.0


@pytest.mark.parametrize(
    "pred, truth, fov, words",
    [
        (np.zeros((8, 8), np.uint8), np.eye(9, dtype=np.uint8), None, "shape"),
        (np.zeros((2, 8, 8), np.uint8), np.eye(8, dtype=np.uint8), None, "shape"),
        (np.full((8, 8), np.nan, np.float32), np.eye(8, dtype=np.uint8), None, "NaN"),
        (np.where(np.eye(8), np.inf, 0.2).astype(np.float32), np.eye(8, dtype=np.uint8), None, "infinite"),
        (np.full((8, 8), 1.5, np.float32), np.eye(8, dtype=np.uint8), None, "[0, 1]"),
        (np.full((8, 8), -0.5), np.eye(8, dtype=np.uint8), None, "[0, 1]"),
        (np.eye(8, dtype=np.uint8), np.zeros((8, 8), np.uint8), None, "no structure"),
        (np.eye(8, dtype=np.uint8), np.full((8, 8), IGNORE, np.uint8), None, "no structure"),
        (np.eye(8, dtype=np.uint8), np.eye(8, dtype=np.uint8), np.zeros((8, 8), np.uint8), "no structure"),
        (np.eye(8, dtype=np.uint8), np.eye(8, dtype=np.uint8), np.ones((7, 8), np.uint8), "FOV"),
    ],
    ids=["shape-2d", "shape-z", "nan", "inf", "above-1", "below-0", "empty-truth",
         "all-ignore", "structure-outside-fov", "fov-shape"],
)
def test_bad_scoring_inputs_raise_readable_errors(pred, truth, fov, words):
    with pytest.raises(ValueError) as info:
        scoring_inputs(pred, truth, fov)
    message = str(info.value)
    assert words.lower() in message.lower(), message
    assert "\n" not in message and message.endswith((".", ")"))


# ---------------------------------------------------------------- the CLI, counted by hand

# A 4x4 image counted by hand: truth 1 = structure, 2 = ignore (the prediction calls both
# ignored pixels structure). Scored: 14 pixels; TP 3 at (0,0) (1,0) (2,2), FP 2 at (1,1)
# (3,1), FN 1 at (0,1), TN 8. The probabilities put those pixels on the same side of 0.5.
HAND_TRUTH = np.array([[1, 1, 0, 0],
                       [1, 0, 0, 2],
                       [0, 0, 1, 2],
                       [0, 0, 0, 0]], np.uint8)
HAND_MASK = np.array([[1, 0, 0, 0],
                      [1, 1, 0, 1],
                      [0, 0, 1, 1],
                      [0, 1, 0, 0]], np.uint8)
HAND_PROB = np.array([[0.90, 0.20, 0.05, 0.10],
                      [0.80, 0.75, 0.15, 0.99],
                      [0.25, 0.30, 0.70, 0.98],
                      [0.35, 0.60, 0.40, 0.45]], np.float32)
HAND_FOV = np.array([[1, 1, 1, 1]] * 3 + [[0, 0, 0, 0]], np.uint8) * 255  # the last row is outside
# AUC = share of (vessel, background) pairs ranked right, no ties. Whole image: 40 pairs;
# 0.9 and 0.8 beat all 10, 0.7 all but 0.75, 0.2 beats 0.05, 0.1, 0.15: 32/40. In the FOV
# (TP 3, FP 1, FN 1, TN 5; 6 backgrounds): 6 + 6 + 5 + 3 = 20 of 24.
HAND_SCORES = {
    False: {"dice": 6 / 9, "iou": 3 / 6, "pixel_accuracy": 11 / 14, "se": 3 / 4, "sp": 8 / 10, "acc": 11 / 14,
            "f1": 6 / 9, "auc": 32 / 40},
    True: {"dice": 6 / 8, "iou": 3 / 5, "pixel_accuracy": 8 / 10, "se": 3 / 4, "sp": 5 / 6, "acc": 8 / 10,
           "f1": 6 / 8, "auc": 20 / 24},
}


def _cli_scores(capsys, pred_path, truth_path, task, fov_path=None, *options) -> dict:
    """`napari-unet evaluate --json`, in-process: the JSON object on its last line."""
    argv = ["evaluate", "--pred", str(pred_path), "--truth", str(truth_path), "--task", task, "--json", *options]
    if fov_path is not None:
        argv += ["--fov", str(fov_path)]
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


@pytest.mark.parametrize("with_fov", [False, True])
@pytest.mark.parametrize("pred", ["mask", "mask 0/255", "prob"])
def test_cli_scores_equal_hand_counts(tmp_path, capsys, pred, with_fov):
    """`napari-unet evaluate` leaves IGNORE and outside-FOV pixels out, reads a 0/255 mask
    as 0/1, binarises a probability at 0.5 and adds its AUC: the numbers counted above."""
    array = {"mask": HAND_MASK, "mask 0/255": HAND_MASK * 255, "prob": HAND_PROB}[pred]
    pred_path, truth_path = _tif(tmp_path / "pred.tif", array), _tif(tmp_path / "truth.tif", HAND_TRUTH)
    fov_path = _tif(tmp_path / "fov.tif", HAND_FOV) if with_fov else None
    expected = dict(HAND_SCORES[with_fov])
    if pred != "prob":
        del expected["auc"]  # a mask has no ranking
    scores = _cli_scores(capsys, pred_path, truth_path, "fundus", fov_path)
    assert list(scores) == list(expected)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    em = _cli_scores(capsys, pred_path, truth_path, "em", fov_path)
    assert list(em) == ["dice", "iou", "pixel_accuracy", "vrand", "vinfo"]
    for key in ("dice", "iou", "pixel_accuracy"):
        assert em[key] == pytest.approx(expected[key], abs=1e-12), key


def test_cli_invert_truth_reads_isbi_labels_membranes_as_zero(tmp_path, capsys):
    """ISBI 2012 stores membranes as 0 and cells as 255: with ``--invert-truth`` 0 is the
    structure. (Inverted files have no ignore label: the two pixels labelled 2 above are
    cells here, so the prediction's structure there counts: FP 4, TN 8 over 16 pixels.)"""
    isbi = np.where(HAND_TRUTH == STRUCTURE, 0, 255).astype(np.uint8)
    pred_path, truth_path = _tif(tmp_path / "pred.tif", HAND_MASK), _tif(tmp_path / "train-labels.tif", isbi)
    scores = _cli_scores(capsys, pred_path, truth_path, "em", None, "--invert-truth")
    assert scores["dice"] == pytest.approx(6 / 11, abs=1e-12)
    assert scores["iou"] == pytest.approx(3 / 8, abs=1e-12)
    assert scores["pixel_accuracy"] == pytest.approx(11 / 16, abs=1e-12)
    # Not inverted, the 12 cell pixels are the structure: TP 4 ((1,1), (1,3), (2,3), (3,1)), FP 3, FN 8.
    assert _cli_scores(capsys, pred_path, truth_path, "em")["dice"] == pytest.approx(8 / 19, abs=1e-12)


def test_cli_vrand_vinfo_are_1_for_a_perfect_prediction_only(tmp_path, capsys):
    """On a membrane grid the prediction that equals the truth scores V_Rand = V_Info = 1;
    one predicted membrane splitting a cell lowers both."""
    truth = _membrane_truth(z=1, size=48, step=12)
    split = truth.copy()
    split[0, 13:24, 18] = STRUCTURE
    truth_path = _tif(tmp_path / "truth.tif", truth)
    perfect = _cli_scores(capsys, _tif(tmp_path / "perfect.tif", truth), truth_path, "em")
    assert perfect == {"dice": 1.0, "iou": 1.0, "pixel_accuracy": 1.0, "vrand": 1.0, "vinfo": 1.0}
    wrong = _cli_scores(capsys, _tif(tmp_path / "split.tif", split), truth_path, "em")
    assert wrong["vrand"] < 1.0 and wrong["vinfo"] < 1.0


# ======================================================================================
# Corrections: one folder per image, one atomic file
# ======================================================================================


def test_corrections_folder_differs_by_extension(tmp_path):
    """a.tif and a.png in the same folder are two images: two folders, also under a chosen root."""
    tif, png = tmp_path / "a.tif", tmp_path / "a.png"
    assert C.corrections_folder(tif) != C.corrections_folder(png)
    assert C.corrections_folder(tif).parent == tmp_path
    root = tmp_path / "all"
    assert C.corrections_folder(tif, root=root) != C.corrections_folder(png, root=root)


def test_corrections_folder_same_name_in_two_folders(tmp_path):
    one, two = tmp_path / "day1" / "stack.tif", tmp_path / "day2" / "stack.tif"
    assert C.corrections_folder(one) != C.corrections_folder(two)
    root = tmp_path / "corrections"
    a, b = C.corrections_folder(one, root=root), C.corrections_folder(two, root=root)
    assert a != b and a.parent == b.parent == root
    assert a.name.startswith("stack.tif") and b.name.startswith("stack.tif")


def test_corrections_folder_with_a_root_never_collides(tmp_path):
    root = tmp_path / "root"
    sources = [tmp_path / d / f"{n}{ext}" for d in ("a", "b", "a/b", "a-b", "x y", "ä")
               for n in ("img", "img-1", "1", "stack.tif") for ext in (".tif", ".png", "")]
    folders = {C.corrections_folder(s, root=root) for s in sources}
    assert len(folders) == len(set(sources))
    assert all(f.parent == root for f in folders)


def test_corrections_folder_is_stable_for_one_file(tmp_path, monkeypatch):
    """The same file, named by a relative or an absolute path, finds its corrections again."""
    (tmp_path / "img.tif").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    for root in (None, tmp_path / "root"):
        assert C.corrections_folder("img.tif", root=root) == C.corrections_folder(tmp_path / "img.tif", root=root)
        assert C.corrections_folder(str(tmp_path / "img.tif"), root=root) == C.corrections_folder(
            tmp_path / "img.tif", root=root)


def test_corrections_without_a_file_go_to_napari_unet_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("NAPARI_UNET_HOME", str(home))
    a = C.corrections_folder(None, pixels_hash="abc123")
    assert a == home / "corrections" / "image-abc123"
    assert C.corrections_folder("", pixels_hash="abc123") == a
    assert C.corrections_folder(None, pixels_hash="def456") != a
    assert C.corrections_folder(None, pixels_hash="abc123", root=tmp_path / "r") == tmp_path / "r" / "image-abc123"
    with pytest.raises(ValueError, match="hash"):
        C.corrections_folder(None)


@pytest.mark.parametrize("shape", [(3, 16, 20), (1, 16, 20), (16, 20)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_correction_store_round_trip(tmp_path, shape, dtype):
    """Labels (same shape and dtype), corrected/edited slices and edited pixels come back as saved."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, shape).astype(dtype)
    edited = rng.random(shape) < 0.2
    folder = tmp_path / "img.tif.napari-unet"
    store = C.CorrectionStore(folder)
    assert not store.exists()
    path = store.save(labels, corrected=[2, 0], edited=[1, 2, 0], image_source="/data/img.tif", edited_pixels=edited)
    assert store.exists() and path == folder / "corrections.tif"
    assert sorted(os.listdir(folder)) == ["corrections.tif"]  # no temp file left behind
    back, state, pixels = C.CorrectionStore(folder).load()
    assert back.shape == labels.shape and back.dtype == labels.dtype
    np.testing.assert_array_equal(back, labels)
    assert pixels.dtype == bool and pixels.shape == labels.shape
    np.testing.assert_array_equal(pixels, edited)
    assert state["corrected_slices"] == [0, 2] and state["edited_slices"] == [0, 1, 2]
    assert state["image_source"] == "/data/img.tif"
    # Any tif reader sees the labels.
    np.testing.assert_array_equal(tifffile.imread(path), labels)


def test_correction_store_without_edited_pixels_and_resave(tmp_path):
    store = C.CorrectionStore(tmp_path / "c")
    store.save(np.ones((2, 16, 16), np.uint8), [0], [0])
    _, _, pixels = store.load()
    assert pixels.shape == (2, 16, 16) and not pixels.any()
    store.save(np.zeros((2, 16, 16), np.uint8), [0, 1], [])
    labels, state, _ = store.load()
    assert not labels.any() and state["corrected_slices"] == [0, 1] and state["edited_slices"] == []
    assert sorted(os.listdir(tmp_path / "c")) == ["corrections.tif"]


def test_correction_store_refuses_mismatched_edited_pixels(tmp_path):
    store = C.CorrectionStore(tmp_path / "c")
    store.save(np.ones((2, 16, 16), np.uint8), [], [])
    with pytest.raises(ValueError, match="shape"):
        store.save(np.zeros((2, 16, 16), np.uint8), [], [], edited_pixels=np.zeros((16, 16), bool))
    assert store.load()[0].all()  # the earlier save is untouched


def test_failed_save_keeps_the_previous_corrections(tmp_path):
    """A save that fails mid-write leaves the previous file as it was, and no temp file."""
    store = C.CorrectionStore(tmp_path / "c")
    store.save(np.ones((16, 16), np.uint8), [0], [0])
    before = store.path.read_bytes()
    with pytest.raises((KeyError, TypeError, ValueError)):  # tifffile cannot write objects: fails mid-write
        store.save(np.array([[object()] * 16] * 16, dtype=object), [], [])
    assert store.path.read_bytes() == before
    assert sorted(os.listdir(tmp_path / "c")) == ["corrections.tif"]


@pytest.mark.parametrize("garbage", [b"not a tif at all", b"II*\x00\x08\x00\x00\x00garbage", b""])
def test_damaged_corrections_raise_value_error_naming_the_folder(tmp_path, garbage):
    folder = tmp_path / "img.tif.napari-unet"
    store = C.CorrectionStore(folder)
    store.save(np.ones((16, 16), np.uint8), [], [])
    store.path.write_bytes(garbage)
    with pytest.raises(ValueError) as info:
        store.load()
    assert str(folder) in str(info.value)


def test_truncated_corrections_raise_value_error(tmp_path):
    store = C.CorrectionStore(tmp_path / "c")
    store.save(np.random.default_rng(0).integers(0, 3, (4, 64, 64)).astype(np.uint8), [], [])
    data = store.path.read_bytes()
    store.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=str(tmp_path / "c").replace("\\", "\\\\")):
        store.load()


def test_plain_tif_without_state_is_refused_readably(tmp_path):
    """A corrections.tif that is some other tif (no napari-unet state) is reported, not half-loaded."""
    folder = tmp_path / "c"
    folder.mkdir()
    _tif(folder / "corrections.tif", np.ones((16, 16), np.uint8))
    with pytest.raises(ValueError, match="could not be read"):
        C.CorrectionStore(folder).load()


# ======================================================================================
# Files: atomic_write, check_writable, free_path
# ======================================================================================


def _write_bytes(data: bytes):
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return write


def test_atomic_write_keeps_umask_and_gives_0644(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "out.bin", _write_bytes(b"hello"))
        current = os.umask(0o022)  # read back (and keep 0o022)
        assert current == 0o022
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert path.read_bytes() == b"hello"
        os.umask(0o077)
        private = atomic_write(tmp_path / "private.bin", _write_bytes(b"x"))
        assert os.umask(0o022) == 0o077
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_atomic_write_replaces_and_failures_keep_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, _write_bytes(b"old"))
    atomic_write(path, _write_bytes(b"new"))
    assert path.read_bytes() == b"new"

    def fail(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_check_writable_creates_folders(tmp_path):
    folder = tmp_path / "a" / "b"
    assert check_writable(folder) == folder and folder.is_dir()
    assert os.listdir(folder) == []  # the probe file is removed


def test_check_writable_names_a_folder_it_cannot_create(tmp_path):
    """A folder 'inside' an existing regular file cannot exist (chmod tricks fail as root)."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    for folder in (blocker / "sub", blocker / "sub" / "deeper", blocker):
        with pytest.raises(ValueError) as info:
            check_writable(folder)
        assert str(folder) in str(info.value)
    assert blocker.read_text() == "I am a file"


def test_free_path_never_returns_an_existing_path(tmp_path):
    path = tmp_path / "model.pt"
    assert free_path(path) == path
    seen = set()
    for _ in range(5):
        candidate = free_path(path)
        assert not candidate.exists() and candidate not in seen and candidate.parent == tmp_path
        assert candidate.suffix == ".pt"
        candidate.write_bytes(b"")
        seen.add(candidate)
    assert {p.name for p in seen} == {"model.pt", "model_2.pt", "model_3.pt", "model_4.pt", "model_5.pt"}
    (tmp_path / "model_7.pt").mkdir()  # a folder in the way counts too
    (tmp_path / "model_6.pt").write_bytes(b"")
    assert free_path(path) == tmp_path / "model_8.pt"


# ======================================================================================
# Images: check_images, normalize
# ======================================================================================


def _finite_noise(shape=(1, 32, 32, 1), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _nan_slice() -> np.ndarray:
    images = _finite_noise((3, 32, 32, 1))
    images[1] = np.nan
    images[1, 0, 0] = np.inf
    return images


@pytest.mark.parametrize(
    "images, words",
    [
        (np.zeros((1, 1, 1, 1), np.uint8), "1x1"),
        (np.arange(15, dtype=np.uint8).reshape(1, 3, 5, 1), "3x5"),
        (np.arange(15 * 40, dtype=np.uint16).reshape(1, 15, 40, 1), "15x40"),
        (np.full((1, 32, 32, 1), np.nan, np.float32), "no finite value"),
        (np.full((2, 32, 32, 1), np.inf, np.float64), "no finite value"),
        (np.full((1, 32, 32, 3), -np.inf, np.float32), "no finite value"),
        (_nan_slice(), "slice(s) [1]"),
        (np.full((1, 32, 32, 1), 7, np.uint8), "same value"),
        (np.full((2, 32, 32, 1), 0.25, np.float32), "same value"),
        (np.where(np.eye(32, dtype=bool)[None, ..., None], np.nan, 3.0).astype(np.float32), "same value"),
        (np.zeros((1, 32, 32, 1), bool), "same value"),
    ],
    ids=["1x1", "3x5", "15x40", "all-nan", "all-inf", "all-minus-inf-rgb", "nan-slice", "const-uint8",
         "const-float", "const-plus-nan", "all-false"],
)
def test_check_images_refuses_what_cannot_be_segmented(images, words):
    with pytest.raises(DataError) as info:
        check_images(images, "'x.tif'")
    message = str(info.value)
    assert words in message and message.startswith("'x.tif'"), message
    assert "\n" not in message


def test_check_images_accepts_16x16():
    assert check_images(_finite_noise((1, 16, 16, 1))) == ""


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_check_images_clean_input_has_no_note(dtype):
    images = (_finite_noise((2, 24, 40, 1)) * 200).astype(dtype)
    assert check_images(images) == ""
    assert check_images(np.repeat(images, 3, axis=-1)) == ""


def test_check_images_notes_nan_pixels():
    images = _finite_noise((2, 32, 32, 1))
    images[0, :2, :3] = np.nan
    images[1, 5, 5] = np.inf
    note = check_images(images)
    assert "NaN" in note and "7" in note


def test_normalize_makes_nan_and_inf_dark_and_finite():
    images = _finite_noise((2, 32, 32, 1)) * 1000
    bad = np.zeros(images.shape, bool)
    bad[0, :4, :4] = True
    bad[1, 10, :] = True
    images[0, :4, :4] = np.nan
    images[1, 10, :16] = np.inf
    images[1, 10, 16:] = -np.inf
    out = normalize(images)
    assert out.dtype == np.float32 and out.shape == images.shape
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(out[bad] == 0.0)
    # The finite pixels are scaled as if the bad ones were absent.
    clean = normalize(np.where(bad, images[~bad].mean(), images))
    assert np.abs(out[~bad] - clean[~bad]).max() < 0.02


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_normalize_clean_images_span_0_to_1(dtype):
    images = (_finite_noise((2, 32, 32, 1), seed=4) * 250).astype(dtype)
    out = normalize(images)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert out.min() == 0.0 and out.max() == 1.0


def test_float64_beyond_float32_range_is_not_silently_darkened():
    """A float64 image must keep its contrast once normalised, or be refused with a message.

    Values up to float32's 3.4e38 are scaled like any others (a bright-to-dark ramp stays
    a ramp); beyond it (e.g. a badly scaled export) the image is refused and told how to
    rescale it, never turned into the darkest value without a note.
    """
    ramp = np.linspace(1.0, 2.0, 32 * 32).reshape(1, 32, 32, 1)
    for scale in (1.0, 1e30, 1.5e38):
        images = ramp * scale
        assert check_images(images) == "", scale
        out = normalize(images)
        assert out[0, -1, -1, 0] == 1.0 and out[0, 0, 0, 0] == 0.0, (scale, out.min(), out.max())
        assert np.all(np.diff(out.ravel()) >= 0), scale
    with pytest.raises(DataError, match="rescale"):
        check_images(ramp * 1e39)
