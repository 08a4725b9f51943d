"""The weight blending: the model a fine-tune ships, and each fold scores, lies between
the starting weights and the trained ones."""

from __future__ import annotations

import torch

from ..model import UNet

#: The share of the way from the starting weights to the trained ones (docs/decisions/finetune-update-share.md).
UPDATE_SHARE = 0.5


def move_toward(start: UNet, trained: UNet, share: float) -> None:
    """Set ``trained``'s weights and normalisation statistics to start + share x (trained
    - start), in place (see `UPDATE_SHARE`); share 1 leaves them as trained.

    Args:
        start: the starting model (left unchanged).
        trained: a copy of it after training, on any device.
        share: in (0, 1].
    """
    if share == 1.0:
        return
    begin = start.state_dict()
    with torch.no_grad():
        for name, value in trained.state_dict().items():
            if value.is_floating_point():  # not the batch counters
                value.copy_(begin[name].to(value.device, value.dtype).lerp(value, share))
