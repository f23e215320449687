"""Mixed precision: under torch.autocast (bf16 and fp16 on CPU) the losses compute in float32,
return float32, and are finite wherever the float32 result is."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kldiv.torch import BernoulliKLLoss, CategoricalKLLoss, NormalKLLoss  # noqa: E402

HALF = [torch.bfloat16, torch.float16]


class Encoder(torch.nn.Module):
    """A linear layer whose outputs autocast makes half precision."""

    def __init__(self, d_in=6, d_out=8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = torch.nn.Linear(d_in, 2 * d_out)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(self.lin.weight.shape, generator=g))

    def forward(self, x):
        return self.lin(x).chunk(2, dim=-1)


@pytest.mark.parametrize("dtype", HALF)
def test_normal_loss_under_autocast_is_float32(dtype):
    enc = Encoder()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    loss_fn = NormalKLLoss(param="log_var")
    with torch.autocast("cpu", dtype=dtype):
        mu, lv = enc(x)
        assert mu.dtype == dtype  # autocast did make the activations half precision
        loss = loss_fn(mu, lv)
    assert loss.dtype == torch.float32
    # the same half-precision activations computed in float32 outside autocast
    want = loss_fn(mu.detach().float(), lv.detach().float())
    torch.testing.assert_close(loss.detach(), want, rtol=0, atol=0)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())


@pytest.mark.parametrize("dtype", HALF)
def test_categorical_and_bernoulli_under_autocast(dtype):
    g = torch.Generator().manual_seed(2)
    lin = torch.nn.Linear(4, 10)
    x = torch.randn(3, 7, 4, generator=g)
    teacher = torch.randn(3, 7, 10, generator=g) * 3
    valid = torch.rand(3, 7, generator=g) > 0.3
    with torch.autocast("cpu", dtype=dtype):
        student = lin(x)
        assert student.dtype == dtype
        cat = CategoricalKLLoss(p_param="logits", q_param="logits")(teacher, student, mask=valid)
        bern = BernoulliKLLoss(p_param="logits", q_param="logits")(student[..., 0], teacher[..., 0])
    assert cat.dtype == bern.dtype == torch.float32
    want = CategoricalKLLoss(p_param="logits", q_param="logits")(
        teacher, student.detach().float(), mask=valid
    )
    torch.testing.assert_close(cat.detach(), want, rtol=0, atol=0)
    (cat + bern).backward()
    assert torch.isfinite(lin.weight.grad).all()


def test_finite_where_float32_is():
    """A KL of 3.6e5 overflows float16 (max 65504) but not float32: the loss stays finite."""
    mu = torch.full((2, 8), 300.0, dtype=torch.float16, requires_grad=True)
    lv = torch.full((2, 8), -3.0, dtype=torch.float16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = NormalKLLoss(param="log_var", reduction="sum")(mu, lv)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and float(loss.detach()) > 65504
    want = NormalKLLoss(param="log_var", reduction="sum")(mu.detach().float(), lv.detach().float())
    torch.testing.assert_close(loss.detach(), want)
    loss.backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(lv.grad).all()
    # the hand-written formula in float16 overflows to inf on the same input
    hand = -0.5 * torch.sum(1 + lv - mu.pow(2) - lv.exp())
    assert not torch.isfinite(hand)


def test_tiny_kl_in_bfloat16_stays_non_negative():
    """sigma = 1 + 2**-7 in bf16: the hand-written formula rounds to 0 or below; kldiv doesn't."""
    lv = torch.full((4, 8), 2 * 2**-7, dtype=torch.bfloat16)  # exact in bf16
    mu = torch.zeros(4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = NormalKLLoss(param="log_var")(mu, lv)
        hand = (-0.5 * torch.sum(1 + lv - mu.pow(2) - lv.exp(), dim=-1)).mean()
    d = float(lv[0, 0])
    exact = 8 * 0.5 * (torch.tensor(d, dtype=torch.float64).expm1() - d)
    assert float(loss) == pytest.approx(float(exact), rel=1e-6)
    assert float(hand) <= 0.0
