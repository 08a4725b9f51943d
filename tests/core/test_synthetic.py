"""The sample data: the shipped files and their reader, and the generator that made them
(sample_data/generate.py, outside the package: loaded here by its path)."""

import fnmatch
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_unet.core import samples
from napari_unet.core.samples import SAMPLE_FILES, SAMPLES_DIR

ROOT = Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("sample_data_generate", ROOT / "sample_data" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generate = _load_generator()
em_stack, fundus_image, write_samples = generate.em_stack, generate.fundus_image, generate.write_samples


@pytest.fixture(scope="module")
def em():
    return em_stack(0, (3, 256, 256))


@pytest.fixture(scope="module")
def fundus():
    return fundus_image(0)


# ---------------------------------------------------------------------------- determinism


def test_em_same_seed_same_stack_other_seed_differs():
    a_img, a_lab = em_stack(7, (2, 96, 128))
    b_img, b_lab = em_stack(7, (2, 96, 128))
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, c_lab = em_stack(8, (2, 96, 128))
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, c_lab)


def test_fundus_same_seed_same_image_other_seed_differs():
    a = fundus_image(3, (200, 180))
    b = fundus_image(3, (200, 180))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = fundus_image(4, (200, 180))
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


# ---------------------------------------------------------------------------- shapes and dtypes


def test_em_shapes_and_dtypes():
    image, labels = em_stack(1, (3, 80, 120))  # non-square: catches swapped axes
    assert image.shape == labels.shape == (3, 80, 120)
    assert image.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) <= {0, 1}


def test_fundus_shapes_and_dtypes(fundus):
    image, labels, fov = fundus
    assert image.shape == (584, 565, 3) and image.dtype == np.uint8
    assert labels.shape == fov.shape == (584, 565)
    assert labels.dtype == np.uint8 and fov.dtype == bool
    assert set(np.unique(labels).tolist()) == {0, 1}


def test_other_sizes_work():
    image, labels, fov = fundus_image(0, (120, 160))
    assert image.shape == (120, 160, 3) and fov.any() and labels.any()
    image, labels = em_stack(0, (1, 32, 32))
    assert image.shape == labels.shape == (1, 32, 32)


# ---------------------------------------------------------------------------- realism


def test_em_membrane_fraction_like_isbi(em):
    _, labels = em
    # ISBI 2012: ~22 % membrane.
    assert 0.15 < labels.mean() < 0.30
    assert all(0.12 < labels[z].mean() < 0.33 for z in range(labels.shape[0]))


def test_em_membranes_darker_than_interiors(em):
    image, labels = em
    membrane, interior = image[labels == 1].mean(), image[labels == 0].mean()
    # ISBI: membrane ~85, interior ~140 grey levels.
    assert interior - membrane > 40
    assert 60 < membrane < 110 and 120 < interior < 170


def test_em_slices_are_continuous_but_not_identical(em):
    _, labels = em
    overlap = (labels[0] & labels[1]).sum() / (labels[0] | labels[1]).sum()
    assert 0.15 < overlap < 0.9


def test_fundus_vessel_fraction_like_drive(fundus):
    _, labels, fov = fundus
    # DRIVE: ~12 % of the FOV pixels are vessel.
    assert 0.08 < labels[fov].mean() < 0.16


def test_fundus_vessels_darker_in_green(fundus):
    image, labels, fov = fundus
    green = image[..., 1].astype(float)
    vessel = np.median(green[(labels == 1) & fov])
    background = np.median(green[(labels == 0) & fov])
    assert background - vessel > 5
    # Mostly green: the red channel loses relatively less than the green one.
    red = image[..., 0].astype(float)
    red_drop = 1 - np.median(red[(labels == 1) & fov]) / np.median(red[(labels == 0) & fov])
    green_drop = 1 - vessel / background
    assert green_drop > red_drop


def test_fundus_outside_fov_is_dark_and_unlabelled(fundus):
    image, labels, fov = fundus
    assert not labels[~fov].any()
    assert image[~fov].max() < 20  # near-black, as in DRIVE (~7)
    assert image[fov].mean() > 60
    assert 0.6 < fov.mean() < 0.75  # a centred circle, like DRIVE's FOV (68 %)
    assert not fov[0, 0] and not fov[-1, -1] and fov[292, 282]


def test_fundus_colours_like_drive(fundus):
    image, labels, fov = fundus
    r, g, b = (np.median(image[..., c][fov & (labels == 0)]) for c in range(3))
    assert r > g > b  # orange-red retina
    assert 160 < r < 240 and 90 < g < 140 and 50 < b < 100


# ---------------------------------------------------------------------------- shipped files


def _read(path: Path) -> np.ndarray:
    if path.suffix == ".tif":
        return tifffile.imread(path)
    with Image.open(path) as img:
        return np.asarray(img)


def test_shipped_samples_match_generator(tmp_path):
    """The files in napari_unet/samples/ are what ``write_samples`` makes with the default seed.

    Same platform: bit-identical. Another CPU or library version may round an odd pixel
    differently (vectorised exp/tanh differ in the last bit), so up to 0.1 % of pixels may
    differ, by one grey level; a stale file after a generator change differs far more.
    """
    paths = write_samples(tmp_path)
    assert set(paths) == set(SAMPLE_FILES)
    for key, name in SAMPLE_FILES.items():
        shipped_path = SAMPLES_DIR / name
        assert shipped_path.is_file(), f"{name} missing: run python sample_data/generate.py"
        assert shipped_path.stat().st_size < 1_000_000
        shipped, fresh = _read(shipped_path), _read(paths[key])
        assert shipped.shape == fresh.shape and shipped.dtype == fresh.dtype, name
        differ = shipped != fresh
        if differ.any():
            assert differ.mean() < 1e-3, f"{name} is stale: run python sample_data/generate.py"
            assert np.abs(shipped.astype(int) - fresh.astype(int)).max() <= 1, name


def test_generator_writes_the_package_data_of_the_checkout():
    assert generate.TARGET == ROOT / "napari_unet" / "samples"
    assert generate.SAMPLE_EM_SHAPE == (5, 384, 384) and generate.SAMPLE_FUNDUS_SHAPE == (584, 565)


# ---------------------------------------------------------------------------- the reader


def test_em_sample_as_documented():
    images, labels = samples.em_sample()
    assert images.shape == labels.shape == (5, 384, 384)
    assert images.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 1}
    assert images.flags.writeable and labels.flags.writeable


def test_fundus_sample_as_documented():
    image, labels, fov = samples.fundus_sample()
    assert image.shape == (584, 565, 3) and image.dtype == np.uint8
    assert labels.shape == fov.shape == (584, 565)
    assert labels.dtype == np.uint8 and fov.dtype == bool
    assert set(np.unique(labels).tolist()) == {0, 1}
    assert not labels[~fov].any()
    np.testing.assert_array_equal(fov, _read(SAMPLES_DIR / SAMPLE_FILES["fundus_fov"]) == 255)
    assert all(a.flags.writeable for a in (image, labels, fov))


def test_every_sample_file_is_package_data():
    """A wheel carries only what [tool.setuptools.package-data] names: every file the reader
    opens must match one of its patterns (and nothing else lies in the folder)."""
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["napari_unet"]
    files = sorted(path.name for path in SAMPLES_DIR.iterdir())
    assert files == sorted(SAMPLE_FILES.values())
    for name in files:
        assert any(fnmatch.fnmatch(f"samples/{name}", pattern) for pattern in patterns), name
