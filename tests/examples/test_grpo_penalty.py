"""examples/grpo_penalty.py runs in its quick mode, prints its tables and writes valid PNGs;
the wrong penalties let the true KL run away, the right ones hold it near the optimum's."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")


def test_grpo_penalty_quick(tmp_path, examples):
    example = examples.load("grpo_penalty")
    stdout = examples.run("grpo_penalty", tmp_path)
    assert example.HEADER in stdout and example.FINAL_HEADER in stdout
    final = {}
    for line in stdout.splitlines()[stdout.splitlines().index(example.FINAL_HEADER) + 1 :]:
        run = next((r for r in example.RUNS if line.startswith(r)), None)
        if run is not None:
            final[run] = [float(v) for v in line[len(run) :].split()]
    assert set(final) == set(example.RUNS)
    target = final["k1 in reward"][1]
    for run, (kl, tgt, gap, _, _) in final.items():
        assert tgt == target and gap >= -1e-9  # the same optimum for all, never beaten
        if run in ("k1 in loss", "k3 in reward"):  # no penalty, or a second-order one
            assert kl > 3 * target, (run, kl)
        elif run in ("k3 x weight", "k1 in reward"):
            assert abs(kl - target) < 0.3 * target, (run, kl)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(example.PLOTS)
    for name in example.PLOTS:
        examples.assert_png(tmp_path / name)
