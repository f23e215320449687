"""The one place that applies event axes, masks, reductions and normalizers.

Terms (shapes are those of the *inputs*: the broadcast shape of every parameter array):

- the **family axis** is the axis a family sums itself (a ``Categorical``'s ``axis``, a
  ``MultivariateNormal``'s last axis); ``Normal`` and ``Bernoulli`` have none;
- ``event_axis`` names further input axes to sum as independent dimensions;
- the **per-distribution values** are what remains once all event axes are summed;
- ``mask`` either broadcasts against the per-distribution shape, or has the inputs' rank with
  size 1 on every event axis (VITS's ``z_mask`` of shape ``(B, 1, T)``), which are then dropped.

Reductions of the per-distribution values ``v`` with mask ``m`` (1 where counted):

============  =========================================================
``"none"``    ``v`` with masked entries set to 0
``"sum"``     ``sum(m * v)``
``"mean"``    ``sum(m * v) / sum(m)``; 0 (with zero gradients) if all are masked
``"batchmean"`` ``sum(m * v) / v.shape[0]``
normalizer    ``sum(m * v) / normalizer``, overriding any of the above (also ``"none"``)
============  =========================================================
"""

from __future__ import annotations

from typing import Any

from ._xp import library_of, normalize_axes
from .errors import KLDivError, bad, describe

REDUCTIONS = ("none", "sum", "mean", "batchmean")


def check_reduction(reduction: Any, normalizer: Any) -> None:
    """Static checks of ``reduction`` and ``normalizer`` (before any work is done)."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise bad(
            "reduction", f"one of {', '.join(repr(r) for r in REDUCTIONS)}", describe(reduction)
        )
    if normalizer is None:
        return
    if isinstance(normalizer, bool):
        raise bad("normalizer", "a positive number or a 0-d array", describe(normalizer))
    if isinstance(normalizer, (int, float)):
        if not normalizer > 0:
            raise bad("normalizer", "a positive number", describe(normalizer))
    elif library_of(normalizer) in (None, "unknown"):
        raise bad("normalizer", "a positive number or a 0-d array", describe(normalizer))
    elif tuple(normalizer.shape) != ():
        raise bad("normalizer", "a 0-d array", f"an array of shape {tuple(normalizer.shape)}")


def event_layout(
    ndim: int, shape: tuple[int, ...], family_axis: int | None, event_axis: Any
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The event axes of the inputs, and those of them to sum in the values a formula returns.

    Returns ``(all_event_axes, value_axes_to_sum)``: the first in input coordinates (family
    axis included), the second in the coordinates of the formula's output, which lacks the
    family axis.
    """
    extra = () if event_axis is None else normalize_axes(event_axis, ndim, "event_axis", shape)
    family = () if family_axis is None else (family_axis,)
    all_axes = tuple(sorted(set(extra) | set(family)))
    to_sum = tuple(
        a - (1 if family_axis is not None and a > family_axis else 0)
        for a in extra
        if a != family_axis
    )
    return all_axes, to_sum


def _mask_to_per_distribution(
    xp: Any,
    mask: Any,
    in_shape: tuple[int, ...],
    event_axes: tuple[int, ...],
    per_shape: tuple[int, ...],
) -> Any:
    """The mask as a boolean array that broadcasts to ``per_shape`` (see the module doc)."""
    mshape = tuple(mask.shape)
    dtype = mask.dtype
    if dtype != xp.bool:
        if xp.isdtype(dtype, "complex floating"):
            raise bad("mask", "a boolean or 0/1 array", f"an array of dtype {dtype}")
        mask = mask != 0
    expected = f"a shape that broadcasts to the per-distribution shape {per_shape}" + (
        f" or the inputs' rank {len(in_shape)} with size 1 on the event axes {event_axes}"
        if event_axes
        else ""
    )
    if event_axes and len(mshape) == len(in_shape) and len(in_shape) != len(per_shape):
        if any(mshape[a] != 1 for a in event_axes):
            raise bad("mask", expected, f"shape {mshape}")
        keep = tuple(s for i, s in enumerate(mshape) if i not in event_axes)
        mask = xp.reshape(mask, keep)
        mshape = keep
    if len(mshape) > len(per_shape) or any(
        m not in (1, s) for m, s in zip(mshape[::-1], per_shape[::-1], strict=False)
    ):
        raise bad("mask", expected, f"shape {mshape}")
    return mask


def reduce(
    xp: Any,
    values: Any,
    *,
    in_shape: tuple[int, ...],
    family_axis: int | None,
    event_axis: Any,
    mask: Any,
    reduction: str,
    normalizer: Any,
) -> Any:
    """Sum the event axes of ``values``, apply ``mask``, then the reduction.

    ``values`` is a formula's output: the inputs' shape ``in_shape`` less the family axis.
    """
    all_axes, to_sum = event_layout(len(in_shape), in_shape, family_axis, event_axis)
    if to_sum:
        values = xp.sum(values, axis=to_sum)
    per_shape = tuple(s for i, s in enumerate(in_shape) if i not in all_axes)
    if tuple(values.shape) != per_shape:  # a user formula that returned the wrong shape
        raise KLDivError(
            f"kl: the registered formula returned shape {tuple(values.shape)}, "
            f"expected {per_shape} for inputs of shape {in_shape}"
        )
    count = None
    if mask is not None:
        mask = _mask_to_per_distribution(xp, mask, in_shape, all_axes, per_shape)
        values = xp.where(mask, values, xp.zeros_like(values))
        if reduction == "mean" and normalizer is None:
            full = xp.broadcast_to(mask, per_shape)
            count = xp.sum(xp.astype(full, values.dtype))
    if normalizer is not None:  # overrides every reduction, "none" included
        return xp.sum(values) / normalizer
    if reduction == "none":
        return values
    total = xp.sum(values)
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        if not per_shape:
            raise KLDivError(
                "reduction: expected per-distribution values with a batch axis for "
                "'batchmean', got a single distribution (shape ()); use 'sum'"
            )
        return total / per_shape[0]
    if count is None:
        n = 1
        for s in per_shape:
            n *= s
        return total / max(n, 1)
    return total / xp.maximum(count, xp.ones_like(count))
