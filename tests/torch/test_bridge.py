"""kldiv.torch.kl_divergence against torch.distributions: torch's own value for every pair
torch registers, kldiv's extra closed forms against a high-sample Monte Carlo estimate, Monte
Carlo fallbacks against quadrature within 3 standard errors, folded distributions, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_integrate = pytest.importorskip("scipy.integrate")
scipy_stats = pytest.importorskip("scipy.stats")

import torch.distributions as td  # noqa: E402
from torch.distributions import kl as torch_kl  # noqa: E402
from torch.distributions.transforms import (  # noqa: E402
    AbsTransform,
    AffineTransform,
    ExpTransform,
    SoftmaxTransform,
)

import kldiv  # noqa: E402
from kldiv.torch import kl_divergence  # noqa: E402
from kldiv.torch.bridge import DIAGONAL_MIN_DIM  # noqa: E402

BATCH = (4,)


# ------------------------------------------------------------------------------------------------
# an instance generator per distribution type
# ------------------------------------------------------------------------------------------------
def _u(g, lo, hi, shape, dtype):
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=dtype)


def _tril(g, k, dtype, diagonal=False):
    a = torch.randn(*BATCH, k, k, generator=g, dtype=dtype)
    low = torch.tril(a, -1) * (0 if diagonal else 0.5)
    return low + torch.diag_embed(_u(g, 0.5, 1.5, (*BATCH, k), dtype))


def make(name, g, dtype=torch.float64):
    """A batch of random instances of the torch.distributions type ``name``."""
    u = lambda lo, hi, shape=BATCH: _u(g, lo, hi, shape, dtype)  # noqa: E731
    n = lambda shape=BATCH: torch.randn(shape, generator=g, dtype=dtype)  # noqa: E731
    k = 3
    return {
        "Bernoulli": lambda: td.Bernoulli(probs=u(0.05, 0.95)),
        "Beta": lambda: td.Beta(u(0.5, 3), u(0.5, 3)),
        "Binomial": lambda: td.Binomial(10, probs=u(0.1, 0.9)),
        "Categorical": lambda: td.Categorical(logits=n((*BATCH, 5))),
        "Cauchy": lambda: td.Cauchy(n(), u(0.5, 2)),
        "ContinuousBernoulli": lambda: td.ContinuousBernoulli(probs=u(0.1, 0.4)),
        "Dirichlet": lambda: td.Dirichlet(u(0.5, 3, (*BATCH, k))),
        "Exponential": lambda: td.Exponential(u(0.5, 2)),
        "ExponentialFamily": lambda: td.Wishart(
            u(4, 6), scale_tril=_tril(g, 2, dtype), validate_args=False
        ),
        "Gamma": lambda: td.Gamma(u(0.5, 3), u(0.5, 2)),
        "Geometric": lambda: td.Geometric(probs=u(0.1, 0.9)),
        "Gumbel": lambda: td.Gumbel(n(), u(0.5, 2)),
        "HalfNormal": lambda: td.HalfNormal(u(0.5, 2)),
        "Independent": lambda: td.Independent(td.Normal(n((*BATCH, k)), u(0.5, 2, (*BATCH, k))), 1),
        "Laplace": lambda: td.Laplace(n(), u(0.5, 2)),
        "LowRankMultivariateNormal": lambda: td.LowRankMultivariateNormal(
            n((*BATCH, k)), 0.5 * n((*BATCH, k, 2)), u(0.5, 1.5, (*BATCH, k))
        ),
        "MultivariateNormal": lambda: td.MultivariateNormal(
            n((*BATCH, k)), scale_tril=_tril(g, k, dtype)
        ),
        "Normal": lambda: td.Normal(n(), u(0.5, 2)),
        "OneHotCategorical": lambda: td.OneHotCategorical(logits=n((*BATCH, 5))),
        "Pareto": lambda: td.Pareto(u(0.5, 2), u(1, 3)),
        "Poisson": lambda: td.Poisson(u(0.5, 5)),
        "TransformedDistribution": lambda: td.TransformedDistribution(
            td.Normal(n(), u(0.5, 2)), [ExpTransform()]
        ),
        "Uniform": lambda: td.Uniform(n() - 2, n().abs() + 1),
    }[name]()


PAIRS = sorted(torch_kl._KL_REGISTRY, key=lambda pq: (pq[0].__name__, pq[1].__name__))


def _ids(pair):
    return f"{pair[0].__name__}-{pair[1].__name__}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_every_registered_pair_gives_torchs_value(pair, dtype):
    g = torch.Generator().manual_seed(hash(_ids(pair)) % 2**31)
    p, q = make(pair[0].__name__, g, dtype), make(pair[1].__name__, g, dtype)
    assert torch_kl._dispatch_kl(type(p), type(q)) is torch_kl._KL_REGISTRY[pair]
    want = td.kl_divergence(p, q)
    got = kl_divergence(p, q, fallback="error")
    assert got.method == "torch"
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0, equal_nan=False)
    assert torch.equal(got.stderr, torch.zeros_like(want))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diagonal_mvn_takes_the_fast_path_with_torchs_value(dtype):
    g = torch.Generator().manual_seed(11)
    k = DIAGONAL_MIN_DIM
    p = td.MultivariateNormal(
        torch.randn(*BATCH, k, dtype=dtype, generator=g), _tril(g, k, dtype, diagonal=True)
    )
    cov = torch.diag_embed(_u(g, 0.5, 2.0, (k,), dtype))  # via a covariance: exact zeros too
    q = td.MultivariateNormal(torch.randn(k, dtype=dtype, generator=g), covariance_matrix=cov)
    for a, b in ((p, q), (q, p), (p, p)):
        got = kl_divergence(a, b)
        assert got.method == "diagonal"
        torch.testing.assert_close(got, td.kl_divergence(a, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_diagonal_mvns_get_torchs_own_value(dtype):
    """Below DIAGONAL_MIN_DIM two MVNs are left to torch: its value, rounding included."""
    g = torch.Generator().manual_seed(13)
    k = DIAGONAL_MIN_DIM - 1
    p = td.MultivariateNormal(
        torch.randn(*BATCH, k, dtype=dtype, generator=g), _tril(g, k, dtype, diagonal=True)
    )
    q = td.MultivariateNormal(
        torch.randn(k, dtype=dtype, generator=g), _tril(g, k, dtype, diagonal=True)
    )
    got = kl_divergence(p, q)
    assert got.method == "torch"
    assert torch.equal(got, td.kl_divergence(p, q))


def test_diagonal_fast_path_gradients_equal_torchs():
    """A learnable full factor that is diagonal right now keeps its off-diagonal gradient."""
    g = torch.Generator().manual_seed(12)
    k = DIAGONAL_MIN_DIM
    dt = torch.float64
    loc_p, loc_q = torch.randn(2, 3, k, generator=g, dtype=dt).unbind(0)
    tril_p = torch.diag_embed(_u(g, 0.5, 2.0, (3, k), dt))
    tril_q = torch.diag_embed(_u(g, 0.5, 2.0, (k,), dt))
    grads = []
    for fn in (td.kl_divergence, kl_divergence):
        leaves = [t.clone().requires_grad_() for t in (loc_p, tril_p, loc_q, tril_q)]
        p = td.MultivariateNormal(leaves[0], scale_tril=leaves[1])
        q = td.MultivariateNormal(leaves[2], scale_tril=leaves[3])
        value = fn(p, q)
        grads.append(torch.autograd.grad(value.sum(), leaves))
    assert value.method == "diagonal"
    assert torch.tril(grads[0][3], -1).abs().max() > 0.1  # torch's off-diagonal gradient
    for want, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# kldiv's extra closed forms against a high-sample Monte Carlo estimate
# ------------------------------------------------------------------------------------------------
def _mc_reference(p, q, n=200_000, seed=0):
    torch.manual_seed(seed)
    x = p.sample((n,))
    r = (p.log_prob(x) - q.log_prob(x)).double()
    return r.mean(0), r.std(0) / math.sqrt(n)


def _independent_and_mvn(g, dtype=torch.float64, kind="full"):
    k = 3
    p = td.Independent(
        td.Normal(torch.randn(2, k, generator=g, dtype=dtype), _u(g, 0.5, 1.5, (2, k), dtype)), 1
    )
    loc = torch.randn(2, k, generator=g, dtype=dtype)
    if kind == "lowrank":
        factor = 0.5 * torch.randn(2, k, 2, generator=g, dtype=dtype)
        return p, td.LowRankMultivariateNormal(loc, factor, _u(g, 0.5, 1.5, (2, k), dtype))
    tril = _tril(g, k, dtype, diagonal=kind == "diagonal")[:2]
    return p, td.MultivariateNormal(loc, scale_tril=tril)


@pytest.mark.parametrize("kind", ["full", "diagonal", "lowrank"])
def test_independent_normal_against_mvn_both_ways(kind):
    with pytest.raises(NotImplementedError):
        td.kl_divergence(*_independent_and_mvn(torch.Generator().manual_seed(0), kind=kind))
    g = torch.Generator().manual_seed(13)
    p, q = _independent_and_mvn(g, kind=kind)
    for a, b in ((p, q), (q, p)):
        got = kl_divergence(a, b, fallback="error")
        assert got.method == ("diagonal" if kind == "diagonal" else "kldiv")
        mean, se = _mc_reference(a, b)
        assert torch.all((got - mean).abs() <= 4 * se), (got, mean, se)
        # the same as torch's MVN formula with p written as a diagonal MVN
        as_mvn = lambda d: (  # noqa: E731
            td.MultivariateNormal(d.base_dist.loc, scale_tril=torch.diag_embed(d.base_dist.scale))
            if isinstance(d, td.Independent)
            else d
        )
        torch.testing.assert_close(got, td.kl_divergence(as_mvn(a), as_mvn(b)), rtol=1e-10, atol=0)


def test_independent_against_mvn_gradients_match_torchs_mvn():
    g = torch.Generator().manual_seed(14)
    p, q = _independent_and_mvn(g)
    loc, scale = (t.clone().requires_grad_() for t in (p.base_dist.loc, p.base_dist.scale))
    tril = q.scale_tril.clone().requires_grad_()
    ours = kl_divergence(
        td.Independent(td.Normal(loc, scale), 1), td.MultivariateNormal(q.loc, scale_tril=tril)
    )
    g1 = torch.autograd.grad(ours.sum(), (loc, scale, tril))
    theirs = td.kl_divergence(
        td.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale)),
        td.MultivariateNormal(q.loc, scale_tril=tril),
    )
    g2 = torch.autograd.grad(theirs.sum(), (loc, scale, tril))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Monte Carlo fallbacks against quadrature: within 3 standard errors
# ------------------------------------------------------------------------------------------------
def _quad_kl(logpdf_p, logpdf_q, lo=-np.inf, hi=np.inf):
    def f(x):
        lp = logpdf_p(x)
        return 0.0 if lp == -np.inf else math.exp(lp) * (lp - logpdf_q(x))

    return scipy_integrate.quad(f, lo, hi, limit=200, epsabs=1e-11, epsrel=1e-10)[0]


def _mixture(weights, locs, scales):
    return td.MixtureSameFamily(
        td.Categorical(probs=torch.tensor(weights, dtype=torch.float64)),
        td.Normal(
            torch.tensor(locs, dtype=torch.float64), torch.tensor(scales, dtype=torch.float64)
        ),
    )


def _mixture_logpdf(weights, locs, scales):
    def logpdf(x):
        terms = [
            math.log(w) + scipy_stats.norm.logpdf(x, m, s)
            for w, m, s in zip(weights, locs, scales, strict=True)
        ]
        return float(np.logaddexp.reduce(terms))

    return logpdf


MIX_A = ([0.3, 0.7], [-1.0, 2.0], [0.5, 1.0])
MIX_B = ([0.5, 0.2, 0.3], [0.0, 1.5, -2.0], [1.0, 0.7, 1.5])
T_ARGS = (5.0, 0.3, 1.2)  # df, loc, scale

MC_CASES = {
    "mixture-normal": (
        lambda: (_mixture(*MIX_A), td.Normal(torch.tensor(0.5, dtype=torch.float64), 2.0)),
        (_mixture_logpdf(*MIX_A), lambda x: scipy_stats.norm.logpdf(x, 0.5, 2.0)),
    ),
    "normal-mixture": (
        lambda: (td.Normal(torch.tensor(0.5, dtype=torch.float64), 2.0), _mixture(*MIX_B)),
        (lambda x: scipy_stats.norm.logpdf(x, 0.5, 2.0), _mixture_logpdf(*MIX_B)),
    ),
    "mixture-mixture": (
        lambda: (_mixture(*MIX_A), _mixture(*MIX_B)),
        (_mixture_logpdf(*MIX_A), _mixture_logpdf(*MIX_B)),
    ),
    "studentt-normal": (
        lambda: (
            td.StudentT(*(torch.tensor(v, dtype=torch.float64) for v in T_ARGS)),
            td.Normal(torch.tensor(0.0, dtype=torch.float64), 1.5),
        ),
        (
            lambda x: scipy_stats.t.logpdf(x, T_ARGS[0], T_ARGS[1], T_ARGS[2]),
            lambda x: scipy_stats.norm.logpdf(x, 0.0, 1.5),
        ),
    ),
    "normal-studentt": (
        lambda: (
            td.Normal(torch.tensor(0.0, dtype=torch.float64), 1.5),
            td.StudentT(*(torch.tensor(v, dtype=torch.float64) for v in T_ARGS)),
        ),
        (
            lambda x: scipy_stats.norm.logpdf(x, 0.0, 1.5),
            lambda x: scipy_stats.t.logpdf(x, T_ARGS[0], T_ARGS[1], T_ARGS[2]),
        ),
    ),
    "studentt-studentt": (
        lambda: (
            td.StudentT(*(torch.tensor(v, dtype=torch.float64) for v in T_ARGS)),
            td.StudentT(torch.tensor(3.0, dtype=torch.float64), -0.5, 0.8),
        ),
        (
            lambda x: scipy_stats.t.logpdf(x, T_ARGS[0], T_ARGS[1], T_ARGS[2]),
            lambda x: scipy_stats.t.logpdf(x, 3.0, -0.5, 0.8),
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(MC_CASES))
def test_monte_carlo_covers_the_exact_value(case):
    make_pair, (lp, lq) = MC_CASES[case]
    p, q = make_pair()
    with pytest.raises(NotImplementedError):
        td.kl_divergence(p, q)
    exact = _quad_kl(lp, lq)
    got = kl_divergence(p, q, num_samples=50_000, generator=torch.Generator().manual_seed(3))
    assert got.method == "mc" and got.shape == () and got.dtype == torch.float64
    assert 0 < float(got.stderr) < 0.1 * exact
    assert abs(float(got) - exact) <= 3 * float(got.stderr), (float(got), exact, float(got.stderr))


def test_monte_carlo_batches_and_broadcasts():
    g = torch.Generator().manual_seed(15)
    df = torch.tensor([3.0, 5.0, 10.0], dtype=torch.float64)
    p = td.StudentT(df, torch.zeros(3, dtype=torch.float64), 1.0)
    q = td.Normal(torch.tensor(0.0, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64))
    got = kl_divergence(p, q, num_samples=20_000, generator=g)
    assert got.shape == got.stderr.shape == (2, 3)
    for j, d in enumerate(df.tolist()):
        exact = _quad_kl(lambda x, d=d: scipy_stats.t.logpdf(x, d), scipy_stats.norm.logpdf)
        assert torch.all((got[:, j] - exact).abs() <= 3 * got.stderr[:, j])


def test_monte_carlo_gradients_without_rsample():
    """A mixture can't be reparameterized: the score-function term makes the gradient right."""
    logits = torch.tensor([0.2, -0.4], dtype=torch.float64, requires_grad=True)
    locs, scales = torch.tensor([-1.0, 1.5], dtype=torch.float64), torch.tensor([0.6, 1.0])
    q = td.Normal(torch.tensor(0.0, dtype=torch.float64), 1.5)
    p = td.MixtureSameFamily(td.Categorical(logits=logits), td.Normal(locs, scales.double()))
    got = kl_divergence(p, q, num_samples=200_000, generator=torch.Generator().manual_seed(4))
    (grad,) = torch.autograd.grad(got, logits)

    def exact(lg):
        w = np.exp(lg) / np.exp(lg).sum()
        return _quad_kl(
            _mixture_logpdf(w, [-1.0, 1.5], [0.6, 1.0]),
            lambda x: scipy_stats.norm.logpdf(x, 0, 1.5),
        )

    h = 1e-5
    base = logits.detach().numpy()
    fd = [(exact(base + h * e) - exact(base - h * e)) / (2 * h) for e in np.eye(2)]
    np.testing.assert_allclose(grad.numpy(), fd, atol=0.02)
    assert abs(fd[0]) > 0.05  # a gradient that a missing score term would get wrong


