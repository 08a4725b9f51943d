"""Overlap-tile prediction: tiles, blending, devices, precision, and cells from masks.

`core.pipeline` predicts through these for every caller (and training validates with them).

As in the U-Net paper, borders are mirror-padded so every pixel sees context; tiles
overlap and are blended with a Gaussian (or linear) taper so no seams show; tiles are
run in batches; on CUDA out-of-memory the batch, then the tile, is halved and retried.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from .description import INSTANCE_METHODS
from .settings import DEFAULT_BLEND, DEFAULT_OVERLAP

T = TypeVar("T")

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


FLIP_AXES = {"y": 0, "x": 1}  # the spatial axis each test-time flip mirrors


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


def blend_window(tile: int, mode: str = DEFAULT_BLEND) -> np.ndarray:
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


Region = tuple[int, int, int, int]  # (y0, y1, x0, x1) in a slice's pixels
Flips = tuple[int, ...]  # spatial axes flipped in a test-time pass: () none, (0,) y, (1,) x


@dataclass(frozen=True)
class TileGrid:
    """The tile grid of one (height, width) slice, whatever part of it is predicted.

    As in the U-Net paper the slice is mirror-padded by ``margin`` on each side (and at its
    end up to one tile, when it is smaller), and a tile starts every ``step`` pixels, the
    last flush with the border. Coordinates here are *padded*: slice pixel (y, x) is at
    (y + margin, x + margin). A test-time flip predicts the flipped slice's own grid.
    """

    height: int
    width: int
    tile: int
    step: int
    margin: int

    @classmethod
    def of(cls, height: int, width: int, tile: int, overlap: float = DEFAULT_OVERLAP,
           margin: int | None = None) -> TileGrid:
        """The grid of tiles of edge ``tile`` sharing ``overlap`` of their edge (margin
        default tile // 8).

        Raises:
            ValueError: an overlap or tile that cannot work, with what to choose.
        """
        if not 0 <= overlap <= 0.9:
            raise ValueError(f"Overlap {overlap}: choose a fraction between 0 and 0.9.")
        if tile < 8:
            raise ValueError(f"Tile {tile}: choose a tile of at least 8 pixels (256 is usual).")
        margin = tile // 8 if margin is None else margin
        return cls(height, width, tile, max(1, int(round(tile * (1 - overlap)))), margin)

    @property
    def padded(self) -> tuple[int, int]:
        return max(self.height + 2 * self.margin, self.tile), max(self.width + 2 * self.margin, self.tile)

    def _frame(self, span: tuple[int, int], axis: int, flips: Flips) -> tuple[int, int]:
        """A padded-coordinate range in the (un)flipped slice's frame (the map is its own
        inverse; both frames pad the slice's start by ``margin``)."""
        if axis not in flips:
            return span
        length = (self.height, self.width)[axis] + 2 * self.margin
        return length - span[1], length - span[0]

    def tiles(self, region: Region, flips: Flips = ()) -> tuple[list[list[int]], list[tuple[int, int]]]:
        """Per axis, the starts (in the pass's frame) of the tiles that cover ``region``,
        and the padded range they read (in the unflipped frame)."""
        starts, sources = [], []
        for axis, (lo, hi) in enumerate((region[:2], region[2:])):
            target = self._frame((lo + self.margin, hi + self.margin), axis, flips)
            every = tile_starts(self.padded[axis], self.tile, self.step)
            chosen = [s for s in every if s < target[1] and s + self.tile > target[0]]
            starts.append(chosen)
            sources.append(self._frame((chosen[0], chosen[-1] + self.tile), axis, flips))
        return starts, sources

    def keys(self, region: Region, passes: list[Flips]) -> list[tuple[Flips, int, int]]:
        """(flips, y, x) of every tile ``region`` needs, each pass's in its own frame."""
        return [(flips, y, x) for flips in passes for ys, xs in [self.tiles(region, flips)[0]] for y in ys for x in xs]

    def read(self, source, span: list[tuple[int, int]]) -> np.ndarray:
        """(N, C, h, w) float32: the padded-coordinate ``span`` (per axis) of ``source``
        ((N, C, Y, X) array-like read by region), mirror-padded where it passes the
        slice's borders, as padding the whole slice would give."""
        (py0, py1), (px0, px1) = span
        m = self.margin
        y0, y1 = max(0, py0 - m), min(self.height, py1 - m)
        x0, x1 = max(0, px0 - m), min(self.width, px1 - m)
        part = np.asarray(source[:, :, y0:y1, x0:x1], np.float32)
        pad = [(0, 0), (0, 0), (y0 - (py0 - m), (py1 - m) - y1), (x0 - (px0 - m), (px1 - m) - x1)]
        return np.ascontiguousarray(np.pad(part, pad, mode="symmetric"))


def blend_tiles(source, grid: TileGrid, region: Region, predictor: Callable[[torch.Tensor], torch.Tensor],
                passes: list[Flips] | None = None, batch_size: int = 4, blend: str = DEFAULT_BLEND,
                device: torch.device | str = "cpu", computed: Callable[[int], None] | None = None,
                cancel: CancelCheck | None = None, cache=None) -> torch.Tensor:
    """The tiling engine: ``predictor``'s blended output on one region of N slices.

    Every pixel gets exactly what predicting the whole slices would give it: the tiles of
    the whole slices' grid that cover it, cut from the same mirror-padded image, blended in
    the same order with the same weights; each test-time pass predicts its flipped slice's
    own grid and is flipped back; the passes are averaged.

    Args:
        source: (N, C, Y, X) array-like of model-ready values read by region (a numpy
            array, or a reader that normalises what it reads, `core.blocks`).
        grid: the slices' `TileGrid`; region: (y0, y1, x0, x1) to predict.
        predictor: maps a (B, C, tile, tile) tensor on ``device`` to (B, K, tile, tile).
        passes: the test-time flips (default one pass, unflipped).
        computed: called with the number of tiles just computed, after each batch.
        cancel: checked before each batch; True raises PredictionCancelled.
        cache: tiles other regions share (`core.blocks.TileCache`: ``get(key)``, ``put(key,
            values)``, keys (n, flips, y, x)); None computes every tile.

    Returns:
        (N, K, h, w) float32 tensor on ``device``.
    """
    passes = passes or [()]
    device = torch.device(device)
    plans = [(flips, grid.tiles(region, flips)) for flips in passes]
    # One source range (padded coordinates, unflipped) serves every pass.
    span = [(min(p[1][1][axis][0] for p in plans), max(p[1][1][axis][1] for p in plans)) for axis in (0, 1)]
    image = torch.from_numpy(grid.read(source, span))
    if device.type == "cuda":  # pinned memory: the copy runs while the host goes on
        image = image.pin_memory()
    image = image.to(device, non_blocking=True)
    count, tile = image.shape[0], grid.tile
    window = torch.from_numpy(blend_window(tile, blend)).to(device)
    total = None
    with torch.inference_mode():
        for flips, ((ys, xs), _sources) in plans:
            frame = torch.flip(image, [axis + 2 for axis in flips]) if flips else image
            origin = [grid._frame(span[axis], axis, flips)[0] for axis in (0, 1)]
            jobs = [((n, flips, y, x), y - origin[0], x - origin[1]) for n in range(count) for y in ys for x in xs]
            output, weights = _blend_pass(frame, jobs, predictor, window, batch_size, computed, cancel, cache)
            # The region in this frame, relative to the source range.
            cut = [grid._frame((lo + grid.margin, hi + grid.margin), axis, flips)
                   for axis, (lo, hi) in enumerate((region[:2], region[2:]))]
            blended = (output / weights)[:, :, cut[0][0] - origin[0] : cut[0][1] - origin[0],
                                         cut[1][0] - origin[1] : cut[1][1] - origin[1]]
            if flips:
                blended = torch.flip(blended, [axis + 2 for axis in flips])
            total = blended if total is None else total + blended
    return total / len(passes)


def _blend_pass(frame: torch.Tensor, jobs: list, predictor, window: torch.Tensor, batch_size: int,
                computed, cancel, cache) -> tuple[torch.Tensor, torch.Tensor]:
    """One test-time pass of `blend_tiles`: the weighted sum of the tiles ``jobs`` ((key,
    y, x) in ``frame``, an (N, C, h, w) tensor) and the sum of their weights.

    The tiles are added in the order of ``jobs`` (the whole slice's, so every pixel gets
    the same sums): batches of new tiles, and between them those another region computed.

    Returns:
        (N, K, h, w) weighted sums and (h, w) weights.
    """
    tile = window.shape[0]
    weights = torch.zeros(frame.shape[2:], dtype=torch.float32, device=frame.device)
    for y, x in dict.fromkeys((y, x) for _key, y, x in jobs):  # each place once, whatever the slices
        weights[y : y + tile, x : x + tile] += window
    output: torch.Tensor | None = None

    def add(n: int, y: int, x: int, values: torch.Tensor) -> None:
        nonlocal output
        if output is None:
            output = torch.zeros((frame.shape[0], values.shape[0], *frame.shape[2:]), dtype=torch.float32,
                                 device=frame.device)
        output[n, :, y : y + tile, x : x + tile] += values * window

    def run(pending: list) -> None:
        if cancel is not None and cancel():
            raise PredictionCancelled("Prediction cancelled.")
        tiles = torch.stack([frame[key[0], :, y : y + tile, x : x + tile] for key, y, x in pending])
        for (key, y, x), values in zip(pending, predictor(tiles).float()):
            if cache is not None:
                cache.put(key, values)
            add(key[0], y, x, values)
        if computed is not None:
            computed(len(pending))
        pending.clear()

    pending: list = []
    for key, y, x in jobs:
        cached = None if cache is None else cache.get(key)
        if cached is None:
            pending.append((key, y, x))
            if len(pending) == batch_size:
                run(pending)
            continue
        if pending:
            run(pending)
        add(key[0], y, x, torch.from_numpy(cached).to(frame.device))
    if pending:
        run(pending)
    return output, weights


def sliding_window(
    image: np.ndarray,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    tile: int = 256,
    overlap: float = DEFAULT_OVERLAP,
    batch_size: int = 4,
    blend: str = DEFAULT_BLEND,
    margin: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> np.ndarray:
    """Run ``predictor`` over overlapping tiles of whole images and blend the outputs
    (`blend_tiles` on the whole image; training's validation uses it).

    Args:
        image: (C, Y, X) float32, or (N, C, Y, X) for N images of one size.
        predictor: maps a (B, C, tile, tile) tensor on ``device`` to (B, K, tile, tile).
        tile, overlap, margin: see `TileGrid.of`.
        progress: called with (tiles done, tiles total) after each batch.
        cancel: checked before each batch; True raises PredictionCancelled.

    Returns:
        (K, Y, X) float32, or (N, K, Y, X) for (N, C, Y, X) input.
    """
    single = image.ndim == 3
    images = image[None] if single else image
    height, width = images.shape[2:]
    grid = TileGrid.of(height, width, tile, overlap, margin)
    region = (0, height, 0, width)
    total = len(grid.keys(region, [()])) * len(images)
    done = [0]

    def computed(count: int) -> None:
        done[0] += count
        if progress is not None:
            progress(done[0], total)

    output = blend_tiles(images, grid, region, predictor, None, batch_size, blend, device, computed, cancel)
    output = output.cpu().numpy()
    return output[0] if single else output


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def retry_out_of_memory(run: Callable[[int, int], T], tile: int, batch_size: int, multiple: int = 1,
                        shrink_tile: bool = True) -> tuple[T, int, int]:
    """``run(tile, batch_size)``, retried on out-of-memory with half the batch, then (when
    ``shrink_tile``) half the tile.

    Returns:
        (its result, tile, batch_size) with the settings that worked.

    Raises:
        MemoryError: it does not fit even with one 64-pixel tile (or one tile, when the
            tile must stay), with what to do.
    """
    while True:
        try:
            return run(tile, batch_size), tile, batch_size
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if batch_size > 1:
                batch_size //= 2
            elif shrink_tile and tile // 2 >= max(64, multiple):
                tile = max(multiple, (tile // 2) // multiple * multiple)
            else:
                raise MemoryError(
                    "Out of GPU memory even with one tile at a time: close other GPU programs or use device 'cpu'."
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
    no ``instance_method``; it mends gaps but may split a cell at a neck): seeds are the
    h-maxima of the distance to the nearest membrane, h being ``seed_depth`` times the
    median inner radius of the enclosed regions (so it follows the pixel size), and a
    watershed of the negated distance grows them inside the cells until they meet,
    drawing a border at each neck, where a narrow gap in a membrane is.

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
