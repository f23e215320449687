"""A VITS-style sequence model with a flow prior: the one-sample KL against the exact KL.

VITS (Kim et al., 2021) trains a Gaussian posterior q(z | x) = N(m_q, exp(logs_q)) per frame
against a prior that is a Gaussian N(m_p, exp(logs_p)) pushed through a normalizing flow f. The
KL has no closed form, so its loss is a one-sample estimate,

    logs_p - logs_q - 1/2 + 1/2 (f(z) - m_p)^2 exp(-2 logs_p) - log|det df/dz|,

summed over channels and averaged over the valid frames of ``z_mask`` (B, 1, T). This script
trains small models of that shape on synthetic "speech" (frames of features generated from
token sequences of random lengths) and shows:

1. with an elementwise affine flow f(z) = z exp(s) + b (not volume-preserving: log|det| = sum s)
   the prior stays Gaussian, so the exact KL is known at every step: ``kldiv.mc.vits_kl`` with
   ``log_det`` tracks it, while the ``abs`` and ``clamp`` "fixes" from the VITS issue thread,
   and the estimate without the log-determinant, drift away from it; models *trained* with
   ``abs`` or ``clamp`` end up with a different KL from the one they report;
2. with affine coupling layers (VITS's flow, in its mean-only and its scaling variant) there is
   no exact KL; a 64-sample estimate with its standard error is the reference.

Run ``python examples/vits_flow.py`` (about a minute on 2 CPU cores) or ``--quick`` (seconds).
Tables go to stdout, PNG plots to ``--out`` (default ``examples/out/vits_flow/``).
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import time

import numpy as np
import torch
from torch import nn

import kldiv
from kldiv import Normal

PLOTS = ("kl_tracking.png", "per_frame_values.png", "coupling_flow.png")
WOBBLE, SIGMA_X = 0.1, 0.3  # the part of x the tokens do not predict; decoder noise
HEADER = "step   recon   exact  1-sample  vits_kl     abs   clamp  no_logdet"


# ---------------------------------------------------------------------------------------------
# data: token sequences (the "text") and the frames of features they generate (the "speech")


def make_batch(gen: torch.Generator, table: torch.Tensor, batch: int, frames: int):
    """Tokens (B, T), features x (B, F, T) and z_mask (B, 1, T) for sequences of random length."""
    k, n_feat = table.shape
    lengths = torch.randint(frames // 2, frames + 1, (batch,), generator=gen)
    mask = (torch.arange(frames) < lengths[:, None]).float()[:, None, :]
    # piecewise-constant token sequences: each token lasts 2 to 6 frames
    tokens = torch.empty(batch, frames, dtype=torch.long)
    for i in range(batch):
        t = 0
        while t < frames:
            run = int(torch.randint(2, 7, (1,), generator=gen))
            tokens[i, t : t + run] = int(torch.randint(0, k, (1,), generator=gen))
            t += run
    mean = table[tokens].transpose(1, 2)  # (B, F, T)
    wobble = torch.sin(torch.arange(frames) * 0.7 + torch.rand(batch, 1, 1, generator=gen) * 6)
    x = mean + WOBBLE * wobble * torch.randn(batch, n_feat, 1, generator=gen)
    x = x + 0.05 * torch.randn(batch, n_feat, frames, generator=gen)
    return tokens, x * mask, mask


# ---------------------------------------------------------------------------------------------
# the model: posterior encoder, decoder, prior ("text") encoder, flow


class ElementwiseAffine(nn.Module):
    """z_p = z * exp(s) + b per channel: not volume-preserving, and the prior stays Gaussian."""

    def __init__(self, channels: int):
        super().__init__()
        self.s = nn.Parameter(torch.zeros(channels, 1))
        self.b = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, z, mask):
        z_p = (z * self.s.exp() + self.b) * mask
        return z_p, self.s.expand_as(z) * mask  # log|det|, elementwise

    def prior_on_z(self, m_p, logs_p):
        """The prior's (loc, log_std) on z: N(f(z); m_p, exp(logs_p)) |det f'| is Gaussian."""
        return (m_p - self.b) * (-self.s).exp(), logs_p - self.s


class Coupling(nn.Module):
    """VITS's residual affine coupling: the second half of the channels is shifted (mean-only,
    volume-preserving) or shifted and scaled (log|det| = sum of the log-scales)."""

    def __init__(self, channels: int, hidden: int, mean_only: bool):
        super().__init__()
        self.half, self.mean_only = channels // 2, mean_only
        self.pre = nn.Conv1d(self.half, hidden, 1)
        self.mid = nn.Conv1d(hidden, hidden, 3, padding=1)
        self.post = nn.Conv1d(hidden, self.half * (1 if mean_only else 2), 1)
        nn.init.zeros_(self.post.weight)  # starts as the identity, as in VITS
        nn.init.zeros_(self.post.bias)

    def forward(self, z, mask):
        z0, z1 = z[:, : self.half], z[:, self.half :]
        h = torch.tanh(self.mid(torch.tanh(self.pre(z0)) * mask)) * mask
        stats = self.post(h) * mask
        if self.mean_only:
            m, logs = stats, torch.zeros_like(stats)
        else:
            m, logs = stats[:, : self.half], torch.tanh(stats[:, self.half :])
        z1 = m + z1 * logs.exp() * mask
        return torch.cat([z0, z1], 1), logs  # log|det|, elementwise on the second half


class CouplingFlow(nn.Module):
    def __init__(self, channels: int, hidden: int, n_flows: int, mean_only: bool):
        super().__init__()
        self.layers = nn.ModuleList(Coupling(channels, hidden, mean_only) for _ in range(n_flows))

    def forward(self, z, mask):
        log_det = torch.zeros_like(z[:, :1])
        for layer in self.layers:
            z, ld = layer(z, mask)
            log_det = log_det + ld.sum(1, keepdim=True)
            z = torch.flip(z, [1])  # VITS's Flip
        return z, log_det * mask  # per frame, (B, 1, T)


class SeqVAE(nn.Module):
    def __init__(self, n_tokens: int, n_feat: int, channels: int, hidden: int, flow: nn.Module):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv1d(n_feat, hidden, 3, padding=1), nn.Tanh(), nn.Conv1d(hidden, 2 * channels, 1)
        )
        self.dec = nn.Sequential(
            nn.Conv1d(channels, hidden, 3, padding=1), nn.Tanh(), nn.Conv1d(hidden, n_feat, 1)
        )
        self.text = nn.Embedding(n_tokens, 2 * channels)
        self.flow, self.channels = flow, channels

    def posterior(self, x, mask):
        m_q, logs_q = (self.enc(x) * mask).chunk(2, 1)
        return m_q, logs_q.clamp(-6, 3)

    def prior(self, tokens, mask):
        m_p, logs_p = (self.text(tokens).transpose(1, 2) * mask).chunk(2, 1)
        return m_p, logs_p.clamp(-6, 3)


def recon_loss(model, z, x, mask):
    """Gaussian reconstruction NLL (sigma_x fixed), summed over features, mean over frames."""
    per_frame = 0.5 * (((model.dec(z) - x) / SIGMA_X) ** 2 * mask).sum(1)
    return per_frame.sum() / mask.sum()


# ---------------------------------------------------------------------------------------------
# the KL estimators being compared


def vits_loss(z_p, logs_q, m_p, logs_p, log_det, mask):
    """kldiv's one-sample estimator: VITS's loss with the log-determinant."""
    return kldiv.mc.vits_kl(
        z_p, logs_q, m_p, logs_p, log_det=log_det, event_axis=1, mask=mask, reduction="mean"
    )


def _terms(z_p, logs_q, m_p, logs_p, log_det):
    return logs_p - logs_q - 0.5 - log_det, 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)


def abs_loss(z_p, logs_q, m_p, logs_p, log_det, mask):
    """The thread's proposal: kl = torch.abs(logs_p - logs_q - 0.5) + the square term."""
    first, square = _terms(z_p, logs_q, m_p, logs_p, log_det)
    return ((first.abs() + square) * mask).sum() / mask.sum()


