"""Autosaved hand corrections: the labels, which slices are corrected, which pixels were edited.

Everything of one image lives in one file, ``corrections.tif`` (series 0: the labels,
readable by any tif viewer, with the state as JSON in its description; series 1: the
edited pixels), written atomically: a crash leaves the previous save or the new one,
never labels and state out of step.

A volume larger than memory keeps its labels in its prediction store (a zarr folder,
written as the user paints); its corrections folder then holds only the state
(``state.json``: the store's path, the slice lists, the time) and the edited slices'
pixels (``edited-<z>.npy``), see `VolumeState`.

The models fine-tuned on the image's corrections are listed in ``models.json`` (their
paths, dates and corrected slices, `record_fine_tuned`), so the next day's session offers
the last one again.

Where: beside the image (``<image file name>.napari-unet/``), or in a chosen folder
(one sub-folder per image, keyed by its full path), or, for an image without a file,
under ``$NAPARI_UNET_HOME/corrections`` (default ``~/napari-unet``) keyed by a hash of
its pixels. Two images never share a folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tifffile

from .files import atomic_write, napari_unet_home
from .labels import IGNORE

FILE_NAME = "corrections.tif"
VOLUME_STATE_FILE = "state.json"
MODELS_FILE = "models.json"


def corrections_folder(image_source: str | Path | None, pixels_hash: str = "", root: str | Path | None = None) -> Path:
    """The folder for one image's corrections.

    Args:
        image_source: the image's file or folder, or None/"" for an image without a file.
        pixels_hash: a hash of the image's pixels (`napari_unet.core.data.data_hash`),
            used when there is no source.
        root: a folder the user chose for all corrections, or None (beside the image).

    Returns:
        ``<source>.napari-unet`` beside the image; ``root/<name>-<path hash>`` in a chosen
        folder; ``root or home/corrections`` ``/image-<pixels hash>`` without a source.
    """
    if image_source:
        source = Path(image_source).resolve()
        if root is None:
            return source.parent / f"{source.name}.napari-unet"
        path_hash = hashlib.sha256(str(source).encode()).hexdigest()[:8]
        return Path(root) / f"{source.name}-{path_hash}"
    if not pixels_hash:
        raise ValueError("An image without a file needs a hash of its pixels to key its corrections.")
    return Path(root or napari_unet_home() / "corrections") / f"image-{pixels_hash}"


class CorrectionStore:
    """The corrections of one image in ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / FILE_NAME

    def exists(self) -> bool:
        return self.path.is_file() or (self.folder / "labels.tif").is_file()

    def save(self, labels: np.ndarray, corrected: list[int], edited: list[int], image_source: str = "",
             edited_pixels: np.ndarray | None = None) -> Path:
        """Write labels, state and edited pixels in one atomic file.

        Args:
            labels: (Z, Y, X) or (Y, X) labels as in the layer.
            corrected, edited: slice indices.
            edited_pixels: bool array of the labels' shape (None = none known).
        """
        data = np.asarray(labels)
        pixels = np.zeros(data.shape, np.uint8) if edited_pixels is None else np.asarray(edited_pixels, np.uint8)
        if pixels.shape != data.shape:  # checked before anything is written
            raise ValueError(f"The edited pixels recorded {pixels.shape} do not fit the labels {data.shape}, so "
                             "nothing was saved: the Labels layer changed shape since it was edited; predict again "
                             "to start new corrections.")
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {
            "corrected_slices": sorted(int(z) for z in corrected),
            "edited_slices": sorted(int(z) for z in edited),
            "image_source": str(image_source),
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

        def write(tmp: str) -> None:
            with tifffile.TiffWriter(tmp) as tif:
                tif.write(data, photometric="minisblack", compression="zlib",
                          metadata={"napari_unet": json.dumps(state)})
                tif.write(pixels, photometric="minisblack", compression="zlib",
                          metadata={"napari_unet": "edited pixels"})

        return atomic_write(self.path, write)

    def load(self) -> tuple[np.ndarray, dict, np.ndarray]:
        """Return (labels, state, edited pixels as bool, same shape as the labels).

        Raises:
            ValueError: the file cannot be read; the message names the folder.
        """
        try:
            if not self.path.is_file():
                return self._load_legacy()
            with tifffile.TiffFile(self.path) as tif:
                labels = tif.series[0].asarray()
                state = json.loads(tif.shaped_metadata[0]["napari_unet"])
                pixels = tif.series[1].asarray().astype(bool)
        except Exception as exc:  # tifffile/json raise many types for damaged files
            raise ValueError(f"The saved corrections in {self.folder} could not be read ({exc}): "
                             "they are left as they are; predict again to start new corrections.") from exc
        return labels, state, pixels

    def load_for(self, shape: tuple[int, ...], image_name: str) -> tuple[np.ndarray, dict, np.ndarray]:
        """`load`, checking that the labels are those of an image of ``shape``.

        Args:
            shape: the image's (Z, Y, X) or (Y, X) shape (without its colour axis).
            image_name: the image's name, for the message.

        Raises:
            ValueError: the file cannot be read, or its labels are of another shape (they
                belong to another version of the image).
        """
        labels, state, pixels = self.load()
        if labels.shape != tuple(shape):
            raise ValueError(f"The saved corrections in {self.folder} have shape {labels.shape} but "
                             f"'{image_name}' has {tuple(shape)}: they belong to another version of the image.")
        return labels, state, pixels

    def _load_legacy(self) -> tuple[np.ndarray, dict, np.ndarray]:
        """Stores written before 0.2: labels.tif + state.json, no edited pixels."""
        state = json.loads((self.folder / "state.json").read_text())
        labels = tifffile.imread(self.folder / "labels.tif")
        if "shape" in state and list(labels.shape) != state["shape"]:
            labels = labels.reshape(state["shape"])
        return labels, state, np.zeros(labels.shape, bool)


@dataclass
class VolumeState:
    """The corrections of a volume whose labels live in a prediction store on disk.

    Attributes:
        labels: the prediction store (a zarr folder) holding the labels, or "".
        corrected_slices: slices that count as corrected (sorted z indices).
        edited_slices: slices the user painted on (sorted z indices).
        saved: when it was saved (local time, ISO format to the second); set by
            `save_volume_state`.
    """

    labels: str = ""
    corrected_slices: list[int] = field(default_factory=list)
    edited_slices: list[int] = field(default_factory=list)
    saved: str = ""


def save_volume_state(folder: str | Path, state: VolumeState,
                      edited_pixels: Mapping[int, np.ndarray] | None = None) -> Path:
    """Write a volume's state (``state.json``) and edited pixels (``edited-<z>.npy``) atomically.

    Args:
        folder: the volume's corrections folder (created if needed).
        state: the state to write; its ``saved`` time is set to now.
        edited_pixels: {z: (Y, X) bool} of the slices to (re)write, e.g. those edited
            since the last save; the files of other slices are left as they are.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def write_npy(path: str, plane: np.ndarray) -> None:
        with open(path, "wb") as handle:
            np.save(handle, plane)

    for z, plane in sorted((edited_pixels or {}).items()):
        atomic_write(folder / f"edited-{int(z)}.npy", lambda tmp, plane=plane: write_npy(tmp, plane))
    state.saved = datetime.now().isoformat("T", "seconds")
    text = json.dumps({"corrected_slices": sorted(int(z) for z in state.corrected_slices),
                       "edited_slices": sorted(int(z) for z in state.edited_slices),
                       "labels": str(state.labels), "saved": state.saved})
    atomic_write(folder / VOLUME_STATE_FILE, lambda tmp: Path(tmp).write_text(text))
    return folder


def load_volume_state(folder: str | Path) -> VolumeState | None:
    """A volume's state saved by `save_volume_state`, or None when there is none.

    Raises:
        ValueError: the state cannot be read; the message names the folder.
    """
    path = Path(folder) / VOLUME_STATE_FILE
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        return VolumeState(labels=str(raw.get("labels", "")),
                           corrected_slices=[int(z) for z in raw.get("corrected_slices", [])],
                           edited_slices=[int(z) for z in raw.get("edited_slices", [])],
                           saved=str(raw.get("saved", "")))
    except FileNotFoundError:
        return None
    except (OSError, TypeError, ValueError) as exc:
        raise ValueError(f"The saved corrections in {folder} could not be read ({exc}): they are left as they "
                         f"are; move {VOLUME_STATE_FILE} out of that folder to start new corrections.") from exc


def load_volume_edits(folder: str | Path) -> dict[int, np.ndarray]:
    """The edited pixels saved by `save_volume_state`: {z: (Y, X) bool}.

    Raises:
        OSError, ValueError: a file cannot be read.
    """
    return {int(p.stem.split("-")[1]): np.load(p) for p in Path(folder).glob("edited-*.npy")}


def open_volume_labels(state: VolumeState, shape: tuple[int, ...], volume_name: str):
    """The prediction store a volume's saved state names (a zarr array, opened to be painted
    on), checked against the volume.

    Args:
        state: the volume's state (`load_volume_state`); its ``labels`` is the store.
        shape: the volume's (Z, Y, X) shape; volume_name: its name, for the message.

    Raises:
        OSError, ValueError: the store cannot be opened, or it is of another shape (it
            belongs to another version of the volume).
    """
    import zarr

    path = Path(state.labels)
    labels = zarr.open_array(str(path), mode="r+")
    if labels.shape != tuple(shape):
        raise ValueError(f"The saved prediction {path} has shape {labels.shape} but '{volume_name}' "
                         f"has {tuple(shape)}: it belongs to another version of the volume.")
    return labels


def edited_planes(pixels: np.ndarray) -> dict[int, np.ndarray]:
    """The slices of a bool mask that hold an edit: {z: (Y, X) bool copy}.

    Args:
        pixels: (Z, Y, X) or (Y, X) bool, the edited pixels of a stack or of one image.
    """
    pixels = pixels if pixels.ndim == 3 else pixels[None]
    return {int(z): pixels[z].copy() for z in range(pixels.shape[0]) if pixels[z].any()}


def edited_mask(planes: Mapping[int, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of `edited_planes`: {z: (Y, X) bool} as one bool array of the labels'
    (Z, Y, X) or (Y, X) ``shape`` (a 2D image's plane is z = 0)."""
    shape = tuple(shape)
    mask = np.zeros((1, *shape) if len(shape) == 2 else shape, bool)
    for z, plane in planes.items():
        mask[z] = plane
    return mask[0] if len(shape) == 2 else mask


