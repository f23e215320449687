"""Large-vocabulary KL for distillation and RLHF: chunked, with the gradient in the same pass.

Entry points sharing one per-chunk kernel (:func:`_kernel`):

- :func:`vocab_kl` takes logits of shape ``(..., V)``;
- :func:`fused_linear_vocab_kl` takes the hidden states and the lm_head weights and does the
  matmul inside the chunks, so that full logits never exist;
- :func:`kldiv.torch.topk_kl` (``topk.py``) takes the student's logits and the teacher's cached
  top-k log-probabilities.

Memory model. Tokens are processed ``chunk_size`` rows at a time; the vocabulary-wide float32
temporaries of one chunk (about four of them) are all that is alive besides the inputs and the
gradients. Gradients are computed in the forward pass, already multiplied by the weight each
token gets in the reduction (the gradient of the reduction at an incoming gradient of 1), and
rounded once to the input dtype. ``backward`` then returns them unchanged when the incoming
gradient is that one (a plain ``loss.backward()``); any other incoming gradient is handled
exactly: by rescaling rows where that is exact enough (float32/float64 gradients, per-token
gradients), otherwise by recomputing from the inputs chunk by chunk.

Vocabulary parallelism. With ``vocab_group=`` each rank holds a slice of the vocabulary; the
kernel's two row-wise reductions over the vocabulary (the log-normalizers and the per-token
sums) go through a ``rows`` object: :data:`_LOCAL` here, ``_vocab_parallel.VocabShards``
(collectives over the group) there. Everything else is the same code.

The reduction is :func:`kldiv._reduce.reduce`, applied to the per-token values that the autograd
functions return (with per-token weights folded in first, see :func:`_reduce_values`), so
``mask``, ``reduction`` and ``normalizer`` mean what they mean in :func:`kldiv.kl`. Tokens whose
weight is 0 are skipped, not computed and discarded.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from .._reduce import _mask_to_per_distribution, check_reduction, reduce
from ..errors import KLDivError, bad, describe

__all__ = ["DIRECTIONS", "fused_linear_vocab_kl", "vocab_kl"]

#: The values ``direction=`` accepts.
DIRECTIONS = ("forward", "reverse", "jsd")

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Vocabulary-wide elements per kernel call by default: about 2 MiB per float32 temporary (16
# rows of 32k; 8 and 16 rows ran alike on a quiet 2-core machine, 16 better under load). The
# fused variant runs its matmuls on taller chunks (_FUSED_CHUNK_ELEMENTS: two float32 logits
# buffers of that size are reused from chunk to chunk) and the kernel on slices of them.
_CHUNK_ELEMENTS = {"cpu": 1 << 19, "other": 1 << 24}
_FUSED_CHUNK_ELEMENTS = {"cpu": 1 << 24, "other": 1 << 25}


@dataclass(frozen=True)
class _Spec:
    direction: str
    beta: float  # jsd only
    inv_t: float  # 1 / temperature
    scale: float  # T**2 with t2_scaling, else 1
    compute: torch.dtype


class _Local:
    """Row-wise reductions over the vocabulary when one process holds all of it."""

    sharded = False

    def lse(self, lse: Any) -> Any:
        """The log-normalizers of the whole rows from those of this process's part: the same."""
        return lse

    def row_sum(self, x: Any) -> Any:
        """Per-row sums over the whole vocabulary from this process's partial sums: the same."""
        return x


_LOCAL = _Local()


class _Scratch:
    """Temporaries reused from chunk to chunk by one thread.

    A fresh chunk-sized tensor per operation is returned to the OS and faulted in again
    (glibc trims and unmaps blocks of that size): page faults cost more than the arithmetic here,
    and they serialize threads. ``get`` hands out the same memory for the same key.
    """

    def __init__(self) -> None:
        self.bufs: dict = {}

    def get(self, key: str, like: Any) -> Any:
        b = self.bufs.get(key)
        n = like.shape[0]
        if (
            b is None
            or b.shape[0] < n
            or b.shape[1:] != like.shape[1:]
            or b.dtype != like.dtype
            or b.device != like.device
        ):
            b = self.bufs[key] = torch.empty(like.shape, dtype=like.dtype, device=like.device)
        return b[:n]


def _buffer(scratch: Any, key: str, like: Any) -> Any:
    return torch.empty_like(like) if scratch is None else scratch.get(key, like)


# ---------------------------------------------------------------------------------------------
# the per-chunk kernel


def _softmax_lse(x: Any, out: Any = None) -> tuple[Any, Any]:
    """``softmax(x)`` and ``logsumexp(x)`` per row, from one softmax pass.

    torch's fused softmax is about twice as fast on CPU as a separate ``exp``; the log-normalizer
    comes from the row's largest entry, whose probability is at least 1/V (a well-conditioned
    log): ``lse = max(x) - log max(softmax(x))``.
    """
    if out is None:
        p = torch.softmax(x, dim=-1)
    else:
        p = torch.ops.aten._softmax.out(x, -1, False, out=out)
    top = x.amax(dim=-1)
    lse = top - p.amax(dim=-1).log_()  # the largest probability sits at the largest logit
    empty = top == -math.inf  # a row (or a rank's part of one) with no mass: 0 and -inf, not NaN
    if bool(empty.any()):
        p.masked_fill_(empty[:, None], 0.0)
        lse.masked_fill_(empty, -math.inf)
    return p, lse


def _probs_lse(a: Any, b: Any, rows: Any, scratch: Any = None) -> tuple[Any, Any, Any, Any]:
    """Both sides' probabilities (this process's entries) and their whole-row log-normalizers."""
    s, lse_s = _softmax_lse(a, None if scratch is None else scratch.get("s", a))
    t, lse_t = _softmax_lse(b, None if scratch is None else scratch.get("t", b))
    if rows.sharded:
        local = torch.stack((lse_s, lse_t))
        lse_s, lse_t = lse = rows.lse(local)
        share = (local - lse).exp_()  # this rank's part of each row's mass
        s.mul_(share[0, :, None])
        t.mul_(share[1, :, None])
    return s, t, lse_s, lse_t


