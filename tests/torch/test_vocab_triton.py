"""The Triton kernel behind vocab_kl, run by Triton's interpreter on CPU against the torch path.

The kernel tests need ``triton`` (skipped otherwise, as in CI). They run in one subprocess with
``TRITON_INTERPRET=1``: the variable must be set before the kernel module is imported, and the
interpreter patches ``triton.language`` process-wide, which must not leak into other tests. The
subprocess is this file run as a script; it prints the errors as JSON and the tests here assert on
them. What the interpreter checks is the kernel's arithmetic and indexing, not its speed on a GPU.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import kldiv  # noqa: E402
from kldiv.torch import vocab as vocab_mod  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

SHAPES = [(7, 37, 16), (5, 300, 64)]  # rows, vocabulary, tile: several tiles, a ragged last one
DIRECTIONS = [("forward", 0.0), ("reverse", 0.0), ("jsd", 0.3), ("jsd", 1.0)]
DTYPES = ["float32", "bfloat16", "float16"]
NEEDS = [(True, True), (True, False), (False, True), (False, False)]
TEMPERATURES = [(1.0, 1.0), (2.0, 4.0), (0.7, 1.0)]  # (T, scale): T**2 scaling or not
BF16_TOL = 2.0**-7  # the bound tests/torch/test_vocab.py puts on bfloat16 gradients


# --------------------------------------------------------------------------------------------
# the worker: runs under TRITON_INTERPRET=1 in its own process


def _rel(got, want):
    got, want = got.double(), want.double()
    ok = torch.isfinite(want)
    if not torch.equal(ok, torch.isfinite(got)):
        return math.inf
    return float((got[ok] - want[ok]).norm() / want[ok].norm().clamp_min(1e-300))


def _inputs(n, v, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    s = 2.0 * torch.randn(n, v, generator=g, dtype=torch.float64)
    t = 2.0 * torch.randn(n, v, generator=g, dtype=torch.float64)
    s[1, [3, 5]] = t[1, [3, 5]] = -math.inf  # a vocabulary mask in one row
    return s.to(dtype), t.to(dtype)


def _entry_cases():
    """The kernel's entry point against vocab._vocab_loop (the torch path), case by case."""
    from kldiv.torch import _vocab_triton

    out = {}
    cases = itertools.product(SHAPES, DIRECTIONS, DTYPES, NEEDS)
    for k, ((n, v, block), (direction, beta), dtype_name, (need_s, need_t)) in enumerate(cases):
        masked = (k + k // len(NEEDS)) % 2 == 1  # half the cases, spread over the others
        dtype = getattr(torch, dtype_name)
        temperature, scale = TEMPERATURES[k % len(TEMPERATURES)]
        spec = vocab_mod._Spec(direction, beta, 1.0 / temperature, scale, torch.float32)
        s, t = _inputs(n, v, dtype, seed=k)
        g = torch.Generator().manual_seed(1000 + k)
        hint = torch.rand(n, generator=g) * 2 - 0.5  # per-row weights, some negative
        hint[0] = 0.0
        rows = torch.tensor([0, 2, 3, n - 1]) if masked else None
        weights = vocab_mod._row_factor(spec, hint, slice(None))
        results = []
        for triton_path in (False, True):
            sentinel = 7.0
            gs = torch.full_like(s, sentinel) if need_s else None
            gt = torch.full_like(t, sentinel) if need_t else None
            values = torch.zeros(n)
            if triton_path:
                _vocab_triton.vocab_rows(s, t, rows, spec, weights, gs, gt, values, block_v=block)
            else:
                vocab_mod._vocab_loop(s, t, rows, spec, 3, hint, gs, gt, values)
            results.append((values, gs, gt))
        (rv, rgs, rgt), (kv, kgs, kgt) = results
        computed = torch.ones(n, dtype=torch.bool) if rows is None else torch.zeros(n, dtype=bool)
        if rows is not None:
            computed[rows] = True
        errs = {"value": _rel(kv, rv), "skipped_untouched": bool(torch.all(kv[~computed] == 0))}
        for name, kg, rg in (("gs", kgs, rgs), ("gt", kgt, rgt)):
            if rg is None:
                continue
            errs[name] = _rel(kg[computed], rg[computed])
            errs[name + "_differ"] = float((kg[computed] != rg[computed]).float().mean())
            errs["skipped_untouched"] &= bool(torch.all(kg[~computed] == 7.0))
            errs["dtype_ok"] = kg.dtype == dtype
        out[f"{dtype_name}-{direction}-{beta}-n{n}-s{need_s:d}t{need_t:d}-m{masked:d}-{k}"] = errs
    return out


def _wiring_cases():
    """vocab_kl end to end with the dispatch forced to the kernel, against the torch path."""
    from kldiv.torch import _vocab_triton, vocab_kl

    calls = []
    kernel = _vocab_triton.vocab_rows

    def counting(*args, **kw):
        calls.append(1)
        return kernel(*args, **kw)

    def run(use_triton, s, t, *, go=None, teacher_grad=True, buffer=False, sum_go=None, **kw):
        vocab_mod._use_triton = (
            (lambda x, spec, *rows: spec.compute == torch.float32)
            if use_triton
            else (lambda x, spec, *rows: False)
        )
        s = s.detach().clone().requires_grad_()
        t = t.detach().clone().requires_grad_(teacher_grad)
        if buffer:  # grad_buffer is the logits themselves (an lm_head's output)
            z = s * 1.0
            v = vocab_kl(z, t, grad_buffer=z, **kw)
        else:
            v = vocab_kl(s, t, **kw)
        value = v.detach().clone()
        if sum_go is not None:  # the incoming per-token gradient arrives expanded (stride 0)
            v.sum().backward(torch.tensor(sum_go, dtype=v.dtype))
        else:
            v.backward(torch.ones_like(v) if go is None else torch.tensor(go, dtype=v.dtype))
        return value, s.grad, t.grad

    _vocab_triton.vocab_rows = counting
    out = {}
    try:
        g = torch.Generator().manual_seed(7)
        mask = torch.rand(3, 4, generator=g) > 0.3
        labels = torch.randint(0, 50, (3, 4), generator=g)
        labels[0, :2] = -100
        cases = {}
        for direction, beta in DIRECTIONS:
            kw = dict(direction=direction, beta=None if direction != "jsd" else beta)
            cases[f"f32-{direction}-{beta}-mask-T2"] = (
                "float32",
                dict(mask=mask, temperature=2.0, t2_scaling=True, **kw),
            )
            cases[f"f32-{direction}-{beta}-go0.37"] = ("float32", dict(go=0.37, **kw))
            cases[f"bf16-{direction}-{beta}-go0.5-recompute"] = ("bfloat16", dict(go=0.5, **kw))
            cases[f"bf16-{direction}-{beta}-none-expanded"] = (
                "bfloat16",
                dict(reduction="none", sum_go=3.0, **kw),
            )
            cases[f"f32-{direction}-{beta}-lent-logits"] = (
                "float32",
                dict(buffer=True, mask=mask, go=0.25, teacher_grad=False, **kw),
            )
        cases["f32-ignore_index-sum"] = (
            "float32",
            dict(labels=labels, ignore_index=-100, reduction="sum"),
        )
        cases["f32-normalizer"] = ("float32", dict(normalizer=100.0, direction="reverse"))
        cases["f32-all-masked"] = ("float32", dict(mask=torch.zeros(3, 4, dtype=torch.bool)))
        weights = torch.rand(3, 4, generator=g) * 2
        weights[1, 2] = 0.0
        cases["f32-weights-batchmean"] = ("float32", dict(mask=weights, reduction="batchmean"))
        cases["bf16-weights-jsd-go0.5"] = (
            "bfloat16",
            dict(mask=weights, direction="jsd", beta=0.4, go=0.5),
        )
        cases["f16-student-only"] = ("float16", dict(teacher_grad=False, go=2.0))
        for k, (name, (dtype_name, kw)) in enumerate(cases.items()):
            s, t = _inputs(12, 50, getattr(torch, dtype_name), seed=500 + k)
            s, t = s.reshape(3, 4, 50), t.reshape(3, 4, 50)
            before = len(calls)
            want = run(False, s, t, **kw)
            assert len(calls) == before  # the torch path did not call the kernel
            got = run(True, s, t, **kw)
            errs = {"kernel_calls": len(calls) - before}
            for part, a, b in zip(("value", "gs", "gt"), got, want, strict=True):
                if b is not None:
                    errs[part] = _rel(a, b) if b.norm() > 0 else float(a.abs().max())
                    errs[part + "_dtype_ok"] = a.dtype == b.dtype
            out[f"{dtype_name}:{name}"] = errs
        # no grad: the values-only launch
        s, t = _inputs(12, 50, torch.float32, seed=99)
        before = len(calls)
        vocab_mod._use_triton = lambda x, spec, *rows: True
        with torch.no_grad():
            a = vocab_kl(s, t, direction="jsd", beta=0.5, reduction="none")
        vocab_mod._use_triton = lambda x, spec, *rows: False
        with torch.no_grad():
            b = vocab_kl(s, t, direction="jsd", beta=0.5, reduction="none")
        out["float32:no-grad"] = {"value": _rel(a, b), "kernel_calls": len(calls) - before}
        # NaN in a token's logits: NaN for that token only, through the kernel
        s, t = _inputs(12, 50, torch.float32, seed=98)
        s[2, 7], t[5, 0] = math.nan, math.nan
        nan_rows = {}
        for direction, beta in DIRECTIONS:
            kw = dict(direction=direction, beta=None if direction != "jsd" else beta)
            v, gs, gt = run(True, s, t, reduction="none", **kw)
            nan_rows[f"{direction}-{beta}"] = (
                [int(i) for i in torch.nonzero(torch.isnan(v)).reshape(-1)],
                bool(torch.isfinite(gs[[0, 1, 3]]).all() and torch.isfinite(gt[[0, 1, 3]]).all()),
            )
        out["nan"] = nan_rows
    finally:
        _vocab_triton.vocab_rows = kernel
    return out


def _worker() -> None:
    import numpy as np

    np.seterr(all="ignore")  # -inf - -inf in padding lanes is masked out; numpy would warn
    print(json.dumps({"entry": _entry_cases(), "wiring": _wiring_cases()}))


# --------------------------------------------------------------------------------------------
# the tests


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="1")
    src = str(Path(kldiv.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(Path(__file__).resolve())],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("direction", "beta"), DIRECTIONS)
