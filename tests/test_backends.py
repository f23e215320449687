"""The closed forms on every backend of the ``xp`` fixture (numpy, array-api-strict, torch, jax
under jit): values against mpmath, the array type and dtype of the result, half precision
computed in float32 and returned in its own dtype, jax.grad, and torch.compile(fullgraph=True).

Each family's parametrizations are evaluated in one traced function (one jax compile per dtype);
``tests/`` is put on ``sys.path`` so that ``reference`` imports under ``--import-mode=importlib``.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kldiv
import reference as ref
from kldiv import Bernoulli, Categorical, Normal

NORMAL_PARAMS = ("std", "var", "log_std", "log_var")
CAT_PARAMS = ("probs", "logits", "log_probs")
BERN_PARAMS = ("probs", "logits")
TOL = {"float64": 1e-12, "float32": 1e-5}
NP_DTYPE = {"float64": np.float64, "float32": np.float32}


def rounded(x, dtype):
    return np.asarray(x, dtype=np.float64).astype(NP_DTYPE[dtype]).astype(np.float64)


def assert_close_to(got, want, dtype, what=""):
    got = np.asarray(got, dtype=np.float64).ravel()
    want = np.asarray(want, dtype=np.float64).ravel()
    if dtype == "float32":
        want = rounded(want, "float32")
    errs = np.array([ref.rel_err(float(g), float(w)) for g, w in zip(got, want, strict=True)])
    bad = ~(errs <= TOL[dtype])
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {bad.size} miss {TOL[dtype]:g}; worst rel_err "
        f"{np.nanmax(errs):.3g} at kldiv={got[np.argmax(errs)]!r} mpmath={want[np.argmax(errs)]!r}"
    )


def _scale(std, param):
    std = np.asarray(std, dtype=np.float64)
    return {"std": std, "var": std**2, "log_std": np.log(std), "log_var": 2 * np.log(std)}[param]


# ------------------------------------------------------------------------------------------------
# cases: moderate (every pair of parametrizations) and nearly equal (same parametrization)
# ------------------------------------------------------------------------------------------------
@functools.cache
def normal_case(dtype):
    rng = np.random.default_rng(21)
    n = 16
    mu_p, mu_q = rng.normal(0, 2, n), rng.normal(0, 2, n)
    sp, sq = np.exp(rng.uniform(-3, 3, n)), np.exp(rng.uniform(-3, 3, n))
    eps = 1e-9 if dtype == "float64" else 1e-4
    near_p = np.exp(rng.uniform(-3, 3, n))
    near_q = near_p * (1 + eps * rng.uniform(-1, 1, n))
    near_mu = mu_p + eps * near_p * rng.uniform(-1, 1, n)
    inputs = {
        "mu_p": rounded(mu_p, dtype),
        "mu_q": rounded(mu_q, dtype),
        "near_mu": rounded(near_mu, dtype),
    }
    for prm in NORMAL_PARAMS:
        inputs[f"p_{prm}"] = rounded(_scale(sp, prm), dtype)
        inputs[f"q_{prm}"] = rounded(_scale(sq, prm), dtype)
        inputs[f"np_{prm}"] = rounded(_scale(near_p, prm), dtype)
        inputs[f"nq_{prm}"] = rounded(_scale(near_q, prm), dtype)
    want = {}
    for pp in NORMAL_PARAMS:
        for pq in NORMAL_PARAMS:
            want[pp, pq] = [
                ref.kl_normal_params(a, pp, b, c, pq, d)
                for a, b, c, d in zip(
                    inputs["mu_p"],
                    inputs[f"p_{pp}"],
                    inputs["mu_q"],
                    inputs[f"q_{pq}"],
                    strict=True,
                )
            ]
        want["near", pp] = [
            ref.kl_normal_params(a, pp, b, c, pp, d)
            for a, b, c, d in zip(
                inputs["mu_p"],
                inputs[f"np_{pp}"],
                inputs["near_mu"],
                inputs[f"nq_{pp}"],
                strict=True,
            )
        ]
    return inputs, want


def normal_one(inputs, key):
    """One case: a (p, q) pair of parametrizations, or ("near", param)."""
    a, b = key
    if a == "near":
        return kldiv.kl(
            Normal(inputs["mu_p"], **{b: inputs[f"np_{b}"]}),
            Normal(inputs["near_mu"], **{b: inputs[f"nq_{b}"]}),
        )
    return kldiv.kl(
        Normal(inputs["mu_p"], **{a: inputs[f"p_{a}"]}),
        Normal(inputs["mu_q"], **{b: inputs[f"q_{b}"]}),
    )


def _log_softmax(a):
    m = np.max(a, axis=-1, keepdims=True)
    return a - m - np.log(np.sum(np.exp(a - m), axis=-1, keepdims=True))


@functools.cache
def categorical_case(dtype):
    rng = np.random.default_rng(22)
    la = rng.normal(0, 2, (6, 5))
    lb = la + rng.normal(0, 1, (6, 5))
    eps = 1e-9 if dtype == "float64" else 1e-4
    conv = {
        "logits": lambda x: x + 0.5,
        "log_probs": _log_softmax,
        "probs": lambda x: np.exp(_log_softmax(x)),
    }
    inputs = {}
    for prm in CAT_PARAMS:
        inputs[f"p_{prm}"] = rounded(conv[prm](la), dtype)
        inputs[f"q_{prm}"] = rounded(conv[prm](lb), dtype)
        base = inputs[f"p_{prm}"]
        noise = rng.uniform(-1, 1, base.shape)
        near = base * (1 + eps * noise) if prm == "probs" else base + eps * noise
        inputs[f"n_{prm}"] = rounded(near, dtype)
    want = {}
    for pp in CAT_PARAMS:
        for pq in CAT_PARAMS:
            want[pp, pq] = [
                ref.kl_categorical_params(pp, a, pq, b)
                for a, b in zip(inputs[f"p_{pp}"], inputs[f"q_{pq}"], strict=True)
            ]
        want["near", pp] = [
            ref.kl_categorical_params(pp, a, pp, b)
            for a, b in zip(inputs[f"p_{pp}"], inputs[f"n_{pp}"], strict=True)
        ]
    return inputs, want


def categorical_one(inputs, key):
    a, b = key
    if a == "near":
        return kldiv.kl(Categorical(**{b: inputs[f"p_{b}"]}), Categorical(**{b: inputs[f"n_{b}"]}))
    return kldiv.kl(Categorical(**{a: inputs[f"p_{a}"]}), Categorical(**{b: inputs[f"q_{b}"]}))


@functools.cache
def bernoulli_case(dtype):
    rng = np.random.default_rng(23)
    la = rng.normal(0, 3, 12)
    lb = la + rng.normal(0, 1, 12)
    eps = 1e-9 if dtype == "float64" else 1e-4
    inputs = {
        "p_logits": rounded(la, dtype),
        "q_logits": rounded(lb, dtype),
        "p_probs": rounded(1 / (1 + np.exp(-la)), dtype),
        "q_probs": rounded(1 / (1 + np.exp(-lb)), dtype),
    }
    inputs["n_logits"] = rounded(inputs["p_logits"] + eps * rng.uniform(-1, 1, 12), dtype)
    inputs["n_probs"] = rounded(inputs["p_probs"] * (1 + eps * rng.uniform(-1, 1, 12)), dtype)
    want = {}
    for pp in BERN_PARAMS:
        for pq in BERN_PARAMS:
            want[pp, pq] = [
                ref.kl_bernoulli_params(pp, a, pq, b)
                for a, b in zip(inputs[f"p_{pp}"], inputs[f"q_{pq}"], strict=True)
            ]
        want["near", pp] = [
            ref.kl_bernoulli_params(pp, a, pp, b)
            for a, b in zip(inputs[f"p_{pp}"], inputs[f"n_{pp}"], strict=True)
        ]
    return inputs, want


def bernoulli_one(inputs, key):
    a, b = key
    if a == "near":
        return kldiv.kl(Bernoulli(**{b: inputs[f"p_{b}"]}), Bernoulli(**{b: inputs[f"n_{b}"]}))
    return kldiv.kl(Bernoulli(**{a: inputs[f"p_{a}"]}), Bernoulli(**{b: inputs[f"q_{b}"]}))


FAMILIES = {
    "normal": (normal_case, normal_one, NORMAL_PARAMS),
    "categorical": (categorical_case, categorical_one, CAT_PARAMS),
    "bernoulli": (bernoulli_case, bernoulli_one, BERN_PARAMS),
}


def all_keys(family):
    """Every pair of parametrizations, then the nearly equal same-parametrization cases."""
    params = FAMILIES[family][2]
    return [(a, b) for a in params for b in params] + [("near", a) for a in params]


def _traced(xp, names, arrays, one, keys):
    """All ``keys`` in one traced function (one jax compile)."""

    def f(*arrs):
        inputs = dict(zip(names, arrs, strict=True))
        return tuple(one(inputs, key) for key in keys)

    with np.errstate(all="ignore"):
        return xp.call(f, *arrays)


_RUNS: dict = {}


def _run(xp, family, dtype):
    """Outputs of every case on backend ``xp`` (cached: tests share one jax compile)."""
    key = (xp.name, family, dtype)
    if key not in _RUNS:
        _RUNS[key] = _run_uncached(xp, family, dtype)
    return _RUNS[key]


def _run_uncached(xp, family, dtype):
    case, one, _ = FAMILIES[family]
    inputs, want = case(dtype)
    names = sorted(inputs)
    arrays = [xp.asarray(inputs[k], dtype) for k in names]
    return _traced(xp, names, arrays, one, all_keys(family)), want


# ------------------------------------------------------------------------------------------------
# values, array types and dtypes on every backend
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_values_types_and_dtypes(xp, family, dtype):
    outs, want = _run(xp, family, dtype)
    keys = all_keys(family)
    assert len(outs) == len(keys)
    for out, key in zip(outs, keys, strict=True):
        assert xp.is_own(out), (key, type(out))
        assert xp.dtype_name(out) == dtype, (key, out.dtype)
        assert tuple(out.shape) == np.shape(want[key]), (key, out.shape)
        assert_close_to(xp.np(out), want[key], dtype, f"{xp}/{family}/{key}")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_backends_agree_with_numpy(xp, family):
    """Each backend within 2e-12 of NumPy (both are within 1e-12 of mpmath)."""
    outs, _ = _run(xp, family, "float64")
    base, _ = _run(type(xp)("numpy"), family, "float64")  # the fixture's class, on numpy
    for out, b in zip(outs, base, strict=True):
        np.testing.assert_allclose(xp.np(out), np.asarray(b), rtol=2e-12, atol=1e-300)


# ------------------------------------------------------------------------------------------------
# half precision: computed in float32, returned in its own dtype
# ------------------------------------------------------------------------------------------------
HALF_ULP = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_half_precision_computed_in_float32(xp, family, half):
    half_dtype = xp.dtype(half)  # skips where the backend lacks it
    case, one, params = FAMILIES[family]
    inputs, _ = case("float32")
    names = sorted(inputs)
    halves = [xp.asarray(inputs[k], half) for k in names]
    # the exact half-precision inputs, as float64 (every half value is a float32 and float64)
    exact = {
        k: xp.np(xp.xp.astype(h, xp.dtype("float32"))) for k, h in zip(names, halves, strict=True)
    }
    # one mixed pair and every same-parametrization pair (dtype handling, not accuracy)
    keys = [(params[0], params[-1])] + [(a, a) for a in params] + [("near", params[0])]
    outs = _traced(xp, names, halves, one, keys)
    outs32 = _traced(xp, names, [xp.asarray(exact[k], "float32") for k in names], one, keys)
    for out, out32, key in zip(outs, outs32, keys, strict=True):
        assert xp.dtype_name(out) == half, (key, out.dtype)
        assert xp.is_own(out)
        as_half = xp.np(xp.xp.astype(out32, half_dtype))
        got = xp.np(out)
        same = (got == as_half) | (np.isnan(got) & np.isnan(as_half))
        assert same.all(), (key, got[~same], as_half[~same])
        # and within one half-precision ulp of mpmath on the exact half inputs
        want = _reference_on(family, key, exact)
        rel = np.array(
            [ref.rel_err(float(g), float(w)) for g, w in zip(got.ravel(), want, strict=True)]
        )
        finite = np.isfinite(want) & (np.abs(want) > 1e-4)  # above the half subnormal range
        assert np.all(rel[finite] <= HALF_ULP[half]), (key, rel[finite].max())


def _reference_on(family, key, x):
    a, b = key
    if family == "normal":
        if a == "near":
            args = zip(x["mu_p"], x[f"np_{b}"], x["near_mu"], x[f"nq_{b}"], strict=True)
            return np.array([ref.kl_normal_params(m, b, s, n, b, t) for m, s, n, t in args])
        args = zip(x["mu_p"], x[f"p_{a}"], x["mu_q"], x[f"q_{b}"], strict=True)
        return np.array([ref.kl_normal_params(m, a, s, n, b, t) for m, s, n, t in args])
    fn = ref.kl_categorical_params if family == "categorical" else ref.kl_bernoulli_params
    if a == "near":
        return np.array([fn(b, u, b, v) for u, v in zip(x[f"p_{b}"], x[f"n_{b}"], strict=True)])
    return np.array([fn(a, u, b, v) for u, v in zip(x[f"p_{a}"], x[f"q_{b}"], strict=True)])


def test_half_with_float32_promotes_to_float32(xp):
    xp.dtype("float16")
    mu = xp.asarray([0.5, -1.0], "float16")
    lv = xp.asarray([0.1, 0.2], "float32")
    out = xp.call(lambda m, v: kldiv.kl(Normal(m, log_var=v), Normal.standard()), mu, lv)
    assert xp.dtype_name(out) == "float32"


def test_float32_with_float64_promotes_to_float64(xp):
    a = xp.asarray([[0.1, 0.2, 0.7]], "float32")
    b = xp.asarray([[0.3, 0.3, 0.4]], "float64")
    out = xp.call(lambda x, y: kldiv.kl(Categorical(probs=x), Categorical(probs=y)), a, b)
    assert xp.dtype_name(out) == "float64"
    want = ref.kl_categorical_params(
        "probs", rounded([0.1, 0.2, 0.7], "float32"), "probs", [0.3, 0.3, 0.4]
    )
    assert_close_to(xp.np(out), [want], "float64")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_standard_normal_takes_the_other_sides_dtype(xp, dtype):
    xp.dtype(dtype)
    mu = xp.asarray([0.25, 0.0], dtype)
    lv = xp.asarray([0.0, 0.5], dtype)
    for p_first in (True, False):

        def f(m, v, p_first=p_first):
            d = Normal(m, log_var=v)
            return kldiv.kl(d, Normal.standard()) if p_first else kldiv.kl(Normal.standard(), d)

        out = xp.call(f, mu, lv)
        assert xp.dtype_name(out) == dtype
        assert xp.is_own(out)


# ------------------------------------------------------------------------------------------------
# jax.grad, and specs as pytrees through jit
# ------------------------------------------------------------------------------------------------
def test_jax_grad_and_specs_through_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    mu = jnp.asarray([0.3, -1.2])
    lv = jnp.asarray([0.1, -0.4])

    def loss(m, v):
        return jnp.sum(kldiv.kl(Normal(m, log_var=v), Normal.standard()))

    gm, gv = jax.jit(jax.grad(loss, argnums=(0, 1)))(mu, lv)
    np.testing.assert_allclose(np.asarray(gm), np.asarray(mu), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(gv), 0.5 * np.expm1(np.asarray(lv)), rtol=1e-14)

    logits = jnp.asarray([[0.0, 1.0, -math.inf], [2.0, -1.0, 0.5]])
    target = jnp.asarray([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])

    @jax.jit
    def f(p, q):  # spec objects as jit arguments (pytrees)
        return kldiv.kl(p, q)

    def g(z):
        return jnp.sum(f(Categorical(probs=target), Categorical(logits=z)))

    gz = jax.jit(jax.grad(g))(logits)
    q = np.exp(np.asarray(logits) - np.log(np.sum(np.exp(np.asarray(logits)), -1, keepdims=True)))
    np.testing.assert_allclose(np.asarray(gz), q - np.asarray(target), rtol=1e-13, atol=1e-16)


# ------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): no graph break (2 compiles, slow)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_compile_fullgraph_normal():
    torch = pytest.importorskip("torch")
    torch._dynamo.reset()

    def vae_kl(mu, lv):
        return kldiv.kl(Normal(mu, log_var=lv), Normal.standard(), event_axis=-1, reduction="none")

    vae_kl(torch.zeros(1, 1), torch.zeros(1, 1))  # first construction eagerly: see _first_use
    compiled = torch.compile(vae_kl, fullgraph=True)
    # the float32 case: sigma = 1 + 1e-4, plus moderate values
    s = np.float32(1 + 1e-4)
    lv = np.array([[2 * np.log(s), 0.3, -0.7], [1e-5, -2.0, 1.5]], dtype=np.float32)
    mu = np.array([[0.0, 0.5, -1.0], [1e-3, 2.0, 0.0]], dtype=np.float32)
    got = compiled(torch.as_tensor(mu), torch.as_tensor(lv))
    eager = vae_kl(torch.as_tensor(mu), torch.as_tensor(lv))
    assert got.dtype == torch.float32 and got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), eager.numpy(), rtol=1e-6)
    want = [
        sum(
            ref.kl_normal_params(m, "log_var", v, 0.0, "std", 1.0)
            for m, v in zip(mr.astype(float), vr.astype(float), strict=True)
        )
        for mr, vr in zip(mu, lv, strict=True)
    ]
    assert_close_to(got.numpy(), want, "float32", "compiled normal")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_compile_fullgraph_categorical():
    torch = pytest.importorskip("torch")
    torch._dynamo.reset()

    def distill(teacher_logits, student_logits):
        return kldiv.kl(Categorical(logits=teacher_logits), Categorical(logits=student_logits))

    distill(torch.zeros(1, 2), torch.zeros(1, 2))  # first construction eagerly: see _first_use
    compiled = torch.compile(distill, fullgraph=True)
    rng = np.random.default_rng(5)
    a = rng.normal(0, 2, (4, 7))
    a[0, 2] = -math.inf
    b = a + rng.normal(0, 1, (4, 7))
    b[1, 3] = -math.inf
    a[1, 3] = -math.inf
    ta = torch.tensor(a, dtype=torch.float32, requires_grad=True)
    tb = torch.tensor(b, dtype=torch.float32, requires_grad=True)
    got = compiled(ta, tb)
    got.sum().backward()
    assert got.dtype == torch.float32
    assert torch.isfinite(ta.grad).all() and torch.isfinite(tb.grad).all()
    a32, b32 = a.astype(np.float32).astype(float), b.astype(np.float32).astype(float)
    want = [
        ref.kl_categorical_params("logits", x, "logits", y) for x, y in zip(a32, b32, strict=True)
    ]
    assert_close_to(got.detach().numpy(), want, "float32", "compiled categorical")


_FIRST_USE = """
import jax, torch, kldiv
from kldiv import Normal
f = torch.compile(lambda m, v: kldiv.kl(Normal(m, log_var=v), Normal.standard()),
                  fullgraph=True, backend="eager")
out = f(torch.zeros(3), torch.full((3,), 0.5))
assert out.shape == (3,), out
print("ok")
"""


@pytest.mark.slow
def test_torch_compile_fullgraph_first_use_with_jax_imported():
    """The first spec ever built inside torch.compile, in a process that has imported jax.

    (Dynamo only, ``backend="eager"``, in a fresh interpreter: the spec classes must not have
    been built before.) A user whose process imports jax for any reason must still get one
    graph.
    """
    import subprocess

    pytest.importorskip("jax")
    pytest.importorskip("torch")
    res = subprocess.run(
        [sys.executable, "-c", _FIRST_USE], capture_output=True, text=True, timeout=300
    )
    tail = (res.stdout + res.stderr)[-1500:]
    assert res.returncode == 0 and "ok" in res.stdout, tail
