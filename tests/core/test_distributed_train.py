"""Training under torchrun with DistributedDataParallel: 2 CPU processes (gloo), 127.0.0.1."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def pairs(isbi_stack, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    tifffile.imwrite(folder / "images.tif", isbi_stack.images[:4, :160, :160, 0], photometric="minisblack")
    tifffile.imwrite(folder / "labels.tif", (isbi_stack.labels[:4, :160, :160] == 1).astype(np.uint8),
                     photometric="minisblack")
    return folder


def _train_args(folder: Path, out: str) -> list[str]:
    return ["train", "--images", str(folder / "images.tif"), "--labels", str(folder / "labels.tif"), "--out",
            str(folder / out), "--steps", "4", "--base-width", "8", "--crop-size", "64", "--batch-size", "2",
            "--device", "cpu"]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    """napari-unet in 2 processes started by torchrun (rendezvous on localhost)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    entry = shutil.which("napari-unet", path=str(Path(sys.executable).parent))
    if torchrun is None or entry is None:
        pytest.skip("torchrun or the napari-unet command is not in this environment's bin folder")
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", entry, *args, "--distributed"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_train_one_checkpoint_with_the_usual_metadata(pairs):
    result = _torchrun(_train_args(pairs, "ddp.pt"))
    assert result.stdout.count("trained 4 steps x 2 processes") == 1  # rank 0 alone reports
    assert main(_train_args(pairs, "single.pt")) == 0
    ddp, single = load_checkpoint(pairs / "ddp.pt"), load_checkpoint(pairs / "single.pt")
    assert set(ddp.metadata) == set(single.metadata)
    run, alone = ddp.metadata["history"][-1], single.metadata["history"][-1]
    assert run["processes"] == 2 and set(run) - set(alone) == {"processes"}
    assert {"ddp.pt", "single.pt"} <= {p.name for p in pairs.iterdir()}


def test_a_fine_tune_under_torchrun(pairs):
    """The one-click recipe (`train --from`), cross-validated, in 2 processes."""
    args = _train_args(pairs, "tuned.pt")
    args = args[: args.index("--base-width")] + ["--from", "em-membranes", "--slices", "1", "2", "--device", "cpu"]
    result = _torchrun(args)
    assert result.stdout.count("tuned.pt") == 1  # rank 0 alone reports and writes
    history = load_checkpoint(pairs / "tuned.pt").metadata["history"][-1]
    assert history["corrected_slices"] == [1, 2] and history["fine_tune"]["folds"]
    if history["fine_tune"]["kept"]:  # the model trained on both slices, by both processes
        assert history["processes"] == 2


def test_distributed_needs_torchrun(pairs, capsys):
    assert main([*_train_args(pairs, "x.pt"), "--distributed"]) == 2
    assert "torchrun" in capsys.readouterr().err
    assert not (pairs / "x.pt").exists()
