"""kldiv.penalty: the gradient table of docs/estimators.md, checked by brute force.

On a small categorical policy pi (logits theta), a reference pi_ref and a behaviour policy mu,
every quantity of the table is exact by enumeration in float64: the KLs' gradients (autograd of
``kldiv.kl``'s closed form) and the stated biases (sums over the classes with the analytic score
``s(x) = onehot(x) - pi``). Each cell is checked twice:

- exactly: the expectation of the per-token gradient, summed over the classes with the sampling
  distribution's probabilities, equals the cell's formula to 1e-12;
- by Monte Carlo: the mean of seeded per-sample gradients (one row of an expanded logits tensor
  per sample, so autograd gives every per-sample gradient at once) lies within 4.5 standard
  errors of it, and a cell that says "biased" or names another KL is at least 10 standard errors
  away from the gradient of KL(pi || pi_ref).

The table itself is read from docs/estimators.md, so the page and the tests can't drift apart.
"""

from __future__ import annotations

import functools
import math
import pathlib
import re
import warnings

import numpy as np
import pytest

import kldiv
from kldiv import Categorical, penalty

torch = pytest.importorskip("torch")

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "estimators.md"
K = 5  # classes
N = 200_000  # Monte Carlo samples per cell
Z = 4.5  # standard errors


# ----------------------------------------------------------------------------------------------
# The three policies, and every exact quantity the table names
# ----------------------------------------------------------------------------------------------
def _policies():
    g = torch.Generator().manual_seed(7)
    theta = torch.randn(K, generator=g, dtype=torch.float64) * 0.9
    ref = torch.randn(K, generator=g, dtype=torch.float64) * 0.9
    mu = theta + torch.randn(K, generator=g, dtype=torch.float64) * 0.7
    return theta, ref, mu


def _grad_of_kl(first, second, theta):
    """The gradient in theta of KL(first || second), logits, from kldiv's closed form."""
    t = theta.clone().requires_grad_()
    sub = {"theta": t}
    a, b = (sub.get(x, x) if isinstance(x, str) else x for x in (first, second))
    (grad,) = torch.autograd.grad(kldiv.kl(Categorical(logits=a), Categorical(logits=b)), t)
    return grad


@functools.cache
def exact_quantities():
    """Every named vector of the table, computed independently of kldiv.penalty."""
    theta, ref, mu = _policies()
    pi, p_ref, p_mu = (torch.softmax(v, -1) for v in (theta, ref, mu))
    score = torch.eye(K, dtype=torch.float64) - pi  # s(x) = d log pi(x) / d theta, row x
    delta = torch.log(pi) - torch.log(p_ref)
    r = p_ref / pi
    k2 = 0.5 * delta**2

    def under(p, f):  # sum_x p(x) f(x) s(x)
        return (p * f) @ score

    g_rev = _grad_of_kl("theta", ref, theta)  # grad KL(pi || pi_ref)
    g_fwd = _grad_of_kl(ref, "theta", theta)  # grad KL(pi_ref || pi)
    g_mu = _grad_of_kl(mu, "theta", theta)  # grad KL(mu || pi)
    g_pi_mu = _grad_of_kl("theta", mu, theta)  # grad KL(pi || mu), mu held fixed
    # the derivation's identities, checked once: E_pi[delta s] and E_pi[(1 - r) s]
    torch.testing.assert_close(under(pi, delta), g_rev, rtol=0, atol=1e-14)
    torch.testing.assert_close(under(pi, 1 - r), g_fwd, rtol=0, atol=1e-14)
    torch.testing.assert_close(-(p_mu @ score), g_mu, rtol=0, atol=1e-14)
    return {
        "∇KL(π‖π_ref)": g_rev,
        "∇KL(π_ref‖π)": g_fwd,
        "0": torch.zeros(K, dtype=torch.float64),
        "biased: −∇KL(μ‖π)": -g_mu,
        "biased: E_μ[δ s]": under(p_mu, delta),
        "biased: E_μ[(1 − r) s]": under(p_mu, 1 - r),
        "biased: ∇KL(π‖π_ref) + E_π[k₂ s]": g_rev + under(pi, k2),
        "biased: E_π[k₂ s]": under(pi, k2),
        "biased: ∇KL(π‖π_ref) − ∇KL(π_ref‖π)": g_rev - g_fwd,
        "biased: 2∇KL(π‖π_ref)": 2 * g_rev,
        "biased: 2∇KL(π‖π_ref) − ∇KL(π_ref‖π)": 2 * g_rev - g_fwd,
        "biased: ∇KL(π‖π_ref) − ∇KL(π‖μ)": g_rev - g_pi_mu,
    }


