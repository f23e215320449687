"""kldiv.torch.topk_kl: both tail modes, every direction, temperatures, masks, NaN, errors, against
a float64 brute force on small vocabularies (written plainly from the full distributions)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from kldiv import KLDivError  # noqa: E402
from kldiv.torch import topk_kl, vocab_kl  # noqa: E402

DIRECTIONS = [("forward", None), ("reverse", None), ("jsd", 0.3)]
N, V, K = 6, 40, 7


def gen(seed):
    return torch.Generator().manual_seed(seed)


def problem(seed=0, n=N, v=V, k=K, uniform_tail=False):
    """Student logits, the teacher's full log-probabilities and its top-k cache, float64."""
    g = gen(seed)
    zs = 2 * torch.randn(n, v, generator=g, dtype=torch.float64)
    zt = 2 * torch.randn(n, v, generator=g, dtype=torch.float64)
    if uniform_tail:  # every token outside the top k gets the same logit
        order = zt.argsort(dim=-1, descending=True)
        low = zt.gather(-1, order[:, k : k + 1]) - 0.5
        zt = zt.scatter(-1, order[:, k:], low.expand(-1, v - k))
    lp = torch.log_softmax(zt, dim=-1)
    vals, idx = torch.topk(lp, k)
    return zs, lp, vals, idx


def div(p, q, direction, beta):
    """The direction's divergence of two probability vectors (last axis), float64."""

    def kl(a, b):
        return torch.where(a > 0, a * (a.log() - b.log()), 0.0).sum(-1)

    if direction == "forward":
        return kl(p, q)
    if direction == "reverse":
        return kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def brute(zs, lp, idx, tail, direction, beta, temperature):
    """Per-token reference: the bucketed or renormalized distributions, formed explicitly."""
    s = torch.softmax(zs / temperature, dim=-1)
    t_k = lp.gather(-1, idx)
    if tail == "renormalize":
        p = torch.softmax(t_k / temperature, -1)
        q = torch.softmax(zs.gather(-1, idx) / temperature, -1)
    else:
        r = 1 - t_k.exp().sum(-1, keepdim=True)
        v, k = zs.shape[-1], idx.shape[-1]
        w = torch.cat(
            [(t_k / temperature).exp(), r ** (1 / temperature) * (v - k) ** (1 - 1 / temperature)],
            -1,
        )
        p = w / w.sum(-1, keepdim=True)
        s_k = s.gather(-1, idx)
        q = torch.cat([s_k, 1 - s_k.sum(-1, keepdim=True)], -1)
    return div(p, q, direction, beta)


def ours(zs, vals, idx, dtype=torch.float32, **kw):
    x = zs.to(dtype).requires_grad_()
    v = topk_kl(student=x, teacher=(vals.to(dtype), idx), reduction="none", **kw)
    (g,) = torch.autograd.grad(v.sum(), x)
    return v.double(), g.double()


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize(("direction", "beta"), DIRECTIONS)
def test_float32_against_float64_brute_force(tail, direction, beta):
    zs, lp, vals, idx = problem(1)
    for temperature, t2 in [(1.0, None), (2.0, True), (0.7, False)]:
        kw = dict(tail=tail, direction=direction, beta=beta, temperature=temperature)
        v, g = ours(zs, vals, idx, t2_scaling=t2, chunk_size=4, **kw)
        x = zs.clone().requires_grad_()
        want = brute(x, lp, idx, tail, direction, beta, temperature) * (
            temperature**2 if t2 else 1.0
        )
        (gw,) = torch.autograd.grad(want.sum(), x)
        assert rel(v, want) < 1e-5, (temperature, rel(v, want))
        assert rel(g, gw) < 1e-5, (temperature, rel(g, gw))
        assert torch.all(v >= 0)


def test_bucket_with_uniform_tail_is_the_bucketed_tempered_teacher():
    """At T != 1 the tail is spread evenly: exact for a teacher whose tail is even."""
    zs, lp, vals, idx = problem(2, uniform_tail=True)
    for temperature in (0.5, 3.0):
        t_full = torch.softmax(lp / temperature, -1)  # the whole teacher at temperature T
        s_full = torch.softmax(zs / temperature, -1)
        t_k, s_k = t_full.gather(-1, idx), s_full.gather(-1, idx)
        p = torch.cat([t_k, 1 - t_k.sum(-1, keepdim=True)], -1)
        q = torch.cat([s_k, 1 - s_k.sum(-1, keepdim=True)], -1)
        got = topk_kl(
            student=zs, teacher=(vals, idx), tail="bucket", temperature=temperature,
            t2_scaling=False, reduction="none",
        )  # fmt: skip
        torch.testing.assert_close(got, div(p, q, "forward", None), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("direction", "beta"), DIRECTIONS)
