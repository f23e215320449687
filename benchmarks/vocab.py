"""Large-vocabulary KL, forward + backward: kldiv against the usual code, side by side.

Runs, on the same inputs (seeded), each method in a fresh subprocess:

- ``naive``: ``F.kl_div(F.log_softmax(s), F.log_softmax(t), log_target=True,
  reduction="batchmean")`` (for ``--linear``: the two lm_head matmuls first);
- ``compiled``: ``torch.compile`` of the same function;
- ``liger``: Liger-Kernel's KL (or fused linear JSD with beta=0, i.e. forward KL) when it is
  importable and CUDA is present;
- ``kldiv``: ``kldiv.torch.vocab_kl`` (``fused_linear_vocab_kl`` for ``--linear``), its chunked
  torch path (on CUDA with ``KLDIV_DISABLE_TRITON=1``);
- ``triton``: ``vocab_kl`` through its Triton kernel, what CUDA users get by default when
  ``triton`` is installed (CUDA only: on CPU the row says "skipped: needs CUDA"; no fused
  variant).

Time: the median of ``--repeat`` forward+backward passes after one warm-up pass.

Peak memory on CPU: the peak resident set size (``VmHWM``, reset through
``/proc/self/clear_refs``) during one forward+backward pass, minus the RSS just before it
(inputs allocated, warm-up done). That run happens in its own subprocess with glibc's
``MALLOC_MMAP_THRESHOLD_=65536``, so that every block of 64 KiB or more is its own mapping and
freed memory leaves the RSS: the RSS then follows what torch really has allocated. The gradient
(of the student logits, or of the student head and hidden states) is alive at the end and is
part of that peak; the table also gives the peak less the gradient. On CUDA,
``torch.cuda.max_memory_allocated`` above the allocation before the pass.

Full run (the issue's sizes):   python benchmarks/vocab.py
                                python benchmarks/vocab.py --linear
Quick run (seconds):            python benchmarks/vocab.py --quick
                                python benchmarks/vocab.py --linear --quick
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ("naive", "compiled", "liger", "kldiv", "triton")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=1024, help="hidden size for --linear")
    ap.add_argument("--linear", action="store_true", help="fused lm_head + KL variant")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1024 tokens x 8000 (hidden 256)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--chunk-size", type=int, default=None, help="kldiv's chunk_size")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--measure", default=None, choices=["time", "memory"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.vocab, args.hidden = 1024, 8000, 256
    return args


# ---------------------------------------------------------------------------------------------
# the worker: one method, one measurement, in its own process


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

    if not args.linear:
        return {"s": randn(n, v, scale=2.0).requires_grad_(), "t": randn(n, v, scale=2.0)}
    return {
        "hs": randn(n, h).requires_grad_(),
        "ws": randn(v, h, scale=h**-0.5 * 2).requires_grad_(),
        "ht": randn(n, h),
        "wt": randn(v, h, scale=h**-0.5 * 2),
    }


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

    if name == "naive":
        return naive_linear if args.linear else naive_kl
    if name == "compiled":
        return torch.compile(naive_linear if args.linear else naive_kl)
    if name == "triton":
        import triton  # noqa: F401  (ImportError: the row is skipped)

        from kldiv.torch import vocab as vocab_mod
        from kldiv.torch import vocab_kl

        if args.linear or not args.device.startswith("cuda"):
            raise RuntimeError("the Triton path serves vocab_kl on CUDA only")
        if not vocab_mod._use_triton(
            torch.empty(0, device=args.device),
            vocab_mod._Spec("forward", 0.0, 1.0, 1.0, torch.float32),
        ):
            raise RuntimeError("vocab_kl would not dispatch to Triton (KLDIV_DISABLE_TRITON?)")
        return lambda s, t: vocab_kl(s, t)
    if name == "kldiv":
        from kldiv.torch import fused_linear_vocab_kl, vocab_kl

        if args.linear:
            return lambda hs, ws, ht, wt: fused_linear_vocab_kl(
                hs, ws, ht, wt, chunk_size=args.chunk_size
            )
        return lambda s, t: vocab_kl(s, t, chunk_size=args.chunk_size)
    if name == "liger":
        if not torch.cuda.is_available() or args.device == "cpu":
            raise RuntimeError("Liger-Kernel needs CUDA (Triton)")
        if args.linear:
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

            loss = LigerFusedLinearJSDLoss(beta=0.0, weight_hard_loss=0.0, weight_soft_loss=1.0)
            return lambda hs, ws, ht, wt: loss(hs, ws, ht, wt, None)
        from liger_kernel.transformers import LigerKLDIVLoss

        loss = LigerKLDIVLoss(reduction="batchmean", log_target=True)
        return lambda s, t: loss(F.log_softmax(s.float(), dim=-1), F.log_softmax(t.float(), dim=-1))
    raise ValueError(name)


def worker(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    x = _inputs(args, torch)
    leaves = [v for v in x.values() if v.requires_grad]
    fn = _method(args.worker, args, torch)
    cuda = args.device.startswith("cuda")

    def step():
        fn(**x).backward()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up (and compilation)
    sync()
    out = {}
    if args.measure == "time":
        times = []
        for _ in range(args.repeat):
            for v in leaves:
                v.grad = None
            gc.collect()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        out["time_s"] = statistics.median(times)
        out["times"] = times
    else:
        for v in leaves:
            v.grad = None
        gc.collect()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            sync()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            base = _rss_kib("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS
            step()
            peak = (_rss_kib("VmHWM") - base) * 1024
        out["peak_bytes"] = peak
        out["grad_bytes"] = sum(v.grad.numel() * v.grad.element_size() for v in leaves)
        out["input_bytes"] = sum(v.numel() * v.element_size() for v in x.values())
    return out


# ---------------------------------------------------------------------------------------------
# the driver


def run_worker(args, method: str, measure: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--measure", measure]
    for k in ("tokens", "vocab", "hidden", "dtype", "device", "repeat"):
        cmd += [f"--{k}", str(getattr(args, k))]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.linear:
        cmd.append("--linear")
    if args.chunk_size is not None:
        cmd += ["--chunk-size", str(args.chunk_size)]
    env = dict(os.environ)
    if method == "kldiv":  # the chunked torch path, also on CUDA (the triton row is the kernel)
        env["KLDIV_DISABLE_TRITON"] = "1"
    if measure == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": last[:100]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import platform

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    what = "fused lm_head + KL" if args.linear else "KL of logits"
    shape = f"{args.tokens} x {args.vocab}" + (f", hidden {args.hidden}" if args.linear else "")
    print(f"# {what}, {shape}, {args.dtype}, {args.device}, forward+backward")
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, repeat {args.repeat} (median)"
    )
    results = {}
    for m in args.methods.split(","):
        if m == "triton" and not args.device.startswith("cuda"):
            results[m] = {"error": "needs CUDA"}
            continue
        if m == "triton" and args.linear:
            results[m] = {"error": "no Triton path for the fused variant"}
            continue
        r = run_worker(args, m, "time")
        if "error" not in r:
            r.update(run_worker(args, m, "memory"))
        results[m] = r
    base = results.get("naive", {})
    mib = 1 << 20
    head = (
        f"{'method':<10} {'time s':>8} {'x naive':>8} {'peak MiB':>9} {'x naive':>8} "
        f"{'peak-grad':>9} {'x naive':>8}"
    )
    print(head)
    print("-" * len(head))
    for m, r in results.items():
        if "error" in r:
            print(f"{m:<10} skipped: {r['error']}")
            continue
        pk, pg = r["peak_bytes"], r["peak_bytes"] - r["grad_bytes"]
        bt = base.get("time_s")
        bp = base.get("peak_bytes")
        bg = None if bp is None else bp - base["grad_bytes"]
        print(
            f"{m:<10} {r['time_s']:>8.3f} {r['time_s'] / bt if bt else float('nan'):>8.2f} "
            f"{pk / mib:>9.0f} {pk / bp if bp else float('nan'):>8.3f} "
            f"{pg / mib:>9.0f} {pg / bg if bg else float('nan'):>8.3f}"
        )
    some = next((r for r in results.values() if "input_bytes" in r), None)
    if some:
        print(
            f"# inputs {some['input_bytes'] / mib:.0f} MiB, gradient {some['grad_bytes'] / mib:.0f}"
            " MiB; peak = peak RSS above the inputs during one pass (see the module doc); "
            "peak-grad = that less the gradient"
        )


if __name__ == "__main__":
    main()
