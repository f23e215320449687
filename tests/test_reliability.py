"""Regression tests for issue 12: each documented promise at the edges where it once failed.

Each test names the item of the issue it covers; each failed on the code before the fix.
References are independent: mpmath on the exact inputs, closed-form limits worked by hand.
"""

from __future__ import annotations

import math
import warnings

import mpmath as mp
import numpy as np
import pytest

import kldiv
from kldiv import Bernoulli, Categorical, KLDivError, MultivariateNormal, Normal

NAN, INF = math.nan, math.inf


# 1. NaN in any input gives NaN in that distribution's value ---------------------------------
@pytest.mark.parametrize(
    ("p", "q"),
    [
        (Categorical(logits=np.array([NAN, 0.0])), Categorical(logits=np.array([0.0, 0.0]))),
        (Categorical(logits=np.array([0.0, 0.0])), Categorical(logits=np.array([NAN, 0.0]))),
        (Categorical(probs=np.array([NAN, 0.5])), Categorical(probs=np.array([0.5, 0.5]))),
        (Categorical(log_probs=np.array([-1.0, NAN])), Categorical(probs=np.array([0.5, 0.5]))),
        (Bernoulli(probs=np.array([NAN])), Bernoulli(probs=np.array([0.5]))),
        (Bernoulli(logits=np.array([NAN])), Bernoulli(logits=np.array([0.5]))),
        (Bernoulli(probs=np.array([0.3])), Bernoulli(logits=np.array([NAN]))),
    ],
)
def test_nan_is_never_absorbed(p, q):
    assert np.all(np.isnan(kldiv.kl(p, q)))


def test_nan_teacher_row_is_nan_in_torch_and_others_keep_their_gradient():
    torch = pytest.importorskip("torch")
    t = torch.tensor([[NAN, 0.0], [1.0, 0.0]])
    s = torch.zeros(2, 2, requires_grad=True)
    v = kldiv.kl(Categorical(logits=t), Categorical(logits=s))
    assert math.isnan(float(v[0].detach())) and math.isfinite(float(v[1].detach()))
    v[1].backward()
    p = torch.softmax(t[1], 0)
    torch.testing.assert_close(s.grad[1], torch.softmax(s[1].detach(), 0) - p)
    from kldiv.torch import CategoricalKLLoss

    loss = CategoricalKLLoss(p_param="logits", q_param="logits")(t, s)
    assert math.isnan(float(loss.detach()))


def test_pos_inf_logit_takes_the_mass():
    got = kldiv.kl(Categorical(logits=np.array([INF, 0.0])), Categorical(logits=np.zeros(2)))
    assert float(got) == pytest.approx(math.log(2), rel=1e-15)
    two = kldiv.kl(Categorical(logits=np.array([INF, INF, 0.0])), Categorical(logits=np.zeros(3)))
    assert float(two) == pytest.approx(math.log(3 / 2), rel=1e-15)


# 2. float32 logits of large magnitude keep the 1e-5 promise ------------------------------------
def _kl_mp(a, b):
    with mp.workdps(60):
        la = [mp.mpf(float(v)) for v in a]
        lb = [mp.mpf(float(v)) for v in b]
        za, zb = mp.log(mp.fsum(mp.exp(v) for v in la)), mp.log(mp.fsum(mp.exp(v) for v in lb))
        return float(
            mp.fsum(mp.exp(x - za) * ((x - za) - (y - zb)) for x, y in zip(la, lb, strict=True))
        )


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("big", [100.0, 1000.0, 3000.0, 9999.0])
def test_large_float32_logits(backend, big):
    a = np.array([big, 0.0], dtype=np.float32)
    b = np.array([0.0, 0.3], dtype=np.float32)
    want = _kl_mp(a, b)
    if backend == "torch":
        torch = pytest.importorskip("torch")
        a, b = torch.from_numpy(a), torch.from_numpy(b)
    elif backend == "jax":
        jnp = pytest.importorskip("jax.numpy")
        a, b = jnp.asarray(a), jnp.asarray(b)
    got = float(kldiv.kl(Categorical(logits=a), Categorical(logits=b)))
    assert abs(got - want) <= 1e-5 * want, (got, want)


