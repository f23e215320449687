"""The fast evaluations against the exact ones they stand in for (values and gradients).

kldiv computes each closed form twice over: a fast, branch-free evaluation with the formula's own
gradient (``kldiv._xp.closed_form``), and the exact, careful evaluation that autodiff can
differentiate (``kl_*_exact``), which the fast one hands over to where it can't vouch for its
result. These tests check, for every parametrization pair and dtype, that what ``kldiv.kl``
returns agrees with the exact evaluation, and that its gradient agrees with autodiff through the
exact evaluation; and that the branch-free primitives meet their own error bounds against
mpmath on every backend. The accuracy tests (tests/closed/) hold both to the promise against
mpmath; these catch a fast path that drifts from its reference.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

import kldiv
from kldiv import Bernoulli, Categorical, MultivariateNormal, Normal
from kldiv._xp import _EXPM1_ERROR, log_ratio_fast, phi_fast
from kldiv.closed.bernoulli import kl_bernoulli_bernoulli_exact
from kldiv.closed.categorical import kl_rows_exact
from kldiv.closed.normal import kl_normal_normal_exact

torch = pytest.importorskip("torch")

NORMAL = ("std", "var", "log_std", "log_var")
CAT = ("probs", "logits", "log_probs")
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 2e-3}


def _scale(std, param):
    return {"std": std, "var": std**2, "log_std": np.log(std), "log_var": 2 * np.log(std)}[param]


def _close(got, want, rtol, what):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = np.maximum(np.abs(want), 1e-300)
    err = np.abs(got - want) / scale
    bad = ~((err <= rtol) | (got == want))
    assert not bad.any(), f"{what}: worst rel. diff {np.nanmax(err):.3g} (tolerance {rtol:g})"


def _grad_close(got, want, rtol, what):
    got, want = got.double().numpy(), want.double().numpy()
    scale = max(float(np.max(np.abs(want))), 1e-300)
    err = float(np.max(np.abs(got - want))) / scale
    assert np.all(np.isfinite(got)), f"{what}: non-finite gradient"
    assert err <= rtol, f"{what}: gradient differs by {err:.3g} of its scale"


def _leaves(*arrays, dtype):
    return [torch.tensor(a, dtype=dtype, requires_grad=True) for a in arrays]


def _compare(kl_fn, exact_fn, arrays, dtype, what, work=None, tol=None):
    """kldiv's value and gradient against the exact evaluation's (autograd through it).

    ``work``: the dtype kldiv computes in (float64 for float32 inputs in two different
    parametrizations), in which the exact evaluation is then run too.
    """
    ours = _leaves(*arrays, dtype=dtype)
    ref = _leaves(*arrays, dtype=dtype)
    v = kl_fn(*ours)
    w = exact_fn(*(r.to(work) for r in ref)) if work is not None else exact_fn(*ref)
    _close(v.detach().numpy(), w.detach().numpy(), tol or TOL[dtype], what)
    finite = torch.isfinite(w).all()
    if finite:
        v.sum().backward()
        w.sum().backward()
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            _grad_close(a.grad, b.grad, GRAD_TOL[dtype], f"{what}, gradient {i}")


def _normal_inputs(rng, pp, pq, n=64, near=False):
    mu_p, mu_q = rng.normal(0, 2, n), rng.normal(0, 2, n)
    sp, sq = np.exp(rng.uniform(-3, 3, n)), np.exp(rng.uniform(-3, 3, n))
    if near:
        sq = sp * (1 + 1e-4 * rng.uniform(-1, 1, n))
        mu_q = mu_p + 1e-4 * sp * rng.uniform(-1, 1, n)
    return mu_p, _scale(sp, pp), mu_q, _scale(sq, pq)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("pq", NORMAL)
@pytest.mark.parametrize("pp", NORMAL)
def test_normal_fast_equals_exact(pp, pq, dtype):
    rng = np.random.default_rng(len(pp) * 31 + len(pq))
    mixed = pp != pq
    # Linear against log scales in float64 meet through a rounded log (docs/numerics.md): the two
    # evaluations then agree to that rounding, not to 1e-12, for nearly equal distributions.
    for near in (False,) if mixed and dtype == torch.float64 else (False, True):
        arrays = _normal_inputs(rng, pp, pq, near=near)
        _compare(
            lambda a, b, c, d: kldiv.kl(Normal(a, **{pp: b}), Normal(c, **{pq: d})),
            lambda a, b, c, d: kl_normal_normal_exact(Normal(a, **{pp: b}), Normal(c, **{pq: d})),
            arrays,
            dtype,
            f"Normal {pp}/{pq} near={near}",
            work=torch.float64 if mixed else None,
            tol=1e-10 if mixed and dtype == torch.float64 else None,
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("param", NORMAL)
def test_normal_standard_fast_equals_exact(param, dtype):
    rng = np.random.default_rng(7)
    mu, _, _, s = _normal_inputs(rng, param, param)
    unit = {"std": 1.0, "var": 1.0, "log_std": 0.0, "log_var": 0.0}[param]

    def standard(a):  # N(0, 1) in the same parametrization, exactly (what Normal.standard() is)
        return Normal(torch.zeros_like(a), **{param: torch.full_like(a, unit)})

    _compare(
        lambda a, b: kldiv.kl(Normal(a, **{param: b}), Normal.standard()),
        lambda a, b: kl_normal_normal_exact(Normal(a, **{param: b}), standard(a)),
        (mu, s),
        dtype,
        f"Normal {param} vs standard",
    )
    _compare(
        lambda a, b: kldiv.kl(Normal.standard(), Normal(a, **{param: b})),
        lambda a, b: kl_normal_normal_exact(standard(a), Normal(a, **{param: b})),
        (mu, s),
        dtype,
        f"standard vs Normal {param}",
    )


def _cat_value(logits, param):
    if param == "logits":
        return logits
    lp = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    return lp if param == "log_probs" else np.exp(lp)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("pq", CAT)
@pytest.mark.parametrize("pp", CAT)
def test_categorical_fast_equals_exact(pp, pq, dtype):
    rng = np.random.default_rng(len(pp) * 17 + len(pq))
    la = rng.normal(0, 2, (24, 9))
    mixed = "probs" in (pp, pq) and pp != pq  # probabilities against log-space parameters
    wide = mixed and dtype == torch.float32
    nears = (False,) if mixed and dtype == torch.float64 else (False, True)
    for near in nears:
        lb = la + (1e-3 if near else 1.0) * rng.normal(0, 1, la.shape)
        a, b = _cat_value(la, pp), _cat_value(lb, pq)
        _compare(
            lambda x, y: kldiv.kl(Categorical(**{pp: x}), Categorical(**{pq: y})),
            lambda x, y: kl_rows_exact(kldiv._xp.xp_of(x), x, pp, y, pq),
            (a, b),
            dtype,
            f"Categorical {pp}/{pq} near={near}",
            work=torch.float64 if wide else None,
            tol=1e-10 if mixed and dtype == torch.float64 else None,
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("pq", ("probs", "logits"))
@pytest.mark.parametrize("pp", ("probs", "logits"))
def test_bernoulli_fast_equals_exact(pp, pq, dtype):
    rng = np.random.default_rng(len(pp) * 5 + len(pq))
    la = rng.normal(0, 3, 64)
    mixed = pp != pq
    nears = (False,) if mixed and dtype == torch.float64 else (False, True)
    for near in nears:
        lb = la + (1e-4 if near else 1.0) * rng.normal(0, 1, 64)
        a = la if pp == "logits" else 1 / (1 + np.exp(-la))
        b = lb if pq == "logits" else 1 / (1 + np.exp(-lb))
        _compare(
            lambda x, y: kldiv.kl(Bernoulli(**{pp: x}), Bernoulli(**{pq: y})),
            lambda x, y: kl_bernoulli_bernoulli_exact(Bernoulli(**{pp: x}), Bernoulli(**{pq: y})),
            (a, b),
            dtype,
            f"Bernoulli {pp}/{pq} near={near}",
            work=torch.float64 if mixed and dtype == torch.float32 else None,
            tol=1e-10 if mixed and dtype == torch.float64 else None,
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_mvn_scale_tril_gradient_equals_autodiff(dtype):
    """The scale_tril pair's own gradient against autograd through the same formula."""
    from kldiv.closed import mvn

    rng = np.random.default_rng(3)
    k, n = 5, 6

    def tril():
        a = np.tril(rng.normal(size=(n, k, k)), -1) / np.sqrt(k)
        return a + np.eye(k) * np.exp(rng.uniform(-0.5, 0.5, (n, 1, k)))

    arrays = (rng.normal(size=(n, k)), tril(), rng.normal(size=(n, k)), tril())

    def exact(a, b, c, d):
        x = kldiv._xp.xp_of(a)
        work = [t.double() for t in (a, b, c, d)]
        scales = mvn.Scale(mvn.tril(x, work[1])), mvn.Scale(mvn.tril(x, work[3]))
        return mvn.kl_scales(x, work[0] - work[2], *scales).to(a.dtype)

    _compare(
        lambda a, b, c, d: kldiv.kl(
            MultivariateNormal(a, scale_tril=b), MultivariateNormal(c, scale_tril=d)
        ),
        exact,
        arrays,
        dtype,
        "MVN scale_tril",
    )


