"""The reduction model: event axes, both mask forms, none/sum/mean/batchmean, normalizer.

Each reduction is checked against its definition computed by hand in NumPy from the
per-element values, and masks against slicing (a masked distribution must be the same as one
that was never there).
"""

from __future__ import annotations

import numpy as np
import pytest

import kldiv
from kldiv import Categorical, Normal

RNG = np.random.default_rng(7)


def normal_terms(mu, lv):
    """Per-element KL(N(mu, exp(lv)) || N(0, 1)) by the textbook formula (float64)."""
    return 0.5 * (np.exp(lv) + mu**2 - 1 - lv)


@pytest.fixture
def vae():
    mu = RNG.normal(size=(6, 4))
    lv = RNG.normal(size=(6, 4)) * 0.5
    return mu, lv, normal_terms(mu, lv)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
def test_reductions_match_their_definitions(xp, vae, reduction):
    mu, lv, terms = vae
    per_dist = terms.sum(axis=-1)
    want = {
        "none": per_dist,
        "sum": per_dist.sum(),
        "mean": per_dist.mean(),
        "batchmean": per_dist.sum() / per_dist.shape[0],
    }[reduction]
    got = xp.call(
        lambda m, v: kldiv.kl(
            Normal(m, log_var=v), Normal.standard(), event_axis=-1, reduction=reduction
        ),
        xp.asarray(mu),
        xp.asarray(lv),
    )
    np.testing.assert_allclose(xp.np(got), want, rtol=1e-13)
    assert tuple(got.shape) == np.shape(want)


def test_mean_is_not_torch_mean(vae):
    """kldiv's mean is per distribution, not per element (torch kl_div's 'mean')."""
    mu, lv, terms = vae
    got = kldiv.kl(Normal(mu, log_var=lv), Normal.standard(), event_axis=1, reduction="mean")
    assert got == pytest.approx(terms.sum(1).mean(), rel=1e-13)
    assert got != pytest.approx(terms.mean(), rel=1e-3)


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_normalizer_overrides_divisor(xp, vae, reduction):
    mu, lv, terms = vae
    got = xp.call(
        lambda m, v: kldiv.kl(
            Normal(m, log_var=v),
            Normal.standard(),
            event_axis=-1,
            reduction=reduction,
            normalizer=17,
        ),
        xp.asarray(mu),
        xp.asarray(lv),
    )
    np.testing.assert_allclose(xp.np(got), terms.sum() / 17, rtol=1e-13)


def test_normalizer_overrides_none_too(vae):
    mu, lv, terms = vae
    got = kldiv.kl(Normal(mu, log_var=lv), Normal.standard(), normalizer=8.0)
    assert got == pytest.approx(terms.sum() / 8.0, rel=1e-13)


def test_normalizer_may_be_an_array(xp, vae):
    mu, lv, terms = vae
    got = xp.call(
        lambda m, v, n: kldiv.kl(
            Normal(m, log_var=v), Normal.standard(), reduction="mean", normalizer=n
        ),
        xp.asarray(mu),
        xp.asarray(lv),
        xp.asarray(3.5),
    )
    np.testing.assert_allclose(xp.np(got), terms.sum() / 3.5, rtol=1e-13)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_mask_equals_slicing(xp, vae, reduction):
    mu, lv, _terms = vae
    keep = np.array([True, False, True, True, False, True])
    masked = xp.call(
        lambda m, v, k: kldiv.kl(
            Normal(m, log_var=v), Normal.standard(), event_axis=-1, mask=k, reduction=reduction
        ),
        xp.asarray(mu),
        xp.asarray(lv),
        xp.bool(keep),
    )
    sliced = kldiv.kl(
        Normal(mu[keep], log_var=lv[keep]), Normal.standard(), event_axis=-1, reduction=reduction
    )
    if reduction == "none":
        np.testing.assert_allclose(xp.np(masked)[keep], sliced, rtol=1e-13)
        assert np.all(xp.np(masked)[~keep] == 0)
    else:
        np.testing.assert_allclose(xp.np(masked), sliced, rtol=1e-13)


def test_mask_of_zeros_and_ones_equals_bool(vae):
    mu, lv, _ = vae
    keep = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    a = kldiv.kl(
        Normal(mu, log_var=lv), Normal.standard(), event_axis=-1, mask=keep, reduction="mean"
    )
    b = kldiv.kl(
        Normal(mu, log_var=lv), Normal.standard(), event_axis=-1, mask=keep > 0, reduction="mean"
    )
    assert a == b


def test_vits_mask_of_input_rank(xp):
    """z_mask of shape (B, 1, T) against (B, C, T) inputs with event_axis=1 (the VITS loss)."""
    b, c, t = 3, 4, 5
    mu, lv = RNG.normal(size=(b, c, t)), RNG.normal(size=(b, c, t))
    lengths = np.array([5, 2, 3])
    z_mask = (np.arange(t)[None, None, :] < lengths[:, None, None]).astype(np.float64)
    got = xp.call(
        lambda m, v, k: kldiv.kl(
            Normal(m, log_var=v), Normal.standard(), event_axis=1, mask=k, reduction="mean"
        ),
        xp.asarray(mu),
        xp.asarray(lv),
        xp.asarray(z_mask),
    )
    terms = normal_terms(mu, lv).sum(axis=1)  # (B, T)
    want = (terms * z_mask[:, 0, :]).sum() / z_mask.sum()
    np.testing.assert_allclose(xp.np(got), want, rtol=1e-13)