def test_large_float32_bernoulli_logit():
    a, b = np.float32(1e4), np.float32(0.3988)
    want = float(mp.log(1 + mp.exp(-mp.mpf(float(b)))))  # p = 1: -log sigmoid(b)
    got = float(kldiv.kl(Bernoulli(logits=np.array([a])), Bernoulli(logits=np.array([b])))[0])
    assert abs(got - want) <= 1e-5 * want


def test_random_large_float32_logits():
    rng = np.random.default_rng(12)
    a = (rng.uniform(-1, 1, (20, 6)) * 1e4).astype(np.float32)
    b = (a + rng.normal(0, 1, a.shape)).astype(np.float32)
    got = kldiv.kl(Categorical(logits=a), Categorical(logits=b))
    for g, ra, rb in zip(got, a, b, strict=True):
        want = _kl_mp(ra, rb)
        assert abs(float(g) - want) <= 1e-5 * abs(want) + 1e-30, (float(g), want)


# 7. a singular q is +inf; a covariance that is not positive definite is a KLDivError ---------
@pytest.mark.parametrize("batched", [False, True])
def test_singular_mvn_is_inf(batched):
    tril = np.diag([1.0, 0.0])
    if batched:
        tril = np.broadcast_to(tril, (3, 2, 2))
    p = MultivariateNormal(np.zeros(2), scale_tril=np.eye(2))
    q = MultivariateNormal(np.zeros(2), scale_tril=tril)
    assert np.all(kldiv.kl(p, q) == INF) and np.all(kldiv.kl(q, p) == INF)


def test_singular_mvn_torch_is_inf():
    torch = pytest.importorskip("torch")
    p = MultivariateNormal(torch.zeros(2), scale_tril=torch.eye(2))
    q = MultivariateNormal(torch.zeros(2), scale_tril=torch.diag(torch.tensor([1.0, 0.0])))
    assert float(kldiv.kl(p, q)) == INF


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_not_positive_definite_is_named(lib):
    xpl = np if lib == "numpy" else pytest.importorskip("torch")
    bad = xpl.asarray([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(KLDivError, match=r"q\.covariance: expected a symmetric positive-definite"):
        kldiv.kl(
            MultivariateNormal(xpl.zeros(2), scale_tril=xpl.eye(2)),
            MultivariateNormal(xpl.zeros(2), covariance=bad),
        )


# 6. normalizers given as host values are checked -------------------------------------------
@pytest.mark.parametrize(
    "norm", [np.float32(0), np.float32(-2), np.array(-2.0), np.array(3j), np.True_, np.inf, -1.0]
)
def test_bad_host_normalizer(norm):
    with pytest.raises(KLDivError, match="normalizer"):
        kldiv.kl(Normal(0.0, std=1.0), Normal(1.0, std=2.0), normalizer=norm)


def test_device_normalizer_checked_under_validate():
    torch = pytest.importorskip("torch")
    p = Normal(torch.zeros(3), std=torch.ones(3))
    q = Normal(torch.ones(3), std=torch.ones(3))
    kldiv.kl(p, q, normalizer=torch.tensor(-2.0))  # not read without validate (it may be traced)
    with pytest.raises(KLDivError, match="normalizer: expected a positive finite number"):
        kldiv.kl(p, q, normalizer=torch.tensor(-2.0), validate=True)


# 8. batchmean over an empty batch is 0 with zero gradients -----------------------------------
def test_empty_batchmean_is_zero():
    torch = pytest.importorskip("torch")
    lv = torch.zeros((0, 4), requires_grad=True)
    v = kldiv.kl(Normal(torch.zeros(0, 4), log_var=lv), Normal.standard(), reduction="batchmean")
    assert float(v.detach()) == 0.0
    v.backward()
    assert lv.grad is not None and lv.grad.shape == (0, 4)
    c = kldiv.kl(
        Categorical(logits=np.zeros((0, 3))),
        Categorical(logits=np.zeros((0, 3))),
        reduction="batchmean",
    )
    assert float(c) == 0.0


# 9. KL(p, p) is 0 for a point mass -----------------------------------------------------------
def test_point_masses():
    z = np.array([0.0, 1.0, NAN])
    got = kldiv.kl(Normal(z, std=np.zeros(3)), Normal(np.zeros(3), std=np.zeros(3)))
    assert got[0] == 0.0 and got[1] == INF and math.isnan(got[2])
    lv = np.array([-INF])
    assert float(kldiv.kl(Normal(np.zeros(1), log_var=lv), Normal(np.zeros(1), log_var=lv))[0]) == 0
    assert float(kldiv.kl(Normal(0.0, std=1.0), Normal(0.0, std=0.0))) == INF


# 10. masks are weights -----------------------------------------------------------------------
def test_mask_weights():
    mu = np.array([1.0, 2.0])  # per-element KL vs N(0, 1) with std 1: mu**2 / 2 = [0.5, 2.0]
    p, q = Normal(mu, std=np.ones(2)), Normal.standard()
    w = np.array([0.5, 1.0])
    assert float(kldiv.kl(p, q, mask=w, reduction="sum")) == pytest.approx(0.25 + 2.0)
    assert float(kldiv.kl(p, q, mask=w, reduction="mean")) == pytest.approx(2.25 / 1.5)
    assert float(kldiv.kl(p, q, mask=w, reduction="batchmean")) == pytest.approx(2.25 / 2)
    np.testing.assert_allclose(kldiv.kl(p, q, mask=w), [0.25, 2.0])
    with pytest.raises(KLDivError, match="mask"):
        kldiv.kl(p, q, mask=np.array([-1.0, 1.0]), reduction="mean", validate=True)


def test_zero_weight_hides_inf_and_nan():
    p = Normal(np.array([0.0, 0.0, 1.0]), std=np.array([1.0, 0.0, 1.0]))
    q = Normal(np.array([0.0, 1.0, NAN]), std=np.array([1.0, 0.0, 1.0]))
    w = np.array([1.0, 0.0, 0.0])
    assert float(kldiv.kl(p, q, mask=w, reduction="sum")) == 0.0


def test_weights_in_torch_and_jax():
    torch = pytest.importorskip("torch")
    mu = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.5, 1.0], dtype=torch.float64)
    v = kldiv.kl(
        Normal(mu, std=torch.ones(2, dtype=torch.float64)),
        Normal.standard(),
        mask=w,
        reduction="mean",
    )
    v.backward()
    torch.testing.assert_close(mu.grad, w * mu.detach() / w.sum())
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    f = jax.jit(
        lambda m: kldiv.kl(
            Normal(m, std=jnp.ones(2)),
            Normal.standard(),
            mask=jnp.asarray([0.5, 1.0]),
            reduction="mean",
        )
    )
    assert float(f(jnp.asarray([1.0, 2.0]))) == pytest.approx(2.25 / 1.5)


