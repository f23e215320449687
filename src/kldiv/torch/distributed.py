r"""Reductions by a global count: data parallelism, context parallelism and gradient accumulation
that give the gradients of one process on the whole batch.

A per-rank ``reduction="mean"`` divides each rank's (or micro-batch's) sum by its own count, so
ranks and micro-batches with fewer valid tokens weigh more than they should. The fix is to
divide every local sum by one global count ``N`` (valid items over all ranks and all
micro-batches of the optimizer step):

.. math::

    \text{loss}_{r,m} = \frac{W}{N} \sum_{i \in \text{rank } r,\ \text{micro-batch } m} m_i\,
    \mathrm{KL}_i

Summing gradients over micro-batches and averaging them over the ``W`` ranks (what
``DistributedDataParallel`` and FSDP do) then gives exactly the gradient of
:math:`\frac1N \sum_i m_i \mathrm{KL}_i` over the concatenated batch. :func:`global_normalizer`
returns :math:`N / W`, to pass as ``normalizer=`` to :func:`kldiv.kl`, :mod:`kldiv.penalty` or
the loss modules.

**Context parallelism.** A sequence split over the ranks of a context-parallel group (each
holding some of its tokens) is still one sequence. Gradients are then averaged over the data-
and context-parallel ranks together (Megatron's data-parallel-with-context group, a DeviceMesh's
flattened ``dp_cp`` dimension): that is ``group``, and ``W`` is its size. A mask of a rank's
own tokens is summed over ``group`` as it is; a count that every rank of the context group holds
alike (the number of sequences, or a mask of whole sequences given before the split) is counted
once per context group with ``context_group=`` and ``replicated_over_context=True``. A
per-sequence mean needs each sequence's length summed over its context group first:
:func:`sequence_weights`.

**Hugging Face Trainer.** ``transformers.Trainer`` passes ``num_items_in_batch`` (the valid
label tokens of the optimizer step's micro-batches, summed over processes when
``average_tokens_across_devices``) to a ``compute_loss_func`` or to the model; with
``average_tokens_across_devices`` it then multiplies the returned loss by the number of
processes. :func:`trainer_normalizer` turns that into the ``normalizer=``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..errors import KLDivError, bad, describe

__all__ = ["global_count", "global_normalizer", "sequence_weights", "trainer_normalizer"]


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _count(index: int, item: Any, validate: bool) -> Any:
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
        raise bad(name, "a boolean, integer or real tensor", describe(item))
    if item.dim() == 0 and item.dtype != torch.bool:
        if item.dtype.is_floating_point:
            raise bad(name, "an integer 0-d count or a mask with at least one axis", describe(item))
        if validate and int(item) < 0:
            raise bad(name, "a non-negative count", str(int(item)))
        return item.detach().to(torch.float64)
    if validate:
        from ..penalty import _check_weights

        _check_weights(name, item)
    if item.dtype == torch.bool:
        return torch.count_nonzero(item.detach()).to(torch.float64)
    return item.detach().to(torch.float64).sum()  # weights: their sum (0/1 masks count)


def _device(items: tuple[Any, ...], group: Any) -> torch.device:
    for item in items:
        if isinstance(item, torch.Tensor):
            return item.device
    if _is_distributed() and "nccl" in str(dist.get_backend(group)):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise bad(name, "True or False", describe(value))


def _context_size(group: Any, context_group: Any) -> int:
    """The size of ``context_group``, which must lie inside ``group``."""
    if context_group is None or not _is_distributed():
        return 1
    inside = set(dist.get_process_group_ranks(group if group is not None else dist.group.WORLD))
    ranks = dist.get_process_group_ranks(context_group)
    if not set(ranks) <= inside:
        raise KLDivError(
            f"context_group: expected ranks inside group (the ranks whose gradients are "
            f"averaged together, context-parallel ranks included), got ranks {sorted(ranks)} "
            f"against group {sorted(inside)}"
        )
    return len(ranks)


def global_count(
    *counts: Any,
    group: Any = None,
    context_group: Any = None,
    replicated_over_context: bool = False,
    validate: bool = False,
) -> torch.Tensor:
    r"""The number of valid items in ``counts``, summed over every rank of ``group``.

    .. math::

        N = \frac{1}{C} \sum_{\text{ranks of group}} \sum_j n_j

    with :math:`C` the size of ``context_group`` when ``replicated_over_context``, else 1.
    Each of ``counts`` is an ``int`` or an integer 0-d tensor (a number of samples or
    sequences), or a mask with at least one axis: bool, or non-negative weights, which counts
    its weights' sum (the nonzero entries of a 0/1 mask). Give a mask at the per-distribution
    shape (a VITS ``z_mask`` of shape ``(B, 1, T)`` counts valid frames; a mask that relies on
    broadcasting would count too few). Pass the masks of every micro-batch of the optimizer step
    at once.

    ``group`` holds the ranks whose gradients are averaged together (context-parallel ranks
    included); ``context_group`` is this rank's context-parallel group, whose ranks hold pieces
    of the same sequences. Counts of a rank's own tokens need no ``context_group``; counts that
    every rank of the context group holds alike (sequences) take ``replicated_over_context=True``
    and are then counted once. Under ``torch.distributed`` this is a collective (an
    ``all_reduce``): every rank of ``group`` must call it. ``validate=True`` reads the values:
    negative or non-finite weights, and replicated counts that differ within a context group,
    raise a ``KLDivError``. Returns a float64 0-d tensor on the masks' device, without gradient.

    >>> import torch
    >>> from kldiv.torch import global_count
    >>> float(global_count(torch.tensor([[1, 1, 0], [1, 0, 0]]), 5))  # one process
    8.0
    >>> float(global_count(torch.tensor([[1.0, 0.5, 0.0]])))  # weights
    1.5
    """
    if not counts:
        raise bad("counts", "at least one count or mask", "none")
    _check_flag("replicated_over_context", replicated_over_context)
    _check_flag("validate", validate)
    if replicated_over_context and context_group is None:
        raise bad(
            "context_group",
            "the context-parallel group with replicated_over_context=True",
            "None",
        )
    size = _context_size(group, context_group)
    device = _device(counts, group)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    total = torch.zeros((), dtype=dtype, device=device)
    for i, item in enumerate(counts):
        n = _count(i, item, validate)
        total = total + (n.to(device=device, dtype=dtype) if isinstance(n, torch.Tensor) else n)
    if not _is_distributed():
        return total
    if replicated_over_context and validate and size > 1:
        lo, hi = total.clone(), total.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=context_group)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=context_group)
        if float(lo) != float(hi):
            raise KLDivError(
                "counts: expected the same counts on every rank of context_group "
                f"(replicated_over_context=True), got totals from {float(lo)} to {float(hi)}"
            )
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total / size if replicated_over_context and size > 1 else total


def global_normalizer(
    *counts: Any,
    group: Any = None,
    context_group: Any = None,
    replicated_over_context: bool = False,
    averaged_over_ranks: bool = True,
    validate: bool = False,
) -> torch.Tensor:
    r"""The ``normalizer=`` that turns per-rank, per-micro-batch KL sums into the global mean.

    .. math::

        \text{normalizer} = \frac{N}{W}

    with ``N`` the :func:`global_count` of ``counts`` (same arguments) and ``W`` the size of
    ``group`` (1 without ``torch.distributed``, or with ``averaged_over_ranks=False`` where
    gradients are summed over ranks rather than averaged as ``DistributedDataParallel`` does).
    Call it once per optimizer step with the masks (or sample counts) of all the step's
    micro-batches, then pass it to every micro-batch's loss: the gradients equal those of one
    process computing the mean on the concatenated batch. If nothing is valid anywhere
    (``N = 0``), ``N`` is taken as 1, so the loss is 0 rather than NaN.

    The usual RLHF normalizations (verl's ``loss_agg_mode``, TRL's ``loss_type``), with ``m``
    the mask of this rank's tokens, ``B`` its number of sequences and ``L`` a fixed length:

    - mean over valid tokens: ``mask=m, normalizer=global_normalizer(m, ...)``;
    - mean over each sequence's tokens, then over the sequences: ``w = sequence_weights(m,
      context_group=...)``, ``mask=w``, and ``normalizer=global_normalizer(B, context_group=...,
      replicated_over_context=True)`` (all sequences, as verl and TRL) or
      ``global_normalizer(w, ...)`` (the sequences with a valid token);
    - sum over tokens over ``B * L`` (Dr. GRPO): ``mask=m, normalizer=L * global_normalizer(B,
      context_group=..., replicated_over_context=True)`` (``context_group`` only under context
      parallelism; without it, ``global_normalizer(B)``).

    >>> import torch
    >>> from kldiv.torch import NormalKLLoss, global_normalizer
    >>> loss_fn = NormalKLLoss(param="log_var")
    >>> micro = [torch.ones(3, 2), torch.ones(1, 2)]  # two uneven micro-batches of means
    >>> norm = global_normalizer(*(len(m) for m in micro))  # 4 samples in the step
    >>> total = sum(loss_fn(m, torch.zeros_like(m), normalizer=norm) for m in micro)
    >>> float(total)  # the mean over the 4 samples
    1.0
    """
    _check_flag("averaged_over_ranks", averaged_over_ranks)
    total = global_count(
        *counts,
        group=group,
        context_group=context_group,
        replicated_over_context=replicated_over_context,
        validate=validate,
    )
    total = torch.where(total > 0, total, torch.ones_like(total))
    if averaged_over_ranks and _is_distributed():
        total = total / dist.get_world_size(group)
    return total


def sequence_weights(mask: Any, *, context_group: Any = None, validate: bool = False) -> Any:
    r"""Per-token weights that make a weighted sum a per-sequence mean: ``m / L``.

    .. math::

        w_{b,t} = \frac{m_{b,t}}{L_b}, \qquad L_b = \sum_{t} m_{b,t}

    summed over the last axis of ``mask`` (bool, or non-negative weights, of shape ``(B, T)``)
    and, under context parallelism, over the ranks of ``context_group`` (an ``all_reduce`` of
    the ``B`` lengths: every rank of the group must call it), so that a sequence split over
    ranks is one sequence. A sequence without a valid token gets weights 0. Then
    ``sum(w * v)`` is the sum over sequences of their mean values, each sequence's weights sum
    to 1 (over its context group), and :func:`global_count` of the weights counts the sequences
    that have a valid token. Returns a floating tensor (float32 for a bool or integer mask),
    without gradient.

    >>> import torch
    >>> from kldiv.torch import sequence_weights
    >>> sequence_weights(torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]))
    tensor([[0.5000, 0.5000, 0.0000, 0.0000],
            [0.2500, 0.2500, 0.2500, 0.2500],
            [0.0000, 0.0000, 0.0000, 0.0000]])
    """
    _check_flag("validate", validate)
    if not isinstance(mask, torch.Tensor) or mask.dim() < 1:
        raise bad("mask", "a tensor with a token axis (last), such as (B, T)", describe(mask))
    if mask.dtype.is_complex:
        raise bad("mask", "a boolean, integer or real tensor", describe(mask))
    if validate:
        from ..penalty import _check_weights

        _check_weights("mask", mask)
    m = mask.detach()
    m = m.to(torch.get_default_dtype()) if not m.dtype.is_floating_point else m
    length = m.sum(dim=-1, keepdim=True)
    if context_group is not None and _is_distributed():
        dist.all_reduce(length, op=dist.ReduceOp.SUM, group=context_group)
    return torch.where(length > 0, m / torch.where(length > 0, length, 1.0), 0.0)


def trainer_normalizer(
    num_items_in_batch: Any,
    *,
    average_tokens_across_devices: bool,
    scaled_by_trainer: bool,
    group: Any = None,
) -> torch.Tensor | None:
    r"""The ``normalizer=`` for a loss computed inside ``transformers.Trainer``.

    ``Trainer`` counts the valid label tokens of all the optimizer step's micro-batches and
    passes the count as ``num_items_in_batch`` (summed over processes when
    ``TrainingArguments.average_tokens_across_devices``, which is then also how it scales the
    loss). What to divide each micro-batch's sum by, so that the gradients are those of the mean
    over every valid token of the step on all ranks:

    ===============================  ======================  ==================================
    ``average_tokens_across_devices``  ``scaled_by_trainer``    normalizer
    ===============================  ======================  ==================================
    ``True``                          ``True``                ``num_items_in_batch`` (= N)
    ``True``                          ``False``               ``N / W``
    ``False``                         either                  ``all_reduce(num_items) / W``
    ===============================  ======================  ==================================

    ``scaled_by_trainer`` is ``True`` when the loss goes back through ``Trainer.compute_loss``
    (a ``compute_loss_func``, or a model that takes ``num_items_in_batch``), which multiplies it
    by the number of processes ``W`` when ``average_tokens_across_devices``; it is ``False`` in
    a ``compute_loss`` of your own that returns the loss as it is (TRL's GRPO divides by
    ``num_items_in_batch / num_processes`` there). With ``False`` for
    ``average_tokens_across_devices``, the count is this process's, so it is summed over
    ``group`` here (a collective: every rank must call it); that gives the global mean, where
    Trainer's own loss would average per-process means. ``None`` (Trainer had no count, e.g. a
    model without loss kwargs) gives ``None``: Trainer then divides the loss by the number of
    accumulation steps itself, and ``reduction="mean"`` is the best left to do.

    >>> from kldiv.torch import trainer_normalizer
    >>> float(trainer_normalizer(12, average_tokens_across_devices=True, scaled_by_trainer=True))
    12.0
    """
    _check_flag("average_tokens_across_devices", average_tokens_across_devices)
    _check_flag("scaled_by_trainer", scaled_by_trainer)
    if num_items_in_batch is None:
        return None
    if isinstance(num_items_in_batch, torch.Tensor) and num_items_in_batch.dim() != 0:
        raise bad(
            "num_items_in_batch",
            "an int or a 0-d integer tensor (Trainer's count of valid tokens)",
            describe(num_items_in_batch),
        )
    if average_tokens_across_devices:
        n = _count(0, num_items_in_batch, False)
        device = num_items_in_batch.device if isinstance(n, torch.Tensor) else None
        total = torch.as_tensor(n, dtype=torch.float64, device=device)
        total = torch.where(total > 0, total, torch.ones_like(total))
        if not scaled_by_trainer and _is_distributed():
            total = total / dist.get_world_size(group)
        return total
    return global_normalizer(num_items_in_batch, group=group)
