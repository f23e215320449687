"""kldiv.torch.vocab_kl and fused_linear_vocab_kl: values, gradients, masks, errors, memory paths.

The reference is written plainly: log_softmax in float64 on the exact input values.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import kldiv  # noqa: E402
from kldiv import Categorical, KLDivError  # noqa: E402
from kldiv.torch import fused_linear_vocab_kl, vocab_kl  # noqa: E402
from kldiv.torch import vocab as vocab_mod  # noqa: E402

DIRECTIONS = [("forward", None), ("reverse", None), ("jsd", 0.3), ("jsd", 0.5)]


def gen(seed: int = 0):
    return torch.Generator().manual_seed(seed)


def logits(*shape, seed=0, scale=2.0, dtype=torch.float32):
    return (scale * torch.randn(*shape, generator=gen(seed), dtype=torch.float64)).to(dtype)


def ref_per_token(s, t, direction="forward", beta=None, temperature=1.0, t2=False):
    """The divergence per token, plainly, in float64."""
    ls = F.log_softmax(s.double() / temperature, dim=-1)
    lt = F.log_softmax(t.double() / temperature, dim=-1)

    def kl(lp, lq):
        p = lp.exp()
        return torch.where(p > 0, p * (lp - lq), 0.0).sum(-1)

    if direction == "forward" or (direction == "jsd" and beta == 0):
        v = kl(lt, ls)
    elif direction == "reverse" or (direction == "jsd" and beta == 1):
        v = kl(ls, lt)
    else:
        b = torch.tensor(beta, dtype=torch.float64)
        lm = torch.logaddexp(lt + b.log(), ls + torch.log1p(-b))
        v = beta * kl(lt, lm) + (1 - beta) * kl(ls, lm)
    return v * (temperature**2 if t2 else 1.0)


def rel(got, want):
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


def run(fn, s, t, *, grad_out=None, teacher_grad=True, **kw):
    """Value and gradients of fn(s, t, **kw) on fresh leaves."""
    s = s.detach().clone().requires_grad_()
    t = t.detach().clone().requires_grad_(teacher_grad)
    v = fn(s, t, **kw)
    v.backward(torch.ones_like(v) if grad_out is None else grad_out.to(v.dtype))
    return v.detach(), s.grad, t.grad


def ref_fn(s, t, *, direction="forward", beta=None, temperature=1.0, t2_scaling=None, **_):
    return ref_per_token(s, t, direction, beta, temperature, bool(t2_scaling)).mean()


# --------------------------------------------------------------------------------------------
# float32 against float64


@pytest.mark.parametrize(("direction", "beta"), DIRECTIONS)
@pytest.mark.parametrize(("temperature", "t2"), [(1.0, None), (2.0, True), (0.7, False)])
def test_float32_matches_float64_reference(direction, beta, temperature, t2):
    s, t = logits(3, 5, 301, seed=1), logits(3, 5, 301, seed=2)
    kw = dict(direction=direction, beta=beta, temperature=temperature, t2_scaling=t2)
    v, gs, gt = run(vocab_kl, s, t, chunk_size=4, **kw)
    rv, rgs, rgt = run(ref_fn, s.double(), t.double(), **kw)
    assert v.dtype == torch.float32 and v.shape == ()
    assert abs(float(v) - float(rv)) <= 1e-5 * float(rv)
    assert rel(gs, rgs) < 1e-5
    assert rel(gt, rgt) < 1e-5
    assert gs.dtype == gt.dtype == torch.float32


def test_temperature_and_t2_scaling():
    s, t = logits(4, 50, seed=3), logits(4, 50, seed=4)
    plain = vocab_kl(s / 3.0, t / 3.0)
    assert torch.allclose(vocab_kl(s, t, temperature=3.0, t2_scaling=False), plain, rtol=1e-6)
    assert torch.allclose(vocab_kl(s, t, temperature=3.0, t2_scaling=True), 9 * plain, rtol=1e-6)
    with pytest.raises(KLDivError, match="t2_scaling: expected True"):
        vocab_kl(s, t, temperature=3.0)
    assert torch.equal(vocab_kl(s, t, t2_scaling=True), vocab_kl(s, t))  # T = 1


@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
def test_forward_equals_core_kl_with_every_reduction_and_mask(reduction):
    """vocab_kl(s, t) is kldiv.kl(Categorical(t), Categorical(s)) with the same reduction."""
    s, t = logits(4, 6, 40, seed=5), logits(4, 6, 40, seed=6)
    m = torch.rand(4, 6, generator=gen(7)) > 0.4
    for mask in (None, m, m[..., None], m.to(torch.float32)):
        got = vocab_kl(s, t, mask=mask, reduction=reduction, chunk_size=5)
        want = kldiv.kl(
            Categorical(logits=t.double()),
            Categorical(logits=s.double()),
            mask=None if mask is None else mask.double() if mask.is_floating_point() else mask,
            reduction=reduction,
        )
        assert got.shape == want.shape
        np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=1e-5, atol=1e-7)
    got = vocab_kl(s, t, mask=m, normalizer=100.0)
    want = kldiv.kl(Categorical(logits=t), Categorical(logits=s), mask=m, normalizer=100.0)
    assert torch.allclose(got, want, rtol=1e-5)


def test_reverse_equals_core_kl():
    s, t = logits(5, 33, seed=8), logits(5, 33, seed=9)
    got = vocab_kl(s, t, direction="reverse", reduction="none")
    want = kldiv.kl(Categorical(logits=s), Categorical(logits=t), reduction="none")
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# half precision: gradients no worse than torch's own float32 code on the same inputs


def torch_float32_code(s, t, direction):
    """What a careful user writes: upcast in the graph, F.kl_div, batchmean over tokens."""
    ls = F.log_softmax(s.float(), -1)
    lt = F.log_softmax(t.float(), -1)
    if direction == "forward":
        return F.kl_div(ls, lt, log_target=True, reduction="batchmean")
    return F.kl_div(lt, ls, log_target=True, reduction="batchmean")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("gap", [1.0, 1e-2, 1e-3])  # 1e-3: nearly converged student
def test_half_gradients_no_worse_than_torch_float32_code(dtype, direction, gap):
    t = logits(64, 512, seed=10, dtype=dtype)
    s = (t.double() + gap * logits(64, 512, seed=11, scale=1.0)).to(dtype)
    # torch's float32 code and kldiv on the same half-precision leaves
    _, ts_grad, tt_grad = run(torch_float32_code, s, t, direction=direction)
    v, gs, gt = run(vocab_kl, s, t, direction=direction, chunk_size=7)
    _, rgs, rgt = run(ref_fn, s.double(), t.double(), direction=direction)
    assert v.dtype == dtype and gs.dtype == dtype and gt.dtype == dtype
    assert rel(gs, rgs) <= 1.01 * rel(ts_grad, rgs) + 1e-12
    assert rel(gt, rgt) <= 1.01 * rel(tt_grad, rgt) + 1e-12
    if dtype == torch.bfloat16:  # one rounding: its unit roundoff, even when nearly converged
        assert rel(gs, rgs) < 2.0**-7  # (float16 gradients of 1e-7 are subnormal: no such bound)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_gradient_with_unusual_incoming_gradient_is_rounded_once(dtype):
    """A non-unit incoming gradient recomputes (half precision) instead of rescaling."""
    t = logits(16, 256, seed=12, dtype=dtype)
    s = (t.double() + 1e-3 * logits(16, 256, seed=13, scale=1.0)).to(dtype)
    go = torch.tensor(0.37)
    _, ts_grad, _ = run(torch_float32_code, s, t, grad_out=go, direction="forward")
    _, gs, _ = run(vocab_kl, s, t, grad_out=go)
    _, rgs, _ = run(ref_fn, s.double(), t.double(), grad_out=go.double())
    assert rel(gs, rgs) <= 1.01 * rel(ts_grad, rgs) + 1e-12


# --------------------------------------------------------------------------------------------
# incoming gradients, backward paths, gradcheck


@pytest.mark.parametrize(("direction", "beta"), DIRECTIONS)
def test_arbitrary_incoming_gradient_per_token(direction, beta):
    s, t = logits(3, 4, 70, seed=14), logits(3, 4, 70, seed=15)
    go = torch.randn(3, 4, generator=gen(16))
    kw = dict(direction=direction, beta=beta)
    v, gs, gt = run(vocab_kl, s, t, grad_out=go, reduction="none", chunk_size=5, **kw)

    def ref_none(s, t, **kw):
        return ref_per_token(s, t, kw["direction"], kw["beta"])

    rv, rgs, rgt = run(ref_none, s.double(), t.double(), grad_out=go.double(), **kw)
    assert v.shape == (3, 4)
    assert rel(v, rv) < 1e-5 and rel(gs, rgs) < 1e-5 and rel(gt, rgt) < 1e-5


@pytest.mark.parametrize("go", [1.0, -2.5, 0.0])
def test_scalar_incoming_gradient_with_mask(go):
    s, t = logits(6, 90, seed=17), logits(6, 90, seed=18)
    m = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    _, gs, gt = run(vocab_kl, s, t, grad_out=torch.tensor(go), mask=m, chunk_size=4)
    _, rgs, rgt = run(ref_fn, s[m].double(), t[m].double(), grad_out=torch.tensor(go).double())
    assert torch.all(gs[~m] == 0) and torch.all(gt[~m] == 0)
    if go == 0:
        assert torch.all(gs == 0) and torch.all(gt == 0)
    else:
        assert rel(gs[m], rgs) < 1e-5 and rel(gt[m], rgt) < 1e-5


def test_backward_paths(monkeypatch):
    """Plain backward reuses the forward's gradient; half precision recomputes otherwise."""
    calls = []
    loop = vocab_mod._vocab_loop

    def spy(*args, **kw):
        calls.append(args[5] is None)
        return loop(*args, **kw)

    monkeypatch.setattr(vocab_mod, "_vocab_loop", spy)
    for dtype, go, passes in [
        (torch.float32, 1.0, 1),
        (torch.float32, 0.5, 1),  # float32: rows rescaled, one extra rounding
        (torch.bfloat16, 1.0, 1),
        (torch.bfloat16, 0.5, 2),  # bf16: recomputed, rounded once
    ]:
        calls.clear()
        s = logits(4, 30, seed=19, dtype=dtype).requires_grad_()
        vocab_kl(s, logits(4, 30, seed=20, dtype=dtype)).backward(torch.tensor(go, dtype=dtype))
        assert len(calls) == passes, (dtype, go)