# 4, 5. from_samples: shared points, extreme scales -------------------------------------------
@pytest.mark.parametrize("d", [1, 3])
def test_from_samples_of_one_sample_twice_is_about_zero(d):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(1500, d))
    got = float(kldiv.from_samples(x, x))
    assert abs(got) < 0.01, got


@pytest.mark.parametrize("scale", [1e-200, 1e160])
def test_from_samples_is_scale_free(scale):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(800, 2)), rng.normal(1.0, 1.0, size=(800, 2))
    base = float(kldiv.from_samples(x, y))
    assert float(kldiv.from_samples(x * scale, y * scale)) == pytest.approx(base, rel=1e-9)


# 16. heavy tails are said, not hidden --------------------------------------------------------
def test_heavy_tailed_monte_carlo_says_so():
    torch = pytest.importorskip("torch")
    td = torch.distributions
    from kldiv.torch import kl_divergence

    g = torch.Generator().manual_seed(0)
    est = kl_divergence(td.StudentT(3.0), td.Normal(0.0, 1.0), num_samples=20000, generator=g)
    assert est.method == "mc" and est.warning and "heavy tails" in est.warning
    mix = td.MixtureSameFamily(
        td.Categorical(torch.tensor([0.3, 0.7])), td.Normal(torch.tensor([-1.0, 1.0]), 0.5)
    )
    light = kl_divergence(mix, td.Normal(0.0, 1.0), num_samples=20000, generator=g)
    assert light.method == "mc" and light.warning is None
    exact = kl_divergence(td.Normal(0.0, 1.0), td.Normal(1.0, 2.0))
    assert exact.warning is None


def test_mc_estimate_warning_field():
    p = Normal(np.zeros(2), std=np.ones(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = kldiv.mc.kl(
            p, lambda x: -0.5 * x**2 - 0.5 * math.log(2 * math.pi), num_samples=500, seed=1
        )
    assert e.warning is None
