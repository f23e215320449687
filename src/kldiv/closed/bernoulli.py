r"""KL divergence between two Bernoulli distributions, through the categorical core.

.. math::

    \mathrm{KL}(\mathrm{Ber}(p) \,\|\, \mathrm{Ber}(q))
    = p \log\frac{p}{q} + (1 - p) \log\frac{1 - p}{1 - q}

computed as a two-class :mod:`kldiv.closed.categorical` KL (same guarantees: never negative,
``+inf`` where ``p > 0 = q``, finite gradients at 0 and 1). From ``logits`` the classes are
``[0, logit]``; from ``probs`` they are ``[1 - p, p]`` with the log-ratio of the zero class taken
as ``log1p((p - q) / (1 - p))`` near equality (``p - q`` is exact, so ``1 - p`` is never rounded
before it is compared) and as the log-ratio of ``1 - q`` and ``1 - p`` elsewhere.

The fast evaluation (:func:`bernoulli_terms`) is branch-free: with ``w = (w1, w0)`` and
``v = (v1, v0)`` the two sides' class probabilities and ``y_j = log(v_j / w_j)``,
``KL = w1 phi(y1) + w0 phi(y0)``; from logits on both sides ``y1 = log1p(sigmoid(-b) expm1(b - a))``
and ``y0 = log1p(sigmoid(b) expm1(a - b))``, exact to a few ulp near equality. Its gradient is the
formula's own: ``v1 - w1 = w1 expm1(y1)`` for ``q``'s logit and ``w1 w0 (y0 - y1)`` for ``p``'s.
Entries it leaves non-finite (probabilities 0 or 1, infinite logits) get the exact evaluation.
"""

from __future__ import annotations

import math
from typing import Any

from .._registry import register_kl
from .._xp import (
    broadcast_shapes,
    evaluate,
    library_of,
    log_ratio,
    log_ratio_fast,
    phi_fast,
    safe_log,
    xp_of,
)
from ..dists import Bernoulli
from .categorical import Side, kl_from_sides, log_weight_ratio, side_from_logits


def _side_from_probs(xp: Any, p: Any) -> Side:
    hat = xp.stack([1.0 - p, p], axis=-1)
    log_hat = safe_log(xp, hat)
    zero = xp.zeros_like(hat[..., :1])
    return Side(log_hat, hat, log_hat, zero, zero)


def _side_from_logits(xp: Any, logits: Any) -> Side:
    """Log-weights ``[0, logit]``; a ``+inf`` logit (p = 1) becomes ``[-inf, 0]``."""
    sure = logits == math.inf
    zero = xp.zeros_like(logits)
    first = xp.where(sure, -math.inf, zero)
    return side_from_logits(xp, xp.stack([first, xp.where(sure, zero, logits)], axis=-1), -1)


def kl_bernoulli_bernoulli_exact(p: Bernoulli, q: Bernoulli) -> Any:
    """KL(p || q) for two ``Bernoulli`` specs, elementwise: the exact evaluation (every edge)."""
    xp = xp_of(p.value)
    pv, qv = xp.broadcast_arrays(p.value, q.value)
    if p.param == "probs" and q.param == "probs":
        sp, sq = _side_from_probs(xp, pv), _side_from_probs(xp, qv)
        ok = (pv < 1.0) & (qv < 1.0)
        den = xp.where(ok, 1.0 - pv, 1.0)
        r = xp.where(ok, (pv - qv) / den, 0.0)  # (1 - q) / (1 - p) - 1, exact numerator
        near = xp.abs(r) < 0.5
        far = log_ratio(xp, xp.where(ok & ~near, 1.0 - qv, 1.0), xp.where(ok & ~near, den, 1.0))
        zero_class = xp.where(near, xp.log1p(xp.where(near, r, 0.0)), far)
        ok1 = (pv > 0.0) & (qv > 0.0)
        one_class = log_ratio(xp, xp.where(ok1, qv, 1.0), xp.where(ok1, pv, 1.0))
        hi = xp.stack([zero_class, one_class], axis=-1)
        delta = (hi, xp.zeros_like(hi))
    else:
        sp = _side_from_probs(xp, pv) if p.param == "probs" else _side_from_logits(xp, pv)
        sq = _side_from_probs(xp, qv) if q.param == "probs" else _side_from_logits(xp, qv)
        value = kl_from_sides(xp, sp, sq, log_weight_ratio(xp, sp, sq), -1, exact_delta=True)
        return xp.where(xp.isnan(pv) | xp.isnan(qv), math.nan, value)
    value = kl_from_sides(xp, sp, sq, delta, -1)
    return xp.where(xp.isnan(pv) | xp.isnan(qv), math.nan, value)  # the masks above hide NaN


