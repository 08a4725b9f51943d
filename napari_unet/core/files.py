"""Atomic file writing: a crash mid-write leaves the old file or the new one, never half of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


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
