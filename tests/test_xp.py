"""The numeric primitives of kldiv._xp, against mpmath on the exact inputs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest

import kldiv
from kldiv import Normal, _xp

sys.path.insert(0, str(Path(__file__).parent))
from reference import rel_err

mp.mp.dps = 50
XP = _xp.namespace_for("numpy")

XS = [
    0.0,
    1e-300,
    -1e-300,
    1e-20,
    -1e-20,
    1e-8,
    -1e-8,
    0.01,
    -0.2,
    0.2499,
    -0.2501,
    0.26,
    0.5,
    -0.9,
    0.999,
    1.0,
    1.5,
    3.0,
    -7.0,
    20.0,
    -40.0,
    300.0,
    700.0,
    -1e10,
    -1e300,
]


def phi_ref(x: float) -> mp.mpf:
    """exp(x) - 1 - x, with enough digits that its own cancellation doesn't matter."""
    with mp.workdps(1000):
        return +(mp.e ** mp.mpf(x) - 1 - mp.mpf(x))


@pytest.mark.parametrize("x", XS)
def test_phi_float64(x):
    got = float(_xp.phi(XP, np.asarray(x)))
    assert rel_err(got, float(phi_ref(x))) <= 4e-16 or got == float(phi_ref(x))
    assert got >= 0


@pytest.mark.parametrize("x", [v for v in XS if 1e-15 < abs(v) < 80 or v == 0])
def test_phi_float32(x):
    """float32 (values whose phi is in float32's normal range)."""
    x32 = np.float32(x)
    got = _xp.phi(XP, np.asarray(x32))
    assert got.dtype == np.float32
    assert rel_err(float(got), float(phi_ref(float(x32)))) <= 3e-7


def test_phi_limits():
    with np.errstate(over="ignore"):
        vals = _xp.phi(XP, np.array([np.inf, -np.inf, 800.0]))
    assert np.all(vals == np.inf)


@pytest.mark.parametrize(
    ("logw", "x"), [(-800.0, 790.0), (-1000.0, 1010.0), (-50.0, 3.0), (-700.0, 0.1), (-700.0, -5.0)]
)
def test_weighted_phi_tiny_weight_huge_x(logw, x):
    """w * phi(x) stays finite and accurate when w underflows relative to exp(x)."""
    w = math.exp(logw)  # may be 0.0 in float64; the function uses log_w where it matters
    got = float(_xp.weighted_phi(XP, np.asarray(w), np.asarray(logw), np.asarray(x)))
    want = (
        mp.e ** mp.mpf(logw) * phi_ref(x)
        if w > 0
        else mp.e ** (mp.mpf(logw) + x) * (1 - (1 + mp.mpf(x)) * mp.e ** (-mp.mpf(x)))
    )
    if w == 0 and x < 1:
        assert got == 0.0
    else:
        assert rel_err(got, float(want)) <= 1e-14


PAIRS = [
    (1.0, 1.0),
    (1.0 + 2**-52, 1.0),
    (1.0, 1.0 + 1e-12),
    (3e10, 3e10 * (1 + 1e-9)),
    (1e-30, 1.0),
    (1e30, 1e-30),
    (1e-300, 1e300),
    (1e300, 1e-300),
    (5e-324, 1.0),
    (0.7, 1.9),
    (2.0, 1.0),
    (1.0, 2.0),
    (2.0000001, 1.0),
]


@pytest.mark.parametrize(("x", "y"), PAIRS)
def test_log_ratio(x, y):
    with np.errstate(over="ignore", under="ignore"):
        got = float(_xp.log_ratio(XP, np.asarray(x), np.asarray(y)))
    want = float(mp.log(mp.mpf(x) / mp.mpf(y)))
    assert got == want or rel_err(got, want) <= 4e-16


@pytest.mark.parametrize(
    ("sp", "sq", "loc_gap"),
    [(1.0, 0.0, 0.0), (1.0, 0.0, 1.0), (0.0, 1.0, 0.0), (np.inf, 1.0, 0.0), (1.0, np.inf, 0.0)],
)
def test_degenerate_scales_give_inf_not_nan(sp, sq, loc_gap):
    """Point masses and infinite scales: +inf, with no NumPy warning (warnings are errors)."""
    with np.errstate(divide="ignore"):  # only for building log(0) inputs here
        for param, f in (
            ("std", lambda s: s),
            ("log_std", lambda s: np.log(s)),
            ("var", lambda s: s * s),
            ("log_var", lambda s: 2 * np.log(s)),
        ):
            p = Normal(0.0, **{param: f(np.float64(sp))})
            q = Normal(loc_gap, **{param: f(np.float64(sq))})
            assert kldiv.kl(p, q) == np.inf, param
