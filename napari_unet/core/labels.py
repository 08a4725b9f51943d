"""The one label convention of napari-unet, and the one function that maps labels to it.

Labels are ``(Z, Y, X)`` or ``(Y, X)`` uint8: ``BACKGROUND = 0``, ``STRUCTURE = 1``
(membrane, vessel) and ``IGNORE = 2`` (unlabelled, outside the field of view: neither
learnt nor scored). Files, Labels layers, the CLI and every widget go through
`labels_from_array`, so the same labels mean the same thing everywhere.
"""

from __future__ import annotations

import numpy as np

BACKGROUND = 0
STRUCTURE = 1
IGNORE = 2
LABEL_CONVENTION = {"background": BACKGROUND, "structure": STRUCTURE, "ignore": IGNORE}
ROLE_COLOURS = {
    "prediction": "#ff33cc",  # magenta: what the model says
    "truth": "#00e5ff",  # cyan: ground truth
    "fov": "#ffffff",
    "changed": "#ffd000",  # yellow: what a fine-tune changed
}


def label_colours(role: str) -> dict:
    """The colours of a labels layer of ``role`` ("prediction", "truth", "fov", "changed"):
    structure in the role's colour, IGNORE in grey, background transparent.

    Returns:
        {label value (None = any other): colour}, what napari takes as a Labels layer's
        ``colormap`` (a direct colormap) in a layer-data tuple.
    """
    return {None: "transparent", BACKGROUND: "transparent", STRUCTURE: ROLE_COLOURS.get(role, "#ff33cc"),
            IGNORE: "#808080"}


def first_channel(raw: np.ndarray) -> np.ndarray:
    """A label or mask image saved as RGB(A) (Y, X, 3|4): its channels are equal, keep the first."""
    if raw.ndim == 3 and raw.shape[-1] in (3, 4) and raw.shape[-2] > 4:
        return raw[..., 0]
    return raw


def _rule(values: np.ndarray) -> str:
    """How labels with these distinct values are read: "convention", "binary" or "ids"."""
    if values.dtype.kind == "f" and np.isnan(values).any():
        return "ids"  # NaN is never structure
    if set(values.tolist()) <= {BACKGROUND, STRUCTURE, IGNORE}:
        return "convention"
    if np.count_nonzero(values) == 1:  # {0, v} or {v}: a binary mask such as 0/255
        return "binary"
    return "ids"


def labels_from_array(raw: np.ndarray, invert: bool = False) -> np.ndarray:
    """Map any label array to the convention (0 background, 1 structure, 2 ignore).

    Rules, in order:

    * ``invert``: zero = structure, anything else = background (ISBI 2012 stores
      membranes as 0 and cells as 255).
    * values within {0, 1, 2}: already the convention, kept as they are.
    * one nonzero value (a binary mask, e.g. 0/255): nonzero = structure.
    * anything else (other ids, e.g. instance labels or a stray brush value): 0 and 1
      keep their meaning, 2 and every other value (NaN included) become IGNORE.

    Args:
        raw: labels as stored, any shape and dtype; an RGB(A) label image (Y, X, 3|4)
            is read from its first channel.

    Returns:
        uint8 array of the same spatial shape.
    """
    raw = first_channel(np.asarray(raw))
    if invert:
        return (raw == 0).astype(np.uint8)
    values = np.unique(raw)
    rule = _rule(values)
    if rule == "convention":
        return raw.astype(np.uint8)
    if rule == "binary":
        return (raw != 0).astype(np.uint8)
    out = np.full(raw.shape, IGNORE, np.uint8)
    out[raw == BACKGROUND] = BACKGROUND
    out[raw == STRUCTURE] = STRUCTURE
    return out


def unknown_label_pixels(raw: np.ndarray, invert: bool = False) -> int:
    """How many pixels `labels_from_array` turns into IGNORE because their id is unknown."""
    raw = first_channel(np.asarray(raw))
    if invert or _rule(np.unique(raw)) != "ids":
        return 0
    return int(raw.size - np.count_nonzero(np.isin(raw, (BACKGROUND, STRUCTURE, IGNORE))))


def labels_note(raw: np.ndarray, invert: bool = False) -> str:
    """One sentence for the user when labels were not plain 0/1/2 ("" when they were)."""
    unknown = unknown_label_pixels(raw, invert)
    if not unknown:
        return ""
    return (f"{unknown:,} labelled pixel(s) carry ids other than 0/1/2 and are ignored "
            "(paint with 1 = structure, 0 = background).")
