"""Shared bits of the benchmark scripts: where the data is, and how to load it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing (e.g. a GPU machine)
DATA = ROOT.parent / "shared" / "data"

from napari_unet.core.data import load_dataset  # noqa: E402

ISBI_VAL = list(range(25, 30))  # never trained on: the fair validation slices


def require(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"{path} not found: these benchmarks need ../shared/data (ISBI 2012 and DRIVE).")
    return path


def isbi(data: Path = DATA):
    return load_dataset(require(data / "isbi2012"))


def drive(split: str, data: Path = DATA):
    return load_dataset(require(data / "drive" / split))


# `python -c CLI_RUN ARGS...` runs the napari-unet command in a fresh process and prints a
# JSON line: its exit code, seconds, and its own peak memory (VmHWM: ru_maxrss would also
# count the parent's memory, inherited at fork and kept through exec).
CLI_RUN = """
import json, sys, time
from napari_unet.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"code": code, "seconds": time.perf_counter() - start, "peak_mb": peak / 1024}))
"""


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain text table."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(out)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}"
    return str(value)
