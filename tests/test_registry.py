"""Pair dispatch: most-specific match, user registration, and the unknown-pair error."""

from __future__ import annotations

import numpy as np
import pytest

import kldiv
from kldiv import KLDivError, Normal


class TwiceNormal(Normal):
    """A subclass with no formula of its own: it must use Normal's."""


def test_subclass_uses_parent_formula():
    p, q = TwiceNormal(0.0, std=1.0), Normal(1.0, std=2.0)
    assert kldiv.kl(p, q) == kldiv.kl(Normal(0.0, std=1.0), q)


def test_most_specific_pair_wins():
    class Special(Normal):
        pass

    @kldiv.register_kl(Special, Normal)
    def _special(p, q):
        return 0.0 * p.loc + 42.0

    try:
        assert kldiv.kl(Special(0.0, std=1.0), Normal(0.0, std=1.0)) == 42.0
        assert kldiv.kl(Normal(0.0, std=1.0), Special(0.0, std=1.0)) == 0.0
        assert "Special || Normal" in kldiv.registered_pairs()
    finally:
        from kldiv import _registry

        del _registry._REGISTRY[Special, Normal]


def test_user_type_gets_reductions_and_mask():
    class Point(kldiv.Distribution):
        _array_fields = ("x",)

        def __init__(self, x):
            self.x = x

    @kldiv.register_kl(Point, Point)
    def _kl(p, q):
        return (p.x - q.x) ** 2

    try:
        p, q = Point(np.array([1.0, 2.0, 3.0])), Point(np.zeros(3))
        assert kldiv.kl(p, q, reduction="sum") == 14.0
        assert kldiv.kl(p, q, mask=np.array([True, False, True]), reduction="mean") == 5.0
    finally:
        from kldiv import _registry

        del _registry._REGISTRY[Point, Point]


def test_register_needs_classes():
    with pytest.raises(KLDivError, match="expected two classes"):
        kldiv.register_kl(Normal, "Normal")


def test_unknown_pair_names_types_and_lists_pairs():
    with pytest.raises(KLDivError) as err:
        kldiv.kl(Normal(0.0, std=1.0), kldiv.Bernoulli(probs=0.5))
    msg = str(err.value)
    assert "p: Normal" in msg and "q: Bernoulli" in msg
    for pair in ("Normal || Normal", "Categorical || Categorical", "Bernoulli || Bernoulli"):
        assert pair in msg
