r"""Reductions by a global count: data parallelism and gradient accumulation that give the
gradients of one process on the whole batch.

A per-rank ``reduction="mean"`` divides each rank's (or micro-batch's) sum by its own count, so
ranks and micro-batches with fewer valid tokens weigh more than they should. The fix is to
divide every local sum by one global count ``N`` (valid items over all ranks and all
micro-batches of the optimizer step):

.. math::

    \text{loss}_{r,m} = \frac{W}{N} \sum_{i \in \text{rank } r,\ \text{micro-batch } m} m_i\,
    \mathrm{KL}_i

Summing gradients over micro-batches and averaging them over the ``W`` ranks (what
``DistributedDataParallel`` does) then gives exactly the gradient of
:math:`\frac1N \sum_i m_i \mathrm{KL}_i` over the concatenated batch. :func:`global_normalizer`
returns :math:`N / W`, to pass as ``normalizer=`` to :func:`kldiv.kl` or the loss modules.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..errors import bad, describe


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _count(index: int, item: Any) -> Any:
    """The number of valid items ``item`` stands for: an int, a 0-d tensor, or a mask."""
    name = f"counts[{index}]"
    if isinstance(item, bool):
        raise bad(name, "an int count or a mask tensor", describe(item))
    if isinstance(item, int):
        if item < 0:
            raise bad(name, "a non-negative count", describe(item))
        return item
    if not isinstance(item, torch.Tensor):
        raise bad(name, "an int count or a mask tensor", describe(item))
    if item.dtype.is_complex:
        raise bad(name, "a boolean, 0/1 or integer tensor", describe(item))
    if item.dim() == 0 and item.dtype != torch.bool:
        if item.dtype.is_floating_point:
            raise bad(name, "an integer 0-d count or a mask with at least one axis", describe(item))
        return item.detach().to(torch.float64)
    return torch.count_nonzero(item.detach()).to(torch.float64)


def _device(items: tuple[Any, ...], group: Any) -> torch.device:
    for item in items:
        if isinstance(item, torch.Tensor):
            return item.device
    if _is_distributed() and "nccl" in str(dist.get_backend(group)):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def global_count(*counts: Any, group: Any = None) -> torch.Tensor:
    r"""The number of valid items in ``counts``, summed over every rank of ``group``.

    .. math::

        N = \sum_{\text{ranks}} \sum_j n_j

    Each of ``counts`` is an ``int`` or an integer 0-d tensor (a number of samples), or a mask
    (a boolean or 0/1 tensor with at least one axis), which counts its nonzero entries: give it
    at the per-distribution shape (a VITS ``z_mask`` of shape ``(B, 1, T)`` counts valid frames;
    a mask that relies on broadcasting would count too few). Pass the masks of every
    micro-batch of the optimizer step at once. Under ``torch.distributed`` this is a collective
    (an ``all_reduce``): every rank of ``group`` must call it. Returns a float64 0-d tensor on
    the masks' device, without gradient.

    >>> import torch
    >>> from kldiv.torch import global_count
    >>> float(global_count(torch.tensor([[1, 1, 0], [1, 0, 0]]), 5))  # one process
    8.0
    """
    if not counts:
        raise bad("counts", "at least one count or mask", "none")
    device = _device(counts, group)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    total = torch.zeros((), dtype=dtype, device=device)
    for i, item in enumerate(counts):
        n = _count(i, item)
        total = total + (n.to(device=device, dtype=dtype) if isinstance(n, torch.Tensor) else n)
    if _is_distributed():
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total


def global_normalizer(
    *counts: Any, group: Any = None, averaged_over_ranks: bool = True
) -> torch.Tensor:
    r"""The ``normalizer=`` that turns per-rank, per-micro-batch KL sums into the global mean.

    .. math::

        \text{normalizer} = \frac{N}{W}

    with ``N`` the :func:`global_count` of ``counts`` and ``W`` the world size of ``group``
    (1 without ``torch.distributed``, or with ``averaged_over_ranks=False`` where gradients are
    summed over ranks rather than averaged as ``DistributedDataParallel`` does). Call it once
    per optimizer step with the masks (or sample counts) of all the step's micro-batches, then
    pass it to every micro-batch's loss: the gradients equal those of one process computing
    ``reduction="mean"`` on the concatenated batch. If nothing is valid anywhere (``N = 0``),
    ``N`` is taken as 1, so the loss is 0 rather than NaN.

    >>> import torch
    >>> from kldiv.torch import NormalKLLoss, global_normalizer
    >>> loss_fn = NormalKLLoss(param="log_var")
    >>> micro = [torch.ones(3, 2), torch.ones(1, 2)]  # two uneven micro-batches of means
    >>> norm = global_normalizer(*(len(m) for m in micro))  # 4 samples in the step
    >>> total = sum(loss_fn(m, torch.zeros_like(m), normalizer=norm) for m in micro)
    >>> float(total)  # the mean over the 4 samples
    1.0
    """
    if not isinstance(averaged_over_ranks, bool):
        raise bad("averaged_over_ranks", "True or False", describe(averaged_over_ranks))
    total = global_count(*counts, group=group)
    total = torch.where(total > 0, total, torch.ones_like(total))
    if averaged_over_ranks and _is_distributed():
        total = total / dist.get_world_size(group)
    return total