# ----------------------------------------------------------------------------------------------
# The table, as docs/estimators.md states it
# ----------------------------------------------------------------------------------------------
ESTIMATORS = {
    "k1": (penalty.k1, {}),
    "k2": (penalty.k2, {}),
    "k3": (penalty.k3, {}),
    'k1(gradient="k2")': (penalty.k1, {"gradient": "k2"}),
    'k3(gradient="k2")': (penalty.k3, {"gradient": "k2"}),
}
COLUMNS = ("loss, x∼π", "loss, x∼μ", "loss, x∼μ, weight stopped", "loss, x∼μ, weight", "reward")


def docs_table():
    """{(estimator, column): label} from the gradient table of docs/estimators.md."""
    text = DOCS.read_text(encoding="utf-8")
    header = "| penalty | " + " | ".join(COLUMNS) + " |"
    assert header in text, f"docs/estimators.md lost the gradient table header {header!r}"
    lines = text[text.index(header) :].splitlines()[2:]
    table = {}
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("**", "") for c in line.strip("|").split("|")]
        name = cells[0].strip("`")
        assert len(cells) == len(COLUMNS) + 1, line
        for column, label in zip(COLUMNS, cells[1:], strict=True):
            table[name, column] = label
    return table


TABLE = docs_table()


def test_the_docs_table_covers_every_estimator_and_column():
    assert {name for name, _ in TABLE} == set(ESTIMATORS)
    assert len(TABLE) == len(ESTIMATORS) * len(COLUMNS)
    assert set(TABLE.values()) <= set(exact_quantities())


# ----------------------------------------------------------------------------------------------
# Per-token surrogates: what a training loop differentiates in each column
# ----------------------------------------------------------------------------------------------
def surrogate(column, fn, kwargs, logp, logr, logb):
    """The per-token objective whose gradient the column's training step takes."""
    if column == "loss, x∼π" or column == "loss, x∼μ":
        return fn(logp, logr, **kwargs)
    if column == "loss, x∼μ, weight stopped":
        return fn(logp, logr, behavior_logprobs=logb, detach_weight=True, **kwargs)
    if column == "loss, x∼μ, weight":
        return fn(logp, logr, behavior_logprobs=logb, detach_weight=False, **kwargs)
    if column == "reward":  # REINFORCE with the penalty in the reward: sg(k) * log pi
        return fn(logp, logr, **kwargs).detach() * logp
    if column == "reward, x∼μ":  # PPO's ratio pi / mu carries the score off-policy
        return fn(logp, logr, **kwargs).detach() * torch.exp(logp - logb)
    if column == "reward, x∼μ, penalty at μ":  # the penalty computed at rollout time
        return fn(logb, logr, **kwargs).detach() * torch.exp(logp - logb)
    raise AssertionError(column)


def per_token_gradients(column, fn, kwargs, x):
    """One gradient row per token ``x`` (class indices), by autograd through kldiv.penalty."""
    theta, ref, mu = _policies()
    rows = theta.expand(len(x), K).clone().requires_grad_()
    logp = torch.log_softmax(rows, -1).gather(-1, x[:, None])[:, 0]
    logr = torch.log_softmax(ref, -1)[x]
    logb = torch.log_softmax(mu, -1)[x]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", penalty.BiasWarning)
        f = surrogate(column, fn, kwargs, logp, logr, logb)
    (grads,) = torch.autograd.grad(f.sum(), rows)
    return grads


def sampler(column):
    theta, _, mu = _policies()
    off = column.startswith("loss, x∼μ") or column.startswith("reward, x∼μ")
    return torch.softmax(mu if off else theta, -1)


def expected_gradient(column, fn, kwargs):
    """Exactly: sum over the classes, weighted by the sampling distribution."""
    probs = sampler(column)
    grads = per_token_gradients(column, fn, kwargs, torch.arange(K))
    return probs @ grads


