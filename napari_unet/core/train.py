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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import save_checkpoint
from .data import Augmentation, augment, random_crop
from .labels import IGNORE, STRUCTURE
from .losses import border_weight_map, segmentation_loss
from .metrics import dice
from .model import UNet
from .predict import has_fast_bfloat16, resolve_device, sliding_window


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
    freeze_batchnorm: bool = False
    min_labelled_fraction: float = 0.05
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


def fine_tune_recipe(steps: int = 120, **overrides) -> TrainConfig:
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
        eta_s: estimated seconds left.
        elapsed_s: seconds since the start.
        learning_rate: current learning rate.
        done: the last event of a run that completed all its steps.
    """

    step: int
    total: int
    loss: float | None
    val_dice: float | None = None
    best_dice: float | None = None
    improved: bool = False
    eta_s: float = 0.0
    elapsed_s: float = 0.0
    learning_rate: float = 0.0
    done: bool = False


@dataclass
class TrainingData:
    """Normalised slices split into training and validation.

    Attributes:
        images: (N, Y, X, C) float32 in [0, 1].
        labels: (N, Y, X) uint8, project convention (IGNORE pixels are not learnt).
        train_slices: indices used for training crops.
        val_slices: indices held out for validation (may be empty).
    """

    images: np.ndarray
    labels: np.ndarray
    train_slices: list[int]
    val_slices: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.shape[:3] != self.labels.shape:
            raise ValueError(f"images {self.images.shape[:3]} and labels {self.labels.shape} differ in (Z, Y, X).")
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
    """Dice of the structure (threshold 0.5) over labelled pixels of whole slices.

    Args:
        images: (N, Y, X, C) float32 normalised; labels: (N, Y, X) uint8.
    """
    model.eval()
    multiple = model.config.size_multiple
    tile = max(multiple, tile // multiple * multiple)

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(batch)[:, :1])

    predictions = np.stack(
        [sliding_window(img.transpose(2, 0, 1), predictor, tile=tile, device=device)[0] for img in images]
    )
    valid = labels != IGNORE
    return dice(predictions > 0.5, labels == STRUCTURE, mask=valid)


def train(
    model: UNet,
    data: TrainingData,
    config: TrainConfig,
    checkpoint_path: str | Path | None = None,
    metadata: dict | None = None,
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
    """
    device = resolve_device(config.device)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    model.to(device)
    metadata = metadata if metadata is not None else {}
    history = metadata.setdefault("history", [])
    run_record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_slices": list(map(int, data.train_slices)),
        "val_slices": list(map(int, data.val_slices)),
        "steps": 0,
        "recipe": {k: v for k, v in asdict(config).items() if k != "augmentation"},
        "device": str(device),
    }
    if "data_hash" in metadata:
        run_record["data_hash"] = metadata.pop("data_hash")
    history.append(run_record)

    train_images = [data.images[z] for z in data.train_slices]
    train_labels = [data.labels[z] for z in data.train_slices]
    train_weights = (
        [border_weight_map(lbl) for lbl in train_labels] if config.border_weights else [None] * len(train_labels)
    )
    val_images = data.images[data.val_slices] if data.val_slices else None
    val_labels = data.labels[data.val_slices] if data.val_slices else None
    has_val = val_images is not None and np.any(val_labels == STRUCTURE)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    wanted = has_fast_bfloat16(device) if config.mixed_precision is None else config.mixed_precision
    use_amp = wanted and device.type in ("cuda", "cpu")  # the autocast devices with bfloat16
    run_record["bfloat16"] = use_amp
    tile = max(config.crop_size, 256)

    def save(step: int, score: float | None) -> None:
        run_record["steps"] = step
        run_record["val_dice"] = score
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, metadata)

    start = time.perf_counter()
    best_dice: float | None = None
    best_state = copy.deepcopy(model.state_dict())
    if has_val:
        best_dice = validation_dice(model, val_images, val_labels, device, tile)
        save(0, best_dice)
        yield TrainEvent(0, config.steps, None, best_dice, best_dice, True, elapsed_s=time.perf_counter() - start)
    step_times: list[float] = []
    try:
        for step in range(1, config.steps + 1):
            tick = time.perf_counter()
            _set_train_mode(model, config.freeze_batchnorm)
            images, labels, weights = _sample_batch(train_images, train_labels, train_weights, config, rng)
            images, labels = images.to(device), labels.to(device)
            weights = weights.to(device) if weights is not None else None
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(images)
            loss = segmentation_loss(logits.float(), labels, weights, dice_weight=config.dice_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

            event = TrainEvent(step, config.steps, float(loss.detach()), best_dice=best_dice)
            event.learning_rate = optimizer.param_groups[0]["lr"]
            if step % config.validate_every == 0 or step == config.steps:
                if has_val:
                    score = validation_dice(model, val_images, val_labels, device, tile)
                    event.val_dice = score
                    if score > best_dice + 1e-4:
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


def _sample_batch(images, labels, weights, config: TrainConfig, rng: np.random.Generator):
    """A batch of augmented random crops with enough labelled pixels.

    Returns:
        (B, C, S, S) float32 images, (B, S, S) int64 labels, (B, S, S) weights or None.
    """
    batch_images, batch_labels, batch_weights = [], [], []
    for _ in range(config.batch_size):
        for _attempt in range(20):
            index = int(rng.integers(len(images)))
            arrays = [images[index], labels[index]] + ([weights[index]] if weights[index] is not None else [])
            crop = random_crop(arrays, config.crop_size, rng)
            if np.mean(crop[1] != IGNORE) >= config.min_labelled_fraction:
                break
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
