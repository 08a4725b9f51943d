"""What every command shares: the one-line error, option types, output checks, progress.

Bad input raises `UsageError` (or another ValueError: `DataError`, `CheckpointError`),
which `napari_unet.cli.main` prints as one line and exit code 2; a Python caller of a
command gets the exception itself.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

EXIT_BAD_INPUT = 2

#: A path as the user gives it: a str from the command line, a Path from Python.
PathLike = str | Path


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line that points to the command's help."""

    def error(self, message: str) -> None:  # one line, not usage + error
        command = self.prog.split()[-1]
        see = "napari-unet --help" if command == "napari-unet" else f"napari-unet {command} --help"
        raise UsageError(f"{message} (see '{see}')")


def number(option: str, kind: type, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, what: str, example: str) -> Callable[[str], int | float]:
    """An argparse type for ``option``: ``kind`` (int or float) within [low, high]
    (``low_open``: above ``low``).

    Each option has its own, so that a refusal says what that option takes and what to
    type, e.g. ``what="the number of slices to list, at least 1"``, ``example="10"``.
    """

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}: give e.g. {option} {example}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high) or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {what}, e.g. {option} {example}")
        return value

    return parse


def check_output(path: PathLike, force: bool, suffixes: tuple[str, ...], inputs: dict | None = None,
                 option: str = "--out") -> Path:
    """The output ``path``, checked before any work.

    Args:
        path: what the user gave for ``option``.
        force: an existing file may be replaced (never an input, not even then).
        suffixes: the endings allowed, e.g. (".tif", ".tiff", ".zarr"); () for any.
        inputs: the command's inputs, {"the input image": path, ...} (None for one not given).
        option: how the message names the output, e.g. "--probabilities".

    Raises:
        UsageError: wrong ending, an input, or a folder that does not exist.
        FileExistsError: the file exists and ``force`` is False.
    """
    from ..core.files import refuse_input

    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        endings = ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
        raise UsageError(f"{option} {out.name}: give a name ending in {endings}, e.g. {option} "
                         f"{out.with_suffix(suffixes[0]).name}.")
    try:
        refuse_input(out, inputs or {}, option)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if out.exists() and not force:
        raise FileExistsError(f"{option} {out} exists: choose another name or add --force to overwrite it.")
    if not out.parent.exists():
        raise UsageError(f"{option} {out}: the folder {out.parent} does not exist: create it first.")
    return out


def refuse_same(outputs: dict[str, Path | None]) -> None:
    """Refuse two outputs that are one file, e.g. {"--out": mask, "--probabilities": prob, ...}
    (None for one not asked); the message names the two options."""
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise UsageError(f"{seen[key]} and {option} name the same file ({path}): choose different names.")
        seen[key] = option


def slice_numbers(slices: str | Sequence[int] | Sequence[str], count: int, option: str) -> list[int]:
    """Slice numbers, sorted and checked against a stack of ``count`` slices.

    Args:
        slices: "3 7", "0-4, 9", the words of the command line (["0-4", "9"]) or ints.
        option: how the message names them, e.g. "--corrected".
    """
    from ..core.data import parse_slices

    text = slices if isinstance(slices, str) else " ".join(str(z) for z in slices)
    return parse_slices(text, count, option)


def read_mask(path: PathLike, shape: tuple[int, int, int], option: str, what: str,
              one_for_all: bool = False) -> np.ndarray:
    """A mask file as (Z, Y, X) bool (nonzero = in), checked against the images' shape.

    Args:
        shape: (Z, Y, X) of the images.
        option, what: how the message names it, e.g. "--edited", "the mask of the pixels you painted".
        one_for_all: a single (Y, X) mask serves every slice.

    Raises:
        UsageError: another shape; the message says what to give.
    """
    from ..core.data import as_stack, read_stack

    mask = as_stack(read_stack(path))[..., 0] != 0
    if one_for_all and mask.shape[0] == 1 and shape[0] > 1:
        mask = np.broadcast_to(mask, shape)
    if mask.shape != tuple(shape):
        per_slice = "one for every slice or one per slice" if one_for_all else "one slice per image slice"
        raise UsageError(f"{option} {Path(path).name} has shape {mask.shape} (Z, Y, X) but the images have "
                         f"{tuple(shape)}: give {what} of the images' size, {per_slice}.")
    return mask


def note(text: str) -> None:
    """A remark for the user that is not an error (stderr, one line)."""
    print(f"note: {text}", file=sys.stderr)


def progress_bar(total: int, unit: str, disable: bool = False):
    """A tqdm bar on stderr that leaves no line behind."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False, disable=disable)


class LazyBar:
    """A progress callback ``(done, total)`` whose bar appears at the first report."""

    def __init__(self, unit: str = "tile") -> None:
        self.unit, self.bar = unit, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = progress_bar(total, self.unit)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def remove(path: Path) -> None:
    """Delete a file or a folder (a zarr store), if there."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; an old ``target`` (allowed by --force) goes only once
    the new one is in place."""
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        remove(old)
        target.rename(old)
    source.rename(target)
    remove(old)


def write_tif_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a grey tif; a crash leaves the old file or the new one."""
    import tifffile

    from ..core.files import atomic_write

    # (3, Y, X) is 3 slices, not an RGB image.
    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, array, photometric="minisblack"))


# ---------------------------------------------------------------- torchrun (train, train --from)


@contextmanager
def training_device(device: str, distributed: bool) -> Iterator:
    """The torch device to train on; with ``distributed``, this process's own within the
    torchrun run it joins (NCCL between GPUs, gloo on CPUs), left again at the end."""
    from ..core.predict import resolve_device

    resolved = resolve_device(device)
    if not distributed:
        yield resolved
        return
    import torch.distributed as dist

    resolved = _join_process_group(resolved)
    try:
        yield resolved
    finally:
        dist.destroy_process_group()


def is_main_process(distributed: bool) -> bool:
    """Whether this process reports and writes: always, except the ranks above 0 of a torchrun run."""
    if not distributed:
        return True
    import torch.distributed as dist

    return dist.get_rank() == 0


def _join_process_group(device):
    """Join the torchrun run this process belongs to; returns this process's device (its
    own GPU, ``LOCAL_RANK``)."""
    import os

    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise UsageError("--distributed runs under torchrun, which starts the processes: torchrun "
                         "--nproc_per_node=N $(which napari-unet) train ... --distributed")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device
