"""The entry point :func:`kl`: static checks, conversion, dispatch, then the reductions."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _reduce, _registry, _xp
from .dists import Distribution, MultivariateNormal, Normal
from .errors import KLDivError


def _named_arrays(p: Any, q: Any) -> dict[str, Any]:
    named = {}
    for side, d in (("p", p), ("q", q)):
        for field, value in d._arrays().items():
            named[f"{side}.{field}"] = value
    return named


def _prepare(p: Distribution, q: Distribution, mask: Any, normalizer: Any):
    """Check libraries, devices, dtypes and shapes; convert every parameter to one dtype."""
    params = _named_arrays(p, q)
    if isinstance(mask, (bool, int, float)):  # a Python constant mask: weak, like a number
        mask = [mask]
        mask_is_scalar = True
    else:
        mask_is_scalar = False
    others = {"mask": mask} if mask is not None else {}
    if normalizer is not None and _xp.library_of(normalizer) is not None:
        others["normalizer"] = normalizer
    xp, lib = _xp.common_namespace({**params, **others})
    device = _xp.device_of({**params, **others})
    compute, out = _xp.float_dtypes(xp, params)
    if compute == xp.float32 and _mixed(p, q) and _xp.has_float64(xp, device):
        # Converting one parametrization into another (log of a probability, sqrt of a
        # variance, ...) costs float32 digits that near-equal inputs can't spare.
        compute = xp.float64

    def convert(d: Distribution, side: str) -> Distribution:
        return d._replace(
            **{f: _xp.as_float(xp, v, compute, device) for f, v in d._arrays().items()}
        )

    p2, q2 = convert(p, "p"), convert(q, "q")
    shapes = {}
    for side, d in (("p", p2), ("q", q2)):
        try:
            own = d._input_shapes()
        except KLDivError as err:
            raise KLDivError(f"{side}.{err}") from None
        _xp.broadcast_shapes({f"{side}.{f}": s for f, s in own.items()})
        shapes.update({f"{side}.{f}": s for f, s in own.items()})
    in_shape = _xp.broadcast_shapes(shapes)
    if mask is not None and _xp.library_of(mask) is None:
        mask = xp.asarray(mask) if device is None else xp.asarray(mask, device=device)
        if mask_is_scalar:
            mask = xp.reshape(mask, ())
        others["mask"] = mask
    return xp, lib, p2, q2, in_shape, out, compute, mask


def _family_axis(p: Distribution, q: Distribution, in_shape: tuple[int, ...]) -> int | None:
    ndim = len(in_shape)
    axes = {}
    for side, d in (("p", p), ("q", q)):
        try:
            a = d._event_axis(ndim)
        except KLDivError as err:
            raise KLDivError(f"{side}.{err}") from None
        if a is not None:
            axes[side] = a
    if len(set(axes.values())) > 1:
        raise KLDivError(
            f"q.axis: expected the same class axis as p.axis (input axis "
            f"{axes['p']} of shape {in_shape}), got input axis {axes['q']}"
        )
    if axes:
        a = next(iter(axes.values()))
        # A Normal against a MultivariateNormal may broadcast along the event axis (isotropic).
        sizes = {
            side: d._input_shapes() for side, d in (("p", p), ("q", q)) if not isinstance(d, Normal)
        }
        event_sizes = {
            f"{side}.{f}": s[a - ndim]
            for side, ss in sizes.items()
            for f, s in ss.items()
            if len(s) >= ndim - a
        }
        if 0 in event_sizes.values():
            name = next(k for k, v in event_sizes.items() if v == 0)
            raise KLDivError(
                f"{name}: expected at least one class/dimension along the event "
                f"axis {a - ndim}, got size 0"
            )
        if len(set(event_sizes.values())) > 1:
            detail = ", ".join(f"{k}: {v}" for k, v in event_sizes.items())
            raise KLDivError(
                f"q: expected the same number of classes/dimensions along the "
                f"event axis as p, got {detail}"
            )
        return a
    return None


def kl(
    p: Any,
    q: Any,
    *,
    event_axis: int | tuple[int, ...] | None = None,
    mask: Any = None,
    reduction: str = "none",
    normalizer: Any = None,
    validate: bool = False,
) -> Any:
    r"""KL(p || q): the divergence of ``q`` from ``p``, the expectation taken under ``p``.

    .. math::

        \mathrm{KL}(p \,\|\, q) = \mathbb E_{x \sim p}\left[\log p(x) - \log q(x)\right] \ge 0

    Args:
        p: the distribution the expectation is under (in distillation, usually the teacher or
            data; in a VAE, the posterior). A spec: ``Normal``, ``MultivariateNormal``,
            ``Categorical``, ``Bernoulli`` or a registered type.
        q: the other distribution (in a VAE, the prior).
        event_axis: input axes (int or tuple) to sum as independent dimensions, e.g. the
            latent axis of a diagonal Gaussian. A ``Categorical`` sums its ``axis`` and a
            ``MultivariateNormal`` its last axis on their own.
        mask: bool or 0/1; masked distributions contribute 0 and are not counted. Broadcasts
            against the per-distribution shape, or has the inputs' rank with size 1 on the event
            axes.
        reduction: ``"none"`` (per-distribution values), ``"sum"``, ``"mean"`` (over unmasked
            distributions; 0 if all are masked) or ``"batchmean"`` (total / size of axis 0).
        normalizer: an explicit positive divisor of the total, overriding the reduction's
            (e.g. a global token count under gradient accumulation).
        validate: read the values and raise a ``KLDivError`` that says where a probability,
            scale or mask is invalid (outside traced code only).

    Returns:
        An array of the inputs' library; float16/bfloat16 inputs are computed in float32 and
        returned in their own dtype.

    >>> import kldiv
    >>> from kldiv import Normal
    >>> round(float(kldiv.kl(Normal(0.0, std=1.0), Normal(1.0, std=2.0))), 6)
    0.443147
    """
    _reduce.check_reduction(reduction, normalizer)
    if not isinstance(validate, bool):
        raise KLDivError(f"validate: expected True or False, got {validate!r}")
    fn = _registry.lookup(type(p), type(q))
    if not (isinstance(p, Distribution) and isinstance(q, Distribution)):
        values = fn(p, q)
        xp = _xp.xp_of(values)
        if _xp.library_of(values) is None:
            values = xp.asarray(values)
        return _reduce.reduce(
            xp,
            values,
            in_shape=tuple(values.shape),
            family_axis=None,
            event_axis=event_axis,
            mask=mask,
            reduction=reduction,
            normalizer=normalizer,
        )
    xp, lib, p2, q2, in_shape, out_dtype, compute, mask = _prepare(p, q, mask, normalizer)
    family = _family_axis(p2, q2, in_shape)
    if _is_diag_vs_mvn(p2, q2):
        _check_diag_event_axis(event_axis, in_shape)
    if validate:
        from ._validate import check_values

        check_values(p2, "p")
        check_values(q2, "q")
        if mask is not None:
            check_values(mask, "mask")
    if lib in (None, "numpy"):
        # where() evaluates both branches; NumPy would warn about the one it then discards.
        with np.errstate(all="ignore"):
            values = fn(p2, q2)
    else:
        values = fn(p2, q2)
    result = _reduce.reduce(
        xp,
        values,
        in_shape=in_shape,
        family_axis=family,
        event_axis=event_axis,
        mask=mask,
        reduction=reduction,
        normalizer=_as_normalizer(xp, normalizer, compute),
    )
    if result.dtype != out_dtype:
        result = xp.astype(result, out_dtype)
    return result


def _mixed(p: Distribution, q: Distribution) -> bool:
    """Whether p and q are given in different parametrizations (N(0, 1) adapts to any)."""
    if getattr(p, "standard_", False) or getattr(q, "standard_", False):
        return False
    return getattr(p, "param", None) != getattr(q, "param", None)


def _as_normalizer(xp: Any, normalizer: Any, dtype: Any) -> Any:
    if normalizer is None or isinstance(normalizer, (int, float)):
        return normalizer
    return xp.astype(normalizer, dtype)


def _is_diag_vs_mvn(p: Any, q: Any) -> bool:
    return (isinstance(p, Normal) and isinstance(q, MultivariateNormal)) or (
        isinstance(p, MultivariateNormal) and isinstance(q, Normal)
    )


def _check_diag_event_axis(event_axis: Any, in_shape: tuple[int, ...]) -> None:
    ndim = len(in_shape)
    axes = (
        () if event_axis is None else _xp.normalize_axes(event_axis, ndim, "event_axis", in_shape)
    )
    if ndim - 1 not in axes:
        raise KLDivError(
            "event_axis: expected it to include -1 for a Normal against a MultivariateNormal "
            f"(the Normal's last axis is the MultivariateNormal's event axis), got {event_axis!r}"
        )