def test_kernel_equals_torch_path(report, dtype, direction, beta):
    """Values and gradients of every case: 1e-5 in float32; half precision within one rounding."""
    mine = {
        k: v for k, v in report["entry"].items() if k.startswith(f"{dtype}-{direction}-{beta}-")
    }
    assert len(mine) == len(SHAPES) * len(NEEDS)
    assert any("-m1-" in k for k in mine) and any("-m0-" in k for k in mine)
    for name, errs in mine.items():
        assert errs["skipped_untouched"], name
        assert errs["value"] < 1e-5, (name, errs)  # values are float32 whatever the inputs
        tol = 1e-5 if dtype == "float32" else BF16_TOL
        for part in ("gs", "gt"):
            if part in errs:
                assert errs[part] < tol, (name, part, errs)
                assert errs["dtype_ok"], name
                if dtype != "float32":  # rounded once from float32 values equal to ~1e-7:
                    assert errs[part + "_differ"] < 0.02, (name, part, errs)  # few ties differ


@needs_triton
def test_vocab_kl_dispatches_to_the_kernel_and_agrees(report):
    """Forward, backward (reused, rescaled, recomputed), masks, lent buffer: through the kernel."""
    wiring = dict(report["wiring"])
    for key, (rows, others_finite) in wiring.pop("nan").items():
        assert rows == [2, 5] and others_finite, key  # NaN for those tokens only
    assert len(wiring) >= 20
    for name, errs in wiring.items():
        assert errs["kernel_calls"] >= 1, name
        # half precision: the value and gradients come back rounded to the inputs' dtype
        tol = 1e-5 if name.startswith("float32") else BF16_TOL
        for part in ("value", "gs", "gt"):
            if part in errs:
                assert errs[part] < tol, (name, part, errs)
                assert errs.get(part + "_dtype_ok", True), (name, part)
    # a recompute in backward (half precision, incoming gradient not the reduction's) and
    # the forward launch: two kernel calls
    assert wiring["bfloat16:bf16-forward-0.0-go0.5-recompute"]["kernel_calls"] == 2
    assert wiring["float32:f32-forward-0.0-go0.37"]["kernel_calls"] == 1  # rows rescaled


