r"""KL divergence between two Bernoulli distributions, through the categorical core.

.. math::

    \mathrm{KL}(\mathrm{Ber}(p) \,\|\, \mathrm{Ber}(q))
    = p \log\frac{p}{q} + (1 - p) \log\frac{1 - p}{1 - q}

computed as a two-class :mod:`kldiv.closed.categorical` KL (same guarantees: never negative,
``+inf`` where ``p > 0 = q``, finite gradients at 0 and 1). From ``logits`` the classes are
``[0, logit]``; from ``probs`` they are ``[1 - p, p]`` with the log-ratio of the zero class taken
as ``log1p((p - q) / (1 - p))`` near equality (``p - q`` is exact, so ``1 - p`` is never rounded
before it is compared) and as the log-ratio of ``1 - q`` and ``1 - p`` elsewhere.
"""

from __future__ import annotations

import math
from typing import Any

from .._registry import register_kl
from .._xp import log_ratio, safe_log, xp_of
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


@register_kl(Bernoulli, Bernoulli)
def kl_bernoulli_bernoulli(p: Bernoulli, q: Bernoulli) -> Any:
    """KL(p || q) for two ``Bernoulli`` specs, elementwise."""
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
        delta = log_weight_ratio(xp, sp, sq)
    return kl_from_sides(xp, sp, sq, delta, -1)
