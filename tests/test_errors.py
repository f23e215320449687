"""The bad-input table: each case raises KLDivError naming the argument, the expectation and
what came. Value checks (validate=True) also say where the bad value is."""

from __future__ import annotations

import re

import numpy as np
import pytest

import kldiv
from kldiv import Bernoulli, Categorical, KLDivError, MultivariateNormal, Normal

N = Normal(np.zeros(3), std=np.ones(3))


def raises(*fragments: str):
    """pytest.raises(KLDivError) whose message contains every fragment (in order)."""
    return pytest.raises(KLDivError, match=".*".join(re.escape(f) for f in fragments))


def test_is_a_value_error():
    assert issubclass(KLDivError, ValueError)


@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        (
            lambda: Normal(0.0),
            ("Normal", "exactly one scale keyword", "std, var, log_std, log_var", "got none"),
        ),
        (lambda: Normal(0.0, std=1.0, log_var=0.0), ("exactly one", "got std and log_var")),
        (
            lambda: MultivariateNormal(np.zeros(2)),
            ("MultivariateNormal", "scale_tril, covariance, precision", "got none"),
        ),
        (lambda: Categorical(), ("Categorical", "probs, logits, log_probs", "got none")),
        (lambda: Categorical(probs=[1.0], logits=[0.0]), ("got probs and logits",)),
        (lambda: Bernoulli(), ("Bernoulli", "probs, logits", "got none")),
        (lambda: Categorical(probs=[1.0], axis=0.5), ("axis", "expected an int", "0.5")),
    ],
)
def test_constructor_keywords(build, fragments):
    with raises(*fragments):
        build()


@pytest.mark.parametrize(
    ("call", "fragments"),
    [
        (
            lambda: kldiv.kl(Normal(np.zeros(3), std=np.ones(4)), Normal.standard()),
            ("p.std", "broadcasts with p.loc", "(3,)", "got shape (4,)"),
        ),
        (
            lambda: kldiv.kl(N, Normal(np.zeros((2, 4)), std=1.0)),
            ("q.loc", "broadcasts", "got shape (2, 4)"),
        ),
        (lambda: kldiv.kl(N, N, event_axis=1), ("event_axis", "[-1, 1)", "(3,)", "got 1")),
        (lambda: kldiv.kl(N, N, event_axis=(0, -1)), ("event_axis", "distinct axes", "repeated")),
        (lambda: kldiv.kl(N, N, event_axis="0"), ("event_axis", "an int", "str")),
        (
            lambda: kldiv.kl(
                Categorical(probs=np.ones(3) / 3, axis=1), Categorical(probs=np.ones(3) / 3)
            ),
            ("p.axis", "[-1, 1)", "got 1"),
        ),
        (
            lambda: kldiv.kl(
                Categorical(probs=np.ones((2, 3)) / 3),
                Categorical(probs=np.ones((2, 3)) / 3, axis=0),
            ),
            ("q.axis", "same class axis as p.axis"),
        ),
        (
            lambda: kldiv.kl(Categorical(logits=np.zeros(3)), Categorical(logits=np.zeros(4))),
            ("q.logits", "broadcasts with p.logits", "got shape (4,)"),
        ),
        (
            lambda: kldiv.kl(N, N, mask=np.ones(4, bool)),
            ("mask", "per-distribution shape (3,)", "got shape (4,)"),
        ),
        (
            lambda: kldiv.kl(
                Normal(np.zeros((2, 3)), std=1.0),
                Normal.standard(),
                event_axis=1,
                mask=np.ones((2, 3), bool),
            ),
            ("mask", "size 1 on the event axes (1,)", "got shape (2, 3)"),
        ),
        (
            lambda: kldiv.kl(Normal(np.zeros(3, dtype=np.int64), std=1.0), Normal.standard()),
            ("p.loc", "real floating-point array", "int64"),
        ),
        (
            lambda: kldiv.kl(Normal(0.0, std=np.ones(2, dtype=np.complex128)), Normal.standard()),
            ("p.std", "real floating-point", "complex128"),
        ),
        (lambda: kldiv.kl(Normal(True, std=1.0), Normal.standard()), ("p.loc", "bool")),
        (lambda: kldiv.kl(Normal("a", std=1.0), Normal.standard()), ("p.loc", "string 'a'")),
        (
            lambda: kldiv.kl(N, N, reduction="avg"),
            ("reduction", "'none', 'sum', 'mean', 'batchmean'", "'avg'"),
        ),
        (lambda: kldiv.kl(N, N, reduction="sum", normalizer=0), ("normalizer", "positive", "0")),
        (
            lambda: kldiv.kl(N, N, reduction="sum", normalizer=np.ones(2)),
            ("normalizer", "0-d", "(2,)"),
        ),
        (
            lambda: kldiv.kl(N, N, reduction="batchmean", event_axis=0),
            ("reduction", "batch axis", "batchmean"),
        ),
        (
            lambda: kldiv.kl(N, Categorical(probs=np.ones(3) / 3)),
            (
                "no formula for p: Normal and q: Categorical",
                "Categorical || Categorical",
                "Normal || Normal",
                "register_kl",
            ),
        ),
        (lambda: kldiv.kl(N, N, validate="yes"), ("validate", "True or False")),
        (lambda: kldiv.kl(N, object()), ("no formula", "q: builtins.object")),
    ],
)
def test_bad_input_table(call, fragments):
    with raises(*fragments):
        call()


