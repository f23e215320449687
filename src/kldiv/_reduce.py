"""The one place that applies event axes, masks, reductions and normalizers.

Terms (shapes are those of the *inputs*: the broadcast shape of every parameter array):

- the **family axis** is the axis a family sums itself (a ``Categorical``'s ``axis``, a
  ``MultivariateNormal``'s last axis); ``Normal`` and ``Bernoulli`` have none;
- ``event_axis`` names further input axes to sum as independent dimensions;
- the **per-distribution values** are what remains once all event axes are summed;
- ``mask`` either broadcasts against the per-distribution shape, or has the inputs' rank with
  size 1 on every event axis (VITS's ``z_mask`` of shape ``(B, 1, T)``), which are then dropped.

A mask is a non-negative weight per distribution (a bool mask is the 0/1 case). Reductions of
the per-distribution values ``v`` with weights ``m``:

============  =========================================================
``"none"``    ``m * v`` (masked entries 0)
``"sum"``     ``sum(m * v)``
``"mean"``    ``sum(m * v) / sum(m)``; 0 (with zero gradients) if ``sum(m) == 0``
``"batchmean"`` ``sum(m * v) / v.shape[0]``; 0 for an empty batch
normalizer    ``sum(m * v) / normalizer``, overriding any of the above (also ``"none"``)
============  =========================================================

An entry of weight 0 contributes 0 even where its value is ``inf`` or NaN.
"""

from __future__ import annotations

import math
from typing import Any

from ._xp import all_finite, is_concrete, library_of, normalize_axes
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
        if not 0 < normalizer < math.inf:
            raise bad("normalizer", "a positive finite number", describe(normalizer))
        return
    lib = library_of(normalizer)
    if lib in (None, "unknown"):
        raise bad("normalizer", "a positive number or a 0-d array", describe(normalizer))
    if tuple(normalizer.shape) != ():
        raise bad("normalizer", "a 0-d array", f"an array of shape {tuple(normalizer.shape)}")
    kind = str(normalizer.dtype)
    if "bool" in kind or "complex" in kind:
        raise bad("normalizer", "a real positive number or 0-d array", describe(normalizer))
    if lib == "numpy":  # a host value: read it (a device tensor is read under validate=True)
        check_normalizer_value(normalizer)


def check_normalizer_value(normalizer: Any) -> None:
    """Read a 0-d array normalizer and reject one that is not positive and finite."""
    try:
        value = float(normalizer)
    except (TypeError, ValueError):  # a tracer: its value can't be read here
        raise KLDivError(
            "normalizer: validate=True needs a concrete value; validate outside jit/compile"
        ) from None
    if not 0 < value < math.inf:
        raise bad("normalizer", "a positive finite number", f"{value!r} ({describe(normalizer)})")


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
    mask = mask_shaped(xp, mask, in_shape, event_axes, per_shape)
    return mask if mask.dtype == xp.bool else mask != 0


def mask_shaped(
    xp: Any,
    mask: Any,
    in_shape: tuple[int, ...],
    event_axes: tuple[int, ...],
    per_shape: tuple[int, ...],
) -> Any:
    """The mask, in its own dtype, reshaped to broadcast to ``per_shape`` (see the module doc)."""
    mshape = tuple(mask.shape)
    dtype = mask.dtype
    if dtype != xp.bool and not _is_real(xp, dtype):
        raise bad(
            "mask", "a boolean array or real non-negative weights", f"an array of dtype {dtype}"
        )
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


def _is_real(xp: Any, dtype: Any) -> bool:
    name = str(dtype)
    return "complex" not in name and ("float" in name or "int" in name)


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
    per_shape = tuple(s for i, s in enumerate(in_shape) if i not in all_axes)
    if mask is not None:
        mask = mask_shaped(xp, mask, in_shape, all_axes, per_shape)
    return apply(xp, values, to_sum, per_shape, mask, reduction, normalizer, in_shape=in_shape)


def apply(
    xp: Any,
    values: Any,
    to_sum: tuple[int, ...],
    per_shape: tuple[int, ...],
    mask: Any,
    reduction: str,
    normalizer: Any,
    *,
    in_shape: tuple[int, ...] = (),
) -> Any:
    """:func:`reduce` once the layout is known: ``mask`` already shaped by :func:`mask_shaped`."""
    shape = tuple(values.shape)
    if tuple(s for i, s in enumerate(shape) if i not in to_sum) != per_shape or any(
        a >= len(shape) for a in to_sum
    ):  # a user formula that returned the wrong shape
        raise KLDivError(
            f"kl: the registered formula returned shape {shape}, "
            f"expected {per_shape} (less the event axes {to_sum}) for inputs of shape {in_shape}"
        )
    if reduction == "batchmean" and not per_shape and normalizer is None:
        raise KLDivError(
            "reduction: expected per-distribution values with a batch axis for "
            "'batchmean', got a single distribution (shape ()); use 'sum'"
        )
    if mask is None and (normalizer is not None or reduction != "none"):
        total = xp.sum(values)  # every axis at once: the event axes need no pass of their own
        if normalizer is not None:
            return total / normalizer
        if reduction == "sum":
            return total
        if reduction == "batchmean":
            return total / max(per_shape[0], 1)
        n = 1
        for s in per_shape:
            n *= s
        return total / max(n, 1)
    if to_sum:
        values = xp.sum(values, axis=to_sum)
    total = None
    count = None
    if mask is not None:
        weights = mask if mask.dtype == values.dtype else xp.astype(mask, values.dtype)
        weighted = weights * values
        if reduction != "none" or normalizer is not None:
            total = xp.sum(weighted)
        # A weight of 0 must count 0 even where the value is inf or NaN (0 * inf is NaN).
        if not (is_concrete(values) and all_finite(xp, weighted if total is None else total)):
            weighted = xp.where(weights != 0, weighted, xp.zeros_like(weighted))
            total = None if total is None else xp.sum(weighted)
        values = weighted
        if reduction == "mean" and normalizer is None:
            count = xp.sum(xp.broadcast_to(weights, per_shape))
    if normalizer is not None:  # overrides every reduction, "none" included
        return (xp.sum(values) if total is None else total) / normalizer
    if reduction == "none":
        return values
    if total is None:
        total = xp.sum(values)
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / max(per_shape[0], 1)
    if count is None:
        n = 1
        for s in per_shape:
            n *= s
        return total / max(n, 1)
    # 0 (with zero gradients) when every weight is 0: the total is then 0 too
    return total / xp.where(count == 0, xp.ones_like(count), count)