def clamp_loss(z_p, logs_q, m_p, logs_p, log_det, mask):
    """The thread's other proposal: kl = torch.clamp(kl, min=0.0) per element."""
    first, square = _terms(z_p, logs_q, m_p, logs_p, log_det)
    return ((first + square).clamp(min=0.0) * mask).sum() / mask.sum()


def no_log_det_loss(z_p, logs_q, m_p, logs_p, log_det, mask):
    """VITS's formula as written, used with a flow that is not volume-preserving."""
    return vits_loss(z_p, logs_q, m_p, logs_p, 0.0, mask)


LOSSES = {"vits_kl": vits_loss, "abs": abs_loss, "clamp": clamp_loss}


# ---------------------------------------------------------------------------------------------
# training


def step_affine(model, batch, loss_fn, gen):
    """One forward pass; returns (loss, recon, exact KL, the estimators on the same sample)."""
    tokens, x, mask = batch
    m_q, logs_q = model.posterior(x, mask)
    z = (m_q + logs_q.exp() * torch.randn(m_q.shape, generator=gen)) * mask
    z_p, log_det = model.flow(z, mask)
    m_p, logs_p = model.prior(tokens, mask)
    recon = recon_loss(model, z, x, mask)
    args = (z_p, logs_q, m_p, logs_p, log_det, mask)
    kl_estimate = loss_fn(*args)
    with torch.no_grad():
        loc_z, log_std_z = model.flow.prior_on_z(m_p, logs_p)
        exact = kldiv.kl(
            Normal(m_q, log_std=logs_q),
            Normal(loc_z, log_std=log_std_z),
            event_axis=1,
            mask=mask,
            reduction="mean",
        )
        others = {name: float(fn(*args)) for name, fn in LOSSES.items()}
        others["no_logdet"] = float(no_log_det_loss(*args))
    return recon + kl_estimate, recon.item(), float(exact), kl_estimate.item(), others


