import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["napari_unet", "napari_unet.core", "napari_unet.core.train", "napari_unet.cli"])
def test_core_never_imports_qt_or_napari(module):
    code = (
        f"import sys, {module}\n"
        "import napari_unet.core.model, napari_unet.core.data, napari_unet.core.losses\n"
        "import napari_unet.core.predict, napari_unet.core.metrics, napari_unet.core.checkpoint\n"
        "bad = [m for m in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'magicgui', 'vispy')"
        " if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"{module} pulled in {result.stdout.strip()}"