def _fast_kl(a: Any, b: Any, forward: bool, need_s: bool, need_t: bool, rows: Any, scratch: Any):
    """KL(t || s) (``forward``) or KL(s || t) per row, and the gradients, from softmax passes.

    With ``d = b - a`` and ``delta = lse_t - lse_s`` (so ``log t - log s = d - delta``)::

        forward:  KL = sum t d - delta      grad_s = s - t    grad_t = t (d - delta - KL)
        reverse:  KL = delta - sum s d      grad_s = s (delta - KL - d)    grad_t = t - s

    Returns None when a value is not finite (``-inf`` logits make ``0 * inf``; NaN): the caller
    then takes the careful path, which also says what such rows are.
    """
    s, t, lse_s, lse_t = _probs_lse(a, b, rows, scratch)
    delta = lse_t - lse_s
    d = torch.sub(b, a, out=_buffer(scratch, "d", a))
    work = _buffer(scratch, "w", a)  # vecdot without its own temporary
    if forward:
        kl = rows.row_sum(torch.mul(t, d, out=work).sum(-1)) - delta
    else:
        kl = delta - rows.row_sum(torch.mul(s, d, out=work).sum(-1))
    if not bool(torch.isfinite(kl).all()):
        return None
    if forward:
        gt = d.sub_((delta + kl)[:, None]).mul_(t) if need_t else None
        gs = s.sub_(t) if need_s else None
    else:
        gs = torch.sub((delta - kl)[:, None], d, out=work).mul_(s) if need_s else None
        gt = t.sub_(s) if need_t else None
    return kl.clamp_min_(0.0), gs, gt


def _log_probs(a: Any, b: Any, rows: Any) -> tuple[Any, Any]:
    if not rows.sharded:
        return torch.log_softmax(a, dim=-1), torch.log_softmax(b, dim=-1)
    lse = rows.lse(torch.stack((torch.logsumexp(a, -1), torch.logsumexp(b, -1))))
    return a - lse[0, :, None], b - lse[1, :, None]


def _kl_rows(lp: Any, lq: Any, need_p: bool, need_q: bool, rows: Any = _LOCAL):
    """KL(p || q) per row from log-probabilities, and its gradients in p's and q's logits.

    Overwrites ``lp`` and ``lq`` (the kernel's own temporaries).
    """
    p = lp.exp()
    d = lp.sub_(lq)  # log p - log q
    kl = rows.row_sum(torch.linalg.vecdot(p, d))
    if not bool(torch.isfinite(kl).all()):
        # -inf logits: 0 * (-inf) would be NaN; those classes have p = 0 and contribute 0.
        d.masked_fill_(p == 0, 0.0)
        kl = rows.row_sum(torch.linalg.vecdot(p, d))
    gq = lq.exp_().sub_(p) if need_q else None  # d KL / d logit_q = q - p
    gp = d.sub_(kl[:, None]).mul_(p) if need_p else None  # p * (log p/q - KL)
    return kl.clamp_min(0.0), gp, gq


def _jsd_rows(ls: Any, lt: Any, beta: float, need_s: bool, need_t: bool, rows: Any = _LOCAL):
    """beta KL(t || m) + (1 - beta) KL(s || m), m = beta t + (1 - beta) s, and its gradients."""
    lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
    pt, ps = lt.exp(), ls.exp()
    dt, ds = lt.sub_(lm), ls.sub_(lm)

    def both():
        k = rows.row_sum(torch.stack((torch.linalg.vecdot(pt, dt), torch.linalg.vecdot(ps, ds))))
        return k[0], k[1]

    kt, ks = both()
    if not bool(torch.isfinite(kt).all() & torch.isfinite(ks).all()):
        dt.masked_fill_(pt == 0, 0.0)
        ds.masked_fill_(ps == 0, 0.0)
        kt, ks = both()
    value = (beta * kt.clamp_min(0.0)).add_((1.0 - beta) * ks.clamp_min(0.0))
    gs = ds.sub_(ks[:, None]).mul_(ps).mul_(1.0 - beta) if need_s else None
    gt = dt.sub_(kt[:, None]).mul_(pt).mul_(beta) if need_t else None
    return value, gs, gt


def _kernel(
    a: Any, b: Any, spec: _Spec, need_s: bool, need_t: bool, rows: Any = _LOCAL, scratch: Any = None
):
    """Per-row divergence of raw student logits ``a`` and teacher logits ``b`` (compute dtype).

    Returns ``(values, grad_a, grad_b)``: values times ``spec.scale``; gradients with respect to
    the scaled logits ``a / T``, ``b / T`` and without ``spec.scale`` (the callers fold
    ``scale / T`` into the per-row weights). Never writes into ``a`` or ``b``. ``rows`` does the
    row-wise reductions over the vocabulary (:data:`_LOCAL`, or collectives over a vocabulary
    group): every rank of a group must make the same calls. With a ``scratch``, the gradients
    may live in its buffers: use them before the next call.
    """
    if spec.inv_t != 1.0:
        a = torch.mul(a, spec.inv_t, out=_buffer(scratch, "a", a))
        b = torch.mul(b, spec.inv_t, out=_buffer(scratch, "b", b))
    d = spec.direction
    if d == "jsd" and spec.beta == 0.0:
        d = "forward"
    elif d == "jsd" and spec.beta == 1.0:
        d = "reverse"
    out = None
    if d != "jsd":
        out = _fast_kl(a, b, d == "forward", need_s, need_t, rows, scratch)
    if out is None:
        ls, lt = _log_probs(a, b, rows)
        if d == "forward":  # KL(teacher || student)
            v, gt, gs = _kl_rows(lt, ls, need_t, need_s, rows)
        elif d == "reverse":  # KL(student || teacher)
            v, gs, gt = _kl_rows(ls, lt, need_s, need_t, rows)
        else:
            v, gs, gt = _jsd_rows(ls, lt, spec.beta, need_s, need_t, rows)
        out = v, gs, gt
    v, gs, gt = out
    if spec.scale != 1.0:
        v = v.mul_(spec.scale)
    return v, gs, gt


def _row_factor(spec: _Spec, weights: Any, c: Any) -> Any:
    """Per-row factors of the kernel's gradients: the reduction's weights times scale / T."""
    w = _take(weights, c)
    k = spec.scale * spec.inv_t
    return w if k == 1.0 else w * k


# ---------------------------------------------------------------------------------------------
# chunks: contiguous slices when every token counts, index tensors when some are skipped


def _chunks(n: int, rows: Any, size: int):
    if rows is None:
        for i in range(0, n, size):
            yield slice(i, min(i + size, n))
    else:
        for i in range(0, rows.numel(), size):
            yield rows[i : i + size]


def _take(x: Any, c: Any) -> Any:
    return x[c] if isinstance(c, slice) else x.index_select(0, c)