def sampled_gradient(column, fn, kwargs, seed):
    """By Monte Carlo: mean and standard error of N seeded per-token gradients."""
    g = torch.Generator().manual_seed(seed)
    x = torch.multinomial(sampler(column), N, replacement=True, generator=g)
    grads = per_token_gradients(column, fn, kwargs, x)
    return grads.mean(0), grads.std(0) / math.sqrt(N)


def check_cell(column, fn, kwargs, label, seed):
    exact = exact_quantities()
    want = exact[label]
    torch.testing.assert_close(expected_gradient(column, fn, kwargs), want, rtol=0, atol=1e-12)
    mean, se = sampled_gradient(column, fn, kwargs, seed)
    assert torch.all((mean - want).abs() <= Z * se + 1e-12), (label, mean, want, se)
    if label != "∇KL(π‖π_ref)":  # the test can tell this cell from the right gradient
        gap = (mean - exact["∇KL(π‖π_ref)"]).abs() / se
        assert float(gap.max()) > 10, (label, gap)


CELLS = sorted(TABLE)


@pytest.mark.parametrize(("name", "column"), CELLS, ids=[f"{n} | {c}" for n, c in CELLS])
def test_gradient_table_cell(name, column):
    fn, kwargs = ESTIMATORS[name]
    check_cell(column, fn, kwargs, TABLE[name, column], seed=CELLS.index((name, column)))


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_reward_off_policy_with_the_ratio_is_the_reward_column(name):
    """With PPO's ratio pi / mu, tokens of mu give the on-policy reward gradient."""
    fn, kwargs = ESTIMATORS[name]
    check_cell("reward, x∼μ", fn, kwargs, TABLE[name, "reward"], seed=100)


def test_reward_penalty_computed_at_the_behaviour_policy():
    """verl's in-reward KL is computed at rollout time: k1 at mu, off by grad KL(pi || mu)."""
    check_cell(
        "reward, x∼μ, penalty at μ",
        penalty.k1,
        {},
        "biased: ∇KL(π‖π_ref) − ∇KL(π‖μ)",
        seed=101,
    )


def test_on_policy_weight_of_one_with_its_gradient():
    """TRL's on-policy coef_1 = exp(logp - logp.detach()): k3 gets k2's gradient, as verl's k3+."""
    theta, ref, _ = _policies()
    rows = theta.expand(K, K).clone().requires_grad_()
    logp = torch.log_softmax(rows, -1).diagonal()
    logr = torch.log_softmax(ref, -1)
    weighted = penalty.k3(logp, logr, behavior_logprobs=logp.detach(), detach_weight=False)
    straight = penalty.k3(logp, logr, gradient="k2")
    torch.testing.assert_close(weighted, penalty.k3(logp, logr), rtol=1e-15, atol=0)
    (a,) = torch.autograd.grad(weighted.sum(), rows, retain_graph=True)
    (b,) = torch.autograd.grad(straight.sum(), rows)
    torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_weighted_k3_has_the_per_token_gradient_of_the_straight_through_form():
    """Off-policy, grad(w k3) = w (k3 + 1 - r) s = w delta s: DeepSeek-V3.2's form and
    k3(gradient="k2") with a stopped weight agree token by token, not only in expectation."""
    theta, ref, mu = _policies()
    rows = theta.expand(K, K).clone().requires_grad_()
    logp = torch.log_softmax(rows, -1).diagonal()
    logr, logb = torch.log_softmax(ref, -1), torch.log_softmax(mu, -1)
    a = penalty.k3(logp, logr, behavior_logprobs=logb, detach_weight=False)
    b = penalty.k3(logp, logr, gradient="k2", behavior_logprobs=logb, detach_weight=True)
    torch.testing.assert_close(a, b, rtol=1e-15, atol=0)
    (ga,) = torch.autograd.grad(a.sum(), rows, retain_graph=True)
    (gb,) = torch.autograd.grad(b.sum(), rows)
    torch.testing.assert_close(ga, gb, rtol=1e-13, atol=1e-15)


