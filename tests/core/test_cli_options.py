"""The CLI's numeric options and image checks: bad values are refused before any work.

The contract (napari_unet/cli/): bad input prints exactly one line on stderr saying what
is wrong, exits with code 2 and leaves no output file. Each bad value is given on top of
a command that otherwise works (checked by the positive controls), so a refusal is due
to that value alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import build_parser, main
from napari_unet.core.checkpoint import default_metadata, save_checkpoint
from napari_unet.core.model import UNet, UNetConfig


def _write(path, array):
    tifffile.imwrite(path, array, photometric="minisblack")
    return str(path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained 2-level U-Net of width 4 (a few kB): predicts 64x64 tiles in milliseconds."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    return str(save_checkpoint(path, UNet(UNetConfig(base_width=4, depth=2)), default_metadata("em", tile_size=64)))


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """Four 32x32 grey slices with 0/1 membrane labels, as tif files."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    labels = np.zeros((4, 32, 32), np.uint8)
    labels[:, ::8, :] = 1
    labels[:, :, ::8] = 1
    images = (200 - 120 * labels + rng.integers(0, 40, labels.shape)).astype(np.uint8)
    return {"images": _write(folder / "img.tif", images), "labels": _write(folder / "lbl.tif", labels)}


def _train_argv(small_data, out):
    return ["train", "--images", small_data["images"], "--labels", small_data["labels"], "--out", str(out),
            "--steps", "1", "--crop-size", "32", "--batch-size", "1", "--base-width", "4", "--depth", "2",
            "--device", "cpu"]


def _predict_argv(image, model, out):
    return ["predict", str(image), "--model", model, "--out", str(out), "--device", "cpu"]


