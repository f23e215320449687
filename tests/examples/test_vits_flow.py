"""examples/vits_flow.py runs in its quick mode, prints its tables and writes valid PNGs."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")


def test_vits_flow_quick(tmp_path, examples):
    example = examples.load("vits_flow")
    stdout = examples.run("vits_flow", tmp_path)
    assert example.HEADER in stdout
    assert "trained with  reported KL  exact KL" in stdout
    assert "couplings  1-sample" in stdout
    rows = [line for line in stdout.splitlines() if line.split()[:1] == ["30"]]
    assert rows, "no table row for the last step"
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(example.PLOTS)
    for name in example.PLOTS:
        examples.assert_png(tmp_path / name)