def test_clamped_k3_in_the_loss_drops_the_clamped_tokens_gradient():
    """verl's low_var_kl (k3 at most 10): tokens above the clamp get no gradient, so the
    expected gradient is E_pi[1{k3 < c} (1 - r) s], not grad KL(pi_ref || pi)."""
    theta, ref, _ = _policies()
    ref = ref.clone()
    ref[0] = ref[0] + 4.0  # pi_ref >> pi on class 0: k3 there is above the clamp
    pi, p_ref = torch.softmax(theta, -1), torch.softmax(ref, -1)
    score = torch.eye(K, dtype=torch.float64) - pi
    logp_all, logr_all = torch.log(pi), torch.log(p_ref)
    k3 = penalty.k3(logp_all, logr_all)
    c = 0.8 * float(k3.max())
    assert float(k3[0]) > c
    kept = (k3 < c).double()
    want = (pi * kept * (1 - p_ref / pi)) @ score
    rows = theta.expand(K, K).clone().requires_grad_()
    logp = torch.log_softmax(rows, -1).diagonal()
    with pytest.warns(penalty.BiasWarning, match="per-token value"):
        f = penalty.k3(logp, logr_all, clamp_value=c)
    (grads,) = torch.autograd.grad(f.sum(), rows)
    torch.testing.assert_close(pi @ grads, want, rtol=0, atol=1e-12)
    gap = (want - _grad_of_kl(ref, "theta", theta)).abs().max()
    assert float(gap) > 0.01  # the clamp's bias is real
    assert float(kldiv.kl(Categorical(logits=theta), Categorical(logits=ref))) > float(
        (pi * torch.clamp(k3, max=c)).sum()
    )  # and the value is biased low


# ----------------------------------------------------------------------------------------------
# Values: importance-weighted forms are unbiased off-policy; straight-through keeps the value
# ----------------------------------------------------------------------------------------------
def test_importance_weighted_values_are_unbiased_off_policy():
    theta, ref, mu = _policies()
    logp_all, logr_all, logb_all = (torch.log_softmax(v, -1) for v in (theta, ref, mu))
    kl = float(kldiv.kl(Categorical(logits=theta), Categorical(logits=ref)))
    x = torch.multinomial(
        torch.softmax(mu, -1), N, replacement=True, generator=torch.Generator().manual_seed(5)
    )
    lp, lr, lb = logp_all[x], logr_all[x], logb_all[x]
    for fn in (penalty.k1, penalty.k3):
        v = fn(lp, lr, behavior_logprobs=lb, detach_weight=True)
        mean, se = float(v.mean()), float(v.std()) / math.sqrt(N)
        assert abs(mean - kl) <= Z * se, (fn.__name__, mean, kl, se)
        naive = fn(lp, lr)  # tokens of mu, no weight: the wrong expectation
        assert abs(float(naive.mean()) - kl) > 10 * float(naive.std()) / math.sqrt(N)
        # exactly, by enumeration: sum_x mu(x) w(x) k(x) = E_pi[k] = KL
        w_k = fn(logp_all, logr_all, behavior_logprobs=logb_all, detach_weight=False)
        assert float(torch.softmax(mu, -1) @ w_k) == pytest.approx(kl, rel=1e-12)


def test_straight_through_values_and_gradients(xp):
    rng = np.random.default_rng(3)
    lp, lr, lb = (rng.normal(size=(3, 4)) - 2 for _ in range(3))
    delta = lp - lr
    ref = {"k1": delta, "k2": 0.5 * delta**2, "k3": np.expm1(-delta) + delta}
    for name, fn in (("k1", penalty.k1), ("k2", penalty.k2), ("k3", penalty.k3)):
        for gradient in ("k1", "k2", "k3"):
            out = fn(xp.asarray(lp), xp.asarray(lr), gradient=gradient)
            np.testing.assert_allclose(xp.np(out), ref[name], rtol=1e-13, atol=1e-15)
        weighted = fn(
            xp.asarray(lp), xp.asarray(lr), behavior_logprobs=xp.asarray(lb), detach_weight=True
        )
        np.testing.assert_allclose(xp.np(weighted), np.exp(lp - lb) * ref[name], rtol=1e-13)


def test_straight_through_gradient_in_jax():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    lp = jnp.log(jnp.array([0.5, 0.2, 0.3]))
    lr = jnp.log(jnp.array([0.3, 0.3, 0.4]))

    def straight(a):
        return penalty.k3(a, lr, gradient="k2", reduction="sum")

    def weighted(a):
        return penalty.k3(
            a, lr, behavior_logprobs=jax.lax.stop_gradient(a), detach_weight=False, reduction="sum"
        )

    want = jax.grad(lambda a: penalty.k2(a, lr, reduction="sum"))(lp)
    np.testing.assert_allclose(jax.jit(jax.grad(straight))(lp), want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(weighted))(lp), want, rtol=1e-6)
    assert float(jax.jit(straight)(lp)) == pytest.approx(
        float(penalty.k3(lp, lr, reduction="sum")), rel=1e-6
    )


