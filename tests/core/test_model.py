import pytest
import torch

from napari_unet.core.checkpoint import load_checkpoint, save_checkpoint
from napari_unet.core.model import UNet, UNetConfig


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("bilinear", [True, False])
@pytest.mark.parametrize("size", [(37, 53), (64, 64), (17, 100)])
def test_forward_backward_any_size(in_channels, bilinear, size):
    model = UNet(UNetConfig(in_channels=in_channels, classes=1, base_width=4, depth=3, bilinear=bilinear))
    x = torch.randn(2, in_channels, *size, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 1, *size)
    y.mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())


def test_several_classes():
    model = UNet(in_channels=1, classes=3, base_width=4, depth=2)
    assert model(torch.randn(1, 1, 30, 30)).shape == (1, 3, 30, 30)


def test_blocks_are_the_classic_ones():
    model = UNet(UNetConfig(base_width=8, depth=4))
    names = {type(m).__name__ for m in model.modules()}
    assert {"DoubleConv", "Down", "Up", "OutConv"} <= names
    assert len(model.downs) == 4 and len(model.ups) == 4


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"classes": 0}, "classes"),
        ({"base_width": 2}, "base_width"),
        ({"depth": 9}, "depth"),
        ({"depth": 2.5}, "integer"),
        ({"bilinear": "yes"}, "bilinear"),
    ],
)
def test_bad_config_says_what_to_change(kwargs, word):
    with pytest.raises(ValueError, match=word):
        UNetConfig(**kwargs)


def test_wrong_channels_are_refused():
    model = UNet(in_channels=1, base_width=4, depth=2)
    with pytest.raises(ValueError, match=r"\(batch, 1, Y, X\)"):
        model(torch.randn(1, 3, 32, 32))


def test_config_round_trip():
    config = UNetConfig(in_channels=3, base_width=16, depth=3, bilinear=False)
    assert UNetConfig.from_dict(config.to_dict()) == config
    assert config.size_multiple == 8


def test_channels_last_layout_survives_loading_and_gives_the_same_output(tmp_path):
    torch.manual_seed(0)
    model = UNet(UNetConfig(in_channels=1, base_width=8, depth=2)).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, {"task": "em"}, half=False)
    loaded = load_checkpoint(path).model.eval()
    convs = [p for p in loaded.parameters() if p.ndim == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    x = torch.rand(2, 1, 40, 40)
    # The same weights in the default layout compute the same logits.
    plain = UNet(UNetConfig(in_channels=1, base_width=8, depth=2)).eval()
    plain.load_state_dict({k: v.contiguous() for k, v in loaded.state_dict().items()})
    plain.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        assert torch.allclose(loaded(x), plain(x), atol=1e-5)
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
