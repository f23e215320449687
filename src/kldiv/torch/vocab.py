"""Large-vocabulary KL for distillation and RLHF: chunked, with the gradient in the same pass.

Two entry points share one per-chunk kernel (:func:`_kernel`):

- :func:`vocab_kl` takes logits of shape ``(..., V)``;
- :func:`fused_linear_vocab_kl` takes the hidden states and the lm_head weights and does the
  matmul inside the chunks, so that full logits never exist.

Memory model. Tokens are processed ``chunk_size`` rows at a time; the vocabulary-wide float32
temporaries of one chunk (about six of them) are all that is alive besides the inputs and the
gradients. Gradients are computed in the forward pass, already multiplied by the weight each
token gets in the reduction (the gradient of :func:`kldiv._reduce.reduce` at an incoming gradient
of 1), and rounded once to the input dtype. ``backward`` then returns them unchanged when the
incoming gradient is that one (a plain ``loss.backward()``); any other incoming gradient is
handled exactly: by rescaling rows where that is exact enough (float32/float64 gradients, per-token
gradients), otherwise by recomputing from the inputs chunk by chunk.

The reduction itself is :func:`kldiv._reduce.reduce`, applied to the per-token values that the
autograd functions return, so ``mask``, ``reduction`` and ``normalizer`` mean exactly what they
mean in :func:`kldiv.kl`. Masked tokens are skipped, not computed and discarded.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from .._reduce import _mask_to_per_distribution, check_reduction, reduce
from ..errors import bad, describe

__all__ = ["DIRECTIONS", "fused_linear_vocab_kl", "vocab_kl"]

#: The values ``direction=`` accepts.
DIRECTIONS = ("forward", "reverse", "jsd")

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Vocabulary-wide elements per chunk by default: about 1 MiB per float32 temporary for vocab_kl
# (stays in the CPU caches), 32 MiB for the fused variant (the matmuls want taller chunks:
# measured at 4096 x 32000, hidden 1024, 262-token chunks ran 0.98x the naive time, 131 1.09x).
_CHUNK_ELEMENTS = {"cpu": 1 << 18, "other": 1 << 24}
_FUSED_CHUNK_ELEMENTS = {"cpu": 1 << 23, "other": 1 << 25}


@dataclass(frozen=True)
class _Spec:
    direction: str
    beta: float  # jsd only
    inv_t: float  # 1 / temperature
    scale: float  # T**2 with t2_scaling, else 1
    compute: torch.dtype


# ---------------------------------------------------------------------------------------------
# the per-chunk kernel


def _kl_rows(lp: Any, lq: Any, need_p: bool, need_q: bool) -> tuple[Any, Any, Any]:
    """KL(p || q) per row from log-probabilities, and its gradients in p's and q's logits.

    Overwrites ``lp`` and ``lq`` (the kernel's own temporaries).
    """
    p = lp.exp()
    d = lp.sub_(lq)  # log p - log q
    kl = torch.linalg.vecdot(p, d)
    if not bool(torch.isfinite(kl).all()):
        # -inf logits: 0 * (-inf) would be NaN; those classes have p = 0 and contribute 0.
        d.masked_fill_(p == 0, 0.0)
        kl = torch.linalg.vecdot(p, d)
    gq = lq.exp_().sub_(p) if need_q else None  # d KL / d logit_q = q - p
    gp = d.sub_(kl[:, None]).mul_(p) if need_p else None  # p * (log p/q - KL)
    return kl.clamp_min(0.0), gp, gq


def _jsd_rows(ls: Any, lt: Any, beta: float, need_s: bool, need_t: bool):
    """beta KL(t || m) + (1 - beta) KL(s || m), m = beta t + (1 - beta) s, and its gradients."""
    lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
    pt, ps = lt.exp(), ls.exp()
    dt, ds = lt.sub_(lm), ls.sub_(lm)
    kt, ks = torch.linalg.vecdot(pt, dt), torch.linalg.vecdot(ps, ds)
    if not bool(torch.isfinite(kt).all() & torch.isfinite(ks).all()):
        dt.masked_fill_(pt == 0, 0.0)
        ds.masked_fill_(ps == 0, 0.0)
        kt, ks = torch.linalg.vecdot(pt, dt), torch.linalg.vecdot(ps, ds)
    value = (beta * kt.clamp_min(0.0)).add_((1.0 - beta) * ks.clamp_min(0.0))
    gs = ds.sub_(ks[:, None]).mul_(ps).mul_(1.0 - beta) if need_s else None
    gt = dt.sub_(kt[:, None]).mul_(pt).mul_(beta) if need_t else None
    return value, gs, gt


def _kernel(a: Any, b: Any, spec: _Spec, need_s: bool, need_t: bool):
    """Per-row divergence of raw student logits ``a`` and teacher logits ``b`` (compute dtype).

    Returns ``(values, grad_a, grad_b)``: values times ``spec.scale``; gradients with respect to
    the scaled logits ``a / T``, ``b / T`` and without ``spec.scale`` (the callers fold
    ``scale / T`` into the per-row weights). Never writes into ``a`` or ``b``.
    """
    if spec.inv_t != 1.0:
        a, b = a * spec.inv_t, b * spec.inv_t
    ls = torch.log_softmax(a, dim=-1)
    lt = torch.log_softmax(b, dim=-1)
    d = spec.direction
    if d == "jsd" and spec.beta == 0.0:
        d = "forward"
    elif d == "jsd" and spec.beta == 1.0:
        d = "reverse"
    if d == "forward":  # KL(teacher || student)
        v, gt, gs = _kl_rows(lt, ls, need_t, need_s)
    elif d == "reverse":  # KL(student || teacher)
        v, gs, gt = _kl_rows(ls, lt, need_s, need_t)
    else:
        v, gs, gt = _jsd_rows(ls, lt, spec.beta, need_s, need_t)
    if spec.scale != 1.0:
        v = v.mul_(spec.scale)
    return v, gs, gt


def _row_factor(spec: _Spec, weights: Any, c: Any) -> Any:
    """Per-row factors of the kernel's gradients: the reduction's weights times scale / T."""
    w = _take(weights, c)
    k = spec.scale * spec.inv_t
    return w if k == 1.0 else w * k


# ---------------------------------------------------------------------------------------------
# chunks: contiguous slices when every token counts, index tensors when some are masked


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


def _grad_buffer(like: Any, skip: Any, lent: Any = None) -> Any:
    buf = (
        lent if lent is not None else torch.empty_like(like, memory_format=torch.contiguous_format)
    )
    if skip is not None:
        buf.index_fill_(0, skip, 0.0)  # skipped (masked) tokens get a zero gradient
    return buf


# ---------------------------------------------------------------------------------------------
# vocab_kl's autograd function


def _use_triton(x: Any, spec: _Spec) -> bool:
    """The Triton kernel serves CUDA tensors computed in float32, unless KLDIV_DISABLE_TRITON=1."""
    if x.device.type != "cuda" or spec.compute != torch.float32:
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


def _vocab_loop(s, t, rows, spec, size, weights, gs_out, gt_out, values):
    """Walk the chunks: per-token values into ``values``, weighted gradients into the buffers."""
    if _use_triton(s, spec):  # one launch over all rows, same buffers, same per-row factors
        from ._vocab_triton import vocab_rows

        w = None if gs_out is None and gt_out is None else _row_factor(spec, weights, slice(None))
        vocab_rows(s, t, rows, spec, w, gs_out, gt_out, values)
        return
    for c in _chunks(s.shape[0], rows, size):
        a = _take(s, c).to(spec.compute)
        b = _take(t, c).to(spec.compute)
        v, gs, gt = _kernel(a, b, spec, gs_out is not None, gt_out is not None)
        if values is not None:
            _put(values, c, v)
        if gs_out is not None or gt_out is not None:
            w = _row_factor(spec, weights, c)
            if gs_out is not None:
                _put_scaled(gs_out, c, gs, w)
            if gt_out is not None:
                _put_scaled(gt_out, c, gt, w)


def _rescale_rows(buf: Any, grad: Any, hint: Any) -> Any:
    factor = torch.where(hint != 0, grad / torch.where(hint != 0, hint, 1.0), 0.0)
    return buf.mul_(factor.to(buf.dtype if buf.dtype == torch.float64 else torch.float32)[:, None])


class _VocabKL(torch.autograd.Function):
    """Per-token divergences of ``(N, V)`` logits; the gradient is computed in ``forward``."""

    @staticmethod
    def forward(ctx, s, t, rows, skip, hint, spec, size, lent):
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        aliased = lent is not None and lent.data_ptr() == s.data_ptr()
        gs = _grad_buffer(s, skip, lent) if need_s else None
        gt = _grad_buffer(t, skip) if need_t else None
        values = torch.zeros(s.shape[0], dtype=spec.compute, device=s.device)
        _vocab_loop(s, t, rows, spec, size, hint, gs, gt, values)
        ctx.spec, ctx.size, ctx.aliased, ctx.needs = spec, size, aliased, (need_s, need_t)
        ctx.stored = (gs, gt)
        ctx.save_for_backward(None if aliased else s, t, rows, skip, hint)
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        s, t, rows, skip, hint = ctx.saved_tensors
        # Hand the stored buffers over (no reference kept: autograd may then adopt them as
        # .grad without a copy). A second backward (retain_graph) rebuilds them identically.
        stored, ctx.stored = ctx.stored, None
        if stored is None:
            if ctx.aliased:
                raise RuntimeError(
                    "vocab_kl: a second backward is impossible with grad_buffer=student_logits "
                    "(the logits were overwritten by their gradient)"
                )
            stored = tuple(
                _grad_buffer(x, skip) if n else None for x, n in zip((s, t), ctx.needs, strict=True)
            )
            _vocab_loop(s, t, rows, ctx.spec, ctx.size, hint, *stored, None)
        gs, gt = stored
        if not torch.equal(grad, hint):
            exact = ctx.aliased or all(
                g is None or g.dtype in (torch.float32, torch.float64) for g in (gs, gt)
            )
            if exact:  # one more rounding of a float32 gradient: well below 1e-6
                gs = _rescale_rows(gs, grad, hint) if gs is not None else None
                gt = _rescale_rows(gt, grad, hint) if gt is not None else None
            else:  # half-precision gradients: recompute, so that they are rounded once
                _vocab_loop(s, t, rows, ctx.spec, ctx.size, grad, gs, gt, None)
        return gs, gt, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# the fused variant's autograd function


def _logits(h: Any, w: Any, bias: Any, compute: torch.dtype) -> Any:
    out = torch.mm(h, w.t()) if bias is None else torch.addmm(bias, h, w.t())
    return out.to(compute)


def _fused_loop(inputs, needs, rows, spec, size, weights, out, values):
    hs, ws, bs, ht, wt, bt = inputs
    need_s = any(needs[:3])
    need_t = any(needs[3:])
    for c in _chunks(hs.shape[0], rows, size):
        h_s, h_t = _take(hs, c), _take(ht, c)
        a = _logits(h_s, ws, bs, spec.compute)
        b = _logits(h_t, wt, bt, spec.compute)
        v, gs, gt = _kernel(a, b, spec, need_s, need_t)
        del a, b
        if values is not None:
            _put(values, c, v)
        if gs is None and gt is None:
            continue
        w = _row_factor(spec, weights, c)
        for g, h, wgt, k in ((gs, h_s, ws, 0), (gt, h_t, wt, 3)):
            if g is None:
                continue
            g = g.mul_(w[:, None])
            if needs[k]:  # hidden: d/dh = g @ W, in the weight's dtype as autograd would
                _put(out[k], c, torch.mm(g.to(wgt.dtype), wgt))
            if needs[k + 1]:  # weight: sum over tokens of g^T h, accumulated in float32
                out[k + 1].addmm_(g.t(), h.to(out[k + 1].dtype))
            if needs[k + 2]:
                out[k + 2].add_(g.sum(0))


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
    def forward(ctx, hs, ws, bs, ht, wt, bt, rows, skip, hint, spec, size):
        inputs = (hs, ws, bs, ht, wt, bt)
        needs = tuple(bool(n) for n in ctx.needs_input_grad[:6])
        out = _fused_buffers(inputs, needs, skip, spec.compute)
        values = torch.zeros(hs.shape[0], dtype=spec.compute, device=hs.device)
        _fused_loop(inputs, needs, rows, spec, size, hint, out, values)
        ctx.spec, ctx.size, ctx.needs, ctx.out = spec, size, needs, out
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
            _fused_loop(inputs, ctx.needs, rows, ctx.spec, ctx.size, grad, out, None)
        result = [None if g is None else g.to(x.dtype) for g, x in zip(out, inputs, strict=True)]
        return (*result, None, None, None, None, None)


# ---------------------------------------------------------------------------------------------
# static checks and the shared front end


def _check_tensor(name: str, x: Any, *, floating: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise bad(name, "a torch.Tensor", describe(x))
    if floating and x.dtype not in _FLOATS:
        raise bad(name, "a float16, bfloat16, float32 or float64 tensor", describe(x))


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


def _valid_tokens(per_shape, in_shape, mask, ignore_index, labels, device):
    """The per-token validity (bool, ``per_shape``) or None when every token counts."""
    valid = None
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise bad("mask", "a torch.Tensor (bool or 0/1)", describe(mask))
        if mask.device != device:
            raise bad("mask", f"a tensor on {device}", f"a tensor on {mask.device}")
        import array_api_compat.torch as xp

        m = _mask_to_per_distribution(xp, mask, in_shape, (len(in_shape) - 1,), per_shape)
        valid = torch.broadcast_to(m, per_shape)
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
        valid = keep if valid is None else valid & keep
    return valid


def _prepare(per_shape, in_shape, mask, ignore_index, labels, normalizer, spec, device):
    """Validity, the rows to compute and to skip (None: all, none) and the normalizer."""
    valid = _valid_tokens(per_shape, in_shape, mask, ignore_index, labels, device)
    n = math.prod(per_shape)
    rows = skip = None
    if valid is not None:
        flat = valid.reshape(-1)
        if not bool(flat.all()):
            rows = torch.nonzero(flat).reshape(-1)
            skip = torch.nonzero(~flat).reshape(-1)
    if isinstance(normalizer, torch.Tensor):
        normalizer = normalizer.to(spec.compute)
    return valid, rows, skip, n, normalizer


def _reduce_values(values, per_shape, in_shape, valid, reduction, normalizer):
    import array_api_compat.torch as xp

    return reduce(
        xp,
        values.reshape(per_shape),
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


def _out_dtype(*dtypes: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out, (torch.float64 if out == torch.float64 else torch.float32)


# ---------------------------------------------------------------------------------------------
# public functions


def vocab_kl(
    student_logits: Any,
    teacher_logits: Any,
    *,
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
        student_logits: ``(..., V)``, float32, bfloat16, float16 (or float64).
        teacher_logits: the same shape; the gradient is computed when it requires one.
        direction: ``"forward"``, ``"reverse"`` or ``"jsd"``.
        beta: the teacher's weight for ``"jsd"`` (required there, in [0, 1]); None otherwise.
        temperature: divides both sides' logits.
        t2_scaling: multiply by ``temperature**2`` (Hinton et al., 2015); required when
            ``temperature != 1``.
        mask: bool or 0/1, broadcasting to ``(...)`` (or of shape ``(..., 1)``); 0 skips a token.
        ignore_index, labels: skip the tokens whose ``labels`` (shape ``(...)``) equal
            ``ignore_index``; give both or neither.
        reduction: ``"mean"`` over valid tokens (0 with zero gradients if none), ``"sum"``,
            ``"batchmean"`` or ``"none"`` (per-token values, 0 where skipped), as in
            :func:`kldiv.kl`.
        normalizer: an explicit divisor of the sum (a global token count), overriding ``reduction``.
        chunk_size: tokens per chunk (default: about 2**18 vocabulary entries on CPU).
        grad_buffer: a contiguous tensor shaped and typed like ``student_logits`` into which the
            student gradient is written (it becomes that gradient). It may be ``student_logits``
            itself: the logits are then overwritten by their gradient in the forward pass, which
            saves their memory; the caller must not use them afterwards.

    Returns:
        The reduced value (0-d), or per-token values ``(...)`` for ``"none"``; computed in float32
        (float64 for float64 inputs) and returned in the promoted input dtype.

    Arithmetic is float32 throughout; the student (and teacher) gradient is computed in the
    forward pass, chunk by chunk, scaled by each token's weight in the reduction and rounded once
    to the input dtype. On CUDA, when ``triton`` imports, the same computation runs in a Triton
    kernel over all tokens at once (``chunk_size`` is then unused; float64 stays on torch);
    ``KLDIV_DISABLE_TRITON=1`` in the environment selects the torch path.

    >>> import torch
    >>> from kldiv.torch import vocab_kl
    >>> s = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    >>> t = torch.tensor([[0.0, 0.0, 3.0]])
    >>> loss = vocab_kl(s, t)  # KL(teacher || student), mean over tokens
    >>> round(loss.item(), 6)
    0.176848
    >>> loss.backward()
    >>> [round(g, 4) for g in s.grad[0].tolist()]
    [0.0448, 0.1994, -0.2442]
    """
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
    out_dtype, compute = _out_dtype(student_logits.dtype, teacher_logits.dtype)
    spec = _spec(direction, beta, temperature, t2_scaling, reduction, normalizer, compute)
    in_shape = tuple(student_logits.shape)
    per_shape, v = in_shape[:-1], in_shape[-1]
    device = student_logits.device
    valid, rows, skip, n, normalizer = _prepare(
        per_shape, in_shape, mask, ignore_index, labels, normalizer, spec, device
    )
    size = _chunk_rows(chunk_size, n, v, device, fused=False)
    s2 = student_logits.reshape(n, v)
    t2 = teacher_logits.reshape(n, v)
    need_s = student_logits.requires_grad and torch.is_grad_enabled()
    need_t = teacher_logits.requires_grad and torch.is_grad_enabled()
    lent = None
    if grad_buffer is not None:
        lent = _check_buffer(grad_buffer, student_logits, teacher_logits).reshape(n, v)
    if need_s or need_t:
        hint = _hint(n, per_shape, in_shape, valid, reduction, normalizer, spec, device)
        values = _VocabKL.apply(s2, t2, rows, skip, hint, spec, size, lent if need_s else None)
    else:
        values = torch.zeros(n, dtype=compute, device=device)
        with torch.no_grad():
            _vocab_loop(s2, t2, rows, spec, size, None, None, None, values)
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


def fused_linear_vocab_kl(
    student_hidden: Any,
    student_weight: Any,
    teacher_hidden: Any,
    teacher_weight: Any,
    *,
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
) -> Any:
    r""":func:`vocab_kl` of ``h_s W_s^T + b_s`` against ``h_t W_t^T + b_t``, logits never whole.

    .. math::

        z_s = h_s W_s^\top + b_s, \quad z_t = h_t W_t^\top + b_t, \qquad
        \text{value} = \texttt{vocab\_kl}(z_s, z_t, \ldots)

    The lm_head matmuls run inside the chunks (in the inputs' dtype, as ``F.linear`` would);
    the logits of one chunk are then taken to float32. Weight and bias gradients are
    accumulated over chunks in float32 and cast to the parameters' dtype at the end; a head
    whose tensors don't require grad (a frozen teacher) gets no gradient work at all.

    Args:
        student_hidden: ``(..., H_s)``.
        student_weight: ``(V, H_s)``, as in ``nn.Linear(H_s, V).weight``.
        teacher_hidden: ``(..., H_t)``, the same leading shape; ``H_t`` may differ from ``H_s``.
        teacher_weight: ``(V, H_t)``.
        student_bias, teacher_bias: ``(V,)`` or None.
        direction, beta, temperature, t2_scaling: as in :func:`vocab_kl`.
        mask, ignore_index, labels, reduction, normalizer: as in :func:`vocab_kl` (shapes
            ``(...)`` are the hidden states' leading shape).
        chunk_size: tokens per chunk (default: about 2**23 vocabulary entries on CPU).

    Returns:
        As :func:`vocab_kl`.

    >>> import torch
    >>> from kldiv.torch import fused_linear_vocab_kl, vocab_kl
    >>> g = torch.Generator().manual_seed(0)
    >>> hs, ht = torch.randn(5, 8, generator=g), torch.randn(5, 4, generator=g)
    >>> ws = torch.randn(11, 8, generator=g, requires_grad=True)
    >>> wt = torch.randn(11, 4, generator=g)
    >>> fused = fused_linear_vocab_kl(hs, ws, ht, wt, direction="reverse")
    >>> plain = vocab_kl(hs @ ws.T, ht @ wt.T, direction="reverse")
    >>> bool(torch.allclose(fused, plain))
    True
    """
    names = ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight")
    hs, ws, ht, wt = student_hidden, student_weight, teacher_hidden, teacher_weight
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
    out_dtype, compute = _out_dtype(hs.dtype, ht.dtype)
    spec = _spec(direction, beta, temperature, t2_scaling, reduction, normalizer, compute)
    per_shape = tuple(hs.shape[:-1])
    in_shape = (*per_shape, v)
    valid, rows, skip, n, normalizer = _prepare(
        per_shape, in_shape, mask, ignore_index, labels, normalizer, spec, device
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
        values = _FusedLinearVocabKL.apply(*inputs, rows, skip, hint, spec, size)
    else:
        values = torch.zeros(n, dtype=compute, device=device)
        with torch.no_grad():
            _fused_loop(inputs, (False,) * 6, rows, spec, size, None, [None] * 6, values)
    result = _reduce_values(values, per_shape, in_shape, valid, reduction, normalizer)
    return result.to(out_dtype)
