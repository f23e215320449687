"""kldiv.samples: the k-NN estimator equals its formula, meets its bias targets, and never
returns a silent inf or NaN; the plug-in KL from counts and its bias correction."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.special import digamma

import kldiv
from kldiv import from_counts, from_samples


def brute_knn(x, y, k, metric="euclidean"):
    """The estimator's formula, evaluated with full distance matrices."""
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    n, d = x.shape
    m = len(y)
    diff_xx, diff_xy = x[:, None] - x[None], x[:, None] - y[None]
    if metric == "euclidean":
        dxx, dxy = np.sqrt((diff_xx**2).sum(-1)), np.sqrt((diff_xy**2).sum(-1))
    else:
        dxx, dxy = np.abs(diff_xx).max(-1), np.abs(diff_xy).max(-1)
    np.fill_diagonal(dxx, np.inf)
    rho = np.sort(dxx, axis=1)[:, k - 1]
    nu = np.sort(dxy, axis=1)[:, k - 1]
    return d * np.mean(np.log(nu / rho)) + math.log(m / (n - 1)), dxx, dxy


def brute_adaptive(x, y, k):
    _, dxx, dxy = brute_knn(x, y, k)
    d = x.reshape(len(x), -1).shape[1]
    rho = np.sort(dxx, axis=1)[:, k - 1]
    nu = np.sort(dxy, axis=1)[:, k - 1]
    eps = np.maximum(rho, nu)[:, None]
    l_i, k_i = (dxx <= eps).sum(1), (dxy <= eps).sum(1)
    rho_l = np.where(dxx <= eps, dxx, -np.inf).max(1)
    nu_k = np.where(dxy <= eps, dxy, -np.inf).max(1)
    terms = d * np.log(nu_k / rho_l) + digamma(l_i) - digamma(k_i)
    return terms.mean() + math.log(len(y) / (len(x) - 1))


@pytest.mark.parametrize("d", [1, 2, 10])
@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_knn_equals_its_formula(k, d):
    rng = np.random.default_rng(100 * k + d)
    x = rng.normal(size=(300, d)) if d > 1 else rng.normal(size=300)
    y = rng.normal(0.5, 1.3, size=(241, d)) if d > 1 else rng.normal(0.5, 1.3, size=241)
    expected = brute_knn(x, y, k)[0]
    for algorithm in ("kd_tree", "brute"):
        got = from_samples(x, y, k=k, algorithm=algorithm)
        assert got.value == pytest.approx(expected, rel=1e-10, abs=1e-12)
        assert (got.n, got.m, got.dim, got.dequantized) == (300, 241, d, False)
    cheb = from_samples(x, y, k=k, metric="chebyshev")
    assert cheb.value == pytest.approx(brute_knn(x, y, k, "chebyshev")[0], rel=1e-10, abs=1e-12)
    if k in (1, 5):
        adaptive = from_samples(x, y, k=k, method="adaptive")
        assert adaptive.value == pytest.approx(brute_adaptive(x, y, k), rel=1e-10, abs=1e-12)


def test_inputs_are_not_modified_and_base():
    rng = np.random.default_rng(0)
    x, y = np.round(rng.normal(size=200), 1), np.round(rng.normal(1, 1, size=150), 1)
    x0, y0 = x.copy(), y.copy()
    nats = from_samples(x, y)
    bits = from_samples(x, y, base=2)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    assert bits.value == pytest.approx(nats.value / math.log(2), rel=1e-12)
    assert float(nats) == nats.value


def test_bias_and_sd_targets_1d():
    """N(0,1) vs N(1,1) (KL 0.5) at n = m = 1000 and 10^4; self-divergence in 10-D."""
    rng = np.random.default_rng(2009)
    for n, reps, bias_max, sd_max in ((1000, 60, 0.04, 0.08), (10_000, 12, 0.02, 0.03)):
        vals = [from_samples(rng.normal(0, 1, n), rng.normal(1, 1, n)).value for _ in range(reps)]
        se = np.std(vals, ddof=1) / math.sqrt(reps)
        assert abs(np.mean(vals) - 0.5) <= bias_max + 2 * se, (n, np.mean(vals))
        assert np.std(vals, ddof=1) <= sd_max, (n, np.std(vals, ddof=1))
    vals = [
        from_samples(rng.normal(size=(1000, 10)), rng.normal(size=(1000, 10))).value
        for _ in range(20)
    ]
    assert abs(np.mean(vals)) <= 0.025 + 2 * np.std(vals, ddof=1) / math.sqrt(20)


def test_rounded_data_is_dequantized_to_a_finite_estimate():
    rng = np.random.default_rng(7)
    vals = []
    for _ in range(10):
        x, y = np.round(rng.normal(0, 1, 1000), 1), np.round(rng.normal(1, 1, 1000), 1)
        est = from_samples(x, y)
        assert est.dequantized and math.isfinite(est.value)
        vals.append(est.value)
    assert abs(np.mean(vals) - 0.5) <= 0.1
    with pytest.raises(kldiv.KLDivError, match="repeated points"):
        from_samples(x, y, duplicates="raise")
    # the same seed gives the same noise
    assert from_samples(x, y, seed=3).value == from_samples(x, y, seed=3).value


def test_degenerate_samples_raise_instead_of_inf():
    with pytest.raises(kldiv.KLDivError, match="zero distances"):
        from_samples(np.zeros(50), np.zeros(50))


