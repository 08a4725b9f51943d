"""Shared test fixtures: the real data sets in ../shared/data (skipped when absent)."""

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ISBI_DIR = DATA_DIR / "isbi2012"
DRIVE_DIR = DATA_DIR / "drive"


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    if not (ISBI_DIR / "train-volume.tif").is_file():
        pytest.skip(f"ISBI 2012 data not found at {ISBI_DIR} (the project's ../shared/data is absent)")
    return ISBI_DIR


@pytest.fixture(scope="session")
def drive_dir() -> Path:
    if not (DRIVE_DIR / "test" / "images").is_dir():
        pytest.skip(f"DRIVE data not found at {DRIVE_DIR} (the project's ../shared/data is absent)")
    return DRIVE_DIR


@pytest.fixture(scope="session")
def isbi_stack(isbi_dir):
    from napari_unet.core.data import load_dataset

    return load_dataset(isbi_dir)


@pytest.fixture(autouse=True)
def napari_unet_home(tmp_path, monkeypatch):
    """Files that belong to no image (models, corrections of unsaved images, samples) go to
    tmp, never to the tester's home folder."""
    home = tmp_path / "napari-unet-home"
    monkeypatch.setenv("NAPARI_UNET_HOME", str(home))
    return home
