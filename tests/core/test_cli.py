"""The CLI contract: end-to-end on real ISBI slices, and every bad-input case."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import main
from napari_unet.core.checkpoint import default_metadata, load_checkpoint, save_checkpoint
from napari_unet.core.model import UNet, UNetConfig


def _write(path, array):
    tifffile.imwrite(path, array, photometric="minisblack")
    return str(path)


@pytest.fixture(scope="module")
def isbi_files(isbi_stack, tmp_path_factory):
    """Six real ISBI slices (cropped to 160x160) as an image stack and label stack."""
    folder = tmp_path_factory.mktemp("isbi")
    images = isbi_stack.images[:6, :160, :160, 0]
    raw_labels = np.where(isbi_stack.labels[:6, :160, :160] == 1, 0, 255).astype(np.uint8)  # ISBI style
    return {"images": _write(folder / "img.tif", images), "labels": _write(folder / "lbl.tif", raw_labels),
            "truth": _write(folder / "truth.tif", isbi_stack.labels[4:6, :160, :160]),
            "test": _write(folder / "test.tif", images[4:6]), "folder": folder}


@pytest.fixture()
def tiny_model(tmp_path):
    torch.manual_seed(0)
    return str(save_checkpoint(tmp_path / "tiny.pt", UNet(UNetConfig(base_width=4, depth=2)), default_metadata("em")))


def test_train_predict_evaluate_end_to_end(isbi_files, tmp_path, capsys):
    model = tmp_path / "em.pt"
    code = main(["train", "--images", isbi_files["images"], "--labels", isbi_files["labels"], "--invert-labels",
                 "--out", str(model), "--steps", "4", "--crop-size", "64", "--batch-size", "2",
                 "--base-width", "8", "--depth", "2", "--val-slices", "4-5", "--device", "cpu"])
    assert code == 0 and model.is_file()
    assert "trained 4 steps" in capsys.readouterr().out

    # Fine-tune the model just trained (--from), as the GUI's one-click does.
    tuned = tmp_path / "tuned.pt"
    assert main(["train", "--images", isbi_files["images"], "--labels", isbi_files["labels"], "--invert-labels",
                 "--from", str(model), "--out", str(tuned), "--steps", "2", "--crop-size", "64",
                 "--no-val", "--device", "cpu"]) == 0
    assert tuned.is_file()

    mask, prob, cells = tmp_path / "mask.tif", tmp_path / "prob.tif", tmp_path / "cells.tif"
    assert main(["predict", isbi_files["test"], "--model", str(tuned), "--out", str(mask),
                 "--probabilities", str(prob), "--instances", str(cells), "--device", "cpu", "--tile", "64"]) == 0
    assert "predicted 2 slice(s) of 160x160" in capsys.readouterr().out
    m, p, c = tifffile.imread(mask), tifffile.imread(prob), tifffile.imread(cells)
    assert m.shape == p.shape == c.shape == (2, 160, 160)
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1} and p.dtype == np.float32
    assert c.dtype == np.uint32 and (c[m == 1] == 0).all()
    assert main(["predict", isbi_files["test"], "--model", str(tuned), "--out", str(tmp_path / "other.tif"),
                 "--instances", str(tmp_path / "other.tif"), "--device", "cpu"]) == 2
    assert "same file" in capsys.readouterr().err

    for pred in (mask, prob):
        assert main(["evaluate", "--pred", str(pred), "--truth", isbi_files["truth"], "--task", "em", "--json"]) == 0
        scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert {"dice", "iou", "pixel_accuracy", "vrand", "vinfo"} <= set(scores)
        assert all(0 <= v <= 1 for v in scores.values())


def test_fine_tune_from_two_corrected_slices_and_their_edits(isbi_files, tiny_model, tmp_path, capsys):
    edited = np.zeros((6, 160, 160), np.uint8)
    edited[1, 40:60, 40:60] = 1
    tuned = tmp_path / "tuned.pt"
    base = ["train", "--images", isbi_files["images"], "--labels", isbi_files["labels"], "--invert-labels",
            "--from", tiny_model, "--steps", "4", "--crop-size", "64", "--batch-size", "2", "--device", "cpu"]
    assert main(base + ["--out", str(tuned), "--slices", "1", "3", "--edited",
                        _write(tmp_path / "edited.tif", edited)]) == 0
    out = capsys.readouterr()
    assert "each corrected slice held out in turn" in out.err and str(tuned) in out.out
    record = load_checkpoint(tuned).metadata["history"][-1]
    assert record["corrected_slices"] == [1, 3] and record["fine_tune"]["guard_name"] == "V_Rand"
    # Seed 0, 4 steps of a random tiny model: both slices held out in turn, no gain, the start kept.
    assert [f["held_out"] for f in record["fine_tune"]["folds"]] == [[1], [3]]
    assert record["fine_tune"]["outcome"] == "no gain" and not record["fine_tune"]["kept"]
    # Each corrected slice is held out in turn: no --val-slices; the edits match the labels.
    _bad(base + ["--out", str(tmp_path / "x.pt"), "--slices", "1", "3", "--val-slices", "2"], capsys,
         "holds out each corrected slice in turn")
    err = _bad(base + ["--out", str(tmp_path / "x.pt"), "--edited", _write(tmp_path / "small.tif", edited[:, :50])],
               capsys, "--edited small.tif has shape (6, 50, 160) (Z, Y, X) but the images have (6, 160, 160)")
    assert "have shape" not in err and "a mask of the pixels you painted" in err, err
    _bad(["train", "--images", isbi_files["images"], "--labels", isbi_files["labels"], "--out", str(tmp_path / "x.pt"),
          "--slices", "1"], capsys, "Only a fine-tune of corrections takes --slices")
    assert not (tmp_path / "x.pt").exists()


def test_fundus_evaluate_json_keys(drive_dir, capsys):
    truth = drive_dir / "test" / "1st_manual" / "01_manual1.gif"
    fov = drive_dir / "test" / "mask" / "01_test_mask.gif"
    assert main(["evaluate", "--pred", str(truth), "--truth", str(truth), "--fov", str(fov),
                 "--task", "fundus", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"dice", "iou", "pixel_accuracy", "se", "sp", "acc", "f1"} <= set(scores)
    assert scores["f1"] == 1.0 and "auc" not in scores  # a mask has no AUC


def test_predict_a_single_2d_image_and_a_folder(isbi_dir, tiny_model, tmp_path):
    out = tmp_path / "one.tif"
    assert main(["predict", str(isbi_dir / "train" / "image" / "0.png"), "--model", tiny_model,
                 "--out", str(out), "--device", "cpu"]) == 0
    assert tifffile.imread(out).shape == (512, 512)
    folder = tmp_path / "slices"
    folder.mkdir()
    for n in (0, 1):
        (folder / f"{n}.png").write_bytes((isbi_dir / "train" / "image" / f"{n}.png").read_bytes())
    assert main(["predict", str(folder), "--model", tiny_model, "--out", str(tmp_path / "f.tif"),
                 "--device", "cpu"]) == 0
    assert tifffile.imread(tmp_path / "f.tif").shape == (2, 512, 512)


def _bad(argv, capsys, expect):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert expect.lower() in err.lower(), err
    return err


def test_bad_inputs_exit_2_with_one_line(isbi_files, tiny_model, tmp_path, capsys):
    out = tmp_path / "out.tif"
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00garbage")
    rgb = _write(tmp_path / "rgb.tif", np.zeros((40, 40, 3), np.uint8))
    weird = _write(tmp_path / "5d.tif", np.zeros((2, 2, 2, 8, 8), np.uint8))
    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_bytes(b"not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    other_shape = _write(tmp_path / "other.tif", np.zeros((6, 100, 100), np.uint8))
    empty = _write(tmp_path / "empty.tif", np.zeros((6, 160, 160), np.uint8))
    predict = ["predict", "--out", str(out), "--device", "cpu"]
    _bad(predict + [str(tmp_path / "missing.tif"), "--model", tiny_model], capsys, "does not exist")
    _bad(predict + [str(corrupt), "--model", tiny_model], capsys, "corrupt")
    _bad(predict + [weird, "--model", tiny_model], capsys, "shape")
    _bad(predict + [rgb, "--model", tiny_model], capsys, "RGB")
    _bad(predict + [isbi_files["test"], "--model", str(bad_ckpt)], capsys, "checkpoint")
    _bad(predict + [isbi_files["test"], "--model", str(foreign)], capsys, "not a napari-unet checkpoint")
    _bad(predict + [isbi_files["test"], "--model", "em-membranez"], capsys, "built-in name")
    _bad(predict + [isbi_files["test"]], capsys, "--model")
    assert not out.exists()
    train = ["train", "--images", isbi_files["images"], "--out", str(tmp_path / "m.pt"), "--steps", "1"]
    _bad(train + ["--labels", other_shape], capsys, "shape")
    _bad(train + ["--labels", empty], capsys, "no foreground")
    _bad(train + ["--labels", isbi_files["labels"], "--invert-labels", "--from", tiny_model, "--val-slices", "9"],
         capsys, "holds out each corrected slice")
    assert not (tmp_path / "m.pt").exists()
    _bad(["evaluate", "--pred", other_shape, "--truth", isbi_files["truth"], "--task", "em"], capsys, "shape")
    _bad(["evaluate", "--pred", isbi_files["truth"], "--truth", empty[:-4] + ".tif", "--task", "em"], capsys, "shape")
    _bad(["evaluate", "--pred", isbi_files["truth"], "--truth", isbi_files["truth"], "--task", "xray"], capsys,
         "invalid choice")
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_existing_output_needs_force(isbi_files, tiny_model, tmp_path, capsys):
    out = tmp_path / "out.tif"
    out.write_bytes(b"the user's precious file")
    argv = ["predict", isbi_files["test"], "--model", tiny_model, "--out", str(out), "--device", "cpu"]
    _bad(argv, capsys, "--force")
    assert out.read_bytes() == b"the user's precious file"
    assert main(argv + ["--force"]) == 0
    assert tifffile.imread(out).shape == (2, 160, 160)


def test_no_gpu_asked_for(isbi_files, tiny_model, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    _bad(["predict", isbi_files["test"], "--model", tiny_model, "--out", str(tmp_path / "o.tif"), "--device", "cuda"],
         capsys, "No CUDA GPU")


def test_console_script_runs_as_a_program(tmp_path):
    """The installed entry point: a real process, exit code 2 and one line for bad input."""
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "predict", str(tmp_path / "nope.tif"),
                             "--model", "x.pt", "--out", str(tmp_path / "o.tif")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("napari-unet: error:") and "Traceback" not in result.stderr


def test_gui_without_a_display_explains(tmp_path):
    """On a server without X, asking for a window says what to do instead of crashing Qt."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "gui", "--screenshot", str(tmp_path / "s.png")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "No display found" in result.stderr and "xvfb-run" in result.stderr
    assert not (tmp_path / "s.png").exists()


