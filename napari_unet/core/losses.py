"""Losses: BCE (CE for several classes) + soft Dice, ignore value, U-Net border weights."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .labels import IGNORE, STRUCTURE


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    dice_weight: float = 1.0,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """Cross-entropy + soft Dice over the labelled pixels only.

    Args:
        logits: (B, K, Y, X); K = 1 uses a sigmoid (BCE), K > 1 a softmax (CE).
        target: (B, Y, X) integer labels; ``ignore_index`` pixels contribute nothing.
        weight: optional (B, Y, X) per-pixel weights for the cross-entropy term.
        dice_weight: factor of the soft Dice term (0 turns it off).

    Returns:
        A scalar tensor (0 when no pixel is labelled, so such batches do no harm).
    """
    valid = target != ignore_index
    if not torch.any(valid):
        return logits.sum() * 0.0
    valid_f = valid.float()
    pixel_weight = valid_f if weight is None else weight * valid_f
    if logits.shape[1] == 1:
        truth = (target == STRUCTURE).float()
        ce = F.binary_cross_entropy_with_logits(logits[:, 0], truth, reduction="none")
        prob = torch.sigmoid(logits[:, 0])[:, None]
        onehot = truth[:, None]
    else:
        safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
        ce = F.cross_entropy(logits, safe_target, reduction="none")
        prob = torch.softmax(logits, dim=1)
        onehot = F.one_hot(safe_target, logits.shape[1]).permute(0, 3, 1, 2).float()
    ce = (ce * pixel_weight).sum() / valid_f.sum()
    if dice_weight == 0:
        return ce
    mask = valid_f[:, None]
    intersection = (prob * onehot * mask).sum(dim=(0, 2, 3))
    denominator = ((prob + onehot) * mask).sum(dim=(0, 2, 3))
    soft_dice = (2 * intersection + 1.0) / (denominator + 1.0)
    return ce + dice_weight * (1.0 - soft_dice.mean())


def border_weight_map(
    label: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    balance_classes: bool = True,
    max_cells: int = 2000,
) -> np.ndarray:
    """U-Net weight map (Ronneberger et al. 2015): w = w_c + w0 exp(-(d1+d2)^2 / 2 sigma^2).

    Cells are the 4-connected regions of background (label 0) enclosed by the structure
    (membranes). d1 and d2 are the distances to the nearest and second nearest cell; the
    border term is applied to structure pixels, where it makes thin membranes between
    touching cells count. w_c balances the class frequencies; IGNORE pixels get 0.

    Args:
        label: (Y, X) uint8 in the project convention.

    Returns:
        (Y, X) float32 weights.
    """
    label = np.asarray(label)
    valid = label != IGNORE
    structure = label == STRUCTURE
    weights = np.ones(label.shape, dtype=np.float32)
    if balance_classes and valid.any():
        fg = structure[valid].mean()
        if 0 < fg < 1:
            # Frequency balancing, scaled so the mean weight of valid pixels stays 1.
            weights[structure] = 0.5 / fg
            weights[valid & ~structure] = 0.5 / (1 - fg)
    cells, count = ndimage.label((label == 0), structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    if 2 <= count <= max_cells:
        d1 = np.full(label.shape, np.inf, dtype=np.float32)
        d2 = np.full(label.shape, np.inf, dtype=np.float32)
        # The border term vanishes beyond ~4 sigma, so each cell's distance map is only
        # computed in its bounding box grown by that margin (fast for hundreds of cells).
        margin = int(np.ceil(4 * sigma))
        for cell, box in enumerate(ndimage.find_objects(cells), start=1):
            window = tuple(
                slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(box, label.shape)
            )
            distance = ndimage.distance_transform_edt(cells[window] != cell).astype(np.float32)
            near1, near2 = d1[window], d2[window]
            closer = distance < near1
            d2[window] = np.where(closer, near1, np.minimum(near2, distance))
            d1[window] = np.where(closer, distance, near1)
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
        weights = weights + np.where(structure, border, 0.0).astype(np.float32)
    weights[~valid] = 0.0
    return weights