# ------------------------------------------------------------------------------------------------
# folded (non-injective) distributions
# ------------------------------------------------------------------------------------------------
def _folded(loc, scale):
    return td.TransformedDistribution(
        td.Normal(torch.tensor(loc, dtype=torch.float64), scale), [AbsTransform()]
    )


def test_identical_folded_normals_have_kl_zero():
    p, q = _folded(1.0, 1.0), _folded(-1.0, 1.0)  # |N(1, 1)| and |N(-1, 1)| are the same law
    assert float(td.kl_divergence(p, q)) == pytest.approx(2.0)  # torch: the KL of the bases
    got = kl_divergence(p, q, generator=torch.Generator().manual_seed(0))
    assert got.method == "mc"
    assert abs(float(got)) <= 1e-12
    with pytest.raises(kldiv.KLDivError, match="TransformedDistribution"):
        kl_divergence(p, q, fallback="error")


def test_folded_normal_against_quadrature():
    p = _folded(1.0, 1.0)
    q = td.TransformedDistribution(_folded(0.5, 2.0), [AffineTransform(0.0, 1.5), ExpTransform()])
    q_inner = td.TransformedDistribution(_folded(0.3, 0.8), [AffineTransform(0.0, 2.0)])
    got = kl_divergence(p, q_inner, num_samples=50_000, generator=torch.Generator().manual_seed(5))

    def fold(m, s):
        def logpdf(x):
            return float(
                np.logaddexp(scipy_stats.norm.logpdf(x, m, s), scipy_stats.norm.logpdf(-x, m, s))
            )

        return logpdf

    lq = lambda y: fold(0.3, 0.8)(y / 2.0) - math.log(2.0)  # noqa: E731
    exact = _quad_kl(fold(1.0, 1.0), lq, 0.0, np.inf)
    assert abs(float(got) - exact) <= 3 * float(got.stderr), (float(got), exact)
    # a chain (abs, affine, exp) on both sides: KL is invariant under the common bijection
    p_chain = td.TransformedDistribution(p, [AffineTransform(0.0, 1.5), ExpTransform()])
    got = kl_divergence(p_chain, q, num_samples=50_000, generator=torch.Generator().manual_seed(6))
    exact = _quad_kl(fold(1.0, 1.0), fold(0.5, 2.0), 0.0, np.inf)
    assert abs(float(got) - exact) <= 3 * float(got.stderr), (float(got), exact)


