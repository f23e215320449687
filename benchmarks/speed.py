"""kldiv's closed forms against the one-line formulas they replace, side by side in one run.

Each row times the reference formula and the equivalent ``kldiv.kl`` call on the same seeded
inputs, alternating the two (``--repeat`` rounds, each timing a loop long enough to be measured),
and prints the medians and their ratio. Work is forward + backward unless the row says
``forward``. Both results are also compared (relative difference of the values, and of the
gradients, must be below 1e-4 in float32), so a fast wrong answer can't hide in this table.

Rows (the table of issue 11, plus a few that show what a user can meet):

- torch eager: the VAE term (hand-written ``-0.5*sum(1+lv-mu^2-exp(lv))``) at 4096x128 and
  64x16; Normal vs Normal with log-variances on both sides (guided-diffusion's ``normal_kl``)
  and with standard deviations (``torch.distributions``); Categorical logits vs logits against
  ``F.kl_div(log_softmax, log_softmax, log_target=True)`` at 256x10000, 2x256x32000 and 32x50,
  and with a student close to its teacher; Bernoulli logits (hand-written with ``logsigmoid``);
  MultivariateNormal with ``scale_tril`` (``torch.distributions``) at B=256 k=16 and B=64 k=128;
- peak memory of the categorical 2x256x32000 row beyond the inputs and the gradient, each in a
  fresh subprocess (Linux: ``VmHWM`` with glibc's ``MALLOC_MMAP_THRESHOLD_=65536``);
- NumPy forward: the VAE term in float64, Categorical probabilities against
  ``scipy.special.rel_entr(p, q).sum(-1)``;
- ``jax.jit(jax.grad(...))``: the VAE term and Categorical logits (JAX's default float32);
- ``torch.compile(fullgraph=True)``: the VAE term and Categorical logits, both sides compiled;
- CUDA rows (the torch eager rows again) when a GPU is present.

Full run (minutes):            python benchmarks/speed.py
Quick run (seconds; for CI):   python benchmarks/speed.py --quick
One group:                     python benchmarks/speed.py --only torch,numpy,jax,compile,memory

``--quick`` uses tiny sizes and one round: it checks that every row runs and agrees, and asserts
nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

GROUPS = ("torch", "memory", "numpy", "jax", "compile", "cuda")


@dataclass
class Row:
    group: str
    name: str
    reference: str
    target: float
    setup: Callable  # () -> (ref_step, kldiv_step, check); steps run one forward (+ backward)
    note: str = ""
    results: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# inputs


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _torch_inputs(shapes, seed, device="cpu", dtype="float32", scale=1.0, grad=None):
    import torch

    rng = _rng(seed)
    grad = grad or [True] * len(shapes)
    out = []
    for shape, g in zip(shapes, grad, strict=True):
        t = torch.as_tensor(scale * rng.standard_normal(shape), dtype=getattr(torch, dtype))
        out.append(t.to(device).requires_grad_(g))
    return out


def _close(a, b, what: str, tol: float = 1e-4) -> None:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = np.maximum(np.abs(b), 1e-30)
    err = float(np.max(np.abs(a - b) / scale)) if a.size else 0.0
    if not err <= tol:
        raise AssertionError(f"{what}: kldiv and the reference differ (max rel. diff {err:.3g})")


def _grads_close(tensors_a, tensors_b, what: str) -> None:
    for i, (x, y) in enumerate(zip(tensors_a, tensors_b, strict=True)):
        xa, ya = x.detach().cpu().double().numpy(), y.detach().cpu().double().numpy()
        scale = max(float(np.max(np.abs(ya))), 1e-30)
        err = float(np.max(np.abs(xa - ya))) / scale
        if not err <= 1e-4:
            raise AssertionError(f"{what}: gradient {i} differs (max diff/scale {err:.3g})")


def _torch_step(loss_fn, inputs):
    """One forward + backward; returns (value, grads) for the check."""
    import torch

    def step():
        for t in inputs:
            t.grad = None
        loss = loss_fn(*inputs)
        needs = [t for t in inputs if t.requires_grad]
        if needs:
            loss.backward()
        return loss

    def value_and_grads():
        loss = step()
        return float(loss.detach()), [
            t.grad.clone() if t.grad is not None else torch.zeros(()) for t in inputs
        ]

    return step, value_and_grads


def _torch_pair(ref_loss, kl_loss, inputs, what, grad_view=lambda i, g: g):
    """The two steps, and a check of kldiv against the reference formula evaluated in float64
    on the same inputs (in float32 the one-liners themselves lose digits near equality)."""
    ref_step, _ = _torch_step(ref_loss, inputs)
    kl_step, kl_vg = _torch_step(kl_loss, inputs)
    wide = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    _, ref_vg = _torch_step(ref_loss, wide)

    def check():
        (rv, rg), (kv, kg) = ref_vg(), kl_vg()
        _close(kv, rv, what)
        view = (
            [grad_view(i, g) for i, g in enumerate(kg)],
            [grad_view(i, g) for i, g in enumerate(rg)],
        )
        _grads_close(*view, what)

    return ref_step, kl_step, check


# ---------------------------------------------------------------------------------------------
# the formulas being replaced (as users write them)


def _vae_ref(mu, lv):
    import torch

    return -0.5 * torch.sum(1 + lv - mu.pow(2) - lv.exp()) / mu.shape[0]


def _normal_kl_guided_diffusion(mean1, logvar1, mean2, logvar2):
    import torch

    kl = 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )
    return kl.sum() / mean1.shape[0]


def _categorical_ref(teacher, student):
    import torch.nn.functional as F

    return F.kl_div(
        F.log_softmax(student, dim=-1),
        F.log_softmax(teacher, dim=-1),
        log_target=True,
        reduction="batchmean",
    )


def _categorical_ref_tokens(teacher, student):
    """Mean over tokens of (B, T, V) inputs: the same F.kl_div on the flattened tokens."""
    v = teacher.shape[-1]
    return _categorical_ref(teacher.reshape(-1, v), student.reshape(-1, v))


def _bernoulli_ref(a, b):
    import torch.nn.functional as F

    p = torch_sigmoid(a)
    kl = p * (F.logsigmoid(a) - F.logsigmoid(b)) + (1 - p) * (F.logsigmoid(-a) - F.logsigmoid(-b))
    return kl.sum() / a.shape[0]


def torch_sigmoid(x):
    import torch

    return torch.sigmoid(x)


# ---------------------------------------------------------------------------------------------
# rows


def torch_rows(quick: bool, device: str = "cpu") -> list[Row]:
    import torch

    import kldiv
    from kldiv import Bernoulli, Categorical, MultivariateNormal, Normal

    group = "torch" if device == "cpu" else "cuda"
    big = (256, 16) if quick else (4096, 128)
    vocab = (8, 100) if quick else (256, 10000)
    tokens = (2, 8, 320) if quick else (2, 256, 32000)
    rows = []

    def vae(shape):
        def setup():
            mu, lv = _torch_inputs([shape, shape], 1, device, scale=0.5)

            def ours(m, v):
                return kldiv.kl(
                    Normal(m, log_var=v), Normal.standard(), event_axis=-1, reduction="mean"
                )

            return _torch_pair(_vae_ref, ours, [mu, lv], "VAE term")

        return setup

    rows.append(
        Row(
            group,
            f"VAE term, Normal(mu, log_var) vs standard, {big[0]}x{big[1]}",
            "-0.5*sum(1+lv-mu²-exp(lv))",
            1.5,
            vae(big),
        )
    )
    rows.append(Row(group, "same, 64x16 (per-call overhead)", "same", 2.0, vae((64, 16))))

    def normal_log_var():
        m1, l1, m2, l2 = _torch_inputs([big] * 4, 2, device, scale=0.5)

        def ours(a, b, c, d):
            return kldiv.kl(
                Normal(a, log_var=b), Normal(c, log_var=d), event_axis=-1, reduction="mean"
            )

        return _torch_pair(_normal_kl_guided_diffusion, ours, [m1, l1, m2, l2], "normal_kl")

    rows.append(
        Row(
            group,
            f"Normal vs Normal, log_var both sides, {big[0]}x{big[1]}",
            "guided-diffusion normal_kl",
            1.5,
            normal_log_var,
        )
    )

    def normal_std():
        m1, s1, m2, s2 = _torch_inputs([big] * 4, 3, device, scale=0.5)
        with torch.no_grad():
            s1.copy_(s1.exp())
            s2.copy_(s2.exp())
        td = torch.distributions

        def ref(a, b, c, d):
            return td.kl_divergence(td.Normal(a, b), td.Normal(c, d)).sum() / a.shape[0]

        def ours(a, b, c, d):
            return kldiv.kl(Normal(a, std=b), Normal(c, std=d), event_axis=-1, reduction="mean")

        return _torch_pair(ref, ours, [m1, s1, m2, s2], "Normal std")

    rows.append(
        Row(
            group,
            f"Normal vs Normal, std both sides, {big[0]}x{big[1]}",
            "torch.distributions",
            1.5,
            normal_std,
        )
    )

    def categorical(shape, near=0.0, target=1.5):
        def setup():
            t, s = _torch_inputs([shape, shape], 4, device, scale=2.0, grad=[False, True])
            if near:
                with torch.no_grad():
                    s.copy_(t + near * s)

            def ours(a, b):
                return kldiv.kl(Categorical(logits=a), Categorical(logits=b), reduction="mean")

            ref = _categorical_ref_tokens if len(shape) == 3 else _categorical_ref
            return _torch_pair(ref, ours, [t, s], "Categorical")

        return setup

    name = "x".join(map(str, vocab))
    rows.append(
        Row(
            group,
            f"Categorical logits vs logits, {name}",
            "F.kl_div(log_softmax, ...)",
            1.5,
            categorical(vocab),
        )
    )
    for noise, kl in ((0.05, "5e-3"), (0.005, "5e-5")):
        rows.append(
            Row(
                group,
                f"same, student close to teacher (KL ~ {kl}), {name}",
                "same",
                1.5,
                categorical(vocab, near=noise),
            )
        )
    rows.append(Row(group, f"same, {'x'.join(map(str, tokens))}", "same", 1.5, categorical(tokens)))
    rows.append(Row(group, "same, 32x50 (per-call overhead)", "same", 2.0, categorical((32, 50))))

    def bernoulli():
        a, b = _torch_inputs([big, big], 5, device, scale=2.0)

        def ours(x, y):
            return kldiv.kl(
                Bernoulli(logits=x), Bernoulli(logits=y), event_axis=-1, reduction="mean"
            )

        return _torch_pair(_bernoulli_ref, ours, [a, b], "Bernoulli")

    rows.append(
        Row(
            group,
            f"Bernoulli logits, {big[0]}x{big[1]}",
            "hand-written with logsigmoid",
            1.5,
            bernoulli,
        )
    )

    def mvn(batch, k):
        def setup():
            rng = _rng(6)
            dtype = torch.float32

            def tril():
                a = rng.standard_normal((batch, k, k)) / np.sqrt(k)
                low = np.tril(a, -1) + np.eye(k) * np.exp(rng.uniform(-0.5, 0.5, (batch, 1, k)))
                return torch.as_tensor(low, dtype=dtype, device=device).requires_grad_()

            lp = torch.as_tensor(rng.standard_normal((batch, k)), dtype=dtype, device=device)
            lq = torch.as_tensor(rng.standard_normal((batch, k)), dtype=dtype, device=device)
            inputs = [lp.requires_grad_(), tril(), lq.requires_grad_(), tril()]
            td = torch.distributions

            def ref(a, b, c, d):
                return td.kl_divergence(
                    td.MultivariateNormal(a, scale_tril=b), td.MultivariateNormal(c, scale_tril=d)
                ).mean()

            def ours(a, b, c, d):
                return kldiv.kl(
                    MultivariateNormal(a, scale_tril=b),
                    MultivariateNormal(c, scale_tril=d),
                    reduction="mean",
                )

            # kldiv reads only the lower triangle of a scale_tril; torch's formula also
            # differentiates the (zero) upper one: compare the lower triangles.
            return _torch_pair(ref, ours, inputs, "MVN", lambda i, g: torch.tril(g) if i % 2 else g)

        return setup

    for batch, k in ((8, 4), (4, 8)) if quick else ((256, 16), (64, 128)):
        rows.append(
            Row(
                group,
                f"MultivariateNormal scale_tril, B={batch} k={k}",
                "torch.distributions",
                1.2,
                mvn(batch, k),
            )
        )
    return rows


def numpy_rows(quick: bool) -> list[Row]:
    import scipy.special

    import kldiv
    from kldiv import Categorical, Normal

    big = (256, 16) if quick else (4096, 128)
    vocab = (16, 100) if quick else (256, 1000)

    def vae():
        rng = _rng(7)
        mu, lv = 0.5 * rng.standard_normal(big), 0.5 * rng.standard_normal(big)

        def ref():
            return -0.5 * np.sum(1 + lv - mu**2 - np.exp(lv)) / mu.shape[0]

        def ours():
            return kldiv.kl(
                Normal(mu, log_var=lv), Normal.standard(), event_axis=-1, reduction="mean"
            )

        return ref, ours, lambda: _close(ours(), ref(), "NumPy VAE", 1e-10)

    def probs():
        rng = _rng(8)
        p = rng.dirichlet(np.ones(vocab[1]), vocab[0])
        q = rng.dirichlet(np.ones(vocab[1]), vocab[0])

        def ref():
            return scipy.special.rel_entr(p, q).sum(-1)

        def ours():
            return kldiv.kl(Categorical(probs=p), Categorical(probs=q))

        return ref, ours, lambda: _close(ours(), ref(), "NumPy probs", 1e-10)

    return [
        Row(
            "numpy", f"NumPy VAE term {big[0]}x{big[1]} float64 (forward)", "hand-written", 2.0, vae
        ),
        Row(
            "numpy",
            f"NumPy Categorical probs {vocab[0]}x{vocab[1]} float64 (forward)",
            "scipy.special.rel_entr(p, q).sum(-1)",
            2.0,
            probs,
        ),
    ]


def jax_rows(quick: bool) -> list[Row]:
    import jax
    import jax.numpy as jnp

    import kldiv
    from kldiv import Categorical, Normal

    big = (256, 16) if quick else (4096, 128)
    vocab = (8, 100) if quick else (256, 10000)

    def pair(ref_loss, kl_loss, inputs, argnums, what):
        ref = jax.jit(jax.value_and_grad(ref_loss, argnums=argnums))
        ours = jax.jit(jax.value_and_grad(kl_loss, argnums=argnums))

        def run(fn):
            def step():
                v, g = fn(*inputs)
                jax.block_until_ready(g)
                return v, g

            return step

        def check():
            (rv, rg), (kv, kg) = run(ref)(), run(ours)()
            _close(float(kv), float(rv), what)
            for a, b in zip(jax.tree.leaves(kg), jax.tree.leaves(rg), strict=True):
                scale = max(float(jnp.max(jnp.abs(b))), 1e-30)
                err = float(jnp.max(jnp.abs(a - b))) / scale
                if not err <= 1e-4:
                    raise AssertionError(f"{what}: gradient differs ({err:.3g})")

        return run(ref), run(ours), check

    def vae():
        rng = _rng(9)
        mu = jnp.asarray(0.5 * rng.standard_normal(big), dtype=jnp.float32)
        lv = jnp.asarray(0.5 * rng.standard_normal(big), dtype=jnp.float32)

        def ref(m, v):
            return -0.5 * jnp.sum(1 + v - m**2 - jnp.exp(v)) / m.shape[0]

        def ours(m, v):
            return kldiv.kl(
                Normal(m, log_var=v), Normal.standard(), event_axis=-1, reduction="mean"
            )

        return pair(ref, ours, (mu, lv), (0, 1), "JAX VAE")

    def categorical():
        rng = _rng(10)
        t = jnp.asarray(2.0 * rng.standard_normal(vocab), dtype=jnp.float32)
        s = jnp.asarray(2.0 * rng.standard_normal(vocab), dtype=jnp.float32)

        def ref(a, b):
            lp, lq = jax.nn.log_softmax(a, -1), jax.nn.log_softmax(b, -1)
            return jnp.sum(jnp.exp(lp) * (lp - lq)) / a.shape[0]

        def ours(a, b):
            return kldiv.kl(Categorical(logits=a), Categorical(logits=b), reduction="mean")

        return pair(ref, ours, (t, s), 1, "JAX Categorical")

    return [
        Row(
            "jax", f"jax.jit(jax.grad) VAE term {big[0]}x{big[1]} float32", "hand-written", 1.3, vae
        ),
        Row(
            "jax",
            f"jax.jit(jax.grad) Categorical logits {vocab[0]}x{vocab[1]} float32",
            "jax.nn.log_softmax formula",
            1.3,
            categorical,
        ),
    ]


def compile_rows(quick: bool) -> list[Row]:
    import torch

    import kldiv
    from kldiv import Categorical, Normal

    big = (256, 16) if quick else (4096, 128)
    vocab = (8, 100) if quick else (256, 10000)

    def compiled(fn):
        return torch.compile(fn, fullgraph=True)

    def vae():
        mu, lv = _torch_inputs([big, big], 11, scale=0.5)

        def ours(m, v):
            return kldiv.kl(
                Normal(m, log_var=v), Normal.standard(), event_axis=-1, reduction="mean"
            )

        return _torch_pair(compiled(_vae_ref), compiled(ours), [mu, lv], "compiled VAE")

    def categorical():
        t, s = _torch_inputs([vocab, vocab], 12, scale=2.0, grad=[False, True])

        def ours(a, b):
            return kldiv.kl(Categorical(logits=a), Categorical(logits=b), reduction="mean")

        return _torch_pair(compiled(_categorical_ref), compiled(ours), [t, s], "compiled cat")

    return [
        Row(
            "compile",
            f"torch.compile VAE term {big[0]}x{big[1]}",
            "hand-written, compiled",
            1.3,
            vae,
        ),
        Row(
            "compile",
            f"torch.compile Categorical logits {vocab[0]}x{vocab[1]}",
            "F.kl_div, compiled",
            1.3,
            categorical,
        ),
    ]


# ---------------------------------------------------------------------------------------------
# timing


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def _time_loop(step: Callable, budget: float) -> float:
    """Seconds per call: calls ``step`` until ``budget`` seconds have passed (at least twice)."""
    n, start = 0, clock()
    while True:
        step()
        n += 1
        elapsed = clock() - start
        if (elapsed >= budget and n >= 2) or n >= 10000:
            return elapsed / n


def run_row(row: Row, repeat: int, budget: float, sync: Callable = lambda: None) -> None:
    ref, ours, check = row.setup()
    check()
    for _ in range(2):  # warm-up (compiles, caches)
        ref(), ours()
    sync()

    def synced(step):
        def s():
            step()
            sync()

        return s

    ref_t, ours_t = [], []
    for i in range(repeat):
        order = ((ref, ref_t), (ours, ours_t)) if i % 2 == 0 else ((ours, ours_t), (ref, ref_t))
        for step, out in order:
            out.append(_time_loop(synced(step), budget))
    row.results = {
        "reference_s": statistics.median(ref_t),
        "kldiv_s": statistics.median(ours_t),
        "ratio": statistics.median(ours_t) / statistics.median(ref_t),
        "ratio_range": (
            min(o / r for o, r in zip(ours_t, ref_t, strict=True)),
            max(o / r for o, r in zip(ours_t, ref_t, strict=True)),
        ),
    }


# ---------------------------------------------------------------------------------------------
# peak memory, one measurement per fresh subprocess


def _memory_worker(method: str, quick: bool) -> None:

    import kldiv
    from kldiv import Categorical

    shape = (2, 8, 320) if quick else (2, 256, 32000)
    t, s = _torch_inputs([shape, shape], 4, scale=2.0, grad=[False, True])

    def ours(a, b):
        return kldiv.kl(Categorical(logits=a), Categorical(logits=b), reduction="mean")

    fn = _categorical_ref_tokens if method == "reference" else ours
    fn(t, s).backward()  # warm-up: one-time allocations are not the method's peak
    s.grad = None
    grad_bytes = s.numel() * s.element_size()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    fn(t, s).backward()
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mib": (peak - before) / 1024, "grad_mib": grad_bytes / 2**20}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def memory_rows(quick: bool) -> list[dict]:
    if not sys.platform.startswith("linux"):
        return [{"skipped": "peak memory is measured through /proc (Linux only)"}]
    out = {}
    for method in ("reference", "kldiv"):
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        cmd = [sys.executable, __file__, "--memory-worker", method] + (["--quick"] * quick)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        out[method] = json.loads(res.stdout.strip().splitlines()[-1])
    ref, ours = out["reference"], out["kldiv"]
    beyond = {k: max(v["peak_mib"] - v["grad_mib"], 0.0) for k, v in out.items()}
    return [
        {
            "name": "peak memory beyond inputs and gradient, Categorical "
            + ("2x8x320" if quick else "2x256x32000"),
            "reference": beyond["reference"],
            "kldiv": beyond["kldiv"],
            "ratio": beyond["kldiv"] / max(beyond["reference"], 1e-9),
            "target": 1.5,
            "raw": {"reference": ref, "kldiv": ours},
        }
    ]


# ---------------------------------------------------------------------------------------------


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = [f"Python {platform.python_version()}", f"NumPy {np.__version__}"]
    for mod in ("torch", "jax"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return f"{os.cpu_count()} x {cpu}; " + ", ".join(versions)


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round (for CI)")
    ap.add_argument("--only", default=",".join(GROUPS), help="groups to run: " + ",".join(GROUPS))
    ap.add_argument("--repeat", type=int, default=7, help="alternating rounds per row")
    ap.add_argument("--budget", type=float, default=0.2, help="seconds per timed loop")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)"
    )
    ap.add_argument(
        "--clock",
        default="wall",
        choices=sorted(CLOCK),
        help="wall time (default), or this process's CPU time, which a shared machine disturbs "
        "less (use with --threads 1)",
    )
    ap.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_worker:
        _memory_worker(args.memory_worker, args.quick)
        return 0
    global clock
    clock = CLOCK[args.clock]
    if args.threads and _importable("torch"):
        __import__("torch").set_num_threads(args.threads)
    groups = set(args.only.split(","))
    repeat, budget = (1, 0.0) if args.quick else (args.repeat, args.budget)
    rows: list[Row] = []
    have = {m: _importable(m) for m in ("torch", "jax")}
    if "torch" in groups and have["torch"]:
        rows += torch_rows(args.quick)
    if "numpy" in groups:
        rows += numpy_rows(args.quick)
    if "jax" in groups and have["jax"]:
        rows += jax_rows(args.quick)
    if "compile" in groups and have["torch"]:
        rows += compile_rows(args.quick)
    cuda = have["torch"] and __import__("torch").cuda.is_available()
    if "cuda" in groups and cuda:
        rows += torch_rows(args.quick, device="cuda")
    print(f"machine: {_machine()}")
    if _importable("torch"):
        print(f"torch threads: {__import__('torch').get_num_threads()}; clock: {args.clock}")
    print(f"{'work':<68} | {'reference':<28} | {'ref.':>9} | {'kldiv':>9} | ratio | target")
    print("-" * 140)
    for row in rows:
        sync = (lambda: __import__("torch").cuda.synchronize()) if row.group == "cuda" else None
        run_row(row, repeat, budget, sync or (lambda: None))
        r = row.results
        print(
            f"{row.name:<68} | {row.reference:<28} | {_fmt_s(r['reference_s']):>9} | "
            f"{_fmt_s(r['kldiv_s']):>9} | {r['ratio']:4.2f}x | {row.target:.1f}x",
            flush=True,
        )
    mem = memory_rows(args.quick) if "memory" in groups and have["torch"] else []
    for m in mem:
        if "skipped" in m:
            print(f"memory: skipped ({m['skipped']})")
            continue
        print(
            f"{m['name']:<68} | {'F.kl_div':<28} | {m['reference']:7.0f} MiB | "
            f"{m['kldiv']:7.0f} MiB | {m['ratio']:4.2f}x | {m['target']:.1f}x"
        )
    if not cuda:
        print("cuda: skipped (no GPU here)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": _machine(),
                    "rows": [{"name": r.name, "group": r.group, **r.results} for r in rows],
                    "memory": mem,
                },
                f,
                indent=1,
            )
    return 0


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main())
