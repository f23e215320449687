r"""KL divergence between two univariate normal distributions.

.. math::

    \mathrm{KL}(\mathcal N(\mu_p, \sigma_p^2) \,\|\, \mathcal N(\mu_q, \sigma_q^2))
    = \tfrac12\Big(\varphi(d) + z^2\Big),\qquad
    d = \log\frac{\sigma_p^2}{\sigma_q^2},\quad z = \frac{\mu_p - \mu_q}{\sigma_q},\quad
    \varphi(d) = e^d - 1 - d \ge 0.

Both terms are non-negative, so the sum has no cancellation and is never negative. The
log-variance ratio ``d`` is taken from the inputs as directly as their parametrization allows:
a difference of the inputs for ``log_std``/``log_var``, a log-ratio of two close scales taken from
their exact difference for ``std``/``var``, and a conversion to log-variance only when the two
sides use different parametrizations. ``Normal.standard()`` takes the other side's
parametrization, exactly.

Two evaluations of the one formula:

- the fast one (:func:`normal_terms`): branch-free (:func:`kldiv._xp.phi_fast`,
  :func:`kldiv._xp.log_ratio_fast`), with the gradient from the formula's own partial derivatives,
  ``dKL/dd = expm1(d)/2`` and ``dKL/dz = z``;
- the exact one (:func:`kl_normal_normal_exact`), which also handles what the fast one leaves
  non-finite: point masses, gaps whose square overflows before the KL does. Entries the fast one
  leaves finite are final.
"""

from __future__ import annotations

import math
from typing import Any

from .._registry import register_kl
from .._xp import (
    broadcast_shapes,
    evaluate,
    is_concrete,
    library_of,
    log_ratio,
    log_ratio_fast,
    log_ratio_of_square,
    phi_fast,
    weighted_phi,
    xp_of,
)
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


def kl_normal_normal_exact(p: Normal, q: Normal) -> Any:
    """KL(p || q) for two ``Normal`` specs, elementwise: the exact evaluation, every edge case."""
    xp = xp_of(p.loc)
    d = log_var_ratio(xp, p, q)
    z = standardized_gap(xp, p.loc, q)
    # sigma_q = 0 (a point mass) makes the KL infinite; without this, 0/0 in z would give NaN.
    point_mass = _is_point_mass(q)
    half_z2 = xp.where(point_mass, math.inf, (0.5 * z) * z)
    value = weighted_phi(xp, 0.5, -math.log(2.0), d) + half_z2  # halves: no early overflow
    # Two point masses (d would be 0/0): 0 at the same place, +inf apart, NaN for a NaN place.
    gap = p.loc - q.loc
    both = point_mass & _is_point_mass(p)
    apart = xp.where(xp.isnan(gap), gap, xp.full_like(gap, math.inf))
    return xp.where(both, xp.where(gap == 0, xp.zeros_like(gap), apart), value)


def _is_point_mass(d: Normal) -> Any:
    """Where the scale is 0 (or its log -inf)."""
    return d.scale == (-math.inf if d.param in ("log_std", "log_var") else 0.0)


# ----------------------------------------------------------------------------------------------
# the fast evaluation
# ----------------------------------------------------------------------------------------------

#: d(log variance) / d(scale), and d(log sigma) / d(scale), by parametrization (``s`` the scale).
_DLOGVAR = {"std": lambda s: 2.0 / s, "var": lambda s: 1.0 / s, "log_std": 2.0, "log_var": 1.0}
_DLOGSIGMA = {"std": lambda s: 1.0 / s, "var": lambda s: 0.5 / s, "log_std": 1.0, "log_var": 0.5}


def _inv_sigma(xp: Any, param: str, s: Any) -> Any:
    if param == "std":
        return 1.0 / s
    if param == "var":
        return 1.0 / xp.sqrt(s)
    return xp.exp((-1.0 if param == "log_std" else -0.5) * s)


def _gap_over_sigma(xp: Any, gap: Any, param: str, s: Any, inv: Any) -> Any:
    """``gap / sigma``, branch-free: from a log scale in two halves (``exp(-log sigma)`` may
    overflow where the quotient doesn't), and with ``1 / sigma`` held at the largest float, so
    that a point mass q (sigma = 0) with no gap gives 0, not ``0 * inf``: the KL is then
    infinite through ``phi(d)`` (``d = +inf``) unless p is a point mass too."""
    big = float(xp.finfo(gap.dtype).max)
    if param in ("std", "var"):
        return gap * xp.clip(inv, max=big)
    half = xp.clip(xp.exp((-0.5 if param == "log_std" else -0.25) * s), max=big)
    return (gap * half) * half