def test_bootstrap_interval():
    rng = np.random.default_rng(5)
    ests = [
        from_samples(rng.normal(0, 1, 600), rng.normal(1, 1, 500), bootstrap=30, seed=i)
        for i in range(12)
    ]
    values = np.array([e.value for e in ests])
    stderr = np.mean([e.stderr for e in ests])
    assert 0.5 <= stderr / np.std(values, ddof=1) <= 2.0
    lo, hi = ests[0].interval
    assert lo < ests[0].value < hi
    assert hi - lo == pytest.approx(2 * 1.959964 * ests[0].stderr, rel=1e-6)


def test_progress_is_reported():
    seen = []
    rng = np.random.default_rng(0)
    from_samples(
        rng.normal(size=100),
        rng.normal(size=100),
        bootstrap=2,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1][0] == seen[-1][1] and all(a <= b for (a, _), (b, _) in itertools.pairwise(seen))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([[1.0, 2.0]] * 10, [1.0] * 10), {}, "y: expected samples of dimension 2"),
        (
            (np.zeros((2, 2, 2)), np.zeros(5)),
            {},
            r"x: expected samples of shape \(n,\) or \(n, d\)",
        ),
        ((np.array([1.0, np.nan] * 10), np.arange(20.0)), {}, "x: expected finite values"),
        ((np.arange(20.0), np.arange(20.0)), {"k": 0}, "k: expected a positive int, got 0"),
        ((np.arange(5.0), np.arange(20.0)), {"k": 5}, "x: expected at least 6 samples"),
        ((np.arange(20.0), np.arange(20.0)), {"method": "ksg"}, "method: expected one of"),
        ((np.arange(20.0), np.arange(20.0)), {"metric": "l1"}, "metric"),
        ((np.arange(20.0), np.arange(20.0)), {"base": 1}, "base"),
        ((np.arange(20.0), np.arange(20.0)), {"bootstrap": -1}, "bootstrap"),
        ((np.array(["a"] * 20), np.arange(20.0)), {}, "x: expected a real numeric array"),
    ],
)
def test_bad_input(args, kwargs, match):
    with pytest.raises(kldiv.KLDivError, match=match):
        from_samples(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# from_counts
# ----------------------------------------------------------------------------------------------
def test_from_counts_plugin_and_correction():
    assert from_counts([10, 30], [20, 20], pseudocount=0.0) == pytest.approx(
        0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-14
    )
    assert from_counts([1, 0], [0, 1], pseudocount=0.0) == math.inf
    assert math.isfinite(from_counts([1, 0], [0, 1]))
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10) * 2)
    q = rng.dirichlet(np.ones(10) * 2)
    exact = float(kldiv.kl(kldiv.Categorical(probs=p), kldiv.Categorical(probs=q)))
    cp = rng.multinomial(400, p, size=4000)
    cq = rng.multinomial(600, q, size=4000)
    plug = from_counts(cp, cq, pseudocount=0.0)
    finite = np.isfinite(plug)
    corr = from_counts(cp, cq, pseudocount=0.0, correction="miller-madow")
    assert plug.shape == (4000,)
    bias_plug = plug[finite].mean() - exact
    bias_corr = corr[finite].mean() - exact
    assert bias_plug > 0 and abs(bias_corr) < abs(bias_plug) / 3


def test_from_counts_bad_input():
    with pytest.raises(kldiv.KLDivError, match=r"counts_p\[1\]: expected a non-negative"):
        from_counts([1, -1], [1, 1])
    with pytest.raises(kldiv.KLDivError, match="counts_q: expected a histogram"):
        from_counts([1, 1], [0, 0])
    with pytest.raises(kldiv.KLDivError, match="correction"):
        from_counts([1, 1], [1, 1], correction="grassberger")
    with pytest.raises(kldiv.KLDivError, match="counts_q: expected a shape"):
        from_counts([1, 1], [1, 1, 1])


def test_brute_force_search_far_from_the_origin():
    """The matrix products are formed about the data's mean: at an offset of 1e7 they would
    otherwise lose the digits that order the neighbours (regression)."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(400, 20)) + 1e7
    y = rng.normal(size=(350, 20)) + 1e7 + 0.3
    expected = brute_knn(x, y, 5)[0]
    for algorithm in ("brute", "kd_tree"):
        assert from_samples(x, y, algorithm=algorithm).value == pytest.approx(expected, rel=1e-10)


def test_rounded_sample_against_a_continuous_one():
    """Each sample is dequantized at its own resolution: rounded x against continuous y is
    not read as spikes (the joint resolution, y's, gave about 10 nats for a true 0.5)."""
    rng = np.random.default_rng(8)
    vals = []
    for _ in range(5):
        x, y = np.round(rng.normal(0, 1, 1000), 1), rng.normal(1, 1, 1000)
        est = from_samples(x, y)
        assert est.dequantized
        vals.append(est.value)
        vals.append(from_samples(np.round(x), y).value)  # integers: width 1 (KL 0.502)
    assert abs(np.mean(vals) - 0.5) <= 0.1
    with pytest.raises(kldiv.KLDivError, match="zero distances"):  # a point mass: no density
        from_samples(np.zeros(100), rng.normal(size=100))


def test_zero_dimensional_samples_raise():
    with pytest.raises(kldiv.KLDivError, match=r"x: expected samples of shape .* d >= 1"):
        from_samples(np.zeros((20, 0)), np.zeros((20, 0)))


def test_adaptive_brute_force_memory_is_bounded():
    """The adaptive counts compute differences by blocks of (rows, n_ref, d): in 200-D the
    blocks once ignored d (a 580 MB array here, tens of GB in higher dimension)."""
    import tracemalloc

    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(600, 200)), rng.normal(size=(600, 200))
    tracemalloc.start()
    try:
        est = from_samples(x, y, method="adaptive")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert math.isfinite(est.value) and peak < 200e6, peak
