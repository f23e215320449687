"""The loss modules: options checked at construction, values through kldiv.kl, masks and
normalizers, repr, state_dict and pickling, no mutation, and torch.compile(fullgraph=True)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import kldiv  # noqa: E402
from kldiv import Bernoulli, Categorical, Normal  # noqa: E402
from kldiv.torch import BernoulliKLLoss, CategoricalKLLoss, NormalKLLoss  # noqa: E402

SCALES = ("std", "var", "log_std", "log_var")


def as_param(std, param):
    return {"std": std, "var": std**2, "log_std": std.log(), "log_var": 2 * std.log()}[param]


def normal_reference(mu, std, mu0, std0):
    """Elementwise KL(N(mu, std^2) || N(mu0, std0^2)) in float64 (the textbook formula)."""
    mu, std, mu0, std0 = (np.asarray(x, dtype=np.float64) for x in (mu, std, mu0, std0))
    return np.log(std0 / std) + (std**2 + (mu - mu0) ** 2) / (2 * std0**2) - 0.5


# ------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: NormalKLLoss(param="sigma"), "param: expected one of 'std', 'var', 'log_std'"),
        (lambda: NormalKLLoss(param="std", prior_param="logvar"), "prior_param: expected one of"),
        (lambda: NormalKLLoss(param="std", reduction="avg"), "'none', 'sum', 'mean', 'batchmean'"),
        (lambda: NormalKLLoss(param="std", event_axis=1.0), "event_axis: expected an int"),
        (lambda: NormalKLLoss(param="std", event_axis=(1, 1)), "event_axis: expected distinct"),
        (lambda: CategoricalKLLoss(p_param="prob", q_param="logits"), "'probs', 'logits', 'log"),
        (lambda: CategoricalKLLoss(p_param="probs", q_param=None), "q_param: expected one of"),
        (lambda: CategoricalKLLoss(p_param="probs", q_param="logits", axis=(0, 1)), "axis: exp"),
        (lambda: CategoricalKLLoss(p_param="probs", q_param="logits", axis=None), "axis: exp"),
        # the class axis is one int: the message must not offer a tuple
        (
            lambda: CategoricalKLLoss(p_param="probs", q_param="logits", axis=None),
            "axis: expected an int, got NoneType None",
        ),
        (
            lambda: CategoricalKLLoss(p_param="probs", q_param="logits", axis=True),
            "axis: expected an int, got bool True",
        ),
        (lambda: BernoulliKLLoss(p_param="log_probs", q_param="probs"), "'probs', 'logits'"),
        (lambda: BernoulliKLLoss(p_param="probs", q_param="probs", reduction=None), "reduction"),
    ],
)
def test_bad_options_raise_at_construction(make, needle):
    with pytest.raises(kldiv.KLDivError, match="expected") as err:
        make()
    assert needle in str(err.value)


def test_parametrization_is_required():
    with pytest.raises(TypeError):
        NormalKLLoss()
    with pytest.raises(TypeError):
        CategoricalKLLoss(p_param="probs")


def test_repr_shows_the_options():
    assert repr(NormalKLLoss(param="log_std", event_axis=1)) == (
        "NormalKLLoss(param='log_std', prior_param='log_std', event_axis=1, reduction='mean')"
    )
    assert repr(CategoricalKLLoss(p_param="logits", q_param="log_probs", reduction="sum")) == (
        "CategoricalKLLoss(p_param='logits', q_param='log_probs', axis=-1, event_axis=None, "
        "reduction='sum')"
    )
    assert repr(BernoulliKLLoss(p_param="probs", q_param="logits", event_axis=(1, 2))) == (
        "BernoulliKLLoss(p_param='probs', q_param='logits', event_axis=(1, 2), reduction='mean')"
    )


# ------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("param", SCALES)
def test_normal_against_the_standard_prior(param):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=g, dtype=torch.float64)
    std = torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.3
    ref = normal_reference(mu, std, 0.0, 1.0)
    loss = NormalKLLoss(param=param)
    np.testing.assert_allclose(float(loss(mu, as_param(std, param))), ref.sum(-1).mean(), 1e-13)
    elementwise = NormalKLLoss(param=param, event_axis=None, reduction="none")
    np.testing.assert_allclose(elementwise(mu, as_param(std, param)).numpy(), ref, 1e-13)
    summed = NormalKLLoss(param=param, reduction="sum")
    np.testing.assert_allclose(float(summed(mu, as_param(std, param))), ref.sum(), 1e-13)


@pytest.mark.parametrize("prior_param", SCALES)
def test_normal_with_a_prior_per_call(prior_param):
    g = torch.Generator().manual_seed(1)
    mu, mu0 = torch.randn(2, 4, 3, generator=g, dtype=torch.float64).unbind(0)
    std, std0 = (torch.rand(2, 4, 3, generator=g, dtype=torch.float64) + 0.3).unbind(0)
    loss = NormalKLLoss(param="log_var", prior_param=prior_param, reduction="none")
    got = loss(mu, as_param(std, "log_var"), mu0, as_param(std0, prior_param))
    np.testing.assert_allclose(got.numpy(), normal_reference(mu, std, mu0, std0).sum(-1), 1e-12)


def test_normal_prior_needs_both_parts():
    loss = NormalKLLoss(param="std")
    x = torch.ones(2, 3)
    with pytest.raises(kldiv.KLDivError, match="prior_scale: expected a tensor together"):
        loss(x, x, x)
    with pytest.raises(kldiv.KLDivError, match="prior_loc: expected a tensor together"):
        loss(x, x, prior_scale=x)


def test_normal_vits_layout_with_mask():
    """VITS: (B, C, T) inputs, z_mask (B, 1, T): sum over channels, mean over valid frames."""
    g = torch.Generator().manual_seed(2)
    m_q, m_p = torch.randn(2, 2, 3, 7, generator=g, dtype=torch.float64).unbind(0)
    logs_q, logs_p = (0.3 * torch.randn(2, 2, 3, 7, generator=g, dtype=torch.float64)).unbind(0)
    lengths = torch.tensor([7, 4])
    z_mask = (torch.arange(7)[None, :] < lengths[:, None])[:, None, :].double()
    loss = NormalKLLoss(param="log_std", event_axis=1)
    got = loss(m_q, logs_q, m_p, logs_p, mask=z_mask)
    per = normal_reference(m_q, logs_q.exp(), m_p, logs_p.exp())  # (B, C, T)
    want = (per * z_mask.numpy()).sum() / z_mask.sum().item()
    np.testing.assert_allclose(float(got), want, 1e-12)
    # a normalizer overrides the reduction: the sum divided by it
    got = loss(m_q, logs_q, m_p, logs_p, mask=z_mask, normalizer=torch.tensor(4.0))
    np.testing.assert_allclose(float(got), (per * z_mask.numpy()).sum() / 4.0, 1e-12)


@pytest.mark.parametrize("p_param", ["probs", "logits", "log_probs"])
@pytest.mark.parametrize("q_param", ["probs", "logits", "log_probs"])
def test_categorical_direction_and_spaces(p_param, q_param):
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 6, 5, generator=g, dtype=torch.float64).unbind(0)
    space = {"probs": lambda x: x.softmax(-1), "logits": lambda x: x, "log_probs": F.log_softmax}
    loss = CategoricalKLLoss(p_param=p_param, q_param=q_param)
    got = loss(
        space[p_param](a) if p_param != "log_probs" else F.log_softmax(a, -1),
        space[q_param](b) if q_param != "log_probs" else F.log_softmax(b, -1),
    )
    # F.kl_div(input=log q, target=p, "batchmean") is KL(p || q) averaged over the 6 rows
    want = F.kl_div(F.log_softmax(b, -1), a.softmax(-1), reduction="batchmean")
    np.testing.assert_allclose(float(got), float(want), 1e-12)


def test_categorical_axis_mask_and_infinite_logits():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)  # classes on axis 1
    b = a + torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    a[0, 2, 1] = b[0, 2, 1] = -math.inf
    a = a.requires_grad_()
    b = b.requires_grad_()
    valid = torch.tensor([[True, True, False, True], [True, False, False, False]])
    loss = CategoricalKLLoss(p_param="logits", q_param="logits", axis=1)
    got = loss(a, b, mask=valid)
    got.backward()
    per = kldiv.kl(Categorical(logits=a.detach(), axis=1), Categorical(logits=b.detach(), axis=1))
    np.testing.assert_allclose(float(got.detach()), float(per[valid].mean()), 1e-13)
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_bernoulli_matches_torch_distributions():
    g = torch.Generator().manual_seed(5)
    p = torch.rand(4, 3, generator=g, dtype=torch.float64)
    ql = torch.randn(4, 3, generator=g, dtype=torch.float64)
    want = torch.distributions.kl_divergence(
        torch.distributions.Bernoulli(probs=p), torch.distributions.Bernoulli(logits=ql)
    )
    loss = BernoulliKLLoss(p_param="probs", q_param="logits", event_axis=-1, reduction="none")
    np.testing.assert_allclose(loss(p, ql).numpy(), want.sum(-1).numpy(), 1e-12)
    assert float(BernoulliKLLoss(p_param="probs", q_param="logits")(p, ql)) == pytest.approx(
        float(want.mean()), rel=1e-12
    )


def test_modules_compute_through_kldiv_kl(monkeypatch):
    """No second copy of a formula: each module's value comes from kldiv.kl."""
    import kldiv.torch.losses as losses

    calls = []

    def spy(p, q, **kwargs):
        calls.append((type(p), type(q), kwargs["reduction"]))
        return kldiv.kl(p, q, **kwargs)

    monkeypatch.setattr(losses, "kl", spy)
    x = torch.rand(2, 3)
    NormalKLLoss(param="std")(x, x + 1)
    CategoricalKLLoss(p_param="probs", q_param="probs", reduction="sum")(x, x)
    BernoulliKLLoss(p_param="probs", q_param="probs", reduction="none")(x, x)
    assert calls == [
        (Normal, Normal, "mean"),
        (Categorical, Categorical, "sum"),
        (Bernoulli, Bernoulli, "none"),
    ]