@pytest.mark.parametrize(
    ("direction", "beta", "reduction"),
    [
        ("forward", None, "none"),
        ("forward", None, "mean"),
        ("reverse", None, "mean"),
        ("jsd", 0.3, "none"),
        ("jsd", 0.7, "mean"),
        ("jsd", 1.0, "mean"),
    ],
)
def test_gradcheck_float64(direction, beta, reduction):
    s = logits(2, 3, 7, seed=21, dtype=torch.float64).requires_grad_()
    t = logits(2, 3, 7, seed=22, dtype=torch.float64).requires_grad_()
    m = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)

    def f(s, t):
        return vocab_kl(
            s, t, direction=direction, beta=beta, mask=m, reduction=reduction, chunk_size=2,
            temperature=1.5, t2_scaling=True,
        )  # fmt: skip

    assert torch.autograd.gradcheck(f, (s, t), fast_mode=True)


# --------------------------------------------------------------------------------------------
# masks, ignore_index, all-masked, jsd endpoints


def test_mask_equals_slicing():
    s, t = logits(2, 5, 60, seed=23), logits(2, 5, 60, seed=24)
    m = torch.rand(2, 5, generator=gen(25)) > 0.5
    for direction, beta in DIRECTIONS:
        kw = dict(direction=direction, beta=beta)
        v, gs, gt = run(vocab_kl, s, t, mask=m, chunk_size=3, **kw)
        sv, sgs, sgt = run(vocab_kl, s[m], t[m], **kw)
        assert torch.allclose(v, sv, rtol=1e-6)
        assert torch.allclose(gs[m], sgs, rtol=1e-5, atol=1e-9)
        assert torch.allclose(gt[m], sgt, rtol=1e-5, atol=1e-9)
        assert torch.all(gs[~m] == 0) and torch.all(gt[~m] == 0)