def test_independent_of_folded_is_not_reduced_to_its_base():
    p = td.Independent(
        td.TransformedDistribution(td.Normal(torch.ones(2), 1.0), [AbsTransform()]), 1
    )
    q = td.Independent(
        td.TransformedDistribution(td.Normal(-torch.ones(2), 1.0), [AbsTransform()]), 1
    )
    assert float(td.kl_divergence(p, q)) == pytest.approx(4.0)
    assert abs(float(kl_divergence(p, q))) < 1e-5


# ------------------------------------------------------------------------------------------------
# errors, generator, no mutation
# ------------------------------------------------------------------------------------------------
def test_errors_name_the_argument_and_both_types():
    p, q = td.StudentT(torch.tensor(4.0)), td.Normal(0.0, 1.0)
    with pytest.raises(kldiv.KLDivError) as err:
        kl_divergence(p, q, fallback="error")
    assert "torch.distributions.studentT.StudentT" in str(err.value)
    assert "torch.distributions.normal.Normal" in str(err.value)
    with pytest.raises(kldiv.KLDivError, match="fallback: expected one of 'mc', 'error'"):
        kl_divergence(p, q, fallback="sample")
    for bad in (1, True, 10.0):
        with pytest.raises(kldiv.KLDivError, match="num_samples: expected an int >= 2"):
            kl_divergence(p, q, num_samples=bad)
    with pytest.raises(kldiv.KLDivError, match=r"generator: expected a torch\.Generator"):
        kl_divergence(p, q, generator=0)
    with pytest.raises(kldiv.KLDivError, match=r"p: expected a torch\.distributions\.Distribution"):
        kl_divergence(kldiv.Normal(0.0, std=1.0), q)
    with pytest.raises(kldiv.KLDivError, match=r"q: expected the event shape of p \(\(3,\)"):
        kl_divergence(td.Independent(td.Normal(torch.zeros(3), 1.0), 1), q)
    with pytest.raises(kldiv.KLDivError, match="q: expected a batch shape that broadcasts"):
        kl_divergence(td.Normal(torch.zeros(3), 1.0), td.Normal(torch.zeros(2), 1.0))
    soft = td.TransformedDistribution(td.Normal(torch.zeros(3), 1.0), [SoftmaxTransform()])
    with pytest.raises(kldiv.KLDivError, match="AbsTransform"):
        kl_divergence(soft, soft)


