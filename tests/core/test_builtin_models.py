"""The built-in models: shipped, loadable by name, documented, and good on real data and samples."""

import os
import subprocess
import sys

import pytest

from napari_unet.core.checkpoint import BUILTIN_DIR, BUILTIN_MODELS, load_checkpoint
from napari_unet.core.data import load_dataset
from napari_unet.core.metrics import dice, fundus_scores
from napari_unet.core.pipeline import predict
from napari_unet.core.samples import em_sample, fundus_sample


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_shipped_small_with_a_model_card(name):
    path = BUILTIN_DIR / BUILTIN_MODELS[name]
    assert path.is_file() and path.stat().st_size <= 10_000_000
    card = path.with_suffix(".md")
    assert card.is_file()
    text = card.read_text()
    for word in ("Data", "Recipe", "Hardware", "benchmarks/accuracy.py", "benchmarks/train_builtin.py"):
        assert word in text, f"{card.name} lacks {word}"
    checkpoint = load_checkpoint(name)
    assert checkpoint.metadata["name"] == name and checkpoint.metadata["history"]


def test_em_model_on_a_real_isbi_slice(isbi_stack):
    prob = predict(load_checkpoint("em-membranes"), isbi_stack.images[27:28], device="cpu").probabilities
    assert dice(prob > 0.5, isbi_stack.labels[27:28] == 1) > 0.75  # sanity floor (benchmark: see card)


def test_fundus_model_on_a_real_drive_image(drive_dir):
    stack = load_dataset(drive_dir / "test")
    prob = predict(load_checkpoint("fundus-vessels"), stack.images[:1], device="cpu").probabilities
    scores = fundus_scores(prob, stack.labels[:1] == 1, stack.fov[:1])
    assert scores["f1"] > 0.75 and scores["auc"] > 0.95


def test_models_segment_the_generated_samples():
    """The samples look enough like the real thing for the built-in models (Dice >= 0.7)."""
    image, labels = em_sample()
    prob = predict(load_checkpoint("em-membranes"), image[..., None], device="cpu").probabilities
    assert dice(prob > 0.5, labels == 1) >= 0.7
    rgb, vessels, fov = fundus_sample()
    prob = predict(load_checkpoint("fundus-vessels"), rgb[None], device="cpu").probabilities
    assert dice(prob[0] > 0.5, vessels == 1, mask=fov) >= 0.7


def test_first_command_without_a_screen_predicts_the_sample():
    """`napari-unet gui` on a server: the same first job runs headless, and says so."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "gui"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "No display found" in result.stdout and "Dice" in result.stdout
    assert float(result.stdout.split("Dice ")[1][:5]) >= 0.7
