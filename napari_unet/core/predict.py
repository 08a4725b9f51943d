"""Overlap-tile prediction over 2D images and stacks of any size.

As in the U-Net paper, borders are mirror-padded so every pixel sees context; tiles
overlap and are blended with a Gaussian (or linear) taper so no seams show; tiles are
run in batches; on CUDA out-of-memory the batch, then the tile, is halved and retried.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch

from .calibration import shift_output
from .checkpoint import Checkpoint
from .data import DataError, check_images, normalize

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


FLIP_AXES = {"x": 2, "y": 1}  # axes of a (C, Y, X) image


class PredictionCancelled(Exception):
    """Raised between batches when the cancel check returns True."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Pick a torch device: "auto" = cuda, then mps, then cpu; explicit ones are checked.

    Raises:
        ValueError: an explicit device that this machine does not have.
    """
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("No CUDA GPU is available here: choose device 'auto' or 'cpu'.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("Apple MPS is not available here: choose device 'auto' or 'cpu'.")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"Unknown device {name!r}: use auto, cpu, cuda or mps.")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """What a user should read: the GPU's name, "Apple MPS" or "CPU (N threads)"."""
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"


def has_fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 mixed precision speeds this device up: CUDA GPUs, and CPUs with
    AMX units (Intel Sapphire Rapids and later: training steps 2-3x faster there). On
    other CPUs bfloat16 is emulated and slower, so they stay in float32."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        try:
            return bool(torch.cpu.get_capabilities().get("amx_bf16", False))
        except (AttributeError, RuntimeError):  # older torch: no capability query
            return False
    return False


def blend_window(tile: int, mode: str = "gaussian") -> np.ndarray:
    """(tile, tile) float32 weights, highest in the centre, never zero (so edges still count)."""
    if mode == "gaussian":
        # sigma = tile/8, as nnU-Net and MONAI use.
        centre = (tile - 1) / 2
        line = np.exp(-((np.arange(tile) - centre) ** 2) / (2 * (tile / 8) ** 2))
    elif mode == "linear":
        line = np.minimum(np.arange(1, tile + 1), np.arange(tile, 0, -1)).astype(np.float64)
    elif mode == "constant":
        line = np.ones(tile)
    else:
        raise ValueError(f"Unknown blending {mode!r}: use gaussian, linear or constant.")
    window = np.outer(line, line)
    window /= window.max()
    return np.maximum(window, 1e-3).astype(np.float32)


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)  # the last tile ends flush with the border
    return starts