def test_bucket_is_a_lower_bound_and_the_chain_rule_holds(direction, beta):
    zs, lp, vals, idx = problem(3)
    full = vocab_kl(
        student=zs, teacher=lp, direction=direction, beta=beta, reduction="none"
    )  # fmt: skip
    bucket = topk_kl(
        student=zs, teacher=(vals, idx), tail="bucket", direction=direction, beta=beta,
        reduction="none",
    )  # fmt: skip
    assert torch.all(bucket <= full) and torch.any(bucket < 0.9 * full)
    if direction != "forward":
        return
    # KL(t || s) = bucket + t(tail) KL(t_tail || s_tail); bucket = KL of the two masses
    # {t(K), t(tail)} against {s(K), s(tail)} + t(K) renormalize
    renorm = topk_kl(student=zs, teacher=(vals, idx), tail="renormalize", reduction="none")
    out = torch.ones_like(zs, dtype=torch.bool).scatter(-1, idx, False)
    t_tail = torch.softmax(lp.masked_fill(~out, -math.inf), -1)
    s_tail = torch.softmax(zs.masked_fill(~out, -math.inf), -1)
    t_k = vals.exp().sum(-1)
    s_k = torch.softmax(zs, -1).gather(-1, idx).sum(-1)
    two = div(torch.stack([t_k, 1 - t_k], -1), torch.stack([s_k, 1 - s_k], -1), "forward", None)
    tail_kl = div(t_tail, s_tail, "forward", None)
    torch.testing.assert_close(bucket + (1 - t_k) * tail_kl, full, rtol=1e-10, atol=0)
    torch.testing.assert_close(two + t_k * renorm, bucket, rtol=1e-10, atol=0)


def test_exact_when_the_teacher_has_no_tail():
    zs, _, _, _ = problem(4)
    zt = 2 * torch.randn(N, V, generator=gen(5), dtype=torch.float64)
    zt[:, K:] = -math.inf  # the teacher's support is its top k
    lp = torch.log_softmax(zt, -1)
    vals, idx = torch.topk(lp, K)
    got = topk_kl(student=zs, teacher=(vals, idx), tail="bucket", reduction="none")
    torch.testing.assert_close(got, vocab_kl(student=zs, teacher=zt, reduction="none"))


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_gradcheck_float64(tail):
    zs, _, vals, idx = problem(6, n=3, v=9, k=3)
    m = torch.tensor([1.0, 0.0, 2.5], dtype=torch.float64)

    def f(x):
        return topk_kl(
            student=x, teacher=(vals, idx), tail=tail, direction="reverse", mask=m,
            temperature=1.5, t2_scaling=True, chunk_size=2,
        )  # fmt: skip

    assert torch.autograd.gradcheck(f, (zs.clone().requires_grad_(),), fast_mode=True)


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_mask_weights_ignore_index_and_reductions(tail):
    zs, lp, vals, idx = problem(7)
    w = torch.tensor([0.5, 0.0, 2.0, 1.0, 0.0, 3.0], dtype=torch.float64)
    per = brute(zs, lp, idx, tail, "forward", None, 1.0)
    for reduction, want in [
        ("sum", (w * per).sum()),
        ("mean", (w * per).sum() / w.sum()),
        ("batchmean", (w * per).sum() / N),
        ("none", w * per),
    ]:
        got = topk_kl(student=zs, teacher=(vals, idx), tail=tail, mask=w, reduction=reduction)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    labels = torch.tensor([1, -100, 3, 4, -100, 5])
    a = topk_kl(student=zs, teacher=(vals, idx), tail=tail, labels=labels, ignore_index=-100)
    b = topk_kl(student=zs, teacher=(vals, idx), tail=tail, mask=labels != -100)
    assert torch.equal(a, b)


def test_skipped_tokens_all_masked_and_empty_batch():
    zs, _, vals, idx = problem(8)
    bad = idx.clone()
    bad[1] = 0  # garbage (duplicates) in a masked row is never looked at
    zs[1, 0] = math.nan
    x = zs.clone().requires_grad_()
    m = torch.ones(N, dtype=torch.bool)
    m[1] = False
    v = topk_kl(student=x, teacher=(vals, bad), tail="bucket", mask=m)
    v.backward()
    assert torch.isfinite(v) and torch.all(x.grad[1] == 0)
    for reduction in ("mean", "batchmean", "sum"):
        x = zs[:0].clone().requires_grad_()
        e = topk_kl(student=x, teacher=(vals[:0], idx[:0]), tail="bucket", reduction=reduction)
        e.backward()
        assert e.item() == 0.0 and x.grad.shape == (0, V)
        x = zs.clone().requires_grad_()
        z = topk_kl(
            student=x, teacher=(vals, idx), tail="renormalize", mask=torch.zeros(N),
            reduction=reduction,
        )  # fmt: skip
        z.backward()
        assert z.item() == 0.0 and torch.all(x.grad == 0)


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_nan_gives_nan_for_that_token_only(tail):
    zs, _, vals, idx = problem(9)
    zs, vals = zs.float(), vals.float()
    zs[0, idx[0, 0]] = math.nan  # in the top k
    tail_col = int(next(c for c in range(V) if c not in idx[2].tolist()))
    zs[2, tail_col] = math.nan  # in the tail
    vals = vals.clone()
    vals[4, 1] = math.nan  # in the teacher
    for direction, beta in DIRECTIONS:
        v, _ = ours(zs.double(), vals.double(), idx, tail=tail, direction=direction, beta=beta)
        nan = torch.isnan(v)
        expected = [True, False, tail == "bucket", False, True, False]
        assert nan.tolist() == expected, (direction, nan.tolist())


