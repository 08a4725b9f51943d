"""napari reader: tif stacks, png/jpg images, DRIVE gif labels and FOV masks, ISBI/DRIVE folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.data import (
    IMAGE_SUFFIXES,
    LabelledStack,
    detect_layout,
    image_files,
    labels_from_array,
    load_dataset,
    read_stack,
)

LABEL_WORDS = ("label", "manual", "truth", "_gt", "-gt", "annotation")
MASK_WORDS = ("mask", "fov")


def get_reader(path: str | list[str]):
    """Return a reader for paths this plugin understands, else None (never raises)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        p = Path(path)
        if p.is_dir():
            if detect_layout(p) or image_files(p):
                return read_layers
            return None
        return read_layers if p.suffix.lower() in IMAGE_SUFFIXES else None
    except (OSError, TypeError, ValueError):
        return None


def file_role(path: Path) -> str:
    """"labels", "mask" or "image", from the file name (DRIVE: *_manual1.gif, *_mask.gif)."""
    name = path.name.lower()
    if any(w in name for w in MASK_WORDS):
        return "mask"
    if any(w in name for w in LABEL_WORDS):
        return "labels"
    return "image"


def read_layers(path: str | list[str]) -> list[tuple]:
    """Read a file or folder into napari layer-data tuples (image, ground truth, FOV)."""
    path = Path(path[0] if isinstance(path, list) else path)
    role = file_role(path)
    if role != "image" and not path.is_dir():
        raw = read_stack(path)
        if role == "mask":
            return [(np.asarray(raw != 0, np.uint8), _labels_meta(f"{path.stem}", "fov", path), "labels")]
        invert = path.name.lower().startswith("train-labels")  # ISBI: 0 = membrane
        return [(labels_from_array(raw, invert=invert), _labels_meta(path.stem, "truth", path), "labels")]
    return stack_layers(load_dataset(path), path)


def stack_layers(stack: LabelledStack, source: Path) -> list[tuple]:
    """Layer-data tuples for a loaded stack; a single slice becomes a 2D layer."""
    name = source.stem if source.suffix else source.name
    if stack.layout == "drive":
        name = f"{source.parent.name}/{source.name}" if source.name in ("training", "test") else name
    squeeze = stack.images.shape[0] == 1
    images = stack.images[0] if squeeze else stack.images
    rgb = stack.images.shape[-1] == 3
    if not rgb:
        images = images[..., 0]
    sample = images[::max(1, images.shape[0] // 4)] if not squeeze else images
    low, high = np.percentile(sample, [0.5, 99.8])
    meta = {
        "name": name,
        "rgb": rgb,
        "metadata": {"napari_unet": {"role": "image", "kind": stack.kind, "source": str(source),
                                     "layout": stack.layout, "names": stack.names}},
    }
    if not rgb and high > low:
        meta["contrast_limits"] = [float(low), float(high)]
    layers = [(images, meta, "image")]
    if stack.labels is not None:
        labels = stack.labels[0] if squeeze else stack.labels
        layers.append((labels, _labels_meta(f"{name} ground truth", "truth", source, stack.kind), "labels"))
    if stack.fov is not None:
        fov = stack.fov[0] if squeeze else stack.fov
        layers.append((fov.astype(np.uint8), _labels_meta(f"{name} FOV", "fov", source, stack.kind), "labels"))
    return layers


def _labels_meta(name: str, role: str, source: Path, kind: str = "") -> dict:
    from ._widgets._layers import label_colormap

    meta = {
        "name": name,
        "metadata": {"napari_unet": {"role": role, "source": str(source), "kind": kind}},
        "colormap": label_colormap(role),
        "opacity": 0.5 if role == "truth" else 0.3,
    }
    if role == "fov":
        meta["visible"] = False
    return meta