def test_two_libraries_mixed():
    torch = pytest.importorskip("torch")
    with raises("q.std", "same library as p.loc (numpy)", "torch"):
        kldiv.kl(Normal(np.zeros(2), std=np.ones(2)), Normal(np.zeros(2), std=torch.ones(2)))
    with raises("mask", "same library", "numpy"):
        kldiv.kl(Normal(torch.zeros(2), std=1.0), Normal.standard(), mask=np.ones(2, bool))


def test_torch_distribution_by_mistake_is_named_in_full():
    torch = pytest.importorskip("torch")
    with raises("q: torch.distributions.normal.Normal"):
        kldiv.kl(N, torch.distributions.Normal(0.0, 1.0))


def test_jax_with_numpy_mixed():
    jnp = pytest.importorskip("jax.numpy")
    with raises("q.logits", "same library as p.logits", "jax"):
        kldiv.kl(Categorical(logits=np.zeros(3)), Categorical(logits=jnp.zeros(3)))


@pytest.mark.parametrize(
    ("p", "fragments"),
    [
        (
            Categorical(probs=np.array([[0.5, 0.5], [1.2, -0.2]])),
            ("p.probs[1, 0]", "probability in [0, 1]", "1.2"),
        ),
        (
            Categorical(probs=np.array([[0.5, 0.5], [0.3, 0.3]])),
            ("sum of p.probs along axis -1[1]", "expected 1", "0.6"),
        ),
        (Categorical(logits=np.array([0.0, np.nan])), ("p.logits[1]", "not NaN")),
        (Categorical(logits=np.array([-np.inf, -np.inf])), ("max of p.logits", "finite entry")),
        (Bernoulli(probs=np.array([0.2, 1.5])), ("p.probs[1]", "[0, 1]", "1.5")),
    ],
)
def test_validate_categorical_values(p, fragments):
    q = p
    with raises(*fragments):
        kldiv.kl(p, q, validate=True)


@pytest.mark.parametrize(
    ("p", "fragments"),
    [
        (Normal(np.zeros(3), std=np.array([1.0, 0.0, 2.0])), ("p.std[1]", "positive", "0.0")),
        (Normal(np.zeros(3), var=np.array([1.0, 2.0, -1.0])), ("p.var[2]", "positive", "-1.0")),
        (Normal(np.array([0.0, np.nan]), log_var=0.0), ("p.loc[1]", "NaN")),
        (
            MultivariateNormal(np.zeros(2), covariance=np.array([[1.0, 2.0], [2.0, 1.0]])),
            ("p.covariance", "positive-definite"),
        ),
        (
            MultivariateNormal(np.zeros(2), scale_tril=np.array([[1.0, 0.0], [0.5, -1.0]])),
            ("diagonal of p.scale_tril[1]", "positive diagonal"),
        ),
        (
            MultivariateNormal(np.zeros(2), scale_tril=np.array([[1.0, 0.3], [0.5, 1.0]])),
            ("p.scale_tril[0, 1]", "lower-triangular"),
        ),
    ],
)
def test_validate_scale_values(p, fragments):
    with raises(*fragments):
        kldiv.kl(p, p, validate=True)


def test_validate_mask_values():
    """Masks are weights (issue 12): 0.5 is valid, a negative or non-finite weight is not."""
    kldiv.kl(N, N, mask=np.array([1.0, 0.5, 0.0]), validate=True)
    with raises("mask[1]", "a finite non-negative weight", "-1.0"):
        kldiv.kl(N, N, mask=np.array([1.0, -1.0, 0.0]), validate=True)
    with raises("mask[2]", "a finite non-negative weight", "inf"):
        kldiv.kl(N, N, mask=np.array([1.0, 0.0, np.inf]), validate=True)


def test_validate_passes_valid_input_and_does_not_change_the_value():
    p = Categorical(probs=np.array([0.2, 0.3, 0.5]))
    q = Categorical(logits=np.array([0.0, 1.0, -np.inf]))
    assert kldiv.kl(p, q, validate=True) == kldiv.kl(p, q)


def test_validate_refuses_traced_values():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    f = jax.jit(lambda m: kldiv.kl(Normal(m, std=1.0), Normal.standard(), validate=True))
    with raises("validate=True needs concrete values"):
        f(jnp.zeros(2))


def test_values_are_not_checked_without_validate():
    """Without validate, a bad value is not looked at (that would break jit)."""
    out = kldiv.kl(Categorical(probs=np.array([0.5, 0.6])), Categorical(probs=[0.5, 0.5]))
    assert np.isfinite(out)
