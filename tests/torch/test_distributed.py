"""Global-count reductions: DistributedDataParallel on gloo (2 and 3 CPU processes, uneven
batches and masks per rank) and gradient accumulation over uneven micro-batches give the
gradients of one process on the concatenated batch."""

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
from kldiv.torch import NormalKLLoss, global_count, global_normalizer  # noqa: E402

WORKER = Path(__file__).with_name("_ddp_worker.py")
_spec = importlib.util.spec_from_file_location("_ddp_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

RTOL, ATOL = 1e-5, 1e-6  # float32


def reference_grads(world):
    """One process, the whole batch, plain reduction="mean"."""
    model = worker.Model()
    worker.loss_on(model, *worker.global_batch(world)).backward()
    return worker.grads(model)


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
            outputs.append(p.communicate(timeout=120)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, text) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {r} failed:\n{text[-3000:]}"
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def assert_grads_close(got, want):
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_with_global_normalizer_equals_one_process(world, tmp_path):
    ranks = run_ranks(world, tmp_path)
    want = reference_grads(world)
    for r, out in enumerate(ranks):
        assert_grads_close(out["ddp"], want)  # DDP with uneven batches and masks
        assert_grads_close(out["accum"], want)  # ... and two uneven micro-batches per rank
        if r:
            assert all(torch.equal(a, b) for a, b in zip(out["ddp"], ranks[0]["ddp"], strict=True))
    # the test can tell: a per-rank mean gives other gradients
    naive = ranks[0]["naive"]
    assert max(float((a - b).abs().max()) for a, b in zip(naive, want, strict=True)) > 1e-2


def test_accumulation_on_one_process():
    """No process group: the normalizer is the count over the micro-batches."""
    model = worker.Model()
    x, tokens, teacher, mask = worker.global_batch(1)
    cuts = [(0, 1, 0, 1), (1, 5, 1, 4), (5, 7, 4, 6)]  # three uneven micro-batches
    micro = [(x[a:b], tokens[c:d], teacher[c:d], mask[c:d]) for a, b, c, d in cuts]
    n_norm = global_normalizer(*(m[0].shape[0] for m in micro))
    t_norm = global_normalizer(*(m[3] for m in micro))
    assert float(n_norm) == 7.0 and float(t_norm) == float(mask.sum())
    for m in micro:
        worker.loss_on(model, *m, n_norm, t_norm).backward()
    assert_grads_close(worker.grads(model), reference_grads(1))
    naive = worker.Model()
    for m in micro:
        worker.loss_on(naive, *m).backward()
    want = reference_grads(1)
    gaps = [(a.grad - b).abs().max() for a, b in zip(naive.parameters(), want, strict=True)]
    assert max(float(g) for g in gaps) > 1e-2


def test_counts_and_errors():
    mask = torch.tensor([[True, False, True], [False, False, False]])
    assert float(global_count(mask, 3, torch.tensor(2), torch.tensor([[1.0], [0.0]]))) == 8.0
    assert global_count(mask).dtype == torch.float64
    assert float(global_normalizer(torch.zeros(2, 3, dtype=torch.bool))) == 1.0  # not 0
    loss = NormalKLLoss(param="std")
    zero = loss(
        torch.ones(2, 3),
        torch.ones(2, 3),
        mask=torch.zeros(2, dtype=torch.bool),
        normalizer=global_normalizer(torch.zeros(2, dtype=torch.bool)),
    )
    assert float(zero) == 0.0
    with pytest.raises(kldiv.KLDivError, match="counts: expected at least one"):
        global_count()
    with pytest.raises(kldiv.KLDivError, match=r"counts\[1\]: expected a non-negative count"):
        global_count(mask, -1)
    with pytest.raises(kldiv.KLDivError, match=r"counts\[0\]: expected an int count or a mask"):
        global_count(2.5)
    with pytest.raises(kldiv.KLDivError, match=r"counts\[0\]: expected an int count or a mask"):
        global_count(True)
    with pytest.raises(kldiv.KLDivError, match=r"counts\[0\]: expected an integer 0-d count"):
        global_count(torch.tensor(3.0))
    with pytest.raises(kldiv.KLDivError, match="averaged_over_ranks: expected True or False"):
        global_normalizer(3, averaged_over_ranks=1)