def test_mask_with_size_one_on_family_axis():
    """A Categorical mask may have the inputs' rank with size 1 on the class axis."""
    a, b = RNG.normal(size=(3, 4, 6)), RNG.normal(size=(3, 4, 6))
    keep = RNG.random(size=(3, 4)) > 0.5
    m1 = kldiv.kl(Categorical(logits=a), Categorical(logits=b), mask=keep, reduction="sum")
    m2 = kldiv.kl(
        Categorical(logits=a), Categorical(logits=b), mask=keep[..., None], reduction="sum"
    )
    assert m1 == m2
    assert m1 == pytest.approx(
        kldiv.kl(Categorical(logits=a[keep]), Categorical(logits=b[keep]), reduction="sum"),
        rel=1e-13,
    )


def test_all_masked_mean_is_zero_with_zero_gradients():
    torch = pytest.importorskip("torch")
    mu = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    lv = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = kldiv.kl(
        Normal(mu, log_var=lv),
        Normal.standard(),
        event_axis=-1,
        mask=torch.zeros(4, dtype=torch.bool),
        reduction="mean",
    )
    out.backward()
    assert out.item() == 0.0
    assert torch.all(mu.grad == 0) and torch.all(lv.grad == 0)


def test_all_masked_mean_jax_grad_is_zero():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    def loss(mu):
        return kldiv.kl(
            Normal(mu, std=1.5), Normal.standard(), mask=jnp.zeros(mu.shape, bool), reduction="mean"
        )

    g = jax.jit(jax.grad(loss))(jnp.ones((5,)))
    assert float(loss(jnp.ones((5,)))) == 0.0
    assert np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("event_axis", [0, 1, 2, (0, 2), (-1, -3)])
def test_event_axis_sums_those_axes(event_axis):
    mu, lv = RNG.normal(size=(2, 3, 4)), RNG.normal(size=(2, 3, 4))
    got = kldiv.kl(Normal(mu, log_var=lv), Normal.standard(), event_axis=event_axis)
    np.testing.assert_allclose(got, normal_terms(mu, lv).sum(axis=event_axis), rtol=1e-13)


def test_categorical_event_axis_counts_input_axes():
    """event_axis names axes of the inputs; the class axis itself may be listed, harmlessly."""
    a, b = RNG.normal(size=(2, 3, 5)), RNG.normal(size=(2, 3, 5))
    per_row = kldiv.kl(Categorical(logits=a), Categorical(logits=b))
    np.testing.assert_allclose(
        kldiv.kl(Categorical(logits=a), Categorical(logits=b), event_axis=1),
        per_row.sum(axis=1),
        rtol=1e-13,
    )
    np.testing.assert_allclose(
        kldiv.kl(Categorical(logits=a), Categorical(logits=b), event_axis=(1, -1)),
        per_row.sum(axis=1),
        rtol=1e-13,
    )


def test_moving_the_class_axis_equals_moving_the_data():
    a, b = RNG.normal(size=(4, 6, 3)), RNG.normal(size=(4, 6, 3))
    last = kldiv.kl(Categorical(logits=a), Categorical(logits=b))
    moved = kldiv.kl(
        Categorical(logits=np.moveaxis(a, -1, 0), axis=0),
        Categorical(logits=np.moveaxis(b, -1, 0), axis=0),
    )
    np.testing.assert_allclose(moved, last, rtol=1e-14)


def test_broadcasting_against_a_shared_prior():
    logits_q = RNG.normal(size=(5,))
    logits_p = RNG.normal(size=(3, 5))
    got = kldiv.kl(Categorical(logits=logits_p), Categorical(logits=logits_q))
    want = [kldiv.kl(Categorical(logits=row), Categorical(logits=logits_q)) for row in logits_p]
    np.testing.assert_allclose(got, want, rtol=1e-14)


def test_inputs_are_not_mutated(xp):
    mu, lv = RNG.normal(size=(3, 2)), RNG.normal(size=(3, 2))
    a, b, m = xp.asarray(mu), xp.asarray(lv), xp.bool([True, False, True])
    xp.call(
        lambda a, b, m: kldiv.kl(
            Normal(a, log_var=b), Normal.standard(), event_axis=-1, mask=m, reduction="mean"
        ),
        a,
        b,
        m,
    )
    np.testing.assert_array_equal(xp.np(a), mu)
    np.testing.assert_array_equal(xp.np(b), lv)


def test_empty_batch_mean_is_zero():
    out = kldiv.kl(
        Normal(np.zeros((0, 3)), std=np.ones((0, 3))),
        Normal.standard(),
        event_axis=-1,
        reduction="mean",
    )
    assert out == 0.0
