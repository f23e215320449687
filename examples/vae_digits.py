"""A VAE on scikit-learn's bundled digits, with kldiv's KL term, cyclical annealing and free bits.

    python examples/vae_digits.py            # the full run (about 20 s on 2 CPU cores)
    python examples/vae_digits.py --quick    # 3 epochs on a subset: what CI runs

Data: the 1797 8x8 digits that ship with scikit-learn (no download), gray levels scaled to
[0, 1], split 80/20 into training and test sets. Model: an MLP encoder that outputs the mean and
log-variance of a diagonal Gaussian posterior q(z | x), an MLP decoder with a Bernoulli
likelihood per pixel (binary cross-entropy on the gray levels, in nats per image). The loss is

    recon + beta_t * free_bits(KL per dimension, threshold=lambda)

with the per-dimension KL from ``kldiv.kl(Normal(mu, log_var=lv), Normal.standard())``, beta_t
from ``kldiv.vae.cyclical`` (Fu et al. 2019: 4 cycles, ratio 0.5) and the free-bits floor of
Kingma et al. (2016) from ``kldiv.vae.free_bits``. The KL reported is the plain KL (kldiv's
``NormalKLLoss``: summed over the latent axis, averaged over images), not the floored term.

Each epoch prints: the epoch, beta at its last step, the training recon and KL (averages over
the epoch's batches), the same on the test set, the active units of the test set (Burda et al.
2016: dimensions whose posterior mean varies across images by more than 0.01) and the elapsed
seconds. Three plots are written into ``--out``: ``loss_curves.png``, ``kl_per_dim.png`` and
``reconstructions.png``. Requires ``pip install "kldiv[torch,examples]"``.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits

import kldiv
from kldiv import Normal, vae
from kldiv.torch import NormalKLLoss

OUT = pathlib.Path(__file__).resolve().parent / "out" / "vae_digits"
PLOTS = ("loss_curves.png", "kl_per_dim.png", "reconstructions.png")
COLUMNS = ("epoch", "beta", "recon", "kl", "test_recon", "test_kl", "active", "time_s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=pathlib.Path, default=OUT, help=f"plot folder ({OUT})")
    ap.add_argument("--quick", action="store_true", help="3 epochs on a subset (for CI)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default 40; quick: 3)")
    ap.add_argument("--latent", type=int, default=8, help="latent dimensions (default 8)")
    ap.add_argument("--free-bits", type=float, default=0.25, help="nats per dimension (0.25)")
    ap.add_argument("--cycles", type=int, default=4, help="annealing cycles (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dpi", type=int, default=100, help="plot resolution (docs thumbnails: 70)")
    args = ap.parse_args(argv)
    if args.epochs is None:
        args.epochs = 3 if args.quick else 40
    return args


class VAE(torch.nn.Module):
    def __init__(self, pixels: int, latent: int, hidden: int) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(pixels, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 2 * latent),
        )
        self.decoder = torch.nn.Sequential(
            torch.nn.Linear(latent, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, pixels),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.encoder(x).chunk(2, dim=-1)
        return mu, log_var

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_var = self.encode(x)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)  # reparameterized sample
        return self.decoder(z), mu, log_var


def recon_nats(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy summed over pixels: one value per image."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return bce.sum(dim=-1)


def load(quick: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = len(x) // 5
    test, train = order[:n_test], order[n_test:]
    if quick:
        train, test = train[:256], test[:128]
    return torch.from_numpy(x[train]), torch.from_numpy(x[test]), digits.target[test]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # matrices this small only lose from threading
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x_train, x_test, y_test = load(args.quick, args.seed)
    model = VAE(x_train.shape[1], args.latent, hidden=64 if args.quick else 256)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    kl_loss = NormalKLLoss(param="log_var")  # sum over the latent axis, mean over images
    batch = 64
    steps_per_epoch = math.ceil(len(x_train) / batch)
    period = max(1, steps_per_epoch * args.epochs // args.cycles)

    print(
        f"VAE on sklearn digits: {len(x_train)} train / {len(x_test)} test images, "
        f"latent {args.latent}, cyclical beta (period {period} steps, ratio 0.5), "
        f"free bits {args.free_bits} nats/dim"
    )
    print("  ".join(f"{c:>10}" for c in COLUMNS))
    history: dict[str, list[float]] = {c: [] for c in COLUMNS}
    step, start = 0, time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        sums = np.zeros(2)
        for idx in np.array_split(rng.permutation(len(x_train)), steps_per_epoch):
            x = x_train[idx]
            beta = vae.cyclical(step, period=period, ratio=0.5)
            logits, mu, log_var = model(x)
            recon = recon_nats(logits, x).mean()
            per_dim = kldiv.kl(Normal(mu, log_var=log_var), Normal.standard())  # (B, D)
            loss = recon + beta * vae.free_bits(per_dim, threshold=args.free_bits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                sums += (float(recon), float(kl_loss(mu, log_var)))
            step += 1
        model.eval()
        with torch.no_grad():
            logits, mu, log_var = model(x_test)
            test_recon = float(recon_nats(logits, x_test).mean())
            test_kl = float(kl_loss(mu, log_var))
            active = vae.active_units(mu)
        row = (epoch, beta, *(sums / steps_per_epoch), test_recon, test_kl, active)
        row += (time.perf_counter() - start,)
        for c, v in zip(COLUMNS, row, strict=True):
            history[c].append(float(v))
        print(
            f"{epoch:>10d}  {beta:>10.3f}  {row[2]:>10.2f}  {row[3]:>10.2f}  "
            f"{test_recon:>10.2f}  {test_kl:>10.2f}  {active:>10d}  {row[-1]:>10.1f}"
        )

    with torch.no_grad():
        mu, log_var = model.encode(x_test)
        per_dim_kl = vae.kl_per_dim(Normal(mu, log_var=log_var)).numpy()
        activities = vae.activity(mu).numpy()
        recon_images = torch.sigmoid(model.decoder(mu)).numpy()
    args.out.mkdir(parents=True, exist_ok=True)
    plot_losses(history, args)
    plot_kl_per_dim(per_dim_kl, activities, args)
    plot_reconstructions(x_test.numpy(), recon_images, y_test, args)
    print(
        f"test: recon {test_recon:.2f} + KL {test_kl:.2f} = {test_recon + test_kl:.2f} nats "
        f"per image (negative ELBO); {active} of {args.latent} units active"
    )
    print(f"wrote {', '.join(PLOTS)} to {args.out}")


def _save(fig: plt.Figure, args: argparse.Namespace, name: str) -> None:
    fig.savefig(args.out / name, dpi=args.dpi, metadata={"Software": None})
    plt.close(fig)


def plot_losses(history: dict[str, list[float]], args: argparse.Namespace) -> None:
    epochs = history["epoch"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    ax1.plot(epochs, history["recon"], label="train")
    ax1.plot(epochs, history["test_recon"], label="test")
    ax1.set(xlabel="epoch", ylabel="reconstruction (nats per image)", title="Reconstruction")
    ax1.legend()
    ax2.plot(epochs, history["kl"], label="train KL")
    ax2.plot(epochs, history["test_kl"], label="test KL")
    ax2.set(xlabel="epoch", ylabel="KL(q(z|x) || N(0, I)) (nats per image)")
    ax2.set_title("KL term and its weight beta")
    beta_ax = ax2.twinx()
    beta_ax.plot(epochs, history["beta"], color="gray", linestyle=":", label="beta (end of epoch)")
    beta_ax.set(ylabel="beta", ylim=(-0.05, 1.05))
    lines = ax2.get_lines() + beta_ax.get_lines()
    ax2.legend(lines, [line.get_label() for line in lines], loc="lower right")
    _save(fig, args, "loss_curves.png")


def plot_kl_per_dim(kl: np.ndarray, activity: np.ndarray, args: argparse.Namespace) -> None:
    active = activity > 0.01
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    dims = np.arange(len(kl))
    for mask, color, label in (
        (active, "tab:blue", "active (variance of its mean > 0.01)"),
        (~active, "tab:gray", "inactive"),
    ):
        if mask.any():
            ax.bar(dims[mask], kl[mask], color=color, label=label)
    if args.free_bits > 0:
        ax.axhline(args.free_bits, color="tab:red", linestyle="--", label="free-bits floor")
    top = max(float(kl.max()), args.free_bits, 1e-3) * 1.35  # room for the legend
    ax.set(xlabel="latent dimension", ylabel="KL (nats, test average)", xticks=dims)
    ax.set_ylim(0.0, top)
    ax.set_title(f"Per-dimension KL: {int(active.sum())} of {len(kl)} units active")
    ax.legend(loc="upper right")
    _save(fig, args, "kl_per_dim.png")


def plot_reconstructions(
    x: np.ndarray, recon: np.ndarray, labels: np.ndarray, args: argparse.Namespace
) -> None:
    n, side, gap = 12, 8, 1
    grid = np.full((2 * side + gap, n * (side + gap) - gap), 0.3)  # light gray gaps
    for i in range(n):
        col = i * (side + gap)
        grid[:side, col : col + side] = x[i].reshape(side, side)
        grid[side + gap :, col : col + side] = recon[i].reshape(side, side)
    fig, ax = plt.subplots(figsize=(8, 2.4), layout="constrained")
    ax.imshow(grid, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([i * (side + gap) + side / 2 - 0.5 for i in range(n)], labels[:n])
    ax.set_yticks([side / 2 - 0.5, side + gap + side / 2 - 0.5], ["original", "reconstructed"])
    ax.set_xlabel("test image (its digit)")
    ax.set_title("Test digits and their reconstructions from the posterior mean")
    _save(fig, args, "reconstructions.png")


if __name__ == "__main__":
    main()
