"""The thumbnails committed under docs/_static are exactly the plots the examples write."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["vits_flow", "distill", "grpo_penalty"])
def test_thumbnails_match_the_example(name, examples):
    example = examples.load(name)
    static = examples.root / "docs" / "_static"
    committed = sorted(p.name for p in (static / name).iterdir())
    assert committed == sorted(example.PLOTS)
    for png in example.PLOTS:
        path = static / name / png
        examples.assert_png(path)
        assert path.stat().st_size <= 150_000, f"{path} is over 150 KB"
        assert f"_static/{name}/{png}" in (examples.root / "docs" / "examples.md").read_text()