def test_ignore_index_equals_mask():
    s, t = logits(3, 8, 20, seed=26), logits(3, 8, 20, seed=27)
    labels = torch.randint(0, 20, (3, 8), generator=gen(28))
    labels[0, :3] = -100
    labels[2, 5] = -100
    v, gs, gt = run(vocab_kl, s, t, labels=labels, ignore_index=-100)
    w, ws, wt = run(vocab_kl, s, t, mask=labels != -100)
    assert torch.equal(v, w) and torch.equal(gs, ws) and torch.equal(gt, wt)
    m = torch.rand(3, 8, generator=gen(29)) > 0.3  # mask and labels combine
    both = vocab_kl(s, t, labels=labels, ignore_index=-100, mask=m, reduction="sum")
    assert torch.allclose(both, vocab_kl(s, t, mask=m & (labels != -100), reduction="sum"))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_masked_gives_zero_and_zero_gradients(fused, reduction):
    s, t = logits(2, 3, 10, seed=30), logits(2, 3, 10, seed=31)
    s[0, 0, 0] = float("nan")  # masked garbage must not leak
    mask = torch.zeros(2, 3, dtype=torch.bool)
    if fused:
        h = s.clone().requires_grad_()
        w = torch.eye(10, requires_grad=True)
        v = fused_linear_vocab_kl(h, w, t, torch.eye(10), mask=mask, reduction=reduction)
        v.sum().backward()
        grads = [h.grad, w.grad]
    else:
        v, gs, gt = run(vocab_kl, s, t, mask=mask, reduction=reduction)
        grads = [gs, gt]
    assert torch.all(v == 0)
    for g in grads:
        assert torch.all(g == 0)