def test_generator_reproduces_and_leaves_the_global_state_alone():
    p, q = td.StudentT(torch.tensor(4.0)), td.Normal(0.0, 1.0)
    state = torch.get_rng_state()
    a = kl_divergence(p, q, generator=torch.Generator().manual_seed(9))
    b = kl_divergence(p, q, generator=torch.Generator().manual_seed(9))
    c = kl_divergence(p, q, generator=torch.Generator().manual_seed(10))
    assert torch.equal(torch.get_rng_state(), state)
    assert float(a) == float(b) != float(c)


def test_support_mismatch_gives_inf_with_an_inf_stderr():
    p, q = td.StudentT(torch.tensor(4.0)), td.HalfNormal(torch.tensor(1.0))
    got = kl_divergence(p, q, num_samples=100)
    assert float(got) == math.inf and float(got.stderr) == math.inf


def test_support_mismatch_without_rsample_gives_inf_not_nan():
    """The score-function term of a p without rsample must not turn inf into NaN (inf * 0)."""
    mix = td.MixtureSameFamily(
        td.Categorical(logits=torch.zeros(2, requires_grad=True)),
        td.Normal(torch.tensor([-1.0, 1.0]), torch.ones(2)),
    )
    cat = td.Categorical(torch.ones(5))
    for p, q in ((mix, td.HalfNormal(torch.tensor(1.0))), (cat, td.Binomial(2, probs=0.5))):
        got = kl_divergence(p, q, num_samples=100, generator=torch.Generator().manual_seed(0))
        assert float(got.detach()) == math.inf and float(got.stderr) == math.inf