def sliding_window(
    image: np.ndarray,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    tile: int = 256,
    overlap: float = 0.25,
    batch_size: int = 4,
    blend: str = "gaussian",
    margin: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    keep_on_device: bool = False,
) -> np.ndarray | torch.Tensor:
    """Run ``predictor`` over overlapping tiles of one image (or several) and blend the outputs.

    The images go to the device once; tiles are cut, predicted and blended there, so a
    GPU never waits for the host between batches, and a batch takes tiles from several
    images when one image has too few.

    Args:
        image: (C, Y, X) float32, or (N, C, Y, X) for N images of one size.
        predictor: maps a (B, C, tile, tile) tensor on ``device`` to (B, K, tile, tile).
        tile: tile edge in pixels.
        overlap: fraction of a tile shared with its neighbour, in [0, 0.9].
        margin: mirror padding added around the image first (default tile // 8).
        progress: called with (tiles done, tiles total) after each batch.
        cancel: checked before each batch; True raises PredictionCancelled.
        keep_on_device: return the torch tensor on ``device`` without waiting for it
            (the caller can queue more work first).

    Returns:
        (K, Y, X) float32, or (N, K, Y, X) for (N, C, Y, X) input: the blended output.
    """
    if not 0 <= overlap <= 0.9:
        raise ValueError(f"overlap={overlap}: choose a fraction between 0 and 0.9.")
    if tile < 8:
        raise ValueError(f"tile={tile}: choose a tile of at least 8 pixels (256 is usual).")
    single = image.ndim == 3
    images = image[None] if single else image
    height, width = images.shape[2:]
    margin = tile // 8 if margin is None else margin
    # Mirror the borders (U-Net paper); images smaller than a tile are mirrored further at
    # the end, so an image up to (tile - 2 * margin) wide is predicted as one single tile.
    extra_y = max(0, tile - (height + 2 * margin))
    extra_x = max(0, tile - (width + 2 * margin))
    padded = np.pad(images, [(0, 0), (0, 0), (margin, margin + extra_y), (margin, margin + extra_x)],
                    mode="symmetric")
    device = torch.device(device)
    source = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))
    if device.type == "cuda":  # pinned memory: the copy runs while the host goes on
        source = source.pin_memory()
    source = source.to(device, non_blocking=True)
    step = max(1, int(round(tile * (1 - overlap))))
    corners = [(y, x) for y in _tile_starts(padded.shape[2], tile, step) for x in _tile_starts(padded.shape[3], tile, step)]
    window = torch.from_numpy(blend_window(tile, blend)).to(device)
    weights = torch.zeros(padded.shape[2:], dtype=torch.float32, device=device)
    for y, x in corners:  # the same for every image
        weights[y : y + tile, x : x + tile] += window
    jobs = [(n, y, x) for n in range(len(images)) for y, x in corners]
    output: torch.Tensor | None = None
    with torch.inference_mode():
        for done in range(0, len(jobs), batch_size):
            if cancel is not None and cancel():
                raise PredictionCancelled("Prediction cancelled.")
            batch = jobs[done : done + batch_size]
            tiles = torch.stack([source[n, :, y : y + tile, x : x + tile] for n, y, x in batch])
            result = predictor(tiles).float()
            if output is None:
                output = torch.zeros((len(images), result.shape[1], *padded.shape[2:]), dtype=torch.float32,
                                     device=device)
            for (n, y, x), values in zip(batch, result):
                output[n, :, y : y + tile, x : x + tile] += values * window
            if progress is not None:
                progress(done + len(batch), len(jobs))
        output = (output / weights)[:, :, margin : margin + height, margin : margin + width]
    if single:
        output = output[0]
    return output if keep_on_device else output.cpu().numpy()


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def sliding_window_with_retry(image: np.ndarray, predictor, tile: int, batch_size: int, multiple: int = 1, **kwargs):
    """`sliding_window`, retrying on out-of-memory with half the batch, then half the tile.

    Returns:
        (output, tile, batch_size) with the settings that worked.
    """
    while True:
        try:
            return sliding_window(image, predictor, tile=tile, batch_size=batch_size, **kwargs), tile, batch_size
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if batch_size > 1:
                batch_size //= 2
            elif tile // 2 >= max(64, multiple):
                tile = max(multiple, (tile // 2) // multiple * multiple)
            else:
                raise MemoryError(
                    "Out of GPU memory even with one 64-pixel tile: close other GPU programs or use device 'cpu'."
                ) from exc


PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# Slices whose padded float32 copies fit in this go to the device together: their tiles
# share batches, and the next group is prepared while the device works on this one.
GROUP_BYTES = {"cuda": 512 * 2**20, "other": 64 * 2**20}
CPU_BATCH_BYTES = 256 * 2**20


def inference_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype a model predicts in: "auto" is bfloat16 on GPUs that support it, else
    float16 on GPUs (older cards), and float32 on CPU and MPS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, precision)


class TilePredictor:
    """A model ready to predict tiles: in eval mode, on its device, its weights cast once.

    Called with (B, C, tile, tile) float tensors on the device; returns (B, 1, tile, tile)
    float32 probabilities of the structure. The caller's model is never moved or cast (a
    copy is, when needed), so a model being fine-tuned is left as it was.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "auto", precision: str = "auto",
                 compile: bool = False) -> None:
        self.device = resolve_device(device)
        self.dtype = inference_dtype(self.device, precision)
        self.config = getattr(model, "config", None)
        parameter = next(model.parameters())
        if parameter.device != self.device or parameter.dtype != self.dtype:
            model = copy.deepcopy(model).to(self.device, self.dtype)
        self.model = model.eval()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # tiles all have one size: pick the fastest kernels once
        if compile:
            self.model = torch.compile(self.model)

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = self.model(tiles.to(self.dtype)).float()
        return torch.sigmoid(logits[:, :1]) if logits.shape[1] == 1 else torch.softmax(logits, 1)[:, 1:2]

    def batch_size(self, tile: int) -> int:
        """Tiles per batch, from the memory a U-Net's activations take (about 12 x width x
        tile² values a tile): on a GPU as many as half its free memory holds; on a CPU
        within 256 MB (up to 4: larger batches are no faster there, only bigger)."""
        width = self.config.base_width if self.config is not None else 64
        per_tile = 12 * width * tile * tile * torch.finfo(self.dtype).bits // 8
        if self.device.type != "cuda":
            return int(max(1, min(4, CPU_BATCH_BYTES // per_tile)))
        free, _total = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(256, free // 2 // per_tile)))


def predict_stack(
    checkpoint: Checkpoint,
    images: np.ndarray,
    tile: int | None = None,
    overlap: float = 0.25,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    blend: str = "gaussian",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    pixel_size: float | None = None,
    levels: tuple[np.ndarray, np.ndarray] | None = None,
    precision: str = "auto",
    predictor: TilePredictor | None = None,
    _standardised: bool = False,
) -> np.ndarray:
    """Probability of the structure for every slice of a stack.

    Args:
        checkpoint: the model and its metadata (normalisation, tile size).
        images: (Z, Y, X, C) raw images, C matching the model's input channels.
        tile: tile edge; default from the model's metadata, rounded up to a multiple of 2**depth.
        batch_size: tiles per batch (default: `TilePredictor.batch_size`).
        progress: called with (tiles done, tiles total) over the whole stack.
        pixel_size: the images' pixel size in nm. When the model records the one it was
            trained at (metadata ``pixel_size_nm``, (y, x)), the slices are resampled to
            it, predicted, and the result resampled back: structures then have the width
            the model learnt.
        levels: fixed (low, high) intensities per channel, each (C,), for every slice
            (`core.volume.volume_levels`); default: each slice's own percentiles.
        precision: see `inference_dtype`.
        predictor: the model already on its device (`TilePredictor`), to reuse it across calls.

    A model that records ``output_shift_px`` has its result moved by it (`core.calibration`).
    Fundus models that store a ``fundus_reference`` (FOV diameter and colour statistics
    of their training images) see every photograph standardised to it first: see
    `_predict_fundus`.

    Returns:
        (Z, Y, X) float32 in [0, 1].

    Raises:
        DataError: images that cannot give a meaningful result (`check_images`).
    """
    config = checkpoint.config
    if images.ndim != 4:
        raise DataError(f"Expected a (Z, Y, X, C) stack, got shape {images.shape}.")
    if images.shape[-1] != config.in_channels:
        raise DataError(_channel_message(images.shape[-1], config.in_channels))
    predictor = predictor or TilePredictor(checkpoint.model, device, precision)
    again = dict(tile=tile, overlap=overlap, batch_size=batch_size, blend=blend, cancel=cancel, predictor=predictor)
    if checkpoint.metadata.get("fundus_reference") and images.shape[-1] == 3 and not _standardised:
        return _predict_fundus(checkpoint, images, progress, **again)
    scale = resampling(checkpoint, pixel_size)
    if scale is not None:
        from skimage.transform import rescale, resize

        shrink = scale[0] < 1 or scale[1] < 1
        resampled = np.stack([rescale(np.asarray(img, np.float32), scale, order=1, channel_axis=-1,
                                      preserve_range=True, anti_aliasing=shrink) for img in images])
        small = predict_stack(checkpoint, resampled, progress=progress, levels=levels, **again)
        return np.stack([resize(p, images.shape[1:3], order=1) for p in small]).astype(np.float32)
    check_images(images)
    multiple = config.size_multiple
    tile = int(tile or checkpoint.metadata.get("tile_size", 256))
    tile = max(multiple, math.ceil(tile / multiple) * multiple)
    batch_size = batch_size or predictor.batch_size(tile)
    # Mirror margin around the image (default tile // 8); a model may store its own.
    margin = checkpoint.metadata.get("tile_margin")
    # Already normalised by `_predict_fundus` (float32 in [0, 1]).
    normalized = images if _standardised else normalize(images, checkpoint.normalization, levels)
    # Test-time flips stored with the model (e.g. ["x"]): the prediction is the mean over
    # the image and its mirror images, which smooths the probability a little.
    flips = [None] + [FLIP_AXES[name] for name in checkpoint.metadata.get("test_time_flips", [])]
    count, height, width = normalized.shape[:3]
    kind = "cuda" if predictor.device.type == "cuda" else "other"
    group = max(1, min(count, GROUP_BYTES[kind] // ((height + tile) * (width + tile) * normalized.shape[3] * 4)))
    result = np.zeros((count, height, width), dtype=np.float32)
    pending: tuple[int, torch.Tensor] | None = None
    for start in range(0, count, group):
        chunk = np.ascontiguousarray(normalized[start : start + group].transpose(0, 3, 1, 2))
        total = None
        for f, axis in enumerate(flips):
            before = start * len(flips) + f * len(chunk)  # slice-passes done before this call

            def pass_progress(done: int, jobs: int, before: int = before, n: int = len(chunk)) -> None:
                if progress is not None:
                    per_slice = jobs // n
                    progress(before * per_slice + done, count * len(flips) * per_slice)

            flipped = chunk if axis is None else np.ascontiguousarray(np.flip(chunk, axis + 1))
            out, tile, batch_size = sliding_window_with_retry(
                flipped, predictor, tile=tile, batch_size=batch_size, multiple=multiple, margin=margin,
                overlap=overlap, blend=blend, device=predictor.device, progress=pass_progress, cancel=cancel,
                keep_on_device=True,
            )
            out = out[:, 0] if axis is None else torch.flip(out[:, 0], [axis])
            total = out if total is None else total + out
        # The device works on this group while the previous one is copied back.
        if pending is not None:
            result[pending[0] : pending[0] + len(pending[1])] = pending[1].cpu().numpy()
        pending = (start, torch.clamp(total / len(flips), 0.0, 1.0))
    result[pending[0] : pending[0] + len(pending[1])] = pending[1].cpu().numpy()
    return shift_output(result, checkpoint.metadata)  # onto the training labels' convention


def _predict_fundus(checkpoint: Checkpoint, images: np.ndarray, progress, **again) -> np.ndarray:
    """Fundus photographs from any camera, each made to look like the model's training images:

    1. scale: resampled so that the field of view (found in the photograph) has the
       diameter of the training images' (vessels then have the width the model learnt);
    2. colour: normalised, then each channel given the training images' mean and spread
       inside the FOV (`core.fov.match_colour`);
    3. predicted, set to 0 outside the FOV and resampled back to the photograph.
    """
    from skimage.transform import resize

    result = np.zeros(images.shape[:3], np.float32)
    for z, image in enumerate(images):
        ready, fov = standardise_fundus(checkpoint, image, fundus_zoom(checkpoint, image))

        def image_progress(done: int, total: int, z: int = z) -> None:
            if progress is not None:
                progress(z * total + done, len(images) * total)

        probability = predict_stack(checkpoint, ready[None], progress=image_progress, _standardised=True, **again)[0]
        probability[~fov] = 0.0
        result[z] = resize(probability, images.shape[1:3], order=1) if probability.shape != images.shape[1:3] \
            else probability
    return result


def fundus_zoom(checkpoint: Checkpoint, image: np.ndarray) -> float:
    """How much to resample a photograph so that its FOV has the training images' diameter
    (1.0 within 5 %)."""
    from .fov import field_of_view, fov_diameter

    zoom = checkpoint.metadata["fundus_reference"]["fov_diameter_px"] / max(1.0, fov_diameter(field_of_view(image)))
    return 1.0 if abs(zoom - 1) <= 0.05 else zoom


def standardise_fundus(checkpoint: Checkpoint, image: np.ndarray, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """A photograph as the model's training images looked (see `_predict_fundus`).

    Args:
        image: (Y, X, 3) raw; zoom: from `fundus_zoom`.

    Returns:
        (Y', X', 3) float32 normalised and colour-matched, and its (Y', X') bool FOV.
    """
    from skimage.transform import rescale

    from .fov import field_of_view, match_colour

    reference = checkpoint.metadata["fundus_reference"]
    if zoom != 1.0:
        image = rescale(np.asarray(image, np.float32), zoom, order=1, channel_axis=-1, preserve_range=True,
                        anti_aliasing=zoom < 1)
    fov = field_of_view(image)
    ready = match_colour(normalize(image[None], checkpoint.normalization)[0], fov, reference["mean"], reference["std"])
    return ready, fov


def standardise_fundus_stack(checkpoint: Checkpoint, raw: np.ndarray, *masks: np.ndarray | None):
    """Training photographs as the model will be shown them (`standardise_fundus`), with
    their label-like stacks resampled alongside, so a model learns what it will see.

    Args:
        raw: (N, Y, X, 3) photographs; masks: (N, Y, X) stacks (labels, edits) or None.

    Returns:
        (N, Y', X', 3) float32 images, then each mask as (N, Y', X') (nearest neighbour), or None.
    """
    from skimage.transform import resize

    zoom = float(np.median([fundus_zoom(checkpoint, image) for image in raw]))  # one size for the stack
    images = np.stack([standardise_fundus(checkpoint, image, zoom)[0] for image in raw])

    def nearest(stack: np.ndarray | None) -> np.ndarray | None:
        if stack is None or stack.shape[1:3] == images.shape[1:3]:
            return stack
        return np.stack([resize(m, images.shape[1:3], order=0, preserve_range=True, anti_aliasing=False)
                         for m in stack]).astype(stack.dtype)

    return (images, *(nearest(m) for m in masks))


def resampling(checkpoint: Checkpoint, pixel_size: float | None) -> tuple[float, float] | None:
    """(y, x) zoom from the data's pixel size to the model's, or None when there is
    nothing to do (either size unknown, or within 5 % of each other)."""
    trained_at = checkpoint.metadata.get("pixel_size_nm")
    if pixel_size is None or not trained_at:
        return None
    if not pixel_size > 0:
        raise DataError(f"pixel size {pixel_size}: give the images' pixel size in nm, a positive number.")
    scale = (pixel_size / float(trained_at[0]), pixel_size / float(trained_at[1]))
    return None if all(abs(s - 1) < 0.05 for s in scale) else scale


def _channel_message(got: int, expected: int) -> str:
    if got == 3 and expected == 1:
        return "This model takes grey images (1 channel) but the image is RGB: choose an RGB (fundus) model or convert the image to grey."
    if got == 1 and expected == 3:
        return "This model takes RGB images (fundus) but the image is grey: choose a grey (EM) model."
    return f"The model takes {expected} channel(s) but the image has {got}: choose a matching model."


def threshold_mask(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 mask, 1 where the probability exceeds ``threshold``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold}: choose a value between 0 and 1.")
    return (probabilities > threshold).astype(np.uint8)


INSTANCE_METHODS = ("watershed", "components")


def instance_method(checkpoint: Checkpoint) -> str:
    """The model's own way to cells (metadata ``instance_method``, chosen when it was
    packaged: see benchmarks/train_builtin.py), else the seeded watershed."""
    method = checkpoint.metadata.get("instance_method", "watershed")
    return method if method in INSTANCE_METHODS else "watershed"


def cell_instances(mask: np.ndarray, method: str = "watershed", seed_depth: float = 0.7) -> np.ndarray:
    """One id per cell, slice by slice, from a membrane mask.

    ``components``: the 4-connected regions enclosed by membrane; one gap in a membrane
    merges the two cells it separates. ``watershed`` (the default where a model records
    no ``instance_method``; it mends gaps but may split a cell at a neck): seeds are the h-maxima of the distance to the nearest
    membrane, h being ``seed_depth`` times the median inner radius of the enclosed
    regions (so it follows the pixel size), and a watershed of the negated distance grows
    them inside the cells until they meet, drawing a border at each neck, where a
    narrow gap in a membrane is.

    Args:
        mask: (Z, Y, X) membrane mask (nonzero = membrane).
        method: one of INSTANCE_METHODS.

    Returns:
        (Z, Y, X) int32, 0 on membranes (and watershed borders), ids unique across the stack.
    """
    from scipy import ndimage
    from skimage.measure import label
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    if method not in INSTANCE_METHODS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(INSTANCE_METHODS)}.")
    out = np.zeros(mask.shape, dtype=np.int32)
    offset = 0
    for z in range(mask.shape[0]):
        inside = mask[z] == 0
        cells = label(inside, connectivity=1)
        if method == "watershed" and cells.max() > 0:
            distance = ndimage.distance_transform_edt(inside)
            radii = ndimage.maximum(distance, cells, np.arange(1, cells.max() + 1))
            depth = max(1.0, seed_depth * float(np.median(radii)))
            seeds = label(h_maxima(distance, depth) & inside, connectivity=2)
            cells = watershed(-distance, seeds, mask=inside, watershed_line=True)
        cells = cells.astype(np.int32)
        out[z] = np.where(cells > 0, cells + offset, 0)
        offset += int(cells.max())
    return out