@pytest.mark.parametrize(("beta", "direction"), [(0, "forward"), (1, "reverse"), (0.0, "forward")])
def test_jsd_endpoints_are_the_two_kls(beta, direction):
    s, t = logits(4, 5, 40, seed=32), logits(4, 5, 40, seed=33)
    a = run(vocab_kl, s, t, direction="jsd", beta=beta)
    b = run(vocab_kl, s, t, direction=direction)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_jsd_interior_is_symmetric_in_swapping_sides_and_beta():
    s, t = logits(4, 40, seed=34), logits(4, 40, seed=35)
    a = vocab_kl(s, t, direction="jsd", beta=0.2, reduction="none")
    b = vocab_kl(t, s, direction="jsd", beta=0.8, reduction="none")
    assert torch.allclose(a, b, rtol=1e-5)
    assert torch.all(vocab_kl(s, s, direction="jsd", beta=0.5, reduction="none") < 1e-6)


# --------------------------------------------------------------------------------------------
# extremes: -inf logits, equal inputs, chunking, no_grad, inputs untouched


def test_minus_inf_logits_give_finite_values_and_gradients():
    s, t = logits(3, 12, seed=36), logits(3, 12, seed=37)
    s[:, 10:] = float("-inf")  # a vocabulary mask on both sides
    t[:, 10:] = float("-inf")
    for direction, beta in DIRECTIONS:
        v, gs, gt = run(vocab_kl, s, t, direction=direction, beta=beta, reduction="none")
        rv = ref_per_token(s, t, direction, beta)
        assert torch.isfinite(v).all() and torch.isfinite(gs).all() and torch.isfinite(gt).all()
        assert torch.allclose(v.double(), rv, rtol=1e-5)
        assert torch.all(gs[:, 10:] == 0) and torch.all(gt[:, 10:] == 0)
    # the teacher rules out a class the student allows: forward and jsd stay finite, and
    # KL(student || teacher) is +inf
    t[0, 3] = float("-inf")
    for direction, beta in DIRECTIONS:
        v, gs, _ = run(vocab_kl, s, t, direction=direction, beta=beta, reduction="none")
        assert torch.allclose(v.double(), ref_per_token(s, t, direction, beta), rtol=1e-5)
        if direction == "reverse":
            assert v[0] == float("inf") and torch.isfinite(v[1:]).all()
        else:
            assert torch.isfinite(v).all() and torch.isfinite(gs).all()


