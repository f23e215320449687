"""vocab_kl / fused_linear_vocab_kl: masks as weights, empty batches, NaN, the student=/teacher=
keywords, mixed precision, and the generalized-JSD beta conventions of TRL and Liger-Kernel.

References are float64 formulas written out here on the exact (rounded) inputs.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from kldiv import KLDivError  # noqa: E402
from kldiv.torch import fused_linear_vocab_kl, topk_kl, vocab_kl  # noqa: E402

DIRECTIONS = [("forward", None), ("reverse", None), ("jsd", 0.3)]


def logits(*shape, seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def per_token(s, t, direction="forward", beta=None):
    """The divergence per token in float64, written plainly."""
    ls, lt = F.log_softmax(s.double(), -1), F.log_softmax(t.double(), -1)

    def kl(lp, lq):
        return torch.where(lp > -math.inf, lp.exp() * (lp - lq), 0.0).sum(-1)

    if direction == "forward":
        return kl(lt, ls)
    if direction == "reverse":
        return kl(ls, lt)
    lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
    return beta * kl(lt, lm) + (1 - beta) * kl(ls, lm)


def grads(fn, *leaves, go=None):
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    v = fn(*leaves)
    v.backward(torch.ones_like(v) if go is None else go)
    return v.detach(), [x.grad for x in leaves]


# --------------------------------------------------------------------------------------------
# masks are non-negative weights


@pytest.mark.parametrize(("direction", "beta"), DIRECTIONS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
def test_mask_weights(direction, beta, reduction):
    s, t = logits(3, 4, 30, seed=1), logits(3, 4, 30, seed=2)
    w = torch.rand(3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    w[0, 0] = w[2, 1] = 0.0
    v = per_token(s, t, direction, beta)
    want = {
        "none": w * v,
        "sum": (w * v).sum(),
        "mean": (w * v).sum() / w.sum(),
        "batchmean": (w * v).sum() / 3,
    }[reduction]
    kw = dict(direction=direction, beta=beta, mask=w, reduction=reduction)
    got = vocab_kl(student=s, teacher=t, chunk_size=5, **kw)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the (..., 1) form, and the fused variant on identity heads
    torch.testing.assert_close(vocab_kl(student=s, teacher=t, **{**kw, "mask": w[..., None]}), want)
    eye = torch.eye(30, dtype=torch.float64)
    fused = fused_linear_vocab_kl(student=(s, eye), teacher=(t, eye), chunk_size=5, **kw)
    torch.testing.assert_close(fused, want, rtol=1e-10, atol=1e-12)


def test_weights_gradient_and_bool_equivalence():
    s, t = logits(6, 20, seed=4), logits(6, 20, seed=5)
    w = torch.tensor([0.5, 0.0, 2.0, 1.0, 0.25, 3.0], dtype=torch.float64)
    _, (g,) = grads(lambda x: vocab_kl(student=x, teacher=t, mask=w), s)
    _, (gr,) = grads(lambda x: (w * per_token(x, t)).sum() / w.sum(), s)
    torch.testing.assert_close(g, gr, rtol=1e-10, atol=1e-14)
    b = w > 0  # 0/1 weights are the bool mask
    a = vocab_kl(student=s, teacher=t, mask=b.double())
    assert torch.equal(a, vocab_kl(student=s, teacher=t, mask=b))
    # weight 0 tokens are skipped: NaN there does not leak
    s2 = s.clone()
    s2[1, 3] = math.nan
    assert torch.isfinite(vocab_kl(student=s2, teacher=t, mask=w))


def test_validate_rejects_bad_weights_and_normalizers():
    s, t = logits(3, 10, seed=6), logits(3, 10, seed=7)
    for bad_w, where in [([1.0, -0.5, 1.0], r"mask\[1\]"), ([1.0, 1.0, math.inf], r"mask\[2\]")]:
        w = torch.tensor(bad_w)
        for fn in (
            lambda w: vocab_kl(student=s, teacher=t, mask=w, validate=True),
            lambda w: fused_linear_vocab_kl(
                student=(s, torch.eye(10, dtype=torch.float64)),
                teacher=(t, torch.eye(10, dtype=torch.float64)),
                mask=w,
                validate=True,
            ),
        ):
            with pytest.raises(KLDivError, match=where + ": expected a finite non-negative"):
                fn(w)
    with pytest.raises(KLDivError, match=r"mask\[0\]: expected a finite non-negative"):
        vocab_kl(student=s, teacher=t, mask=torch.tensor([math.nan, 1.0, 1.0]), validate=True)
    for n in (torch.tensor(0.0), torch.tensor(-2.0), torch.tensor(math.nan)):
        with pytest.raises(KLDivError, match="normalizer: expected a positive finite"):
            vocab_kl(student=s, teacher=t, normalizer=n, validate=True)
    with pytest.raises(KLDivError, match="validate: expected True or False"):
        vocab_kl(student=s, teacher=t, validate=1)
    with pytest.raises(KLDivError, match="mask: expected a boolean tensor or real"):
        vocab_kl(student=s, teacher=t, mask=torch.ones(3, dtype=torch.complex64))


@pytest.mark.parametrize("fn", ["vocab", "fused", "topk"])
def test_batchmean_of_an_empty_batch_is_zero_with_zero_gradients(fn):
    s = logits(0, 4, 12, seed=8).requires_grad_()
    t = logits(0, 4, 12, seed=9)
    eye = torch.eye(12, dtype=torch.float64)
    if fn == "vocab":
        v = vocab_kl(student=s, teacher=t, reduction="batchmean")
    elif fn == "fused":
        v = fused_linear_vocab_kl(student=(s, eye), teacher=(t, eye), reduction="batchmean")
    else:
        lp, idx = torch.topk(torch.log_softmax(t, -1), 3)
        v = topk_kl(student=s, teacher=(lp, idx), tail="bucket", reduction="batchmean")
    v.backward()
    assert v.item() == 0.0 and not torch.isnan(v)
    assert s.grad.shape == s.shape


# --------------------------------------------------------------------------------------------
# NaN gives NaN for that token, on every path


@pytest.mark.parametrize(("direction", "beta"), [*DIRECTIONS, ("jsd", 0.0), ("jsd", 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_gives_nan_for_that_token(direction, beta, dtype):
    s, t = logits(5, 16, seed=10, dtype=dtype), logits(5, 16, seed=11, dtype=dtype)
    s[1, 4] = math.nan  # the student
    t[3, 0] = math.nan  # the teacher
    s[4, 2] = t[4, 2] = -math.inf  # a vocabulary mask: stays finite
    kw = dict(direction=direction, beta=beta, reduction="none")
    v, (gs, gt) = grads(lambda a, b: vocab_kl(student=a, teacher=b, chunk_size=2, **kw), s, t)
    assert torch.isnan(v).tolist() == [False, True, False, True, False]
    assert torch.isfinite(gs[[0, 2, 4]]).all() and torch.isfinite(gt[[0, 2, 4]]).all()
    # fused: NaN in a hidden state; the heads are identities (-inf would make 0 * inf there)
    eye = torch.eye(16, dtype=dtype)
    hs, ht = s.nan_to_num(nan=math.nan, neginf=-30.0), t.nan_to_num(nan=math.nan, neginf=-30.0)
    fused = fused_linear_vocab_kl(student=(hs, eye), teacher=(ht, eye), chunk_size=2, **kw)
    assert torch.isnan(fused).tolist() == [False, True, False, True, False]
    # reduced: NaN, never absorbed into a finite loss
    assert torch.isnan(vocab_kl(student=s, teacher=t, direction=direction, beta=beta))


# --------------------------------------------------------------------------------------------
# keywords


def test_student_teacher_keywords():
    s, t = logits(4, 9, seed=12), logits(4, 9, seed=13)
    a = vocab_kl(s, t, direction="reverse")
    assert torch.equal(a, vocab_kl(student=s, teacher=t, direction="reverse"))
    assert torch.equal(a, vocab_kl(teacher=t, student=s, direction="reverse"))
    assert torch.equal(a, vocab_kl(s, teacher=t, direction="reverse"))
    assert torch.equal(a, vocab_kl(student_logits=s, teacher_logits=t, direction="reverse"))
    with pytest.raises(KLDivError, match="student: expected the student's logits given once"):
        vocab_kl(s, t, student=s)
    with pytest.raises(KLDivError, match="teacher: expected the teacher's logits"):
        vocab_kl(student=s)
    hs, ht = logits(4, 5, seed=14), logits(4, 3, seed=15)
    ws, wt, bs = logits(9, 5, seed=16), logits(9, 3, seed=17), logits(9, seed=18)
    f = fused_linear_vocab_kl(hs, ws, ht, wt, student_bias=bs)
    assert torch.equal(f, fused_linear_vocab_kl(student=(hs, ws, bs), teacher=(ht, wt)))
    assert torch.equal(
        f, fused_linear_vocab_kl(student=(hs, ws), teacher=(ht, wt), student_bias=bs)
    )
    with pytest.raises(KLDivError, match=r"student: expected student=.* not both"):
        fused_linear_vocab_kl(hs, ws, student=(hs, ws), teacher=(ht, wt))
    with pytest.raises(KLDivError, match="student_bias: expected None when student= holds"):
        fused_linear_vocab_kl(student=(hs, ws, bs), teacher=(ht, wt), student_bias=bs)
    with pytest.raises(KLDivError, match="teacher: expected a tuple"):
        fused_linear_vocab_kl(student=(hs, ws), teacher=ht)
    with pytest.raises(KLDivError, match="teacher: expected"):
        fused_linear_vocab_kl(student=(hs, ws))


# --------------------------------------------------------------------------------------------
# mixed precision


@pytest.mark.parametrize(
    ("ds", "dt"),
    [
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float16),
        (torch.float32, torch.float16),
    ],
)
@pytest.mark.parametrize(("direction", "beta"), DIRECTIONS)
def test_mixed_dtypes_as_good_as_float32_on_the_rounded_inputs(ds, dt, direction, beta):
    s, t = logits(8, 200, seed=19, dtype=ds), logits(8, 200, seed=20, dtype=dt)
    kw = dict(direction=direction, beta=beta)
    v, (gs, gt) = grads(lambda a, b: vocab_kl(student=a, teacher=b, chunk_size=3, **kw), s, t)
    want, (rs, rt) = grads(
        lambda a, b: per_token(a, b, direction, beta).mean(), s.double(), t.double()
    )
    assert v.dtype == torch.promote_types(ds, dt)
    assert gs.dtype == ds and gt.dtype == dt
    assert abs(float(v) - float(want)) <= 1e-5 * float(want) + float(
        torch.finfo(v.dtype).eps
    ) * float(want)
    for g, r in ((gs, rs), (gt, rt)):
        bound = 1e-5 if g.dtype == torch.float32 else float(torch.finfo(g.dtype).eps)
        assert float((g.double() - r).norm() / r.norm()) < bound


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
def test_jsd_never_negative_with_mixed_dtypes_near_equality(dt):
    """Users report negative JSD from mixed dtypes: a float32 student a hair from its teacher."""
    t = logits(64, 512, seed=21, dtype=dt)
    s = (t.double() + 1e-4 * logits(64, 512, seed=22, scale=1.0)).float()
    for beta in (0.1, 0.5, 0.9):
        v = vocab_kl(student=s, teacher=t, direction="jsd", beta=beta, reduction="none")
        assert torch.all(v >= 0)
        want = per_token(s, t, "jsd", beta)
        assert float((v.double() - want).abs().max()) < 1e-6


def test_autocast_returns_float32_and_keeps_float32_math():
    g = torch.Generator().manual_seed(23)
    lin = torch.nn.Linear(8, 50)
    x, t = torch.randn(6, 8, generator=g), 2 * torch.randn(6, 50, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = lin(x)
        assert z.dtype == torch.bfloat16
        loss = vocab_kl(student=z, teacher=t)
        fused = fused_linear_vocab_kl(
            student=(x, lin.weight, lin.bias), teacher=(x, torch.eye(50, 8))
        )
    assert loss.dtype == torch.float32 and fused.dtype == torch.float32
    torch.testing.assert_close(
        loss, vocab_kl(student=z.detach().float(), teacher=t), rtol=0, atol=0
    )
    want = vocab_kl(student=F.linear(x, lin.weight, lin.bias), teacher=x @ torch.eye(50, 8).T)
    torch.testing.assert_close(fused, want, rtol=1e-6, atol=1e-7)  # the matmul stayed float32
    loss.backward()
    assert torch.isfinite(lin.weight.grad).all()


# --------------------------------------------------------------------------------------------
# the generalized JSD's beta, in TRL's and Liger-Kernel's conventions (docs/vocab.md)


def trl_gkd(s, t, beta):
    """TRL's GKDTrainer.generalized_jsd_loss, per token, from its formula (F.kl_div(input,
    target) is KL(target || exp(input))): m = beta t + (1 - beta) s,
    jsd = beta KL(t || m) + (1 - beta) KL(s || m); beta 0 and 1 are F.kl_div's two KLs."""
    ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    if beta == 0:
        return F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    if beta == 1:
        return F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
    lm = torch.logsumexp(torch.stack([ls + math.log(1 - beta), lt + math.log(beta)]), 0)
    kt = F.kl_div(lm, lt, reduction="none", log_target=True).sum(-1)
    ks = F.kl_div(lm, ls, reduction="none", log_target=True).sum(-1)
    return beta * kt + (1 - beta) * ks


