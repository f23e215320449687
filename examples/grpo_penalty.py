"""A GRPO-style loop on a toy categorical policy: the KL penalty written five ways.

A policy answers each of ``P`` prompts with one of ``K`` tokens (a tabular softmax, started at
the reference policy); the reward of each answer is fixed, between 0 and 1. The objective is
the KL-regularized reward

    J(pi) = E_pi[R] - beta * KL(pi || pi_ref),

whose maximizer is known in closed form, ``pi* ~ pi_ref * exp(R / beta)``, so the exact KL and
the exact gap ``J(pi*) - J(pi)`` can be followed over training (``kldiv.kl`` on the policy's
logits). Each step samples a group of ``G`` answers per prompt from the current policy, centres
the rewards within the group (Dr. GRPO's advantage, without dividing by the standard deviation,
which would rescale the reward against beta), and takes ``EPOCHS`` PPO-clipped updates on that
rollout, so every update after the first is off-policy. The same policy, from the same start
and with the same random numbers, is trained with the penalty as

- ``k1 in loss``: ``penalty.k1(logp, logp_ref)`` added to the loss: its expected gradient is 0
  on-policy (and pushes away from the rollout policy off-policy): no penalty at all;
- ``k3 in loss``: ``penalty.k3(logp, logp_ref)``, GRPO's original penalty: the gradient of
  KL(pi_ref || pi), another KL than the objective's;
- ``k3 in reward``: ``penalty.k3(logp_old, logp_ref)`` subtracted from the reward: the gradient
  of KL(pi || pi_ref) - KL(pi_ref || pi), which vanishes to first order near the reference;
- ``k3 x weight``: ``penalty.k3(logp, logp_ref, behavior_logprobs=logp_old,
  detach_weight=False)``, DeepSeek-V3.2's unbiased KL (TRL's default); per token, its gradient
  is exactly that of ``penalty.k3(logp, logp_ref, gradient="k2", behavior_logprobs=logp_old,
  detach_weight=True)``, verl's ``k3+`` with a stopped weight;
- ``k1 in reward``: ``penalty.k1(logp_old, logp_ref)`` subtracted from the reward at rollout
  time (PPO-style RLHF).

The first three are wrong, the last two right (docs/estimators.md derives why). Run ``python
examples/grpo_penalty.py`` (about half a minute on 2 CPU cores) or ``--quick`` (seconds);
tables go to stdout, PNG plots to ``--out`` (default ``examples/out/grpo_penalty/``).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import torch

import kldiv
from kldiv import Categorical, penalty

P, K, BETA, EPOCHS, CLIP = 8, 16, 0.5, 4, 0.2
RUNS = ("k1 in loss", "k3 in loss", "k3 in reward", "k3 x weight", "k1 in reward")
WRONG = ("k1 in loss", "k3 in loss", "k3 in reward")
PLOTS = ("true_kl.png",)
HEADER = "step  " + "  ".join(f"{r:>12s}" for r in RUNS) + "   (exact KL(pi || pi_ref))"
FINAL_HEADER = "penalty        KL(pi||pi_ref)   target   J* - J    E[R]   logged k3"


def problem(seed: int):
    """Reference logits, rewards, and the regularized optimum's logits, (P, K) each."""
    g = torch.Generator().manual_seed(seed)
    ref = 1.5 * torch.randn(P, K, generator=g, dtype=torch.float64)
    reward = torch.rand(P, K, generator=g, dtype=torch.float64) ** 2
    best = torch.log_softmax(ref, -1) + reward / BETA  # pi* ~ pi_ref exp(R / beta)
    return ref, reward, best


def exact(theta, ref, reward):
    """Exact KL(pi || pi_ref), E_pi[R] and J(pi), averaged over the prompts."""
    with torch.no_grad():
        kl = float(kldiv.kl(Categorical(logits=theta), Categorical(logits=ref), reduction="mean"))
        expected = float((torch.softmax(theta, -1) * reward).sum(-1).mean())
    return kl, expected, expected - BETA * kl


def penalty_of(run, logp, logp_ref, logp_old):
    """The per-token penalty of ``run`` in the loss (None: the penalty is in the reward)."""
    if run == "k1 in loss":
        return penalty.k1(logp, logp_ref)
    if run == "k3 in loss":
        return penalty.k3(logp, logp_ref)
    if run == "k3 x weight":
        return penalty.k3(logp, logp_ref, behavior_logprobs=logp_old, detach_weight=False)
    return None


def reward_penalty_of(run, logp_old, logp_ref):
    """The per-token penalty of ``run`` in the reward, at rollout time (None: in the loss)."""
    if run == "k1 in reward":
        return penalty.k1(logp_old, logp_ref)
    if run == "k3 in reward":
        return penalty.k3(logp_old, logp_ref)
    return None