def test_equal_inputs_give_zero_and_never_negative():
    s = logits(8, 100, seed=38)
    for direction, beta in DIRECTIONS:
        v = vocab_kl(s, s.clone(), direction=direction, beta=beta, reduction="none")
        assert torch.all(v >= 0) and torch.all(v < 1e-6)
    t = (s.double() + 1e-4 * logits(8, 100, seed=39)).float()
    assert torch.all(vocab_kl(s, t, reduction="none") >= 0)


def test_chunk_size_does_not_change_the_result():
    s, t = logits(2, 7, 50, seed=40), logits(2, 7, 50, seed=41)
    base = run(vocab_kl, s, t, chunk_size=14)
    for c in (1, 3, None, 1000):
        for x, y in zip(run(vocab_kl, s, t, chunk_size=c), base, strict=True):
            assert torch.allclose(x, y, rtol=1e-6, atol=1e-10)


def test_no_grad_and_inputs_untouched():
    s, t = logits(3, 20, seed=42), logits(3, 20, seed=43)
    s0, t0 = s.clone(), t.clone()
    sg = s.clone().requires_grad_()
    with torch.no_grad():
        v = vocab_kl(sg, t, temperature=2.0, t2_scaling=True)
    assert not v.requires_grad
    w = vocab_kl(s, t, temperature=2.0, t2_scaling=True)
    assert torch.equal(v, w)
    run(vocab_kl, s, t)
    assert torch.equal(s, s0) and torch.equal(t, t0)


def test_normalizer_tensor_and_global_count():
    s, t = logits(4, 30, seed=44), logits(4, 30, seed=45)
    v, gs, _ = run(vocab_kl, s, t, normalizer=torch.tensor(10.0))
    w, ws, _ = run(vocab_kl, s, t, reduction="sum")
    assert torch.allclose(v, w / 10) and torch.allclose(gs, ws / 10)


# --------------------------------------------------------------------------------------------
# the lent gradient buffer


def test_grad_buffer_receives_the_gradient():
    s, t = logits(3, 4, 25, seed=46), logits(3, 4, 25, seed=47)
    buf = torch.full_like(s, 7.0)
    x = s.clone().requires_grad_()
    vocab_kl(x, t, grad_buffer=buf).backward()
    _, want, _ = run(vocab_kl, s, t)
    assert torch.equal(buf, want) and torch.equal(x.grad, want)


@pytest.mark.parametrize("go", [1.0, 0.25])
def test_grad_buffer_may_be_the_logits_themselves(go):
    """As in Liger-Kernel: the lm_head's logits are overwritten by their gradient."""
    h = logits(6, 16, seed=48).requires_grad_()
    w = logits(40, 16, seed=49, scale=0.3).requires_grad_()
    t = logits(6, 40, seed=50)
    m = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    z = h @ w.T
    vocab_kl(z, t, grad_buffer=z, mask=m, chunk_size=4).backward(torch.tensor(go))
    got = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    vocab_kl(h @ w.T, t, mask=m).backward(torch.tensor(go))
    assert torch.allclose(got[0], h.grad, rtol=1e-5, atol=1e-8)
    assert torch.allclose(got[1], w.grad, rtol=1e-5, atol=1e-8)


