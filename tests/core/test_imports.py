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


def _core_files() -> dict[str, Path]:
    """Every module of napari_unet.core, subpackages' included, by its dotted name below
    core ("blocks", "finetune", "finetune.rules") -> its file."""
    files = {}
    for path in sorted(CORE_DIR.rglob("*.py")):
        parts = path.relative_to(CORE_DIR).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if parts:  # not core's own __init__
            files[".".join(parts)] = path
    return files


# Found, not listed: a new core module is covered without editing this file.
CORE_FILES = _core_files()
CORE_MODULES = sorted(CORE_FILES)
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
    found = set()
    for module in pkgutil.iter_modules([str(CORE_DIR)]):
        found.add(module.name)
        if module.ispkg:
            found |= {f"{module.name}.{sub.name}" for sub in pkgutil.iter_modules([str(CORE_DIR / module.name)])}
    assert found == set(CORE_MODULES)


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


def test_gui_without_napari_says_how_to_install_it():
    """`napari-unet gui` on a core-only install (no napari, no Qt): one line that names the
    extra, exit code 1, and no traceback."""
    code = (
        "import sys\n"
        "for name in ('napari', 'magicgui', 'qtpy', 'PyQt6', 'PySide6', 'PyQt5', 'PySide2'):\n"
        "    sys.modules[name] = None  # as if not installed: find_spec gives None, import fails\n"
        "from napari_unet._launch import run\n"
        "print(run(None, 'em', None, predict=True))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    assert result.stderr.count("\n") == 1 and 'pip install "napari-unet[all]"' in result.stderr


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (never run)."""
    for node in ast.iter_child_nodes(tree):
        test = node.test if isinstance(node, ast.If) else None
        if test is not None and ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from (n for branch in node.orelse for n in (branch, *_runtime_nodes(branch)))
            continue
        yield node
        yield from _runtime_nodes(node)


def _core_imports(name: str) -> set[str]:
    """The core modules ``napari_unet.core.<name>`` imports, at the top or inside a function."""
    path = CORE_FILES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level - 1 > len(package):
                continue  # above core: napari_unet itself
            base = package[: len(package) - (node.level - 1)]
            module = base + (node.module.split(".") if node.module else [])
            targets |= {".".join(module)} | {".".join(module + [alias.name]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_unet.core."):
            module = node.module.split(".")[2:]
            targets |= {".".join(module)} | {".".join(module + [alias.name]) for alias in node.names}
        elif isinstance(node, ast.Import):
            targets |= {alias.name[len("napari_unet.core."):] for alias in node.names
                        if alias.name.startswith("napari_unet.core.")}
    return targets & set(CORE_MODULES) - {name}


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
