"""Independent references in mpmath (50 digits) on the exact floating-point inputs.

These are the textbook formulas, written without any of kldiv's reformulations, evaluated in
high precision so that rounding in the reference is far below the tolerances tested.
"""

from __future__ import annotations

from collections.abc import Sequence

import mpmath as mp
import numpy as np

mp.mp.dps = 50


def _m(x: float) -> mp.mpf:
    return mp.mpf(float(x))  # exact: every float64 is an mpf


def normal_from(loc: float, param: str, value: float) -> tuple[mp.mpf, mp.mpf]:
    """(mean, variance) of a Normal given in any parametrization, exactly."""
    v = _m(value)
    var = {"std": v * v, "var": v, "log_std": mp.e ** (2 * v), "log_var": mp.e**v}[param]
    return _m(loc), var


def kl_normal(mp_, vp, mq, vq) -> mp.mpf:
    """KL(N(mp, vp) || N(mq, vq)) = 1/2 (vp/vq + (mp-mq)^2/vq - 1 + log(vq/vp))."""
    return (vp / vq + (mp_ - mq) ** 2 / vq - 1 + mp.log(vq / vp)) / 2


def kl_normal_params(loc_p, param_p, s_p, loc_q, param_q, s_q) -> float:
    return float(kl_normal(*normal_from(loc_p, param_p, s_p), *normal_from(loc_q, param_q, s_q)))


def _normalize(weights: Sequence[mp.mpf]) -> list[mp.mpf]:
    z = mp.fsum(weights)
    return [w / z for w in weights]


def categorical_probs(param: str, values: Sequence[float]) -> list[mp.mpf]:
    """Normalized probabilities from probs, logits or log_probs (exact inputs, 50 digits)."""
    vals = [_m(v) for v in values]
    if param == "probs":
        return _normalize(vals)
    return _normalize([mp.e**v if v != -mp.inf else mp.mpf(0) for v in vals])


def kl_categorical(p: Sequence[mp.mpf], q: Sequence[mp.mpf]) -> mp.mpf:
    """sum_i p_i log(p_i / q_i) with 0 log 0 = 0 and +inf where p_i > 0 = q_i."""
    total = mp.mpf(0)
    for pi, qi in zip(p, q, strict=False):
        if pi == 0:
            continue
        if qi == 0:
            return mp.inf
        total += pi * mp.log(pi / qi)
    return total


def kl_categorical_params(param_p, p, param_q, q) -> float:
    return float(kl_categorical(categorical_probs(param_p, p), categorical_probs(param_q, q)))


def bernoulli_probs(param: str, value: float) -> list[mp.mpf]:
    v = _m(value)
    p1 = v if param == "probs" else 1 / (1 + mp.e ** (-v))
    return [1 - p1, p1]


def kl_bernoulli_params(param_p, p, param_q, q) -> float:
    return float(kl_categorical(bernoulli_probs(param_p, p), bernoulli_probs(param_q, q)))


def kl_mvn(loc_p, cov_p, loc_q, cov_q) -> float:
    """1/2 (tr(Sq^-1 Sp) + (mq-mp)^T Sq^-1 (mq-mp) - k + log det Sq - log det Sp), in mpmath."""
    k = len(loc_p)
    Sp = mp.matrix([[_m(x) for x in row] for row in np.asarray(cov_p)])
    Sq = mp.matrix([[_m(x) for x in row] for row in np.asarray(cov_q)])
    d = mp.matrix([_m(b) - _m(a) for a, b in zip(loc_p, loc_q, strict=False)])
    Sq_inv = Sq**-1
    tr = sum((Sq_inv * Sp)[i, i] for i in range(k))
    quad = (d.T * Sq_inv * d)[0, 0]
    return float((tr + quad - k + mp.log(mp.det(Sq)) - mp.log(mp.det(Sp))) / 2)


def rel_err(got: float, want: float) -> float:
    """Relative error, with inf == inf and 0 == 0 counted exact."""
    if want == got:
        return 0.0
    if want == 0 or not np.isfinite(want):
        return float("inf")
    return abs(got - want) / abs(want)


def _log_probs_np(param: str, values: np.ndarray, axis: int = -1) -> np.ndarray:
    """float64 log-probabilities (an approximation, for error bounds only)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore"):
        if param == "probs":
            return np.log(v) - np.log(v.sum(axis=axis, keepdims=True))
    m = v.max(axis=axis, keepdims=True)
    return v - (m + np.log(np.exp(v - m).sum(axis=axis, keepdims=True)))


def conversion_bound(param_p: str, p, param_q: str, q, axis: int = -1) -> np.ndarray:
    """The documented error bound for probabilities against log-space parameters (float64).

    Converting probabilities to logarithms (or back) rounds each log-ratio ``x_i`` by up to
    ``delta = 4 eps max(1, |log p_i|, |log q_i|)``; to second order the KL then moves by at most
    ``sum_i p_i |expm1(x_i)| delta + 1/2 sum_i p_i exp(x_i) delta**2`` (docs/numerics.md).
    """
    lp = _log_probs_np(param_p, p, axis)
    lq = _log_probs_np(param_q, q, axis)
    both = np.isfinite(lp) & np.isfinite(lq)
    lp_s, lq_s = np.where(both, lp, 0.0), np.where(both, lq, 0.0)
    big = np.maximum(1.0, np.maximum(np.abs(lp_s), np.abs(lq_s)))
    delta = 4 * np.finfo(np.float64).eps * big.max(axis=axis, keepdims=True)
    pw, x = np.exp(lp_s), lq_s - lp_s
    terms = pw * np.abs(np.expm1(x)) * delta + 0.5 * pw * np.exp(x) * delta**2
    return np.where(both, terms, 0.0).sum(axis=axis)


#: The accuracy promise: relative error by dtype; below a true KL of FLOOR, |error| <= FLOOR.
TOL = {"float64": 1e-12, "float32": 1e-5}
FLOOR = 1e-30


def promise_failures(got, want, dtype: str) -> np.ndarray:
    """Boolean mask of the elements of ``got`` that miss the promise against ``want``.

    For float32, ``want`` is first rounded to float32 (the best a float32 result can be).
    """
    got = np.asarray(got, dtype=np.float64).ravel()
    want = np.asarray(want, dtype=np.float64).ravel()
    if dtype == "float32":
        with np.errstate(over="ignore", under="ignore"):
            want = want.astype(np.float32).astype(np.float64)
    err = np.array([rel_err(float(g), float(w)) for g, w in zip(got, want, strict=True)])
    with np.errstate(invalid="ignore"):
        small = (np.abs(want) < FLOOR) & (np.abs(got - want) <= FLOOR)
    return ~((err <= TOL[dtype]) | small)
