"""Accuracy of the Bernoulli closed form against mpmath on the exact inputs.

Promises tested: relative error <= 1e-12 (float64) / 1e-5 (float32) for KL down to 1e-30;
probs and logits mixed across p and q; nearly equal inputs; p in {0, 1} and -inf logits
(finite values, +inf where p > 0 = q); logits of magnitude up to 1e4; KL(p, p) == 0 exactly;
never negative; agreement with torch.distributions and scipy.

The reference builds the two classes ``[1 - p, p]`` exactly in mpmath (or ``[1, e^l] / Z`` from
a logit ``l``) and sums the non-negative terms ``p_i (e^x - 1 - x)``, ``x = log(q_i / p_i)``, at a
working precision chosen from the size of the result (``reference.kl_bernoulli_params`` computes
``1 - sigmoid(l)`` at 50 digits, which is 0 for logits above ~115; it is used where it is exact).
"""

from __future__ import annotations

import functools
import math
import sys
import zlib
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kldiv
import reference as ref
from kldiv import Bernoulli

PARAMS = ("probs", "logits")
PAIRS = [(a, b) for a in PARAMS for b in PARAMS]
TOL = ref.TOL
FLOOR = ref.FLOOR
NP_DTYPE = {"float64": np.float64, "float32": np.float32}
EAGER = ["numpy", "array_api_strict", "torch"]
INF = math.inf


# ------------------------------------------------------------------------------------------------
# reference
# ------------------------------------------------------------------------------------------------
def _classes(param: str, v: float) -> list:
    v = mp.mpf(float(v))
    if param == "probs":
        return [1 - v, v]
    if v == -mp.inf:
        return [mp.mpf(1), mp.mpf(0)]
    if v == mp.inf:
        return [mp.mpf(0), mp.mpf(1)]
    z = 1 + mp.exp(v)
    return [1 / z, mp.exp(v) / z]


def _phi_form(pp, a, pq, b):
    """sum over p > 0 of p (e^x - 1 - x), plus the q-mass where p = 0 (that sum's deficit)."""
    total = mp.mpf(0)
    for pi, qi in zip(_classes(pp, a), _classes(pq, b), strict=True):
        if pi == 0:
            total += qi
            continue
        if qi == 0:
            return mp.inf
        x = mp.log(qi / pi)
        total += pi * (mp.expm1(x) - x)
    return total


def bern_ref(pp: str, a: float, pq: str, b: float) -> float:
    with mp.workdps(60):
        rough = _phi_form(pp, a, pq, b)
    if rough in (0, mp.inf):
        return float(rough)
    dps = 60 + max(0, int(-mp.log10(rough) / 2) + 5)
    if dps == 60:
        return float(rough)
    with mp.workdps(dps):
        return float(_phi_form(pp, a, pq, b))


def reference(pp, a, pq, b) -> np.ndarray:
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return np.array(
        [bern_ref(pp, x, pq, y) for x, y in zip(a.ravel(), b.ravel(), strict=True)]
    ).reshape(a.shape)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def rounded(x, dtype: str) -> np.ndarray:
    with np.errstate(over="ignore", under="ignore"):
        return np.asarray(x, dtype=np.float64).astype(NP_DTYPE[dtype]).astype(np.float64)


def sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))


def as_param(logit, param):
    return logit if param == "logits" else sigmoid(logit)


def run_kl(xp, pp, a, pq, b, dtype: str) -> np.ndarray:
    def f(x, y):
        return kldiv.kl(Bernoulli(**{pp: x}), Bernoulli(**{pq: y}))

    with np.errstate(all="ignore"):
        out = xp.call(f, xp.asarray(a, dtype), xp.asarray(b, dtype))
    assert xp.dtype_name(out) == dtype
    return xp.np(out)


def assert_accurate(got, want, dtype: str, a=None, b=None, pp="", pq="") -> None:
    got = np.asarray(got, dtype=np.float64).ravel()
    want = np.asarray(want, dtype=np.float64).ravel()
    bad = ref.promise_failures(got, want, dtype)
    if not bad.any():
        return
    tol = TOL[dtype]
    err = np.array([ref.rel_err(float(g), float(w)) for g, w in zip(got, want, strict=True)])
    fa = (
        np.broadcast_to(np.asarray(a, dtype=np.float64), got.shape).ravel()
        if a is not None
        else None
    )
    fb = (
        np.broadcast_to(np.asarray(b, dtype=np.float64), got.shape).ravel()
        if b is not None
        else None
    )
    idx = np.flatnonzero(bad)
    idx = idx[np.argsort(-np.nan_to_num(err[idx], nan=np.inf))][:6]
    lines = [f"{bad.sum()} of {bad.size} miss rel. error {tol:g} ({dtype}):"]
    for i in idx:
        shown = "" if fa is None else f"  [p {pp}={fa[i].hex()}, q {pq}={fb[i].hex()}]"
        lines.append(f"  kldiv={got[i]!r} mpmath={want[i]!r} rel_err={err[i]:.3g}{shown}")
    raise AssertionError("\n".join(lines))


