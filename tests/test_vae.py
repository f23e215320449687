"""kldiv.vae: schedules against hand-computed values, free bits against a brute-force formula
(values on every backend, gradients with torch autograd and jax.grad), diagnostics against
direct NumPy computations, and docs/vae.md's snippets."""

from __future__ import annotations

import contextlib
import io
import math
import pathlib
import re

import numpy as np
import pytest

import kldiv
from kldiv import KLDivError, Normal, vae

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "vae.md"

# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


def test_constant():
    assert vae.constant(0) == 1.0
    assert vae.constant(10**9, beta=4) == 4.0
    assert type(vae.constant(3, beta=np.float32(0.5))) is float


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.1),
        (25, 0.1 + 0.9 * 0.25),
        (50, 0.55),
        (99, 0.1 + 0.9 * 0.99),
        (100, 1.0),
        (10**6, 1.0),
    ],
)
def test_linear_warmup_values(step, expected):
    assert vae.linear_warmup(step, warmup_steps=100, start=0.1) == pytest.approx(
        expected, abs=1e-15
    )


def test_linear_warmup_edges():
    assert [vae.linear_warmup(t, warmup_steps=0) for t in (0, 1, 5)] == [1.0, 1.0, 1.0]
    assert vae.linear_warmup(100, warmup_steps=100, start=0.3, end=0.7) == 0.7  # exactly end
    assert vae.linear_warmup(2, warmup_steps=4, start=1.0, end=0.0) == 0.5  # decreasing is fine
    assert vae.linear_warmup(2.5, warmup_steps=10) == 0.25  # fractional steps (epochs)
    assert type(vae.linear_warmup(np.int64(3), warmup_steps=np.int32(6))) is float


# period 10, ratio 0.5: ramp 0, .2, .4, .6, .8 over steps 0..4, hold 1 over 5..9, restart at 10
CYCLICAL = [
    (0, 0.0),
    (1, 0.2),
    (4, 0.8),
    (5, 1.0),  # the end of the ramp: tau = R
    (9, 1.0),  # the last step of a cycle
    (10, 0.0),  # a cycle boundary: back to start
    (11, 0.2),
    (15, 1.0),
    (19, 1.0),
    (20, 0.0),
    (37, 1.0),
]


@pytest.mark.parametrize(("step", "expected"), CYCLICAL)
def test_cyclical_values(step, expected):
    assert vae.cyclical(step, period=10, ratio=0.5) == pytest.approx(expected, abs=1e-15)


def test_cyclical_cycles_then_hold():
    kw = {"period": 10, "ratio": 0.5, "cycles": 2}
    got = [vae.cyclical(t, **kw) for t in (0, 3, 10, 13, 19, 20, 23, 1000)]
    assert got == pytest.approx([0.0, 0.6, 0.0, 0.6, 1.0, 1.0, 1.0, 1.0], abs=1e-15)


def test_cyclical_ratio_one_start_end():
    kw = {"period": 4, "ratio": 1.0, "start": 0.5, "end": 1.5}
    got = [vae.cyclical(t, **kw) for t in range(9)]
    assert got == pytest.approx([0.5, 0.75, 1.0, 1.25, 0.5, 0.75, 1.0, 1.25, 0.5], abs=1e-15)


def _fu_et_al(n_iter, start, stop, n_cycle, ratio):
    """Fu et al.'s reference ``frange_cycle_linear``, transcribed (0-indexed steps)."""
    out = np.ones(n_iter) * stop
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            out[int(i + c * period)] = v
            v += step
            i += 1
    return out


@pytest.mark.parametrize(("n_iter", "n_cycle", "ratio"), [(400, 4, 0.5), (120, 3, 0.25)])
def test_cyclical_matches_the_papers_code(n_iter, n_cycle, ratio):
    ref = _fu_et_al(n_iter, 0.0, 1.0, n_cycle, ratio)
    period = n_iter // n_cycle
    got = [vae.cyclical(t, period=period, ratio=ratio, cycles=n_cycle) for t in range(n_iter)]
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_cyclical_one_cycle_of_ratio_one_is_linear_warmup():
    for t in range(30):
        assert vae.cyclical(t, period=12, ratio=1.0, cycles=1) == pytest.approx(
            vae.linear_warmup(t, warmup_steps=12), abs=1e-15
        )


