"""Every Python block in README.md runs, so the tour can't go stale."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})


def test_ci_runs_the_readme_test_command():
    """.ci/run installs what README's test command installs and runs the same pytest."""
    readme = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    command = re.search(
        r'pip install torch==2.13.0 && pip install -e "(.*?)" && python -m pytest', readme
    )
    assert command, "README's test command changed form"
    assert "pip install -q torch==2.13.0" in ci
    assert f'pip install -q -e "{command.group(1)}"' in ci
    assert "python -m pytest" in ci