# ------------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------------
@functools.cache
def moderate_case(pp, pq, dtype):
    rng = np.random.default_rng(seed("moderate", pp, pq, dtype))
    la = rng.normal(0, 3, 60)
    lb = la + rng.normal(0, 1.5, 60)
    a, b = rounded(as_param(la, pp), dtype), rounded(as_param(lb, pq), dtype)
    return a, b, reference(pp, a, pq, b)


NEAR_EPS = {"float64": (1e-8, 1e-10, 1e-12, 1e-14, 1e-15), "float32": (1e-3, 1e-4, 1e-5, 1e-6)}


@functools.cache
def near_equal_case(pp, pq, dtype):
    """Nearly equal p and q from probabilities near 0, in the middle and near 1."""
    rng = np.random.default_rng(seed("near", pp, pq, dtype))
    logits = (-40.0, -12.0, -2.0, 0.3, 4.0, 12.0, 40.0)
    if dtype == "float32":
        logits = (-12.0, -2.0, 0.3, 4.0, 12.0)
    a, b = [], []
    for eps in NEAR_EPS[dtype]:
        for lg in logits:
            for _ in range(2):
                x = lg + rng.uniform(-1, 1)
                u = rng.choice([-1, 1]) * rng.uniform(0.5, 1)
                if pp == pq == "probs":
                    pa = sigmoid(x)
                    # perturb the smaller of p and 1 - p (the other can't carry eps)
                    pb = pa * (1 + eps * u) if pa < 0.5 else 1 - (1 - pa) * (1 + eps * u)
                    a.append(pa)
                    b.append(pb)
                elif pp == pq:
                    a.append(x)
                    b.append(x + eps * u * max(1.0, abs(x)))
                else:
                    a.append(as_param(x, pp))
                    b.append(as_param(x + eps * u, pq))
    a, b = (
        rounded(np.array(a, dtype=np.float64), dtype),
        rounded(np.array(b, dtype=np.float64), dtype),
    )
    return a, b, reference(pp, a, pq, b)


# ------------------------------------------------------------------------------------------------
# accuracy
# ------------------------------------------------------------------------------------------------
def test_reference_agrees_with_reference_py():
    a, b, want = moderate_case("probs", "logits", "float64")
    for x, y, w in zip(a, b, want, strict=True):
        assert ref.rel_err(w, ref.kl_bernoulli_params("probs", x, "logits", y)) <= 1e-14
    for x, y in EDGE_PROBS:
        if (x, y) != (0.0, 1e-300):  # reference.py rounds 1 - 1e-300 to 1 (50 digits)
            want = ref.kl_bernoulli_params("probs", x, "probs", y)
            assert bern_ref("probs", x, "probs", y) == want, (x, y)
    assert bern_ref("probs", 0.0, "probs", 0.5) == float(mp.log(2))


@pytest.mark.parametrize("xp", EAGER, indirect=True)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("pp", "pq"), PAIRS)
def test_moderate(xp, pp, pq, dtype):
    a, b, want = moderate_case(pp, pq, dtype)
    got = run_kl(xp, pp, a, pq, b, dtype)
    assert_accurate(got, want, dtype, a, b, pp, pq)


@pytest.mark.parametrize("xp", EAGER, indirect=True)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("param", PARAMS)
def test_near_equal_same_parametrization(xp, param, dtype):
    a, b, want = near_equal_case(param, param, dtype)
    assert np.min(want[want > 0]) < (1e-29 if dtype == "float64" else 1e-12)
    got = run_kl(xp, param, a, param, b, dtype)
    assert_accurate(got, want, dtype, a, b, param, param)


