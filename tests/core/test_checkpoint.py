import os
import pickle

import pytest
import torch

from napari_unet.core import checkpoint as ckpt_module
from napari_unet.core.checkpoint import CheckpointError, default_metadata, load_checkpoint, save_checkpoint
from napari_unet.core.model import UNet, UNetConfig


def _model():
    torch.manual_seed(0)
    return UNet(UNetConfig(in_channels=3, base_width=4, depth=2, bilinear=False))


def test_round_trip_keeps_weights_config_and_metadata(tmp_path):
    model = _model()
    meta = default_metadata("fundus", history=[{"steps": 10, "val_dice": 0.5}])
    path = save_checkpoint(tmp_path / "m.pt", model, meta)
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    assert loaded.metadata == meta and loaded.task == "fundus"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert not list(tmp_path.glob("*.tmp"))  # no temp file left


def test_half_precision_storage_is_smaller_and_close(tmp_path):
    model = _model()
    full = save_checkpoint(tmp_path / "full.pt", model, default_metadata("em"))
    half = save_checkpoint(tmp_path / "half.pt", model, default_metadata("em"), half=True)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        assert torch.allclose(load_checkpoint(half).model(x), model(x), atol=1e-2)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_loading_never_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsCode()
    evil.marker = marker
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "napari-unet", "state_dict": evil}, handle)
    with pytest.raises(CheckpointError, match="not a readable napari-unet checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    # The same payload in torch's own zip format is refused too.
    torch.save({"format": "napari-unet", "payload": evil}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil2.pt")
    assert not marker.exists()


def test_foreign_corrupt_and_unknown(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a napari-unet checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    good = save_checkpoint(tmp_path / "good.pt", _model(), default_metadata("em"))
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="built-in name"):
        load_checkpoint("no-such-model")


def test_crash_mid_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", _model(), default_metadata("em", note="old"))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, _model(), default_metadata("em", note="new"))
    assert path.read_bytes() == before
    assert load_checkpoint(path).metadata["note"] == "old"
    assert not list(tmp_path.glob("*.tmp"))
