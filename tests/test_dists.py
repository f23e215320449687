"""Spec objects: cheap holders of arrays, JAX pytrees, picklable, never mutated."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import kldiv
from kldiv import Bernoulli, Categorical, MultivariateNormal, Normal


def test_specs_are_jax_pytrees_and_cross_jit_boundaries():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    p = Normal(jnp.zeros(3), log_var=jnp.full(3, 0.5))
    q = Normal(jnp.ones(3), std=jnp.full(3, 2.0))
    leaves = jax.tree_util.tree_leaves(p)
    assert len(leaves) == 2
    got = jax.jit(lambda p, q: kldiv.kl(p, q, reduction="sum"))(p, q)
    want = kldiv.kl(
        Normal(np.zeros(3), log_var=np.full(3, 0.5)),
        Normal(np.ones(3), std=np.full(3, 2.0)),
        reduction="sum",
    )
    assert float(got) == pytest.approx(float(want), rel=1e-12)
    c = Categorical(logits=jnp.zeros((2, 4)), axis=0)
    c2 = jax.tree_util.tree_map(lambda x: x + 1.0, c)
    assert isinstance(c2, Categorical) and c2.axis == 0 and c2.param == "logits"


def test_standard_normal_survives_pytree_roundtrip():
    jax = pytest.importorskip("jax")
    s = jax.tree_util.tree_map(lambda x: x, Normal.standard())
    assert s.standard_ and repr(s) == "Normal.standard()"


@pytest.mark.parametrize(
    "spec",
    [
        Normal(np.zeros(2), var=np.ones(2)),
        MultivariateNormal(np.zeros(2), covariance=np.eye(2)),
        Categorical(log_probs=np.log([0.5, 0.5]), axis=-1),
        Bernoulli(logits=np.zeros(3)),
        Normal.standard(),
    ],
)
def test_specs_pickle(spec):
    back = pickle.loads(pickle.dumps(spec))
    assert type(back) is type(spec) and repr(back) == repr(spec)
    assert np.all(np.asarray(kldiv.kl(back, spec)) == 0)


def test_param_accessors():
    assert Normal(0.0, log_std=1.0).scale == 1.0
    assert Normal(0.0, log_std=1.0).param == "log_std"
    assert MultivariateNormal([0.0], precision=[[2.0]]).matrix == [[2.0]]
    assert Categorical(probs=[1.0]).value == [1.0]
    assert Bernoulli(logits=0.5).value == 0.5