def test_sigmoid_values():
    def logistic(z):
        return 1.0 / (1.0 + math.exp(-z))

    assert vae.sigmoid(100, center=100, width=10) == 0.5
    assert vae.sigmoid(110, center=100, width=10) == pytest.approx(logistic(1.0), rel=1e-15)
    assert vae.sigmoid(0, center=100, width=10) == pytest.approx(logistic(-10.0), rel=1e-14)
    got = vae.sigmoid(50, center=100, width=25, start=0.2, end=1.2)
    assert got == pytest.approx(0.2 + logistic(-2.0), rel=1e-15)
    # Bowman et al.: k = 0.0025, x0 = 2500
    assert vae.sigmoid(3000, center=2500, width=400) == pytest.approx(logistic(1.25), rel=1e-15)
    # far tails: no overflow, the asymptotes
    assert vae.sigmoid(10**9, center=0, width=1e-3) == 1.0
    assert vae.sigmoid(0, center=10**9, width=1e-3, start=0.3) == 0.3


SCHEDULE_ERRORS = [
    (vae.constant, (-1,), {}, "step"),
    (vae.constant, (True,), {}, "step"),
    (vae.constant, ("3",), {}, "step"),
    (vae.constant, (math.nan,), {}, "step"),
    (vae.constant, (0,), {"beta": -1.0}, "beta"),
    (vae.constant, (0,), {"beta": math.inf}, "beta"),
    (vae.linear_warmup, (0,), {"warmup_steps": -1}, "warmup_steps"),
    (vae.linear_warmup, (0,), {"warmup_steps": 2.5}, "warmup_steps"),
    (vae.linear_warmup, (0,), {"warmup_steps": 5, "start": -0.1}, "start"),
    (vae.linear_warmup, (0,), {"warmup_steps": 5, "end": math.nan}, "end"),
    (vae.cyclical, (0,), {"period": 0}, "period"),
    (vae.cyclical, (0,), {"period": 10.0}, "period"),
    (vae.cyclical, (0,), {"period": 10, "ratio": 0.0}, "ratio"),
    (vae.cyclical, (0,), {"period": 10, "ratio": 1.5}, "ratio"),
    (vae.cyclical, (0,), {"period": 10, "cycles": 0}, "cycles"),
    (vae.cyclical, (0,), {"period": 10, "end": "1"}, "end"),
    (vae.sigmoid, (0,), {"center": 10, "width": 0}, "width"),
    (vae.sigmoid, (0,), {"center": math.inf, "width": 1}, "center"),
    (vae.sigmoid, (-5,), {"center": 10, "width": 1}, "step"),
]


@pytest.mark.parametrize(("fn", "args", "kwargs", "name"), SCHEDULE_ERRORS)
def test_schedule_errors_name_the_argument(fn, args, kwargs, name):
    with pytest.raises(KLDivError, match=rf"^{name}: expected .*, got "):
        fn(*args, **kwargs)


def test_schedule_options_are_keyword_only():
    with pytest.raises(TypeError):
        vae.linear_warmup(3, 10)  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------
# Free bits
# ----------------------------------------------------------------------------------------------


def _brute_free_bits(kl, threshold, labels=None, reduction="sum"):
    """Kingma et al.'s formula with Python loops: sum over groups of max(lambda, batch mean)."""
    kl = np.asarray(kl, dtype=np.float64)
    flat = kl.reshape(-1, kl.shape[-1])
    d = flat.shape[1]
    labels = list(range(d)) if labels is None else list(labels)
    out = []
    for g in sorted(set(labels)):
        total = 0.0
        for row in flat:
            total += sum(float(row[j]) for j in range(d) if labels[j] == g)
        out.append(max(threshold, total / flat.shape[0]))
    return np.array(out) if reduction == "none" else sum(out)