def test_importing_kldiv_does_not_import_triton():
    code = "import sys, kldiv, kldiv.torch; print(sys.modules.get('triton') is not None)"
    src = str(Path(kldiv.__file__).resolve().parents[1])
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_dispatch_rule(monkeypatch):
    """CUDA, float32 compute, triton importable, KLDIV_DISABLE_TRITON unset or 0."""

    class Fake:
        def __init__(self, kind):
            self.device = torch.device(kind)

    spec32 = vocab_mod._Spec("forward", 0.0, 1.0, 1.0, torch.float32)
    spec64 = vocab_mod._Spec("forward", 0.0, 1.0, 1.0, torch.float64)
    monkeypatch.delenv("KLDIV_DISABLE_TRITON", raising=False)
    assert not vocab_mod._use_triton(torch.zeros(1), spec32)  # CPU: never
    assert not vocab_mod._use_triton(Fake("cuda"), spec64)  # float64: torch
    assert vocab_mod._use_triton(Fake("cuda"), spec32) == HAS_TRITON
    monkeypatch.setenv("KLDIV_DISABLE_TRITON", "0")
    assert vocab_mod._use_triton(Fake("cuda"), spec32) == HAS_TRITON
    monkeypatch.setenv("KLDIV_DISABLE_TRITON", "1")
    assert not vocab_mod._use_triton(Fake("cuda"), spec32)


if __name__ == "__main__":
    _worker()
