"""docs/audit.md stays true: its gallery table is what the gallery prints, its snippets run."""

import pathlib
import re

from kldiv.audit.gallery import gallery_table, run_gallery

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def test_gallery_table_in_docs_is_current():
    text = DOC.read_text()
    table = re.search(r"<!-- gallery:start -->\n```text\n(.*?)\n```", text, flags=re.S).group(1)
    assert table == gallery_table(run_gallery())


def test_python_snippets_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {})