def test_predict_at_another_pixel_size(isbi_files, tmp_path, capsys):
    """--pixel-size resamples to the model's pixel size and back: same Z/Y/X out."""
    out = tmp_path / "mask.tif"
    assert main(["predict", isbi_files["test"], "--model", "em-membranes", "--pixel-size", "6", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert tifffile.imread(out).shape == (2, 160, 160)


# ---------------------------------------------------------------- each command is a Python function


def test_predict_and_evaluate_are_python_functions(tiny_model, tmp_path, capsys):
    """The handlers run in-process with typed arguments (no argv), on the shipped EM sample,
    and answer with what they wrote or scored; bad input raises instead of exiting."""
    from napari_unet.cli.evaluate import evaluate
    from napari_unet.cli.predict import PredictOutputs, predict
    from napari_unet.core.samples import SAMPLE_FILES, SAMPLES_DIR

    image, labels = (SAMPLES_DIR / SAMPLE_FILES[key] for key in ("em_image", "em_labels"))
    written = predict(image, tiny_model, tmp_path / "mask.tif", probabilities=tmp_path / "prob.tif", device="cpu",
                      tile=64, overlap=0.5, threshold=0.4, batch_size=8)
    assert written == PredictOutputs(tmp_path / "mask.tif", tmp_path / "prob.tif", None)
    mask, prob = tifffile.imread(written.mask), tifffile.imread(written.probabilities)
    assert mask.shape == prob.shape == tifffile.imread(image).shape[:3] and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, (prob > 0.4).astype(np.uint8))  # the threshold given, not the model's
    assert "predicted 5 slice(s) of 384x384" in capsys.readouterr().out
    scores = evaluate(written.mask, labels, "em")
    assert {"dice", "vrand"} <= set(scores) and 0 <= scores["dice"] <= 1
    with pytest.raises(FileExistsError, match="--force"):
        predict(image, tiny_model, written.mask, device="cpu")
    with pytest.raises(ValueError, match="--levels"):
        predict(image, tiny_model, tmp_path / "other.tif", levels="stack", device="cpu")
    assert not (tmp_path / "other.tif").exists()


def test_every_handler_is_typed_and_beside_its_options():
    """Each command module has its options (add_arguments), the command line's call (run)
    and a typed handler: every parameter and the result annotated."""
    import inspect

    from napari_unet import cli
    from napari_unet.cli import cluster, evaluate, export, finetune, gui, predict, pyramid, suggest, train

    assert set(cli.COMMANDS) == {"predict", "suggest", "train", "evaluate", "export", "pyramid", "gui"}
    for module, _help in cli.COMMANDS.values():
        assert callable(module.add_arguments) and callable(module.run), module.__name__
    handlers = [predict.predict, cluster.predict_on_cluster, suggest.suggest, train.train_from_scratch,
                finetune.fine_tune, finetune.fine_tune_montage, evaluate.evaluate, export.export, pyramid.pyramid,
                gui.gui]
    for handler in handlers:
        signature = inspect.signature(handler)
        untyped = [name for name, p in signature.parameters.items() if p.annotation is inspect.Parameter.empty]
        assert not untyped and signature.return_annotation is not inspect.Signature.empty, (handler, untyped)