@dataclass
class FineTunedModel:
    """A model fine-tuned on one image's corrections.

    Attributes:
        path: the checkpoint file; date: when it was saved (ISO, local time);
        slices: the corrected slices it learnt from.
    """

    path: str
    date: str
    slices: list[int]

    def describe(self, image_name: str) -> str:
        return f"fine-tuned on {image_name}, {len(self.slices)} slice(s), {self.date[:16].replace('T', ' ')}"


def record_fine_tuned(folder: str | Path, model: str | Path, slices: list[int]) -> Path:
    """Add a fine-tuned model to the image's list (``models.json``, written atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = [vars(m) for m in _read_models(folder)]
    records.append({"path": str(Path(model).resolve()), "date": datetime.now().astimezone().isoformat(
        timespec="seconds"), "slices": sorted(int(z) for z in slices)})
    path = folder / MODELS_FILE
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(records, indent=1), encoding="utf-8"))


def fine_tuned_models(folder: str | Path) -> list[FineTunedModel]:
    """The image's fine-tuned models whose files still exist, oldest first."""
    return [m for m in _read_models(Path(folder)) if Path(m.path).is_file()]


def _read_models(folder: Path) -> list[FineTunedModel]:
    try:
        records = json.loads((folder / MODELS_FILE).read_text(encoding="utf-8"))
        return [FineTunedModel(str(r["path"]), str(r["date"]), [int(z) for z in r["slices"]]) for r in records]
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: offer nothing
        return []


