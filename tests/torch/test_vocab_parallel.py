"""vocab_group=: vocab_kl, fused_linear_vocab_kl and topk_kl with the vocabulary split over gloo
CPU processes (2 and 4, uneven slices, a slice holding only -inf logits), a 2 x 2 grid with data
parallelism, and DTensor shards: every rank returns the one-process value on the whole
vocabulary, and each rank's gradient is its slice of the one-process gradient."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import kldiv  # noqa: E402
from kldiv.torch import topk_kl, vocab_kl  # noqa: E402

WORKER = Path(__file__).with_name("_vocab_parallel_worker.py")
_spec = importlib.util.spec_from_file_location("_vocab_parallel_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

RTOL, ATOL = 1e-10, 1e-12  # float64 throughout: only the order of the sums differs


def run_ranks(world, tmp_path):
    init = tmp_path / "init"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(world), str(init), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for r in range(world)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=180)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, text) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {r} failed:\n{text[-3000:]}"
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


_RUNS: dict = {}


def ranks(world, tmp_path_factory):
    """The saved outputs of a ``world``-rank run (one run per world size per session)."""
    if world not in _RUNS:
        _RUNS[world] = run_ranks(world, tmp_path_factory.mktemp(f"vp{world}"))
    return _RUNS[world]


@pytest.fixture(scope="module")
def reference():
    x = worker.tensors()
    return x, {name: worker.run_case(name, x) for name in worker.CASES}


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("case", list(worker.CASES))
def test_every_rank_gets_the_one_process_value_and_its_gradient_slice(
    world, case, reference, tmp_path_factory
):
    outs = ranks(world, tmp_path_factory)
    want_value, want_grads = reference[1][case]
    for r, out in enumerate(outs):
        lo, hi = out["bounds"]
        value, grads = out[case]
        torch.testing.assert_close(value, want_value, rtol=RTOL, atol=ATOL)
        assert set(grads) == set(want_grads)
        for key, g in grads.items():
            full = want_grads[key]
            if key in ("hs", "ht"):  # replicated hidden states: the whole gradient on each rank
                want = full
            elif key in ("ws", "wt", "bs"):  # this rank's rows of the lm_head
                want = full[lo:hi]
            else:  # this rank's slice of the logits
                want = full[..., lo:hi]
            torch.testing.assert_close(g, want, rtol=RTOL, atol=ATOL, msg=f"{case} {key} r{r}")
        if r:  # bit-identical values on every rank
            assert torch.equal(value, outs[0][case][0])


@pytest.mark.parametrize("world", [2, 4])
def test_minus_inf_slice_is_finite(world, tmp_path_factory):
    outs = ranks(world, tmp_path_factory)
    for out in outs:
        value, grads = out["reverse_minus_inf"]
        assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in grads.values())
    if world == 4:  # rank 1 holds entries 5..11: all -inf
        assert torch.all(outs[1]["reverse_minus_inf"][1]["s"] == 0)


def test_grid_of_data_and_tensor_parallelism(tmp_path_factory):
    outs = ranks(4, tmp_path_factory)
    want = worker.grid_reference(worker.tensors())
    for rank, out in enumerate(outs):
        got = out["grid"]
        lo, hi = worker.bounds([11, 12], rank % 2)
        tokens = slice(0, 8) if rank < 2 else slice(8, 12)
        torch.testing.assert_close(got["hs"], want["hs"][tokens], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(got["ws"], want["ws"][lo:hi], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(got["s"], want["s"][tokens, lo:hi], rtol=RTOL, atol=ATOL)


def test_dtensor_shards(reference, tmp_path_factory):
    outs = ranks(2, tmp_path_factory)
    x = reference[0]
    s = x["s"].clone().requires_grad_()
    loss = vocab_kl(student=s, teacher=x["t"])
    loss.backward()
    for out in outs:
        torch.testing.assert_close(out["dtensor"]["loss"], loss.detach(), rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(out["dtensor"]["s"], s.grad, rtol=RTOL, atol=ATOL)


def test_vocab_group_errors():
    s = torch.zeros(2, 5)
    with pytest.raises(kldiv.KLDivError, match="vocab_group: expected a process group"):
        vocab_kl(student=s, teacher=s, vocab_group=object())  # no process group initialized
    with pytest.raises(kldiv.KLDivError, match="vocab_group: expected a process group"):
        topk_kl(
            student=s,
            teacher=(torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.int64)),
            tail="bucket",
            vocab_group=object(),
        )
