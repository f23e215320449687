"""Teacher-student distillation over a 2000-token vocabulary with kldiv.torch.vocab_kl.

A fixed random teacher (a hidden layer and an LM head over V = 2000 tokens) labels synthetic
token positions of padded sequences; a smaller student (a narrower hidden layer) learns to
match it. The same student, from the same initialization and on the same batches, is trained
four ways:

- ``forward``: ``vocab_kl(student, teacher, direction="forward")``, KL(teacher || student), the
  classic distillation loss (mass-covering);
- ``reverse``: KL(student || teacher) (mode-seeking, as in on-policy distillation);
- ``jsd``: the generalized Jensen-Shannon divergence with beta = 0.5 (GKD's default);
- ``F.kl_div``: the naive PyTorch loss, ``F.kl_div(log_softmax(s), log_softmax(t),
  log_target=True, reduction="batchmean")`` on the valid tokens, the same objective as
  ``forward`` (note the flattening: ``batchmean`` on the padded (B, T, V) tensor would divide by
  B, not by the number of tokens).

Every run is scored on the same held-out tokens with the exact KL(teacher || student) and
KL(student || teacher) (``kldiv.kl``), and by how often the student's top token is the
teacher's. Run ``python examples/distill.py`` (under a minute on 2 CPU cores) or ``--quick``
(seconds); tables go to stdout, PNG curves to ``--out`` (default ``examples/out/distill/``).
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import time

import torch
import torch.nn.functional as F
from torch import nn

import kldiv
from kldiv import Categorical
from kldiv.torch import vocab_kl

V, D_IN, H_TEACHER, H_STUDENT = 2000, 32, 256, 64
RUNS = ("forward", "reverse", "jsd", "F.kl_div")
PLOTS = (
    "curves_forward.png",
    "curves_reverse.png",
    "curves_jsd.png",
    "curves_F.kl_div.png",
    "comparison.png",
)
HEADER = "step  " + "  ".join(f"{r:>9s}" for r in RUNS)


class Teacher(nn.Module):
    """A fixed random LM head over V tokens with a fairly peaked output (about 3.8 nats)."""

    def __init__(self, gen: torch.Generator):
        super().__init__()
        self.w1 = torch.randn(D_IN, H_TEACHER, generator=gen) / D_IN**0.5
        self.head = 5 * torch.randn(H_TEACHER, V, generator=gen) / H_TEACHER**0.5

    def forward(self, x):
        return torch.tanh(x @ self.w1) @ self.head


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, H_STUDENT), nn.Tanh())
        self.head = nn.Linear(H_STUDENT, V)

    def forward(self, x):
        return self.head(self.body(x))


def make_batch(gen: torch.Generator, batch: int, length: int):
    """Inputs (B, T, D_IN) of padded sequences and their mask (B, T)."""
    x = torch.randn(batch, length, D_IN, generator=gen)
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=gen)
    return x, torch.arange(length) < lengths[:, None]


def loss_fn(run: str, student_logits, teacher_logits, mask):
    if run == "F.kl_div":
        s, t = student_logits[mask], teacher_logits[mask]  # (valid tokens, V)
        return F.kl_div(
            F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean"
        )
    beta = 0.5 if run == "jsd" else None
    return vocab_kl(student_logits, teacher_logits, direction=run, beta=beta, mask=mask)


def evaluate(student, teacher, x_eval, exact: bool = False):
    """KLs on held-out tokens (mean over tokens) and top-1 agreement with the teacher.

    During training with vocab_kl (float32, chunked); at the end (``exact=True``) with
    kldiv.kl, whose categorical KL is accurate to a few ulp (and slower).
    """
    with torch.no_grad():
        s, t = student(x_eval), teacher(x_eval)
        if exact:
            fwd = kldiv.kl(Categorical(logits=t), Categorical(logits=s), reduction="mean")
            rev = kldiv.kl(Categorical(logits=s), Categorical(logits=t), reduction="mean")
        else:
            fwd, rev = vocab_kl(s, t), vocab_kl(s, t, direction="reverse")
        agree = (s.argmax(-1) == t.argmax(-1)).float().mean()
    return float(fwd), float(rev), float(agree)


def train(args) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    teacher = Teacher(gen)
    torch.manual_seed(args.seed)
    init = Student()
    students = {run: copy.deepcopy(init) for run in RUNS}
    opts = {run: torch.optim.Adam(m.parameters(), lr=args.lr) for run, m in students.items()}
    x_eval = torch.randn(args.eval_tokens, D_IN, generator=gen)
    with torch.no_grad():
        t_eval = teacher(x_eval)
        entropy = float(-(t_eval.log_softmax(-1).exp() * t_eval.log_softmax(-1)).sum(-1).mean())
    print(
        f"teacher: V = {V}, hidden {H_TEACHER}, entropy {entropy:.2f} nats; student: hidden "
        f"{H_STUDENT}; {args.steps} steps of {args.batch} x {args.length} padded positions"
    )
    print("held-out KL(teacher || student), nats per token, for the student trained with:")
    print(HEADER)
    log = {
        run: {"step": [], "loss": [], "eval_step": [], "fwd": [], "rev": [], "agree": []}
        for run in RUNS
    }
    seconds = dict.fromkeys(RUNS, 0.0)
    every = max(1, args.steps // 10)
    for step in range(1, args.steps + 1):
        x, mask = make_batch(gen, args.batch, args.length)
        with torch.no_grad():
            t_logits = teacher(x)
        for run in RUNS:
            start = time.perf_counter()
            loss = loss_fn(run, students[run](x), t_logits, mask)
            opts[run].zero_grad()
            loss.backward()
            opts[run].step()
            seconds[run] += time.perf_counter() - start
            log[run]["step"].append(step)
            log[run]["loss"].append(loss.item())
        if step % args.eval_every == 0 or step % every == 0 or step in (1, args.steps):
            for run in RUNS:
                fwd, rev, agree = evaluate(students[run], teacher, x_eval)
                for key, value in (
                    ("eval_step", step),
                    ("fwd", fwd),
                    ("rev", rev),
                    ("agree", agree),
                ):
                    log[run][key].append(value)
        if step % every == 0 or step == args.steps:
            print(f"{step:4d}  " + "  ".join(f"{log[run]['fwd'][-1]:9.4f}" for run in RUNS))
    log["seconds"] = seconds
    log["final"] = {run: evaluate(students[run], teacher, x_eval, exact=True) for run in RUNS}
    log["steps"] = args.steps
    return log


def plot(log, args) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    names = {
        "forward": "vocab_kl, forward: KL(teacher || student)",
        "reverse": "vocab_kl, reverse: KL(student || teacher)",
        "jsd": "vocab_kl, jsd (beta = 0.5)",
        "F.kl_div": "F.kl_div (batchmean over valid tokens)",
    }
    for run, filename in zip(RUNS, PLOTS[:4], strict=True):
        r = log[run]
        fig, ax = plt.subplots(figsize=(6.4, 4))
        ax.plot(r["step"], r["loss"], color="tab:gray", alpha=0.6, lw=0.8, label="training loss")
        ax.plot(
            r["eval_step"],
            r["fwd"],
            color="tab:blue",
            marker="o",
            ms=3,
            label="held-out KL(teacher || student)",
        )
        ax.plot(
            r["eval_step"],
            r["rev"],
            color="tab:red",
            marker="s",
            ms=3,
            label="held-out KL(student || teacher)",
        )
        ax.set_yscale("log")
        ax.set(
            title=f"Student trained with {names[run]}",
            xlabel="training step",
            ylabel="nats per token",
        )
        ax2 = ax.twinx()
        ax2.plot(r["eval_step"], r["agree"], color="tab:green", ls="--", label="top-1 agreement")
        ax2.set_ylabel("top-1 agreement with the teacher")
        ax2.set_ylim(0, 1)
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="center right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(args.out / filename)
        fig.savefig(paths[-1], dpi=args.dpi)
        plt.close(fig)

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for run, color in zip(RUNS, ("tab:blue", "tab:red", "tab:purple", "tab:gray"), strict=True):
        style = ":" if run == "F.kl_div" else "-"
        ax.plot(log[run]["eval_step"], log[run]["fwd"], color=color, ls=style, label=run)
        bx.plot(log[run]["eval_step"], log[run]["rev"], color=color, ls=style, label=run)
    ax.set(
        title="Held-out KL(teacher || student)",
        xlabel="training step",
        ylabel="nats per token",
        yscale="log",
    )
    bx.set(
        title="Held-out KL(student || teacher)",
        xlabel="training step",
        ylabel="nats per token",
        yscale="log",
    )
    for a in (ax, bx):
        a.grid(alpha=0.3)
        a.legend(title="trained with", fontsize=8)
    fig.suptitle(f"Distillation over V = {V} tokens: one student, four losses")
    fig.tight_layout()
    paths.append(args.out / PLOTS[4])
    fig.savefig(paths[-1], dpi=args.dpi)
    plt.close(fig)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 300)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("examples/out/distill"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (20 if args.quick else 300)
    args.batch, args.length = (8, 32) if args.quick else (16, 64)
    args.lr, args.eval_tokens = 1e-2, (512 if args.quick else 2048)
    args.eval_every = max(1, args.steps // 30)
    args.dpi = 60 if args.quick else 90
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    log = train(args)

    print()
    print(
        f"final, after {args.steps} steps: exact KLs (kldiv.kl) on {args.eval_tokens} held-out"
        " tokens; time: forward + loss + backward + step"
    )
    print("trained with   KL(t||s)   KL(s||t)   top-1 agree   time (s)   ms/step")
    for run in RUNS:
        fwd, rev, agree = log["final"][run]
        secs = log["seconds"][run]
        print(
            f"{run:12s} {fwd:10.4f} {rev:10.4f} {agree:13.1%}"
            f" {secs:10.2f} {1e3 * secs / args.steps:9.1f}"
        )
    paths = plot(log, args)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