def _put(out: Any, c: Any, v: Any) -> None:
    if isinstance(c, slice):
        out[c].copy_(v)
    else:
        out.index_copy_(0, c, v.to(out.dtype))


def _put_scaled(out: Any, c: Any, g: Any, w: Any) -> None:
    """``out[c] = g * w[:, None]`` in one pass where possible (``g`` may be overwritten)."""
    if isinstance(c, slice):
        torch.mul(g, w[:, None], out=out[c])
    else:
        out.index_copy_(0, c, g.mul_(w[:, None]).to(out.dtype))


def _each_chunk(body: Any, chunks: Any, device: Any, vocab_rows: Any = _LOCAL) -> None:
    """``body(c, scratch)`` for every chunk; on CPU, split between ``torch.get_num_threads()``
    threads, each with its own :class:`_Scratch`.

    Each thread takes the next chunk when it is free and runs torch single-threaded: a chunk's
    operations are small, and with torch's own threads each one is a fork/join of its team,
    which stalls for a whole scheduler slice whenever another process holds a core. Chunks
    write disjoint rows. Not with a vocabulary group (collectives must come in the same order on
    every rank).
    """
    chunks = list(chunks)
    workers = torch.get_num_threads()
    if (
        torch.device(device).type != "cpu"
        or vocab_rows.sharded
        or workers < 2
        or len(chunks) < 2 * workers
    ):
        scratch = _Scratch()
        for c in chunks:
            body(c, scratch)
        return

    queue = iter(chunks)
    lock = threading.Lock()

    def run():
        torch.set_num_threads(1)
        scratch = _Scratch()
        with torch.no_grad():
            while True:
                with lock:  # the next chunk to whichever thread is free (a loaded core does less)
                    c = next(queue, None)
                if c is None:
                    return
                body(c, scratch)

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="kldiv-chunks") as pool:
            for job in [pool.submit(run) for _ in range(workers)]:
                job.result()
    finally:
        torch.set_num_threads(workers)  # set_num_threads in a thread reaches OpenMP and MKL


def _grad_buffer(like: Any, skip: Any, lent: Any = None) -> Any:
    buf = (
        lent if lent is not None else torch.empty_like(like, memory_format=torch.contiguous_format)
    )
    if skip is not None:
        buf.index_fill_(0, skip, 0.0)  # skipped (weight 0) tokens get a zero gradient
    return buf


def _no_autocast(device: Any):
    """Autocast off inside the kernels: they choose their precision themselves."""
    kind = torch.device(device).type
    if torch.amp.autocast_mode.is_autocast_available(kind):
        return torch.autocast(device_type=kind, enabled=False)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# vocab_kl's autograd function (also serves topk_kl, through its own loop)


def _use_triton(x: Any, spec: _Spec, rows: Any = _LOCAL) -> bool:
    """The Triton kernel serves CUDA tensors computed in float32, unless KLDIV_DISABLE_TRITON=1.

    Not with a vocabulary group (its row-wise reductions are collectives between chunks).
    """
    if x.device.type != "cuda" or spec.compute != torch.float32 or rows.sharded:
        return False
    if os.environ.get("KLDIV_DISABLE_TRITON", "") not in ("", "0"):
        return False
    return _triton_importable()


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _vocab_loop(s, t, rows, spec, size, weights, gs_out, gt_out, values, vocab_rows=_LOCAL):
    """Walk the chunks: per-token values into ``values``, weighted gradients into the buffers."""
    if _use_triton(s, spec, vocab_rows):  # one launch over all rows, same buffers and factors
        from ._vocab_triton import vocab_rows as triton_rows

        w = None if gs_out is None and gt_out is None else _row_factor(spec, weights, slice(None))
        triton_rows(s, t, rows, spec, w, gs_out, gt_out, values)
        return

    def body(c, scratch):
        a = _take(s, c).to(spec.compute)
        b = _take(t, c).to(spec.compute)
        need_s, need_t = gs_out is not None, gt_out is not None
        v, gs, gt = _kernel(a, b, spec, need_s, need_t, vocab_rows, scratch)
        if values is not None:
            _put(values, c, v)
        if gs_out is not None or gt_out is not None:
            w = _row_factor(spec, weights, c)
            if gs_out is not None:
                _put_scaled(gs_out, c, gs, w)
            if gt_out is not None:
                _put_scaled(gt_out, c, gt, w)

    _each_chunk(body, _chunks(s.shape[0], rows, size), s.device, vocab_rows)


def _rescale_rows(buf: Any, grad: Any, hint: Any) -> Any:
    factor = torch.where(hint != 0, grad / torch.where(hint != 0, hint, 1.0), 0.0)
    return buf.mul_(factor.to(buf.dtype if buf.dtype == torch.float64 else torch.float32)[:, None])


class _VocabKL(torch.autograd.Function):
    """Per-token divergences of ``(N, V)`` logits; the gradient is computed in ``forward``.

    ``loop(s, t, rows, spec, size, weights, gs_out, gt_out, values)`` walks the chunks
    (:func:`_vocab_loop` with its vocabulary rows bound, or topk_kl's loop); ``t`` gets a
    gradient only where ``loop`` supports it.
    """

    @staticmethod
    def forward(ctx, s, t, rows, skip, hint, spec, size, lent, loop):
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        aliased = lent is not None and lent.data_ptr() == s.data_ptr()
        gs = _grad_buffer(s, skip, lent) if need_s else None
        gt = _grad_buffer(t, skip) if need_t else None
        values = torch.zeros(s.shape[0], dtype=spec.compute, device=s.device)
        with _no_autocast(s.device):
            loop(s, t, rows, spec, size, hint, gs, gt, values)
        ctx.spec, ctx.size, ctx.aliased, ctx.needs = spec, size, aliased, (need_s, need_t)
        ctx.loop, ctx.stored = loop, (gs, gt)
        ctx.save_for_backward(None if aliased else s, t, rows, skip, hint)
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        s, t, rows, skip, hint = ctx.saved_tensors
        # Hand the stored buffers over (no reference kept: autograd may then adopt them as
        # .grad without a copy). A second backward (retain_graph) rebuilds them identically.
        stored, ctx.stored = ctx.stored, None
        with _no_autocast(grad.device):
            if stored is None:
                if ctx.aliased:
                    raise RuntimeError(
                        "vocab_kl: a second backward is impossible with grad_buffer="
                        "student_logits (the logits were overwritten by their gradient)"
                    )
                stored = tuple(
                    _grad_buffer(x, skip) if n else None
                    for x, n in zip((s, t), ctx.needs, strict=True)
                )
                ctx.loop(s, t, rows, ctx.spec, ctx.size, hint, *stored, None)
            gs, gt = stored
            if not torch.equal(grad, hint):
                exact = ctx.aliased or all(
                    g is None or g.dtype in (torch.float32, torch.float64) for g in (gs, gt)
                )
                if exact:  # one more rounding of a float32 gradient: well below 1e-6
                    gs = _rescale_rows(gs, grad, hint) if gs is not None else None
                    gt = _rescale_rows(gt, grad, hint) if gt is not None else None
                else:  # half-precision gradients: recompute, so that they are rounded once
                    ctx.loop(s, t, rows, ctx.spec, ctx.size, grad, gs, gt, None)
        return gs, gt, None, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# the fused variant's autograd function