@pytest.mark.parametrize("xp", ["numpy"], indirect=True)
@pytest.mark.parametrize(("pp", "pq"), [("probs", "logits"), ("logits", "probs")])
def test_near_equal_mixed_parametrizations_float32(xp, pp, pq):
    """float32 mixes are computed in float64: the full promise holds."""
    a, b, want = near_equal_case(pp, pq, "float32")
    got = run_kl(xp, pp, a, pq, b, "float32")
    assert_accurate(got, want, "float32", a, b, pp, pq)


def _two_classes(param: str, v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if param == "probs":
        return np.stack([1 - v, v], axis=-1)
    return np.stack([np.zeros_like(v), v], axis=-1)


@pytest.mark.parametrize("xp", ["numpy"], indirect=True)
@pytest.mark.parametrize(("pp", "pq"), [("probs", "logits"), ("logits", "probs")])
def test_near_equal_mixed_parametrizations_float64_documented_bound(xp, pp, pq):
    """float64 probabilities against logits: the conversion's rounding bounds the error
    (tests/reference.py: conversion_bound, docs/numerics.md)."""
    a, b, want = near_equal_case(pp, pq, "float64")
    got = np.asarray(run_kl(xp, pp, a, pq, b, "float64"), dtype=np.float64)
    pa = "probs" if pp == "probs" else "logits"
    pb = "probs" if pq == "probs" else "logits"
    bound = ref.conversion_bound(pa, _two_classes(pp, a), pb, _two_classes(pq, b))
    bound = bound + 1e-12 * want + 1e-300
    exact = got == want  # includes +inf == +inf (q = 1 exactly where p < 1)
    err = np.abs(np.where(exact, 0.0, got) - np.where(exact, 0.0, want))
    assert np.all(err <= bound), np.max(err / bound)
    assert np.all(got >= 0)


EDGE_PROBS = [  # (p, q): every KL here is finite except where p > 0 = q or p < 1 = q
    (0.0, 0.0),
    (1.0, 1.0),
    (0.0, 0.3),
    (1.0, 0.3),
    (0.0, 1e-300),
    (1.0, 1 - 2**-53),
    (0.3, 0.0),
    (0.3, 1.0),
    (1.0, 0.0),
    (0.0, 1.0),
    (1e-300, 0.5),
    (1 - 2**-53, 0.5),
]


@pytest.mark.parametrize("xp", EAGER, indirect=True)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_probs_zero_and_one(xp, dtype):
    a = np.array([e[0] for e in EDGE_PROBS])
    b = np.array([e[1] for e in EDGE_PROBS])
    a, b = rounded(a, dtype), rounded(b, dtype)
    want = reference("probs", a, "probs", b)
    got = run_kl(xp, "probs", a, "probs", b, dtype)
    assert got[0] == 0.0 and got[1] == 0.0
    assert np.all(np.isinf(got[6:10])) and np.all(got[6:10] > 0)
    assert_accurate(got, want, dtype, a, b, "probs", "probs")


@pytest.mark.parametrize("xp", EAGER, indirect=True)
@pytest.mark.parametrize(("pp", "pq"), PAIRS)
def test_neg_inf_logits_and_zero_probs_mixed(xp, pp, pq):
    """-inf logits (p = 0) on either side, against probs or logits; exact values."""
    cases = [(0.0, 0.3), (0.0, 0.0), (0.3, 0.0), (0.0, 0.5), (0.7, 0.7)]
    with np.errstate(divide="ignore"):

        def conv(p, param):
            p = np.asarray(p, dtype=np.float64)
            return p if param == "probs" else np.log(p) - np.log1p(-p)

        a = conv([c[0] for c in cases], pp)
        b = conv([c[1] for c in cases], pq)
    want = reference(pp, a, pq, b)
    got = run_kl(xp, pp, a, pq, b, "float64")
    assert np.isinf(got[2])
    assert np.all(np.isfinite(got[[0, 1, 3, 4]]))
    assert got[1] == 0.0
    assert_accurate(got, want, "float64", a, b, pp, pq)


@pytest.mark.parametrize("xp", EAGER, indirect=True)
def test_pos_inf_logits(xp):
    """logits = +inf is p = 1, the counterpart of -inf (not in the issue's wording)."""
    a = np.array([INF, INF, INF, 0.0, -INF])
    b = np.array([INF, 0.0, -INF, INF, INF])
    want = reference("logits", a, "logits", b)
    got = run_kl(xp, "logits", a, "logits", b, "float64")
    assert_accurate(got, want, "float64", a, b, "logits", "logits")


@pytest.mark.parametrize("xp", EAGER, indirect=True)
@pytest.mark.parametrize(
    ("pp", "pq"), [("logits", "logits"), ("logits", "probs"), ("probs", "logits")]
)
def test_large_logits(xp, pp, pq):
    """Logits of magnitude up to 1e4 against moderate and opposite ones."""
    la = np.array([1e4, 1e4, -1e4, -1e4, 1e4, 5e3, 750.0, -750.0, 40.0, 1e4, 0.0, 0.0])
    lb = np.array(
        [-1e4, 0.0, 1e4, 0.0, 1e4 - 3, -5e3, 0.0, 3.0, -750.0, 1e4 * (1 + 1e-12), 1e4, -1e4]
    )
    a, b = as_param(la, pp), as_param(lb, pq)
    want = reference(pp, a, pq, b)
    got = run_kl(xp, pp, a, pq, b, "float64")
    assert_accurate(got, want, "float64", a, b, pp, pq)


# ------------------------------------------------------------------------------------------------
# metamorphic
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("xp", EAGER, indirect=True)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("param", PARAMS)
def test_self_is_exactly_zero(xp, param, dtype):
    if param == "probs":
        a = np.array([0.0, 1.0, 1e-30, 0.3, 0.5, 1 - 1e-7, 2**-60])
    else:
        a = np.array([-INF, -1e4, -40.0, 0.0, 1e-300, 3.0, 700.0, 1e4])
    a = rounded(a, dtype)
    got = run_kl(xp, param, a, param, a, dtype)
    assert np.all(got == 0.0), got


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(PAIRS),
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.0, max_value=1.0),
    st.one_of(st.floats(allow_nan=False), st.just(-INF)),
    st.one_of(st.floats(allow_nan=False), st.just(-INF)),
)
def test_hypothesis_never_negative_or_nan(pair, pa, pb, la, lb):
    pp, pq = pair
    a = pa if pp == "probs" else la
    b = pb if pq == "probs" else lb
    with np.errstate(all="ignore"):
        got = float(kldiv.kl(Bernoulli(**{pp: np.float64(a)}), Bernoulli(**{pq: np.float64(b)})))
    assert got >= 0.0, (got, pp, a, pq, b)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(PARAMS), st.floats(min_value=0.0, max_value=1.0), st.floats(allow_nan=False))