# ----------------------------------------------------------------------------------------------
# the fast evaluation
# ----------------------------------------------------------------------------------------------


def _classes(xp: Any, x: Any, param: str) -> tuple[Any, Any]:
    """P(X = 1) and P(X = 0), each to full relative accuracy."""
    if param == "probs":
        return x, 1.0 - x
    return _sigmoid(xp, x), _sigmoid(xp, -x)


def _sigmoid(xp: Any, x: Any) -> Any:
    if library_of(x) == "torch":
        return x.sigmoid()
    return 1.0 / (1.0 + xp.exp(-x))


_TERMS: dict = {}  # one function per pair: JAX and torch.compile see the same object each call


def bernoulli_terms(param_p: str, param_q: str) -> Any:
    """The fast evaluation for one pair of parametrizations, as a
    :func:`kldiv._xp.closed_form` function of ``(p.value, q.value)``."""
    key = (param_p, param_q)
    if key in _TERMS:
        return _TERMS[key]

    def fn(xp: Any, a: Any, b: Any, need: tuple, smooth: bool = False) -> tuple:
        w1, w0 = _classes(xp, a, param_p)
        if param_p == param_q == "logits":
            delta = b - a
            e = xp.expm1(delta)
            y1 = xp.log1p(_sigmoid(xp, -b) * e)
            y0 = xp.log1p(_sigmoid(xp, b) * (-e / (1.0 + e)))
        else:
            v1, v0 = _classes(xp, b, param_q)
            y1 = log_ratio_fast(xp, v1, w1)
            if param_p == param_q == "probs":  # 1 - q against 1 - p from the exact p - q
                diff = a - b
                y0 = xp.copysign(xp.log1p(xp.abs(diff) / xp.minimum(w0, v0)), diff)
            else:
                y0 = log_ratio_fast(xp, v0, w0)
        e1, e0 = xp.expm1(y1), xp.expm1(y0)
        value = w1 * phi_fast(xp, y1, e1)
        value += w0 * phi_fast(xp, y0, e0)
        grad_a = grad_b = None
        if need[0]:
            grad_a = y0 - y1
            if param_p == "logits":
                grad_a = grad_a * (w1 * w0)
        if need[1]:
            grad_b = w1 * e1  # = v1 - w1
            if param_q == "probs":
                grad_b = grad_b / (b * (1.0 - b))
        return value, [grad_a, grad_b]

    _TERMS[key] = fn
    return fn


@register_kl(Bernoulli, Bernoulli)
def kl_bernoulli_bernoulli(p: Bernoulli, q: Bernoulli) -> Any:
    """KL(p || q) for two ``Bernoulli`` specs, elementwise."""
    xp = xp_of(p.value)
    a, b = p.value, q.value

    kinds = (p.param, q.param)

    def exact(ra: Any, rb: Any) -> Any:  # of its arguments only: it may run inside a custom rule
        return kl_bernoulli_bernoulli_exact(
            Bernoulli(**{kinds[0]: ra}), Bernoulli(**{kinds[1]: rb})
        )

    shape = broadcast_shapes({"p": tuple(a.shape), "q": tuple(b.shape)})
    return evaluate(xp, bernoulli_terms(p.param, q.param), (a, b), exact, shape)