def coupling_reference(model, batch, draws: int, gen):
    """Mean and standard error of the loss over `draws` samples of z (no gradient)."""
    tokens, x, mask = batch
    with torch.no_grad():
        m_q, logs_q = model.posterior(x, mask)
        m_p, logs_p = model.prior(tokens, mask)
        eps = torch.randn((draws, *m_q.shape), generator=gen)
        rep = lambda t: t.expand(draws, *t.shape).reshape(-1, *t.shape[1:])  # noqa: E731
        z = (m_q + logs_q.exp() * eps).reshape(-1, *m_q.shape[1:]) * rep(mask)
        z_p, log_det = model.flow(z, rep(mask))
        per_frame = kldiv.mc.vits_kl(
            z_p,
            rep(logs_q),
            rep(m_p),
            rep(logs_p),
            log_det=log_det,
            event_axis=1,
            mask=rep(mask),
            reduction="none",
        ).reshape(draws, *mask[:, 0].shape)
        per_draw = per_frame.sum((1, 2)) / mask.sum()
        mean_log_det = float((log_det.reshape(draws, *mask.shape)).sum() / (draws * mask.sum()))
    return float(per_draw.mean()), float(per_draw.std() / draws**0.5), mean_log_det


def train(args) -> dict:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    n_tokens, n_feat, channels, hidden = 12, 8, 4, 32
    table = torch.randn(n_tokens, n_feat, generator=gen)

    base = SeqVAE(n_tokens, n_feat, channels, hidden, ElementwiseAffine(channels))
    affine = {name: copy.deepcopy(base) for name in LOSSES}  # same start, three losses
    couplings = {
        "mean-only": SeqVAE(
            n_tokens, n_feat, channels, hidden, CouplingFlow(channels, 16, 4, True)
        ),
        "affine": SeqVAE(n_tokens, n_feat, channels, hidden, CouplingFlow(channels, 16, 4, False)),
    }
    models = {**{("affine", k): m for k, m in affine.items()}, **couplings}
    opts = {k: torch.optim.Adam(m.parameters(), lr=args.lr) for k, m in models.items()}

    log = {"step": [], "exact": {k: [] for k in LOSSES}, "reported": {k: [] for k in LOSSES}}
    log["same_model"] = {k: [] for k in (*LOSSES, "no_logdet")}
    log["coupling"] = {k: {"one": [], "ref": [], "se": [], "no_logdet": []} for k in couplings}
    every = max(1, args.steps // 10)
    print(
        "elementwise affine flow prior (exact KL known), model trained with vits_kl; KL in nats"
        " per frame; 1-sample: this step's loss; the others: means over the last 20 steps of"
        " the exact KL and of each estimator on the same samples"
    )
    print(HEADER)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = make_batch(gen, table, args.batch, args.frames)
        for name in LOSSES:
            loss, recon, exact, reported, same = step_affine(affine[name], batch, LOSSES[name], gen)
            opts[("affine", name)].zero_grad()
            loss.backward()
            opts[("affine", name)].step()
            log["exact"][name].append(exact)
            log["reported"][name].append(reported)
            if name == "vits_kl":
                for k, v in same.items():
                    log["same_model"][k].append(v)
                recon_v = recon
        for name, model in couplings.items():
            tokens, x, mask = batch
            m_q, logs_q = model.posterior(x, mask)
            z = (m_q + logs_q.exp() * torch.randn(m_q.shape, generator=gen)) * mask
            z_p, log_det = model.flow(z, mask)
            m_p, logs_p = model.prior(tokens, mask)
            kl = vits_loss(z_p, logs_q, m_p, logs_p, log_det, mask)
            loss = recon_loss(model, z, x, mask) + kl
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            c = log["coupling"][name]
            c["one"].append(kl.item())
            c["no_logdet"].append(no_log_det_loss(z_p, logs_q, m_p, logs_p, log_det, mask).item())
            if step % args.ref_every == 0 or step == args.steps:
                ref, se, mean_log_det = coupling_reference(model, batch, args.draws, gen)
                c["ref"].append((step, ref, se))
                c["log_det"] = mean_log_det
        log["step"].append(step)
        if step % every == 0 or step == args.steps:
            s = {k: np.mean(v[-20:]) for k, v in log["same_model"].items()}
            print(
                f"{step:4d} {recon_v:7.2f} {np.mean(log['exact']['vits_kl'][-20:]):7.3f}"
                f" {log['same_model']['vits_kl'][-1]:9.3f} {s['vits_kl']:8.3f} {s['abs']:7.3f}"
                f" {s['clamp']:7.3f} {s['no_logdet']:10.3f}"
            )
    log["seconds"] = time.perf_counter() - start
    log["final_batch"] = make_batch(gen, table, args.batch, args.frames)
    log["models"] = {"affine": affine, "couplings": couplings}
    return log


# ---------------------------------------------------------------------------------------------
# summaries and plots


def per_frame_values(model, batch, draws: int, gen):
    """Single-sample per-frame values of each estimator (valid frames only), and the exact KL."""
    tokens, x, mask = batch
    with torch.no_grad():
        m_q, logs_q = model.posterior(x, mask)
        m_p, logs_p = model.prior(tokens, mask)
        valid = mask[:, 0] > 0
        out = {"vits_kl": [], "abs": [], "clamp": []}
        for _ in range(draws):
            z = (m_q + logs_q.exp() * torch.randn(m_q.shape, generator=gen)) * mask
            z_p, log_det = model.flow(z, mask)
            first, square = _terms(z_p, logs_q, m_p, logs_p, log_det)
            out["vits_kl"].append((first + square).sum(1)[valid])
            out["abs"].append((first.abs() + square).sum(1)[valid])
            out["clamp"].append((first + square).clamp(min=0).sum(1)[valid])
        loc_z, log_std_z = model.flow.prior_on_z(m_p, logs_p)
        exact = kldiv.kl(
            Normal(m_q, log_std=logs_q), Normal(loc_z, log_std=log_std_z), event_axis=1
        )[valid]
    return {k: torch.cat(v).numpy() for k, v in out.items()}, exact.numpy()


def running_mean(values, window: int = 20):
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    n = np.minimum(np.arange(1, len(v) + 1), window)
    return (c[1:] - c[np.arange(1, len(v) + 1) - n]) / n


def plot(log, args, frames, out: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array(log["step"])
    paths = []

    # 1. estimate vs exact over training
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    s = log["same_model"]
    ax.plot(steps, s["vits_kl"], color="tab:blue", alpha=0.25, lw=0.8, label="vits_kl, one sample")
    ax.plot(steps, running_mean(s["vits_kl"]), color="tab:blue", label="vits_kl, mean of 20 steps")
    ax.plot(steps, log["exact"]["vits_kl"], color="black", lw=1.5, label="exact KL")
    ax.plot(steps, running_mean(s["abs"]), color="tab:red", label="abs, mean of 20 steps")
    ax.plot(steps, running_mean(s["clamp"]), color="tab:orange", label="clamp, mean of 20 steps")
    ax.plot(
        steps,
        running_mean(s["no_logdet"]),
        color="tab:green",
        ls="--",
        label="no log-det, mean of 20 steps",
    )
    ax.set(
        title="Same model: the estimators on the same samples",
        xlabel="training step",
        ylabel="KL(q || p), nats per frame",
    )
    ax.legend(fontsize=8)
    for name, color in [("vits_kl", "tab:blue"), ("abs", "tab:red"), ("clamp", "tab:orange")]:
        bx.plot(steps, log["exact"][name], color=color, label=f"trained with {name}: exact KL")
        bx.plot(
            steps,
            running_mean(log["reported"][name]),
            color=color,
            ls=":",
            label=f"trained with {name}: reported",
        )
    bx.set(title="Three models, each trained with its own KL loss", xlabel="training step")
    bx.legend(fontsize=8)
    late = steps > steps[-1] // 5  # the first steps fall from tens of nats: zoom past them
    curves = [running_mean(s[k]) for k in ("abs", "no_logdet")] + [np.array(log["exact"]["abs"])]
    hi = 1.4 * max(c[late].max() for c in curves) if late.any() else None
    lo = min(0.0, min(c[late].min() for c in curves)) - 0.3 if late.any() else None
    for a in (ax, bx):
        a.grid(alpha=0.3)
        a.axhline(0, color="gray", lw=0.8)
        a.set_ylim(lo, hi)
    fig.suptitle("VITS-style model, elementwise affine flow prior (exact KL known)")
    fig.tight_layout()
    paths.append(out / PLOTS[0])
    fig.savefig(paths[-1], dpi=args.dpi)
    plt.close(fig)

    # 2. distribution of per-frame single-sample values
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lo = min(v.min() for v in frames[0].values())
    hi = np.quantile(np.concatenate(list(frames[0].values())), 0.995)
    bins = np.linspace(lo, hi, 80)
    for name, color in [("vits_kl", "tab:blue"), ("abs", "tab:red"), ("clamp", "tab:orange")]:
        v = frames[0][name]
        ax.hist(
            v,
            bins=bins,
            alpha=0.45,
            color=color,
            density=True,
            label=f"{name}: mean {v.mean():.3f}, {np.mean(v < 0):.0%} < 0",
        )
    ax.axvline(
        frames[1].mean(),
        color="black",
        lw=1.5,
        label=f"exact KL, mean over frames {frames[1].mean():.3f}",
    )
    ax.axvline(0, color="gray", lw=0.8, ls=":")
    ax.set(
        title="One-sample values per frame, trained model",
        xlabel="KL estimate (nats per frame)",
        ylabel="density",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / PLOTS[1])
    fig.savefig(paths[-1], dpi=args.dpi)
    plt.close(fig)

    # 3. coupling flows: one-sample vs a many-sample reference
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for a, (name, c) in zip(axes, log["coupling"].items(), strict=True):
        a.plot(steps, c["one"], color="tab:blue", alpha=0.25, lw=0.8, label="vits_kl, one sample")
        a.plot(steps, running_mean(c["one"]), color="tab:blue", label="vits_kl, mean of 20 steps")
        rs, ref, se = (np.array(v) for v in zip(*c["ref"], strict=True))
        a.errorbar(
            rs,
            ref,
            yerr=2 * se,
            color="black",
            fmt="o",
            ms=3,
            label=f"{args.draws}-sample estimate ± 2 s.e.",
        )
        if name == "affine":
            a.plot(
                steps,
                running_mean(c["no_logdet"]),
                color="tab:green",
                ls="--",
                label="no log-det, mean of 20 steps",
            )
        a.set(title=f"{name} couplings", xlabel="training step")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    late = steps > steps[-1] // 5
    if late.any():
        curves = [
            running_mean(c[k]) for c in log["coupling"].values() for k in ("one", "no_logdet")
        ]
        axes[0].set_ylim(
            min(0.0, min(c[late].min() for c in curves)) - 0.3,
            1.4 * max(c[late].max() for c in curves),
        )
    axes[0].set_ylabel("KL(q || p), nats per frame")
    fig.suptitle("Coupling-flow priors (no closed form): one sample against many")
    fig.tight_layout()
    paths.append(out / PLOTS[2])
    fig.savefig(paths[-1], dpi=args.dpi)
    plt.close(fig)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 600)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("examples/out/vits_flow"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.steps = args.steps or (30 if args.quick else 600)
    args.batch, args.frames = (8, 32) if args.quick else (16, 48)
    args.lr, args.draws = 1e-2, 64
    args.ref_every = max(1, args.steps // 20)
    args.dpi = 60 if args.quick else 90
    # tiny tensors: one thread is faster than two that wait for each other (and far faster on
    # a machine that is busy with something else)
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    log = train(args)

    gen = torch.Generator().manual_seed(args.seed + 1)
    frames = per_frame_values(
        log["models"]["affine"]["vits_kl"], log["final_batch"], 20 if args.quick else 200, gen
    )
    print()
    print("final, models trained with each loss (means over the last 20 steps)")
    print("trained with  reported KL  exact KL")
    for name in LOSSES:
        print(
            f"{name:12s} {np.mean(log['reported'][name][-20:]):12.3f}"
            f" {np.mean(log['exact'][name][-20:]):9.3f}"
        )
    print()
    print(
        f"coupling-flow priors (no exact KL), last step: the one-sample loss, the mean of "
        f"{args.draws} samples with its standard error, the same without the log-determinant"
    )
    print(f"couplings  1-sample  mean of {args.draws}  ± s.e.  no_logdet  E[log|det|]")
    for name, c in log["coupling"].items():
        _, ref, se = c["ref"][-1]
        print(
            f"{name:9s} {c['one'][-1]:9.3f} {ref:11.3f} {se:7.3f} {ref + c['log_det']:10.3f}"
            f" {c['log_det']:12.3f}"
        )
    v = frames[0]["vits_kl"]
    print()
    print(
        f"per-frame one-sample values at the end: {np.mean(v < 0):.0%} negative, mean "
        f"{v.mean():.3f}, exact {frames[1].mean():.3f}"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    paths = plot(log, args, frames, args.out)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    print(f"training {log['seconds']:.1f} s, total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
