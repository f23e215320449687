"""Global-count reductions: DistributedDataParallel on gloo (2 and 3 CPU processes, uneven
batches and masks per rank; 4 processes as 2 data-parallel x 2 context-parallel ranks for the
RLHF normalizations and Hugging Face Trainer's num_items_in_batch) and gradient accumulation
over uneven micro-batches give the gradients of one process on the concatenated batch."""

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
from kldiv.torch import (  # noqa: E402
    NormalKLLoss,
    global_count,
    global_normalizer,
    sequence_weights,
    trainer_normalizer,
)

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


def run_ranks(world, tmp_path, *mode):
    init = tmp_path / "init"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(world), str(init), str(tmp_path), *mode],
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


def max_gap(got, want):
    return max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True))


def test_rlhf_normalizations_over_data_and_context_parallel_ranks(tmp_path):
    """2 x 2 ranks, two micro-batches each, sequences split over the context-parallel ranks
    (one with no valid token in its second half, one with none at all): each normalization
    equals one process on the whole batch; Trainer's num_items_in_batch in its three cases."""
    ranks = run_ranks(4, tmp_path, "rlhf")
    modes = ("token", "seq", "seq_all", "drgrpo")
    want = {mode: worker.rlhf_reference(mode) for mode in modes}
    for out in ranks:
        for mode in modes:
            assert_grads_close(out[mode], want[mode])
        for name in ("hf_compute_loss_func", "hf_own_compute_loss", "hf_per_device_count"):
            assert_grads_close(out[name], want["token"])
        assert out["replicated"] == 4.0  # 2 sequences on each of 2 data-parallel ranks
        assert len(out["errors"]) == 2
        assert "expected the same counts on every rank of context_group" in out["errors"][0]
        assert "got totals from 1.0 to 2.0" in out["errors"][0]
        assert "context_group: expected ranks inside group" in out["errors"][1]
        # the test can tell: sequences counted on every CP rank, or per-rank means
        assert max_gap(out["drgrpo_counted_twice"], want["drgrpo"]) > 1e-3
        assert max_gap(out["token_local_mean"], want["token"]) > 1e-3


def test_weights_replicated_counts_and_trainer_normalizer_on_one_process():
    w = torch.tensor([[1.0, 0.5, 0.0], [0.25, 0.0, 0.0]])
    assert float(global_count(w)) == 1.75  # weights count their sum
    assert float(global_count(w, 2, torch.tensor(3))) == 6.75
    with pytest.raises(kldiv.KLDivError, match=r"counts\[0\]\[0, 2\]: expected a non-negative"):
        global_count(torch.tensor([[1.0, 1.0, -1.0]]), validate=True)
    with pytest.raises(kldiv.KLDivError, match=r"counts\[1\]\[1\]: expected a non-negative"):
        global_count(w, torch.tensor([1.0, float("nan")]), validate=True)
    with pytest.raises(kldiv.KLDivError, match="context_group: expected the context-parallel"):
        global_count(3, replicated_over_context=True)
    with pytest.raises(kldiv.KLDivError, match="replicated_over_context: expected True or False"):
        global_normalizer(3, replicated_over_context="yes")
    m = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    sw = sequence_weights(m)
    torch.testing.assert_close(sw.sum(-1), torch.tensor([1.0, 1.0, 0.0]))
    assert float(global_count(sw)) == 2.0  # the sequences with a valid token
    with pytest.raises(kldiv.KLDivError, match="mask: expected a tensor with a token axis"):
        sequence_weights(torch.tensor(1.0))
    with pytest.raises(kldiv.KLDivError, match=r"mask\[0, 1\]: expected a non-negative"):
        sequence_weights(torch.tensor([[1.0, -2.0]]), validate=True)
    # Trainer: the count itself (one process; W = 1), None passes through
    for avg in (True, False):
        for scaled in (True, False):
            norm = trainer_normalizer(
                torch.tensor(12), average_tokens_across_devices=avg, scaled_by_trainer=scaled
            )
            assert float(norm) == 12.0
    assert (
        trainer_normalizer(None, average_tokens_across_devices=True, scaled_by_trainer=True) is None
    )
    assert (
        float(trainer_normalizer(0, average_tokens_across_devices=True, scaled_by_trainer=True))
        == 1.0
    )
    with pytest.raises(kldiv.KLDivError, match="num_items_in_batch: expected an int"):
        trainer_normalizer(
            torch.tensor([3, 3]), average_tokens_across_devices=True, scaled_by_trainer=True
        )
    with pytest.raises(kldiv.KLDivError, match="scaled_by_trainer: expected True or False"):
        trainer_normalizer(3, average_tokens_across_devices=True, scaled_by_trainer=None)
