"""Large-vocabulary KL, forward + backward: kldiv against the usual code, side by side.

Suites (``--suite``; ``--linear`` is ``--suite linear``), each on seeded inputs shared by its
methods:

- ``logits`` (default), N x V student and teacher logits:
  ``naive`` ``F.kl_div(F.log_softmax(s), F.log_softmax(t), log_target=True,
  reduction="batchmean")``; ``compiled``, ``torch.compile`` of it; ``liger``, Liger-Kernel's
  ``LigerKLDIVLoss`` (CUDA only); ``kldiv``, ``kldiv.torch.vocab_kl`` on its torch path;
  ``triton``, ``vocab_kl`` through its Triton kernel (CUDA only).
- ``topk``: the student's logits against the teacher's top ``--k`` log-probabilities:
  ``naive`` is the usual code (a float32 ``log_softmax`` of all logits, ``gather``, the tail
  bucket ``log(1 - sum)``, the KL of the k + 1 buckets, autograd); ``compiled``;
  ``kldiv-bucket`` and ``kldiv-renorm``, ``kldiv.torch.topk_kl`` with each tail.
- ``linear``, the lm_head (hidden ``--hidden``) fused in, teacher head frozen: ``naive`` (the two
  matmuls, then the naive KL), ``compiled``, ``liger`` (``LigerFusedLinearJSDLoss`` with beta=0,
  i.e. forward KL; CUDA only), ``kldiv`` (``fused_linear_vocab_kl``).
- ``parallel``: the vocabulary split over ``--world`` gloo processes on this machine (one thread
  each): ``gather``, what one writes without vocab-parallel support (a differentiable
  all-gather of both sides' logits, then the naive KL on every rank); ``kldiv``,
  ``vocab_kl(..., vocab_group=...)`` on each rank's slice.

Time: all methods of a suite live in one process (one process per rank for ``parallel``) and
are run round-robin, ``--repeat`` rounds after one warm-up pass each, so that a change in the
machine's load hits every method alike; the table gives the median and the range of the passes.
Peak memory: each method again in a fresh process, one pass after the warm-up: the peak resident
set size (``VmHWM``, reset through ``/proc/self/clear_refs``) less the RSS just before it, with
glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed blocks leave the RSS; "peak-grad" also
subtracts the gradient, which is alive at the end of every method (for ``parallel``: the
largest rank). On CUDA, ``torch.cuda.max_memory_allocated`` above the memory before the pass.

Full runs (the issue's sizes):   python benchmarks/vocab.py
                                 python benchmarks/vocab.py --suite topk
                                 python benchmarks/vocab.py --suite linear
                                 python benchmarks/vocab.py --suite parallel
Quick runs (seconds):            add --quick (1024 x 8000, hidden 256)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

SUITES = {
    "logits": ("naive", "compiled", "liger", "kldiv", "triton"),
    "topk": ("naive", "compiled", "kldiv-bucket", "kldiv-renorm"),
    "linear": ("naive", "compiled", "liger", "kldiv"),
    "parallel": ("gather", "kldiv"),
}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--suite", default=None, choices=sorted(SUITES))
    ap.add_argument("--linear", action="store_true", help="the same as --suite linear")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=1024, help="hidden size for --suite linear")
    ap.add_argument("--k", type=int, default=64, help="teacher entries for --suite topk")
    ap.add_argument("--world", type=int, default=2, help="processes for --suite parallel")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1024 tokens x 8000 (hidden 256)")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the suite's")
    ap.add_argument("--chunk-size", type=int, default=None, help="kldiv's chunk_size")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--init", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.suite = args.suite or ("linear" if args.linear else "logits")
    if args.quick:
        args.tokens, args.vocab, args.hidden = 1024, 8000, 256
    return args


# ---------------------------------------------------------------------------------------------
# inputs and methods


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _inputs(args, torch):
    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    n, v, h = args.tokens, args.vocab, args.hidden

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(dtype).to(args.device)

    if args.suite == "linear":
        return {
            "hs": randn(n, h).requires_grad_(),
            "ws": randn(v, h, scale=h**-0.5 * 2).requires_grad_(),
            "ht": randn(n, h),
            "wt": randn(v, h, scale=h**-0.5 * 2),
        }
    s, t = randn(n, v, scale=2.0), randn(n, v, scale=2.0)
    if args.suite == "topk":
        lp, idx = torch.topk(torch.log_softmax(t.float(), dim=-1), args.k)
        return {"s": s.requires_grad_(), "lp": lp, "idx": idx}
    if args.suite == "parallel":
        lo, hi = _slice(v, args.world, args.rank)
        return {"s": s[:, lo:hi].clone().requires_grad_(), "t": t[:, lo:hi].clone()}
    return {"s": s.requires_grad_(), "t": t}


def _slice(v, world, rank):
    lo = rank * v // world
    return lo, (rank + 1) * v // world


def _method(name, args, torch):
    F = torch.nn.functional

    def naive_kl(s, t):
        return F.kl_div(
            F.log_softmax(s.float(), dim=-1),
            F.log_softmax(t.float(), dim=-1),
            log_target=True,
            reduction="batchmean",
        )

    def naive_linear(hs, ws, ht, wt):
        with torch.no_grad():  # the frozen teacher
            zt = ht @ wt.T
        return naive_kl(hs @ ws.T, zt)

    def naive_topk(s, lp, idx):  # forward KL of the k + 1 buckets, as usually written
        ls = F.log_softmax(s.float(), dim=-1).gather(-1, idx)
        tail_t = torch.log1p(-lp.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-7))
        tail_s = torch.log1p(-ls.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-7))
        lt, lsb = torch.cat([lp, tail_t], -1), torch.cat([ls, tail_s], -1)
        return (lt.exp() * (lt - lsb)).sum() / s.shape[0]

    naive = {"logits": naive_kl, "linear": naive_linear, "topk": naive_topk}.get(args.suite)
    if name == "naive":
        return naive
    if name == "compiled":
        return torch.compile(naive)
    if name in ("liger", "triton") and not args.device.startswith("cuda"):
        raise RuntimeError("needs CUDA")
    if name == "liger":
        if args.suite == "linear":
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

            loss = LigerFusedLinearJSDLoss(beta=0.0, weight_hard_loss=0.0, weight_soft_loss=1.0)
            return lambda hs, ws, ht, wt: loss(hs, ws, ht, wt, None)
        from liger_kernel.transformers import LigerKLDIVLoss

        loss = LigerKLDIVLoss(reduction="batchmean", log_target=True)
        return lambda s, t: loss(F.log_softmax(s.float(), dim=-1), F.log_softmax(t.float(), dim=-1))
    import kldiv.torch as kt
    from kldiv.torch import vocab as vocab_mod

    cs = args.chunk_size
    if name == "triton":
        import triton  # noqa: F401  (ImportError: the row is skipped)

        os.environ["KLDIV_DISABLE_TRITON"] = "0"  # read per call: the kldiv rows set "1"
        if not vocab_mod._use_triton(
            torch.empty(0, device=args.device),
            vocab_mod._Spec("forward", 0.0, 1.0, 1.0, torch.float32),
        ):
            raise RuntimeError("vocab_kl would not dispatch to Triton (KLDIV_DISABLE_TRITON?)")

        def through_triton(s, t):
            os.environ["KLDIV_DISABLE_TRITON"] = "0"
            return kt.vocab_kl(student=s, teacher=t)

        return through_triton
    if args.suite == "linear":
        return lambda hs, ws, ht, wt: kt.fused_linear_vocab_kl(
            student=(hs, ws), teacher=(ht, wt), chunk_size=cs
        )
    if args.suite == "topk":
        tail = "bucket" if name == "kldiv-bucket" else "renormalize"
        return lambda s, lp, idx: kt.topk_kl(
            student=s, teacher=(lp, idx), tail=tail, reduction="batchmean", chunk_size=cs
        )
    if args.suite == "parallel":
        import torch.distributed as dist

        if name == "gather":
            from torch.distributed.nn.functional import all_gather

            return lambda s, t: naive_kl(torch.cat(all_gather(s), -1), torch.cat(all_gather(t), -1))
        return lambda s, t: kt.vocab_kl(
            student=s, teacher=t, reduction="batchmean", vocab_group=dist.group.WORLD
        )

    def torch_path(s, t):
        os.environ["KLDIV_DISABLE_TRITON"] = "1"
        return kt.vocab_kl(student=s, teacher=t, reduction="batchmean", chunk_size=cs)

    return torch_path


# ---------------------------------------------------------------------------------------------
# workers: the timing one runs every method round-robin; the memory one a single method


def _pass(fn, x, leaves, sync):
    for v in leaves:
        v.grad = None
    gc.collect()
    sync()
    t0 = time.perf_counter()
    fn(**x).backward()
    sync()
    return time.perf_counter() - t0


def worker(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.suite == "parallel":
        import torch.distributed as dist

        dist.init_process_group(
            "gloo", init_method=f"file://{args.init}", rank=args.rank, world_size=args.world
        )
    x = _inputs(args, torch)
    leaves = [v for v in x.values() if v.requires_grad]
    cuda = args.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()
        if args.suite == "parallel":
            torch.distributed.barrier()

    names = args.worker.split(",")
    fns, out = {}, {}
    for name in names:
        try:
            fns[name] = _method(name, args, torch)
            _pass(fns[name], x, leaves, sync)  # warm-up (and compilation)
        except Exception as err:  # a row says why it was skipped
            fns.pop(name, None)
            out[name] = {"error": f"{type(err).__name__}: {err}"[:100]}
    if os.environ.get("KLDIV_BENCH_MEASURE") == "memory":
        (name,) = names
        if name in fns:
            for v in leaves:
                v.grad = None
            gc.collect()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fns[name](**x).backward()
                sync()
                peak = torch.cuda.max_memory_allocated() - base
            else:
                base = _rss_kib("VmRSS")
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # VmHWM := VmRSS
                fns[name](**x).backward()
                peak = (_rss_kib("VmHWM") - base) * 1024
            out[name] = {
                "peak_bytes": peak,
                "grad_bytes": sum(v.grad.numel() * v.grad.element_size() for v in leaves),
                "input_bytes": sum(v.numel() * v.element_size() for v in x.values()),
            }
    else:
        times = {name: [] for name in fns}
        for _ in range(args.repeat):
            for name, fn in fns.items():
                times[name].append(_pass(fn, x, leaves, sync))
        for name, ts in times.items():
            out[name] = {"times": ts}
    if args.suite == "parallel":
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return out


def _run(args, names, memory: bool) -> dict:
    """Run a worker (``--world`` ranks for ``parallel``) and merge what the ranks report."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", ",".join(names)]
    for k in ("suite", "tokens", "vocab", "hidden", "k", "world", "dtype", "device", "repeat"):
        cmd += [f"--{k}", str(getattr(args, k))]
    if args.chunk_size is not None:
        cmd += ["--chunk-size", str(args.chunk_size)]
    env = dict(os.environ, KLDIV_BENCH_MEASURE="memory" if memory else "time")
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    ranks = args.world if args.suite == "parallel" else 1
    threads = 1 if args.suite == "parallel" else args.threads
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for r in range(ranks):
            extra = ["--rank", str(r), "--init", os.path.join(tmp, "init")]
            extra += ["--threads", str(threads)] if threads else []
            procs.append(
                subprocess.Popen(
                    cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
                )
            )
        outs = [p.communicate() for p in procs]
    results = []
    for p, (stdout, stderr) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            last = (stderr.strip().splitlines() or ["failed"])[-1]
            return {n: {"error": last[:100]} for n in names}
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    merged = {}
    for n in names:
        per = [r[n] for r in results]
        if "error" in per[0]:
            merged[n] = per[0]
        elif memory:  # the largest rank
            merged[n] = max(per, key=lambda m: m["peak_bytes"])
        else:  # a pass takes as long as its slowest rank
            merged[n] = {"times": [max(ts) for ts in zip(*(m["times"] for m in per), strict=True)]}
    return merged


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(SUITES[args.suite]) if args.methods is None else args.methods.split(",")
    what = {
        "logits": "KL of logits",
        "topk": f"KL against the teacher's top {args.k}",
        "linear": f"fused lm_head (hidden {args.hidden}) + KL",
        "parallel": f"KL of logits, vocabulary split over {args.world} gloo processes",
    }[args.suite]
    print(f"# {what}, {args.tokens} x {args.vocab}, {args.dtype}, {args.device}, forward+backward")
    threads = (
        "1 thread per rank" if args.suite == "parallel" else f"{torch.get_num_threads()} threads"
    )
    print(
        f"# torch {torch.__version__}, {threads}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, {args.repeat} rounds round-robin, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    results = _run(args, names, memory=False)
    if not args.no_memory:
        for n in names:
            if "error" not in results[n]:
                results[n].update(_run(args, [n], memory=True)[n])
    base = results.get(names[0], {})
    mib = 1 << 20
    head = (
        f"{'method':<13} {'median s':>8} {'range s':>13} {'x ' + names[0]:>8} {'peak MiB':>9} "
        f"{'x':>6} {'peak-grad':>9} {'x':>6}"
    )
    print(head)
    print("-" * len(head))
    bt = statistics.median(base["times"]) if "times" in base else math.nan
    bp = base.get("peak_bytes", math.nan)
    bg = bp - base.get("grad_bytes", math.nan)
    for n in names:
        r = results[n]
        if "error" in r:
            print(f"{n:<13} skipped: {r['error']}")
            continue
        t = statistics.median(r["times"])
        span = f"{min(r['times']):.3f}-{max(r['times']):.3f}"
        pk = r.get("peak_bytes", math.nan)
        pg = pk - r.get("grad_bytes", math.nan)
        print(
            f"{n:<13} {t:>8.3f} {span:>13} {t / bt:>8.2f} {pk / mib:>9.0f} {pk / bp:>6.3f} "
            f"{pg / mib:>9.0f} {pg / bg if bg else math.nan:>6.3f}"
        )
    some = next((r for r in results.values() if "input_bytes" in r), None)
    if some:
        print(
            f"# inputs {some['input_bytes'] / mib:.0f} MiB, gradient {some['grad_bytes'] / mib:.0f}"
            " MiB (per rank for parallel); peak = peak RSS above the inputs during one pass; "
            "peak-grad = that less the gradient"
        )
    try:
        with open("/proc/loadavg") as f:
            print(f"# load average at the end: {' '.join(f.read().split()[:3])}")
    except OSError:
        pass


if __name__ == "__main__":
    main()
