"""Accuracy of the Normal closed form against mpmath (50 digits) on the exact inputs.

The promises tested (relative error, per element):

- float64: <= 1e-12; float32: <= 1e-5 (against the mpmath value rounded to float32);
- for KL down to 1e-30 (below that floor, an absolute error of 1e-30 is allowed);
- for scales from 1e-30 to 1e30 (float64) and 1e-15 to 1e15 (float32), large mean gaps, nearly
  equal distributions, every parametrization (std, var, log_std, log_var) mixed across p and q,
  and ``Normal.standard()`` on either side;
- KL(p, p) is exactly 0 and no result is negative or NaN.

Inputs are rounded to the tested dtype *before* the reference is computed, so the reference sees
exactly the numbers kldiv sees. ``tests/`` is put on ``sys.path`` so that ``reference`` imports
under ``--import-mode=importlib``.
"""

from __future__ import annotations

import functools
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kldiv
import reference as ref
from kldiv import Normal

PARAMS = ("std", "var", "log_std", "log_var")
TOL = ref.TOL
FLOOR = ref.FLOOR
NP_DTYPE = {"float64": np.float64, "float32": np.float32}
EAGER = ["numpy", "array_api_strict", "torch"]  # jax (jitted) is covered in test_backends.py


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def from_std(std: np.ndarray, param: str) -> np.ndarray:
    """A scale given as a standard deviation, in ``param`` (computed in float64)."""
    std = np.asarray(std, dtype=np.float64)
    return {"std": std, "var": std * std, "log_std": np.log(std), "log_var": 2.0 * np.log(std)}[
        param
    ]


def rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` and back to float64 (exact): the inputs kldiv sees."""
    return np.asarray(x, dtype=np.float64).astype(NP_DTYPE[dtype]).astype(np.float64)


def reference(lp, pp, sp, lq, pq, sq) -> np.ndarray:
    lp, sp, lq, sq = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (lp, sp, lq, sq))
    )
    out = [
        ref.kl_normal_params(a, pp, b, c, pq, d)
        for a, b, c, d in zip(lp.ravel(), sp.ravel(), lq.ravel(), sq.ravel(), strict=True)
    ]
    return np.asarray(out, dtype=np.float64).reshape(lp.shape)


def run_kl(xp, lp, pp, sp, lq, pq, sq, dtype: str) -> np.ndarray:
    """kldiv on backend ``xp``; checks the array type and dtype of the result."""
    arrays = [xp.asarray(v, dtype) for v in (lp, sp, lq, sq)]

    def f(a, b, c, d):
        return kldiv.kl(Normal(a, **{pp: b}), Normal(c, **{pq: d}))

    with np.errstate(all="ignore"):  # warnings are tested in test_no_spurious_warnings
        out = xp.call(f, *arrays)
    assert xp.dtype_name(out) == dtype
    return xp.np(out)


failures = ref.promise_failures


def assert_accurate(got, want, dtype: str, **inputs) -> None:
    """Every element within the promise; the message lists the worst misses with exact inputs."""
    got = np.asarray(got, dtype=np.float64).ravel()
    want = np.asarray(want, dtype=np.float64).ravel()
    bad = failures(got, want, dtype)
    if not bad.any():
        return
    err = np.array([ref.rel_err(float(g), float(w)) for g, w in zip(got, want, strict=True)])
    flat = (
        {
            k: np.broadcast_to(np.asarray(v, dtype=np.float64), got.shape).ravel()
            for k, v in inputs.items()
        }
        if inputs
        else {}
    )
    idx = np.flatnonzero(bad)
    idx = idx[np.argsort(-np.nan_to_num(err[idx], nan=np.inf))][:6]
    lines = [f"{bad.sum()} of {bad.size} elements miss rel. error {TOL[dtype]:g} ({dtype}):"]
    for i in idx:
        shown = ", ".join(f"{k}={float(v[i]).hex()}" for k, v in flat.items())
        lines.append(f"  kldiv={got[i]!r} mpmath={want[i]!r} rel_err={err[i]:.3g}  [{shown}]")
    raise AssertionError("\n".join(lines))


def seed(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


def worst_rel_err(got, want) -> float:
    errs = [
        ref.rel_err(float(g), float(w)) for g, w in zip(np.ravel(got), np.ravel(want), strict=True)
    ]
    return max(errs) if errs else 0.0


# ------------------------------------------------------------------------------------------------
# case generators (cached: the mpmath reference is computed once, shared by the backends)
# ------------------------------------------------------------------------------------------------
@functools.cache
def moderate_case(pp: str, pq: str, dtype: str):
    rng = np.random.default_rng(seed(pp, pq, dtype, "moderate"))
    n = 40
    std_p = np.exp(rng.uniform(-2.5, 2.5, n))
    std_q = np.exp(rng.uniform(-2.5, 2.5, n))
    lp = rounded(rng.normal(0, 2, n), dtype)
    lq = rounded(rng.normal(0, 2, n), dtype)
    sp = rounded(from_std(std_p, pp), dtype)
    sq = rounded(from_std(std_q, pq), dtype)
    return lp, sp, lq, sq, reference(lp, pp, sp, lq, pq, sq)


def _range(dtype: str) -> tuple[float, float]:
    return (1e-30, 1e30) if dtype == "float64" else (1e-15, 1e15)


@functools.cache
def extreme_scale_case(pp: str, pq: str, dtype: str):
    """Scales log-uniform over the whole promised range, independently and within a factor 2."""
    lo, hi = _range(dtype)
    rng = np.random.default_rng(seed(pp, pq, dtype, "extreme"))
    n = 40
    std_p = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    std_q = np.where(
        np.arange(n) % 2 == 0,
        np.exp(rng.uniform(np.log(lo), np.log(hi), n)),
        std_p * rng.uniform(0.5, 2.0, n),
    )
    std_p = np.clip(std_p, lo, hi)
    std_q = np.clip(std_q, lo, hi)
    lp = rounded(rng.normal(0, 1, n) * std_p, dtype)
    lq = rounded(lp + rng.normal(0, 1, n) * std_q, dtype)
    sp = rounded(from_std(std_p, pp), dtype)
    sq = rounded(from_std(std_q, pq), dtype)
    return lp, sp, lq, sq, reference(lp, pp, sp, lq, pq, sq)


NEAR_EPS = {"float64": (1e-8, 1e-10, 1e-12, 1e-14, 1e-15), "float32": (1e-3, 1e-4, 1e-5, 1e-6)}


@functools.cache
def near_equal_case(pp: str, pq: str, dtype: str):
    """p and q nearly equal: scale perturbed by relative eps, loc by eps * std (or both).

    Three kinds per (eps, scale): scale only, location only, both. Scales cover the whole
    promised range, so KL goes down to about 1e-30 in float64.
    """
    lo, hi = _range(dtype)
    rng = np.random.default_rng(seed(pp, pq, dtype, "near"))
    rows = []
    for eps in NEAR_EPS[dtype]:
        for scale in np.geomspace(lo, hi, 7):
            for kind in ("scale", "loc", "both"):
                std_p = scale * np.exp(rng.uniform(-1, 1))
                u, v = rng.choice([-1.0, 1.0], 2) * rng.uniform(0.5, 1.0, 2)
                std_q = std_p * (1.0 + eps * u) if kind != "loc" else std_p
                loc_p = rng.normal() * std_p
                loc_q = loc_p + eps * v * std_p if kind != "scale" else loc_p
                rows.append((loc_p, std_p, loc_q, std_q))
    loc_p, std_p, loc_q, std_q = (np.array(c) for c in zip(*rows, strict=True))
    lp, lq = rounded(loc_p, dtype), rounded(loc_q, dtype)
    sp = rounded(from_std(std_p, pp), dtype)
    # the perturbation is made on std; for log_std/log_var of large or tiny scales it may round
    # away (then KL comes from the location alone), which the reference sees exactly
    sq = rounded(from_std(std_q, pq), dtype)
    return lp, sp, lq, sq, reference(lp, pp, sp, lq, pq, sq)


# ------------------------------------------------------------------------------------------------
# accuracy against mpmath
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("xp", EAGER, indirect=True)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("pq", PARAMS)
@pytest.mark.parametrize("pp", PARAMS)
def test_moderate_all_parametrizations(xp, pp, pq, dtype):
    lp, sp, lq, sq, want = moderate_case(pp, pq, dtype)
    got = run_kl(xp, lp, pp, sp, lq, pq, sq, dtype)
    assert_accurate(got, want, dtype, loc_p=lp, scale_p=sp, loc_q=lq, scale_q=sq)


@pytest.mark.parametrize("xp", EAGER, indirect=True)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("pq", PARAMS)
@pytest.mark.parametrize("pp", PARAMS)
def test_extreme_scales(xp, pp, pq, dtype):
    lp, sp, lq, sq, want = extreme_scale_case(pp, pq, dtype)
    got = run_kl(xp, lp, pp, sp, lq, pq, sq, dtype)
    assert_accurate(got, want, dtype, loc_p=lp, scale_p=sp, loc_q=lq, scale_q=sq)


@pytest.mark.parametrize("xp", EAGER, indirect=True)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("param", PARAMS)
def test_near_equal_same_parametrization(xp, param, dtype):
    lp, sp, lq, sq, want = near_equal_case(param, param, dtype)
    assert np.nanmin(want[want > 0]) < (1e-29 if dtype == "float64" else 1e-12)  # really tiny KL
    got = run_kl(xp, lp, param, sp, lq, param, sq, dtype)
    assert_accurate(got, want, dtype, loc_p=lp, scale_p=sp, loc_q=lq, scale_q=sq)


LINEAR, LOG = ("std", "var"), ("log_std", "log_var")
EXACT_MIXES = [
    (a, b)
    for a in PARAMS
    for b in PARAMS
    if a != b and ({a, b} <= set(LINEAR) or {a, b} <= set(LOG))
]
LINEAR_LOG_MIXES = [(a, b) for a in PARAMS for b in PARAMS if a != b and (a, b) not in EXACT_MIXES]


@pytest.mark.parametrize("xp", ["numpy"], indirect=True)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("pp", "pq"), EXACT_MIXES)
def test_near_equal_mixed_parametrizations(xp, pp, pq, dtype):
    """std against var and log_std against log_var convert exactly: the full promise holds."""
    lp, sp, lq, sq, want = near_equal_case(pp, pq, dtype)
    got = run_kl(xp, lp, pp, sp, lq, pq, sq, dtype)
    assert_accurate(got, want, dtype, loc_p=lp, scale_p=sp, loc_q=lq, scale_q=sq)


@pytest.mark.parametrize("xp", ["numpy"], indirect=True)
@pytest.mark.parametrize("dtype", ["float32"])
@pytest.mark.parametrize(("pp", "pq"), LINEAR_LOG_MIXES)
def test_near_equal_linear_against_log_float32(xp, pp, pq, dtype):
    """A linear against a log scale in float32 is computed in float64: the full promise holds."""
    lp, sp, lq, sq, want = near_equal_case(pp, pq, dtype)
    got = run_kl(xp, lp, pp, sp, lq, pq, sq, dtype)
    assert_accurate(got, want, dtype, loc_p=lp, scale_p=sp, loc_q=lq, scale_q=sq)


@pytest.mark.parametrize("xp", ["numpy"], indirect=True)
@pytest.mark.parametrize(("pp", "pq"), LINEAR_LOG_MIXES)
def test_near_equal_linear_against_log_float64_documented_bound(xp, pp, pq):
    """The documented limit (docs/numerics.md): a linear scale against a log scale meets in
    log-variance, whose rounding (a few ulp of log sigma^2) bounds the error to first order by
    |dKL| <= 1/2 |expm1(d)| delta + 1/4 exp(|d|) delta**2 (+ 1e-12 KL), with
    delta = 4 eps max(1, |log var_p|, |log var_q|), from phi(d + delta) - phi(d)."""
    lp, sp, lq, sq, want = near_equal_case(pp, pq, "float64")
    got = np.asarray(run_kl(xp, lp, pp, sp, lq, pq, sq, "float64"), dtype=np.float64)
    lv_p, lv_q = _log_var_of(sp, pp), _log_var_of(sq, pq)
    d = lv_p - lv_q
    delta_d = 4 * np.finfo(np.float64).eps * np.maximum(1.0, np.maximum(abs(lv_p), abs(lv_q)))
    bound = (
        0.5 * np.abs(np.expm1(d)) * delta_d
        + 0.25 * np.exp(np.abs(d)) * delta_d**2
        + 1e-12 * want
        + 1e-300
    )
    assert np.all(np.abs(got - want) <= bound), np.max(np.abs(got - want) / bound)
    assert np.all(got >= 0)


def _log_var_of(scale: np.ndarray, param: str) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float64)
    return {
        "std": lambda: 2 * np.log(scale),
        "var": lambda: np.log(scale),
        "log_std": lambda: 2 * scale,
        "log_var": lambda: scale,
    }[param]()


@pytest.mark.parametrize("xp", EAGER, indirect=True)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("pq", PARAMS)
def test_large_mean_gaps(xp, pq, dtype):
    """|mu_p - mu_q| / sigma_q from 1e3 to past overflow; huge means with small gaps."""
    lo, hi = _range(dtype)
    rows = []
    for gap in (1e3, 1e8, 1e15, 1e30):
        for std in (lo, 1e-3, 1.0, 1e3, hi):
            rows.append((gap * std, 0.0, std * 1.5, std))  # loc_p, loc_q, std_p, std_q
            rows.append((-gap * std / 2, gap * std / 2, std, std))
    for big in (1e15, hi):
        rows.append((big, big * (1 + 1e-7), 1.0, 1e-3 * big))  # huge means, relative gap
        rows.append((big, -big, big, big))
    lp, lq, std_p, std_q = (np.array(c) for c in zip(*rows, strict=True))
    keep = np.max(np.abs([lp, lq]), axis=0) < np.finfo(NP_DTYPE[dtype]).max / 4
    lp, lq, std_p, std_q = lp[keep], lq[keep], std_p[keep], std_q[keep]
    lp, lq = rounded(lp, dtype), rounded(lq, dtype)
    sp = rounded(from_std(std_p, "log_var"), dtype)
    sq = rounded(from_std(std_q, pq), dtype)
    want = reference(lp, "log_var", sp, lq, pq, sq)
    got = run_kl(xp, lp, "log_var", sp, lq, pq, sq, dtype)
    assert_accurate(got, want, dtype, loc_p=lp, log_var_p=sp, loc_q=lq, scale_q=sq)


@pytest.mark.parametrize("xp", EAGER, indirect=True)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("side", ["p", "q"])
@pytest.mark.parametrize("param", PARAMS)
def test_standard_normal(xp, param, side, dtype):
    """Normal.standard() on either side, moderate and nearly standard other sides."""
    eps = np.array([0.0, 1e-15, -1e-12, 1e-8, 1e-4, -1e-3, 0.3, 2.0, -0.9])
    if dtype == "float32":
        eps = np.array([0.0, 1e-7, -1e-6, 1e-5, 1e-4, -1e-3, 0.3, 2.0, -0.9])
    loc = rounded(np.concatenate([eps, 0 * eps, eps]), dtype)
    std = np.concatenate([1 + 0 * eps, 1 + eps, 1 + eps])
    scale = rounded(from_std(std, param), dtype)
    a, b = xp.asarray(loc, dtype), xp.asarray(scale, dtype)

    def f(mu, s):
        other = Normal(mu, **{param: s})
        return (
            kldiv.kl(other, Normal.standard())
            if side == "p"
            else kldiv.kl(Normal.standard(), other)
        )

    with np.errstate(all="ignore"):
        out = xp.call(f, a, b)
    assert xp.dtype_name(out) == dtype
    assert tuple(out.shape) == loc.shape
    got = xp.np(out)
    zero, one = np.zeros_like(loc), np.ones_like(loc)
    if side == "p":
        want = reference(loc, param, scale, zero, "std", one)
    else:
        want = reference(zero, "std", one, loc, param, scale)
    assert got[0] == 0.0  # exactly the standard normal on both sides
    assert_accurate(got, want, dtype, loc=loc, scale=scale)


def test_standard_against_standard_is_zero():
    out = kldiv.kl(Normal.standard(), Normal.standard())
    assert float(out) == 0.0


# ------------------------------------------------------------------------------------------------
# metamorphic: KL(p, p) == 0 exactly; never negative
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("xp", EAGER, indirect=True)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("param", PARAMS)
def test_self_is_exactly_zero(xp, param, dtype):
    info = np.finfo(NP_DTYPE[dtype])
    lo, hi = _range(dtype)
    if param in ("std", "var"):
        scale = np.array([info.smallest_normal, lo, 1e-3, 1.0, 1 + 1e-7, 7.5, hi, info.max])
    else:
        scale = np.array([-600.0, np.log(lo), -1.0, 0.0, 1e-300, 0.3, np.log(hi), 600.0])
        if dtype == "float32":
            scale = scale[np.abs(scale) < 100]
    scale = np.concatenate([scale, scale])
    half = scale.size // 2
    loc = np.concatenate(
        [np.zeros(half), np.geomspace(1e-20, 1e20, half) * (-1) ** np.arange(half)]
    )
    loc, scale = rounded(loc, dtype), rounded(scale, dtype)
    got = run_kl(xp, loc, param, scale, loc, param, scale, dtype)
    assert np.all(got == 0.0), got


finite64 = st.floats(allow_nan=False, allow_infinity=False, width=64)
pos64 = st.floats(min_value=5e-324, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def normal_sides(draw):
    out = []
    for _ in range(2):
        param = draw(st.sampled_from(PARAMS))
        scale = draw(pos64 if param in ("std", "var") else finite64)
        out.append((draw(finite64), param, scale))
    return out


@settings(max_examples=100, deadline=None)
@given(normal_sides())
def test_hypothesis_never_negative_or_nan(sides):
    (lp, pp, sp), (lq, pq, sq) = sides
    with np.errstate(all="ignore"):  # overflow warnings are not what this test is about
        got = float(
            kldiv.kl(
                Normal(np.float64(lp), **{pp: np.float64(sp)}),
                Normal(np.float64(lq), **{pq: np.float64(sq)}),
            )
        )
    assert got >= 0.0, (got, sides)  # also fails on NaN


@settings(max_examples=100, deadline=None)
@given(finite64, st.sampled_from(PARAMS), finite64)
def test_hypothesis_self_is_zero(loc, param, scale):
    if param in ("std", "var"):
        scale = abs(scale) or 1.0
    p = Normal(np.float64(loc), **{param: np.float64(scale)})
    with np.errstate(all="ignore"):
        got = float(kldiv.kl(p, p))
    assert got == 0.0, got


@st.composite
def same_param_in_range(draw):
    """Same parametrization on both sides, scales inside [1e-30, 1e30], any KL."""
    param = draw(st.sampled_from(PARAMS))
    log_std = st.floats(min_value=np.log(1e-30), max_value=np.log(1e30))
    ls_p = draw(log_std)
    near = draw(st.booleans())
    if near:
        rel = draw(st.floats(min_value=-1e-6, max_value=1e-6))
        ls_q = ls_p + rel
    else:
        ls_q = draw(log_std)
    std_p, std_q = float(np.exp(ls_p)), float(np.exp(ls_q))
    loc_p = draw(st.floats(min_value=-1e3, max_value=1e3)) * std_p
    loc_q = loc_p + draw(st.floats(min_value=-1e3, max_value=1e3)) * std_q * (1e-6 if near else 1)
    return param, loc_p, float(from_std(std_p, param)), loc_q, float(from_std(std_q, param))


@settings(max_examples=100, deadline=None)
@given(same_param_in_range())
def test_hypothesis_accuracy_same_parametrization(case):
    param, lp, sp, lq, sq = case
    got = float(
        kldiv.kl(
            Normal(np.float64(lp), **{param: np.float64(sp)}),
            Normal(np.float64(lq), **{param: np.float64(sq)}),
        )
    )
    want = ref.kl_normal_params(lp, param, sp, lq, param, sq)
    assert_accurate([got], [want], "float64", loc_p=lp, scale_p=sp, loc_q=lq, scale_q=sq)


# ------------------------------------------------------------------------------------------------
# agreement with torch.distributions, and the motivating failures from the issue
# ------------------------------------------------------------------------------------------------
def test_agrees_with_torch_distributions_float64():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    n = 200
    mp_, mq = rng.normal(0, 1, n), rng.normal(0, 1, n)
    sp, sq = np.exp(rng.uniform(-1, 1, n)), np.exp(rng.uniform(-1, 1, n))
    t = [torch.as_tensor(v, dtype=torch.float64) for v in (mp_, sp, mq, sq)]
    want = torch.distributions.kl_divergence(
        torch.distributions.Normal(t[0], t[1]), torch.distributions.Normal(t[2], t[3])
    ).numpy()
    for pp in PARAMS:
        got = kldiv.kl(
            Normal(t[0], **{pp: torch.as_tensor(from_std(sp, pp))}), Normal(t[2], std=t[3])
        )
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=0)


@pytest.mark.parametrize("xp", ["numpy", "torch"], indirect=True)
@pytest.mark.parametrize("against", ["standard", "std=1"])
@pytest.mark.parametrize("param", PARAMS)
def test_float32_sigma_near_one(xp, param, against):
    """The issue's example: sigma = 1 +- 1e-4 in float32 against N(0, 1).

    torch.distributions is reported 33 % off there and the hand-written VAE formula
    ``-0.5 * (1 + lv - mu**2 - exp(lv))`` 120 % off; kldiv must be within 1e-5. N(0, 1) is
    given as ``Normal.standard()`` or as ``Normal(0, std=1)``.
    """
    start = np.float32(1 + 1e-4)
    grid = [start]
    for _ in range(40):
        grid.append(np.nextafter(grid[-1], np.float32(2)))
    grid += [np.float32(2) - g for g in grid]  # 1 - 1e-4 side too
    std = np.asarray(grid, dtype=np.float64)
    scale = rounded(from_std(std, param), "float32")
    loc = np.zeros_like(scale)
    one = np.ones_like(scale)
    if against == "standard":

        def f(a, b):
            return kldiv.kl(Normal(a, **{param: b}), Normal.standard())

        out = xp.call(f, xp.asarray(loc, "float32"), xp.asarray(scale, "float32"))
        assert xp.dtype_name(out) == "float32"
        got = xp.np(out)
    else:
        got = run_kl(xp, loc, param, scale, loc, "std", one, "float32")
    want = reference(loc, param, scale, loc, "std", one)
    assert_accurate(got, want, "float32", scale=scale)
    if param == "log_var":  # the case is hard: the textbook formula in float32 is far off
        lv = scale.astype(np.float32)
        vae = -0.5 * (1 + lv - np.float32(0) - np.exp(lv))
        assert worst_rel_err(vae, want) > 0.5


@pytest.mark.parametrize("pq", PARAMS)
@pytest.mark.parametrize("pp", PARAMS)
def test_no_spurious_warnings_numpy(pp, pq):
    """Finite results inside the promised range come without NumPy floating-point warnings.

    (Not one of the accuracy promises, but pytest runs with warnings as errors, and a warning
    from a branch that ``where`` then discards tells the user about an overflow that isn't.)
    """
    lp, sp, lq, sq, want = extreme_scale_case(pp, pq, "float64")
    finite = np.isfinite(want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kldiv.kl(Normal(lp[finite], **{pp: sp[finite]}), Normal(lq[finite], **{pq: sq[finite]}))