def test_bad_inputs_raise_kldiv_errors():
    loss = NormalKLLoss(param="std")
    with pytest.raises(kldiv.KLDivError, match="expected a shape that broadcasts"):
        loss(torch.zeros(4, 3), torch.ones(4, 2))
    with pytest.raises(kldiv.KLDivError, match="mask: expected"):
        loss(torch.zeros(4, 3), torch.ones(4, 3), mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(kldiv.KLDivError, match="event_axis: expected an axis"):
        NormalKLLoss(param="std", event_axis=2)(torch.zeros(4, 3), torch.ones(4, 3))
    with pytest.raises(kldiv.KLDivError, match="real floating-point"):
        loss(torch.zeros(4, 3, dtype=torch.int64), torch.ones(4, 3))


def test_inputs_are_not_mutated():
    g = torch.Generator().manual_seed(6)
    tensors = [torch.randn(3, 4, generator=g) for _ in range(4)]
    tensors[3] = tensors[3].abs() + 0.1
    before = [t.clone() for t in tensors]
    NormalKLLoss(param="log_var", prior_param="std")(*tensors)
    CategoricalKLLoss(p_param="logits", q_param="logits")(tensors[0], tensors[1])
    BernoulliKLLoss(p_param="logits", q_param="logits")(tensors[0], tensors[1])
    for t, b in zip(tensors, before, strict=True):
        assert torch.equal(t, b)


# ------------------------------------------------------------------------------------------------
# state_dict, pickling
# ------------------------------------------------------------------------------------------------
MODULES = [
    lambda: NormalKLLoss(param="log_var", prior_param="std", event_axis=(1, 2), reduction="sum"),
    lambda: CategoricalKLLoss(p_param="probs", q_param="log_probs", axis=0, reduction="batchmean"),
    lambda: BernoulliKLLoss(p_param="logits", q_param="probs", event_axis=-1, reduction="none"),
]


@pytest.mark.parametrize("make", MODULES)
def test_state_dict_and_pickle_round_trip(make):
    m = make()
    restored = pickle.loads(pickle.dumps(m))
    assert type(restored) is type(m) and repr(restored) == repr(m)
    assert m.state_dict() == {}  # options are configuration, not learned state
    fresh = make()
    assert not fresh.load_state_dict(m.state_dict()).missing_keys
    x = torch.rand(3, 4, 5) * 0.8 + 0.1
    args = (x, x.flip(0)) if not isinstance(m, NormalKLLoss) else (x, x, x.flip(0), x.flip(1))
    torch.testing.assert_close(restored(*args), m(*args), rtol=0, atol=0)
    parent = torch.nn.Sequential(torch.nn.Linear(2, 2), m)
    child = torch.nn.Sequential(torch.nn.Linear(2, 2), make())
    child.load_state_dict(parent.state_dict())
    assert repr(pickle.loads(pickle.dumps(parent))) == repr(parent)


# ------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): one compile covers all three modules (slow)
# ------------------------------------------------------------------------------------------------
class _AllThree(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.normal = NormalKLLoss(param="log_var", event_axis=1)
        self.cat = CategoricalKLLoss(p_param="logits", q_param="log_probs")
        self.bern = BernoulliKLLoss(p_param="probs", q_param="logits", reduction="sum")

    def forward(self, mu, lv, z_mask, t, s, valid, norm, bp, bq):
        return (
            self.normal(mu, lv, mask=z_mask)
            + self.cat(t, s, mask=valid, normalizer=norm)
            + self.bern(bp, bq)
        )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_modules_compile_fullgraph():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(7)
    mu = torch.randn(2, 3, 5, generator=g, requires_grad=True)
    lv = torch.randn(2, 3, 5, generator=g, requires_grad=True)
    z_mask = torch.ones(2, 1, 5)
    z_mask[1, :, 3:] = 0
    t = torch.randn(2, 5, 7, generator=g, requires_grad=True)
    t_inf = t.detach().clone()
    t_inf[0, 0, 0] = -math.inf
    s = F.log_softmax(torch.randn(2, 5, 7, generator=g), -1).requires_grad_()
    valid = z_mask[:, 0, :].bool()
    bp, bq = torch.rand(4, generator=g), torch.randn(4, generator=g)
    args = (mu, lv, z_mask, t_inf.requires_grad_(), s, valid, torch.tensor(3.0), bp, bq)
    model = _AllThree()
    eager = model(*args)
    grads_eager = torch.autograd.grad(eager, (mu, lv, args[3], s))
    compiled = torch.compile(model, fullgraph=True)
    got = compiled(*args)
    grads = torch.autograd.grad(got, (mu, lv, args[3], s))
    torch.testing.assert_close(got, eager, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, grads_eager, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