def test_second_backward_with_retained_graph():
    s = logits(3, 20, seed=59, dtype=torch.bfloat16).requires_grad_()
    t = logits(3, 20, seed=60, dtype=torch.bfloat16)
    v = vocab_kl(s, t)
    (g1,) = torch.autograd.grad(v, s, retain_graph=True)
    (g2,) = torch.autograd.grad(v, s)
    assert torch.equal(g1, g2)
    z = s.detach().float().requires_grad_()
    y = z * 1.0
    v = vocab_kl(y, t.float(), grad_buffer=y)
    torch.autograd.grad(v, z, retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        torch.autograd.grad(v, z)


# --------------------------------------------------------------------------------------------
# fused linear


def fused_case(dtype=torch.float32, bias=True, seed=51):
    hs = logits(2, 5, 12, seed=seed, scale=1.0, dtype=dtype)
    ht = logits(2, 5, 9, seed=seed + 1, scale=1.0, dtype=dtype)  # another hidden size
    ws = logits(33, 12, seed=seed + 2, scale=0.5, dtype=dtype)
    wt = logits(33, 9, seed=seed + 3, scale=0.5, dtype=dtype)
    bs = logits(33, seed=seed + 4, scale=0.5, dtype=dtype) if bias else None
    bt = logits(33, seed=seed + 5, scale=0.5, dtype=dtype) if bias else None
    return [hs, ws, bs, ht, wt, bt]


def fused_run(fused, tensors, go=None, **kw):
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in tensors]
    hs, ws, bs, ht, wt, bt = leaves
    if fused:
        v = fused_linear_vocab_kl(hs, ws, ht, wt, student_bias=bs, teacher_bias=bt, **kw)
    else:
        kw.pop("chunk_size", None)
        zs = F.linear(hs.float(), ws.float(), None if bs is None else bs.float())
        zt = F.linear(ht.float(), wt.float(), None if bt is None else bt.float())
        v = vocab_kl(zs.double(), zt.double(), **kw)
    v.backward(torch.ones_like(v) if go is None else go.to(v.dtype))
    return [v.detach()] + [None if x is None else x.grad for x in leaves]


@pytest.mark.parametrize(("direction", "beta"), DIRECTIONS)
@pytest.mark.parametrize("go", [None, 0.3])
def test_fused_matches_reference(direction, beta, go):
    tensors = fused_case()
    m = torch.rand(2, 5, generator=gen(57)) > 0.3
    kw = dict(direction=direction, beta=beta, mask=m, temperature=1.3, t2_scaling=True)
    go = None if go is None else torch.tensor(go)
    got = fused_run(True, tensors, go, chunk_size=3, **kw)
    want = fused_run(False, tensors, go, **kw)
    for g, w in zip(got, want, strict=True):
        assert rel(g, w) < 1e-5
        assert g.dtype == torch.float32


def test_fused_per_token_incoming_gradient():
    tensors = fused_case(bias=False)
    go = torch.randn(2, 5, generator=gen(58))
    got = fused_run(True, tensors, go, reduction="none", chunk_size=4)
    want = fused_run(False, tensors, go, reduction="none")
    for g, w in zip(got, want, strict=True):
        if w is not None:
            assert rel(g, w) < 1e-5


def test_fused_bfloat16_accumulates_weight_gradients_in_float32():
    tensors = fused_case(dtype=torch.bfloat16)
    got = fused_run(True, tensors, chunk_size=2)
    want = fused_run(False, tensors)  # float64 on the same bf16 values
    assert got[0].dtype == torch.bfloat16 and got[2].dtype == torch.bfloat16
    for g, w in zip(got[2:4], want[2:4], strict=True):  # weight and bias: one rounding
        assert rel(g, w) < 2.0**-7


def test_frozen_heads_get_no_gradient_work(monkeypatch):
    seen = []
    kernel = vocab_mod._kernel

    def spy(a, b, spec, need_s, need_t, *rest):
        seen.append((need_s, need_t))
        return kernel(a, b, spec, need_s, need_t, *rest)

    monkeypatch.setattr(vocab_mod, "_kernel", spy)
    hs, ws, _, ht, wt, _ = fused_case(bias=False)
    ws.requires_grad_()
    fused_linear_vocab_kl(hs, ws, ht, wt, chunk_size=4).backward()
    assert seen and all(x == (True, False) for x in seen)
    assert ws.grad is not None and wt.grad is None
    seen.clear()
    ws.requires_grad_(False)
    fused_linear_vocab_kl(hs, ws, ht, wt, chunk_size=4)
    assert seen and all(x == (False, False) for x in seen)


# --------------------------------------------------------------------------------------------
# bad input


