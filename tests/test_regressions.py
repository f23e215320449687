"""Defects found in an adversarial review; each test failed before its fix."""

from __future__ import annotations

import sys
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest

import kldiv
from kldiv import Bernoulli, Categorical, KLDivError, MultivariateNormal, Normal

sys.path.insert(0, str(Path(__file__).parent))
import reference as ref

mp.mp.dps = 50


def test_jax_traced_with_plain_arrays():
    """A constant teacher next to a traced student: a tracer has no device, not another one."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    teacher = jnp.array([[0.0, 1.0, 2.0]])
    g = jax.grad(
        lambda s: kldiv.kl(Categorical(logits=teacher), Categorical(logits=s), reduction="mean")
    )(jnp.array([[1.0, 0.0, 0.0]]))
    p, q = np.exp([0.0, 1.0, 2.0]), np.exp([1.0, 0.0, 0.0])
    np.testing.assert_allclose(np.asarray(g)[0], q / q.sum() - p / p.sum(), rtol=1e-12)
    mu = jnp.zeros(3)
    out = jax.jit(lambda s: kldiv.kl(Normal(mu, std=s), Normal.standard()))(jnp.ones(3))
    assert np.all(np.asarray(out) == 0)


@pytest.mark.parametrize(
    ("p", "q"), [(0.1, 1 - 1e-12), (0.8746176699380752, 0.9999999361286748), (0.3, 0.99)]
)
def test_bernoulli_probs_with_q_near_one(p, q):
    want = ref.kl_bernoulli_params("probs", p, "probs", q)
    got = float(kldiv.kl(Bernoulli(probs=np.float64(p)), Bernoulli(probs=np.float64(q))))
    assert ref.rel_err(got, want) <= 1e-12


def test_bernoulli_probs_with_q_near_one_float32():
    p, q = np.float32(0.1), np.float32(0.9999999)
    want = ref.kl_bernoulli_params("probs", float(p), "probs", float(q))
    got = float(kldiv.kl(Bernoulli(probs=p), Bernoulli(probs=q)))
    assert ref.rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("scale", [1e3, 5e3, 1e4])
def test_float32_logits_of_magnitude_1e4(scale):
    a = np.array([0, -scale, -scale], np.float32)
    b = np.array([0, 1, -2], np.float32)
    want = ref.kl_categorical_params("logits", a, "logits", b)
    got = float(kldiv.kl(Categorical(logits=a), Categorical(logits=b)))
    assert ref.rel_err(got, want) <= 1e-5
    got_b = float(
        kldiv.kl(Bernoulli(logits=np.float32(-0.9 * scale)), Bernoulli(logits=np.float32(3)))
    )
    want_b = ref.kl_bernoulli_params("logits", float(np.float32(-0.9 * scale)), "logits", 3.0)
    assert ref.rel_err(got_b, want_b) <= 1e-5


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("p0", [1e-38, 1e-30, 1e-12, 1e-8, 1e-3])
def test_gradient_at_small_probabilities(dtype, p0):
    """d KL / d p0 = log(p0 / q0) - KL (normalized p), finite and accurate down to 1e-38."""
    torch = pytest.importorskip("torch")
    dt = getattr(torch, dtype)
    p = torch.tensor([p0, 1.0], dtype=dt, requires_grad=True)
    q = torch.tensor([0.5, 0.5], dtype=dt)
    (g,) = torch.autograd.grad(kldiv.kl(Categorical(probs=p), Categorical(probs=q)), p)
    s = mp.mpf(float(np.asarray(p0, dtype=dtype))) + 1
    ph = [mp.mpf(float(np.asarray(p0, dtype=dtype))) / s, 1 / s]
    kl = sum(x * mp.log(x / mp.mpf(0.5)) for x in ph)
    want = float((mp.log(ph[0] / mp.mpf(0.5)) - kl) / s)
    assert torch.isfinite(g).all()
    assert abs(g[0].item() - want) <= (1e-5 if dtype == "float32" else 1e-12) * abs(want)


@pytest.mark.parametrize("param", ["covariance", "precision", "scale_tril"])
def test_mvn_hessian_at_equality_is_the_fisher_information(param):
    torch = pytest.importorskip("torch")
    f64 = torch.float64
    lower = torch.tensor([[1.0, 0.0], [0.5, 2.0]], dtype=f64)
    cov = lower @ lower.T
    mat = {"covariance": cov, "precision": torch.linalg.inv(cov), "scale_tril": lower}[param]
    m = torch.tensor([0.1, 0.2], dtype=f64)
    h = torch.autograd.functional.hessian(
        lambda a: kldiv.kl(
            MultivariateNormal(a, **{param: mat}), MultivariateNormal(m, **{param: mat})
        ),
        m,
    )
    torch.testing.assert_close(h, torch.linalg.inv(cov), rtol=1e-12, atol=1e-14)


def test_small_inputs_accepted():
    x = np.zeros((2, 3))
    assert kldiv.kl(Normal(x, std=1.0), Normal.standard(), event_axis=np.int64(1)).shape == (2,)
    assert kldiv.kl(Normal(x, std=1.0), Normal.standard(), mask=False, reduction="mean") == 0
    with pytest.raises(KLDivError, match="event_axis: expected an int or a tuple of ints"):
        kldiv.kl(Normal(x, std=1.0), Normal.standard(), event_axis=1.0)


def test_validate_log_probs_normalization():
    lp = np.array([0.5, -3.0])
    with pytest.raises(KLDivError, match=r"sum of exp\(p.log_probs\)"):
        kldiv.kl(Categorical(log_probs=lp), Categorical(log_probs=lp), validate=True)


def test_zero_dimensional_categorical_is_named():
    with pytest.raises(KLDivError, match=r"p\.probs: expected an array with a class axis"):
        kldiv.kl(Categorical(probs=np.float64(1.0)), Categorical(probs=np.float64(1.0)))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compile_with_log_scales_on_q():
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 3, dtype=torch.float64)
    f = torch.compile(
        lambda a: kldiv.kl(Normal(a, log_var=a), Normal(a * 0, log_std=a * 0)), fullgraph=True
    )
    want = kldiv.kl(Normal(x, log_var=x), Normal(x * 0, log_std=x * 0))
    torch.testing.assert_close(f(x), want, rtol=1e-12, atol=0)
