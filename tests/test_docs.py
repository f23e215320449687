"""The documentation site: it builds with warnings as errors, and every Python block runs.

Every ```` ```python ```` block of every page under docs/ is executed, each page's blocks in
order in one fresh namespace (so a page can build on its earlier blocks, and pages can't lean
on each other). A block that is meant to be shown but not run (a signature, say) is written
as a ```` ```{code-block} python ```` directive instead, which renders the same.

A page is skipped only when an optional library one of its blocks imports is not installed
(torch, jax, matplotlib, ...: ``OPTIONAL``); the build is skipped when Sphinx or myst-parser is
not.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# A fenced block that opens with ```python (nothing else on the line) and closes with ```.
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", flags=re.S | re.M)
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)
# Libraries a page may need that a bare install lacks (the extras); any other missing import
# is a failure, not a skip.
OPTIONAL = {"torch", "jax", "matplotlib", "sklearn", "mpmath", "array_api_strict", "hypothesis"}


def _blocks(page: pathlib.Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def _imported_modules(code: str) -> set[str]:
    """Top-level names of the modules a block imports (`import a.b`, `from a import b`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _name(page: pathlib.Path) -> str:
    return page.relative_to(DOCS).as_posix()


PAGES_WITH_CODE = [p for p in PAGES if _blocks(p)]


def test_pages_have_code():
    names = {_name(p) for p in PAGES_WITH_CODE}
    for page in ("quickstart.md", "reductions.md", "parametrizations.md", "jax.md"):
        assert page in names


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_name)
def test_page_code_runs(page: pathlib.Path):
    name = _name(page)
    codes = []
    for i, block in enumerate(_blocks(page)):
        where = f"docs/{name} block {i}"
        try:
            codes.append(compile(block, where, "exec"))
        except SyntaxError as exc:
            pytest.fail(
                f"{where} is not valid Python ({exc}); a block to show but not run is "
                "written as a ```{code-block} python directive"
            )
    imported = set().union(*(_imported_modules(block) for block in _blocks(page)))
    missing = sorted(m for m in imported & OPTIONAL if importlib.util.find_spec(m) is None)
    if missing:
        pytest.skip(f"docs/{name} needs {', '.join(missing)}")
    namespace: dict = {"__name__": f"docs.{name}"}
    for code in codes:
        exec(code, namespace)


def test_site_builds_without_warnings(tmp_path: pathlib.Path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    done = subprocess.run(
        [*cmd, "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, f"sphinx-build failed:\n{done.stdout}\n{done.stderr}"
    for page in PAGES:
        html = out / page.relative_to(DOCS).with_suffix(".html")
        assert html.is_file(), f"{html} was not built"
    api = (out / "api.html").read_text(encoding="utf-8")
    for name in ("kldiv.kl", "kldiv.Normal", "kldiv.mc.kl", "kldiv.torch.vocab_kl"):
        assert f'id="{name}"' in api, f"{name} is missing from the API reference"
