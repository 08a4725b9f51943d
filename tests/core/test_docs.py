"""The user documentation holds together: links resolve, and the code it names exists.

Scans README.md, BENCHMARKS.md and docs/**/*.md. Fast: it reads text and imports
modules (no model is loaded, no Qt module is imported by the names the pages cite).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").rglob("*.md")])

FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE = re.compile(r"`([^`\n]+)`")
#: A backticked path into the repository: `napari_unet/core/x.py`, `core/x.py`, `benchmarks/x.py` ...
PATH = re.compile(r"^(?:napari_unet|core|_widgets|cli|benchmarks|tests|sample_data|docs)/[\w./-]*$")
#: A backticked dotted name: `napari_unet.core.pipeline.Pipeline` or `core.pipeline.Pipeline`.
DOTTED = re.compile(r"^(?:napari_unet|core)(?:\.[A-Za-z_]\w*)+$")
#: A script run in a command, in prose or in a code block: `python benchmarks/speed.py ...`.
SCRIPT = re.compile(r"\bpython3?\s+(?:-\S+\s+)*((?:[\w.-]+/)*[\w.-]+\.py)\b")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", flags=re.M)


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _prose(page: Path) -> str:
    """The page without its fenced code blocks (commands are checked by `SCRIPT`)."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(_prose(page)):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _link_problem(page: Path, target: str) -> str | None:
    """Why a link of ``page`` does not resolve, or None when it does (web links are not fetched)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return None
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"{target}: no such file"
    if anchor and file.suffix == ".md" and anchor not in _anchors(file):
        return f"{target}: no heading '#{anchor}' in {file.name}"
    return None


def _path_exists(token: str) -> bool:
    """A cited path exists; inside the package a module may be a file or a folder
    (`core/finetune.py` or `core/finetune/`), and `core/...` means `napari_unet/core/...`."""
    token = token.rstrip("/")
    bases = [ROOT / token]
    if token.split("/")[0] in ("core", "_widgets", "cli"):
        bases.append(ROOT / "napari_unet" / token)
    for base in bases:
        if base.exists():
            return True
        if "napari_unet" in base.parts:
            if base.suffix == ".py" and (base.with_suffix("") / "__init__.py").is_file():
                return True
            if not base.suffix and base.with_suffix(".py").is_file():
                return True
    return False


def _resolve(name: str):
    """Import the longest module prefix of a dotted name, then getattr the rest.

    Raises:
        ModuleNotFoundError: no prefix is a module; AttributeError: the rest is not in it.
    """
    if name.startswith("core."):
        name = "napari_unet." + name
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module_name.startswith(exc.name):
                raise  # the module exists but one of its imports is missing: say so
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


def _cited(kind: re.Pattern) -> list[tuple[str, str]]:
    return sorted({(_name(page), token) for page in PAGES for token in CODE.findall(_prose(page))
                   if kind.match(token.strip())})


def test_the_pages_are_found():
    names = [_name(page) for page in PAGES]
    assert "README.md" in names and "BENCHMARKS.md" in names
    assert any(name.startswith("docs/decisions/") for name in names)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_resolves(page):
    problems = [problem for target in LINK.findall(_prose(page)) if (problem := _link_problem(page, target))]
    assert not problems, f"{_name(page)}: {problems}"


def test_every_docs_page_is_linked_from_another_page():
    linked = set()
    for page in PAGES:
        for target in LINK.findall(_prose(page)):
            path = target.partition("#")[0]
            if path and not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                linked.add((page.parent / path).resolve())
    orphans = [_name(page) for page in PAGES if page != ROOT / "README.md" and page.resolve() not in linked]
    assert not orphans, f"pages no other page links to: {orphans}"


@pytest.mark.parametrize(("page", "token"), _cited(PATH))
def test_cited_paths_exist(page, token):
    assert _path_exists(token.strip()), f"{page} cites `{token}`, which is not in the repository"


@pytest.mark.parametrize(("page", "name"), _cited(DOTTED))
def test_cited_dotted_names_resolve(page, name):
    try:
        _resolve(name.strip())
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{page} cites `{name}`, which does not resolve: {exc}")


def test_commands_run_scripts_that_exist():
    missing = sorted({(_name(page), script) for page in PAGES
                      for script in SCRIPT.findall(page.read_text(encoding="utf-8"))
                      if not (ROOT / script).is_file()})
    assert not missing, f"commands that run a script not in the repository: {missing}"


# ------------------------------------------------------------ the checks themselves


def test_the_checks_can_fail(tmp_path):
    """Each check rejects what it is there to reject (so a passing run means something)."""
    page = tmp_path / "page.md"
    page.write_text("# A heading\n\n[ok](#a-heading) [bad](missing.md) [web](https://example.org/x)\n")
    assert _link_problem(page, "#a-heading") is None
    assert _link_problem(page, "https://example.org/x") is None
    assert "no such file" in _link_problem(page, "missing.md")
    assert "no heading" in _link_problem(page, "#another-heading")
    assert _path_exists("napari_unet/core/pipeline.py") and _path_exists("core/pipeline.py")
    assert not _path_exists("core/no_such_module.py") and not _path_exists("benchmarks/no_such.py")
    assert _resolve("core.pipeline.Pipeline") is _resolve("napari_unet.core.pipeline.Pipeline")
    with pytest.raises(AttributeError):
        _resolve("napari_unet.core.pipeline.NoSuchThing")
    with pytest.raises((ImportError, AttributeError)):
        _resolve("napari_unet.core.no_such_module")
    with pytest.raises(ImportError):
        _resolve("napari_unet_no_such_package.core")
    assert PATH.match("benchmarks/speed.py") and not PATH.match("~/napari-unet/models")
    assert DOTTED.match("core.uncertainty.DEFAULT_METHODS") and not DOTTED.match("core/x.py")
    assert SCRIPT.findall("run `python benchmarks/speed.py --gui`") == ["benchmarks/speed.py"]
    assert _slug("Which slice should I correct next?") == "which-slice-should-i-correct-next"
