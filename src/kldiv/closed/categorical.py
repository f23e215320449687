r"""KL divergence between two categorical distributions (and the core Bernoulli reuses).

.. math::

    \mathrm{KL}(p \,\|\, q) = \sum_i t_i,\qquad
    t_i = \begin{cases} p_i\,\varphi(x_i), & p_i > 0,\\ q_i, & p_i = 0,\end{cases}
    \qquad x_i = \log\frac{q_i}{p_i},\quad \varphi(x) = e^x - 1 - x \ge 0.

Because :math:`\sum_i p_i e^{x_i} = \sum_{p_i > 0} q_i`, this equals
:math:`\sum_i p_i \log(p_i / q_i)` for normalized inputs, but every term is non-negative: no
cancellation, never a negative result, ``0 * log 0 = 0`` in value *and* gradient, and ``+inf``
exactly when some :math:`p_i > 0` has :math:`q_i = 0`.

Near-equal inputs keep their relative accuracy. With unnormalized log-weights ``a`` (for p) and
``b`` (for q), ``x_i = delta_i - c`` where ``delta_i = b_i - a_i`` comes straight from the inputs
(for ``probs``, :func:`kldiv._xp.log_ratio` of the two probabilities) and ``c`` is the difference
of the two log-normalizers. ``delta`` is first shifted by its value at p's most likely class, so
that logits that differ by a constant give exactly 0. Near equality, ``c`` is one ``log1p`` of
the weighted ``expm1`` sum ``sum_i p_i expm1(delta_i)``; far from it, the difference of two
log-sum-exps. The result is stationary in ``c`` (its derivative is 0 at the exact ``c``), so an
error in ``c`` enters only at second order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._registry import register_kl
from .._xp import (
    _device,
    _two_sum,
    broadcast_shapes,
    evaluate,
    finite_partials,
    has_float64,
    is_concrete,
    library_of,
    log_ratio,
    log_ratio_fast,
    phi_fast,
    safe_log,
    weighted_phi,
    xp_of,
)
from ..dists import Categorical

_NEAR = 0.5  # |x| below which the expm1-weighted sum is used instead of a difference


@dataclass(frozen=True)
class Side:
    """One distribution along a class axis, normalized: ``log_hat = log_w - (m + lse)``."""

    log_w: Any  #: unnormalized log-weights (``-inf`` for a zero class)
    hat: Any  #: normalized probabilities
    log_hat: Any  #: their logarithms (``-inf`` for a zero class)
    m: Any  #: a shift of the log-normalizer (the max logit), keepdims
    lse: Any  #: the rest of the log-normalizer, keepdims


def side_from_logits(xp: Any, logits: Any, axis: int) -> Side:
    """A :class:`Side` from logits or log-probabilities (``-inf`` allowed; ``+inf`` logits
    share all the mass, as the limit says; NaN gives NaN)."""
    m = xp.max(logits, axis=axis, keepdims=True)
    sure = m == math.inf
    top = xp.where(logits == math.inf, xp.zeros_like(logits), xp.full_like(logits, -math.inf))
    logits = xp.where(sure, top, logits)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    s = logits - m  # exact near the max, so log_hat keeps full relative accuracy
    lse = xp.log(xp.sum(xp.exp(s), axis=axis, keepdims=True))
    log_hat = s - lse
    return Side(logits, xp.exp(log_hat), log_hat, m, lse)


def side_from_probs(xp: Any, probs: Any, axis: int) -> Side:
    """A :class:`Side` from probabilities (normalized again by their sum)."""
    total = xp.sum(probs, axis=axis, keepdims=True)
    log_w = safe_log(xp, probs)
    lse = xp.log(total)
    return Side(log_w, probs / total, log_w - lse, xp.zeros_like(lse), lse)


def side_of(xp: Any, d: Categorical, axis: int) -> Side:
    """The :class:`Side` of a ``Categorical`` spec."""
    if d.param == "probs":
        return side_from_probs(xp, d.value, axis)
    return side_from_logits(xp, d.value, axis)


def supports(xp: Any, p: Side, q: Side) -> tuple[Any, Any]:
    """Where p > 0, and where both are, read from the log-weights: a probability that
    underflows to 0 is still positive (and p > 0 = q still gives +inf). NaN counts as positive,
    so that it reaches the value (never read as a zero probability)."""
    pos = ~(p.log_hat == -math.inf)
    return pos, pos & ~(q.log_hat == -math.inf)


def log_weight_ratio(
    xp: Any, p: Side, q: Side, p_probs: Any = None, q_probs: Any = None
) -> tuple[Any, Any]:
    """``delta = log(w_q / w_p)`` where both are positive, as ``hi + lo``, from the inputs.

    For log-weights the difference is exact as a sum of two floats (Knuth's TwoSum), so that
    logits differing by a constant plus a tiny perturbation keep the perturbation's digits.
    """
    _, both = supports(xp, p, q)
    if p_probs is not None and q_probs is not None:
        one = xp.ones_like(p_probs)
        hi = log_ratio(xp, xp.where(both, q_probs, one), xp.where(both, p_probs, one))
        return hi, xp.zeros_like(hi)
    zero = xp.zeros_like(p.log_w)
    return _two_sum(xp.where(both, q.log_w, zero), -xp.where(both, p.log_w, zero))


def kl_from_sides(
    xp: Any, p: Side, q: Side, delta: tuple[Any, Any], axis: int, exact_delta: bool = False
) -> Any:
    """KL(p || q) summed over ``axis`` (see the module docstring for the method).

    ``delta`` is ``log(w_q / w_p)`` as an unevaluated sum ``hi + lo`` (see
    :func:`log_weight_ratio`); ``exact_delta``: it is exactly ``q.log_w - p.log_w``.
    """
    pos, both = supports(xp, p, q)
    hi, lo = delta
    hi = xp.where(both, hi, xp.where(pos, xp.full_like(p.hat, -math.inf), 0.0))
    lo = xp.where(both, lo, 0.0)
    # Shift by delta at p's most likely class: constant offsets then cancel exactly.
    is_top = p.hat == xp.max(p.hat, axis=axis, keepdims=True)
    ref = xp.max(xp.where(is_top, hi, -math.inf), axis=axis, keepdims=True)
    ref_ok = xp.isfinite(ref)
    ref = xp.where(ref_ok, ref, xp.zeros_like(ref))
    ref_lo = xp.max(xp.where(is_top & (hi == ref), lo, -math.inf), axis=axis, keepdims=True)
    ref_lo = xp.where(ref_ok & xp.isfinite(ref_lo), ref_lo, xp.zeros_like(ref_lo))
    dprime = (hi - ref) + (lo - ref_lo)
    # c = log(Z_q / Z_p) - ref, the exact value of which makes x = log(q_hat / p_hat). With
    # log-weights, ref + ref_lo is exactly w_q - w_p at p's mode k, so (m_q - m_p) - (ref +
    # ref_lo) is (m_q - w_q[k]) - (m_p - w_p[k]): two differences of nearby numbers, not of
    # the two maxima (which may be far apart, 9999 and 0.3, say, and round in float32).
    if exact_delta:
        at_k = is_top & (hi == ref)
        w_p = xp.max(xp.where(at_k, p.log_w, -math.inf), axis=axis, keepdims=True)
        w_q = xp.max(xp.where(at_k, q.log_w, -math.inf), axis=axis, keepdims=True)
        k_ok = ref_ok & xp.isfinite(w_p) & xp.isfinite(w_q)
        gap = xp.where(k_ok, (q.m - w_q) - (p.m - w_p), ((q.m - p.m) - ref) - ref_lo)
        c_far = gap + (q.lse - p.lse)
    else:
        c_far = (((q.m - p.m) - ref) - ref_lo) + (q.lse - p.lse)
    near = xp.abs(c_far) < _NEAR
    c_safe = xp.where(near, c_far, xp.zeros_like(c_far))
    small = pos & (xp.abs(dprime) < _NEAR)
    d_small = xp.where(small, dprime, 0.0)
    w = xp.exp(q.log_hat + c_safe)  # = p_hat * exp(dprime), bounded where it is used
    terms = xp.where(small, p.hat * xp.expm1(d_small), w - p.hat)
    s = xp.sum(terms, axis=axis, keepdims=True)
    c = xp.where(near, xp.log1p(xp.where(near, s, xp.zeros_like(s))), c_far)
    x = xp.where(both, dprime - c, 0.0)
    one = xp.ones_like(p.hat)
    t_both = weighted_phi(
        xp,
        xp.where(both, p.hat, one),
        xp.where(both, p.log_hat, 0.0),
        x,
        log_wexp=xp.where(both, q.log_hat, 0.0),  # p * exp(x) = q, known better directly
    )
    t = xp.where(both, t_both, xp.where(pos, xp.full_like(t_both, math.inf), q.hat))
    return xp.sum(t, axis=axis)


def kl_rows_exact(xp: Any, a: Any, param_p: str, b: Any, param_q: str, axis: int = -1) -> Any:
    """KL(p || q) summed over ``axis`` of arrays ``a`` (p, given as ``param_p``) and ``b``: the
    exact evaluation, every edge case (zeros, ``-inf`` logits, NaN)."""
    sp = side_from_probs(xp, a, axis) if param_p == "probs" else side_from_logits(xp, a, axis)
    sq = side_from_probs(xp, b, axis) if param_q == "probs" else side_from_logits(xp, b, axis)
    if param_p == "probs" and param_q == "probs":
        return kl_from_sides(xp, sp, sq, log_weight_ratio(xp, sp, sq, a, b), axis)
    return kl_from_sides(xp, sp, sq, log_weight_ratio(xp, sp, sq), axis, exact_delta=True)


# ----------------------------------------------------------------------------------------------
# the fast evaluation
#
# x_i = delta_i - c with delta = log(w_q / w_p) straight from the inputs and c = log(Z_q / Z_p)
# from the two log-normalizers; KL = sum_i p_i (expm1(x_i) - x_i), the gradient q - p = p expm1(x)
# for q's logits and -p (x + KL) for p's. Stationary in c, so c's rounding enters at second order.
# Each row comes with a bound on its rounding error (below); rows the bound can't vouch for
# (nearly equal rows, zeros, infinities, NaN) get the exact evaluation instead.
# ----------------------------------------------------------------------------------------------

_LOG_SPACE = ("logits", "log_probs")
#: elements per chunk in eager evaluation: the temporaries of a chunk stay in cache
CHUNK_ELEMENTS = 1 << 17
#: the relative accuracy promised, by the precision (bits) of the working dtype
_PROMISE = {24: 1e-5, 53: 1e-12}


def _normalize(xp: Any, x: Any, param: str) -> tuple[Any, Any, Any]:
    """(probabilities, log-normalizer, an upper bound of -log p) along the last axis."""
    if param == "probs":
        total = xp.sum(x, axis=-1, keepdims=True)
        log_total = xp.log(total)
        return x / total, log_total, log_total - xp.log(xp.min(x, axis=-1, keepdims=True))
    m = xp.max(x, axis=-1, keepdims=True)
    if library_of(x) == "torch":
        import torch

        p = torch.softmax(x, dim=-1)
        norm = m - xp.log(xp.max(p, axis=-1, keepdims=True))
    else:
        p = xp.exp(x - m)
        total = xp.sum(p, axis=-1, keepdims=True)
        p /= total
        norm = m + xp.log(total)
    return p, norm, norm - xp.min(x, axis=-1, keepdims=True)


def _log_normalizer(xp: Any, x: Any, param: str) -> Any:
    if param == "probs":
        return xp.log(xp.sum(x, axis=-1, keepdims=True))
    m = xp.max(x, axis=-1, keepdims=True)
    if library_of(x) == "torch":
        import torch

        return m - xp.log(xp.max(torch.softmax(x, dim=-1), axis=-1, keepdims=True))
    return m + xp.log(xp.sum(xp.exp(x - m), axis=-1, keepdims=True))


def _rows(
    xp: Any,
    a: Any,
    b: Any,
    kinds: tuple,
    need: tuple,
    smooth: bool,
    promise: float,
    branch_free: bool = False,
) -> tuple:
    """(KL, accepted, d KL / d a, d KL / d b) for rows along the last axis.

    The normalizers' rounding is taken out exactly: with ``s = sum(p expm1(x))`` and
    ``P = sum(p)``, the shift ``sigma = log1p(s / P)`` makes the terms stationary again, and
    ``KL = sum(p phi(x)) - P phi(sigma)`` is their minimum over common shifts of ``x``
    (``t - log1p(t)`` is ``phi(log1p(t))``), so ``c``'s error enters neither at first nor second
    order.

    ``accepted`` is where a bound on the rounding error is below half of ``promise``
    (relative). The bound adds up, per class: ``expm1``'s error, ``2u |q - p|`` (or
    ``phi_fast``'s own); the error of ``delta``, ``u |q - p| r`` with ``r`` what rounded it; the
    error of ``p``, ``u (-log p)`` relative; that of the sums and of the correction. A row with a
    probability below the smallest normal float (underflowed, or imprecise) is never accepted.
    """
    kp, kq = kinds
    p, norm_p, spread = _normalize(xp, a, kp)
    c = _log_normalizer(xp, b, kq) - norm_p
    if kp in _LOG_SPACE and kq in _LOG_SPACE:
        delta = b - a
        r = None  # a difference rounds by at most u/2 of itself
    elif kp == kq == "probs" and not smooth:
        delta = log_ratio_fast(xp, b, a)
        r = 2.0
    else:
        la = xp.log(a) if kp == "probs" else a
        lb = xp.log(b) if kq == "probs" else b
        delta = lb - la
        r = xp.abs(la) + xp.abs(lb) + 2.0
    x = delta - c
    e = xp.expm1(x)
    pe = p * e  # = q - p, up to the normalizers' rounding
    s = xp.sum(pe, axis=-1)
    total_p = xp.sum(p, axis=-1)
    abs_pe = xp.abs(pe)
    s1 = xp.sum(abs_pe, axis=-1)
    branch_free = branch_free and not smooth
    if smooth:  # no in-place updates: autograd may differentiate this again
        s_r = xp.sum(xp.abs(delta * pe), axis=-1)
        terms = (e - x) * p
    else:
        delta *= pe
        s_r = xp.sum(xp.abs(delta) if library_of(delta) != "torch" else delta.abs_(), axis=-1)
        if branch_free:  # phi to a few ulp even where x is small: no cancellation
            terms = phi_fast(xp, x, e)
            terms *= p
        else:
            e -= x
            e *= p
            terms = e
    if r is None:
        s_r = 0.5 * s_r
    else:
        s_r = s_r + xp.sum(r * abs_pe, axis=-1)
    kl0 = xp.sum(terms, axis=-1)
    bits, v = (53 if kl0.dtype == xp.float64 else 24), a.shape[-1]
    phi_error = _PHI_FAST_ERROR[bits] if branch_free else None
    per_row = (s1, s_r, s, total_p, kl0, spread[..., 0], c[..., 0])
    if library_of(kl0) == "torch" and kl0.device.type == "cpu" and is_concrete(kl0):
        # small per-row arithmetic: NumPy's per-call cost is a fraction of torch's
        import torch

        rows = _corrected(np, v, promise, phi_error, *(t.detach().numpy() for t in per_row))
        kl, ok, sigma = (torch.from_numpy(np.asarray(t)) for t in rows)
    else:
        kl, ok, sigma = _corrected(xp, v, promise, phi_error, *per_row)
    grad_a = grad_b = None
    if need[1]:  # q - p at the corrected shift: p (exp(x - sigma) - 1)
        sg = sigma[..., None]
        grad_b = pe * xp.exp(-sg) + p * xp.expm1(-sg)
        if kq == "probs":
            grad_b = grad_b / b
    if need[0]:
        grad_a = -((x - sigma[..., None]) + kl[..., None]) * p
        if kp == "probs":
            grad_a = grad_a / a
    return kl, ok, grad_a, grad_b


def _corrected(
    xp: Any, v: int, promise: float, phi_error: Any, s1, s_r, s, total_p, kl0, spread, c
) -> tuple:
    """Per row: the KL with the normalizers' rounding taken out, whether it is accepted, and
    the shift ``sigma`` (see :func:`_rows`). Accepted: the bound on the rounding error is below
    half of ``promise``; or p = q exactly (delta is 0 wherever p > 0: c is 0, no rounding hid a
    difference, no infinity). ``phi_error``: the terms' relative error where they come from
    ``phi_fast``; else ``expm1(x) - x``'s cancellation, ``2u |q - p|``."""
    u = 2.0 ** -(53 if kl0.dtype == xp.float64 else 24)
    sigma = xp.log1p(s / total_p)
    corr = total_p * phi_fast(xp, sigma)
    kl = xp.maximum(kl0 - corr, 0.0 * kl0)
    terms = 2 * s1 if phi_error is None else (phi_error / u) * kl
    bound = u * (terms + s_r + (4 + v.bit_length() + 0.5 * spread) * kl + 2 * (kl0 + corr))
    bound = bound + _PHI_FAST_ERROR[53 if u < 2.0**-30 else 24] * corr
    normal = spread < -math.log(float(xp.finfo(kl0.dtype).smallest_normal)) - 1.0
    ok = ((bound <= 0.5 * promise * kl) & (kl > 0) & normal) | ((s1 == 0) & (c == 0) & (kl0 == 0))
    return kl, ok, sigma


#: The relative error of the terms where they come from :func:`kldiv._xp.phi_fast` (NumPy and
#: PyTorch; tests/test_fast_paths.py measures it), by precision. Rows that ``expm1(x) - x``
#: can't vouch for (its cancellation where ``|x|`` is small: nearly equal rows) are evaluated
#: again that way, which costs more per element but keeps them clear of the exact evaluation.
_PHI_FAST_ERROR = {24: 1.5e-6, 53: 5e-14}


_TERMS: dict = {}  # one function per pair: JAX and torch.compile see the same object each call


def categorical_terms(
    param_p: str, param_q: str, promise: float | None = None, branch_free: bool = False
) -> Any:
    """The fast evaluation for one pair of parametrizations (class axis last), as a
    :func:`kldiv._xp.closed_form` function returning ``(KL, partials, accepted)``. Rows are
    accepted where the error bound is below half of ``promise`` (default: the promise of the
    arrays' own dtype; a float32 input evaluated in float64 needs only float32's).

    Eagerly (NumPy, PyTorch outside compile), rows go in chunks of about
    :data:`CHUNK_ELEMENTS` elements, so that the temporaries of a chunk stay in cache.
    """
    key = (param_p, param_q, promise, branch_free)
    if key in _TERMS:
        return _TERMS[key]
    kinds = (param_p, param_q)

    def fn(xp: Any, a: Any, b: Any, need: tuple, smooth: bool = False) -> tuple:
        v = a.shape[-1]
        target = promise or _PROMISE[53 if a.dtype == xp.float64 else 24]
        if smooth or not is_concrete(a) or a.shape != b.shape or a.ndim < 2:
            kl, ok, ga, gb = _rows(xp, a, b, kinds, need, smooth, target, branch_free)
            grads = finite_partials(xp, kl, [ga, gb]) if any(need) else [ga, gb]
            return kl, grads, ok
        batch = tuple(a.shape[:-1])
        a2, b2 = xp.reshape(a, (-1, v)), xp.reshape(b, (-1, v))
        n = a2.shape[0]
        step = max(1, CHUNK_ELEMENTS // v)
        if step >= n:
            kl, ok, ga, gb = _rows(xp, a2, b2, kinds, need, smooth, target, branch_free)
        else:
            kl = xp.empty((n,), dtype=a.dtype, device=a2.device)
            ok = xp.empty((n,), dtype=xp.bool, device=a2.device)
            ga = xp.empty_like(a2) if need[0] else None
            gb = xp.empty_like(b2) if need[1] else None
            for i in range(0, n, step):
                j = min(i + step, n)
                k_, o_, ga_, gb_ = _rows(
                    xp, a2[i:j], b2[i:j], kinds, need, smooth, target, branch_free
                )
                kl[i:j], ok[i:j] = k_, o_
                if ga is not None:
                    ga[i:j] = ga_
                if gb is not None:
                    gb[i:j] = gb_
        if any(need):
            ga, gb = finite_partials(xp, kl, [ga, gb])
        shape = (*batch, v)
        grads = [None if g is None else xp.reshape(g, shape) for g in (ga, gb)]
        return xp.reshape(kl, batch), grads, xp.reshape(ok, batch)

    _TERMS[key] = fn
    return fn


@register_kl(Categorical, Categorical)
def kl_categorical_categorical(p: Categorical, q: Categorical) -> Any:
    """KL(p || q) for two ``Categorical`` specs, summed over their class axis."""
    xp = xp_of(p.value)
    ndim = max(len(p.value.shape), len(q.value.shape))
    axis = p._event_axis(ndim) - ndim  # negative: the same axis in both, whatever their ranks
    a, b = p.value, q.value
    if axis != -1:
        a, b = xp.moveaxis(a, axis, -1), xp.moveaxis(b, axis, -1)
    kinds = (p.param, q.param)
    full = broadcast_shapes({"p": tuple(a.shape), "q": tuple(b.shape)})

    def careful(ra: Any, rb: Any) -> Any:
        return kl_rows_exact(xp, ra, kinds[0], rb, kinds[1])

    exact = careful
    if is_concrete(a):
        # Eagerly, the rows the first evaluation can't vouch for are evaluated again with
        # phi_fast; float32 rows still refused, in float64 (float32's promise is then easy to
        # meet); what that still can't vouch for gets the careful evaluation. Traced code uses
        # the careful one directly (it then runs only when needed).
        if a.dtype == xp.float32 and has_float64(xp, _device(a)):
            wide_fn = categorical_terms(*kinds, promise=_PROMISE[24])

            def exact(ra: Any, rb: Any) -> Any:
                wide = (xp.astype(ra, xp.float64), xp.astype(rb, xp.float64))
                shape = broadcast_shapes({"p": tuple(ra.shape), "q": tuple(rb.shape)})
                return xp.astype(
                    evaluate(xp, wide_fn, wide, careful, shape, refit=False), xp.float32
                )

        second_fn, then = categorical_terms(*kinds, branch_free=True), exact

        def exact(ra: Any, rb: Any) -> Any:
            shape = broadcast_shapes({"p": tuple(ra.shape), "q": tuple(rb.shape)})
            return evaluate(xp, second_fn, (ra, rb), then, shape, refit=False)

    return evaluate(xp, categorical_terms(*kinds), (a, b), exact, full, refit=False)
