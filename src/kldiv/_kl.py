"""The entry point :func:`kl`: static checks, conversion, dispatch, then the reductions."""

from __future__ import annotations

import sys
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
    if not (isinstance(p, Distribution) and isinstance(q, Distribution)):
        return _kl_of_objects(p, q, event_axis, mask, reduction, normalizer)
    key = _plan_key(p, q, event_axis, mask, reduction, normalizer)
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = _Plan.make(p, q, event_axis, mask, reduction, normalizer)
        if key is not None:
            if len(_PLANS) >= _MAX_PLANS:
                _PLANS.clear()
            _PLANS[key] = plan
    return plan.run(p, q, mask, normalizer, validate)


def _kl_of_objects(p: Any, q: Any, event_axis: Any, mask: Any, reduction: str, normalizer: Any):
    """kl() for a registered pair of types that are not kldiv specs."""
    fn = _registry.lookup(type(p), type(q))
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


# ----------------------------------------------------------------------------------------------
# Plans: everything kl() works out from static facts (types, parametrizations, libraries,
# dtypes, shapes, devices, axes, the reduction) is worked out once per combination and reused, so
# that a call on small arrays costs little more than its arithmetic. Values never enter a key.
# ----------------------------------------------------------------------------------------------

_PLANS: dict = {}
_MAX_PLANS = 256


def _array_key(v: Any) -> Any:
    """The static facts of one field, or ``_NO_KEY`` where the field can't be keyed."""
    if v is None:
        return None
    t = type(v)
    if t is float or t is int:
        return t
    lib = _xp.library_of(v)
    if lib == "numpy":
        return (t, v.dtype, v.shape)
    if lib == "torch":
        return (t, v.dtype, tuple(v.shape), v.device)
    return _NO_KEY


_NO_KEY = object()


def _plan_key(
    p: Distribution, q: Distribution, event_axis: Any, mask: Any, reduction: str, normalizer: Any
):
    """A hashable key of the static facts, or ``None`` (no caching: traced or exotic input)."""
    items: list = [type(p), type(q), reduction, _array_key(normalizer)]
    if items[-1] is _NO_KEY:
        return None
    for d in (p, q):
        for f in d._static_fields:
            items.append(getattr(d, f))
        for f in d._array_fields:
            k = _array_key(getattr(d, f))
            if k is _NO_KEY:
                return None
            items.append(k)
    k = _array_key(mask) if not isinstance(mask, (bool, list, tuple)) else _NO_KEY
    if k is _NO_KEY:
        return None
    items.append(k)
    axes = tuple(event_axis) if isinstance(event_axis, (list, tuple)) else (event_axis,)
    items.append((type(event_axis), tuple((type(a), a) for a in axes)))  # 1.0 is no axis: not 1
    torch = sys.modules.get("torch")
    if torch is not None and torch.compiler.is_compiling():
        return None
    try:
        key = tuple(items)
        hash(key)
    except TypeError:
        return None
    return key


class _Plan:
    """What a call with these static facts does: conversions, the formula, the reduction."""

    __slots__ = (
        "_reduction",
        "compute",
        "constants",
        "convert",
        "fn",
        "in_shape",
        "lib",
        "mask_shape",
        "out",
        "per_shape",
        "to_sum",
        "xp",
    )

    @classmethod
    def make(
        cls,
        p: Distribution,
        q: Distribution,
        event_axis: Any,
        mask: Any,
        reduction: str,
        normalizer: Any,
    ) -> _Plan:
        """Check every static fact (raising a ``KLDivError``) and work out the plan."""
        plan = cls()
        plan.fn = _registry.lookup(type(p), type(q))
        xp, lib, p2, q2, in_shape, out, compute, mask2 = _prepare(p, q, mask, normalizer)
        family = _family_axis(p2, q2, in_shape)
        if _is_diag_vs_mvn(p2, q2):
            _check_diag_event_axis(event_axis, in_shape)
        all_axes, to_sum = _reduce.event_layout(len(in_shape), in_shape, family, event_axis)
        per_shape = tuple(s for i, s in enumerate(in_shape) if i not in all_axes)
        plan.mask_shape = None
        if mask2 is not None:
            shaped = _reduce.mask_shaped(xp, mask2, in_shape, all_axes, per_shape)
            plan.mask_shape = tuple(shaped.shape)
        if reduction == "batchmean" and not per_shape:
            raise KLDivError(
                "reduction: expected per-distribution values with a batch axis for "
                "'batchmean', got a single distribution (shape ()); use 'sum'"
            )
        plan.xp, plan.lib, plan.compute, plan.out = xp, lib, compute, out
        plan._reduction = reduction
        plan.in_shape, plan.to_sum, plan.per_shape = in_shape, to_sum, per_shape
        # Which fields need converting, and the standard normal's constants, converted once.
        plan.convert = []
        plan.constants = []
        for d, d2 in ((p, p2), (q, q2)):
            conv, consts = [], {}
            for f, v in d._arrays().items():
                if getattr(d, "standard_", False):
                    consts[f] = getattr(d2, f)
                elif _xp.library_of(v) is None or v.dtype != compute:
                    conv.append(f)
            plan.convert.append(tuple(conv))
            plan.constants.append(consts)
        return plan

    def run(self, p: Distribution, q: Distribution, mask: Any, normalizer: Any, validate: bool):
        xp = self.xp
        sides = []
        for d, conv, consts in zip((p, q), self.convert, self.constants, strict=True):
            if conv or consts:
                fields = dict(consts)
                for f in conv:
                    fields[f] = _xp.as_float(xp, getattr(d, f), self.compute, None)
                d = d._replace(**fields)
            sides.append(d)
        p2, q2 = sides
        if mask is not None:
            if _xp.library_of(mask) in (None, "bool"):
                mask = _host_mask(xp, mask, p2, q2)
            if tuple(mask.shape) != self.mask_shape:
                mask = xp.reshape(mask, self.mask_shape)
        if validate:
            from ._validate import check_values

            check_values(p2, "p")
            check_values(q2, "q")
            if mask is not None:
                check_values(mask, "mask")
            if normalizer is not None and _xp.library_of(normalizer) is not None:
                _reduce.check_normalizer_value(normalizer)
        if self.lib in (None, "numpy"):
            # where() evaluates both branches; NumPy would warn about the one it then discards.
            with np.errstate(all="ignore"):
                values = self.fn(p2, q2)
                result = self._reduce(values, mask, normalizer)
        else:
            values = self.fn(p2, q2)
            result = self._reduce(values, mask, normalizer)
        if result.dtype != self.out:
            result = xp.astype(result, self.out)
        return result

    def _reduce(self, values: Any, mask: Any, normalizer: Any) -> Any:
        return _reduce.apply(
            self.xp,
            values,
            self.to_sum,
            self.per_shape,
            mask,
            self._reduction,
            _as_normalizer(self.xp, normalizer, self.compute),
            in_shape=self.in_shape,
        )


def _host_mask(xp: Any, mask: Any, p: Distribution, q: Distribution) -> Any:
    """A Python bool, number or list mask as an array next to the parameters."""
    device = _xp.device_of({**_named_arrays(p, q)})
    scalar = isinstance(mask, (bool, int, float))
    arr = (
        xp.asarray([mask] if scalar else mask, device=device)
        if device is not None
        else (xp.asarray([mask] if scalar else mask))
    )
    return xp.reshape(arr, ()) if scalar else arr


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
