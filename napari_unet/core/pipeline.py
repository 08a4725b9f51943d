"""The one prediction path: prepare -> infer -> restore -> finish.

Every caller predicts through `Pipeline`: the Predict widget, the fine-tune's checks
and its re-prediction, the CLI, streamed volumes, cluster blocks and the bioimage.io
test data. So "zero outside the field of view" and "threshold" each happen once, here,
and the score a fine-tune reports is the score of the mask the user will see.

1. **prepare** one raw slice for the model (`Prepared`): resample it to the model's
   pixel size (EM, when given and far enough from it, see `RESAMPLE_SKIP`) or to the
   FOV diameter of its training photographs (fundus); normalise; fundus: give it the
   training photographs' colour inside the FOV in use (the user's, else the one found).
2. **infer**: overlapping tiles, test-time flips, the model's output shift.
3. **restore**: the probability back onto the slice's own grid.
4. **finish**: 0 outside the FOV in use, the threshold, cells.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .calibration import shift_output
from .checkpoint import Checkpoint
from .data import DataError, check_images, normalize
from .description import ModelDescription
from .predict import (
    FLIP_AXES,
    GROUP_BYTES,
    CancelCheck,
    ProgressCallback,
    TileGrid,
    TilePredictor,
    blend_tiles,
    cell_instances,
    retry_out_of_memory,
)
from .settings import PredictSettings

#: Ratios of the data's pixel size to the model's inside which the slices are predicted
#: as they are: resampling them costs more than the mismatch (benchmarks/pixel_size.py).
RESAMPLE_SKIP = (0.95, 1.15)
#: Ratios outside which a pixel size is refused as a mistake (e.g. µm typed as nm).
PIXEL_RATIO_LIMITS = (0.1, 10.0)
#: A fundus photograph within this much of the training FOV diameter is not resampled.
FUNDUS_ZOOM_TOLERANCE = 0.05


@dataclass
class Prepared:
    """One slice as the model is shown it.

    Attributes:
        image: (Y', X', C) float32 in [0, 1], normalised (fundus: colour-matched).
        fov: (Y', X') bool FOV on the model's grid (fundus), or None.
        shape: (Y, X) of the slice as given.
        zoom: (y, x) factors from the slice to the model's grid, or None when not resampled.
    """

    image: np.ndarray
    fov: np.ndarray | None
    shape: tuple[int, int]
    zoom: tuple[float, float] | None = None


@dataclass
class PipelineResult:
    """What a prediction gives (all on the images' own grid).

    Attributes:
        probabilities: (Z, Y, X) float32 in [0, 1], 0 outside the FOV in use.
        mask: (Z, Y, X) uint8, 1 = structure.
        cells: (Z, Y, X) int32 cell ids (EM, when asked), unique across the slices, or None.
        fov: (Z, Y, X) bool FOV in use (fundus), or None.
        fov_found: True when ``fov`` was found from the images (not given by the user).
        notes: sentences for the user (resampling done or skipped, repaired pixels).
    """

    probabilities: np.ndarray
    mask: np.ndarray
    cells: np.ndarray | None = None
    fov: np.ndarray | None = None
    fov_found: bool = False
    notes: list[str] = field(default_factory=list)


class Pipeline:
    """A model and the user's choices, ready to predict slices.

    Args:
        checkpoint: the model and its description.
        settings: the user's choices (`core.settings.PredictSettings`); default all defaults.
        model: predict with these weights instead of the checkpoint's (a fine-tune's
            candidate), everything else as the checkpoint describes.
        zoom: without a pixel size, resample the slices by this (both axes) and back;
            default the model's ``input_zoom`` (a fine-tune found it), else as they are.

    Raises:
        ValueError / DataError: a choice that cannot work, with what to change.
    """

    def __init__(self, checkpoint: Checkpoint, settings: PredictSettings | None = None, *,
                 model: torch.nn.Module | None = None, zoom: float | None = None) -> None:
        settings = settings or PredictSettings()
        self.checkpoint = checkpoint
        self.settings = settings
        self.info: ModelDescription = checkpoint.info
        self.threshold = self.info.threshold if settings.threshold is None else float(settings.threshold)
        self.fov_mode = settings.fov
        self.instances = settings.instances
        self.levels = settings.levels
        self.overlap, self.blend, self.batch_size = settings.overlap, settings.blend, settings.batch_size
        self.predictor = TilePredictor(model if model is not None else checkpoint.model, settings.device,
                                       settings.precision)
        self.device = self.predictor.device
        multiple = checkpoint.config.size_multiple
        wanted = int(settings.tile or self.info.tile_size)
        self.tile = max(multiple, math.ceil(wanted / multiple) * multiple)
        self.pixel_size = settings.pixel_size
        self.scale, self.scale_note = self._pixel_scale(settings.pixel_size, zoom)

    # ------------------------------------------------------------------ prepare

    @property
    def is_fundus(self) -> bool:
        """Photographs standardised to the training ones (a model with a fundus reference)."""
        return self.info.fundus_reference is not None and self.checkpoint.config.in_channels == 3

    @property
    def uses_fov(self) -> bool:
        return self.checkpoint.config.in_channels == 3

    def _pixel_scale(self, pixel_size: float | None, zoom: float | None) -> tuple[tuple | None, str]:
        """(y, x) zoom from the data's pixel size to the model's (or the fine-tune's zoom),
        or None, and a note."""
        trained_at = self.info.pixel_size_nm
        if pixel_size is None or trained_at is None:
            zoom = self.info.input_zoom if zoom is None else zoom
            if zoom is None or abs(zoom - 1) < 1e-6:
                return None, ""
            return (zoom, zoom), f"Resampled by {zoom:.2f}, the scale fine-tuning found for these images."
        if not (isinstance(pixel_size, (int, float)) and math.isfinite(pixel_size) and pixel_size > 0):
            raise DataError(f"Pixel size {pixel_size}: give the images' pixel size in nm, a positive number.")
        ratios = (pixel_size / trained_at[0], pixel_size / trained_at[1])
        low, high = PIXEL_RATIO_LIMITS
        if not all(low <= r <= high for r in ratios):
            raise DataError(
                f"Pixel size {pixel_size:g} nm is {ratios[0]:.3g} times the model's ({trained_at[0]:g} nm): "
                f"resampling that far would make nonsense. Check the unit (nm, not µm or Å); this model takes "
                f"{low * trained_at[0]:g}-{high * trained_at[0]:g} nm, or leave the pixel size empty.")
        if all(RESAMPLE_SKIP[0] <= r <= RESAMPLE_SKIP[1] for r in ratios):
            note = (f"Pixel size {pixel_size:g} nm is close to the model's {trained_at[0]:g} nm: predicted without "
                    "resampling (it would cost more than it gains).") if any(abs(r - 1) > 1e-6 for r in ratios) else ""
            return None, note
        return ratios, f"Resampled from {pixel_size:g} nm to the model's {trained_at[0]:g} nm pixels and back."

    def rescaled(self, factor: float) -> Pipeline:
        """The same pipeline looking at grey slices at ``factor`` times its scale (a second
        look, `core.uncertainty`); photographs keep their FOV standardisation."""
        other = copy.copy(self)
        base = self.scale or (1.0, 1.0)
        other.scale = (base[0] * factor, base[1] * factor)
        return other

    def found_fov(self, image: np.ndarray) -> np.ndarray:
        """(Y, X) bool FOV of one (Y, X, 3) photograph, found from it (`core.fov`)."""
        from .fov import field_of_view

        return field_of_view(image)

    def fundus_zoom(self, fov: np.ndarray) -> float:
        """How much to resample a photograph whose FOV is ``fov`` so that it has the
        training photographs' diameter (1.0 within `FUNDUS_ZOOM_TOLERANCE`)."""
        from .fov import fov_diameter

        zoom = self.info.fundus_reference["fov_diameter_px"] / max(1.0, fov_diameter(fov))
        return 1.0 if abs(zoom - 1) <= FUNDUS_ZOOM_TOLERANCE else float(zoom)

    def prepare(self, image: np.ndarray, fov: np.ndarray | None = None, zoom: float | None = None,
                levels: tuple[np.ndarray, np.ndarray] | None = None) -> Prepared:
        """One raw slice as the model is shown it.

        Args:
            image: (Y, X, C) raw, any dtype.
            fov: (Y, X) bool FOV in use (fundus; see `fov_for`), or None.
            zoom: fundus: resample by this instead of the FOV's own (one size for a stack).
            levels: (low, high), each (C,): this image's, instead of the settings' (a window
                of a montage slice, normalised on the whole slice's levels).
        """
        from skimage.transform import rescale, resize

        shape = tuple(image.shape[:2])
        levels = self.levels if levels is None else levels
        if self.is_fundus:
            from .fov import match_colour

            measured = fov if fov is not None else self.found_fov(image)
            factor = self.fundus_zoom(measured) if zoom is None else zoom
            scale = None if factor == 1.0 else (factor, factor)
        else:
            scale = self.scale
        if scale is not None:
            shrink = scale[0] < 1 or scale[1] < 1
            image = rescale(np.asarray(image, np.float32), scale, order=1, channel_axis=-1, preserve_range=True,
                            anti_aliasing=shrink)
            if fov is not None:
                fov = resize(fov, image.shape[:2], order=0, preserve_range=True, anti_aliasing=False).astype(bool)
            check_images(image[None], "The resampled image")
        ready = normalize(image[None], self.info.normalization, levels)[0]
        if self.is_fundus:
            # Colour measured inside the FOV in use; with none, inside the one found, and
            # applied everywhere (nothing is blanked when the user said there is no FOV).
            measured = fov if fov is not None else self.found_fov(image)
            reference = self.info.fundus_reference
            ready = match_colour(ready, measured, reference["mean"], reference["std"], blank_outside=fov is not None)
        zoom_yx = None if scale is None else (image.shape[0] / shape[0], image.shape[1] / shape[1])
        return Prepared(ready, fov, shape, zoom_yx)

    def fov_for(self, images: np.ndarray, given: np.ndarray | None = None) -> tuple[np.ndarray | None, bool]:
        """The (Z, Y, X) bool FOV in use for RGB ``images`` and whether it was found:
        the user's mask wins (one (Y, X) mask serves every image); else the one found
        in each photograph ("auto"), or none ("none"). Grey images have none."""
        if not self.uses_fov:
            return None, False
        if given is not None:
            given = np.asarray(given) != 0
            if given.ndim == 2:
                given = np.broadcast_to(given, images.shape[:3])
            if given.shape != images.shape[:3]:
                raise DataError(f"The field-of-view mask is {given.shape[1:]} but the image is {images.shape[1:3]}: "
                                "give a mask of the image's size.")
            return given, False
        if self.fov_mode == "none":
            return None, False
        return np.stack([self.found_fov(image) for image in images]), True

    # ------------------------------------------------------------------ infer / restore

    @property
    def passes(self) -> list[tuple[int, ...]]:
        """The test-time passes: unflipped, then each of the model's flips (spatial axes)."""
        return [()] + [(FLIP_AXES[name],) for name in self.info.test_time_flips]

    def grid(self, height: int, width: int, tile: int | None = None) -> TileGrid:
        """The `TileGrid` of a (height, width) slice on the model's grid."""
        return TileGrid.of(height, width, tile or self.tile, self.overlap, self.info.tile_margin)

    def shift_halo(self) -> int:
        """Pixels read around a region so that the model's output shift has real values to move in."""
        shift = self.info.output_shift_px
        return math.ceil(max(abs(shift[0]), abs(shift[1]))) + 1 if any(shift) else 0

    def infer(self, images: np.ndarray, progress: ProgressCallback | None = None,
              cancel: CancelCheck | None = None) -> np.ndarray:
        """Probabilities of prepared slices of one size, on the model's grid.

        Args:
            images: (N, Y', X', C) float32 (`Prepared.image` stacked).

        Returns:
            (N, Y', X') float32 in [0, 1], moved by the model's output shift.
        """
        source = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        return self.infer_region(source, (0, images.shape[1], 0, images.shape[2]), progress, cancel)

    def infer_region(self, source, region: tuple[int, int, int, int], progress: ProgressCallback | None = None,
                     cancel: CancelCheck | None = None, cache=None) -> np.ndarray:
        """Probabilities of one region of N slices, each pixel as predicting the whole
        slices gives it (`core.predict.blend_tiles`: the same tiles, flips and blending;
        then the output shift, from a halo of real pixels around the region).

        Args:
            source: (N, C, Y, X) array-like of model-ready values, read by region.
            region: (y0, y1, x0, x1) in the slices' pixels.
            progress: called with (tiles done, tiles total).
            cache: tiles shared with the slice's other regions (`core.blocks.TileCache`);
                with one the tile stays as it is on out-of-memory (only the batch halves).

        Returns:
            (N, y1 - y0, x1 - x0) float32 in [0, 1].
        """
        height, width = source.shape[2:]
        halo = self.shift_halo()
        y0, y1, x0, x1 = region
        extended = (max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo))

        def run(tile: int, batch: int) -> torch.Tensor:
            grid = self.grid(height, width, tile)
            total = len(grid.keys(extended, self.passes)) * source.shape[0]
            done = [0]

            def computed(count: int) -> None:
                done[0] += count
                if progress is not None:
                    progress(done[0], total)

            return blend_tiles(source, grid, extended, self.predictor, self.passes, batch, self.blend, self.device,
                               computed, cancel, cache)

        batch = self.batch_size or self.predictor.batch_size(self.tile)
        out, self.tile, _batch = retry_out_of_memory(run, self.tile, batch, self.checkpoint.config.size_multiple,
                                                     shrink_tile=cache is None)
        probability = torch.clamp(out[:, 0], 0.0, 1.0).cpu().numpy()
        probability = shift_output(probability, self.info.output_shift_px)
        ey0, ex0 = extended[0], extended[2]
        return probability[:, y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0]

    @staticmethod
    def restore(probability: np.ndarray, prepared: Prepared) -> np.ndarray:
        """(Y', X') probability on the model's grid -> (Y, X) on the slice's own."""
        if prepared.zoom is None:
            return probability
        from skimage.transform import resize

        return resize(probability, prepared.shape, order=1).astype(np.float32)

    # ------------------------------------------------------------------ finish

    def mask(self, probabilities: np.ndarray, fov: np.ndarray | None = None,
             threshold: float | None = None) -> np.ndarray:
        """Zero outside the FOV (in place) and threshold: the one place either happens.

        Args:
            probabilities: (Z, Y, X) float32; fov: (Z, Y, X) bool or None.
            threshold: instead of the pipeline's (a fine-tune weighing another one).

        Returns:
            (Z, Y, X) uint8 mask, 1 = structure.
        """
        if fov is not None:
            probabilities[~fov] = 0.0
        return (probabilities > (self.threshold if threshold is None else threshold)).astype(np.uint8)

    def finish(self, probabilities: np.ndarray, fov: np.ndarray | None,
               threshold: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """`mask`, and the cells when asked for (EM).

        Returns:
            (Z, Y, X) uint8 mask, and (Z, Y, X) int32 cells or None.
        """
        mask = self.mask(probabilities, fov, threshold)
        cells = cell_instances(mask, self.info.instance_method) if self.instances and not self.uses_fov else None
        return mask, cells

    # ------------------------------------------------------------------ all of it

    def probabilities(self, images: np.ndarray, fov: np.ndarray | None = None,
                      progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> np.ndarray:
        """Prepare, infer and restore every slice (no FOV zeroing, no threshold).

        Args:
            images: (Z, Y, X, C) raw; fov: (Z, Y, X) bool FOV in use, or None.

        Returns:
            (Z, Y, X) float32 in [0, 1].
        """
        self.check_shape(images)
        count = images.shape[0]
        result = np.zeros(images.shape[:3], np.float32)
        kind = "cuda" if self.device.type == "cuda" else "other"
        height, width = images.shape[1:3]
        group = max(1, min(count, GROUP_BYTES[kind] // ((height + self.tile) * (width + self.tile)
                                                         * images.shape[3] * 4)))
        for start in range(0, count, group):
            prepared = [self.prepare(np.asarray(images[z]), None if fov is None else fov[z])
                        for z in range(start, min(count, start + group))]
            # Slices that came out of one size share batches; others go one by one.
            runs = [[0]]
            for i in range(1, len(prepared)):
                same = prepared[i].image.shape == prepared[runs[-1][0]].image.shape
                runs[-1].append(i) if same else runs.append([i])
            for run in runs:

                def run_progress(done: int, total: int, first: int = start + run[0], n: int = len(run)) -> None:
                    if progress is not None:
                        per_slice = total / n
                        progress(int(first * per_slice + done), int(count * per_slice))

                out = self.infer(np.stack([prepared[i].image for i in run]), run_progress, cancel)
                for i, probability in zip(run, out):
                    result[start + i] = self.restore(probability, prepared[i])
        return result

    def check_shape(self, images: np.ndarray) -> None:
        """Refuse a stack that is not (Z, Y, X, C) with the model's channels."""
        if images.ndim != 4:
            raise DataError(f"Expected a (Z, Y, X, C) stack, got shape {images.shape}.")
        if images.shape[-1] != self.checkpoint.config.in_channels:
            raise DataError(channel_message(images.shape[-1], self.checkpoint.config.in_channels))

    def run(self, images: np.ndarray, fov: np.ndarray | None = None, progress: ProgressCallback | None = None,
            cancel: CancelCheck | None = None, name: str = "The image") -> PipelineResult:
        """Predict a stack: probabilities, mask and cells on its own grid.

        Args:
            images: (Z, Y, X, C) raw, C matching the model's input channels.
            fov: (Z, Y, X) or (Y, X) bool FOV the user gave (fundus), or None.
            progress: called with (tiles done, tiles total); cancel: see `core.predict.blend_tiles`.
            name: how messages call the images (e.g. "'stack.tif'").

        Raises:
            DataError: images that cannot give a meaningful result (`check_images`).
            PredictionCancelled: ``cancel`` returned True.
        """
        self.check_shape(images)
        note = check_images(images, name)
        in_use, found = self.fov_for(images, fov)
        probabilities = self.probabilities(images, in_use, progress, cancel)
        mask, cells = self.finish(probabilities, in_use)
        notes = [n for n in (self.scale_note, note) if n]
        if self.uses_fov and in_use is None:
            notes.append("No field of view: predicted over the whole photograph.")
        return PipelineResult(probabilities, mask, cells, in_use, found, notes)


def predict(checkpoint: Checkpoint, images: np.ndarray, fov: np.ndarray | str | None = None,
            progress: ProgressCallback | None = None, **options) -> PipelineResult:
    """``Pipeline(checkpoint, PredictSettings(**options)).run(images, fov, progress)``: one
    call for scripts and tests; ``fov`` is a mask, or "auto" / "none" (see `PredictSettings`)."""
    if isinstance(fov, str):
        options["fov"], fov = fov, None
    return Pipeline(checkpoint, PredictSettings(**options)).run(images, fov, progress)


def channel_message(got: int, expected: int) -> str:
    """What to do when an image's channels do not match the model's."""
    if got == 3 and expected == 1:
        return ("This model takes grey images (1 channel) but the image is RGB: choose an RGB (fundus) model or "
                "convert the image to grey.")
    if got == 1 and expected == 3:
        return "This model takes RGB images (fundus) but the image is grey: choose a grey (EM) model."
    return f"The model takes {expected} channel(s) but the image has {got}: choose a matching model."