def test_bfloat16_student_and_chunking():
    zs, lp, vals, idx = problem(10)
    x = zs.to(torch.bfloat16)
    v, g = ours(x.double(), vals, idx, dtype=torch.bfloat16, tail="bucket")
    xr = x.double().requires_grad_()
    want = brute(xr, lp, idx, "bucket", "forward", None, 1.0)
    (gw,) = torch.autograd.grad(want.sum(), xr)
    assert rel(v, want) < 2**-7 and rel(g, gw) < 2**-7
    a = topk_kl(student=zs, teacher=(vals, idx), tail="bucket", chunk_size=1)
    b = topk_kl(student=zs, teacher=(vals, idx), tail="bucket", chunk_size=100)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_call_forms():
    zs, _, vals, idx = problem(11)
    a = topk_kl(zs, vals, idx, tail="bucket")
    b = topk_kl(student=zs, teacher=(vals, idx), tail="bucket")
    c = topk_kl(student=zs, teacher_logprobs=vals, teacher_index=idx, tail="bucket")
    assert torch.equal(a, b) and torch.equal(a, c)
    cache = torch.topk(torch.log_softmax(zs, -1), K)  # a torch.return_types.topk
    assert torch.isfinite(topk_kl(student=zs, teacher=cache, tail="renormalize"))


def test_bad_input():
    zs, _, vals, idx = problem(12)
    dup = idx.clone()
    dup[3, 2] = dup[3, 0]
    cases = [
        (dict(tail=None), "tail: expected 'bucket'"),
        (dict(tail="drop"), "tail: expected 'bucket'"),
        (dict(teacher=(vals, dup)), "teacher_index: expected k distinct token ids"),
        (dict(teacher=(vals, idx + V)), r"teacher_index: expected token ids in \[0, 40\)"),
        (dict(teacher=(vals, idx.float())), "teacher_index: expected an integer tensor"),
        (dict(teacher=(vals[:, :3], idx)), "teacher_index: expected teacher_logprobs' shape"),
        (dict(teacher=(vals[:2], idx[:2])), "teacher_logprobs: expected shape"),
        (dict(teacher=vals), "teacher: expected a pair"),
        (
            dict(teacher=(vals.clone().requires_grad_(), idx)),
            "teacher_logprobs: expected a tensor that does not require grad",
        ),
        (dict(teacher=(vals, idx), teacher_index=idx), "teacher: expected .* given once"),
        (dict(teacher=None), "teacher: expected the teacher's"),
        (dict(student=zs.long()), "student_logits: expected a float16"),
    ]
    for kw, match in cases:
        args = {"student": zs, "teacher": (vals, idx), "tail": "bucket", **kw}
        with pytest.raises(KLDivError, match=match):
            topk_kl(**args)
    with pytest.raises(KLDivError, match="student: expected the student's logits given once"):
        topk_kl(zs, student=zs, teacher=(vals, idx), tail="bucket")


def test_validate_reads_the_teacher():
    zs, lp, vals, idx = problem(13)
    ok = dict(student=zs, tail="bucket", validate=True)
    topk_kl(teacher=(vals, idx), **ok)
    # a cache divided by a temperature after log_softmax sums to more than 1
    with pytest.raises(KLDivError, match="teacher_logprobs: expected log-probabilities whose"):
        topk_kl(teacher=(vals / 2.0, idx), **ok)
    hot = vals.clone()
    hot[2, 0] = 0.3
    with pytest.raises(KLDivError, match=r"teacher_logprobs\[2, 0\]: expected a log-probability"):
        topk_kl(teacher=(hot, idx), **ok)
    full = torch.topk(lp, V)  # all of it: bf16 rounding pushes the sum above 1
    rounded = full.values.to(torch.bfloat16).double()
    assert bool((torch.logsumexp(rounded, -1).exp() > 1 + 1e-4).any())
    with pytest.raises(KLDivError, match="rounded to bfloat16"):
        topk_kl(teacher=(rounded, full.indices), **ok)
    topk_kl(teacher=(vals / 2.0, idx), student=zs, tail="bucket")  # not checked without validate
    with pytest.raises(KLDivError, match=r"mask\[1\]: expected a finite non-negative weight"):
        topk_kl(teacher=(vals, idx), mask=torch.tensor([1.0, -1, 1, 1, 1, 1]), **ok)
