"""Regenerate the plugin's sample data (seeded, so the files come out identical).

Usage, from the repository root::

    python sample_data/generate.py
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

try:
    from napari_unet.core.synthetic import write_samples
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(HERE.parent))
    from napari_unet.core.synthetic import write_samples

if __name__ == "__main__":
    for name, path in write_samples(HERE).items():
        print(f"{name:14s} {path.name:28s} {path.stat().st_size / 1024:7.1f} KiB")
