"""Overlap-tile prediction: tiles, blending, devices, precision, and cells from masks.

`core.pipeline` predicts through these for every caller (and training validates with them).

As in the U-Net paper, borders are mirror-padded so every pixel sees context; tiles
overlap and are blended with a Gaussian (or linear) taper so no seams show; tiles are
run in batches; on CUDA out-of-memory the batch, then the tile, is halved and retried.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from .description import INSTANCE_METHODS

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


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Where the tiles of one axis start: every ``step``, the last flush with the border."""
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
    corners = [(y, x) for y in tile_starts(padded.shape[2], tile, step) for x in tile_starts(padded.shape[3], tile, step)]
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
            cells = watershed_cells(inside, distance, seed_depth * float(np.median(radii)))
        cells = cells.astype(np.int32)
        out[z] = np.where(cells > 0, cells + offset, 0)
        offset += int(cells.max())
    return out


def watershed_cells(inside: np.ndarray, distance: np.ndarray, depth: float) -> np.ndarray:
    """(Y, X) cell ids grown by a watershed from the h-maxima (h = ``depth``, at least 1)
    of ``distance`` (to the nearest membrane) inside the (Y, X) bool ``inside``."""
    from skimage.measure import label
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    seeds = label(h_maxima(distance, max(1.0, depth)) & inside, connectivity=2)
    return watershed(-distance, seeds, mask=inside, watershed_line=True)
