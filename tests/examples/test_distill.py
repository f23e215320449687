"""examples/distill.py runs in its quick mode, prints its tables and writes valid PNGs."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")


def test_distill_quick(tmp_path, examples):
    example = examples.load("distill")
    stdout = examples.run("distill", tmp_path)
    assert example.HEADER in stdout
    assert "trained with   KL(t||s)   KL(s||t)   top-1 agree   time (s)   ms/step" in stdout
    final = {
        line.split()[0]: line.split()[1:]
        for line in stdout.splitlines()
        if line.split()[:1] and line.split()[0] in example.RUNS
    }
    assert set(final) == set(example.RUNS)
    # F.kl_div on the valid tokens and vocab_kl "forward" are the same objective
    assert abs(float(final["forward"][0]) - float(final["F.kl_div"][0])) < 1e-3
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(example.PLOTS)
    for name in example.PLOTS:
        examples.assert_png(tmp_path / name)