def train(args):
    ref, reward, best = problem(args.seed)
    logp_ref_all = torch.log_softmax(ref, -1)
    kl_star, _, j_star = exact(best, ref, reward)
    log = {"target": kl_star, "j_star": j_star, "seconds": {}}
    prompts = torch.arange(P).repeat_interleave(args.group)  # (P * G,)
    for run in RUNS:
        theta = ref.clone().requires_grad_()  # the policy starts at the reference
        opt = torch.optim.Adam([theta], lr=args.lr)
        decay = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=args.steps)
        g = torch.Generator().manual_seed(args.seed + 1)  # the same draws for every run
        rec = {"step": [0], "kl": [exact(theta, ref, reward)[0]], "gap": [], "value": []}
        rec["gap"].append(j_star - exact(theta, ref, reward)[2])
        t0 = time.perf_counter()
        for _ in range(args.steps):
            with torch.no_grad():
                logp_all_old = torch.log_softmax(theta, -1)
                answers = torch.multinomial(logp_all_old.exp(), args.group, True, generator=g)
                answers = answers.reshape(-1)
                logp_old = logp_all_old[prompts, answers]
                logp_ref = logp_ref_all[prompts, answers]
                r = reward[prompts, answers]
                in_reward = reward_penalty_of(run, logp_old, logp_ref)
                if in_reward is not None:  # computed at rollout time, from the rollout policy
                    r = r - BETA * in_reward
                group = r.reshape(P, args.group)
                adv = (group - group.mean(-1, keepdim=True)).reshape(-1)
            for _ in range(EPOCHS):
                logp = torch.log_softmax(theta, -1)[prompts, answers]
                ratio = torch.exp(logp - logp_old)
                surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - CLIP, 1 + CLIP) * adv)
                loss = -surrogate.mean()
                pen = penalty_of(run, logp, logp_ref, logp_old)
                if pen is not None:
                    loss = loss + BETA * pen.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            decay.step()
            kl, _, j = exact(theta, ref, reward)
            value = penalty.k3(logp_old, logp_ref, reduction="mean")  # what a log would show
            rec["step"].append(rec["step"][-1] + 1)
            rec["kl"].append(kl)
            rec["gap"].append(j_star - j)
            rec["value"].append(float(value))
        log["seconds"][run] = time.perf_counter() - t0
        log[run] = rec
        log[run]["final"] = exact(theta, ref, reward)
    return log


def print_progress(log, args) -> None:
    print(HEADER)
    every = max(1, args.steps // 10)
    for step in range(0, args.steps + 1, every):
        print(f"{step:4d}  " + "  ".join(f"{log[run]['kl'][step]:12.4f}" for run in RUNS))


def plot(log, args) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    colors = ("tab:red", "tab:orange", "tab:blue", "tab:green", "tab:purple")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for run, color in zip(RUNS, colors, strict=True):
        style = "--" if run in WRONG else "-"
        label = f"{run} ({'wrong' if run in WRONG else 'right'})"
        ax.plot(
            log[run]["step"][1:], log[run]["kl"][1:], color=color, ls=style, lw=1.3, label=label
        )
        gap = [max(v, 1e-6) for v in log[run]["gap"]]
        bx.plot(log[run]["step"], gap, color=color, ls=style, lw=1.3, label=label)
    ax.axhline(log["target"], color="black", lw=0.8, ls=":", label="KL(pi* || pi_ref), the target")
    ax.set(
        title="The true KL(pi || pi_ref) over training (exact)",
        xlabel="GRPO step",
        ylabel="nats, mean over prompts",
        yscale="log",
    )
    bx.set(
        title="The objective's gap J(pi*) - J(pi) (exact)",
        xlabel="GRPO step",
        ylabel="nats",
        yscale="log",
    )
    for a in (ax, bx):
        a.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    bx.legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"GRPO on a toy policy ({P} prompts x {K} answers, beta = {BETA}, "
        f"{EPOCHS} PPO epochs per rollout): the penalty written five ways"
    )
    fig.tight_layout()
    path = args.out / PLOTS[0]
    fig.savefig(path, dpi=args.dpi)
    plt.close(fig)
    return [path]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps (default 400)")
    parser.add_argument("--group", type=int, default=16, help="answers per prompt and step")
    parser.add_argument(
        "--lr", type=float, default=0.05, help="Adam's learning rate (decays to a tenth)"
    )
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("examples/out/grpo_penalty")
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (30 if args.quick else 400)
    args.dpi = 60 if args.quick else 90
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    log = train(args)
    print_progress(log, args)
    print()
    print(
        f"final, after {args.steps} steps (exact, mean over prompts; logged k3: the last "
        "rollout's mean k3, what a training log shows)"
    )
    print(FINAL_HEADER)
    for run in RUNS:
        kl, expected, j = log[run]["final"]
        print(
            f"{run:14s} {kl:14.4f} {log['target']:8.4f} {log['j_star'] - j:8.4f}"
            f" {expected:7.4f} {log[run]['value'][-1]:11.4f}"
        )
    paths = plot(log, args)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