def _kl_values(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.gamma(0.5, 0.4, size=shape)  # non-negative, many below the thresholds used


@pytest.mark.parametrize(
    ("groups", "labels"),
    [(None, None), (3, [0, 0, 1, 1, 2, 2]), ([2, 0, 2, 1, 0, 0], [2, 0, 2, 1, 0, 0])],
)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_free_bits_values(xp, groups, labels, reduction):
    kl = _kl_values((5, 6))
    expected = _brute_free_bits(kl, 0.2, labels, reduction)

    def fn(v):
        return vae.free_bits(v, threshold=0.2, groups=groups, reduction=reduction)

    out = xp.call(fn, xp.asarray(kl))
    assert xp.dtype_name(out) == "float64"
    assert tuple(out.shape) == (() if reduction == "sum" else np.shape(expected))
    np.testing.assert_allclose(xp.np(out), expected, rtol=1e-13)


def test_free_bits_batch_axes_and_latent_axis(xp):
    kl = _kl_values((3, 4, 5), seed=1)  # (B, T, D): B and T both averaged over
    expected = _brute_free_bits(kl, 0.1)
    out = xp.call(lambda v: vae.free_bits(v, threshold=0.1), xp.asarray(kl))
    np.testing.assert_allclose(xp.np(out), expected, rtol=1e-13)
    moved = np.moveaxis(kl, -1, 0)  # (D, B, T) with axis=0
    out0 = xp.call(lambda v: vae.free_bits(v, threshold=0.1, axis=0), xp.asarray(moved))
    np.testing.assert_allclose(xp.np(out0), expected, rtol=1e-13)


def test_free_bits_float32(xp):
    kl = _kl_values((4, 3), seed=2)
    out = xp.call(lambda v: vae.free_bits(v, threshold=0.3), xp.asarray(kl, "float32"))
    assert xp.dtype_name(out) == "float32"
    np.testing.assert_allclose(xp.np(out), _brute_free_bits(kl, 0.3), rtol=1e-6)


def test_free_bits_at_zero_threshold_is_the_vae_term():
    rng = np.random.default_rng(3)
    mu, lv = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
    post = Normal(mu, log_var=lv)
    per_dim = kldiv.kl(post, Normal.standard())
    vae_term = kldiv.kl(post, Normal.standard(), event_axis=-1, reduction="mean")
    assert float(vae.free_bits(per_dim, threshold=0.0)) == pytest.approx(float(vae_term), 1e-14)
    assert float(vae.free_bits(per_dim, threshold=0.0, groups=2)) == pytest.approx(
        float(vae_term), rel=1e-14
    )


def test_free_bits_does_not_mutate_and_keeps_nan():
    kl = _kl_values((4, 3))
    kl[0, 1] = np.nan
    copy = kl.copy()
    out = vae.free_bits(kl, threshold=10.0, reduction="none")
    np.testing.assert_array_equal(kl, copy)
    assert np.isnan(out[1]) and out[0] == 10.0 and out[2] == 10.0


def test_free_bits_torch_gradient_against_brute_force():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    b, d, lam = 6, 5, 0.3
    mu0 = rng.normal(size=(b, d)) * np.array([1.0, 0.1, 0.8, 0.05, 0.5])
    lv0 = rng.normal(scale=0.2, size=(b, d))
    mu = torch.tensor(mu0, requires_grad=True)
    lv = torch.tensor(lv0, requires_grad=True)
    per_dim = kldiv.kl(Normal(mu, log_var=lv), Normal.standard())  # (B, D)
    vae.free_bits(per_dim, threshold=lam).backward()
    # brute force: KL_bd = (mu^2 + e^lv - 1 - lv) / 2; a dimension whose batch mean is below
    # lambda gets no gradient, the others d/dmu = mu / B, d/dlv = (e^lv - 1) / (2 B)
    kl_bd = 0.5 * (mu0**2 + np.exp(lv0) - 1 - lv0)
    active = kl_bd.mean(axis=0) >= lam
    assert 0 < active.sum() < d  # both cases are exercised
    np.testing.assert_allclose(mu.grad.numpy(), np.where(active, mu0 / b, 0.0), rtol=1e-12)
    expected_lv = np.where(active, np.expm1(lv0) / (2 * b), 0.0)
    np.testing.assert_allclose(lv.grad.numpy(), expected_lv, rtol=1e-12, atol=1e-300)


def test_free_bits_torch_gradient_per_group():
    torch = pytest.importorskip("torch")
    kl0 = _kl_values((4, 6), seed=5)
    labels = [0, 1, 0, 1, 2, 2]
    kl = torch.tensor(kl0, requires_grad=True)
    vae.free_bits(kl, threshold=0.38, groups=labels).backward()
    group_means = {
        g: kl0[:, [j for j in range(6) if labels[j] == g]].sum(1).mean() for g in (0, 1, 2)
    }
    expected = np.array([[0.25 if group_means[g] >= 0.38 else 0.0 for g in labels]] * 4)
    assert 0 < (expected > 0).sum() < expected.size
    np.testing.assert_allclose(kl.grad.numpy(), expected, rtol=1e-15)


def test_free_bits_torch_half_precision():
    torch = pytest.importorskip("torch")
    kl = torch.tensor(_kl_values((4, 3)), dtype=torch.float16)
    out = vae.free_bits(kl, threshold=0.1)
    assert out.dtype == torch.float16
    np.testing.assert_allclose(float(out), _brute_free_bits(kl.double().numpy(), 0.1), rtol=1e-3)


def test_free_bits_jax_gradient():
    jax = pytest.importorskip("jax")
    kl0 = _kl_values((5, 4), seed=6)
    grad = jax.jit(jax.grad(lambda v: vae.free_bits(v, threshold=0.2)))(jax.numpy.asarray(kl0))
    active = kl0.mean(axis=0) >= 0.2
    assert 0 < active.sum() < 4
    np.testing.assert_allclose(np.asarray(grad), np.where(active, 1 / 5, 0.0) * np.ones((5, 4)))


FREE_BITS_ERRORS = [
    ({"kl": np.ones(4)}, "kl"),  # per-example totals, not per-dimension values
    ({"kl": np.ones((2, 3), dtype=np.int64)}, "kl"),
    ({"kl": "x"}, "kl"),
    ({"threshold": -0.1}, "threshold"),
    ({"threshold": None}, "threshold"),
    ({"groups": 4}, "groups"),  # does not divide D = 6
    ({"groups": 0}, "groups"),
    ({"groups": [0, 1]}, "groups"),
    ({"groups": [0.0] * 6}, "groups"),
    ({"groups": "abc"}, "groups"),
    ({"reduction": "mean"}, "reduction"),
    ({"axis": 2}, "axis"),
    ({"axis": (0, 1)}, "axis"),
]


@pytest.mark.parametrize(("kwargs", "name"), FREE_BITS_ERRORS)
def test_free_bits_errors(kwargs, name):
    args = {"kl": np.ones((2, 6)), "threshold": 0.1, **kwargs}
    kl = args.pop("kl")
    with pytest.raises(KLDivError, match=rf"^{name}: expected .*, got "):
        vae.free_bits(kl, **args)


# ----------------------------------------------------------------------------------------------
# Diagnostics
# ----------------------------------------------------------------------------------------------


def test_kl_per_dim(xp):
    rng = np.random.default_rng(7)
    mu, lv = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    direct = (0.5 * (mu**2 + np.exp(lv) - 1 - lv)).mean(axis=0)

    def fn(m, v):
        return vae.kl_per_dim(Normal(m, log_var=v))

    out = xp.call(fn, xp.asarray(mu), xp.asarray(lv))
    assert tuple(out.shape) == (3,)
    np.testing.assert_allclose(xp.np(out), direct, rtol=1e-13)


def test_kl_per_dim_prior_axis_and_total():
    rng = np.random.default_rng(8)
    mu, std = rng.normal(size=(4, 5, 3)), rng.uniform(0.5, 2.0, size=(4, 5, 3))
    prior = Normal(np.full(3, 0.5), std=np.full(3, 2.0))
    direct = (np.log(2.0 / std) + (std**2 + (mu - 0.5) ** 2) / 8.0 - 0.5).mean(axis=(0, 1))
    np.testing.assert_allclose(vae.kl_per_dim(Normal(mu, std=std), prior), direct, rtol=1e-13)
    moved = Normal(np.moveaxis(mu, -1, 0), std=np.moveaxis(std, -1, 0))
    prior0 = Normal(np.full((3, 1, 1), 0.5), std=np.full((3, 1, 1), 2.0))
    np.testing.assert_allclose(vae.kl_per_dim(moved, prior0, axis=0), direct, rtol=1e-13)
    post = Normal(mu, std=std)
    total = kldiv.kl(post, Normal.standard(), event_axis=-1, reduction="mean")
    assert float(np.sum(vae.kl_per_dim(post))) == pytest.approx(float(total), rel=1e-13)


def test_kl_per_dim_errors():
    with pytest.raises(KLDivError, match=r"^posterior: expected a kldiv.Normal"):
        vae.kl_per_dim(np.zeros((2, 2)))  # type: ignore[arg-type]
    with pytest.raises(KLDivError, match=r"^prior: expected a kldiv.Normal"):
        vae.kl_per_dim(Normal(np.zeros((2, 2)), std=1.0), "standard")  # type: ignore[arg-type]
    with pytest.raises(KLDivError, match=r"^posterior: expected a Normal with a latent axis"):
        vae.kl_per_dim(Normal(0.0, std=2.0))
    with pytest.raises(KLDivError, match=r"^axis: expected an axis"):
        vae.kl_per_dim(Normal(np.zeros((2, 2)), std=1.0), axis=3)


def test_activity_and_active_units(xp):
    rng = np.random.default_rng(9)
    mu = rng.normal(size=(50, 6)) * np.array([1.0, 0.5, 0.2, 0.05, 0.01, 0.0])
    direct = np.var(mu, axis=0)
    out = xp.call(vae.activity, xp.asarray(mu))
    assert tuple(out.shape) == (6,)
    np.testing.assert_allclose(xp.np(out), direct, rtol=1e-12, atol=1e-300)
    assert vae.active_units(xp.asarray(mu)) == int(np.sum(direct > 0.01)) == 3
    assert vae.active_units(xp.asarray(mu), threshold=1e-6) == int(np.sum(direct > 1e-6))


def test_activity_batch_axes_and_latent_axis():
    rng = np.random.default_rng(10)
    mu = rng.normal(size=(7, 3, 4)) * np.array([1.0, 0.1, 0.01, 0.3])
    direct = np.var(mu.reshape(-1, 4), axis=0)
    np.testing.assert_allclose(vae.activity(mu), direct, rtol=1e-12)
    np.testing.assert_allclose(vae.activity(np.moveaxis(mu, -1, 0), axis=0), direct, rtol=1e-12)
    assert vae.active_units(np.moveaxis(mu, -1, 1), axis=1) == int(np.sum(direct > 0.01))
    copy = mu.copy()
    vae.activity(mu)
    np.testing.assert_array_equal(mu, copy)


def test_activity_errors():
    with pytest.raises(KLDivError, match=r"^loc: expected posterior means of shape"):
        vae.activity(np.zeros(5))
    with pytest.raises(KLDivError, match=r"^loc: expected a real floating-point array"):
        vae.activity(np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(KLDivError, match=r"^threshold: expected a finite number >= 0"):
        vae.active_units(np.zeros((3, 2)), threshold=-1.0)


def test_public_module():
    assert kldiv.vae is vae
    assert set(vae.__all__) == {
        "constant",
        "linear_warmup",
        "cyclical",
        "sigmoid",
        "free_bits",
        "kl_per_dim",
        "activity",
        "active_units",
    }


# ----------------------------------------------------------------------------------------------
# docs/vae.md
# ----------------------------------------------------------------------------------------------


def _doc_blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_docs_snippets_run():
    blocks = _doc_blocks()
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {})


def test_docs_schedule_table_is_what_the_code_prints():
    text = DOC.read_text()
    code, printed = re.search(
        r"<!-- schedule-table -->\n```python\n(.*?)```\n\n```text\n(.*?)```", text, flags=re.S
    ).groups()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOC), "exec"), {})
    assert out.getvalue() == printed
