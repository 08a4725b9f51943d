"""Reading EM stacks and fundus sets into one label convention; checks and normalisation.

Augmentation for training is in `napari_unet.core.augment`.

Conventions used across the project:

* Images are handled as stacks ``(Z, Y, X, C)``: a 2D grey image is ``(1, Y, X, 1)``, an
  RGB fundus image ``(1, Y, X, 3)``, an EM stack ``(Z, Y, X, 1)``.
* Labels are ``(Z, Y, X)`` uint8 in the convention of `napari_unet.core.labels`
  (0 background, 1 structure, 2 ignore: unlabelled or outside the FOV mask).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .labels import IGNORE, STRUCTURE, first_channel, labels_from_array

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif", ".bmp")
# Stored with every model: the same normalisation must be applied when it predicts.
DEFAULT_NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}


class DataError(ValueError):
    """Bad input data; the message says what is wrong and what to do."""


@dataclass
class LabelledStack:
    """Images with optional labels and FOV, all sharing (Z, Y, X).

    Attributes:
        images: (Z, Y, X, C) raw images as read (any dtype).
        labels: (Z, Y, X) uint8 in the project convention, or None.
        fov: (Z, Y, X) bool field-of-view mask (fundus), or None.
        names: one name per slice (file stem or ``slice N``).
        kind: "em" or "fundus" (a guess from the layout or the channel count).
        layout: what was recognised, e.g. "isbi", "drive", "stack", "image".
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    fov: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    kind: str = "em"
    layout: str = "stack"

    def describe(self) -> str:
        z, y, x, c = self.images.shape
        parts = [f"{self.layout}: {z} slice(s) of {y}x{x}, {'RGB' if c == 3 else 'grey'} ({self.images.dtype})"]
        if self.labels is not None:
            parts.append("with labels")
        if self.fov is not None:
            parts.append("with FOV mask")
        return ", ".join(parts)


# ---------------------------------------------------------------------------- reading


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def image_files(folder: Path) -> list[Path]:
    """Image files of a folder in natural name order (2.png before 10.png)."""
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=_natural_key)


