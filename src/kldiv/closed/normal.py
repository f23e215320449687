r"""KL divergence between two univariate normal distributions.

.. math::

    \mathrm{KL}(\mathcal N(\mu_p, \sigma_p^2) \,\|\, \mathcal N(\mu_q, \sigma_q^2))
    = \tfrac12\Big(\varphi(d) + \frac{(\mu_p - \mu_q)^2}{\sigma_q^2}\Big),\qquad
    d = \log\frac{\sigma_p^2}{\sigma_q^2},\quad \varphi(d) = e^d - 1 - d \ge 0.

Both terms are non-negative, so the sum has no cancellation and is never negative. The
log-variance ratio ``d`` is taken from the inputs as directly as their parametrization allows:
a difference of the inputs for ``log_std``/``log_var``, :func:`kldiv._xp.log_ratio` for
``std``/``var`` (so two close scales keep their relative accuracy), and a conversion to
log-variance only when the two sides use different parametrizations. ``Normal.standard()``
takes the other side's parametrization, exactly.
"""

from __future__ import annotations

import math
from typing import Any

from .._registry import register_kl
from .._xp import log_ratio, log_ratio_of_square, weighted_phi, xp_of
from ..dists import Normal

#: How each parametrization turns into log-variance (used only across parametrizations).
_TO_LOG_VAR = {
    "std": lambda xp, s: 2.0 * xp.log(s),
    "var": lambda xp, v: xp.log(v),
    "log_std": lambda xp, ls: 2.0 * ls,
    "log_var": lambda xp, lv: lv,
}

#: The standard normal's scale in each parametrization (exact).
_UNIT = {"std": 1.0, "var": 1.0, "log_std": 0.0, "log_var": 0.0}


def std_of(xp: Any, param: str, scale: Any) -> Any:
    """The standard deviation from a scale given as ``param`` (std, var, log_std or log_var)."""
    if param == "var":
        return xp.sqrt(scale)
    if param == "log_std":
        return xp.exp(scale)
    if param == "log_var":
        return xp.exp(0.5 * scale)
    return scale


def log_var_ratio(xp: Any, p: Normal, q: Normal) -> Any:
    """``log(var_p / var_q)``, as accurate as the two parametrizations allow."""
    kind_p, kind_q = p.param, q.param
    sp, sq = p.scale, q.scale
    if p.standard_ and not q.standard_:
        kind_p, sp = kind_q, xp.full_like(sq, _UNIT[kind_q])
    elif q.standard_ and not p.standard_:
        kind_q, sq = kind_p, xp.full_like(sp, _UNIT[kind_p])
    if (kind_p, kind_q) == ("std", "var"):
        return log_ratio_of_square(xp, sp, sq)
    if (kind_p, kind_q) == ("var", "std"):
        return -log_ratio_of_square(xp, sq, sp)
    if kind_p == kind_q:
        if kind_p == "std":
            return 2.0 * log_ratio(xp, sp, sq)
        if kind_p == "var":
            return log_ratio(xp, sp, sq)
        if kind_p == "log_std":
            return 2.0 * (sp - sq)
        return sp - sq
    return _TO_LOG_VAR[kind_p](xp, sp) - _TO_LOG_VAR[kind_q](xp, sq)


def standardized_gap(xp: Any, x: Any, q: Normal) -> Any:
    """``(x - mu_q) / sigma_q`` without forming ``sigma_q**2`` (no early overflow).

    Where ``x - mu_q`` overflows, the difference is taken after scaling each term; elsewhere the
    difference comes first (exact for nearby values).
    """
    diff = x - q.loc
    scaled = _divide_by_sigma(xp, diff, q)
    overflowed = xp.abs(diff) == math.inf
    return xp.where(overflowed, _divide_by_sigma(xp, x, q) - _divide_by_sigma(xp, q.loc, q), scaled)


def _divide_by_sigma(xp: Any, v: Any, q: Normal) -> Any:
    s = q.scale
    if q.param == "std":
        return v / s
    if q.param == "var":
        return v / xp.sqrt(s)
    # exp(-log sigma) is applied in two halves: it may overflow where the product doesn't.
    # The clamp acts only where sigma_q < 1e-308**2; there the KL is infinite unless the locations
    # are equal (0 * clamped = 0, where 0 * inf would be NaN).
    log_max = math.log(float(xp.finfo(s.dtype).max))
    e = (-0.5 if q.param == "log_std" else -0.25) * s
    half = xp.exp(xp.where(e < log_max, e, log_max))
    return (v * half) * half


@register_kl(Normal, Normal)
def kl_normal_normal(p: Normal, q: Normal) -> Any:
    """KL(p || q) for two ``Normal`` specs, elementwise (see the module docstring)."""
    xp = xp_of(p.loc)
    d = log_var_ratio(xp, p, q)
    z = standardized_gap(xp, p.loc, q)
    # sigma_q = 0 (a point mass) makes the KL infinite; without this, 0/0 in z would give NaN.
    point_mass = q.scale == (-math.inf if q.param in ("log_std", "log_var") else 0.0)
    half_z2 = xp.where(point_mass, math.inf, (0.5 * z) * z)
    return weighted_phi(xp, 0.5, -math.log(2.0), d) + half_z2  # halves: no early overflow
