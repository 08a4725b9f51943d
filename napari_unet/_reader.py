"""napari reader: tif stacks, png/jpg images, DRIVE gif labels and FOV masks, ISBI/DRIVE folders,
and volumes larger than memory (zarr, OME-Zarr, N5, tifs and folders over 1 GB) as lazy layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.data import IMAGE_SUFFIXES, DataError, LabelledStack, detect_layout, image_files, load_dataset, read_stack
from .core.labels import label_colours, labels_from_array
from .core.volume import SIZES, ZARR_SUFFIXES, Sizes, Volume, is_volume_path, open_volume, volume_levels

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
        if p.suffix.lower() in ZARR_SUFFIXES:
            return read_for_viewer if p.exists() else None
        if p.is_dir():
            if detect_layout(p) or image_files(p):
                return read_for_viewer
            return None
        return read_for_viewer if p.suffix.lower() in IMAGE_SUFFIXES else None
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


def read_for_viewer(path: str | list[str]) -> list[tuple]:
    """What napari's File ▸ Open and drag and drop call: `read_layers`, refusing a volume
    napari could only show by reading whole huge slices (the Load widget offers its pyramid).
    napari passes no parameters: the default `SIZES` decide."""
    tuples = read_layers(path)
    if tuples and too_large_to_show_flat(*tuples[0]):
        name = Path(path[0] if isinstance(path, list) else path).name
        raise DataError(f"{name} holds slices too large to show without smaller levels: napari would read whole "
                        "slices and freeze. Open it with the napari-unet Load widget, which writes its averaged "
                        f"pyramid once, or run napari-unet pyramid {name} --out {Path(name).stem}.ome.zarr")
    return tuples


def too_large_to_show_flat(data, meta: dict, kind: str, sizes: Sizes = SIZES) -> bool:
    """Whether a layer read on demand has slices over ``sizes.show_flat`` pixels and no smaller
    levels: napari reads a flat layer's whole slice at each step (64 MB and up: a stall of seconds)."""
    import dask.array as da

    if meta.get("multiscale") or not isinstance(data, da.Array):
        return False
    height, width = data.shape[-3:-1] if meta.get("rgb") else data.shape[-2:]
    return height * width > sizes.show_flat


def read_layers(path: str | list[str], contrast: bool = True, sizes: Sizes = SIZES) -> list[tuple]:
    """Read a file or folder into napari layer-data tuples (image, ground truth, FOV).

    ``contrast`` False: a grey volume's contrast is not sampled (the Load widget samples it
    in a worker, `volume_contrast`); an integer one gets its type's range meanwhile.
    ``sizes``: which files are opened lazily, and how (the Load widget passes its session's)."""
    path = Path(path[0] if isinstance(path, list) else path)
    role = file_role(path)
    if is_volume_path(path, sizes):
        return volume_layers(open_volume(path, sizes), path, role, contrast)
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


def volume_layers(volume: Volume, source: Path, role: str = "image", contrast: bool = True) -> list[tuple]:
    """A lazy layer for a volume: dask arrays, every resolution level of a multiscale
    image (napari shows the level that fits the screen); nothing is read but the slices
    on screen and a sample for the contrast."""
    grey = volume.data.shape[-1] == 1
    levels = [level[..., 0] if grey else level for level in volume.levels or [volume.data]]
    levels = [level[0] if level.shape[0] == 1 else level for level in levels]
    name = source.name.split(".")[0] or source.name
    data = levels if len(levels) > 1 else levels[0]
    if role != "image":  # e.g. a mask written by napari-unet predict --out mask.zarr
        return [(data, _labels_meta(name, "prediction", source), "labels")]
    meta = {
        "name": name,
        "rgb": not grey,
        "multiscale": len(levels) > 1,
        "metadata": {"napari_unet": {"role": "image", "kind": "em" if grey else "fundus", "source": str(source),
                                     "layout": "volume", "pixel_size_nm": volume.pixel_size_nm}},
    }
    if grey and contrast:  # from a sample of slices: napari would otherwise read the data to guess
        limits = volume_contrast(volume)
        if limits is not None:
            meta["contrast_limits"] = limits
    elif grey and volume.data.dtype.kind in "ui":  # sampled later, in a worker: nothing read now
        info = np.iinfo(volume.data.dtype)
        meta["contrast_limits"] = [float(info.min), float(info.max)]
    return [(data, meta, "image")]


def volume_contrast(volume: Volume) -> list[float] | None:
    """[low, high] for showing a grey volume, from 8 slices of its coarsest level; None for
    a blank one (Predict will say so)."""
    coarsest = volume.levels[-1] if volume.levels else volume.data
    try:
        low, high = volume_levels(coarsest, {"method": "percentile", "low": 0.5, "high": 99.8}, samples=8)
    except DataError:
        return None
    return [float(low[0]), float(high[0])]


def _labels_meta(name: str, role: str, source: Path, kind: str = "") -> dict:
    meta = {
        "name": name,
        "metadata": {"napari_unet": {"role": role, "source": str(source), "kind": kind}},
        "colormap": label_colours(role),
        "opacity": 0.5 if role == "truth" else 0.3,
    }
    if role == "fov":
        meta["visible"] = False
    return meta