def read_image(path: str | Path) -> np.ndarray:
    """Read one file as stored: (Y, X), (Y, X, C) or (Z, Y, X) for multi-page tif.

    Raises:
        DataError: missing, unsupported or unreadable file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist: check the path.")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(
            f"{path.name}: unsupported file type; use tif, png, jpg or gif images."
        )
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = tifffile.imread(path)
        else:
            with Image.open(path) as img:
                # Palette images (DRIVE gifs) keep their indices; others become L/RGB.
                if img.mode not in ("L", "P", "RGB", "I;16", "I", "F", "1"):
                    img = img.convert("RGB")
                array = np.asarray(img)
    except Exception as exc:  # tifffile/PIL raise many types for corrupt files
        raise DataError(f"{path.name} could not be read as an image ({exc}); is the file corrupt?") from exc
    if array.ndim < 2 or array.size == 0:
        raise DataError(f"{path.name} could not be read as an image (no 2D pixel data, shape {array.shape}); "
                        "is the file corrupt?")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return np.asarray(array)


def read_stack(path: str | Path) -> np.ndarray:
    """Read a file or a folder of same-sized images (stacked in name order).

    Returns:
        The array as stored: (Y, X), (Y, X, C), (Z, Y, X) or (Z, Y, X, C).
    """
    path = Path(path)
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise DataError(f"{path} holds no tif/png/jpg/gif images: choose the folder that holds them.")
        arrays = [read_image(files[0])]
        for f in files[1:]:  # stop at the first odd one, before reading the rest
            arrays.append(read_image(f))
            if arrays[-1].shape != arrays[0].shape:
                raise DataError(
                    f"The images in {path} differ in size ({f.name} is {arrays[-1].shape}, {files[0].name} is "
                    f"{arrays[0].shape}): a folder is read as one stack, so all images must share one size."
                )
        return np.stack(arrays)
    return read_image(path)


def as_stack(array: np.ndarray) -> np.ndarray:
    """Bring an image to (Z, Y, X, C), C = 1 (grey) or 3 (RGB; alpha dropped).

    A last axis of 3 or 4 is read as colour; anything else as grey slices.
    """
    array = np.asarray(array)
    given = array.shape  # the message shows the shape as stored, not after adding axes
    is_colour = array.ndim >= 3 and array.shape[-1] in (3, 4) and array.shape[-2] > 4
    if is_colour:
        array = array[..., :3]
        if array.ndim == 3:
            array = array[None]
    else:
        if array.ndim == 2:
            array = array[None]
        array = array[..., None]
    if array.ndim != 4:
        raise DataError(
            f"Expected a 2D image, an RGB image or a 3D stack, got an array of shape {given}: save one "
            "time point and one channel as a (Z, Y, X) stack and open it again."
        )
    return array


def read_labels(path: str | Path, invert: bool = False) -> np.ndarray:
    """Read a label file or folder as (Z, Y, X) uint8 in the project convention."""
    labels = labels_from_array(read_stack(path), invert=invert)
    return labels if labels.ndim == 3 else labels[None]


def read_mask(path: str | Path) -> np.ndarray:
    """Read a FOV mask (file or folder) as (Z, Y, X) bool, nonzero = inside."""
    mask = first_channel(read_stack(path)) != 0
    return mask if mask.ndim == 3 else mask[None]


def check_same_shape(images: np.ndarray, other: np.ndarray, what: str) -> None:
    """Raise DataError unless ``other`` (Z, Y, X) matches the images' (Z, Y, X).

    Args:
        images: (Z, Y, X, ...) the images (or anything of their (Z, Y, X)).
        other: (Z, Y, X) labels or masks for them.
        what: how the message calls ``other``, without article (e.g. "labels", "--fov mask").
    """
    if other.shape != images.shape[:3]:
        raise DataError(
            f"The shape of the {what}, {other.shape} (Z, Y, X), is not the images' {images.shape[:3]}: "
            f"choose the {what} of these images (one slice per image slice, same size)."
        )


def apply_fov(labels: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
    """Mark pixels outside the FOV as IGNORE (returns a copy)."""
    labels = labels.copy()
    if fov is not None:
        labels[~fov] = IGNORE
    return labels


def load_pairs(
    images: str | Path,
    labels: str | Path | None = None,
    fov: str | Path | None = None,
    invert_labels: bool = False,
) -> LabelledStack:
    """Read images with their labels (and FOV) from explicit paths, checking shapes."""
    stack = as_stack(read_stack(images))
    names = _slice_names(Path(images), stack.shape[0])
    result = LabelledStack(images=stack, names=names, kind=_guess_kind(stack), layout="files")
    if labels is not None:
        result.labels = read_labels(labels, invert=invert_labels)
        check_same_shape(stack, result.labels, "labels")
        if not np.any(result.labels == STRUCTURE):
            raise DataError(
                f"{Path(labels).name} has no foreground (no structure pixel): choose the labels of these images, "
                "or, if they store the structure as 0 (like ISBI's membranes), invert them (--invert-labels)."
            )
    if fov is not None:
        result.fov = read_mask(fov)
        check_same_shape(stack, result.fov, "FOV masks")
    return result


def parse_slices(text: str, count: int, what: str = "Slices") -> list[int]:
    """Slice numbers written as "3 7", "0-4" or "0-4, 9" (sorted, without repeats).

    Raises:
        DataError: not numbers, or outside 0..count-1; the message shows what to write.
    """
    slices: list[int] = []
    for value in text.replace(",", " ").split():
        try:
            if "-" in value:
                first, last = (int(v) for v in value.split("-"))
                slices.extend(range(first, last + 1))
            else:
                slices.append(int(value))
        except ValueError:
            raise DataError(f"{what} {value!r}: give slice numbers such as 25 26 or a range 25-29.") from None
    bad = [z for z in slices if not 0 <= z < count]
    if bad:
        raise DataError(f"{what} {bad}: the stack has slices 0-{count - 1}.")
    if not slices:
        raise DataError(f"{what}: give slice numbers such as 25 26 or a range 25-29.")
    return sorted(set(slices))


def _slice_names(path: Path, count: int) -> list[str]:
    if path.is_dir():
        return [f.stem for f in image_files(path)]
    if count == 1:
        return [path.stem]
    return [f"{path.stem} [{z}]" for z in range(count)]


def _guess_kind(stack: np.ndarray) -> str:
    return "fundus" if stack.shape[-1] == 3 else "em"


# ---------------------------------------------------------------------------- layouts


def detect_layout(path: str | Path) -> str | None:
    """Name the known layout of a folder: "isbi", "isbi-png", "drive" or None."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "train-volume.tif").is_file():
        return "isbi"
    if (path / "train" / "image").is_dir() and (path / "train" / "label").is_dir():
        return "isbi-png"
    if (path / "images").is_dir() and ((path / "1st_manual").is_dir() or (path / "mask").is_dir()):
        return "drive"
    return None