def ignore_unedited(labels: np.ndarray, edited: np.ndarray, margin: int = 8) -> np.ndarray:
    """Mark as IGNORE what lies farther than ``margin`` px from the user's edits.

    Lets a user train on the part of a slice they checked, not on the rest.

    Args:
        labels: (Y, X) labels of one slice; edited: (Y, X) bool, the edited pixels.

    Returns:
        (Y, X) copy of the labels with IGNORE outside the edited region.
    """
    from scipy import ndimage

    if not edited.any():
        raise ValueError("Nothing was edited on this slice: paint the corrections first.")
    near = ndimage.distance_transform_edt(~edited) <= margin
    out = labels.copy()
    out[~near] = IGNORE
    return out


def ignore_unedited_changes(labels: np.ndarray, edited: np.ndarray | None,
                            margin: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels `ignore_unedited` changes on one slice, to write as one undoable step.

    Args:
        labels: (Y, X) labels of one slice; edited: (Y, X) bool, the edited pixels, or
            None when nothing was edited on it.

    Returns:
        (rows, cols, values): the changed pixels and their new labels.

    Raises:
        ValueError: nothing was edited on the slice.
    """
    if edited is None:
        raise ValueError("Nothing was edited on this slice: paint the corrections first.")
    updated = ignore_unedited(labels, edited, margin)
    rows, cols = (labels != updated).nonzero()
    return rows, cols, updated[rows, cols]
