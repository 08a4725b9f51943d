"""bioimage.io model packages (the BioImage Model Zoo, "bmz"): what they hold, and import.

A package is a zip with ``rdf.yaml`` (spec 0.5) that ilastik, deepImageJ, Fiji, QuPath and
other napari plugins run. An export holds:

- ``pytorch_state_dict`` weights (architecture ``napari_unet.core.model.UNet`` with the
  UNetConfig as kwargs) and ``torchscript`` weights traced from them;
- a test input (a real image, raw values) and the expected output, which
  ``bioimageio.core.test_model`` reproduces;
- our percentile normalisation as ``scale_range`` + ``clip``, and a ``sigmoid``; the
  threshold and everything else napari-unet knows of the model (history, tile size,
  test-time flips, the output shift of `core.calibration`) in ``config.napari_unet``.
  bioimage.io has no sub-pixel shift step, so other tools show the probability without
  that fraction-of-a-pixel move;
- a cover made from the data, the model card as documentation, authors, licence, citation.

Import accepts napari-unet exports only: the U-Net is rebuilt by napari-unet itself and
its state dict read with ``torch.load(weights_only=True)``, so no code from the package
runs. Other packages are refused with a message saying why.

`core.checkpoint.load_checkpoint` loads packages through `read_package`; this module
never imports `core.checkpoint` (the dependency is one-way). Writing a package is
`core.export`, which predicts its test data through `core.pipeline`.

Needs the optional extra: ``pip install "napari-unet[bioimageio]"``.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from .model import UNet, UNetConfig

ARCHITECTURE = "napari_unet.core.model"


class PackageError(ValueError):
    """A package that cannot be exported or read; the message says what to do.

    `core.checkpoint.load_checkpoint` raises it again as a CheckpointError."""


def bioimageio_spec():
    """The bioimageio.spec modules, or a PackageError saying how to install them."""
    try:
        import bioimageio.spec as spec
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise PackageError(
            'bioimage.io packages need the optional extra: pip install "napari-unet[bioimageio]".'
        ) from None
    return spec, v0_5


def is_package(path: str | Path) -> bool:
    """A bioimage.io package: a .zip file, or a folder holding rdf.yaml / bioimageio.yaml."""
    path = Path(path)
    if path.is_dir():
        return (path / "rdf.yaml").is_file() or (path / "bioimageio.yaml").is_file()
    return path.suffix.lower() == ".zip"


def read_package(path: str | Path) -> tuple[UNet, dict]:
    """A napari-unet export's model (in eval mode, on the CPU) and metadata.

    Use `core.checkpoint.load_checkpoint`, which returns them as a Checkpoint.

    Raises:
        PackageError: a missing or unreadable package, or one napari-unet did not export.
    """
    spec, v = bioimageio_spec()
    path = Path(path)
    if not path.exists():
        raise PackageError(f"{path} does not exist: check the path.")
    try:
        descr = spec.load_model_description(path, perform_io_checks=False)
    except Exception as exc:  # a broken zip, YAML or an invalid description
        raise PackageError(f"{path.name} is not a readable bioimage.io model package ({exc}).") from exc
    weights = getattr(getattr(descr, "weights", None), "pytorch_state_dict", None)
    architecture = getattr(weights, "architecture", None)
    ours = getattr(getattr(descr, "config", None), "napari_unet", None)
    if getattr(architecture, "import_from", None) != ARCHITECTURE or not isinstance(ours, dict):
        raise PackageError(
            f"{path.name} is a bioimage.io package but not a napari-unet export; napari-unet runs only its "
            "own exports (it never runs code from a package). Run it with bioimageio.core, ilastik or deepImageJ."
        )
    try:
        model = UNet(UNetConfig.from_dict(dict(architecture.kwargs)))
        state = torch.load(io.BytesIO(weights.get_reader().read()), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        raise PackageError(f"{path.name}: its weights do not load ({exc}); export the model again.") from exc
    return model.eval(), dict(ours)
