"""The PyTorch side of :func:`kldiv._xp.closed_form` (imported only once torch is in use).

A module of its own, defined at import, so that ``torch.compile`` meets a class that already
exists rather than tracing its definition.
"""

from __future__ import annotations

from typing import Any

import array_api_compat.numpy as nxp
import array_api_compat.torch as txp
import numpy as np
import torch

#: Inputs up to this many elements on the CPU are evaluated with NumPy on the same memory: a
#: NumPy operation costs a fraction of a torch operation's dispatch, which dominates there.
SMALL = 1 << 15


def call(fn: Any, args: tuple, need: tuple) -> tuple:
    """``fn(xp, *args, need=need)`` with torch tensors in and out (NumPy for small CPU inputs)."""
    if (
        len(args[0].shape)
        and all(a.device.type == "cpu" and a.numel() <= SMALL for a in args)
        and not torch.compiler.is_compiling()
        and args[0].dtype in (torch.float32, torch.float64)
    ):
        with np.errstate(all="ignore"):
            res = fn(nxp, *(a.detach().numpy() for a in args), need=need)
        return tuple(_to_torch(r) for r in res)
    return fn(txp, *args, need=need)


def _to_torch(r: Any) -> Any:
    if isinstance(r, list):
        return [None if p is None else _to_torch(p) for p in r]
    return torch.from_numpy(np.ascontiguousarray(r) if np.ndim(r) else np.asarray(r).copy())


class ClosedForm(torch.autograd.Function):
    """``fn``'s value with ``fn``'s partials as its gradient (see :func:`kldiv._xp.closed_form`).

    The partials computed with the value are saved; when a second derivative is asked for
    (``create_graph=True``), they are recomputed with autograd recording, so the Hessian is that
    of the formula too.
    """

    @staticmethod
    def forward(ctx: Any, fn: Any, *args: Any) -> Any:
        need = tuple(ctx.needs_input_grad[1:])
        res = call(fn, args, need)
        value, partials = res[0], res[1]
        ctx.fn, ctx.need = fn, need
        kept = [p for p in partials if p is not None]
        ctx.save_for_backward(*args, *kept)
        if len(res) == 3:
            ctx.mark_non_differentiable(res[2])
            return value, res[2]
        return value

    @staticmethod
    def backward(ctx: Any, grad: Any, *_: Any) -> Any:
        saved = ctx.saved_tensors
        n = len(ctx.need)
        args = saved[:n]
        if torch.is_grad_enabled():  # create_graph: the partials must be differentiable
            partials = ctx.fn(txp, *args, need=ctx.need, smooth=True)[1]
        else:
            kept = iter(saved[n:])
            partials = [next(kept) if need else None for need in ctx.need]
        if grad.dim() and grad.numel() and all(s == 0 for s in grad.stride()):
            grad = grad.reshape(-1)[0]  # an expanded scalar (a sum's gradient): stay cheap
        grads = []
        for a, p in zip(args, partials, strict=True):
            if p is None:
                grads.append(None)
                continue
            # a partial has the value's shape plus the event axes the value sums, last
            extra = p.dim() - grad.dim() if grad.dim() else 0
            g = p * (grad.reshape(*grad.shape, *(1,) * extra) if extra > 0 else grad)
            if tuple(g.shape) != tuple(a.shape):
                g = g.sum_to_size(a.shape)
            grads.append(g)
        return (None, *grads)
