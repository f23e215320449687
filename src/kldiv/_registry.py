"""Dispatch of ``kl(p, q)`` on the pair of spec types, with most-specific matching.

A formula is registered for a pair of classes ``(P, Q)``; a call with instances of subclasses
uses the registered pair nearest in both method-resolution orders. An unknown pair raises a
``KLDivError`` that names both types and lists the pairs that exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import KLDivError

KLFunction = Callable[[Any, Any], Any]

_REGISTRY: dict[tuple[type, type], KLFunction] = {}


def register_kl(type_p: type, type_q: type) -> Callable[[KLFunction], KLFunction]:
    """Register ``fn(p, q)`` as the formula for KL(p || q) with ``p: type_p``, ``q: type_q``.

    The function returns the KL of each distribution: elementwise over the broadcast shape of
    the arrays, less the axis a family sums itself (a ``Categorical``'s ``axis``, a
    ``MultivariateNormal``'s last axis). :func:`kldiv.kl` then applies ``event_axis``, ``mask``
    and the reduction. Registering a pair again replaces the earlier formula.

    >>> import kldiv
    >>> class Point(kldiv.Distribution):
    ...     _array_fields = ("x",)
    ...     def __init__(self, x):
    ...         self.x = x
    >>> @kldiv.register_kl(Point, Point)
    ... def _kl_point_point(p, q):
    ...     return 0.0 * p.x
    >>> float(kldiv.kl(Point(1.0), Point(1.0)))
    0.0
    """
    if not (isinstance(type_p, type) and isinstance(type_q, type)):
        raise KLDivError(f"register_kl: expected two classes, got {type_p!r} and {type_q!r}")

    def decorator(fn: KLFunction) -> KLFunction:
        _REGISTRY[type_p, type_q] = fn
        return fn

    return decorator


def registered_pairs() -> list[str]:
    """The registered pairs, as ``"P || Q"`` strings, sorted."""
    return sorted(f"{p.__name__} || {q.__name__}" for p, q in _REGISTRY)


def _name(t: type) -> str:
    """A kldiv class by its name; anything else (e.g. torch.distributions.Normal) in full."""
    if t.__module__.split(".")[0] == "kldiv":
        return t.__name__
    return f"{t.__module__}.{t.__qualname__}"


def lookup(type_p: type, type_q: type) -> KLFunction:
    """The formula for ``(type_p, type_q)``: the registered pair nearest in both MROs."""
    exact = _REGISTRY.get((type_p, type_q))
    if exact is not None:
        return exact
    best = None
    best_key = None
    mro_p, mro_q = type_p.__mro__, type_q.__mro__
    for (rp, rq), fn in _REGISTRY.items():
        if rp in mro_p and rq in mro_q:
            key = (mro_p.index(rp) + mro_q.index(rq), mro_p.index(rp))
            if best_key is None or key < best_key:
                best, best_key = fn, key
    if best is None:
        raise KLDivError(
            f"kl(p, q): no formula for p: {_name(type_p)} and q: {_name(type_q)}; "
            f"the pairs that exist are: {', '.join(registered_pairs())}. "
            "Register one with kldiv.register_kl(P, Q)."
        )
    return best
