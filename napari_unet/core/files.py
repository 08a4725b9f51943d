"""Atomic file writing: a crash mid-write leaves the old file or the new one, never half of one;
an output never replaces an input."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

# The models shipped with the package: built-in name -> weights file in BUILTIN_DIR (a
# model card beside each, the same name ending in .md).
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "models"
BUILTIN_MODELS = {"em-membranes": "em_membranes.pt", "fundus-vessels": "fundus_vessels.pt"}


def napari_unet_home() -> Path:
    """Folder for files that belong to no image (models, corrections of unsaved images):
    ``$NAPARI_UNET_HOME``, default ``~/napari-unet``."""
    return Path(os.environ.get("NAPARI_UNET_HOME") or Path.home() / "napari-unet")


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(temp_path)`` on a temp file beside ``path``, flush it to disk, rename.

    The temp file is created with ``os.open(..., 0o666)``, so it gets the permissions the
    process's umask gives any new file (mkstemp would leave it 0600), without touching
    the process-wide umask (other threads may be creating files).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(str(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and try a write there, before a long job needs it.

    Raises:
        ValueError: the folder cannot be created or written; the message names it.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".napari-unet-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"Cannot write to {folder} ({exc.strerror or exc}): choose another folder.") from exc
    return folder


def free_path(path: str | Path) -> Path:
    """``path``, or ``name_2.pt``, ``name_3.pt``… so an existing file is never overwritten."""
    path = Path(path)
    candidate, n = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return candidate


def refuse_input(output: str | Path, inputs: dict[str, str | Path | None], what: str = "The output") -> Path:
    """Refuse an output that is one of the inputs: an output never replaces an input.

    ``output`` and each input are compared after resolving symbolic links (and as the
    same file on disk, for hard links); a folder input (a zarr store, a folder of
    images) also refuses an output inside it, and an output folder may not hold an input.

    Args:
        output: the path about to be written.
        inputs: what each input is, for the message (e.g. ``"the input image"``) -> its
            path; ``None`` or ``""`` for an input not given.
        what: how the message names the output (e.g. ``"--out"``, ``"Save model to"``).

    Returns:
        ``output``, resolved.

    Raises:
        ValueError: ``output`` is, is inside, or holds an input; the message names it.
    """
    out = Path(output).expanduser().resolve()
    for name, given in inputs.items():
        if not given:
            continue
        source = Path(given).expanduser().resolve()
        same = out == source or (out.exists() and source.exists() and os.path.samefile(out, source))
        if same or source in out.parents or out in source.parents:
            relation = "is" if same else ("is inside" if source in out.parents else "holds")
            raise ValueError(f"{what} {output} {relation} {name} ({given}): an output never replaces an input. "
                             "Choose another name.")
    return out
