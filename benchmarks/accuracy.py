"""Accuracy of kldiv against the usual alternatives, each judged against mpmath (50 digits) on
the exact floating-point inputs. Prints one table; every figure in README's accuracy section
comes from here.

    python benchmarks/accuracy.py
"""

from __future__ import annotations

import mpmath as mp
import numpy as np

import kldiv
from kldiv import Categorical, Normal

mp.mp.dps = 50


def rel(got: float, want: mp.mpf) -> str:
    if not np.isfinite(got):
        return f"{got}"
    return f"{float(abs(mp.mpf(float(got)) - want) / abs(want)):.1e}"


def normal_near_equal_float32() -> list[tuple[str, str, str]]:
    import torch

    s = np.float32(1 + 1e-4)
    sm = mp.mpf(float(s))
    want = -mp.log(sm) + sm**2 / 2 - mp.mpf(1) / 2  # KL(N(0, s^2) || N(0, 1))
    ts = torch.tensor(float(s), dtype=torch.float32)
    d = torch.distributions
    torch_val = d.kl_divergence(d.Normal(0.0, ts), d.Normal(0.0, 1.0)).item()
    lv = 2 * torch.log(ts)
    vae_val = (-0.5 * (1 + lv - lv.exp())).item()  # the hand-written VAE term, mu = 0
    kl_val = float(kldiv.kl(Normal(torch.zeros(()), std=ts), Normal.standard()))
    case = "Normal, σ = 1 + 1e-4, float32"
    return [
        (case, "torch.distributions", rel(torch_val, want)),
        (case, "hand-written VAE formula", rel(vae_val, want)),
        (case, "kldiv", rel(kl_val, want)),
    ]


def keras_clipping() -> list[tuple[str, str, str]]:
    p = np.array([1.0, 0.0])
    q = np.array([1e-12, 1 - 1e-12])
    want = mp.log(1 / mp.mpf(1e-12))
    eps = 1e-7
    pc, qc = np.clip(p, eps, 1), np.clip(q, eps, 1)
    keras_val = float(np.sum(pc * np.log(pc / qc)))
    kl_val = float(kldiv.kl(Categorical(probs=p), Categorical(probs=q)))
    case = f"one-hot p, q = 1e-12 on its class (true KL {float(want):.2f})"
    return [
        (case, f"Keras-style clip at 1e-7 (gives {keras_val:.2f})", rel(keras_val, want)),
        (case, f"kldiv (gives {kl_val:.2f})", rel(kl_val, want)),
    ]


def categorical_near_equal() -> list[tuple[str, str, str]]:
    import torch

    rng = np.random.default_rng(0)
    a = rng.normal(size=8)
    b = a + 1e-9 * rng.normal(size=8)
    pa = [mp.e ** mp.mpf(x) for x in a]
    pb = [mp.e ** mp.mpf(x) for x in b]
    za, zb = mp.fsum(pa), mp.fsum(pb)
    want = mp.fsum((x / za) * mp.log((x / za) / (y / zb)) for x, y in zip(pa, pb, strict=False))
    ta, tb = torch.tensor(a), torch.tensor(b)
    d = torch.distributions
    torch_val = d.kl_divergence(d.Categorical(logits=ta), d.Categorical(logits=tb)).item()
    f = torch.nn.functional
    kl_div_val = f.kl_div(
        f.log_softmax(tb, -1), f.log_softmax(ta, -1), log_target=True, reduction="sum"
    ).item()
    kl_val = float(kldiv.kl(Categorical(logits=a), Categorical(logits=b)))
    case = f"logits a vs a + 1e-9·noise, float64 (KL = {float(want):.1e})"
    return [
        (case, "torch.distributions", rel(torch_val, want)),
        (case, "F.kl_div(log_softmax, log_softmax)", rel(kl_div_val, want)),
        (case, "kldiv", rel(kl_val, want)),
    ]


def nan_gradient() -> list[tuple[str, str, str]]:
    import torch

    d = torch.distributions
    logits = torch.tensor([0.0, 0.0, -float("inf")], requires_grad=True)
    q = torch.tensor([0.0, 1.0, 2.0])
    d.kl_divergence(d.Categorical(logits=logits), d.Categorical(logits=q)).backward()
    torch_grad = logits.grad.clone()
    logits.grad = None
    kldiv.kl(Categorical(logits=logits), Categorical(logits=q)).backward()
    case = "gradient of KL at logits [0, 0, -inf]"
    return [
        (case, "torch.distributions", str(torch_grad.tolist())),
        (case, "kldiv", str([round(v, 4) for v in logits.grad.tolist()])),
    ]


def main() -> None:
    rows = (
        normal_near_equal_float32() + categorical_near_equal() + keras_clipping() + nan_gradient()
    )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    header = ("case", "implementation", "relative error (or value)")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=False)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)))


if __name__ == "__main__":
    main()
