"""kldiv.mc: Monte Carlo KL estimates are unbiased, their standard errors cover, gradients flow.

Every statistical test has a fixed seed; tolerances are 4 standard errors (a failure rate of
about 6e-5 per check if the code is right), so a failure means a bias, not bad luck.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import kldiv
from kldiv import Bernoulli, Categorical, MultivariateNormal, Normal, mc


def close(est, exact, z=4.0):
    v, se = np.asarray(est.value, dtype=float), np.asarray(est.stderr, dtype=float)
    assert np.all(np.abs(v - exact) <= z * se), (v, exact, se)


# ----------------------------------------------------------------------------------------------
# Unbiasedness against exact answers
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["k1", "k3", "entropy", "auto"])
def test_normal_pair_is_unbiased(estimator):
    p = Normal(np.array([0.3, -1.0, 0.0]), std=np.array([0.8, 1.0, 0.5]))
    q = Normal(np.array([-0.2, 0.0, 0.1]), var=np.array([1.21, 1.5, 0.3]))  # var_q < 2 var_p
    est = mc.kl(p, q, num_samples=100_000, estimator=estimator, seed=1)
    assert est.num_samples == 100_000 and est.value.shape == (3,)
    close(est, kldiv.kl(p, q))


def test_k2_converges_to_its_own_expectation_not_the_kl():
    mu = 0.7  # p = N(0, 1), q = N(mu, 1): E[k2] = (mu^2 + mu^4 / 4) / 2, KL = mu^2 / 2
    est = mc.kl(
        Normal(0.0, std=1.0), Normal(mu, std=1.0), num_samples=200_000, estimator="k2", seed=2
    )
    close(est, 0.5 * (mu**2 + mu**4 / 4))
    assert float(est.value) - mu**2 / 2 > 10 * float(est.stderr)  # the bias is real


@pytest.mark.parametrize("estimator", ["k1", "k3", "entropy"])
def test_mvn_pairs_are_unbiased(estimator):
    cov = np.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.5]])
    prec = np.linalg.inv(np.array([[1.2, 0.2, 0.1], [0.2, 1.0, 0.0], [0.1, 0.0, 0.9]]))
    p = MultivariateNormal(np.array([0.1, 0.0, -0.2]), covariance=cov)
    q = MultivariateNormal(np.array([0.0, 0.3, 0.0]), precision=prec)
    close(mc.kl(p, q, num_samples=100_000, estimator=estimator, seed=3), kldiv.kl(p, q))
    pd = Normal(np.array([0.1, 0.0, -0.2]), std=np.array([0.9, 1.0, 0.8]))
    exact = kldiv.kl(pd, q, event_axis=-1)
    close(mc.kl(pd, q, num_samples=100_000, estimator=estimator, seed=4, event_axis=-1), exact)
    qd = Normal(np.zeros(3), std=1.2)
    exact = kldiv.kl(p, qd, event_axis=-1)
    close(mc.kl(p, qd, num_samples=100_000, estimator=estimator, seed=5, event_axis=-1), exact)


@pytest.mark.parametrize("estimator", ["k1", "k3", "entropy"])
def test_discrete_pairs_are_unbiased(estimator):
    rng = np.random.default_rng(0)
    p = Categorical(logits=rng.normal(size=(2, 6)))
    q = Categorical(probs=rng.dirichlet(np.ones(6), size=2))
    close(mc.kl(p, q, num_samples=100_000, estimator=estimator, seed=6), kldiv.kl(p, q))
    pc = Categorical(logits=rng.normal(size=(5, 2)), axis=0)  # classes on axis 0
    qc = Categorical(logits=rng.normal(size=(5, 2)), axis=0)
    close(mc.kl(pc, qc, num_samples=100_000, estimator=estimator, seed=7), kldiv.kl(pc, qc))
    pb, qb = Bernoulli(logits=np.array([-1.0, 2.0])), Bernoulli(probs=np.array([0.4, 0.6]))
    close(mc.kl(pb, qb, num_samples=100_000, estimator=estimator, seed=8), kldiv.kl(pb, qb))


def test_zero_probability_classes_are_never_drawn():
    p = Categorical(logits=np.array([0.0, -np.inf, 1.0]))
    q = Categorical(probs=np.array([0.2, 0.0, 0.8]))  # q = 0 where p = 0: finite KL
    est = mc.kl(p, q, num_samples=20_000, estimator="k3", seed=0)
    assert np.isfinite(float(est.value))
    close(est, kldiv.kl(p, q))


# ----------------------------------------------------------------------------------------------
# Flows: an affine flow with a non-zero log-determinant, whose prior is Gaussian again
# ----------------------------------------------------------------------------------------------
A, B = np.array([1.7, 0.6, 1.0, 2.5]), np.array([0.3, -0.2, 0.0, 1.0])  # z_p = A z + B


def _flow_setup(T):
    rng = np.random.default_rng(11)
    m_q = rng.normal(size=(1, 4, 1))
    logs_q = rng.normal(scale=0.3, size=(1, 4, 1)) - 0.5
    m_p = rng.normal(size=(1, 4, 1))
    logs_p = rng.normal(scale=0.3, size=(1, 4, 1))
    a, b = A[None, :, None], B[None, :, None]
    # p(z) = N(a z + b; m_p, s_p) |a|  is  N((m_p - b) / a, (s_p / a)^2)
    exact = float(
        kldiv.kl(
            Normal(m_q, log_std=logs_q),
            Normal((m_p - b) / a, log_std=logs_p - np.log(a)),
            event_axis=1,
            reduction="sum",
        )
    )
    eps = rng.standard_normal((1, 4, T))
    z = m_q + np.exp(logs_q) * eps
    return m_q, logs_q, m_p, logs_p, a, b, z, exact


def test_vits_kl_with_affine_flow_is_unbiased_and_needs_the_log_det():
    _, logs_q, m_p, logs_p, a, b, z, exact = _flow_setup(100_000)
    z_p = a * z + b
    log_det = np.broadcast_to(np.log(a), z.shape)  # elementwise
    per_frame = mc.vits_kl(z_p, logs_q, m_p, logs_p, log_det=log_det, event_axis=1)
    assert per_frame.shape == (1, 100_000)
    est = mc.Estimate(per_frame.mean(), per_frame.std(ddof=1) / math.sqrt(per_frame.size), 1)
    close(est, exact)
    mean = mc.vits_kl(z_p, logs_q, m_p, logs_p, log_det=log_det, event_axis=1, reduction="mean")
    assert float(mean) == pytest.approx(float(per_frame.mean()), rel=1e-12)
    # the same log-determinant given per frame, (B, 1, T) or (B, T)
    per_dist = np.broadcast_to(np.log(a).sum(axis=1, keepdims=True), (1, 1, z.shape[2]))
    for ld in (per_dist, per_dist[:, 0]):
        other = mc.vits_kl(z_p, logs_q, m_p, logs_p, log_det=ld, event_axis=1)
        np.testing.assert_allclose(other, per_frame, rtol=1e-12, atol=1e-12)
    # without it (a volume-preserving flow assumed) the loss is too large by sum(log a)
    wrong = mc.vits_kl(z_p, logs_q, m_p, logs_p, event_axis=1, reduction="mean")
    close(mc.Estimate(wrong, est.stderr, 1), exact + np.log(A).sum())


def test_mc_kl_with_a_flow_log_density():
    m_q, logs_q, m_p, logs_p, a, b, _, exact = _flow_setup(1)
    base = Normal(m_p, log_std=logs_p)

    def log_q_elementwise(z):  # log N(a z + b; m_p, s_p) + log a, per element
        zp = a * z + b
        return (
            -0.5 * ((zp - m_p) / np.exp(logs_p)) ** 2
            - logs_p
            - 0.5 * math.log(2 * math.pi)
            + np.log(a)
        )

    def log_q_per_event(z):
        return np.sum(log_q_elementwise(z), axis=2)

    assert base is not None
    p = Normal(m_q, log_std=logs_q)
    for log_q in (log_q_elementwise, log_q_per_event):
        for estimator in ("entropy", "k1"):
            est = mc.kl(p, log_q, num_samples=50_000, seed=9, event_axis=1, estimator=estimator)
            assert est.value.shape == (1, 1)
            close(est, exact)


# ----------------------------------------------------------------------------------------------
# VITS's own formula, on every backend
# ----------------------------------------------------------------------------------------------
def test_vits_kl_equals_the_vits_loss(xp):
    rng = np.random.default_rng(3)
    shape = (2, 3, 7)
    z_p, logs_q, m_p, logs_p = (rng.normal(size=shape) for _ in range(4))
    z_mask = (rng.random((2, 1, 7)) < 0.7).astype(float)
    z_mask[0, 0, 0] = 1.0
    kl = logs_p - logs_q - 0.5 + 0.5 * ((z_p - m_p) ** 2) * np.exp(-2.0 * logs_p)
    expected = np.sum(kl * z_mask) / np.sum(z_mask)  # vits/losses.py kl_loss

    def f(a, b, c, d, m):
        return mc.vits_kl(a, b, c, d, mask=m, event_axis=1, reduction="mean")

    args = [xp.asarray(v) for v in (z_p, logs_q, m_p, logs_p, z_mask)]
    out = xp.call(f, *args)
    assert xp.dtype_name(out) == "float64" and tuple(out.shape) == ()
    assert xp.np(out) == pytest.approx(expected, rel=1e-12)


def test_vits_kl_errors():
    x = np.zeros((2, 3, 4))
    with pytest.raises(kldiv.KLDivError, match="event_axis: expected the latent axis"):
        mc.vits_kl(x, x, x, x)
    with pytest.raises(kldiv.KLDivError, match="log_det"):
        mc.vits_kl(x, x, x, x, event_axis=1, log_det=np.zeros((2, 2, 4)))
    with pytest.raises(kldiv.KLDivError, match="mask"):
        mc.vits_kl(x, x, x, x, event_axis=1, mask=np.ones((2, 3, 5)))
    with pytest.raises(kldiv.KLDivError, match="z_p"):
        mc.vits_kl(np.zeros((2, 3, 4), dtype=int), x, x, x, event_axis=1)


# ----------------------------------------------------------------------------------------------
# Standard errors cover; the variance note of the docs holds
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["k1", "k3", "entropy"])
def test_stderr_covers_the_truth_about_95_percent(estimator):
    reps = 1000  # independent repetitions = a batch of identical distributions
    p = Normal(np.zeros(reps), std=1.0)
    # k3's r = q/p must have light tails for its stderr to mean anything: with var_q = 1.44 its
    # variance is finite but its coverage falls to 83 % (and with var_q >= 2 var_p, infinite)
    q = Normal(0.5, std=1.0) if estimator == "k3" else Normal(0.5, std=1.2)
    est = mc.kl(p, q, num_samples=400, estimator=estimator, seed=12)
    exact = float(kldiv.kl(Normal(0.0, std=1.0), q))
    coverage = np.mean(np.abs(est.value - exact) <= 1.96 * est.stderr)
    assert 0.92 <= coverage <= 0.975, coverage


def test_variances_of_the_docs():
    n = 400_000  # p = N(0, 1), q = N(1, 1): Var(k1) = 1, Var(k3) = e - 2
    p, q = Normal(0.0, std=1.0), Normal(1.0, std=1.0)
    var = {
        e: float(mc.kl(p, q, num_samples=n, estimator=e, seed=13).stderr) ** 2 * n
        for e in ("k1", "k3")
    }
    assert var["k1"] == pytest.approx(1.0, rel=0.02)
    assert var["k3"] == pytest.approx(math.e - 2.0, rel=0.05)


def test_one_sample_has_infinite_stderr_not_nan():
    est = mc.kl(Normal(0.0, std=1.0), Normal(1.0, std=1.0), num_samples=1, seed=0)
    assert np.isfinite(est.value) and est.stderr == np.inf


# ----------------------------------------------------------------------------------------------
# Reductions
# ----------------------------------------------------------------------------------------------
def test_estimate_reduce_and_masks():
    rng = np.random.default_rng(1)
    loc = rng.normal(size=(2, 3, 5))
    p, q = Normal(loc, std=0.7), Normal.standard()
    mask = np.array([[[1, 1, 0, 1, 0]], [[1, 0, 0, 0, 1]]], dtype=bool)  # (B, 1, T)
    per = mc.kl(p, q, num_samples=50, seed=3, event_axis=1)
    red = mc.kl(p, q, num_samples=50, seed=3, event_axis=1, mask=mask, reduction="mean")
    m = mask[:, 0]
    assert float(red.value) == pytest.approx(per.value[m].mean(), rel=1e-12)
    assert float(red.stderr) == pytest.approx(np.sqrt(np.sum(per.stderr[m] ** 2)) / m.sum())
    summed = per.reduce(mask=m, reduction="sum")
    assert float(summed.stderr) == pytest.approx(np.sqrt(np.sum(per.stderr[m] ** 2)))
    none = per.reduce(mask=m, reduction="none")
    assert np.all(none.stderr[~m] == 0) and np.all(none.value[~m] == 0)
    lo, hi = red.interval(0.95)
    assert float(hi - lo) == pytest.approx(2 * 1.959964 * float(red.stderr), rel=1e-6)
    empty = per.reduce(mask=np.zeros_like(m), reduction="mean")
    assert float(empty.value) == 0.0 and float(empty.stderr) == 0.0


def test_masks_are_weights(xp):
    """A non-bool mask weighs each distribution: sum(m v), sum(m v) / sum(m), sum(m v) / B, and
    standard errors sqrt(sum(m^2 se^2)) / N; the (B, 1, T) form of VITS takes weights too."""
    rng = np.random.default_rng(2)
    loc = rng.normal(size=(2, 3, 5))
    w = rng.random((2, 5)) * (rng.random((2, 5)) < 0.8)
    p, q = Normal(xp.asarray(loc), std=0.7), Normal.standard()
    per = mc.kl(p, q, num_samples=40, seed=3, event_axis=1)
    v, se = xp.np(per.value), xp.np(per.stderr)
    cases = {
        "sum": (np.sum(w * v), np.sum(w**2 * se**2) ** 0.5),
        "mean": (np.sum(w * v) / w.sum(), np.sum(w**2 * se**2) ** 0.5 / w.sum()),
        "batchmean": (np.sum(w * v) / 2, np.sum(w**2 * se**2) ** 0.5 / 2),
    }
    for reduction, (value, stderr) in cases.items():
        for mask in (xp.asarray(w), xp.asarray(w[:, None, :])):  # (B, T) and (B, 1, T)
            est = mc.kl(p, q, num_samples=40, seed=3, event_axis=1, mask=mask, reduction=reduction)
            assert xp.np(est.value) == pytest.approx(value, rel=1e-12)
            assert xp.np(est.stderr) == pytest.approx(stderr, rel=1e-12)
            red = per.reduce(mask=mask if mask.ndim == 2 else xp.asarray(w), reduction=reduction)
            assert xp.np(red.value) == pytest.approx(value, rel=1e-12)
            assert xp.np(red.stderr) == pytest.approx(stderr, rel=1e-12)
    none = per.reduce(mask=xp.asarray(w), reduction="none")
    np.testing.assert_allclose(xp.np(none.value), w * v, rtol=1e-12)
    np.testing.assert_allclose(xp.np(none.stderr), w * se, rtol=1e-12)
    # VITS with z_mask weights of shape (B, 1, T)
    z_p, logs_q, m_p, logs_p = (rng.normal(size=(2, 3, 5)) for _ in range(4))
    z = xp.asarray(w[:, None, :])
    args = [xp.asarray(a) for a in (z_p, logs_q, m_p, logs_p)]
    kl = np.sum(logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * np.exp(-2 * logs_p), axis=1)
    got = mc.vits_kl(*args, mask=z, event_axis=1, reduction="mean")
    assert xp.np(got) == pytest.approx(np.sum(w * kl) / w.sum(), rel=1e-12)
    zero = mc.vits_kl(*args, mask=xp.asarray(np.zeros((2, 1, 5))), event_axis=1, reduction="mean")
    assert xp.np(zero) == 0.0


def test_validate_rejects_negative_or_non_finite_weights():
    p, q = Normal(np.zeros((2, 3)), std=1.0), Normal.standard()
    bad = np.array([[1.0, 0.5, -0.1], [1.0, 1.0, 1.0]])
    with pytest.raises(kldiv.KLDivError, match=r"mask\[0, 2\]: expected a non-negative"):
        mc.kl(p, q, num_samples=4, seed=0, mask=bad, reduction="mean", validate=True)
    est = mc.kl(p, q, num_samples=4, seed=0)
    with pytest.raises(kldiv.KLDivError, match=r"mask\[1, 0\]: expected a non-negative"):
        est.reduce(mask=np.array([[1.0, 1.0, 1.0], [np.nan, 1.0, 1.0]]), validate=True)
    x = np.zeros((2, 3, 4))
    with pytest.raises(kldiv.KLDivError, match=r"mask\[0, 0, 1\]: expected a non-negative"):
        mc.vits_kl(
            x, x, x, x, event_axis=1, mask=np.array([[[1.0, np.inf, 0, 0]]] * 2), validate=True
        )
    with pytest.raises(kldiv.KLDivError, match="validate: expected True or False"):
        mc.kl(p, q, num_samples=4, seed=0, validate=1)
    # without validate, values are not read (jit-safe): a negative weight just weighs
    assert np.isfinite(float(est.reduce(mask=bad, reduction="sum").value))


# ----------------------------------------------------------------------------------------------
# Backends, seeds, gradients
# ----------------------------------------------------------------------------------------------
def test_backends_and_seeds(xp):
    loc = xp.asarray([0.0, 1.0, -0.5])
    ls = xp.asarray([0.0, -0.3, 0.2])

    def f(loc, ls):
        return mc.kl(Normal(loc, log_std=ls), Normal.standard(), num_samples=20_000, seed=5)

    est = xp.call(f, loc, ls)
    assert xp.is_own(est.value) and xp.is_own(est.stderr)
    assert tuple(est.value.shape) == (3,) and xp.dtype_name(est.value) == "float64"
    again = xp.call(f, loc, ls)
    np.testing.assert_array_equal(xp.np(est.value), xp.np(again.value))
    exact = kldiv.kl(
        Normal(np.array([0.0, 1.0, -0.5]), log_std=np.array([0.0, -0.3, 0.2])), Normal.standard()
    )
    assert np.all(np.abs(xp.np(est.value) - exact) <= 4 * xp.np(est.stderr))
    f32 = mc.kl(
        Normal(xp.asarray([0.0], "float32"), std=xp.asarray([1.0], "float32")),
        Normal(1.0, std=1.0),
        num_samples=100,
        seed=0,
    )
    assert xp.dtype_name(f32.value) == "float32"


def test_generators_and_keys():
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    p_t = Normal(torch.zeros(2, dtype=torch.float64), std=torch.ones(2, dtype=torch.float64))
    a = mc.kl(p_t, Normal.standard(), num_samples=10, generator=torch.Generator().manual_seed(1))
    b = mc.kl(p_t, Normal.standard(), num_samples=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.value, b.value)
    p_j = Normal(jax.numpy.zeros(2), std=1.0)
    c = mc.kl(p_j, Normal(1.0, std=1.0), num_samples=10, key=jax.random.key(0))
    assert c.value.shape == (2,)
    with pytest.raises(kldiv.KLDivError, match=r"key: expected a jax\.random key"):
        mc.kl(p_j, Normal.standard(), num_samples=10)
    p_n = Normal(np.zeros(2), std=1.0)
    g = np.random.default_rng(4)
    assert mc.kl(p_n, Normal.standard(), num_samples=10, generator=g).value.shape == (2,)
    with pytest.raises(kldiv.KLDivError, match=r"generator: expected a numpy\.random\.Generator"):
        mc.kl(p_n, Normal.standard(), num_samples=10, generator=torch.Generator())


def test_reparameterized_gradients_match_the_exact_gradient_torch():
    torch = pytest.importorskip("torch")
    loc = torch.tensor([0.3, -0.4], dtype=torch.float64, requires_grad=True)
    ls = torch.tensor([-0.2, 0.1], dtype=torch.float64, requires_grad=True)
    q = Normal(torch.tensor(1.0, dtype=torch.float64), std=torch.tensor(1.5, dtype=torch.float64))
    exact = torch.autograd.grad(kldiv.kl(Normal(loc, log_std=ls), q).sum(), (loc, ls))
    for estimator in ("entropy", "k1"):  # k3: infinite variance here (var_q >= 2 var_p)
        est = mc.kl(Normal(loc, log_std=ls), q, num_samples=200_000, seed=1, estimator=estimator)
        got = torch.autograd.grad(est.value.sum(), (loc, ls))
        for g, e in zip(got, exact, strict=True):
            torch.testing.assert_close(g, e, atol=0.02, rtol=0)
    # full covariance: gradients with respect to loc and scale_tril
    tril = torch.tensor([[1.0, 0.0], [0.4, 0.8]], dtype=torch.float64, requires_grad=True)
    mloc = torch.tensor([0.2, 0.0], dtype=torch.float64, requires_grad=True)
    qm = MultivariateNormal(
        torch.zeros(2, dtype=torch.float64), covariance=2 * torch.eye(2, dtype=torch.float64)
    )
    exact = torch.autograd.grad(
        kldiv.kl(MultivariateNormal(mloc, scale_tril=tril), qm), (mloc, tril)
    )
    est = mc.kl(MultivariateNormal(mloc, scale_tril=tril), qm, num_samples=200_000, seed=2)
    got = torch.autograd.grad(est.value, (mloc, tril))
    for g, e in zip(got, exact, strict=True):
        torch.testing.assert_close(g, e, atol=0.02, rtol=0)


def test_reparameterized_gradients_match_the_exact_gradient_jax():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    q = Normal(1.0, std=1.5)

    def exact(loc):
        return kldiv.kl(Normal(loc, log_std=jnp.array([0.1, -0.3])), q).sum()

    def estimate(loc):
        return mc.kl(
            Normal(loc, log_std=jnp.array([0.1, -0.3])),
            q,
            num_samples=200_000,
            key=jax.random.key(3),
        ).value.sum()

    loc = jnp.array([0.5, -0.5])
    np.testing.assert_allclose(jax.jit(jax.grad(estimate))(loc), jax.grad(exact)(loc), atol=0.02)


def test_generic_p_with_sample_and_log_prob():
    torch = pytest.importorskip("torch")
    td = torch.distributions
    p = td.Normal(
        torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.5], dtype=torch.float64)
    )
    q = td.Normal(torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.2, dtype=torch.float64))
    exact = td.kl_divergence(p, q)
    for estimator in ("k1", "entropy"):
        est = mc.kl(p, q.log_prob, num_samples=100_000, seed=3, estimator=estimator)
        assert torch.all((est.value - exact).abs() <= 4 * est.stderr)
    again = mc.kl(p, q.log_prob, num_samples=100, seed=3)
    assert torch.equal(again.value, mc.kl(p, q.log_prob, num_samples=100, seed=3).value)


# ----------------------------------------------------------------------------------------------
# k1, k2, k3 on per-token log-probabilities: values, reductions, clamp, gradients
# ----------------------------------------------------------------------------------------------
def test_token_estimators_values_and_reductions(xp):
    rng = np.random.default_rng(0)
    lp, lr = rng.normal(size=(3, 5)) - 2, rng.normal(size=(3, 5)) - 2
    mask = rng.random((3, 5)) < 0.6
    mask[0, 0] = True
    ell = lr - lp
    ref = {"k1": -ell, "k2": 0.5 * ell**2, "k3": np.expm1(ell) - ell}
    for name, fn in (("k1", mc.k1), ("k2", mc.k2), ("k3", mc.k3)):
        out = xp.call(
            lambda a, b, m, fn=fn: fn(a, b, mask=m, reduction="mean"),
            xp.asarray(lp),
            xp.asarray(lr),
            xp.bool(mask),
        )
        assert xp.np(out) == pytest.approx(ref[name][mask].mean(), rel=1e-12)
        per = fn(xp.asarray(lp), xp.asarray(lr))
        np.testing.assert_allclose(xp.np(per), ref[name], rtol=1e-12, atol=1e-15)
    tiny = mc.k3(np.array([-1.0]), np.array([-1.0 + 1e-9]))  # phi, no cancellation
    assert tiny[0] == pytest.approx(0.5e-18, rel=1e-6)


def test_clamp_warns_that_it_biases():
    with pytest.warns(mc.BiasWarning, match="biases"):
        out = mc.k3(np.array([0.0, -30.0]), np.array([-30.0, 0.0]), clamp=10.0)
    assert out[1] == pytest.approx(math.expm1(10.0) - 10.0)
    with pytest.warns(mc.BiasWarning):
        mc.k1(np.zeros(2), np.ones(2), clamp=(-0.5, 0.5))
    with pytest.raises(kldiv.KLDivError, match="clamp"):
        mc.k1(np.zeros(2), np.ones(2), clamp=-1.0)


# (their expected gradients, in the loss and in the reward, on- and off-policy: test_penalty.py)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, "num_samples: expected a positive int, got 0"),
        ({"num_samples": 2.5}, "num_samples: expected a positive int"),
        ({"num_samples": True}, "num_samples"),
        ({"num_samples": 10, "estimator": "k4"}, "estimator: expected one of"),
        ({"num_samples": 10, "seed": -1}, "seed: expected a non-negative int"),
        ({"num_samples": 10, "seed": 1, "generator": np.random.default_rng()}, "at most one"),
        ({"num_samples": 10, "reduction": "avg"}, "reduction"),
        ({"num_samples": 10, "key": 3}, "key: expected none for numpy"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(kldiv.KLDivError, match=match):
        mc.kl(Normal(np.zeros(2), std=1.0), Normal.standard(), **kwargs)


def test_bad_p_and_q():
    p = Normal(np.zeros(2), std=1.0)
    with pytest.raises(kldiv.KLDivError, match="p: expected a kldiv spec or an object"):
        mc.kl(3.0, p, num_samples=2)
    with pytest.raises(kldiv.KLDivError, match="q: expected a kldiv spec or a callable"):
        mc.kl(p, "N(0,1)", num_samples=2)
    with pytest.raises(kldiv.KLDivError, match="q: expected a spec on the same space"):
        mc.kl(p, Categorical(probs=[0.5, 0.5]), num_samples=2)
    with pytest.raises(kldiv.KLDivError, match=r"q\(x\): expected log q per sample"):
        mc.kl(p, lambda x: x[:, :1], num_samples=3, seed=0)
    with pytest.raises(kldiv.KLDivError, match=r"q\(x\): expected an array"):
        mc.kl(p, lambda x: 1.0, num_samples=3, seed=0)
    with pytest.raises(kldiv.KLDivError, match="mask"):
        mc.kl(p, Normal.standard(), num_samples=3, seed=0, mask=np.ones(3), reduction="mean")


def test_infinite_kl_has_infinite_stderr_not_nan(xp):
    """q = 0 where p draws: the KL is +inf, and so is its standard error (it was NaN, with a
    RuntimeWarning from inf - inf in NumPy)."""
    p = Categorical(probs=xp.asarray([0.5, 0.5]))
    q = Categorical(probs=xp.asarray([1.0, 0.0]))
    for estimator in ("k1", "k3", "entropy"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            est = mc.kl(p, q, num_samples=100, estimator=estimator, seed=0)
        assert xp.np(est.value) == np.inf and xp.np(est.stderr) == np.inf


def test_seeds_out_of_range_for_torch_and_jax_raise():
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    for loc in (torch.zeros(2), jax.numpy.zeros(2)):
        with pytest.raises(
            kldiv.KLDivError, match=r"seed: expected a non-negative int below 2\*\*63"
        ):
            mc.kl(Normal(loc, std=1.0), Normal.standard(), num_samples=3, seed=2**70)
