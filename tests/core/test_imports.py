"""What importing a module pulls in: core never Qt, napari or magicgui; the napari hooks
never a widget; the core's modules import each other one way only."""

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_unet.core

CORE_DIR = Path(napari_unet.core.__file__).parent
# Found, not listed: a new core module is covered without editing this file.
CORE_MODULES = sorted(module.name for module in pkgutil.iter_modules([str(CORE_DIR)]))
GUI_PACKAGES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy")


def _pulled_in(modules: list[str], watched: tuple[str, ...]) -> dict[str, list[str]]:
    """Import ``modules`` one after the other in a fresh interpreter; return, for each one
    that did, which of ``watched`` its import brought in."""
    code = (
        "import importlib, json, sys\n"
        "found = {}\n"
        f"for name in {modules!r}:\n"
        f"    before = {{m for m in {watched!r} if m in sys.modules}}\n"
        "    importlib.import_module(name)\n"
        f"    new = [m for m in {watched!r} if m in sys.modules and m not in before]\n"
        "    if new:\n"
        "        found[name] = new\n"
        "print(json.dumps(found))\n"
    )
    return json.loads(_last_line_of(code))


def _last_line_of(code: str) -> str:
    """Run ``code`` in a fresh interpreter; its last printed line."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_every_core_module_is_found():
    assert {"checkpoint", "corrections", "bmz", "model", "predict", "train"} <= set(CORE_MODULES)
    assert len(CORE_MODULES) == len(list(CORE_DIR.glob("[!_]*.py")))


def test_core_never_imports_qt_or_napari():
    """Every core module, the package and the CLI, in one interpreter (torch loads once)."""
    modules = ["napari_unet", "napari_unet.core"] + [f"napari_unet.core.{name}" for name in CORE_MODULES]
    assert _pulled_in(modules + ["napari_unet.cli"], GUI_PACKAGES) == {}


def test_napari_hooks_never_import_a_widget(tmp_path):
    """The reader, writer and samples, imported and run, leave the widgets unloaded: napari
    calls them to open a file, and the widgets load Qt and torch's compiler."""
    labels = tmp_path / "stack_labels.tif"  # a labels file: the reader gives it its colours
    stack = (np.arange(3 * 16 * 16).reshape(3, 16, 16) % 3).astype(np.uint8)
    tifffile.imwrite(labels, stack, photometric="minisblack")
    code = (
        "import sys\n"
        "from napari_unet._reader import get_reader\n"
        "from napari_unet._sample_data import em_sample, fundus_sample\n"
        "import napari_unet._writer\n"
        f"layers = get_reader({str(labels)!r})({str(labels)!r})\n"
        "layers += em_sample() + fundus_sample()\n"
        "assert all('colormap' in meta for _, meta, kind in layers if kind == 'labels')\n"
        "print(sorted(m for m in sys.modules if m.startswith('napari_unet._widgets')))\n"
    )
    assert _last_line_of(code) == "[]"


def _core_imports(name: str) -> set[str]:
    """The core modules ``napari_unet.core.<name>`` imports, at the top or inside a function."""
    deps = set()
    for node in ast.walk(ast.parse((CORE_DIR / f"{name}.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            deps |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_unet.core."):
            deps.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            deps |= {alias.name.split(".")[2] for alias in node.names if alias.name.startswith("napari_unet.core.")}
    return deps & set(CORE_MODULES) - {name}


def test_core_modules_import_each_other_one_way():
    graph = {name: _core_imports(name) for name in CORE_MODULES}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            pytest.fail(f"import cycle in napari_unet.core: {' -> '.join(cycle)}")
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        done.add(name)

    for name in CORE_MODULES:
        visit(name, [])
