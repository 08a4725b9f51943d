"""The classic U-Net (Ronneberger et al. 2015) built from readable blocks.

Tensors are (B, C, Y, X). Every convolution is padded ("same"), so the output has the
input's spatial size; `Up` pads to its skip connection, so odd sizes work too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net; stored in every checkpoint.

    Args:
        in_channels: image channels, 1 for EM, 3 for RGB fundus.
        classes: output channels; 1 = one sigmoid map for the structure (membrane, vessel).
        base_width: channels of the first level; each level down doubles it.
        depth: number of down-sampling steps (the image shrinks by 2**depth at the bottom).
        bilinear: bilinear up-sampling (+1x1 conv) instead of transposed convolutions.
    """

    in_channels: int = 1
    classes: int = 1
    base_width: int = 32
    depth: int = 4
    bilinear: bool = True

    def __post_init__(self) -> None:
        for name in ("in_channels", "classes", "base_width", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"UNetConfig.{name} must be an integer, got {value!r}.")
        if not 1 <= self.in_channels <= 16:
            raise ValueError(
                f"in_channels={self.in_channels}: use 1 for grey images (EM) or 3 for RGB (fundus)."
            )
        if not 1 <= self.classes <= 64:
            raise ValueError(f"classes={self.classes}: use 1 for a single structure (membrane, vessel).")
        if not 4 <= self.base_width <= 256:
            raise ValueError(f"base_width={self.base_width}: choose between 4 and 256 (16-64 is usual).")
        if not 1 <= self.depth <= 6:
            raise ValueError(f"depth={self.depth}: choose between 1 and 6 (4 is the classic U-Net).")
        if not isinstance(self.bilinear, bool):
            raise ValueError(f"bilinear must be True or False, got {self.bilinear!r}.")

    @property
    def size_multiple(self) -> int:
        """Tiles must be a multiple of this to go down and up without rounding."""
        return 2**self.depth

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> UNetConfig:
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        return cls(**known)


class DoubleConv(nn.Module):
    """(3x3 conv -> BatchNorm -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """2x2 max-pool, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Up-sample by 2, pad to the skip's size, concatenate with it, DoubleConv.

    Both modes halve the channels before the concatenation, so the weights of the two
    modes have the same shapes downstream.
    """

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool) -> None:
        super().__init__()
        half = in_channels // 2
        if bilinear:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, half, 1),
            )
        else:
            self.up = nn.ConvTranspose2d(in_channels, half, 2, stride=2)
        self.conv = DoubleConv(half + out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        # Odd sizes lose a row/column when pooled: pad back to the skip's size.
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """1x1 convolution to the class logits."""

    def __init__(self, in_channels: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """Encoder-decoder with skip connections; returns logits (B, classes, Y, X)."""

    def __init__(self, config: UNetConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = config if config is not None else UNetConfig(**kwargs)
        c = self.config
        widths = [c.base_width * 2**level for level in range(c.depth + 1)]
        self.inc = DoubleConv(c.in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(c.depth))
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], c.bilinear) for i in reversed(range(c.depth))
        )
        self.outc = OutConv(widths[0], c.classes)
        # Channels-last (NHWC) weights and activations: convolutions ran 1.6-2x faster on
        # a 2-core CPU (oneDNN), and it is the layout GPU tensor cores prefer. Loading a
        # state dict, .to(device) and .half() keep this layout.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"U-Net expects (batch, {self.config.in_channels}, Y, X), got {tuple(x.shape)}."
            )
        skips = [self.inc(x.contiguous(memory_format=torch.channels_last))]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)
