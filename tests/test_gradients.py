"""Gradients of the closed forms: finite at zero probabilities and -inf logits (torch autograd and
jax.grad, the latter also under jit), equal to the analytic derivatives where those are finite,
and ``torch.autograd.gradcheck`` in float64 at interior points.

Analytic derivatives used (p_hat, q_hat normalized, P and Q the sums of unnormalized probs):

- Categorical, logits a (p) and b (q): dKL/db_j = q_j - p_j; dKL/da_j = p_j (log(p_j/q_j) - KL).
- Categorical, probs: dKL/dq_j = 1/Q - p_hat_j / q_j (0/0 read as 0);
  dKL/dp_j = (log(p_hat_j/q_hat_j) - KL) / P for p_j > 0 (at p_j = 0 the one-sided derivative is
  -inf; kldiv promises a finite value there, which is all that is checked).
- Bernoulli: dKL/dq = (1-p)/(1-q) - p/q (probs); dKL/dlq = q - p (logits).
- Normal(mu, log_var): dKL/dmu_p = (mu_p - mu_q)/var_q = -dKL/dmu_q;
  dKL/dlv_p = (e^d - 1)/2 with d = lv_p - lv_q; dKL/dlv_q = (1 - e^d - (mu_p-mu_q)^2/var_q)/2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import kldiv
from kldiv import Bernoulli, Categorical, Normal

torch = pytest.importorskip("torch")

INF = math.inf


# ------------------------------------------------------------------------------------------------
# analytic gradients (float64 NumPy; the cases are moderate, so these are accurate)
# ------------------------------------------------------------------------------------------------
def _softmax(a):
    a = np.asarray(a, dtype=np.float64)
    m = np.max(a)
    e = np.exp(a - m)
    return e / e.sum()


def cat_logits_grads(a, b):
    p, q = _softmax(a), _softmax(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.where(p > 0, np.log(np.where(p > 0, p, 1)) - np.log(np.where(q > 0, q, 1)), 0.0)
    kl = float(np.sum(p * lr))
    return p * (lr - kl), q - p


def cat_probs_q_grad(p, q):
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    ph = p / p.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ph > 0, ph / np.where(q > 0, q, 1), 0.0)
    return 1.0 / q.sum() - ratio


def cat_probs_p_grad(p, q):
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    ph, qh = p / p.sum(), q / q.sum()
    pos = ph > 0
    lr = np.where(pos, np.log(np.where(pos, ph, 1) / np.where(pos, qh, 1)), 0.0)
    kl = float(np.sum(ph * lr))
    return np.where(pos, (lr - kl) / p.sum(), np.nan)  # nan: only finiteness is promised


# ------------------------------------------------------------------------------------------------
# torch autograd at zeros and -inf
# ------------------------------------------------------------------------------------------------
LOGIT_CASES = [  # (a, b): finite KL, -inf somewhere
    ([0.0, 0.0, -INF], [0.0, 1.0, -INF]),  # -inf on both sides, same class
    ([0.0, 0.0, -INF], [0.0, 0.0, -INF]),  # the issue's torch example (identical)
    ([0.0, -INF, 1.0], [0.5, 0.2, 0.1]),  # -inf in p only
    ([-INF, 2.0, -INF, 0.3], [1.0, -1.0, -INF, 0.0]),
]


def _t(x, grad=True):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def _assert_grad(got, want, what):
    got = np.asarray(got, dtype=np.float64)
    assert np.all(np.isfinite(got)), f"{what}: non-finite gradient {got}"
    want = np.asarray(want, dtype=np.float64)
    check = ~np.isnan(want)
    np.testing.assert_allclose(got[check], want[check], rtol=1e-12, atol=1e-15, err_msg=what)


@pytest.mark.parametrize(("a", "b"), LOGIT_CASES)
@pytest.mark.parametrize("param", ["logits", "log_probs"])
def test_torch_neg_inf_logits_finite_exact_gradients(a, b, param):
    ta, tb = _t(a), _t(b)
    out = kldiv.kl(Categorical(**{param: ta}), Categorical(**{param: tb}))
    assert torch.isfinite(out)
    out.backward()
    ga, gb = cat_logits_grads(a, b)
    _assert_grad(ta.grad, ga, "d/d p-logits")
    _assert_grad(tb.grad, gb, "d/d q-logits")


def test_torch_issue_example_zero_gradient_at_p_equals_q():
    """torch.distributions gives NaN gradients here; kldiv gives exact zeros (KL is minimal)."""
    a, b = _t([0.0, 0.0, -INF]), _t([0.0, 0.0, -INF])
    out = kldiv.kl(Categorical(logits=a), Categorical(logits=b))
    out.backward()
    assert out.item() == 0.0
    assert torch.all(a.grad == 0) and torch.all(b.grad == 0), (a.grad, b.grad)


PROB_CASES = [
    ([0.5, 0.5, 0.0], [0.2, 0.3, 0.5]),  # zero in p only
    ([0.7, 0.3, 0.0], [0.6, 0.4, 0.0]),  # zero in both
    ([1.0, 0.0, 0.0], [0.2, 0.3, 0.5]),  # one-hot p
    ([0.0, 0.0, 1.0], [0.0, 0.0, 1.0]),  # identical one-hot
]


@pytest.mark.parametrize(("p", "q"), PROB_CASES)
def test_torch_zero_probs_finite_gradients(p, q):
    tp, tq = _t(p), _t(q)
    out = kldiv.kl(Categorical(probs=tp), Categorical(probs=tq))
    assert torch.isfinite(out)
    out.backward()
    _assert_grad(tq.grad, cat_probs_q_grad(p, q), "d/d q-probs")
    _assert_grad(tp.grad, cat_probs_p_grad(p, q), "d/d p-probs")


@pytest.mark.parametrize(("p", "q"), PROB_CASES)
@pytest.mark.parametrize("side", ["p", "q"])
def test_torch_zero_probs_against_logits_finite_gradients(p, q, side):
    """probs with zeros on one side, -inf logits (log of the same) on the other."""
    lp = [math.log(v) if v > 0 else -INF for v in p]
    lq = [math.log(v) if v > 0 else -INF for v in q]
    if side == "p":  # p as logits, q as probs
        ta, tq = _t(lp), _t(q)
        out = kldiv.kl(Categorical(logits=ta), Categorical(probs=tq))
        out.backward()
        _assert_grad(tq.grad, cat_probs_q_grad(p, q), "d/d q-probs")
        _assert_grad(ta.grad, cat_logits_grads(lp, lq)[0], "d/d p-logits")
    else:
        tp, tb = _t(p), _t(lq)
        out = kldiv.kl(Categorical(probs=tp), Categorical(logits=tb))
        out.backward()
        _assert_grad(tb.grad, cat_logits_grads(lp, lq)[1], "d/d q-logits")
        _assert_grad(tp.grad, cat_probs_p_grad(p, q), "d/d p-probs")
    assert torch.isfinite(out)


BERN_CASES = [(0.0, 0.3), (1.0, 0.3), (0.0, 0.0), (1.0, 1.0), (0.3, 0.3), (0.2, 0.9)]


@pytest.mark.parametrize(("p", "q"), BERN_CASES)
def test_torch_bernoulli_probs_zero_one_finite_gradients(p, q):
    tp, tq = _t(p), _t(q)
    out = kldiv.kl(Bernoulli(probs=tp), Bernoulli(probs=tq))
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(tp.grad), tp.grad
    with np.errstate(divide="ignore", invalid="ignore"):
        want = (0.0 if p == 1 else (1 - p) / (1 - q)) - (0.0 if p == 0 else p / q)
    _assert_grad(tq.grad.item(), want, "d/dq")


@pytest.mark.parametrize(("la", "lb"), [(-INF, 0.5), (-INF, -INF), (0.3, -2.0), (-INF, 30.0)])
@pytest.mark.parametrize("q_param", ["logits", "probs"])
def test_torch_bernoulli_neg_inf_logits_finite_gradients(la, lb, q_param):
    ta = _t(la)
    qv = lb if q_param == "logits" else 1 / (1 + math.exp(-lb)) if lb > -INF else 0.0
    tb = _t(qv)
    out = kldiv.kl(Bernoulli(logits=ta), Bernoulli(**{q_param: tb}))
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(ta.grad) and torch.isfinite(tb.grad), (ta.grad, tb.grad)
    p = 0.0 if la == -INF else 1 / (1 + math.exp(-la))
    if q_param == "logits":
        _assert_grad(tb.grad.item(), qv_prob(lb) - p, "d/d q-logit")
    if la == -INF:
        _assert_grad(ta.grad.item(), 0.0, "d/d p-logit at -inf")


def qv_prob(logit):
    return 0.0 if logit == -INF else 1 / (1 + math.exp(-logit))


# ------------------------------------------------------------------------------------------------
# gradcheck in float64 at interior points
# ------------------------------------------------------------------------------------------------
NORMAL_PARAMS = ("std", "var", "log_std", "log_var")


def _normal_scale(std, param):
    return {"std": std, "var": std**2, "log_std": np.log(std), "log_var": 2 * np.log(std)}[param]


@pytest.mark.parametrize("pq", NORMAL_PARAMS)
@pytest.mark.parametrize("pp", NORMAL_PARAMS)
def test_gradcheck_normal(pp, pq):
    rng = np.random.default_rng(len(pp) * 7 + len(pq))
    lp, lq = _t(rng.normal(size=3)), _t(rng.normal(size=3))
    sp = _t(_normal_scale(np.exp(rng.uniform(-1, 1, 3)), pp))
    sq = _t(_normal_scale(np.exp(rng.uniform(-1, 1, 3)), pq))

    def f(a, b, c, d):
        return kldiv.kl(Normal(a, **{pp: b}), Normal(c, **{pq: d}))

    assert torch.autograd.gradcheck(f, (lp, sp, lq, sq))
    assert torch.autograd.gradcheck(
        lambda a, b: kldiv.kl(Normal(a, **{pp: b}), Normal.standard()), (lp, sp)
    )


CAT_PARAMS = ("probs", "logits", "log_probs")


def _cat_value(logits, param):
    if param == "logits":
        return logits
    lp = logits - np.log(np.sum(np.exp(logits)))
    return lp if param == "log_probs" else np.exp(lp)


@pytest.mark.parametrize("pq", CAT_PARAMS)
@pytest.mark.parametrize("pp", CAT_PARAMS)
def test_gradcheck_categorical(pp, pq):
    rng = np.random.default_rng(len(pp) * 5 + len(pq))
    a = _t(_cat_value(rng.normal(size=(2, 4)), pp))
    b = _t(_cat_value(rng.normal(size=(2, 4)), pq))

    def f(x, y):
        return kldiv.kl(Categorical(**{pp: x}), Categorical(**{pq: y}))

    assert torch.autograd.gradcheck(f, (a, b))


@pytest.mark.parametrize("pq", ["probs", "logits"])
@pytest.mark.parametrize("pp", ["probs", "logits"])
def test_gradcheck_bernoulli(pp, pq):
    rng = np.random.default_rng(len(pp) * 3 + len(pq))
    la, lb = rng.normal(size=4), rng.normal(size=4)
    a = _t(la if pp == "logits" else 1 / (1 + np.exp(-la)))
    b = _t(lb if pq == "logits" else 1 / (1 + np.exp(-lb)))

    def f(x, y):
        return kldiv.kl(Bernoulli(**{pp: x}), Bernoulli(**{pq: y}))

    assert torch.autograd.gradcheck(f, (a, b))


# ------------------------------------------------------------------------------------------------
# gradient values (torch and jax) against the analytic derivatives
# ------------------------------------------------------------------------------------------------
def _normal_case():
    rng = np.random.default_rng(11)
    mu_p, mu_q = rng.normal(size=5), rng.normal(size=5)
    lv_p, lv_q = rng.uniform(-2, 2, 5), rng.uniform(-2, 2, 5)
    d = lv_p - lv_q
    gap2 = (mu_p - mu_q) ** 2 * np.exp(-lv_q)
    want = [
        (mu_p - mu_q) * np.exp(-lv_q),
        0.5 * np.expm1(d),
        -(mu_p - mu_q) * np.exp(-lv_q),
        0.5 * (-np.expm1(d) - gap2),
    ]
    return (mu_p, lv_p, mu_q, lv_q), want


def test_torch_normal_gradient_values():
    args, want = _normal_case()
    ts = [_t(v) for v in args]
    kldiv.kl(Normal(ts[0], log_var=ts[1]), Normal(ts[2], log_var=ts[3])).sum().backward()
    for t, w, name in zip(ts, want, ["mu_p", "lv_p", "mu_q", "lv_q"], strict=True):
        _assert_grad(t.grad.numpy(), w, name)


jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


def test_jax_normal_gradient_values_under_jit():
    args, want = _normal_case()

    def f(a, b, c, d):
        return jnp.sum(kldiv.kl(Normal(a, log_var=b), Normal(c, log_var=d)))

    grads = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(*(jnp.asarray(v) for v in args))
    for g, w, name in zip(grads, want, ["mu_p", "lv_p", "mu_q", "lv_q"], strict=True):
        assert g.dtype == jnp.float64
        _assert_grad(np.asarray(g), w, name)


def test_jax_neg_inf_logits_finite_exact_gradients():
    """All 3-class cases in one batch (one jit compile); rows are independent."""
    cases = [c for c in LOGIT_CASES if len(c[0]) == 3]
    a = jnp.asarray([c[0] for c in cases])
    b = jnp.asarray([c[1] for c in cases])

    def f(x, y):
        return jnp.sum(kldiv.kl(Categorical(logits=x), Categorical(logits=y)))

    ga, gb = jax.jit(jax.grad(f, argnums=(0, 1)))(a, b)
    for i, (ra, rb) in enumerate(cases):
        wa, wb = cat_logits_grads(ra, rb)
        _assert_grad(np.asarray(ga[i]), wa, f"row {i}: d/d p-logits")
        _assert_grad(np.asarray(gb[i]), wb, f"row {i}: d/d q-logits")


def test_jax_zero_probs_finite_gradients():
    p = jnp.asarray([c[0] for c in PROB_CASES])
    q = jnp.asarray([c[1] for c in PROB_CASES])

    def f(x, y):
        return jnp.sum(kldiv.kl(Categorical(probs=x), Categorical(probs=y)))

    gp, gq = jax.jit(jax.grad(f, argnums=(0, 1)))(p, q)
    for i, (rp, rq) in enumerate(PROB_CASES):
        _assert_grad(np.asarray(gq[i]), cat_probs_q_grad(rp, rq), f"row {i}: d/d q-probs")
        _assert_grad(np.asarray(gp[i]), cat_probs_p_grad(rp, rq), f"row {i}: d/d p-probs")


def test_jax_bernoulli_zero_one_finite_gradients():
    p = jnp.asarray([c[0] for c in BERN_CASES])
    q = jnp.asarray([c[1] for c in BERN_CASES])

    def f(x, y):
        return jnp.sum(kldiv.kl(Bernoulli(probs=x), Bernoulli(probs=y)))

    gp, gq = jax.jit(jax.grad(f, argnums=(0, 1)))(p, q)
    assert np.all(np.isfinite(np.asarray(gp))), gp
    pn, qn = np.asarray(p), np.asarray(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.where(pn == 1, 0.0, (1 - pn) / (1 - qn)) - np.where(pn == 0, 0.0, pn / qn)
    _assert_grad(np.asarray(gq), want, "d/dq")

    def g(x, y):
        return jnp.sum(kldiv.kl(Bernoulli(logits=x), Bernoulli(logits=y)))

    la = jnp.asarray([-INF, -INF, 0.3])
    lb = jnp.asarray([0.5, -INF, -2.0])
    ga, gb = jax.jit(jax.grad(g, argnums=(0, 1)))(la, lb)
    _assert_grad(np.asarray(ga)[:2], [0.0, 0.0], "d/d p-logit at -inf")
    _assert_grad(
        np.asarray(gb),
        [qv_prob(v) - qv_prob(u) for u, v in zip(la.tolist(), lb.tolist(), strict=True)],
        "d/d q-logit",
    )


def test_hessian_at_equality_is_the_fisher_information():
    """At p = q the Hessian of KL in p's parameters is the Fisher information (a natural-gradient
    use); a `where` on a zero mean gap, say, would silently zero it."""
    torch = pytest.importorskip("torch")
    from torch.autograd.functional import hessian

    f64 = torch.float64

    def t(x):
        return torch.tensor(x, dtype=f64)

    def h(fn, x):
        return hessian(fn, t(x)).item()

    assert h(lambda m: kldiv.kl(Normal(m, std=t(2.0)), Normal(t(0.5), std=t(2.0))), 0.5) == (
        pytest.approx(1 / 4, rel=1e-14)
    )
    assert h(
        lambda ls: kldiv.kl(Normal(t(0.0), log_std=ls), Normal(t(0.0), log_std=t(0.3))), 0.3
    ) == pytest.approx(2.0, rel=1e-14)
    assert h(
        lambda s: kldiv.kl(Normal(t(0.0), var=s), Normal(t(0.0), var=t(1.5))), 1.5
    ) == pytest.approx(1 / (2 * 1.5**2), rel=1e-14)
    a = t([0.1, 0.5, -0.3])
    hc = hessian(lambda b: kldiv.kl(Categorical(logits=a), Categorical(logits=b)), a.clone())
    p = torch.softmax(a, 0)
    torch.testing.assert_close(hc, torch.diag(p) - torch.outer(p, p), rtol=1e-13, atol=1e-15)