def _refused(argv, capsys) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr; return that line."""
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, captured.out, err)
    assert len(err.splitlines()) == 1, err
    assert err.startswith("napari-unet: error:") and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- positive controls


def test_valid_train_command_writes_a_checkpoint(small_data, tmp_path, capsys):
    """The base command used below works: refusals are due to the bad value alone."""
    out = tmp_path / "m.pt"
    assert main(_train_argv(small_data, out)) == 0, capsys.readouterr().err
    assert out.is_file()


def test_valid_predict_command_writes_a_mask(small_data, tiny_model, tmp_path, capsys):
    out = tmp_path / "mask.tif"
    assert main(_predict_argv(small_data["images"], tiny_model, out)) == 0, capsys.readouterr().err
    mask = tifffile.imread(out)
    assert mask.shape == (4, 32, 32) and mask.dtype == np.uint8


# ---------------------------------------------------------------- bad option values

TRAIN_BAD = [
    ("--steps", "0"),
    ("--steps", "-5"),
    ("--steps", "abc"),
    ("--steps", "1.5"),
    ("--lr", "0"),
    ("--lr", "-1"),
    ("--lr", "1.5"),
    ("--lr", "nan"),
    ("--lr", "abc"),
    ("--crop-size", "3"),
    ("--crop-size", "0"),
    ("--batch-size", "0"),
    ("--batch-size", "-2"),
    ("--base-width", "0"),
    ("--base-width", "1"),
    ("--depth", "0"),
    ("--depth", "8"),
    ("--seed", "-1"),
]


@pytest.mark.parametrize("option, value", TRAIN_BAD, ids=[f"{o}={v}" for o, v in TRAIN_BAD])
def test_train_rejects_bad_numbers(small_data, tmp_path, capsys, option, value):
    out = tmp_path / "m.pt"
    err = _refused(_train_argv(small_data, out) + [option, value], capsys)
    assert option in err and value in err, err
    assert f"e.g. {option} " in err, err  # its own validator: what to type for this option
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


PREDICT_BAD = [
    ("--tile", "4"),
    ("--pixel-size", "0"),
    ("--pixel-size", "-4"),
    ("--pixel-size", "nan"),
    ("--tile", "15"),
    ("--tile", "100000"),
    ("--tile", "64.5"),
    ("--overlap", "1.5"),
    ("--overlap", "-0.1"),
    ("--overlap", "0.95"),
    ("--overlap", "nan"),
    ("--threshold", "2"),
    ("--threshold", "-0.5"),
    ("--threshold", "nan"),
    ("--threshold", "inf"),
    ("--threshold", "half"),
    ("--batch-size", "0"),
    ("--batch-size", "2000"),
]


@pytest.mark.parametrize("option, value", PREDICT_BAD, ids=[f"{o}={v}" for o, v in PREDICT_BAD])
def test_predict_rejects_bad_numbers(small_data, tiny_model, tmp_path, capsys, option, value):
    out, prob = tmp_path / "mask.tif", tmp_path / "prob.tif"
    err = _refused(_predict_argv(small_data["images"], tiny_model, out) + ["--probabilities", str(prob),
                                                                          option, value], capsys)
    assert option in err and value in err, err
    assert f"e.g. {option} " in err, err
    assert not out.exists() and not prob.exists()
    assert list(tmp_path.iterdir()) == []


GOOD = [
    ("train", "--steps", "1", "steps", 1),
    ("train", "--lr", "1", "lr", 1.0),
    ("train", "--lr", "1e-6", "lr", 1e-6),
    ("train", "--crop-size", "16", "crop_size", 16),
    ("train", "--batch-size", "1024", "batch_size", 1024),
    ("train", "--base-width", "2", "base_width", 2),
    ("train", "--depth", "7", "depth", 7),
    ("train", "--seed", "0", "seed", 0),
    ("predict", "--tile", "16", "tile", 16),
    ("predict", "--tile", "8192", "tile", 8192),
    ("predict", "--overlap", "0", "overlap", 0.0),
    ("predict", "--overlap", "0.9", "overlap", 0.9),
    ("predict", "--threshold", "0", "threshold", 0.0),
    ("predict", "--threshold", "1", "threshold", 1.0),
    ("predict", "--batch-size", "1", "batch_size", 1),
]


@pytest.mark.parametrize("command, option, value, attr, expected", GOOD, ids=[f"{c} {o}={v}" for c, o, v, *_ in GOOD])
def test_boundary_values_are_accepted(command, option, value, attr, expected):
    """The limits named in the messages are inclusive (except the learning rate's 0)."""
    base = {"train": ["train", "--images", "i.tif", "--labels", "l.tif", "--out", "m.pt"],
            "predict": ["predict", "i.tif", "--model", "m.pt", "--out", "o.tif"]}[command]
    args = build_parser().parse_args(base + [option, value])
    assert getattr(args, attr) == expected


def test_each_option_says_what_it_takes(small_data, tiny_model, tmp_path, capsys):
    """A validator names its own option and what to type (once one shared validator said
    "give a number of workers from 1" for `suggest --top 0`)."""
    err = _refused(["suggest", small_data["images"], "--model", tiny_model, "--top", "0"], capsys)
    assert "--top: 0 is out of range: give the number of slices to list, at least 1, e.g. --top 10" in err, err
    assert "worker" not in err, err
    assert "worker processes" in _refused(_predict_argv(small_data["images"], tiny_model, tmp_path / "m.zarr")
                                          + ["--workers", "0"], capsys)
    # --batch-size is tiles to predict, crops to train on: each says which.
    assert "tiles per batch" in _refused(_predict_argv(small_data["images"], tiny_model, tmp_path / "m.tif")
                                         + ["--batch-size", "0"], capsys)
    assert "crops per step" in _refused(_train_argv(small_data, tmp_path / "m.pt") + ["--batch-size", "0"], capsys)
    assert list(tmp_path.iterdir()) == []


MISPLACED = [
    (["--slices", "1"], "Only a fine-tune of corrections takes --slices: add --from MODEL, or leave out "
     "--slices."),
    (["--slices", "1", "--edited", "e.tif"], "Only a fine-tune of corrections takes --slices and --edited"),
    (["--from", "em-membranes", "--depth", "3", "--task", "em"], "A fine-tune keeps the kind and shape of --from "
     "em-membranes: leave out --task and --depth (for a new model only)."),
    (["--from", "em-membranes", "--val-slices", "2"], "holds out each corrected slice in turn"),
    (["--no-val", "--val-slices", "2"], "--val-slices holds slices out for validation and --no-val trains on all "
     "of them: give one of them"),
]


@pytest.mark.parametrize("extra, words", MISPLACED, ids=[" ".join(m[0]) for m in MISPLACED])
def test_options_of_another_mode_are_refused_before_reading(tmp_path, capsys, extra, words):
    """`train` has three modes: an option of another one is refused by name, before any
    file is read (the images named here do not exist)."""
    argv = ["train", "--images", str(tmp_path / "none.tif"), "--labels", str(tmp_path / "none_labels.tif"),
            "--out", str(tmp_path / "m.pt"), *extra]
    err = _refused(argv, capsys)
    assert words in err and "does not exist" not in err, err


def test_a_mask_of_another_shape_is_named_by_its_option(small_data, tiny_model, tmp_path, capsys):
    fov = _write(tmp_path / "fov.tif", np.ones((2, 16, 16), np.uint8))
    err = _refused(_predict_argv(small_data["images"], tiny_model, tmp_path / "m.tif") + ["--fov", fov], capsys)
    assert "--fov fov.tif has shape (2, 16, 16) (Z, Y, X) but the images have (4, 32, 32)" in err, err
    assert "a field-of-view mask of the images' size, one for every slice or one per slice" in err, err
    assert not (tmp_path / "m.tif").exists()


def test_an_output_of_the_wrong_kind_says_what_to_name_it(small_data, tiny_model, tmp_path, capsys):
    err = _refused(_predict_argv(small_data["images"], tiny_model, tmp_path / "mask.png"), capsys)
    assert "--out mask.png: give a name ending in .tif, .tiff or .zarr, e.g. --out mask.tif" in err, err
    err = _refused(_predict_argv(small_data["images"], tiny_model, tmp_path / "m.tif")
                   + ["--probabilities", str(tmp_path / "nowhere" / "p.tif")], capsys)
    assert "--probabilities" in err and "does not exist: create it first" in err, err


def test_train_is_a_python_function(small_data, tmp_path, capsys):
    """`train_from_scratch` runs in-process with typed arguments and returns the checkpoint."""
    from napari_unet.cli.train import train_from_scratch
    from napari_unet.core.checkpoint import load_checkpoint

    out = train_from_scratch(small_data["images"], small_data["labels"], tmp_path / "m.pt", base_width=4, depth=2,
                             steps=1, crop_size=32, batch_size=1, device="cpu")
    assert out == tmp_path / "m.pt" and load_checkpoint(out).config.base_width == 4
    assert "trained 1 steps" in capsys.readouterr().out


# ---------------------------------------------------------------- images that cannot be segmented


def _nan_image():
    return np.full((32, 32), np.nan, np.float32)


def _inf_image():
    return np.full((32, 32), np.inf, np.float32)


def _nan_slice_stack():
    stack = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    stack[2] = np.nan
    return stack


BAD_IMAGES = [
    ("all-nan", _nan_image, "no finite value"),
    ("all-inf", _inf_image, "no finite value"),
    ("nan-slice", _nan_slice_stack, "slice(s) [2]"),
    ("constant", lambda: np.full((32, 32), 42, np.uint8), "same value"),
    ("constant-float", lambda: np.full((32, 32), 0.5, np.float32), "same value"),
    ("3x5", lambda: np.arange(15, dtype=np.uint8).reshape(3, 5), "3x5"),
    ("1x1", lambda: np.ones((1, 1), np.uint8), "too small"),
]


@pytest.mark.parametrize("make, words", [b[1:] for b in BAD_IMAGES], ids=[b[0] for b in BAD_IMAGES])
def test_predict_refuses_images_that_cannot_be_segmented(tiny_model, tmp_path, capsys, make, words):
    image = _write(tmp_path / "bad.tif", make())
    out, prob = tmp_path / "mask.tif", tmp_path / "prob.tif"
    err = _refused(_predict_argv(image, tiny_model, out) + ["--probabilities", str(prob)], capsys)
    assert words in err and "bad.tif" in err, err
    assert not out.exists() and not prob.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif"]


def test_predict_with_a_few_nan_pixels_works_and_says_so(tiny_model, tmp_path, capsys):
    """A few NaN pixels are repaired (treated as dark), the mask is written, and a note says so."""
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    image[10:12, 20:25] = np.nan
    image[40, 40] = np.inf
    path = _write(tmp_path / "holes.tif", image)
    out = tmp_path / "mask.tif"
    capsys.readouterr()
    code = main(_predict_argv(path, tiny_model, out) + ["--probabilities", str(tmp_path / "prob.tif")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "NaN" in notes[0] and "11" in notes[0], captured.err
    mask, prob = tifffile.imread(out), tifffile.imread(tmp_path / "prob.tif")
    assert mask.shape == prob.shape == (64, 64) and set(np.unique(mask)) <= {0, 1}
    assert np.isfinite(prob).all() and 0 <= prob.min() and prob.max() <= 1
    assert "predicted 1 slice(s) of 64x64" in captured.out


def test_clean_image_predicts_without_a_note(tiny_model, tmp_path, capsys):
    path = _write(tmp_path / "clean.tif", np.random.default_rng(2).random((64, 64)).astype(np.float32))
    capsys.readouterr()
    assert main(_predict_argv(path, tiny_model, tmp_path / "mask.tif")) == 0
    assert "note:" not in capsys.readouterr().err


def test_train_with_nan_pixels_says_so(tmp_path, capsys):
    """Training data with a few NaN pixels train, with the same note as predict."""
    rng = np.random.default_rng(3)
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, ::8] = 1
    images = (rng.random((2, 32, 32)) + labels).astype(np.float32)
    images[0, 3, 3:6] = np.nan
    argv = ["train", "--images", _write(tmp_path / "i.tif", images), "--labels", _write(tmp_path / "l.tif", labels),
            "--out", str(tmp_path / "m.pt"), "--steps", "1", "--crop-size", "32", "--batch-size", "1",
            "--base-width", "4", "--depth", "2", "--device", "cpu"]
    capsys.readouterr()
    assert main(argv) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "NaN" in notes[0] and "3 " in notes[0]
    assert (tmp_path / "m.pt").is_file()


@pytest.mark.parametrize("make, words", [b[1:] for b in BAD_IMAGES if b[0] != "nan-slice"],
                         ids=[b[0] for b in BAD_IMAGES if b[0] != "nan-slice"])
def test_train_refuses_images_that_cannot_be_segmented(tmp_path, capsys, make, words):
    image = make()
    labels = np.zeros(image.shape, np.uint8)
    labels.flat[::3] = 1
    out = tmp_path / "m.pt"
    argv = ["train", "--images", _write(tmp_path / "bad.tif", image), "--labels", _write(tmp_path / "l.tif", labels),
            "--out", str(out), "--steps", "1", "--device", "cpu"]
    err = _refused(argv, capsys)
    assert words in err, err
    assert not out.exists()



# ---------------------------------------------------------------- an output is never an input


def test_an_output_is_never_an_input_even_with_force(small_data, tiny_model, tmp_path, capsys):
    """`predict img.tif --out img.tif --force` once replaced the image with its mask: --force
    is for the tool's own earlier outputs, never for an input of the command."""
    import shutil

    image = shutil.copy(small_data["images"], tmp_path / "img.tif")
    labels = shutil.copy(small_data["labels"], tmp_path / "lbl.tif")
    model = shutil.copy(tiny_model, tmp_path / "tiny.pt")
    package = tmp_path / "model.zip"
    package.write_bytes(b"a bioimage.io package")
    link = tmp_path / "link.tif"
    link.symlink_to(image)
    store = tmp_path / "volume.zarr"
    store.mkdir()
    (store / ".zgroup").write_text("{}")
    files = [image, labels, model, package, store / ".zgroup"]
    before = {p: open(p, "rb").read() for p in files}
    other = tmp_path / "mask.tif"
    train = ["--steps", "1", "--crop-size", "32", "--batch-size", "1", "--device", "cpu"]
    refused = [
        (_predict_argv(image, model, image), "--out", "is the input image"),
        (_predict_argv(image, model, link), "--out", "is the input image"),  # the same file through a link
        (_predict_argv(link, model, image), "--out", "is the input image"),
        (_predict_argv(image, model, other) + ["--probabilities", image], "--probabilities", "is the input image"),
        (_predict_argv(image, model, other) + ["--instances", labels, "--fov", labels], "--instances",
         "is the --fov mask"),
        (_predict_argv(store, model, store / "mask.zarr"), "--out", "is inside the input image"),
        (_predict_argv(store / "0", model, store), "--out", "holds the input image"),  # --force would delete it
        (_predict_argv(store / "0", model, store) + ["--workers", "1"], "--out", "holds the input image"),
        (["train", "--images", image, "--labels", labels, "--out", model, "--from", model] + train, "--out",
         "is the --from model"),
        (["export", "--model", package, "--out", package], "--out", "is the --model checkpoint"),
    ]
    for argv, option, words in refused:
        err = _refused([str(a) for a in argv] + ["--force"], capsys)
        assert f"{option} " in err and words in err and "never replaces an input" in err, err
        assert "Choose another name" in err, err
    assert {p: open(p, "rb").read() for p in files} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["img.tif", "lbl.tif", "tiny.pt", "model.zip",
                                                                 "link.tif", "volume.zarr"])
    assert sorted(p.name for p in store.iterdir()) == [".zgroup"]


def test_refuse_input_names_the_input(tmp_path):
    from napari_unet.core.files import refuse_input

    image = tmp_path / "img.tif"
    image.write_bytes(b"pixels")
    (tmp_path / "hard.tif").hardlink_to(image)
    with pytest.raises(ValueError, match=r"Save to .*hard.tif is the image \(.*img.tif\)"):
        refuse_input(tmp_path / "hard.tif", {"the image": image}, "Save to")
    assert refuse_input(tmp_path / "mask.tif", {"the image": image, "the model": None}) == tmp_path / "mask.tif"
