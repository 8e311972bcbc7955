"""Code blocks of the README and docs that say they run, executed as written (offline, in a scratch directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_block(path: Path, containing: str) -> str:
    """The first ```python block of ``path`` that contains ``containing``."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    found = [block for block in blocks if containing in block]
    assert found, f"{path}: no python block containing {containing!r}"
    return found[0]


@pytest.mark.parametrize(
    ("document", "containing"),
    [
        ("README.md", 'half = {"channels"'),  # the Quick start
        ("docs/models.md", "model.preprocess("),  # raw images in, predictions out
    ],
)
def test_documented_python_runs_as_written(document, containing, tmp_path, monkeypatch):
    block = python_block(ROOT / document, containing)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, document, "exec"), {"__name__": "__docs__"})