def liger_jsd(s, t, beta):
    """Liger-Kernel's LigerJSD kernel, per token, from its formula with X = log Q the student
    (input) and Y = log P the teacher (target): sum(beta P Y + (1 - beta) Q X - M log M),
    M = beta P + (1 - beta) Q; beta 0: sum P (Y - X), beta 1: sum Q (X - Y)."""
    x, y = F.log_softmax(s, -1), F.log_softmax(t, -1)
    p, q = y.exp(), x.exp()
    if beta == 0:
        return (p * (y - x)).sum(-1)
    if beta == 1:
        return (q * (x - y)).sum(-1)
    m = beta * p + (1 - beta) * q
    return (beta * p * y + (1 - beta) * q * x - m * m.log()).sum(-1)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_beta_is_trl_and_liger_beta(beta):
    s, t = logits(5, 33, seed=24), logits(5, 33, seed=25)
    ours = vocab_kl(student=s, teacher=t, direction="jsd", beta=beta, reduction="none")
    torch.testing.assert_close(ours, trl_gkd(s, t, beta), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours, liger_jsd(s, t, beta), rtol=1e-9, atol=1e-12)
    # and the other way round is a different number (swapping beta swaps the roles)
    if beta not in (0.5,):
        assert not torch.allclose(ours, trl_gkd(s, t, 1 - beta), rtol=1e-3)


def test_the_ends_are_the_limits_of_jsd_over_its_weight():
    """JSD(beta) / beta -> KL(t || s) as beta -> 0, JSD(beta) / (1 - beta) -> KL(s || t) as -> 1."""
    s, t = logits(4, 20, seed=26, scale=1.0), logits(4, 20, seed=27, scale=1.0)
    fwd = vocab_kl(student=s, teacher=t, reduction="none")
    rev = vocab_kl(student=s, teacher=t, direction="reverse", reduction="none")
    eps = 1e-6
    lo = vocab_kl(student=s, teacher=t, direction="jsd", beta=eps, reduction="none") / eps
    hi = vocab_kl(student=s, teacher=t, direction="jsd", beta=1 - eps, reduction="none") / eps
    torch.testing.assert_close(lo, fwd, rtol=1e-4, atol=0)
    torch.testing.assert_close(hi, rev, rtol=1e-4, atol=0)
