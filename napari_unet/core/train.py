"""Training and fine-tuning as a generator of progress events.

The same loop serves the CLI (prints a bar), the GUI (draws a live curve, stops between
steps by closing the generator) and the tests. The best model, judged by the Dice of
the structure on held-out slices, is saved atomically whenever it improves, and it is
loaded back into the model when training ends or is stopped: stopping never loses it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .augment import Augmentation, augment, crop_around
from .checkpoint import save_checkpoint
from .labels import IGNORE, STRUCTURE
from .losses import border_weight_map, segmentation_loss
from .metrics import dice
from .model import UNet
from .predict import TilePredictor, has_fast_bfloat16, resolve_device, sliding_window


@dataclass
class TrainConfig:
    """Recipe of one training run.

    The defaults train from scratch. `fine_tune_recipe` gives the quick, careful recipe
    used by the one-click fine-tune (low learning rate with warm-up, frozen BatchNorm
    statistics, strong augmentation, and the starting model kept unless beaten).
    """

    steps: int = 1500
    batch_size: int = 4
    crop_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    validate_every: int = 100
    seed: int = 0
    dice_weight: float = 1.0
    border_weights: bool = False
    # With border_weights: also balance the two classes (w_c of the U-Net paper).
    balance_classes: bool = True
    freeze_batchnorm: bool = False
    # Share of crops centred on a `TrainingData.focus` pixel (the user's edits); the
    # others are centred on any labelled pixel, so no crop is ever all unlabelled.
    focus_fraction: float = 0.0
    device: str = "auto"
    # bfloat16 autocast in the forward pass; None = where it is fast (see has_fast_bfloat16).
    mixed_precision: bool | None = None
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps={self.steps}: train for at least one step.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: use at least 1.")
        if self.crop_size < 16:
            raise ValueError(f"crop_size={self.crop_size}: use crops of at least 16 pixels (256 is usual).")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate={self.learning_rate}: use a small positive value such as 1e-3.")
        if not 0 <= self.focus_fraction <= 1:
            raise ValueError(f"focus_fraction={self.focus_fraction}: use a fraction between 0 and 1.")


def fine_tune_recipe(steps: int = 90, **overrides) -> TrainConfig:
    """The default one-click fine-tune: quick on a CPU, guarded against making things worse."""
    values = dict(
        steps=steps,
        batch_size=4,
        crop_size=192,
        learning_rate=2e-4,
        warmup_steps=max(1, steps // 8),
        validate_every=max(5, steps // 6),
        freeze_batchnorm=True,
    )
    values.update(overrides)
    return TrainConfig(**values)


@dataclass
class TrainEvent:
    """Progress report after a step (and after each validation).

    Attributes:
        step: steps done so far (0 = the starting model's validation).
        total: steps planned.
        loss: training loss of this step (None for the starting validation).
        val_dice: Dice on the held-out slices when validated at this step, else None.
        best_dice: best validation Dice so far (None without validation data).
        improved: the saved/kept model changed at this step.
        refused: the validation refused this model (e.g. it broke membranes into
            merged cells), whatever its score.
        eta_s: estimated seconds left.
        elapsed_s: seconds since the start.
        learning_rate: current learning rate.
        done: the last event of a run that completed all its steps.
        stage: which part of a longer job this step belongs to ("" for a plain run;
            the fine-tune's "fold 1/2" ... and "all slices").
    """

    step: int
    total: int
    loss: float | None
    val_dice: float | None = None
    best_dice: float | None = None
    improved: bool = False
    refused: bool = False
    eta_s: float = 0.0
    elapsed_s: float = 0.0
    learning_rate: float = 0.0
    done: bool = False
    stage: str = ""


@dataclass
class TrainingData:
    """Normalised slices split into training and validation.

    Each field holds one entry per slice: an array stacked along its first axis, or a
    list of arrays when the slices differ in size (e.g. the fine-tune's anchors, windows
    of larger slices). Validation slices must share one size.

    Attributes:
        images: (N, Y, X, C) float32 in [0, 1].
        labels: (N, Y, X) uint8, project convention (IGNORE pixels are not learnt).
        train_slices: indices used for training crops.
        val_slices: indices held out for validation (may be empty).
        weights: optional (N, Y, X) float32 per-pixel loss weights (e.g. more on edits).
        focus: optional (N, Y, X) bool, pixels that crops are centred on
            ``TrainConfig.focus_fraction`` of the time (e.g. the user's edits).
    """

    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray | list[np.ndarray]
    train_slices: list[int]
    val_slices: list[int] = field(default_factory=list)
    weights: np.ndarray | list[np.ndarray] | None = None
    focus: np.ndarray | list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images and {len(self.labels)} labels: give one label per image.")
        for z, label in enumerate(self.labels):
            if self.images[z].shape[:2] != label.shape:
                raise ValueError(f"Slice {z}: image {self.images[z].shape[:2]} and labels {label.shape} "
                                 "differ in (Y, X).")
            for name in ("weights", "focus"):
                extra = getattr(self, name)
                if extra is not None and extra[z].shape != label.shape:
                    raise ValueError(f"Slice {z}: {name} {extra[z].shape} and labels {label.shape} differ in shape.")
        if not self.train_slices:
            raise ValueError("No slice to train on: label (correct) at least one slice.")
        for z in self.train_slices:
            if not np.any(self.labels[z] != IGNORE):
                raise ValueError(f"Slice {z} has no labelled pixel: label it or leave it out.")
        if not any(np.any(self.labels[z] == STRUCTURE) for z in self.train_slices):
            raise ValueError("The training labels contain no structure pixel (all background): check the labels.")


def _lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _set_train_mode(model: nn.Module, freeze_batchnorm: bool) -> None:
    model.train()
    if freeze_batchnorm:
        # Tiny fine-tune batches give noisy statistics: keep the pretrained ones.
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


def validation_dice(
    model: UNet, images: np.ndarray, labels: np.ndarray, device: torch.device, tile: int = 256
) -> float:
    """Dice of the structure (threshold 0.5) over labelled pixels of whole slices: the
    default score that picks a model trained from scratch (a fine-tune scores the mask
    Predict shows instead, `core.finetune`).

    Args:
        images: (N, Y, X, C) float32 normalised; labels: (N, Y, X) uint8.
    """
    multiple = model.config.size_multiple
    tile = max(multiple, tile // multiple * multiple)
    predictor = TilePredictor(model, device)
    out = sliding_window(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), predictor, tile=tile,
                         batch_size=predictor.batch_size(tile), device=predictor.device)
    valid = labels != IGNORE
    return dice(out[:, 0] > 0.5, labels == STRUCTURE, mask=valid)


#: A validation: (model, device) -> (score to maximise, accepted). A refused model
#: (accepted False) is never kept, whatever its score.
Validate = Callable[[UNet, torch.device], tuple[float, bool]]


def train(
    model: UNet,
    data: TrainingData,
    config: TrainConfig,
    checkpoint_path: str | Path | None = None,
    metadata: dict | None = None,
    validate: Validate | None = None,
) -> Iterator[TrainEvent]:
    """Train ``model`` in place, yielding a `TrainEvent` after every step.

    Closing the generator (``events.close()``, or breaking out of the loop) stops after
    the current step; the best model so far is then loaded back into ``model`` and is
    the one on disk. With validation slices, the starting model is scored first and
    only a better model replaces it, so a fine-tune can never make things worse on them.

    Args:
        model: the U-Net, from scratch or loaded from a checkpoint (fine-tune).
        data: normalised slices and the train/validation split.
        config: the recipe.
        checkpoint_path: where the best model is saved (None = keep in memory only).
        metadata: checkpoint metadata, updated in place: a history entry for this run is
            appended (its steps and score follow the kept model), so a caller that saves
            the model itself (``checkpoint_path`` None) saves the same record.
        validate: replaces the default validation (Dice on the labelled pixels of
            ``data.val_slices``), e.g. the fine-tune's score on edited pixels with a guard.

    Under ``torchrun`` (a ``torch.distributed`` process group is initialised), each process
    trains on its own crops and DistributedDataParallel averages the gradients, so a step
    learns from processes x batch_size crops; rank 0's weights are the start, rank 0's
    validation decides for every process, and only rank 0 writes the checkpoint.
    """
    device = resolve_device(config.device)
    rank, processes = _process_group()
    rng = np.random.default_rng(config.seed + rank)  # each process its own crops
    torch.manual_seed(config.seed)
    model.to(device)
    trained = model
    if processes > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    metadata = metadata if metadata is not None else {}
    history = metadata.setdefault("history", [])
    run_record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_slices": list(map(int, data.train_slices)),
        "val_slices": list(map(int, data.val_slices)),
        "steps": 0,
        "recipe": asdict(config),  # with its augmentation
        "device": str(device),
    }
    if processes > 1:
        run_record["processes"] = processes
    if "data_hash" in metadata:
        run_record["data_hash"] = metadata.pop("data_hash")
    history.append(run_record)

    train_images = [data.images[z] for z in data.train_slices]
    train_labels = [data.labels[z] for z in data.train_slices]
    train_weights = [_loss_weights(data, z, config) for z in data.train_slices]
    sampler = _CropCentres(data, config, rng)
    tile = max(config.crop_size, 256)
    if validate is None and any(np.any(data.labels[z] == STRUCTURE) for z in data.val_slices):
        val_images = np.stack([data.images[z] for z in data.val_slices])
        val_labels = np.stack([data.labels[z] for z in data.val_slices])

        def validate(model: UNet, device: torch.device) -> tuple[float, bool]:
            return validation_dice(model, val_images, val_labels, device, tile), True

    has_val = validate is not None

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    wanted = has_fast_bfloat16(device) if config.mixed_precision is None else config.mixed_precision
    use_amp = wanted and device.type in ("cuda", "cpu")  # the autocast devices with bfloat16
    run_record["bfloat16"] = use_amp

    if has_val and processes > 1:
        validate = _agreed(validate)

    def save(step: int, score: float | None) -> None:
        run_record["steps"] = step
        run_record["val_dice"] = score
        if checkpoint_path is not None and rank == 0:
            save_checkpoint(checkpoint_path, model, metadata)

    start = time.perf_counter()
    best_dice: float | None = None
    best_state = copy.deepcopy(model.state_dict())
    if has_val:
        best_dice, _ = validate(model, device)  # the starting model is the one to beat
        save(0, best_dice)
        yield TrainEvent(0, config.steps, None, best_dice, best_dice, True, elapsed_s=time.perf_counter() - start)
    step_times: list[float] = []
    try:
        for step in range(1, config.steps + 1):
            tick = time.perf_counter()
            _set_train_mode(model, config.freeze_batchnorm)
            images, labels, weights = _sample_batch(train_images, train_labels, train_weights, sampler, config, rng)
            images, labels = images.to(device), labels.to(device)
            weights = weights.to(device) if weights is not None else None
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = trained(images)
            loss = segmentation_loss(logits.float(), labels, weights, dice_weight=config.dice_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

            event = TrainEvent(step, config.steps, float(loss.detach()), best_dice=best_dice)
            event.learning_rate = optimizer.param_groups[0]["lr"]
            if step % config.validate_every == 0 or step == config.steps:
                if has_val:
                    score, accepted = validate(model, device)
                    event.val_dice, event.refused = score, not accepted
                    if accepted and score > best_dice + 1e-4:
                        best_dice, event.improved = score, True
                        best_state = copy.deepcopy(model.state_dict())
                        save(step, score)
                    event.best_dice = best_dice
                else:
                    best_state = copy.deepcopy(model.state_dict())
                    event.improved = True
                    save(step, None)
            step_times.append(time.perf_counter() - tick)
            recent = step_times[-20:]
            event.eta_s = (config.steps - step) * sum(recent) / len(recent)
            event.elapsed_s = time.perf_counter() - start
            event.done = step == config.steps
            yield event
    finally:
        # Stopped or finished: the model in memory is the best one, as on disk.
        model.load_state_dict(best_state)
        model.eval()


def _process_group() -> tuple[int, int]:
    """(rank, number of processes) of a torch.distributed run, (0, 1) otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _agreed(validate: Validate) -> Validate:
    """``validate`` run by every process (a caller such as the fine-tune keeps state in it),
    rank 0's (score, accepted) used by all, so all keep the same best model even where
    their floats differ in the last bits (GPUs may pick different kernels)."""
    import torch.distributed as dist

    def validate_agreed(model: UNet, device: torch.device) -> tuple[float, bool]:
        result = [validate(model, device)]
        dist.broadcast_object_list(result, src=0)
        return result[0]

    return validate_agreed


def _loss_weights(data: TrainingData, z: int, config: TrainConfig) -> np.ndarray | None:
    """(Y, X) float32 loss weights of slice ``z``: the data's own times the U-Net border map."""
    weights = data.weights[z] if data.weights is not None else None
    if config.border_weights:
        border = border_weight_map(data.labels[z], balance_classes=config.balance_classes)
        weights = border if weights is None else border * weights
    return weights


class _CropCentres:
    """Draws crop centres: on a focus pixel ``config.focus_fraction`` of the time, else on
    any labelled pixel, so every crop holds labels and small edits are seen often."""

    MAX_POINTS = 200_000  # a random subset of the candidates is enough, and bounded

    def __init__(self, data: TrainingData, config: TrainConfig, rng: np.random.Generator) -> None:
        self.labelled = [self._points(data.labels[z] != IGNORE, rng) for z in data.train_slices]
        self.focus = [
            self._points(data.focus[z] & (data.labels[z] != IGNORE), rng) if data.focus is not None else None
            for z in data.train_slices
        ]
        self.has_focus = [f is not None and len(f) > 0 for f in self.focus]
        self.fraction = config.focus_fraction if any(self.has_focus) else 0.0

    def _points(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        points = np.argwhere(mask)
        if len(points) > self.MAX_POINTS:
            points = points[rng.choice(len(points), self.MAX_POINTS, replace=False)]
        return points

    def draw(self, rng: np.random.Generator) -> tuple[int, tuple[int, int]]:
        """(index into the training slices, (y, x) centre)."""
        if rng.random() < self.fraction:
            index = int(rng.choice(np.flatnonzero(self.has_focus)))
            points = self.focus[index]
        else:
            index = int(rng.integers(len(self.labelled)))
            points = self.labelled[index]
        return index, tuple(points[int(rng.integers(len(points)))])


def _sample_batch(images, labels, weights, sampler: _CropCentres, config: TrainConfig, rng: np.random.Generator):
    """A batch of augmented crops, each holding the labelled pixel it was drawn around.

    Returns:
        (B, C, S, S) float32 images, (B, S, S) int64 labels, (B, S, S) weights or None.
    """
    batch_images, batch_labels, batch_weights = [], [], []
    for _ in range(config.batch_size):
        index, centre = sampler.draw(rng)
        arrays = [images[index], labels[index]] + ([weights[index]] if weights[index] is not None else [])
        crop = crop_around(arrays, config.crop_size, centre, rng)
        image, label, weight = augment(
            crop[0], crop[1], rng, config.augmentation, crop[2] if len(crop) > 2 else None
        )
        batch_images.append(image.transpose(2, 0, 1))
        batch_labels.append(label.astype(np.int64))
        if weight is not None:
            batch_weights.append(weight)
    images_t = torch.from_numpy(np.stack(batch_images))
    labels_t = torch.from_numpy(np.stack(batch_labels))
    weights_t = torch.from_numpy(np.stack(batch_weights)) if batch_weights else None
    return images_t, labels_t, weights_t
