"""Volumes larger than memory: opened lazily, normalised from a subsample, written slice by slice.

Sources, none of them read until a slice is asked for:

* zarr arrays, and OME-Zarr images with all their resolution levels (finest first);
* N5, where the installed zarr reads it (zarr 2);
* tif stacks, through tifffile's zarr interface (one page read at a time);
* folders of same-sized slices: one lazy read per file.

Every volume is a dask array (Z, Y, X, C), C = 1 (grey) or 3 (RGB). Outputs are chunked
zarr stores (or memory-mapped tifs) written one slice at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from .data import DEFAULT_NORMALIZATION, DataError, image_files, read_image

ZARR_SUFFIXES = (".zarr", ".n5")
# Black registration padding: a region of exact zeros touching the border, at least this
# share of the slice (small dark spots at the border are data).
PADDING_SHARE = 0.01
NM_PER_UNIT = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "micron": 1e3, "micrometer": 1e3,
               "mm": 1e6, "millimeter": 1e6, "angstrom": 0.1, "å": 0.1}


@dataclass(frozen=True)
class Sizes:
    """The sizes at which large data is handled otherwise: read lazily or by region,
    predicted block by block, shown through display levels, corrected a region at a time.

    Passed as a parameter to what uses them (``sizes=SIZES``, the defaults every user
    gets); the widgets read theirs from the viewer's session (``get_session(viewer).sizes``)
    and the CLI's typed handlers take one, so tests and benchmarks pass small ones instead
    of patching module globals. The napari reader hook (File ▸ Open) takes no parameters:
    it uses `SIZES`. The last two are only the widgets' and the reader's (napari's limits),
    kept here so that one object holds every size of a session.
    """

    #: A tif or folder of more bytes is opened lazily and predicted slice by slice (below, reading it whole is faster).
    lazy_bytes: int = 1 << 30
    #: Edge of the regions a large slice is read in (a tif's, where its layout allows) and a pyramid written in.
    region: int = 2048
    #: A slice of more pixels is opened lazily and predicted block by block (its float copies: over 100 MB each).
    large_slice: int = 2 * 2048 * 2048
    #: Edge of those blocks (`PredictSettings.block`; a multiple of the outputs' 1,024-pixel chunks).
    block: int = 3072
    #: The coarsest display level of a large slice (and of a pyramid) is about this many pixels a side.
    screen: int = 2048
    #: Edge of the region Predict opens for correcting a montage (a whole number of `core.regions.CHUNK`).
    correct_region: int = 2048
    #: Slices of more pixels are montages in the widgets: corrected a region at a time, ranked by the CLI.
    gui_slice: int = 16384 * 16384
    #: A lazy layer of slices of more pixels and no smaller levels is not shown (napari would read whole slices).
    show_flat: int = 8192 * 8192


#: The sizes every user gets.
SIZES = Sizes()


@dataclass
class Volume:
    """A lazily read image volume.

    Attributes:
        data: (Z, Y, X, C) dask array, the finest resolution.
        levels: every resolution level, finest first (just ``[data]`` for most files).
        pixel_size_nm: (y, x) pixel size from the file's metadata, or None.
        source: the path it was opened from.
    """

    data: object
    levels: list = field(default_factory=list)
    pixel_size_nm: tuple[float, float] | None = None
    source: str = ""


def is_volume_path(path: str | Path, sizes: Sizes = SIZES) -> bool:
    """Whether ``path`` should be opened lazily: zarr / N5, a tif or folder over
    ``sizes.lazy_bytes``, or a tif whose slices have more than ``sizes.large_slice`` pixels."""
    path = Path(path)
    if path.suffix.lower() in ZARR_SUFFIXES:
        return True
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in image_files(path)) > sizes.lazy_bytes
        if path.suffix.lower() not in (".tif", ".tiff"):
            return False
        if path.stat().st_size > sizes.lazy_bytes:
            return True
        with tifffile.TiffFile(path) as tif:
            height, width = tif.pages[0].shape[:2]
        return height * width > sizes.large_slice
    except Exception:  # noqa: BLE001 (unreadable: reading it whole says what is wrong)
        return False


def open_volume(path: str | Path, sizes: Sizes = SIZES) -> Volume:
    """Open a zarr / OME-Zarr / N5 store, a tif stack or a folder of slices lazily.

    ``sizes``: how an uncompressed tif is read by region, and which gets display levels.

    Raises:
        DataError: missing or unreadable, or not one grey or RGB volume.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist: check the path.")
    try:
        if path.suffix.lower() in ZARR_SUFFIXES:
            volume = _open_zarr(path)
        elif path.is_dir():
            volume = _open_folder(path)
        elif path.suffix.lower() in (".tif", ".tiff"):
            volume = _open_tif(path, sizes)
        else:
            raise DataError(f"{path.name}: open zarr, N5, tif or a folder of images as a volume.")
    except DataError:
        raise
    except Exception as exc:  # zarr, tifffile and dask raise many types for broken stores
        raise DataError(f"{path.name} could not be opened as a volume ({exc}); is it complete?") from exc
    volume.source = str(path)
    return volume


def pixel_size_of(path: str | Path) -> float | None:
    """The pixel size in nm that a tif (ImageJ, OME) or OME-Zarr file records, or None.

    The mean of y and x when they differ (the models take one size for both).
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
            size = _tif_pixel_size(path)
        elif path.suffix.lower() == ".zarr":
            size = open_volume(path).pixel_size_nm
        else:
            return None
    except Exception:  # noqa: BLE001 (a hint: an unreadable header is reported when the pixels are read)
        return None
    return float(np.mean(size)) if size else None


def _open_zarr(path: Path) -> Volume:
    import dask.array as da
    import zarr

    if path.suffix.lower() == ".n5":
        n5_store = getattr(zarr, "N5FSStore", None)
        if n5_store is None:
            raise DataError(f"{path.name}: this zarr ({zarr.__version__}) cannot read N5. Convert it to zarr, "
                            "or install zarr 2 (pip install 'zarr<3').")
        node = zarr.open(n5_store(str(path)), mode="r")
    else:
        node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):  # a plain array
        return Volume(_as_zyxc(da.from_zarr(node), None, path.name))
    attrs = node.attrs.asdict()
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        arrays = [name for name, _ in node.arrays()]
        if len(arrays) != 1:
            raise DataError(f"{path.name} is a zarr group of {len(arrays)} arrays without OME-Zarr metadata: "
                            f"open the array itself ({path.name}/{arrays[0] if arrays else '<name>'}).")
        return Volume(_as_zyxc(da.from_zarr(node[arrays[0]]), None, path.name))
    image = multiscales[0]
    axes = [axis["name"] if isinstance(axis, dict) else axis for axis in image.get("axes", [])] or None
    levels = [_as_zyxc(da.from_zarr(node[level["path"]]), axes, path.name) for level in image["datasets"]]
    return Volume(levels[0], levels, _ome_pixel_size(image))


def _ome_pixel_size(image: dict) -> tuple[float, float] | None:
    """(y, x) nm of the finest level of an OME-Zarr multiscale image, when its units say."""
    axes = image.get("axes", [])
    scales = [t.get("scale") for t in image["datasets"][0].get("coordinateTransformations", [])
              if t.get("type") == "scale"]
    if not scales or not axes or not isinstance(axes[0], dict):
        return None
    sizes = {}
    for axis, value in zip(axes, scales[0]):
        factor = NM_PER_UNIT.get(str(axis.get("unit", "")).lower())
        if axis["name"] in ("y", "x") and factor:
            sizes[axis["name"]] = float(value) * factor
    return (sizes["y"], sizes["x"]) if len(sizes) == 2 else None


def _open_tif(path: Path, sizes: Sizes) -> Volume:
    import dask.array as da
    import zarr

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        offset, shape, dtype = series.dataoffset, tuple(series.shape), series.dtype
    if offset is not None:  # uncompressed and contiguous: any region is read alone
        rgb = len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] > 4  # as `_as_zyxc` reads it
        planes = len(shape) - (3 if rgb else 2)
        chunks = (1,) * planes + (sizes.region, sizes.region) + ((shape[-1],) if rgb else ())
        large = shape[planes] * shape[planes + 1] > sizes.large_slice
        # A large slice also gets views of every 2nd, 4th, ... pixel for display (napari shows
        # the level that fits the screen), each read straight from the file.
        steps = [1] + [2**k for k in range(1, 16)
                       if large and max(shape[planes:planes + 2]) >> k > sizes.screen // 2]
        levels = [_as_zyxc(da.from_array(TifRegions(path, offset, shape, dtype, step, planes), chunks=chunks,
                                         asarray=False), None, path.name) for step in steps]
        return Volume(levels[0], levels if len(levels) > 1 else [], _tif_pixel_size(path))
    # tifffile's zarr interface reads a tiled tif tile by tile and a striped one strip by strip;
    # a pyramidal tif (OME-TIFF sub-resolutions) is a group of its levels, napari shows them.
    node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    if hasattr(node, "shape"):
        return Volume(_as_zyxc(da.from_zarr(node), None, path.name), pixel_size_nm=_tif_pixel_size(path))
    arrays = sorted((int(name), array) for name, array in node.arrays() if name.isdigit())
    levels = [_as_zyxc(da.from_zarr(array), None, path.name) for _, array in arrays]
    return Volume(levels[0], levels if len(levels) > 1 else [], _tif_pixel_size(path))


class TifRegions:
    """An uncompressed, contiguous tif as an array whose regions are read alone.

    Each read maps the file, copies the region and unmaps it, so only the rows of the
    region are read and none stay in the process (a tif page is one chunk in tifffile's
    zarr interface: a region of a 40,000² slice would read all 1.6 GB of it).

    Args:
        shape: the file's array shape; planes: how many axes come before Y and X.
        step: > 1 for a view of every step-th pixel in Y and X (a display level).
    """

    def __init__(self, path: Path, offset: int, shape: tuple, dtype, step: int = 1, planes: int = 0) -> None:
        self.path, self.offset, self.file_shape, self.dtype = Path(path), offset, tuple(shape), np.dtype(dtype)
        self.step, self.planes = step, planes
        self.shape = tuple(-(-n // step) if planes <= i < planes + 2 else n for i, n in enumerate(shape))
        self.ndim = len(shape)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if self.step > 1:  # the view's indices -> every step-th pixel of the file
            key = tuple(self._scaled(k, n) if self.planes <= i < self.planes + 2 else k
                        for i, (k, n) in enumerate(zip(key, self.shape)))
        mapped = np.memmap(self.path, self.dtype, "r", self.offset, self.file_shape)
        try:
            return np.array(mapped[key])
        finally:
            del mapped

    def _scaled(self, key, length: int) -> slice | int:
        if not isinstance(key, slice):
            return range(length)[key] * self.step
        start, stop, stride = key.indices(length)
        return slice(start * self.step, stop * self.step, stride * self.step)


def _tif_pixel_size(path: Path) -> tuple[float, float] | None:
    """(y, x) nm from an ImageJ or OME-TIFF header, None when it does not say."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if tif.is_ome:
            pixels = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
            pixels = (pixels[0] if isinstance(pixels, list) else pixels).get("Pixels", {})
            sizes = [(pixels.get(f"PhysicalSize{a}"), pixels.get(f"PhysicalSize{a}Unit", "µm")) for a in "YX"]
            if all(size for size, _ in sizes) and all(unit.lower() in NM_PER_UNIT for _, unit in sizes):
                return tuple(float(size) * NM_PER_UNIT[unit.lower()] for size, unit in sizes)
            return None
        unit = str((tif.imagej_metadata or {}).get("unit", "")).lower().replace("\\u00b5", "µ")
        if unit not in NM_PER_UNIT or "XResolution" not in page.tags or "YResolution" not in page.tags:
            return None
        per_unit = [page.tags[f"{a}Resolution"].value for a in "YX"]  # (pixels, per units)
        if not all(n and d for n, d in per_unit):
            return None
        return tuple(d / n * NM_PER_UNIT[unit] for n, d in per_unit)


def _open_folder(path: Path) -> Volume:
    import dask
    import dask.array as da

    files = image_files(path)
    if not files:
        raise DataError(f"{path} holds no tif/png/jpg/gif images.")
    first = read_image(files[0])
    shapes = {f.name: _image_shape(f) for f in files}
    odd = [name for name, shape in shapes.items() if shape[:2] != first.shape[:2]]
    if odd:
        raise DataError(f"The images in {path} differ in size ({odd[0]} is {shapes[odd[0]][:2]}, "
                        f"{files[0].name} is {first.shape[:2]}): a folder is read as one stack, so all "
                        "images must share one size.")
    slices = [da.from_delayed(dask.delayed(read_image)(f), first.shape, first.dtype) for f in files]
    return Volume(_as_zyxc(da.stack(slices), None, path.name))


def _image_shape(path: Path) -> tuple[int, ...]:
    """(Y, X) of an image file from its header, without reading the pixels."""
    if path.suffix.lower() in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            return tuple(tif.pages[0].shape)
    from PIL import Image

    with Image.open(path) as image:
        return image.size[::-1]


def _as_zyxc(data, axes: list[str] | None, name: str):
    """A lazy array as (Z, Y, X, C), from OME axes (t, c, z, y, x) or from its shape."""
    if axes is not None:
        if len(axes) != data.ndim:
            raise DataError(f"{name}: its OME-Zarr metadata names {len(axes)} axes but the array has {data.ndim}, "
                            "so its axes cannot be told apart: write the volume again, or open the array itself.")
        for axis in [a for a in axes if a not in ("c", "z", "y", "x")]:
            if data.shape[axes.index(axis)] != 1:
                raise DataError(f"{name} has {data.shape[axes.index(axis)]} points along '{axis}': "
                                "save one time point (a Z, Y, X volume) to segment it.")
            data = data[tuple(0 if a == axis else slice(None) for a in axes)]
            axes = [a for a in axes if a != axis]
        if "z" not in axes:
            data, axes = data[None], ["z"] + axes
        if "c" not in axes:
            data, axes = data[..., None], axes + ["c"]
        data = data.transpose([axes.index(a) for a in ("z", "y", "x", "c")])
    elif data.ndim == 2:
        data = data[None, ..., None]
    elif data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[-2] > 4:
        data = data[None]
    elif data.ndim == 3:
        data = data[..., None]
    elif not (data.ndim == 4 and data.shape[-1] in (3, 4)):
        raise DataError(f"{name} has shape {data.shape}: open a 2D image, a (Z, Y, X) stack or an RGB one.")
    channels = data.shape[-1]
    if channels == 4:
        data = data[..., :3]  # RGBA: alpha dropped
    elif channels not in (1, 3):
        raise DataError(f"{name} has {channels} channels: save the channel to segment as a grey volume.")
    return data


def padding_mask(plane: np.ndarray) -> np.ndarray:
    """(Y, X) bool: black padding of an aligned slice, the regions of exact zeros that touch
    the border and cover at least PADDING_SHARE of it.

    Args:
        plane: (Y, X, C) one slice.
    """
    from scipy import ndimage

    zero = (plane == 0).all(axis=-1)
    if not zero.any():
        return zero
    regions, _count = ndimage.label(zero)
    border = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    border = border[border > 0]
    sizes = np.bincount(regions.ravel())
    padding = border[sizes[border] >= PADDING_SHARE * zero.size]
    return np.isin(regions, padding)


def volume_levels(data, normalization: dict | None = None, samples: int = 16,
                  max_pixels: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Intensities that map to 0 and 1 for the whole volume, from a subsample of it.

    Percentiles (the model's, e.g. 1 and 99.8) of up to ``samples`` evenly spaced slices,
    each thinned to about ``max_pixels``, leaving out black registration padding
    (`padding_mask`) and non-finite pixels. The same levels then serve every slice, so
    the network sees one contrast through the stack, and a slice mostly made of padding
    is not stretched.

    Args:
        data: (Z, Y, X, C) array-like (dask, zarr, numpy).

    Returns:
        (low, high), each (C,) float32.

    Raises:
        DataError: nothing but padding in the sampled slices, or one value everywhere.
    """
    norm = normalization or DEFAULT_NORMALIZATION
    count, height, width = data.shape[:3]
    stride = max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    values = []
    for z in np.unique(np.linspace(0, count - 1, min(count, samples)).round().astype(int)):
        plane = np.asarray(data[int(z), ::stride, ::stride])  # a lazy volume reads only these rows
        keep = ~padding_mask(plane)
        if plane.dtype.kind == "f":
            keep &= np.isfinite(plane).all(axis=-1)
        values.append(plane[keep].astype(np.float32))
    pixels = np.concatenate(values)
    if pixels.size == 0:
        raise DataError("The sampled slices hold nothing but black padding (zeros): there is nothing to "
                        "segment. Check that the right volume (or level) was opened.")
    low, high = np.percentile(pixels, [norm["low"], norm["high"]], axis=0)
    if np.all(high <= low):
        raise DataError(f"The volume has the same value ({low[0]:g}) everywhere in the sampled slices: there is "
                        "nothing to segment. Check that the right volume or channel was opened.")
    return low.astype(np.float32), high.astype(np.float32)


def create_output(path: str | Path, shape: tuple[int, int, int], dtype, chunk: int = 1024):
    """A new (Z, Y, X) array on disk, written one slice at a time.

    ``.zarr``: a chunked zarr store (chunks of one slice, at most chunk x chunk pixels,
    zarr format 2, which every zarr reader takes). ``.tif``: a memory-mapped tif.
    """
    path = Path(path)
    if path.suffix.lower() == ".zarr":
        import zarr

        chunks = (1, min(shape[1], chunk), min(shape[2], chunk))
        extra = {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}
        return zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **extra)
    if path.suffix.lower() in (".tif", ".tiff"):
        return tifffile.memmap(path, shape=shape, dtype=dtype, photometric="minisblack")
    raise DataError(f"{path.name}: a volume is written as .zarr or .tif; choose a name ending in .zarr or .tif.")
