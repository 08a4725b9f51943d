"""`napari-unet export`: a model as a bioimage.io package (needs napari-unet[bioimageio])."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.export import DEFAULT_LICENSE
from ._common import PathLike, UsageError, check_output


def add_arguments(x: argparse.ArgumentParser) -> None:
    x.add_argument("--model", required=True, help="checkpoint file or built-in name")
    x.add_argument("--out", required=True, help="the package to write, MODEL.zip")
    x.add_argument("--sample", help="an image the model is meant for: its centre becomes the test image and the "
                   "cover (default: a generated one)")
    x.add_argument("--name", help="the model's name in the package")
    x.add_argument("--author", action="append", help="an author's name (repeat for several)")
    x.add_argument("--license", default=DEFAULT_LICENSE, help=f"SPDX licence id (default {DEFAULT_LICENSE})")
    x.add_argument("--force", action="store_true", help="overwrite an existing package")


def run(args: argparse.Namespace) -> int:
    export(args.model, args.out, sample=args.sample, name=args.name, authors=args.author, license=args.license,
           force=args.force)
    return 0


def export(model: str, out: PathLike, *, sample: PathLike | None = None, name: str | None = None,
           authors: list[str] | None = None, license: str = DEFAULT_LICENSE, force: bool = False) -> Path:
    """Write ``model`` as the bioimage.io package ``out`` (a .zip).

    Args:
        model: a checkpoint file or a built-in name.
        sample: an image the model is meant for, (Y, X[, 3]) or a stack (its first slice):
            its centre becomes the test image and the cover; None: the shipped sample.
        name, authors, license: the package's; license an SPDX id.
        force: replace an existing package.

    Returns:
        The package written.
    """
    from ..core.bmz import bioimageio_spec
    from ..core.checkpoint import load_checkpoint
    from ..core.data import as_stack, read_stack
    from ..core.export import default_sample, export_package

    out = check_output(out, force, (".zip",), {"the --model checkpoint": model, "the --sample image": sample})
    bioimageio_spec()  # the optional extra, checked before any work
    checkpoint = load_checkpoint(model)
    image = as_stack(read_stack(sample))[0] if sample else default_sample(checkpoint.task)
    if image.shape[-1] != checkpoint.config.in_channels:
        raise UsageError(f"--sample {Path(sample).name} has {image.shape[-1]} channel(s) but the model takes "
                         f"{checkpoint.config.in_channels}: give an image of the kind the model is for.")
    path = export_package(checkpoint, out, image, name=name, authors=authors, license=license)
    print(f"exported {model} as a bioimage.io package -> {path}")
    return path