def _ratio_term(xp: Any, kind_p: str, sp: Any, kind_q: str, sq: Any, smooth: bool) -> Any:
    """``d = log(var_p / var_q)`` (``None`` for a standard side); ``smooth``: differentiable
    twice (the exact evaluation's log-ratio) rather than branch-free."""
    ratio = log_ratio if smooth else log_ratio_fast
    if sq is None:
        return _TO_LOG_VAR[kind_p](xp, sp)
    if sp is None:
        return -_TO_LOG_VAR[kind_q](xp, sq)
    if kind_p == kind_q == "std":
        return 2.0 * ratio(xp, sp, sq)
    if kind_p == kind_q == "var":
        return ratio(xp, sp, sq)
    return _TO_LOG_VAR[kind_p](xp, sp) - _TO_LOG_VAR[kind_q](xp, sq)


def _scaled(value: Any, param: str, table: dict, s: Any) -> Any:
    f = table[param]
    if isinstance(f, float):
        return value if f == 1.0 else value * f
    return value * f(s)


_TERMS: dict = {}  # one function per layout: JAX and torch.compile see the same object each call


def normal_terms(kind_p: str, kind_q: str, p_standard: bool, q_standard: bool) -> Any:
    """The fast evaluation for one pair of parametrizations, as a :func:`closed_form` function.

    Its arguments are the arrays of the sides that are not ``Normal.standard()``, in the order
    ``loc_p, scale_p, loc_q, scale_q``.
    """
    key = (kind_p, kind_q, p_standard, q_standard)
    if key in _TERMS:
        return _TERMS[key]

    def fn(xp: Any, *args: Any, need: tuple, smooth: bool = False) -> tuple:
        it = iter(args)
        mp, sp = (None, None) if p_standard else (next(it), next(it))
        mq, sq = (None, None) if q_standard else (next(it), next(it))
        d = _ratio_term(xp, kind_p, sp, kind_q, sq, smooth)
        if sp is not None and sq is not None and kind_p == kind_q and kind_p in ("std", "var"):
            if not is_concrete(d):  # traced: a ratio beyond the float range, from the logs
                far = _TO_LOG_VAR[kind_p](xp, sp) - _TO_LOG_VAR[kind_q](xp, sq)
                d = xp.where(xp.isinf(d) & xp.isfinite(far), far, d)
        e = xp.expm1(d)
        gap = mp if mq is None else (-mq if mp is None else mp - mq)
        inv = None if sq is None else _inv_sigma(xp, kind_q, sq)
        z = gap if inv is None else _gap_over_sigma(xp, gap, kind_q, sq, inv)
        value = phi_fast(xp, d, e)
        if tuple(value.shape) != tuple(z.shape):  # one side broadcasts: out of place
            value = 0.5 * (value + z * z)
        else:
            if library_of(z) == "torch":
                value.addcmul_(z, z)
            else:
                value += z * z
            value *= 0.5
        partials: list = []
        if not p_standard:
            partials += [
                (z if inv is None else z * inv) if need[0] else None,
                _scaled(0.5 * e, kind_p, _DLOGVAR, sp) if need[1] else None,
            ]
        if not q_standard:
            k = 0 if p_standard else 2
            partials += [
                -(z if inv is None else z * inv) if need[k] else None,
                (
                    -_scaled(0.5 * e, kind_q, _DLOGVAR, sq) - _scaled(z * z, kind_q, _DLOGSIGMA, sq)
                    if need[k + 1]
                    else None
                ),
            ]
        return value, partials

    _TERMS[key] = fn
    return fn


def _fast_args(p: Normal, q: Normal) -> tuple[tuple, str, str]:
    """The arrays the fast evaluation takes, and the two parametrizations (a standard side takes
    the other side's, exactly as the exact evaluation does)."""
    args: tuple = ()
    if not p.standard_:
        args += (p.loc, p.scale)
    if not q.standard_:
        args += (q.loc, q.scale)
    kind_p = q.param if p.standard_ else p.param
    kind_q = p.param if q.standard_ else q.param
    return args, kind_p, kind_q


@register_kl(Normal, Normal)
def kl_normal_normal(p: Normal, q: Normal) -> Any:
    """KL(p || q) for two ``Normal`` specs, elementwise (see the module docstring)."""
    xp = xp_of(p.loc)
    if {p.param, q.param} == {"std", "var"} and not (p.standard_ or q.standard_):
        return kl_normal_normal_exact(p, q)  # s**2 against v needs Dekker's product
    if p.standard_ and q.standard_:
        return kl_normal_normal_exact(p, q)
    args, kind_p, kind_q = _fast_args(p, q)
    fn = normal_terms(kind_p, kind_q, p.standard_, q.standard_)

    def exact(*a: Any) -> Any:
        it = iter(a)
        sub_p = p if p.standard_ else p._replace(loc=next(it), **{p.param: next(it)})
        sub_q = q if q.standard_ else q._replace(loc=next(it), **{q.param: next(it)})
        return kl_normal_normal_exact(sub_p, sub_q)

    shape = broadcast_shapes(
        {f"arg{i}": tuple(getattr(a, "shape", ())) for i, a in enumerate(args)}
    )
    return evaluate(xp, fn, args, exact, shape, traced_exact=False)
