"""One file per model: weights plus metadata; safe loading, atomic saving.

The file is a plain dict saved with ``torch.save``::

    {"format": "napari-unet", "format_version": 1, "config": {...UNetConfig...},
     "metadata": "<JSON text>", "state_dict": {name: tensor}}

Loading uses ``torch.load(weights_only=True)``, which refuses any pickled code.
Metadata keys: ``task`` ("em" | "fundus"), ``label_convention``, ``normalization``,
``tile_size``, ``tile_margin`` (mirror border, optional), ``threshold``,
``test_time_flips`` (e.g. ["x"]), ``history`` (one entry per training run: date, data hash,
slices, steps, scores), ``name``, ``description``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .bmz import PackageError, is_package, read_package
from .description import ModelDescription
from .files import BUILTIN_DIR, BUILTIN_MODELS, atomic_write
from .model import UNet, UNetConfig

FORMAT = "napari-unet"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what to do."""


@dataclass
class Checkpoint:
    """A loaded model with its metadata (see the module docstring for the keys)."""

    model: UNet
    metadata: dict
    source: str

    @property
    def config(self) -> UNetConfig:
        return self.model.config

    @property
    def info(self) -> ModelDescription:
        """The metadata, typed (`core.description`); read it, change ``metadata`` to write."""
        return ModelDescription.from_metadata(self.metadata)

    @property
    def normalization(self) -> dict:
        return self.info.normalization

    @property
    def task(self) -> str:
        return self.info.task


def default_metadata(task: str, **extra) -> dict:
    """Metadata for a new model of ``task`` ("em" or "fundus")."""
    if task not in ("em", "fundus"):
        raise ValueError(f"Unknown task {task!r}: choose 'em' (membranes in electron microscopy) or 'fundus' "
                         "(vessels in retinal photographs).")
    meta = ModelDescription(task=task).to_metadata()
    meta.update(extra)
    return meta


def save_checkpoint(path: str | Path, model: UNet, metadata: dict, half: bool = False) -> Path:
    """Write weights + metadata atomically (temp file in the same folder, then rename).

    A crash mid-save leaves either the old file or the new one, never a broken one.

    Args:
        half: store floating weights as float16 (halves the file; built-in models).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        state[key] = tensor.clone()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "metadata": json.dumps(metadata),
        "state_dict": state,
    }
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # through a handle: smaller files than giving torch the name
            torch.save(payload, handle)

    return atomic_write(path, write)


def resolve_model(name_or_path: str | Path) -> Path:
    """Map a built-in name or a path to an existing checkpoint file."""
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        path = BUILTIN_DIR / BUILTIN_MODELS[name]
        if not path.is_file():
            raise CheckpointError(
                f"The built-in model '{name}' is not included in this installation; "
                "pass a checkpoint file instead (train one with 'napari-unet train')."
            )
        return path
    path = Path(name).expanduser()
    if not path.is_file():
        known = ", ".join(BUILTIN_MODELS)
        raise CheckpointError(f"No model '{name}': give a checkpoint file or a built-in name ({known}).")
    return path


def load_checkpoint(name_or_path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint by built-in name or path (a napari-unet .pt file, or a bioimage.io
    package exported by napari-unet) without executing any code.

    Raises:
        CheckpointError: unknown name, missing file, corrupt or foreign file.
    """
    if str(name_or_path) not in BUILTIN_MODELS and is_package(name_or_path):  # bioimage.io: zip or folder
        path = Path(name_or_path).expanduser()
        try:
            model, metadata = read_package(path)
        except PackageError as exc:
            raise CheckpointError(str(exc)) from exc
        return Checkpoint(model=model.to(device), metadata=metadata, source=str(path))
    path = resolve_model(name_or_path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors of corrupt or foreign files
        raise CheckpointError(
            f"{path.name} is not a readable napari-unet checkpoint ({type(exc).__name__}); "
            "choose a file saved by napari-unet."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not a napari-unet checkpoint; choose a file saved by napari-unet.")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path.name} was saved by a newer napari-unet: update the plugin to load it.")
    try:
        config = UNetConfig.from_dict(payload["config"])
        metadata = json.loads(payload["metadata"])
        model = UNet(config)
        state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path.name} is damaged or incomplete ({exc}); use another checkpoint.") from exc
    model.to(device).eval()
    return Checkpoint(model=model, metadata=metadata, source=str(name_or_path))
