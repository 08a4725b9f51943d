"""`napari-unet`: the headless twin of the plugin (predict, suggest, train, evaluate, ...).

One module per command, each with its options (``add_arguments``) beside its handler,
a function callable from Python with typed arguments (e.g. `predict.predict`); the
command line only turns the parsed options into that call (``run``).

Bad input prints one line saying what is wrong and what to do, exits with code 2 and
leaves no output file behind; outputs are written atomically and never overwritten
without ``--force``.
"""

from __future__ import annotations

import argparse
import sys

from . import evaluate, export, gui, predict, pyramid, suggest, train
from ._common import EXIT_BAD_INPUT, Parser, UsageError

# name -> (module, one line of help): the order of `napari-unet --help`.
COMMANDS = {
    "predict": (predict, "predict a mask (and probabilities) for an image, stack or folder"),
    "suggest": (suggest, "rank the slices of a stack (or a folder of photographs) by how much correcting them is "
                "worth"),
    "train": (train, "train from scratch, or fine-tune with --from"),
    "evaluate": (evaluate, "score a prediction against ground truth"),
    "export": (export, "write a model as a bioimage.io package (needs napari-unet[bioimageio])"),
    "pyramid": (pyramid, "write a large grey image (a montage) as an OME-Zarr pyramid, each level averaged from "
                "the one below, for browsing in napari"),
    "gui": (gui, "open napari with the napari-unet widgets docked and a sample loaded"),
}

__all__ = ["COMMANDS", "EXIT_BAD_INPUT", "UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, each one's options from its module's ``add_arguments``."""
    parser = Parser(prog="napari-unet", description="U-Net segmentation of EM membranes and fundus vessels.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name, (module, summary) in COMMANDS.items():
        module.add_arguments(commands.add_parser(name, help=summary, description=summary))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: the program's); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command][0].run(args)
    except KeyboardInterrupt:
        print("napari-unet: interrupted; no output was written.", file=sys.stderr)
        return 130
    except (ValueError, FileExistsError, MemoryError) as exc:  # DataError, CheckpointError, UsageError
        print(f"napari-unet: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