def test_infinite_kl_stays_infinite_with_a_straight_through_gradient():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = penalty.k3(np.array([-1.0, -1.0]), np.array([-np.inf, -1.5]), gradient="k2")
    assert out[0] == np.inf and np.isfinite(out[1])


# ----------------------------------------------------------------------------------------------
# Sequences: per-token losses give a partial gradient of the sequence KL
# ----------------------------------------------------------------------------------------------
def test_sequences_per_token_loss_is_partial_and_reward_to_go_is_exact():
    """Two tokens, K classes each, pi(x2 | x1) with logits theta[x1]. Tang & Munos (2025):
    a per-token k2 loss summed over positions misses the effect of x1 on the KL at position 2;
    k1 summed into the return from each position on (reward-to-go) gives the sequence KL's
    gradient exactly."""
    g = torch.Generator().manual_seed(11)
    first = torch.randn(K, generator=g, dtype=torch.float64)
    second = torch.randn(K, K, generator=g, dtype=torch.float64)
    ref1 = torch.randn(K, generator=g, dtype=torch.float64)
    ref2 = torch.randn(K, K, generator=g, dtype=torch.float64)

    def seq_kl(f, s):  # KL of the joint = KL at 1 + E_{x1 ~ pi}[KL at 2 | x1]
        kl1 = kldiv.kl(Categorical(logits=f), Categorical(logits=ref1))
        kl2 = kldiv.kl(Categorical(logits=s), Categorical(logits=ref2))
        return kl1 + torch.softmax(f, -1) @ kl2

    f0, s0 = first.clone().requires_grad_(), second.clone().requires_grad_()
    want = torch.autograd.grad(seq_kl(f0, s0), (f0, s0))

    x1, x2 = torch.arange(K).repeat_interleave(K), torch.arange(K).repeat(K)  # all sequences
    f, s = first.clone().requires_grad_(), second.clone().requires_grad_()
    lp1 = torch.log_softmax(f, -1)[x1]
    lp2 = torch.log_softmax(s, -1)[x1, x2]
    lr1, lr2 = torch.log_softmax(ref1, -1)[x1], torch.log_softmax(ref2, -1)[x1, x2]
    prob = (lp1 + lp2).exp().detach()  # exact expectation over the K * K sequences
    loss = penalty.k2(lp1, lr1) + penalty.k2(lp2, lr2)
    partial = torch.autograd.grad(prob @ loss, (f, s), retain_graph=True)
    togo1 = (penalty.k1(lp1, lr1) + penalty.k1(lp2, lr2)).detach()
    togo2 = penalty.k1(lp2, lr2).detach()
    reward = togo1 * lp1 + togo2 * lp2
    full = torch.autograd.grad(prob @ reward, (f, s))
    for got, w in zip(full, want, strict=True):
        torch.testing.assert_close(got, w, rtol=0, atol=1e-12)
    torch.testing.assert_close(partial[1], want[1], rtol=0, atol=1e-12)  # position 2: right
    # position 1 misses exactly the effect of x1 on the KL at position 2
    f1 = first.clone().requires_grad_()
    kl2 = kldiv.kl(Categorical(logits=second), Categorical(logits=ref2))
    (missing,) = torch.autograd.grad(torch.softmax(f1, -1) @ kl2, f1)
    torch.testing.assert_close(partial[0] + missing, want[0], rtol=0, atol=1e-12)
    assert float(missing.abs().max()) > 0.02


