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

from .._registry import register_kl
from .._xp import _two_sum, log_ratio, safe_log, weighted_phi, xp_of
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
    """A :class:`Side` from logits or log-probabilities (``-inf`` allowed)."""
    m = xp.max(logits, axis=axis, keepdims=True)
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
    underflows to 0 is still positive (and p > 0 = q still gives +inf)."""
    pos = p.log_hat > -math.inf
    return pos, pos & (q.log_hat > -math.inf)


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


def kl_from_sides(xp: Any, p: Side, q: Side, delta: tuple[Any, Any], axis: int) -> Any:
    """KL(p || q) summed over ``axis`` (see the module docstring for the method).

    ``delta`` is ``log(w_q / w_p)`` as an unevaluated sum ``hi + lo`` (see
    :func:`log_weight_ratio`).
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
    # c = log(Z_q / Z_p) - ref, the exact value of which makes x = log(q_hat / p_hat).
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


@register_kl(Categorical, Categorical)
def kl_categorical_categorical(p: Categorical, q: Categorical) -> Any:
    """KL(p || q) for two ``Categorical`` specs, summed over their class axis."""
    xp = xp_of(p.value)
    ndim = max(len(p.value.shape), len(q.value.shape))
    axis = p._event_axis(ndim) - ndim  # negative: the same axis in both, whatever their ranks
    sp, sq = side_of(xp, p, axis), side_of(xp, q, axis)
    if p.param == "probs" and q.param == "probs":
        delta = log_weight_ratio(xp, sp, sq, p.value, q.value)
    else:
        delta = log_weight_ratio(xp, sp, sq)
    return kl_from_sides(xp, sp, sq, delta, axis)
