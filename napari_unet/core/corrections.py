"""Autosaved hand corrections: a label stack plus the list of corrected slices.

Saved next to the image (``<image folder>/<image stem>.napari-unet/``) or in a chosen
folder, atomically, so a crash loses at most the time since the last save and never
leaves a half-written file.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tifffile

from .files import atomic_write


def corrections_folder(image_source: str | Path) -> Path:
    """Default folder for an image's corrections: beside the image file or folder."""
    source = Path(image_source)
    stem = source.stem if source.suffix else source.name
    return source.parent / f"{stem}.napari-unet"


class CorrectionStore:
    """Corrections of one image in ``folder``: ``labels.tif`` (Z, Y, X) uint8 and ``state.json``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.labels_path = self.folder / "labels.tif"
        self.state_path = self.folder / "state.json"

    def exists(self) -> bool:
        return self.labels_path.is_file() and self.state_path.is_file()

    def save(self, labels: np.ndarray, corrected: list[int], edited: list[int], image_source: str = "") -> None:
        """Write labels first, then the state, both atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        data = np.asarray(labels)
        atomic_write(self.labels_path, lambda p: tifffile.imwrite(p, data, photometric="minisblack"))
        state = {
            "corrected_slices": sorted(int(z) for z in corrected),
            "edited_slices": sorted(int(z) for z in edited),
            "image_source": str(image_source),
            "shape": list(data.shape),
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write(self.state_path, lambda p: Path(p).write_text(json.dumps(state, indent=1)))

    def load(self) -> tuple[np.ndarray, dict]:
        """Return (labels, state); raises ValueError for unreadable files."""
        try:
            state = json.loads(self.state_path.read_text())
            labels = tifffile.imread(self.labels_path)
        except Exception as exc:
            raise ValueError(f"The saved corrections in {self.folder} could not be read ({exc}).") from exc
        if list(labels.shape) != state.get("shape"):
            labels = labels.reshape(state["shape"]) if labels.size == np.prod(state["shape"]) else labels
        return labels, state


def ignore_unedited(labels: np.ndarray, edited: np.ndarray, margin: int = 8) -> np.ndarray:
    """Mark as IGNORE what lies farther than ``margin`` px from the user's edits.

    Lets a user train on the part of a slice they checked, not on the rest.

    Args:
        labels: (Y, X) labels of one slice; edited: (Y, X) bool, the edited pixels.

    Returns:
        (Y, X) copy of the labels with IGNORE outside the edited region.
    """
    from scipy import ndimage

    from .data import IGNORE

    if not edited.any():
        raise ValueError("Nothing was edited on this slice: paint the corrections first.")
    near = ndimage.distance_transform_edt(~edited) <= margin
    out = labels.copy()
    out[~near] = IGNORE
    return out