def load_dataset(path: str | Path) -> LabelledStack:
    """Read a file, a folder of slices, or a folder in the ISBI 2012 / DRIVE layout.

    ISBI: ``train-volume.tif`` (+ ``train-labels.tif``, 255 = cell, 0 = membrane, converted)
    or ``train/image`` + ``train/label``. DRIVE: ``images/*.tif``, ``1st_manual/*.gif``,
    ``mask/*.gif``; pixels outside the FOV are labelled IGNORE.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist: check the path.")
    layout = detect_layout(path)
    if layout == "isbi":
        labels = path / "train-labels.tif"
        result = load_pairs(path / "train-volume.tif", labels if labels.is_file() else None, invert_labels=True)
        result.names = [f"slice {z}" for z in range(result.images.shape[0])]
    elif layout == "isbi-png":
        result = load_pairs(path / "train" / "image", path / "train" / "label", invert_labels=True)
    elif layout == "drive":
        manual = path / "1st_manual"
        mask = path / "mask"
        result = load_pairs(
            path / "images",
            manual if manual.is_dir() and image_files(manual) else None,
            mask if mask.is_dir() and image_files(mask) else None,
        )
        result.kind = "fundus"
        if result.labels is not None:
            result.labels = apply_fov(result.labels, result.fov)
    else:
        if path.is_dir() and (path / "training").is_dir() and (path / "test").is_dir():
            raise DataError(f"{path} holds a DRIVE 'training' and a 'test' folder: open one of them.")
        result = load_pairs(path)
        layout = "folder" if path.is_dir() else ("stack" if result.images.shape[0] > 1 else "image")
    result.layout = layout
    return result


# ---------------------------------------------------------------------------- normalisation


MIN_IMAGE_SIDE = 16  # smaller images hold too little context for a U-Net to say anything


def check_images(images: np.ndarray, name: str = "The image") -> str:
    """Refuse images that cannot give a meaningful prediction; describe repaired ones.

    Args:
        images: (Z, Y, X, C) any dtype.
        name: how to call the image in messages (e.g. "'slice.tif'").

    Returns:
        "" for clean input, else one sentence on what `normalize` will do about it
        (non-finite pixels are treated as the darkest value of their slice).

    Raises:
        DataError: smaller than MIN_IMAGE_SIDE pixels, no finite value in a slice, or
            the same value everywhere.
    """
    z, y, x = images.shape[:3]
    if min(y, x) < MIN_IMAGE_SIDE:
        raise DataError(f"{name} is {y}x{x} pixels: too small to segment (at least "
                        f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}). Open the full image, not a thumbnail or a crop.")
    if images.dtype.kind not in "biuf":
        raise DataError(f"{name} holds {images.dtype} values, not intensities: open an image file.")
    finite = np.isfinite(images) if images.dtype.kind == "f" else None
    if finite is not None:
        empty = [int(k) for k in np.nonzero(~finite.reshape(z, -1).any(axis=1))[0]]
        if empty:
            which = "every slice" if len(empty) == z else f"slice(s) {empty[:10]}"
            raise DataError(f"{name} has no finite value (only NaN or infinity) in {which}: "
                            "nothing to segment there. Check how the image was exported.")
        low, high = images[finite].min(), images[finite].max()
    else:
        low, high = images.min(), images.max()
    if max(abs(float(low)), abs(float(high))) > float(np.finfo(np.float32).max):
        raise DataError(f"{name} holds values beyond ±3.4e38, more than the network can read: "
                        "rescale the image (e.g. divide it by its maximum) and open it again.")
    if low == high:
        raise DataError(f"{name} has the same value ({low}) everywhere: there is nothing to segment. "
                        "Check that the right image or channel was opened.")
    bad = 0 if finite is None else int(finite.size - np.count_nonzero(finite))
    if bad:
        return f"{bad:,} NaN or infinite pixel(s) were treated as the darkest value of their slice."
    return ""


def normalize(images: np.ndarray, normalization: dict | None = None,
              levels: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Scale each slice and channel to [0, 1] between two percentiles.

    Per slice, so that 8-bit, 16-bit and float data, and slices with drifting
    brightness, look the same to the network. Percentiles are taken over the finite
    pixels; NaN and infinite pixels become 0 (the darkest value).

    Args:
        images: (Z, Y, X, C) any dtype.
        normalization: ``{"method": "percentile", "low": p, "high": q}`` (stored in models).
        levels: (low, high), each (C,): the same intensities for every slice instead of
            each slice's percentiles (volumes: `core.volume.volume_levels`).

    Returns:
        (Z, Y, X, C) float32 in [0, 1].
    """
    norm = normalization or DEFAULT_NORMALIZATION
    if norm.get("method") != "percentile":
        raise DataError(f"The model asks for an unknown normalisation ({norm.get('method')!r}): it was saved by "
                        "another program or a newer napari-unet; update napari-unet or choose another model.")
    data = np.asarray(images, dtype=np.float32)
    finite = np.isfinite(data)
    if levels is not None:
        low, high = (np.asarray(level, np.float32).reshape(1, 1, 1, -1) for level in levels)
    elif finite.all():
        low, high = np.percentile(data, [norm["low"], norm["high"]], axis=(1, 2), keepdims=True)
    else:
        data = np.where(finite, data, np.nan)
        low, high = np.nanpercentile(data, [norm["low"], norm["high"]], axis=(1, 2), keepdims=True)
        low, high = np.nan_to_num(low), np.nan_to_num(high)
    scale = np.where(high - low > 1e-12, high - low, 1.0)
    out = np.clip((data - low) / scale, 0.0, 1.0)
    if not finite.all():
        out[~finite] = 0.0
    return out.astype(np.float32, copy=False)


def data_hash(images: np.ndarray, labels: np.ndarray | None = None) -> str:
    """Short content hash recorded in a model's training history."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    if labels is not None:
        digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()[:16]
