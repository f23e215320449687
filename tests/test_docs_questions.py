"""docs/questions/*.md stay true: each page's code runs, and the tables it prints are the page's.

A page answers one seed question. Its ```python blocks run in order in one namespace (as the
docs build runs them); every markdown table a block prints (lines starting with ``|``) must be
the first table that follows that block in the page, character for character. So a number in a
page can't drift from the code that produced it.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

QUESTIONS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "questions"
PAGES = ["000.md", "001.md", "002.md", "003.md", "004.md"]
_BLOCK = re.compile(r"^```python\n(.*?)^```$", flags=re.S | re.M)


def _tables(text: str) -> list[str]:
    """The markdown tables in ``text``: runs of consecutive lines that start with ``|``."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            tables.append("\n".join(current))
            current = []
    if current:
        tables.append("\n".join(current))
    return tables


def _prose_tables(text: str) -> list[str]:
    """Tables outside fenced code blocks."""
    return _tables(re.sub(r"^```.*?^```$", "", text, flags=re.S | re.M))


def run_page(text: str) -> list[tuple[int, str]]:
    """Run a page's python blocks in one namespace; (end offset of block, table) per table."""
    namespace: dict = {"__name__": "__docs__"}
    printed = []
    for match in _BLOCK.finditer(text):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(match.group(1), f"block at offset {match.start()}", "exec"), namespace)
        printed.extend((match.end(), t) for t in _tables(out.getvalue()))
    return printed


def test_every_question_has_a_page():
    assert sorted(p.name for p in QUESTIONS.glob("0*.md")) == PAGES


@pytest.mark.parametrize("page", PAGES)
def test_page_tables_are_what_its_code_prints(page):
    text = (QUESTIONS / page).read_text()
    if re.search(r"^import torch", text, flags=re.M):
        pytest.importorskip("torch")
    printed = run_page(text)
    assert printed, f"{page}: no block prints a table"
    for end, table in printed:
        following = _prose_tables(text[end:])
        assert following, f"{page}: a printed table has no table after its block"
        assert following[0] == table, (
            f"{page}: the table after the block at offset {end} is stale; the code prints:\n"
            + table
        )


@pytest.mark.parametrize("page", PAGES)
def test_page_states_the_question_and_the_kldiv_call(page):
    text = (QUESTIONS / page).read_text()
    assert text.startswith("# "), f"{page}: the title is the question"
    assert "kldiv." in text and "kldiv audit" in text
    assert "$$" in text, f"{page}: the derivation is missing"
