"""The README opens with exactly two commands, CI runs the second one verbatim, and it
stays a user's page (150-250 lines; the rest lives in docs/ and BENCHMARKS.md)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

INSTALL_AND_RUN = ('python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e ".[all]" '
                   "&& .venv/bin/napari-unet gui")
TEST = ("apt-get update -qq && apt-get install -y -qq xvfb libgl1 libegl1 libfontconfig1 libdbus-1-3 "
        "libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 "
        "libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1 && python3 -m venv .venv "
        '&& .venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip install -q -e ".[testing,bioimageio]" '
        "&& .venv/bin/ruff check . && .venv/bin/python -m pytest")


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("\n## ")[0]  # the part before the first section
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", head, flags=re.S)]


def test_readme_opens_with_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)  # one line each, copy-paste safe
    assert commands == [INSTALL_AND_RUN, TEST]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci.splitlines()


def test_readme_is_a_users_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert 150 <= len(lines) <= 250, f"README.md has {len(lines)} lines: keep it 150-250, move the rest to docs/"
