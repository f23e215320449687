"""Every Python block in docs/pytorch.md runs (and asserts the numbers the page quotes)."""

from __future__ import annotations

import pathlib
import re

import pytest

pytest.importorskip("torch")

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "pytorch.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_page_has_python_blocks():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_page_block_runs(index):
    exec(compile(BLOCKS[index], f"docs/pytorch.md block {index}", "exec"), {})
