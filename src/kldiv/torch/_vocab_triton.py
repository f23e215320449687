"""The Triton kernel behind :func:`kldiv.torch.vocab_kl` on CUDA.

:func:`vocab_rows` is a drop-in for ``vocab._vocab_loop``: the same arguments (less the chunk
size), the same outputs, written into the same buffers. ``vocab.py`` calls it only for CUDA tensors
computed in float32 (inputs float32, bfloat16 or float16) when ``triton`` imports and
``KLDIV_DISABLE_TRITON`` is unset or ``0``; this module is never imported otherwise (importing it
without triton works, and launching then raises).

One program per row (token); the row is read in tiles of ``BLOCK`` vocabulary entries, loads
upcast to float32, logits multiplied by ``1 / T`` as the torch path does:

1. online softmax for both sides: running max and running sum of ``exp(x - max)``, giving each
   side's log-normalizer ``lse``;
2. with ``log s = a - lse_s`` and ``log t = b - lse_t`` recomputed per tile exactly as
   ``torch.log_softmax`` forms them, the row's divergence ``sum p (log p - log q)`` (for ``jsd``,
   ``KL(t || m)`` and ``KL(s || m)``); the gradients that don't involve the divergence
   (``s - t`` for ``forward``'s student, ``t - s`` for ``reverse``'s teacher) are written in this
   pass;
3. only when a gradient needs the row's divergence (``reverse``'s student, ``forward``'s teacher,
   ``jsd``): a third pass that writes it.

The gradients are multiplied by the per-row factors the caller passes (the reduction's weight of
each token times ``scale / T``, from ``vocab._row_factor``: the reduction is not re-derived here)
and rounded once to the buffer's dtype. Rows not listed in ``rows`` are never read or written (the
caller's buffers hold zeros there). ``-inf`` logits contribute 0 and get a zero gradient, and NaN
in a row gives NaN for that row (``p == 0`` tests, never ``p > 0``; no ``tl.maximum`` on values),
as in the torch path.
"""

from __future__ import annotations

import math
from typing import Any

try:
    import triton
    import triton.language as tl

    _jit = triton.jit
except ImportError:  # the module still imports (doctest collection); vocab_rows raises
    triton = tl = None

    def _jit(fn):
        return fn


#: Vocabulary entries per tile and warps per program by default (untuned: no GPU was measured).
BLOCK_V = 4096
NUM_WARPS = 8

_CODES = {"forward": 0, "reverse": 1, "jsd": 2}


@_jit
def _store(ptr, offsets, g, inside):
    """Store float32 ``g`` rounded once, to nearest even, in the buffer's dtype.

    bfloat16 is rounded by hand (integer ops, NaN kept): what the GPU's conversion does, spelled
    out so that Triton's interpreter, whose float32 -> bfloat16 cast truncates, runs the same
    arithmetic. float16 and float32 use the plain conversion (round to nearest on both).
    """
    ty = ptr.dtype.element_ty
    if ty == tl.bfloat16:
        bits = g.to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))
        r = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        tl.store(ptr + offsets, tl.where(g != g, g.to(tl.bfloat16), r), mask=inside)
    else:
        tl.store(ptr + offsets, g.to(ty), mask=inside)


@_jit
def _clamp0(x):
    """max(x, 0) that keeps NaN (tl.maximum returns the other operand, as fmax does)."""
    return tl.where(x < 0, 0.0, x)


@_jit
def _log_mixture(lt, ls, log_beta, log1m_beta):
    """log(beta t + (1 - beta) s) as torch.logaddexp(lt + log beta, ls + log(1 - beta))."""
    x = lt + log_beta
    y = ls + log1m_beta
    hi = tl.maximum(x, y)
    z = tl.exp(tl.minimum(x, y) - hi)  # in [0, 1]
    u = 1.0 + z  # log1p(z) without a log1p: log(u) * z / (u - 1), exact where u == 1
    log1p = tl.where(u == 1.0, z, tl.log(u) * (z / tl.where(u == 1.0, 1.0, u - 1.0)))
    return tl.where(hi == float("-inf"), float("-inf"), hi + log1p)