def test_bad_input_raises_kldiverror_naming_the_argument():
    s, t = logits(2, 5), logits(2, 5)
    cases = [
        (dict(teacher_logits=logits(2, 6)), "teacher_logits: expected the shape"),
        (dict(direction="backward"), "direction: expected one of 'forward', 'reverse', 'jsd'"),
        (dict(direction="jsd"), "beta: expected a number in \\[0, 1\\]"),
        (dict(direction="jsd", beta=1.5), "beta: expected"),
        (dict(beta=0.5), "beta: expected None for direction='forward'"),
        (dict(temperature=0.0), "temperature: expected a positive"),
        (dict(student_logits=torch.ones(2, 5, dtype=torch.int64)), "student_logits: expected a"),
        (dict(student_logits=np.ones((2, 5))), "student_logits: expected a torch.Tensor"),
        (dict(mask=torch.ones(3, dtype=torch.bool)), "mask: expected a shape"),
        (dict(labels=torch.zeros(2, dtype=torch.int64)), "ignore_index: expected"),
        (dict(ignore_index=-100), "labels: expected"),
        (dict(labels=torch.zeros(2), ignore_index=-100), "labels: expected an integer"),
        (dict(labels=torch.zeros(3, dtype=torch.int64), ignore_index=-1), "labels: expected shape"),
        (dict(reduction="avg"), "reduction: expected one of"),
        (dict(normalizer=0), "normalizer: expected a positive"),
        (dict(chunk_size=0), "chunk_size: expected a positive integer"),
        (dict(grad_buffer=torch.zeros(2, 4)), "grad_buffer: expected a tensor of"),
        (dict(grad_buffer=t), "grad_buffer: expected memory not shared"),
    ]
    for kw, match in cases:
        args = {"student_logits": s, "teacher_logits": t, **kw}
        with pytest.raises(KLDivError, match=match):
            vocab_kl(args.pop("student_logits"), args.pop("teacher_logits"), **args)


def test_fused_bad_input():
    hs, ws, bs, ht, wt, _ = fused_case()
    with pytest.raises(KLDivError, match="student_weight: expected shape \\(V, 12\\)"):
        fused_linear_vocab_kl(hs, wt, ht, wt)
    with pytest.raises(KLDivError, match="teacher_weight: expected 33 rows"):
        fused_linear_vocab_kl(hs, ws, ht, wt[:5])
    with pytest.raises(KLDivError, match="teacher_hidden: expected the leading shape"):
        fused_linear_vocab_kl(hs, ws, ht[:1], wt)
    with pytest.raises(KLDivError, match="student_bias: expected shape \\(33,\\)"):
        fused_linear_vocab_kl(hs, ws, ht, wt, student_bias=bs[:3])
    with pytest.raises(KLDivError, match="student_weight: expected student_hidden's dtype"):
        fused_linear_vocab_kl(hs, ws.double(), ht, wt)


# --------------------------------------------------------------------------------------------
# memory: what is allocated, op by op


class _Allocations:
    """Record the size of every new storage an op creates (a dispatch mode)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        sizes = self.sizes = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                seen = {
                    x.untyped_storage().data_ptr()
                    for x in tree_flatten((args, kwargs))[0]
                    if isinstance(x, torch.Tensor)
                }
                for o in tree_flatten(out)[0]:
                    if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in seen:
                        sizes.append(o.untyped_storage().nbytes())
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def test_only_chunks_of_vocabulary_wide_temporaries():
    n, v, chunk = 64, 1000, 4
    s, t = logits(n, v, seed=61).requires_grad_(), logits(n, v, seed=62)
    with _Allocations() as rec:
        vocab_kl(s, t, chunk_size=chunk).backward()
    big = sorted(rec.sizes)
    assert big[-1] == n * v * 4  # the gradient
    assert big[-2] <= chunk * v * 4  # everything else: one chunk's worth at most
    s.grad = None
    with _Allocations() as rec:  # the test can see the naive code's copies
        torch_float32_code(s, t, "forward").backward()
    assert sum(x >= n * v * 4 for x in rec.sizes) >= 4


def test_fused_never_allocates_full_logits():
    n, v, h, chunk = 64, 1000, 16, 4
    hs = logits(n, h, seed=63, scale=1.0).requires_grad_()
    ws = logits(v, h, seed=64, scale=0.3).requires_grad_()
    ht, wt = logits(n, h, seed=65, scale=1.0), logits(v, h, seed=66, scale=0.3)
    with _Allocations() as rec:
        fused_linear_vocab_kl(hs, ws, ht, wt, chunk_size=chunk).backward()
    assert max(rec.sizes) <= max(chunk * v, v * h) * 4 < n * v * 4