def test_discrete_p_against_a_density_is_inf():
    """p with atoms is not absolutely continuous w.r.t. a density: KL(p || q) = inf, whereas
    log pmf - log pdf at p's atoms would give a finite number."""
    bern = td.Bernoulli(probs=torch.tensor([0.3, 0.5]))
    for q in (td.Normal(0.0, 1.0), td.ContinuousBernoulli(probs=torch.tensor(0.5))):
        got = kl_divergence(bern, q, num_samples=100)
        assert (
            got.shape == (2,) and torch.all(got == math.inf) and torch.all(got.stderr == math.inf)
        )
    # two discrete laws stay finite
    got = kl_divergence(td.Categorical(torch.ones(3)), td.Poisson(torch.tensor(1.0)))
    assert got.method == "mc" and math.isfinite(float(got))
    mapped = td.TransformedDistribution(td.Poisson(torch.tensor(2.0)), [AffineTransform(0.0, 1.0)])
    got = kl_divergence(td.Poisson(torch.tensor(1.5)), mapped)  # discrete, whatever its support
    assert got.method == "mc" and math.isfinite(float(got))


def test_q_evaluated_outside_its_support_without_validation_errors():
    """Samples of p outside q's support give inf, not torch's validation error, also where q
    validates through an inner distribution (a mixture's components, Beta's Dirichlet) or where
    torch reports a larger support than the true one (an affine map of a Beta: Real)."""
    # validation explicitly on: torch.compile (run earlier in the session) turns off the default
    on = {"validate_args": True}
    beta = td.Beta(torch.tensor(2.0), torch.tensor(2.0), **on)
    qs = [
        beta,
        td.TransformedDistribution(beta, [AffineTransform(0.0, 2.0)], **on),
        td.MixtureSameFamily(
            td.Categorical(torch.ones(2), **on),
            td.Gamma(torch.tensor([1.0, 2.0]), torch.ones(2), **on),
            **on,
        ),
    ]
    for q in qs:
        assert q._validate_args
        got = kl_divergence(td.StudentT(torch.tensor(3.0)), q, num_samples=100)
        assert float(got) == math.inf and float(got.stderr) == math.inf
    assert qs[2]._component_distribution._validate_args and beta._dirichlet._validate_args
    # inside the support the affine-mapped Beta is evaluated as usual: KL(q || q) = 0
    assert float(kl_divergence(qs[1], qs[1], num_samples=100)) == 0.0


def test_inputs_are_not_mutated():
    loc = torch.randn(3)
    p = td.Independent(td.Normal(loc, 1.0), 1)
    q = td.MultivariateNormal(torch.zeros(3), covariance_matrix=torch.eye(3) * 2)
    before = (loc.clone(), q.scale_tril.clone(), p._validate_args, q._validate_args)
    kl_divergence(p, q)
    h = td.HalfNormal(torch.tensor(1.0), validate_args=True)
    s = td.StudentT(torch.tensor(3.0), validate_args=True)
    kl_divergence(s, h, num_samples=100)  # evaluates h outside its support on a copy
    assert torch.equal(loc, before[0]) and torch.equal(q.scale_tril, before[1])
    assert (p._validate_args, q._validate_args) == before[2:]
    assert h._validate_args and s._validate_args