# ----------------------------------------------------------------------------------------------
# Masks are weights; reductions; bad input
# ----------------------------------------------------------------------------------------------
def test_weights_reductions(xp):
    rng = np.random.default_rng(0)
    lp, lr = rng.normal(size=(3, 5)) - 2, rng.normal(size=(3, 5)) - 2
    w = rng.random((3, 5)) * (rng.random((3, 5)) < 0.7)
    v = np.expm1(lr - lp) - (lr - lp)
    args = (xp.asarray(lp), xp.asarray(lr))
    m = xp.asarray(w)
    cases = {
        "none": w * v,
        "sum": np.sum(w * v),
        "mean": np.sum(w * v) / np.sum(w),
        "batchmean": np.sum(w * v) / 3,
    }
    for reduction, want in cases.items():
        got = penalty.k3(*args, mask=m, reduction=reduction)
        np.testing.assert_allclose(xp.np(got), want, rtol=1e-12, atol=1e-15)
    got = penalty.k3(*args, mask=m, normalizer=7.0)
    assert xp.np(got) == pytest.approx(np.sum(w * v) / 7.0, rel=1e-12)
    # bool masks are the 0/1 case; a (B, 1) per-sequence weight broadcasts over tokens
    b = w > 0
    assert xp.np(penalty.k3(*args, mask=xp.asarray(b), reduction="mean")) == pytest.approx(
        v[b].mean(), rel=1e-12
    )
    per_seq = rng.random((3, 1))
    got = penalty.k3(*args, mask=xp.asarray(per_seq), reduction="mean")
    assert xp.np(got) == pytest.approx(np.sum(per_seq * v) / (5 * per_seq.sum()), rel=1e-12)
    zero = penalty.k3(*args, mask=xp.asarray(np.zeros((3, 5))), reduction="mean")
    assert xp.np(zero) == 0.0


def test_masked_nan_counts_zero_and_unmasked_nan_propagates():
    lp = np.array([-1.0, np.nan, -2.0])
    lr = np.array([-1.5, -1.0, -2.0])
    out = penalty.k1(lp, lr, mask=np.array([1.0, 0.0, 0.5]), reduction="sum")
    assert out == pytest.approx(0.5)
    assert np.isnan(penalty.k1(lp, lr, mask=np.array([1.0, 0.3, 0.5]), reduction="sum"))


def test_weights_and_gradients_under_torch():
    lp = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64, requires_grad=True)
    lr = torch.tensor([-1.5, -1.0, -0.7], dtype=torch.float64)
    w = torch.tensor([1.0, 0.25, 0.0], dtype=torch.float64)
    loss = penalty.k2(lp, lr, mask=w, reduction="mean")
    (grad,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(grad, w * (lp - lr).detach() / w.sum(), rtol=1e-14, atol=0)
    empty = penalty.k2(lp, lr, mask=torch.zeros(3, dtype=torch.float64), reduction="mean")
    (g0,) = torch.autograd.grad(empty, lp)
    assert float(empty.detach()) == 0.0 and torch.all(g0 == 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gradient": "k4"}, "gradient: expected None"),
        ({"detach_weight": True}, "detach_weight: expected nothing without behavior_logprobs"),
        ({"behavior_logprobs": np.zeros(2)}, "detach_weight: expected True or False"),
        ({"behavior_logprobs": np.zeros(2), "detach_weight": 1}, "detach_weight: expected True"),
        ({"clamp_value": -1.0}, "clamp_value: expected a positive number"),
        ({"clamp": (2.0, 1.0)}, "clamp: expected a positive number"),
        ({"mask": np.array([1.0, -0.5]), "validate": True}, r"mask\[1\]: expected a non-neg"),
        ({"mask": np.array([1.0, np.inf]), "validate": True}, r"mask\[1\]: expected a non-neg"),
        ({"validate": "yes"}, "validate: expected True or False"),
        ({"reduction": "avg"}, "reduction"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(kldiv.KLDivError, match=match):
        penalty.k3(np.zeros(2), np.zeros(2), **kwargs)


def test_validate_rejects_nan_log_probs():
    with pytest.raises(kldiv.KLDivError, match=r"logp\[1\]: expected a log-probability"):
        penalty.k1(np.array([0.0, np.nan]), np.zeros(2), validate=True)
    with pytest.raises(kldiv.KLDivError, match=r"behavior_logprobs\[0\]"):
        penalty.k1(
            np.zeros(2),
            np.zeros(2),
            behavior_logprobs=np.array([np.inf, 0.0]),
            detach_weight=True,
            validate=True,
        )


def test_mc_names_are_re_exports():
    from kldiv import mc

    assert mc.k1 is penalty.k1 and mc.k2 is penalty.k2 and mc.k3 is penalty.k3
    assert mc.BiasWarning is penalty.BiasWarning
    assert set(penalty.__all__) == {"ESTIMATORS", "BiasWarning", "k1", "k2", "k3"}
    assert re.search(r"k1\+", penalty.__doc__)  # verl's names are cited for the auditor