def test_second_derivative_is_the_formulas():
    """create_graph recomputes the partials with autograd: the Hessian at p = q is Fisher's."""
    a = torch.tensor([0.3, -0.2, 1.1], dtype=torch.float64)
    h = torch.autograd.functional.hessian(
        lambda b: kldiv.kl(Categorical(logits=a), Categorical(logits=b)), a.clone()
    )
    p = torch.softmax(a, 0)
    torch.testing.assert_close(h, torch.diag(p) - torch.outer(p, p), rtol=1e-12, atol=1e-15)
    h = torch.autograd.functional.hessian(
        lambda s: kldiv.kl(
            Normal(0.0, std=s), Normal(0.0, std=torch.tensor(1.7, dtype=torch.float64))
        ),
        torch.tensor(1.7, dtype=torch.float64),
    )
    assert float(h) == pytest.approx(2 / 1.7**2, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# the branch-free primitives, on every backend, against mpmath
# ----------------------------------------------------------------------------------------------

GRID = np.concatenate([-np.logspace(-20, 2, 800), np.logspace(-20, 1.9, 800), [0.0]])
PHI_TOL = {"float32": 5e-6, "float64": 2e-13}


def _phi_ref(dtype):
    xs = GRID.astype(dtype)
    with mp.workdps(40):
        want = np.array([float(mp.expm1(mp.mpf(float(x))) - mp.mpf(float(x))) for x in xs])
    return xs, want


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_phi_fast_bound_on_every_backend(xp, dtype):
    xs, want = _phi_ref(dtype)
    got = xp.np(xp.call(lambda x: phi_fast(xp.xp, x), xp.asarray(xs, dtype)))
    ok = want > 1e-30
    err = np.abs(got - want)[ok] / want[ok]
    assert err.max() <= PHI_TOL[dtype], (err.max(), xs[ok][np.argmax(err)])
    assert np.all(got >= 0) and got[-1] == 0.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_ratio_fast_is_accurate_near_and_far(xp, dtype):
    rng = np.random.default_rng(1)
    y = np.exp(rng.uniform(-20, 20, 400)).astype(dtype)
    x = np.concatenate(
        [
            y[:200] * (1 + 2.0 ** rng.integers(-23, -1, 200)),
            y[200:] * np.exp(rng.uniform(-30, 30, 200)),
        ]
    )
    x = x.astype(dtype).astype(np.float64)
    y = y.astype(np.float64)
    with mp.workdps(40):
        want = np.array([float(mp.log(mp.mpf(a) / mp.mpf(b))) for a, b in zip(x, y, strict=True)])
    got = xp.np(
        xp.call(
            lambda a, b: log_ratio_fast(xp.xp, a, b), xp.asarray(x, dtype), xp.asarray(y, dtype)
        )
    )
    err = np.abs(got - want) / np.abs(want)
    assert err.max() <= (4e-7 if dtype == "float32" else 1e-15), err.max()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lib", ["numpy", "torch", "jax"])
def test_expm1_error_within_the_assumed_bound(lib, dtype):
    """phi_fast assumes a bound on each library's expm1 error (kldiv._xp._EXPM1_ERROR, twice
    what was measured); a library that got worse would show here first."""
    bits = 24 if dtype == "float32" else 53
    xs = np.concatenate([-np.logspace(-8, 1.5, 3000), np.logspace(-8, 1.5, 3000)]).astype(dtype)
    with mp.workdps(40):
        want = np.array([float(mp.expm1(mp.mpf(float(x)))) for x in xs])
    if lib == "numpy":
        got = np.expm1(xs)
    elif lib == "torch":
        got = torch.expm1(torch.from_numpy(xs)).numpy()
    else:
        jnp = pytest.importorskip("jax.numpy")
        got = np.asarray(jnp.expm1(jnp.asarray(xs)))
    rel = np.abs(got.astype(np.float64) - want) / np.abs(want)
    assert rel.max() <= _EXPM1_ERROR[lib, bits] / 2 * 1.0001, rel.max() / 2.0 ** (1 - bits)
    assert math.isfinite(rel.max())


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_broadcast_scalar_scale(lib):
    """A scalar scale against an array location (the fast form's in-place updates must not
    assume the scale's shape)."""
    xpl = np if lib == "numpy" else torch
    loc = xpl.asarray(np.array([[0.0, 1.0], [2.0, 3.0]]))
    got = kldiv.kl(Normal(loc, std=2.0), Normal.standard())
    want = kl_normal_normal_exact(
        Normal(np.asarray(loc), std=np.full((2, 2), 2.0)),
        Normal(np.zeros((2, 2)), std=np.ones((2, 2))),
    )
    _close(np.asarray(got), want, 1e-12, "broadcast scale")