@_jit
def _vocab_kl_kernel(
    s_ptr,
    t_ptr,
    gs_ptr,
    gt_ptr,
    w_ptr,
    val_ptr,
    rows_ptr,
    V,
    s_row,
    s_col,
    t_row,
    t_col,
    gs_row,
    gt_row,
    inv_t,
    scale,
    beta,
    one_minus_beta,
    log_beta,
    log1m_beta,
    DIRECTION: tl.constexpr,  # 0 forward KL(t || s), 1 reverse KL(s || t), 2 jsd
    NEED_S: tl.constexpr,
    NEED_T: tl.constexpr,
    GRAD_IN_PASS2: tl.constexpr,  # the gradients asked for don't need the row's divergence
    HAS_VALUES: tl.constexpr,
    HAS_ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if HAS_ROWS:
        row = tl.load(rows_ptr + pid).to(tl.int64)
    else:
        row = pid.to(tl.int64)
    s_base = s_ptr + row * s_row
    t_base = t_ptr + row * t_row
    lanes = tl.arange(0, BLOCK).to(tl.int64)

    # pass 1: online softmax, both sides
    m_s = float("-inf")
    l_s = 0.0
    m_t = float("-inf")
    l_t = 0.0
    for start in range(0, V, BLOCK):
        cols = start + lanes
        inside = cols < V
        a = tl.load(s_base + cols * s_col, mask=inside, other=float("-inf"))
        a = a.to(tl.float32) * inv_t
        b = tl.load(t_base + cols * t_col, mask=inside, other=float("-inf"))
        b = b.to(tl.float32) * inv_t
        new_s = tl.maximum(m_s, tl.max(a, 0))
        new_t = tl.maximum(m_t, tl.max(b, 0))
        ref_s = tl.where(new_s == float("-inf"), 0.0, new_s)  # no -inf - -inf
        ref_t = tl.where(new_t == float("-inf"), 0.0, new_t)
        l_s = l_s * tl.exp(m_s - ref_s) + tl.sum(tl.exp(a - ref_s), 0)
        l_t = l_t * tl.exp(m_t - ref_t) + tl.sum(tl.exp(b - ref_t), 0)
        m_s = new_s
        m_t = new_t
    lse_s = m_s + tl.log(l_s)
    lse_t = m_t + tl.log(l_t)

    w = 0.0
    if NEED_S or NEED_T:
        w = tl.load(w_ptr + row)

    # pass 2: the row's divergence (and the gradients that don't depend on it)
    kl_1 = 0.0  # forward: KL(t || s); reverse: KL(s || t); jsd: KL(t || m)
    kl_2 = 0.0  # jsd: KL(s || m)
    for start in range(0, V, BLOCK):
        cols = start + lanes
        inside = cols < V
        ls = tl.load(s_base + cols * s_col, mask=inside, other=float("-inf"))
        ls = ls.to(tl.float32) * inv_t - lse_s
        lt = tl.load(t_base + cols * t_col, mask=inside, other=float("-inf"))
        lt = lt.to(tl.float32) * inv_t - lse_t
        ps = tl.exp(ls)
        pt = tl.exp(lt)
        if DIRECTION == 0:
            kl_1 += tl.sum(tl.where(pt == 0, 0.0, pt * (lt - ls)), 0)
            if GRAD_IN_PASS2 and NEED_S:
                _store(gs_ptr, row * gs_row + cols, (ps - pt) * w, inside)
        elif DIRECTION == 1:
            kl_1 += tl.sum(tl.where(ps == 0, 0.0, ps * (ls - lt)), 0)
            if GRAD_IN_PASS2 and NEED_T:
                _store(gt_ptr, row * gt_row + cols, (pt - ps) * w, inside)
        else:
            lm = _log_mixture(lt, ls, log_beta, log1m_beta)
            kl_1 += tl.sum(tl.where(pt == 0, 0.0, pt * (lt - lm)), 0)
            kl_2 += tl.sum(tl.where(ps == 0, 0.0, ps * (ls - lm)), 0)

    if HAS_VALUES:
        if DIRECTION == 2:
            value = beta * _clamp0(kl_1) + one_minus_beta * _clamp0(kl_2)
        else:
            value = _clamp0(kl_1)
        tl.store(val_ptr + row, value * scale)

    # pass 3: the gradients that need the row's divergence
    if (NEED_S or NEED_T) and not GRAD_IN_PASS2:
        for start in range(0, V, BLOCK):
            cols = start + lanes
            inside = cols < V
            ls = tl.load(s_base + cols * s_col, mask=inside, other=float("-inf"))
            ls = ls.to(tl.float32) * inv_t - lse_s
            lt = tl.load(t_base + cols * t_col, mask=inside, other=float("-inf"))
            lt = lt.to(tl.float32) * inv_t - lse_t
            ps = tl.exp(ls)
            pt = tl.exp(lt)
            if DIRECTION == 0:  # student: s - t; teacher: t (log t/s - KL)
                gs = ps - pt
                gt = tl.where(pt == 0, 0.0, (lt - ls - kl_1) * pt)
            elif DIRECTION == 1:  # student: s (log s/t - KL); teacher: t - s
                gs = tl.where(ps == 0, 0.0, (ls - lt - kl_1) * ps)
                gt = pt - ps
            else:
                lm = _log_mixture(lt, ls, log_beta, log1m_beta)
                gs = tl.where(ps == 0, 0.0, (ls - lm - kl_2) * ps) * one_minus_beta
                gt = tl.where(pt == 0, 0.0, (lt - lm - kl_1) * pt) * beta
            if NEED_S:
                _store(gs_ptr, row * gs_row + cols, gs * w, inside)
            if NEED_T:
                _store(gt_ptr, row * gt_row + cols, gt * w, inside)


def vocab_rows(
    s: Any,
    t: Any,
    rows: Any,
    spec: Any,
    weights: Any,
    gs_out: Any,
    gt_out: Any,
    values: Any,
    *,
    block_v: int | None = None,
    num_warps: int | None = None,
) -> None:
    """``vocab._vocab_loop`` on the GPU: all rows (or those in ``rows``) in one launch.

    Args:
        s, t: ``(N, V)`` student and teacher logits (any strides; float32, bfloat16, float16).
        rows: int64 indices of the rows to compute, or None for all.
        spec: ``vocab._Spec`` (direction, beta, 1/T, scale); ``spec.compute`` must be float32.
        weights: ``(N,)`` per-row factors of the gradients (``vocab._row_factor``): required when
            a gradient buffer is given.
        gs_out, gt_out: ``(N, V)`` row-contiguous buffers for the student and teacher gradients,
            or None; rows not in ``rows`` are left alone.
        values: ``(N,)`` float32 buffer for the per-row values (times ``spec.scale``), or None.
        block_v: vocabulary entries per tile (a power of 2; default ``min(BLOCK_V, V)`` rounded up).
        num_warps: warps per program (default ``NUM_WARPS``).
    """
    if triton is None:
        raise RuntimeError("kldiv's Triton path needs the triton package")
    import torch

    n, v = s.shape
    if t.shape != s.shape:
        raise ValueError("s and t must have the same shape")
    if spec.compute != torch.float32:
        raise ValueError("the Triton path computes in float32 (float64 inputs use torch)")
    count = n if rows is None else rows.numel()
    need_s, need_t = gs_out is not None, gt_out is not None
    if count == 0 or (values is None and not need_s and not need_t):
        return
    for name, buf in (("gs_out", gs_out), ("gt_out", gt_out)):
        if buf is not None and (buf.shape != s.shape or (v > 1 and buf.stride(1) != 1)):
            raise ValueError(f"{name} must be shaped like s with contiguous rows")
    if values is not None and (values.dtype != torch.float32 or values.stride(0) != 1):
        raise ValueError("values must be a contiguous float32 vector")
    if need_s or need_t:
        if weights is None:
            raise ValueError("weights are required with a gradient buffer")
        weights = weights.to(torch.float32).contiguous()  # may arrive expanded (stride 0)
    direction, beta = spec.direction, float(spec.beta)
    if direction == "jsd" and beta == 0.0:  # the ends of jsd are the two KLs, as in vocab._kernel
        direction = "forward"
    elif direction == "jsd" and beta == 1.0:
        direction = "reverse"
    jsd = direction == "jsd"
    grad_in_pass2 = (direction == "forward" and not need_t) or (
        direction == "reverse" and not need_s
    )
    block = block_v or min(BLOCK_V, triton.next_power_of_2(v))
    dummy = s  # pointer arguments the constexpr flags leave unused
    _vocab_kl_kernel[(count,)](
        s,
        t,
        gs_out if need_s else dummy,
        gt_out if need_t else dummy,
        weights if need_s or need_t else dummy,
        values if values is not None else dummy,
        rows if rows is not None else dummy,
        v,
        s.stride(0),
        s.stride(1),
        t.stride(0),
        t.stride(1),
        gs_out.stride(0) if need_s else 0,
        gt_out.stride(0) if need_t else 0,
        float(spec.inv_t),
        float(spec.scale),
        beta,
        1.0 - beta,
        math.log(beta) if jsd else 0.0,
        math.log1p(-beta) if jsd else 0.0,
        DIRECTION=_CODES[direction],
        NEED_S=need_s,
        NEED_T=need_t,
        GRAD_IN_PASS2=grad_in_pass2,
        HAS_VALUES=values is not None,
        HAS_ROWS=rows is not None,
        BLOCK=block,
        num_warps=num_warps or NUM_WARPS,
        enable_fp_fusion=True,  # FMA (Triton's default), explicit: Triton 3.9 warns otherwise
    )