def _logits_into(buf: Any, h: Any, w: Any, bias: Any) -> Any:
    """``h @ w.T + bias`` into the float32 (float64) buffer ``buf[:len(h)]`` (one matmul)."""
    out = buf[: h.shape[0]]
    if h.dtype == buf.dtype:  # straight into the buffer: no temporary, no page faults
        if bias is None:
            torch.mm(h, w.t(), out=out)
        else:
            torch.addmm(bias, h, w.t(), out=out)
    else:  # in the inputs' dtype, as F.linear would, then widened
        out.copy_(torch.mm(h, w.t()) if bias is None else torch.addmm(bias, h, w.t()))
    return out


def _fused_loop(inputs, needs, rows, spec, size, weights, out, values, vocab_rows=_LOCAL):
    hs, ws, bs, ht, wt, bt = inputs
    need_s = any(needs[:3])
    need_t = any(needs[3:])
    v = ws.shape[0]
    count = hs.shape[0] if rows is None else rows.numel()
    height = max(1, min(size, count))
    bufs = [torch.empty(height, v, dtype=spec.compute, device=hs.device) for _ in range(2)]
    step = max(1, min(height, _CHUNK_ELEMENTS["cpu"] // max(v, 1)))  # kernel rows, in cache
    for c in _chunks(hs.shape[0], rows, size):
        h_s, h_t = _take(hs, c), _take(ht, c)
        a = _logits_into(bufs[0], h_s, ws, bs)
        b = _logits_into(bufs[1], h_t, wt, bt)
        m = a.shape[0]
        w = None if not (need_s or need_t) else _row_factor(spec, weights, c)
        vals = torch.empty(m, dtype=spec.compute, device=a.device)

        def body(piece, scratch, a=a, b=b, w=w, vals=vals):
            val, gs, gt = _kernel(a[piece], b[piece], spec, need_s, need_t, vocab_rows, scratch)
            vals[piece] = val
            # the logits of these rows are no longer needed: their weighted gradients go there
            if gs is not None:
                torch.mul(gs, w[piece, None], out=a[piece])
            if gt is not None:
                torch.mul(gt, w[piece, None], out=b[piece])

        pieces = [slice(r, min(r + step, m)) for r in range(0, m, step)]
        _each_chunk(body, pieces, a.device, vocab_rows)
        if values is not None:
            _put(values, c, vals)
        for g, h, wgt, k, on in ((a, h_s, ws, 0, need_s), (b, h_t, wt, 3, need_t)):
            if not on:
                continue
            if needs[k]:  # hidden: d/dh = g @ W, in the weight's dtype as autograd would
                gw = g if g.dtype == wgt.dtype else g.to(wgt.dtype)
                if isinstance(c, slice):
                    torch.mm(gw, wgt, out=out[k][c])
                else:
                    out[k].index_copy_(0, c, torch.mm(gw, wgt))
            if needs[k + 1]:  # weight: sum over tokens of g^T h, accumulated in float32
                out[k + 1].addmm_(g.t(), h if h.dtype == g.dtype else h.to(g.dtype))
            if needs[k + 2]:
                out[k + 2].add_(g.sum(0))
    if vocab_rows.sharded:  # each rank holds a slice of W: the hidden gradient sums over ranks
        for k in (0, 3):
            if needs[k]:
                vocab_rows.sum_(out[k])


def _fused_buffers(inputs, needs, skip, compute):
    acc = torch.float64 if compute == torch.float64 else torch.float32
    return [
        None
        if not n
        else _grad_buffer(x, skip)
        if k in (0, 3)
        else torch.zeros(x.shape, dtype=acc, device=x.device)
        for k, (x, n) in enumerate(zip(inputs, needs, strict=True))
    ]


class _FusedLinearVocabKL(torch.autograd.Function):
    """Per-token divergences of ``h_s W_s^T + b_s`` and ``h_t W_t^T + b_t``, chunk by chunk."""

    @staticmethod
    def forward(ctx, hs, ws, bs, ht, wt, bt, rows, skip, hint, spec, size, vocab_rows):
        inputs = (hs, ws, bs, ht, wt, bt)
        needs = tuple(bool(n) for n in ctx.needs_input_grad[:6])
        out = _fused_buffers(inputs, needs, skip, spec.compute)
        values = torch.zeros(hs.shape[0], dtype=spec.compute, device=hs.device)
        with _no_autocast(hs.device):
            _fused_loop(inputs, needs, rows, spec, size, hint, out, values, vocab_rows)
        ctx.spec, ctx.size, ctx.needs, ctx.out = spec, size, needs, out
        ctx.vocab_rows = vocab_rows
        ctx.save_for_backward(*inputs, rows, skip, hint)
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        *inputs, rows, skip, hint = ctx.saved_tensors
        out, ctx.out = ctx.out, None  # see _VocabKL.backward
        if out is None or not torch.equal(grad, hint):
            # weight gradients are sums over tokens: recompute with this incoming gradient
            out = _fused_buffers(inputs, ctx.needs, skip, ctx.spec.compute)
            with _no_autocast(grad.device):
                _fused_loop(
                    inputs, ctx.needs, rows, ctx.spec, ctx.size, grad, out, None, ctx.vocab_rows
                )
        result = [None if g is None else g.to(x.dtype) for g, x in zip(out, inputs, strict=True)]
        return (*result, None, None, None, None, None, None)


# ---------------------------------------------------------------------------------------------
# static checks and the shared front end


def _check_tensor(name: str, x: Any, *, floating: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise bad(name, "a torch.Tensor", describe(x))
    if type(x).__name__ == "DTensor":
        raise bad(
            name,
            "a plain tensor (for a DTensor sharded on the vocabulary, pass x.to_local() and "
            "vocab_group=mesh.get_group(...))",
            "a DTensor",
        )
    if floating and x.dtype not in _FLOATS:
        raise bad(name, "a float16, bfloat16, float32 or float64 tensor", describe(x))


def _given_once(pos_name: str, pos: Any, kw_name: str, kw: Any, what: str) -> Any:
    """One argument that may come positionally (``pos_name``) or as keyword ``kw_name=``."""
    if pos is None and kw is None:
        raise bad(kw_name, f"{what} (as {kw_name}= or positionally)", "nothing")
    if pos is not None and kw is not None:
        raise bad(kw_name, f"{what} given once (as {kw_name}= or as {pos_name}), not both", "both")
    return kw if pos is None else pos


def _spec(direction, beta, temperature, t2_scaling, reduction, normalizer, compute) -> _Spec:
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise bad("direction", f"one of {', '.join(map(repr, DIRECTIONS))}", describe(direction))
    if direction == "jsd":
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
            raise bad("beta", "a number in [0, 1] for direction='jsd'", describe(beta))
        beta = float(beta)
    elif beta is not None:
        raise bad("beta", f"None for direction={direction!r} (beta weights 'jsd')", describe(beta))
    else:
        beta = 0.0
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not (0 < temperature < math.inf)
    ):
        raise bad("temperature", "a positive finite number", describe(temperature))
    temperature = float(temperature)
    if t2_scaling is None:
        if temperature != 1.0:
            raise bad(
                "t2_scaling",
                "True (multiply by temperature**2, Hinton et al.) or False when "
                f"temperature != 1 (here {temperature})",
                "None",
            )
        t2_scaling = False
    elif not isinstance(t2_scaling, bool):
        raise bad("t2_scaling", "True, False or None", describe(t2_scaling))
    check_reduction(reduction, normalizer)
    scale = temperature * temperature if t2_scaling else 1.0
    return _Spec(direction, beta, 1.0 / temperature, scale, compute)


def _chunk_rows(chunk_size: Any, n: int, v: int, device: Any, fused: bool) -> int:
    if chunk_size is None:
        table = _FUSED_CHUNK_ELEMENTS if fused else _CHUNK_ELEMENTS
        budget = table["cpu" if torch.device(device).type == "cpu" else "other"]
        return max(1, min(max(n, 1), budget // max(v, 1)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise bad(
            "chunk_size", "a positive integer (tokens per chunk) or None", describe(chunk_size)
        )
    return chunk_size


def _first_bad(name: str, x: Any, wrong: Any, expected: str) -> None:
    """Raise naming the first entry of ``x`` where ``wrong`` holds (validate=True only)."""
    if bool(wrong.any()):
        idx = tuple(int(i) for i in torch.nonzero(wrong)[0])
        where = f"{name}[{', '.join(map(str, idx))}]" if x.ndim else name
        raise KLDivError(f"{where}: expected {expected}, got {float(x[idx])}")


def _token_weights(per_shape, in_shape, mask, compute, device, validate):
    """The mask as per-token weights ``per_shape`` (bool kept as bool), or None."""
    if not isinstance(mask, torch.Tensor):
        raise bad("mask", "a torch.Tensor (bool, or non-negative weights)", describe(mask))
    if mask.device != device:
        raise bad("mask", f"a tensor on {device}", f"a tensor on {mask.device}")
    if mask.dtype.is_complex:
        raise bad("mask", "a boolean tensor or real non-negative weights", describe(mask))
    import array_api_compat.torch as xp

    # the shape rules (and their errors) are the core's; it sees the mask's support
    support = mask if mask.dtype == torch.bool else mask != 0
    _mask_to_per_distribution(xp, support, in_shape, (len(in_shape) - 1,), per_shape)
    if mask.ndim == len(in_shape) and len(in_shape) > len(per_shape):
        mask = mask[..., 0]  # the (..., 1) form
    if mask.dtype == torch.bool:
        return torch.broadcast_to(mask, per_shape)
    w = mask.to(compute)
    if validate:
        _first_bad("mask", w, ~torch.isfinite(w) | (w < 0), "a finite non-negative weight")
    return torch.broadcast_to(w, per_shape)


def _valid_tokens(per_shape, in_shape, mask, ignore_index, labels, device, compute, validate):
    """Per-token weights (bool where all are 0/1; ``per_shape``), or None when all count 1."""
    valid = None
    if mask is not None:
        valid = _token_weights(per_shape, in_shape, mask, compute, device, validate)
    if (labels is None) != (ignore_index is None):
        if labels is None:
            raise bad("labels", "a tensor of token ids when ignore_index is given", "None")
        raise bad(
            "ignore_index", "the label value to skip (e.g. -100) when labels are given", "None"
        )
    if labels is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise bad("ignore_index", "an integer", describe(ignore_index))
        _check_tensor("labels", labels, floating=False)
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise bad("labels", "an integer tensor", describe(labels))
        if tuple(labels.shape) != per_shape:
            raise bad(
                "labels", f"shape {per_shape} (the logits' shape without V)", describe(labels)
            )
        if labels.device != device:
            raise bad("labels", f"a tensor on {device}", f"a tensor on {labels.device}")
        keep = labels != ignore_index
        if valid is None:
            valid = keep
        elif valid.dtype == torch.bool:
            valid = valid & keep
        else:
            valid = valid * keep
    return valid


def _check_normalizer(normalizer: Any, validate: bool) -> None:
    if validate and isinstance(normalizer, torch.Tensor):
        x = normalizer.detach()
        if x.dtype.is_complex or not bool(torch.isfinite(x) & (x > 0)):
            raise KLDivError(f"normalizer: expected a positive finite number, got {x.item()}")


def _prepare(per_shape, in_shape, mask, ignore_index, labels, normalizer, spec, device, validate):
    """Token weights, the rows to compute and to skip (None: all, none), the normalizer."""
    valid = _valid_tokens(
        per_shape, in_shape, mask, ignore_index, labels, device, spec.compute, validate
    )
    _check_normalizer(normalizer, validate)
    n = math.prod(per_shape)
    rows = skip = None
    if valid is not None:
        flat = valid.reshape(-1) != 0
        if not bool(flat.all()):
            rows = torch.nonzero(flat).reshape(-1)
            skip = torch.nonzero(~flat).reshape(-1)
    if isinstance(normalizer, torch.Tensor):
        normalizer = normalizer.to(spec.compute)
    return valid, rows, skip, n, normalizer


def _reduce_values(values, per_shape, in_shape, valid, reduction, normalizer):
    """The reduction of the per-token values, with the token weights ``valid``.

    Weights (``sum(w v)``; ``"mean"`` divides by ``sum(w)``, 0 if it is 0) are folded in here and
    the rest is :func:`kldiv._reduce.reduce`; a bool mask goes to it as it is. ``"batchmean"`` of
    an empty batch is 0 (the sum of nothing), with zero gradients.
    """
    import array_api_compat.torch as xp

    v = values.reshape(per_shape)
    if valid is not None and valid.dtype != torch.bool:
        v = v * valid
        if normalizer is None and reduction == "mean":
            total = valid.sum()
            normalizer = torch.where(total > 0, total, torch.ones_like(total))
        valid = None
    if reduction == "batchmean" and normalizer is None and per_shape and per_shape[0] == 0:
        return v.sum()
    return reduce(
        xp,
        v,
        in_shape=in_shape,
        family_axis=len(in_shape) - 1,
        event_axis=None,
        mask=valid,
        reduction=reduction,
        normalizer=normalizer,
    )


def _hint(n, per_shape, in_shape, valid, reduction, normalizer, spec, device):
    """The gradient the reduction sends to each token's value when the loss's gradient is 1."""
    if isinstance(normalizer, torch.Tensor):
        normalizer = normalizer.detach()
    dummy = torch.zeros(n, dtype=spec.compute, device=device, requires_grad=True)
    with torch.enable_grad():
        r = _reduce_values(dummy, per_shape, in_shape, valid, reduction, normalizer)
        (g,) = torch.autograd.grad(r.sum(), dummy)
    return g


def _out_dtype(*dtypes: torch.dtype, device: Any = None) -> tuple[torch.dtype, torch.dtype]:
    """The dtype of the returned value, and the compute dtype.

    The promoted input dtype, as :func:`kldiv.kl`; under ``torch.autocast`` on the inputs'
    device, float32 (or float64 for float64 inputs), as autocast does for torch's own losses.
    """
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    compute = torch.float64 if out == torch.float64 else torch.float32
    kind = torch.device(device).type if device is not None else "cpu"
    if torch.amp.autocast_mode.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        out = compute
    return out, compute


def _vocab_rows(vocab_group: Any) -> Any:
    if vocab_group is None:
        return _LOCAL
    from ._vocab_parallel import VocabShards

    return VocabShards(vocab_group)


def _check_validate(validate: Any) -> None:
    if not isinstance(validate, bool):
        raise bad("validate", "True or False", describe(validate))


# ---------------------------------------------------------------------------------------------
# public functions


def vocab_kl(
    student_logits: Any = None,
    teacher_logits: Any = None,
    *,
    student: Any = None,
    teacher: Any = None,
    direction: str = "forward",
    beta: float | None = None,
    temperature: float = 1.0,
    t2_scaling: bool | None = None,
    mask: Any = None,
    ignore_index: int | None = None,
    labels: Any = None,
    reduction: str = "mean",
    normalizer: Any = None,
    chunk_size: int | None = None,
    grad_buffer: Any = None,
    validate: bool = False,
    vocab_group: Any = None,
) -> Any:
    r"""Per-token KL between student and teacher logits over a large vocabulary, chunked.

    With :math:`s = \mathrm{softmax}(z_s / T)` and :math:`t = \mathrm{softmax}(z_t / T)` per
    token (the last axis is the vocabulary):

    .. math::

        \text{forward: } \mathrm{KL}(t \,\|\, s) = \sum_v t_v \log\frac{t_v}{s_v}, \qquad
        \text{reverse: } \mathrm{KL}(s \,\|\, t),

        \text{jsd: } \beta\,\mathrm{KL}(t \,\|\, m) + (1-\beta)\,\mathrm{KL}(s \,\|\, m),
        \quad m = \beta t + (1-\beta) s,

    each multiplied by :math:`T^2` when ``t2_scaling=True``. ``beta`` is the *teacher's*
    weight in the mixture; the interior tends to 0 at both ends, and the ends are defined as
    the two KLs (as in TRL's GKD and Liger-Kernel): ``beta=0`` is exactly ``"forward"``
    KL(teacher || student), ``beta=1`` exactly ``"reverse"`` KL(student || teacher).

    Args:
        student_logits: ``(..., V)``, float32, bfloat16, float16 (or float64). Also accepted
            as ``student=`` (recommended: the order can't be got wrong at the call site).
        teacher_logits: the same shape, or ``teacher=``; the gradient is computed when it
            requires one.
        direction: ``"forward"``, ``"reverse"`` or ``"jsd"``.
        beta: the teacher's weight for ``"jsd"`` (required there, in [0, 1]); None otherwise.
        temperature: divides both sides' logits.
        t2_scaling: multiply by ``temperature**2`` (Hinton et al., 2015); required when
            ``temperature != 1``.
        mask: bool, or non-negative per-token weights, broadcasting to ``(...)`` (or of shape
            ``(..., 1)``); a token of weight 0 is skipped (never computed).
        ignore_index, labels: skip the tokens whose ``labels`` (shape ``(...)``) equal
            ``ignore_index``; give both or neither.
        reduction: with weights ``w``: ``"mean"`` is ``sum(w v) / sum(w)`` (0 with zero
            gradients if it is 0), ``"sum"`` is ``sum(w v)``, ``"batchmean"`` is
            ``sum(w v) / (...)[0]`` (0 for an empty batch), ``"none"`` the per-token ``w v``,
            as in :func:`kldiv.kl`.
        normalizer: an explicit divisor of the sum (a global token count), overriding ``reduction``.
        chunk_size: tokens per chunk (default: about 2**19 vocabulary entries on CPU).
        grad_buffer: a contiguous tensor shaped and typed like ``student_logits`` into which the
            student gradient is written (it becomes that gradient). It may be ``student_logits``
            itself: the logits are then overwritten by their gradient in the forward pass, which
            saves their memory; the caller must not use them afterwards.
        validate: check values first (negative or non-finite mask weights, a non-positive
            normalizer tensor) and raise :class:`kldiv.KLDivError` naming the first bad entry.
        vocab_group: a ``torch.distributed`` process group over which the vocabulary is split
            (tensor parallelism): each rank passes its slice ``(..., V_r)`` of both sides, in
            rank order, and gets the value of the whole vocabulary and the gradient of its
            slice. Every rank of the group must make the call.

    Returns:
        The reduced value (0-d), or per-token values ``(...)`` for ``"none"``; computed in float32
        (float64 for float64 inputs) and returned in the promoted input dtype, or in float32
        under ``torch.autocast`` (as torch's own losses are).

    NaN in a token's logits gives NaN for that token. Arithmetic is float32 throughout; the
    student (and teacher) gradient is computed in the forward pass, chunk by chunk, scaled by
    each token's weight in the reduction and rounded once to the input dtype. On CUDA, when
    ``triton`` imports, the same computation runs in a Triton kernel over all tokens at once
    (``chunk_size`` is then unused; float64 and ``vocab_group`` stay on torch);
    ``KLDIV_DISABLE_TRITON=1`` in the environment selects the torch path.

    >>> import torch
    >>> from kldiv.torch import vocab_kl
    >>> s = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    >>> t = torch.tensor([[0.0, 0.0, 3.0]])
    >>> loss = vocab_kl(student=s, teacher=t)  # KL(teacher || student), mean over tokens
    >>> round(loss.item(), 5)
    0.17685
    >>> loss.backward()
    >>> [round(g, 4) for g in s.grad[0].tolist()]
    [0.0448, 0.1994, -0.2442]
    """
    student_logits = _given_once(
        "student_logits", student_logits, "student", student, "the student's logits"
    )
    teacher_logits = _given_once(
        "teacher_logits", teacher_logits, "teacher", teacher, "the teacher's logits"
    )
    _check_validate(validate)
    _check_tensor("student_logits", student_logits)
    _check_tensor("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise bad(
            "teacher_logits",
            f"the shape of student_logits {tuple(student_logits.shape)}",
            describe(teacher_logits),
        )
    if student_logits.ndim < 1 or student_logits.shape[-1] == 0:
        raise bad("student_logits", "shape (..., V) with V >= 1", describe(student_logits))
    if student_logits.device != teacher_logits.device:
        raise bad(
            "teacher_logits",
            f"a tensor on {student_logits.device}",
            f"a tensor on {teacher_logits.device}",
        )
    device = student_logits.device
    out_dtype, compute = _out_dtype(student_logits.dtype, teacher_logits.dtype, device=device)
    spec = _spec(direction, beta, temperature, t2_scaling, reduction, normalizer, compute)
    vocab_rows = _vocab_rows(vocab_group)
    in_shape = tuple(student_logits.shape)
    per_shape, v = in_shape[:-1], in_shape[-1]
    valid, rows, skip, n, normalizer = _prepare(
        per_shape, in_shape, mask, ignore_index, labels, normalizer, spec, device, validate
    )
    size = _chunk_rows(chunk_size, n, v, device, fused=False)
    s2 = student_logits.reshape(n, v)
    t2 = teacher_logits.reshape(n, v)
    need_s = student_logits.requires_grad and torch.is_grad_enabled()
    need_t = teacher_logits.requires_grad and torch.is_grad_enabled()
    lent = None
    if grad_buffer is not None:
        lent = _check_buffer(grad_buffer, student_logits, teacher_logits).reshape(n, v)
    loop = functools.partial(_vocab_loop, vocab_rows=vocab_rows)
    if need_s or need_t:
        hint = _hint(n, per_shape, in_shape, valid, reduction, normalizer, spec, device)
        values = _VocabKL.apply(
            s2, t2, rows, skip, hint, spec, size, lent if need_s else None, loop
        )
    else:
        values = torch.zeros(n, dtype=compute, device=device)
        with torch.no_grad(), _no_autocast(device):
            loop(s2, t2, rows, spec, size, None, None, None, values)
    result = _reduce_values(values, per_shape, in_shape, valid, reduction, normalizer)
    return result.to(out_dtype)


def _check_buffer(buf: Any, s: Any, t: Any) -> Any:
    if not isinstance(buf, torch.Tensor):
        raise bad("grad_buffer", "a torch.Tensor", describe(buf))
    if buf.shape != s.shape or buf.dtype != s.dtype or buf.device != s.device:
        raise bad(
            "grad_buffer",
            f"a tensor of student_logits' shape {tuple(s.shape)}, dtype {s.dtype} and device "
            f"{s.device}",
            describe(buf),
        )
    if not buf.is_contiguous():
        raise bad("grad_buffer", "a contiguous tensor", "a non-contiguous one")
    if buf.requires_grad and buf.data_ptr() != s.data_ptr():
        raise bad("grad_buffer", "a tensor that does not require grad", describe(buf))
    if buf.data_ptr() == s.data_ptr() and not s.is_contiguous():
        raise bad("grad_buffer", "contiguous student_logits when it is them", "non-contiguous")
    if t.numel() and buf.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
        raise bad("grad_buffer", "memory not shared with teacher_logits", "teacher_logits' memory")
    return buf


def _head(side: str, packed: Any, hidden: Any, weight: Any, bias: Any) -> tuple[Any, Any, Any]:
    """``(hidden, weight, bias)`` of one side, from ``student=(h, W[, b])`` or the positions."""
    if packed is None:
        if hidden is None or weight is None:
            raise bad(
                side,
                f"({side}_hidden, {side}_weight) positionally, or {side}=(hidden, weight)",
                f"{side}_hidden={describe(hidden)}, {side}_weight={describe(weight)}",
            )
        return hidden, weight, bias
    if hidden is not None or weight is not None:
        raise bad(side, f"{side}=(hidden, weight) or {side}_hidden/{side}_weight, not both", "both")
    if not isinstance(packed, (tuple, list)) or len(packed) not in (2, 3):
        raise bad(side, "a tuple (hidden, weight) or (hidden, weight, bias)", describe(packed))
    if len(packed) == 3:
        if bias is not None:
            raise bad(f"{side}_bias", f"None when {side}= holds a bias", describe(bias))
        return packed[0], packed[1], packed[2]
    return packed[0], packed[1], bias


def fused_linear_vocab_kl(
    student_hidden: Any = None,
    student_weight: Any = None,
    teacher_hidden: Any = None,
    teacher_weight: Any = None,
    *,
    student: Any = None,
    teacher: Any = None,
    student_bias: Any = None,
    teacher_bias: Any = None,
    direction: str = "forward",
    beta: float | None = None,
    temperature: float = 1.0,
    t2_scaling: bool | None = None,
    mask: Any = None,
    ignore_index: int | None = None,
    labels: Any = None,
    reduction: str = "mean",
    normalizer: Any = None,
    chunk_size: int | None = None,
    validate: bool = False,
    vocab_group: Any = None,
) -> Any:
    r""":func:`vocab_kl` of ``h_s W_s^T + b_s`` against ``h_t W_t^T + b_t``, logits never whole.

    .. math::

        z_s = h_s W_s^\top + b_s, \quad z_t = h_t W_t^\top + b_t, \qquad
        \text{value} = \texttt{vocab\_kl}(z_s, z_t, \ldots)

    The lm_head matmuls run inside the chunks, in the inputs' dtype (``torch.autocast`` does
    not lower it), into two float32 logits buffers reused from chunk to chunk; the kernel then
    reads them in cache-sized slices and writes the gradient of the logits in their place.
    Weight and bias gradients are accumulated over chunks in float32 and cast to the
    parameters' dtype at the end; a head whose tensors don't require grad (a frozen teacher)
    gets no gradient work at all.

    Args:
        student_hidden: ``(..., H_s)``.
        student_weight: ``(V, H_s)``, as in ``nn.Linear(H_s, V).weight``.
        teacher_hidden: ``(..., H_t)``, the same leading shape; ``H_t`` may differ from ``H_s``.
        teacher_weight: ``(V, H_t)``.
        student, teacher: the same as tuples, ``student=(h_s, W_s)`` or ``(h_s, W_s, b_s)``
            (recommended: the order can't be got wrong at the call site).
        student_bias, teacher_bias: ``(V,)`` or None.
        direction, beta, temperature, t2_scaling: as in :func:`vocab_kl`.
        mask, ignore_index, labels, reduction, normalizer, validate: as in :func:`vocab_kl`
            (shapes ``(...)`` are the hidden states' leading shape).
        chunk_size: tokens per chunk (default: about 2**24 vocabulary entries on CPU).
        vocab_group: as in :func:`vocab_kl`: each rank passes the same hidden states and its
            rows ``(V_r, H)`` of each weight (``V_r`` entries of each bias); the hidden states'
            gradient is summed over the group (the input gradient of a column-parallel
            linear layer), each weight's gradient is that of its rows.

    Returns:
        As :func:`vocab_kl`.

    >>> import torch
    >>> from kldiv.torch import fused_linear_vocab_kl, vocab_kl
    >>> g = torch.Generator().manual_seed(0)
    >>> hs, ht = torch.randn(5, 8, generator=g), torch.randn(5, 4, generator=g)
    >>> ws = torch.randn(11, 8, generator=g, requires_grad=True)
    >>> wt = torch.randn(11, 4, generator=g)
    >>> fused = fused_linear_vocab_kl(student=(hs, ws), teacher=(ht, wt), direction="reverse")
    >>> plain = vocab_kl(student=hs @ ws.T, teacher=ht @ wt.T, direction="reverse")
    >>> bool(torch.allclose(fused, plain))
    True
    """
    hs, ws, student_bias = _head("student", student, student_hidden, student_weight, student_bias)
    ht, wt, teacher_bias = _head("teacher", teacher, teacher_hidden, teacher_weight, teacher_bias)
    _check_validate(validate)
    names = ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight")
    for name, x in zip(names, (hs, ws, ht, wt), strict=True):
        _check_tensor(name, x)
    for side, h, w in (("student", hs, ws), ("teacher", ht, wt)):
        if h.ndim < 1:
            raise bad(f"{side}_hidden", "shape (..., H)", describe(h))
        if w.ndim != 2 or w.shape[1] != h.shape[-1]:
            raise bad(f"{side}_weight", f"shape (V, {h.shape[-1]})", describe(w))
    if ht.shape[:-1] != hs.shape[:-1]:
        raise bad(
            "teacher_hidden",
            f"the leading shape of student_hidden {tuple(hs.shape[:-1])} and any H",
            describe(ht),
        )
    v = ws.shape[0]
    if wt.shape[0] != v or v == 0:
        raise bad("teacher_weight", f"{v} rows (student_weight's vocabulary, >= 1)", describe(wt))
    biases = {}
    for side, b in (("student", student_bias), ("teacher", teacher_bias)):
        if b is not None:
            _check_tensor(f"{side}_bias", b)
            if tuple(b.shape) != (v,):
                raise bad(f"{side}_bias", f"shape ({v},)", describe(b))
        biases[side] = b
    device = hs.device
    for name, x in (*zip(names, (hs, ws, ht, wt), strict=True), *biases.items()):
        if x is not None and x.device != device:
            raise bad(name, f"a tensor on {device}", f"a tensor on {x.device}")
    for name, x in (("student_weight", ws), ("student_bias", biases["student"])):
        if x is not None and x.dtype != hs.dtype:
            raise bad(name, f"student_hidden's dtype {hs.dtype}", describe(x))
    for name, x in (("teacher_weight", wt), ("teacher_bias", biases["teacher"])):
        if x is not None and x.dtype != ht.dtype:
            raise bad(name, f"teacher_hidden's dtype {ht.dtype}", describe(x))
    out_dtype, compute = _out_dtype(hs.dtype, ht.dtype, device=device)
    spec = _spec(direction, beta, temperature, t2_scaling, reduction, normalizer, compute)
    vocab_rows = _vocab_rows(vocab_group)
    per_shape = tuple(hs.shape[:-1])
    in_shape = (*per_shape, v)
    valid, rows, skip, n, normalizer = _prepare(
        per_shape, in_shape, mask, ignore_index, labels, normalizer, spec, device, validate
    )
    size = _chunk_rows(chunk_size, n, v, device, fused=True)
    inputs = (
        hs.reshape(n, hs.shape[-1]),
        ws,
        biases["student"],
        ht.reshape(n, ht.shape[-1]),
        wt,
        biases["teacher"],
    )
    grad_on = torch.is_grad_enabled()
    if grad_on and any(x is not None and x.requires_grad for x in inputs):
        hint = _hint(n, per_shape, in_shape, valid, reduction, normalizer, spec, device)
        values = _FusedLinearVocabKL.apply(*inputs, rows, skip, hint, spec, size, vocab_rows)
    else:
        values = torch.zeros(n, dtype=compute, device=device)
        with torch.no_grad(), _no_autocast(device):
            _fused_loop(
                inputs, (False,) * 6, rows, spec, size, None, [None] * 6, values, vocab_rows
            )
    result = _reduce_values(values, per_shape, in_shape, valid, reduction, normalizer)
    return result.to(out_dtype)