def test_hypothesis_self_is_zero(param, prob, logit):
    v = np.float64(prob if param == "probs" else logit)
    with np.errstate(all="ignore"):
        got = float(kldiv.kl(Bernoulli(**{param: v}), Bernoulli(**{param: v})))
    assert got == 0.0, (param, v, got)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(PARAMS),
    st.floats(min_value=-1e4, max_value=1e4),
    st.floats(min_value=-1e4, max_value=1e4),
    st.booleans(),
)
def test_hypothesis_accuracy_same_parametrization(param, x, y, near):
    if near:
        y = x + y * 1e-10
    a, b = as_param(x, param), as_param(y, param)
    with np.errstate(all="ignore"):
        got = float(
            kldiv.kl(Bernoulli(**{param: np.float64(a)}), Bernoulli(**{param: np.float64(b)}))
        )
    assert_accurate([got], [bern_ref(param, a, param, b)], "float64", a, b, param, param)


# ------------------------------------------------------------------------------------------------
# agreement with torch.distributions and scipy
# ------------------------------------------------------------------------------------------------
def test_agrees_with_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    p, q = sigmoid(rng.normal(0, 2, 100)), sigmoid(rng.normal(0, 2, 100))
    got = np.asarray(kldiv.kl(Bernoulli(probs=p), Bernoulli(probs=q)))
    want = scipy_stats.entropy(np.stack([1 - p, p]), np.stack([1 - q, q]), axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_agrees_with_torch_distributions():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    la, lb = rng.normal(0, 2, 100), rng.normal(0, 2, 100)
    td = torch.distributions
    for pp, pq in PAIRS:
        a, b = torch.as_tensor(as_param(la, pp)), torch.as_tensor(as_param(lb, pq))
        tp = td.Bernoulli(probs=a) if pp == "probs" else td.Bernoulli(logits=a)
        tq = td.Bernoulli(probs=b) if pq == "probs" else td.Bernoulli(logits=b)
        want = td.kl_divergence(tp, tq).numpy()
        got = kldiv.kl(Bernoulli(**{pp: a}), Bernoulli(**{pq: b}))
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, err_msg=f"{pp}/{pq}")
