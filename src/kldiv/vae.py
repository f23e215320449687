r"""Helpers for the KL term of a VAE: weight schedules, free bits, and diagnostics.

The VAE objective with a weighted KL term is

.. math::

    \mathcal L_t = \mathbb E_{q(z \mid x)}[-\log p(x \mid z)]
        + \beta_t \, \mathrm{KL}\big(q(z \mid x) \,\|\, p(z)\big)

and this module provides the three controls on that term that VAE code usually writes by hand:

- **schedules** of :math:`\beta_t`: plain functions of the step that return a Python float
  (:func:`constant`, :func:`linear_warmup`, :func:`cyclical`, :func:`sigmoid`);
- **free bits** (:func:`free_bits`): the KL of each latent dimension (or group of dimensions),
  averaged over the batch, is only penalized above a floor of :math:`\lambda` nats;
- **diagnostics**: the batch-averaged KL of each latent dimension (:func:`kl_per_dim`) and
  the active units of Burda et al. (:func:`activity`, :func:`active_units`).

Steps count from 0. KL values are in nats. :func:`free_bits`, :func:`kl_per_dim` and
:func:`activity` work on NumPy, PyTorch, JAX and array-API arrays (also under ``jax.jit``);
:func:`active_units` reads values and returns a Python int, so it belongs outside traced code.

References:
    - Bowman et al. (2016), *Generating Sentences from a Continuous Space* (KL annealing with a
      logistic schedule).
    - Sønderby et al. (2016), *Ladder Variational Autoencoders* (linear warm-up).
    - Higgins et al. (2017), *beta-VAE* (a constant weight).
    - Fu et al. (2019), *Cyclical Annealing Schedule: A Simple Approach to Mitigating KL
      Vanishing* (cyclical annealing).
    - Kingma et al. (2016), *Improved Variational Inference with Inverse Autoregressive Flow*
      (free bits).
    - Burda et al. (2016), *Importance Weighted Autoencoders* (active units).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import _xp
from ._kl import kl as _kl
from ._reduce import reduce
from .dists import Normal
from .errors import bad, describe

__all__ = [
    "active_units",
    "activity",
    "constant",
    "cyclical",
    "free_bits",
    "kl_per_dim",
    "linear_warmup",
    "sigmoid",
]

# ----------------------------------------------------------------------------------------------
# Argument checks (static: they read Python numbers and shapes, never array values)
# ----------------------------------------------------------------------------------------------


def _real(name: str, value: Any, expected: str = "a finite number") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad(name, expected, describe(value))
    x = float(value)
    if not math.isfinite(x):
        raise bad(name, expected, repr(value))
    return x


def _nonnegative(name: str, value: Any) -> float:
    x = _real(name, value, "a finite number >= 0")
    if x < 0:
        raise bad(name, "a finite number >= 0", repr(value))
    return x


def _positive(name: str, value: Any) -> float:
    x = _real(name, value, "a finite number > 0")
    if not x > 0:
        raise bad(name, "a finite number > 0", repr(value))
    return x


def _int(name: str, value: Any, minimum: int) -> int:
    expected = f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise bad(name, expected, describe(value))
    if value < minimum:
        raise bad(name, expected, repr(value))
    return int(value)


def _step(step: Any) -> float:
    return _nonnegative("step", step)


def _ramp(start: float, end: float, fraction: float) -> float:
    """``start`` moved towards ``end`` by ``fraction`` in [0, 1] (exactly ``end`` at 1)."""
    if fraction >= 1.0:
        return end
    return start + (end - start) * fraction


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


def constant(step: int, *, beta: float = 1.0) -> float:
    r"""A constant KL weight (the beta-VAE of Higgins et al. 2017): :math:`\beta_t = \beta`.

    Args:
        step: the training step (an int or float >= 0; checked, then ignored).
        beta: the weight, a finite number >= 0 (1 is the plain ELBO).

    Returns:
        ``beta`` as a Python float.

    >>> from kldiv import vae
    >>> vae.constant(1000, beta=4.0)
    4.0
    """
    _step(step)
    return _nonnegative("beta", beta)


def linear_warmup(step: int, *, warmup_steps: int, start: float = 0.0, end: float = 1.0) -> float:
    r"""A linear warm-up from ``start`` to ``end`` over ``warmup_steps``, then ``end``.

    .. math::

        \beta_t = \beta_{\text{start}}
            + (\beta_{\text{end}} - \beta_{\text{start}}) \min(1, t / W)

    with :math:`W` = ``warmup_steps`` (Bowman et al. 2016; Sønderby et al. 2016).

    Args:
        step: the training step :math:`t`, from 0.
        warmup_steps: :math:`W`, an int >= 0; 0 means ``end`` from the first step.
        start, end: the weights at step 0 and from step :math:`W` on (finite, >= 0).

    Returns:
        :math:`\beta_t` as a Python float.

    >>> from kldiv import vae
    >>> [vae.linear_warmup(t, warmup_steps=4) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    t = _step(step)
    w = _int("warmup_steps", warmup_steps, 0)
    lo, hi = _nonnegative("start", start), _nonnegative("end", end)
    return _ramp(lo, hi, 1.0 if w == 0 else t / w)


def cyclical(
    step: int,
    *,
    period: int,
    ratio: float = 0.5,
    cycles: int | None = None,
    start: float = 0.0,
    end: float = 1.0,
) -> float:
    r"""Cyclical annealing (Fu et al. 2019): a linear ramp, then a hold, repeated every period.

    .. math::

        \tau = \frac{t \bmod P}{P}, \qquad
        \beta_t = \beta_{\text{start}}
            + (\beta_{\text{end}} - \beta_{\text{start}}) \min\!\big(1, \tau / R\big)

    with :math:`P` = ``period`` and :math:`R` = ``ratio``: in each cycle :math:`\beta` rises
    linearly over the first :math:`RP` steps and holds at ``end`` for the rest; at every
    multiple of :math:`P` it drops back to ``start``. Fu et al. use :math:`M = 4` cycles over
    :math:`T` steps (:math:`P = T / M`) and :math:`R = 0.5`. With ``cycles`` given,
    :math:`\beta` stays at ``end`` once that many cycles are over (:math:`t \ge` ``cycles``
    :math:`\cdot P`). ``cyclical(t, period=W, ratio=1, cycles=1)`` is
    ``linear_warmup(t, warmup_steps=W)``.

    Args:
        step: the training step :math:`t`, from 0 (the paper's :math:`t - 1`).
        period: :math:`P`, steps per cycle, an int >= 1.
        ratio: :math:`R`, the fraction of a cycle spent rising, in (0, 1].
        cycles: the number of cycles before :math:`\beta` holds at ``end`` (an int >= 1), or
            ``None`` to cycle forever.
        start, end: the weights at the start of a cycle and on its plateau (finite, >= 0).

    Returns:
        :math:`\beta_t` as a Python float.

    >>> from kldiv import vae
    >>> [vae.cyclical(t, period=4, ratio=0.5) for t in range(9)]
    [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 0.0]
    """
    t = _step(step)
    p = _int("period", period, 1)
    r = _real("ratio", ratio, "a number in (0, 1]")
    if not 0.0 < r <= 1.0:
        raise bad("ratio", "a number in (0, 1]", repr(ratio))
    n = None if cycles is None else _int("cycles", cycles, 1)
    lo, hi = _nonnegative("start", start), _nonnegative("end", end)
    if n is not None and t >= n * p:
        return hi
    return _ramp(lo, hi, math.fmod(t, p) / (r * p))


def sigmoid(
    step: int, *, center: float, width: float, start: float = 0.0, end: float = 1.0
) -> float:
    r"""A logistic ramp from ``start`` to ``end`` (Bowman et al. 2016), halfway at ``center``.

    .. math::

        \beta_t = \beta_{\text{start}}
            + \frac{\beta_{\text{end}} - \beta_{\text{start}}}{1 + e^{-(t - c) / w}}

    with :math:`c` = ``center`` and :math:`w` = ``width``: :math:`\beta` goes from 12 % to 88 %
    of the way between :math:`c - 2w` and :math:`c + 2w`. It reaches ``start`` and ``end``
    only asymptotically (at step 0 it is ``start`` plus :math:`1/(1 + e^{c/w})` of the way).
    Bowman et al.'s :math:`1/(1 + e^{-k(t - t_0)})` is ``center=t0, width=1/k``.

    Args:
        step: the training step :math:`t`, from 0.
        center: :math:`c`, the step where :math:`\beta` is halfway (finite).
        width: :math:`w` > 0, in steps.
        start, end: the asymptotes (finite, >= 0).

    Returns:
        :math:`\beta_t` as a Python float.

    >>> from kldiv import vae
    >>> [round(vae.sigmoid(t, center=100, width=10), 4) for t in (0, 80, 100, 120, 200)]
    [0.0, 0.1192, 0.5, 0.8808, 1.0]
    """
    t = _step(step)
    c = _real("center", center)
    w = _positive("width", width)
    lo, hi = _nonnegative("start", start), _nonnegative("end", end)
    z = (t - c) / w
    # the logistic function without overflow for large |z|
    frac = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return lo + (hi - lo) * frac


# ----------------------------------------------------------------------------------------------
# Free bits
# ----------------------------------------------------------------------------------------------

_FREE_BITS_REDUCTIONS = ("sum", "none")


def _as_compute(name: str, x: Any) -> tuple[Any, Any, Any, Any]:
    """``x`` checked and converted: ``(xp, x in the compute dtype, output dtype, device)``."""
    xp, _ = _xp.common_namespace({name: x})
    compute, out = _xp.float_dtypes(xp, {name: x})
    device = _xp.device_of({name: x})
    return xp, _xp.as_float(xp, x, compute, device), out, device


def _latent_axis(axis: Any, shape: tuple[int, ...], name: str, min_ndim: int, what: str) -> int:
    if len(shape) < min_ndim:
        raise bad(name, what, f"shape {shape}")
    if isinstance(axis, (tuple, list)):
        raise bad("axis", "an int (the one latent axis)", describe(axis))
    (a,) = _xp.normalize_axes(axis, len(shape), "axis", shape)
    return a


def _constant(xp: Any, value: Any, dtype: Any, device: Any) -> Any:
    """A constant (a Python number or a NumPy array) as an array of ``xp`` on ``device``."""
    if device is None:
        return xp.asarray(value, dtype=dtype)
    return xp.asarray(value, dtype=dtype, device=device)


def _mean_over_others(xp: Any, x: Any, axis: int) -> Any:
    """The mean of ``x`` over every axis but ``axis``: a per-dimension statistic of a batch."""
    others = tuple(i for i in range(x.ndim) if i != axis)
    return xp.mean(x, axis=others) if others else x


def _group_matrix(groups: Any, size: int) -> np.ndarray | None:
    """The (size, G) 0/1 matrix that sums dimensions into groups; ``None`` for one per group."""
    if groups is None:
        return None
    if isinstance(groups, numbers.Integral) and not isinstance(groups, bool):
        k = int(groups)
        if k < 1 or size % k:
            raise bad(
                "groups",
                f"a number of equal contiguous groups that divides the latent size {size}",
                repr(groups),
            )
        labels = np.repeat(np.arange(k), size // k)
    else:
        try:
            labels = np.asarray(groups)
        except (TypeError, ValueError):
            labels = np.asarray([None])
        expected = f"None, an int, or a group label (int) for each of the {size} latent dimensions"
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise bad("groups", expected, describe(groups))
        if labels.shape[0] != size:
            raise bad("groups", expected, f"{labels.shape[0]} labels")
    uniq = np.unique(labels)
    return (labels[:, None] == uniq[None, :]).astype(np.float64)


def free_bits(
    kl: Any,
    *,
    threshold: float,
    groups: Any = None,
    axis: int = -1,
    reduction: str = "sum",
) -> Any:
    r"""The free-bits KL term of Kingma et al. (2016): no penalty below ``threshold`` nats.

    .. math::

        \mathcal K_\lambda = \sum_{j=1}^{G} \max\!\Big(\lambda,\;
            \frac1B \sum_{b=1}^{B} \sum_{d \in g_j} \mathrm{KL}_{b,d}\Big)

    for per-dimension KL values :math:`\mathrm{KL}_{b,d}` (data point :math:`b`, latent
    dimension :math:`d`), groups :math:`g_1, \dots, g_G` of latent dimensions (one per dimension
    by default) and :math:`\lambda` = ``threshold``. The floor applies to the *batch average*
    of each group's KL, not to each data point. With ``threshold=0`` it is the usual VAE term,
    ``kl(..., event_axis=-1, reduction="mean")``.

    Gradient: a hard ``max``, as in the paper (no soft version). A group whose batch-averaged KL
    is below :math:`\lambda` contributes the constant :math:`\lambda` and gets **zero
    gradient** (the encoder is free to use those nats for reconstruction); at or above
    :math:`\lambda` the gradient is that of the plain KL. A NaN KL stays NaN.

    Args:
        kl: per-dimension KL values of shape ``(batch..., D)``, at least 2 axes: e.g.
            ``kldiv.kl(Normal(mu, log_var=lv), Normal.standard())`` with ``reduction="none"``
            and no ``event_axis``. Every axis except ``axis`` is averaged over as the batch.
        threshold: :math:`\lambda` in nats per group (per dimension by default), >= 0.
        groups: ``None`` (each dimension its own group), an int ``K`` (``K`` contiguous groups
            of equal size), or a sequence of ``D`` int labels (dimensions with the same label
            form a group; groups ordered by label).
        axis: the latent axis of ``kl`` (default ``-1``).
        reduction: ``"sum"`` (default: the scalar :math:`\mathcal K_\lambda`) or ``"none"``
            (the ``G`` floored values, for logging).

    Returns:
        An array of ``kl``'s library and dtype (half precision is computed in float32).

    >>> import numpy as np
    >>> from kldiv import vae
    >>> kl = np.array([[0.0, 0.4, 2.0], [0.2, 0.6, 4.0]])  # (B=2, D=3); means 0.1, 0.5, 3.0
    >>> float(vae.free_bits(kl, threshold=0.25))  # 0.25 + 0.5 + 3.0
    3.75
    >>> vae.free_bits(kl, threshold=1.0, groups=[0, 0, 1], reduction="none")  # 0.6 -> 1.0
    array([1., 3.])
    """
    lam = _nonnegative("threshold", threshold)
    if not isinstance(reduction, str) or reduction not in _FREE_BITS_REDUCTIONS:
        raise bad(
            "reduction",
            f"one of {', '.join(repr(r) for r in _FREE_BITS_REDUCTIONS)}",
            describe(reduction),
        )
    xp, values, out, device = _as_compute("kl", kl)
    shape = tuple(values.shape)
    a = _latent_axis(
        axis,
        shape,
        "kl",
        2,
        "per-dimension KL values of shape (batch..., D) with at least 2 axes (kldiv.kl(..., "
        "reduction='none') without event_axis)",
    )
    matrix = _group_matrix(groups, shape[a])
    per = _mean_over_others(xp, values, a)  # (D,)
    if matrix is not None:
        per = per @ _constant(xp, matrix, per.dtype, device)  # (G,)
    floor = _constant(xp, lam, per.dtype, device)
    floored = xp.where(per < floor, floor, per)  # zero gradient below the floor; NaN stays
    result = reduce(
        xp,
        floored,
        in_shape=tuple(floored.shape),
        family_axis=None,
        event_axis=None,
        mask=None,
        reduction=reduction,
        normalizer=None,
    )
    return result if result.dtype == out else xp.astype(result, out)


# ----------------------------------------------------------------------------------------------
# Diagnostics
# ----------------------------------------------------------------------------------------------


def kl_per_dim(posterior: Normal, prior: Normal | None = None, *, axis: int = -1) -> Any:
    r"""The KL of each latent dimension, averaged over the batch (where a VAE spends its nats).

    .. math::

        \overline{\mathrm{KL}}_d = \frac1B \sum_{b=1}^{B}
            \mathrm{KL}\big(q(z_d \mid x_b) \,\|\, p(z_d)\big)

    for a diagonal Gaussian posterior against the prior (N(0, 1) per dimension by default).
    Their sum is the usual VAE term ``kl(posterior, prior, event_axis=axis, reduction="mean")``;
    dimensions near 0 are collapsed onto the prior.

    Args:
        posterior: a :class:`kldiv.Normal` of shape ``(batch..., D)`` (any parametrization).
        prior: a :class:`kldiv.Normal` that broadcasts against it, or ``None`` for
            ``Normal.standard()``.
        axis: the latent axis (default ``-1``); every other axis is averaged over.

    Returns:
        An array of shape ``(D,)`` in the posterior's library and dtype.

    >>> import numpy as np
    >>> from kldiv import Normal, vae
    >>> mu = np.array([[1.0, 0.0], [-1.0, 0.0]])
    >>> vae.kl_per_dim(Normal(mu, log_var=np.zeros((2, 2))))  # mu**2 / 2 averaged
    array([0.5, 0. ])
    """
    if not isinstance(posterior, Normal):
        raise bad("posterior", "a kldiv.Normal", describe(posterior))
    if prior is None:
        prior = Normal.standard()
    elif not isinstance(prior, Normal):
        raise bad("prior", "a kldiv.Normal or None (for N(0, 1))", describe(prior))
    values = _kl(posterior, prior, reduction="none")
    shape = tuple(values.shape)
    a = _latent_axis(axis, shape, "posterior", 1, "a Normal with a latent axis (at least 1 axis)")
    return _mean_over_others(_xp.xp_of(values), values, a)


def activity(loc: Any, *, axis: int = -1) -> Any:
    r"""The activity of each latent dimension (Burda et al. 2016): the variance of its mean.

    .. math::

        A_d = \mathrm{Var}_{x}\big(\mathbb E_{q(z \mid x)}[z_d]\big)
            = \frac1N \sum_{n=1}^{N} (\mu_{n,d} - \bar\mu_d)^2

    over the data points :math:`x_1, \dots, x_N` (a population variance, ``ddof=0``). A
    dimension whose posterior mean does not move with the data carries no information.

    Args:
        loc: the posterior means :math:`\mu`, shape ``(N..., D)``, at least 2 axes (all but
            ``axis`` index data points).
        axis: the latent axis (default ``-1``).

    Returns:
        An array of shape ``(D,)`` in ``loc``'s library and dtype.

    >>> import numpy as np
    >>> from kldiv import vae
    >>> vae.activity(np.array([[1.0, 5.0], [-1.0, 5.0]]))
    array([1., 0.])
    """
    xp, mu, out, _ = _as_compute("loc", loc)
    shape = tuple(mu.shape)
    a = _latent_axis(axis, shape, "loc", 2, "posterior means of shape (N, D) with at least 2 axes")
    keep = tuple(s if i == a else 1 for i, s in enumerate(shape))
    centered = mu - xp.reshape(_mean_over_others(xp, mu, a), keep)
    var = _mean_over_others(xp, centered * centered, a)
    return var if var.dtype == out else xp.astype(var, out)


def active_units(loc: Any, *, threshold: float = 0.01, axis: int = -1) -> int:
    r"""The number of active latent units (Burda et al. 2016): :math:`\#\{d : A_d > \delta\}`.

    :math:`A_d` is :func:`activity` (the variance over data points of the posterior mean of
    dimension :math:`d`) and :math:`\delta` = ``threshold`` (0.01 in the paper). Burda et al.
    compute it on held-out data. This reads values (it returns a Python int): call it outside
    ``jax.jit``/``torch.compile``, or use ``activity(loc) > threshold`` inside.

    Args:
        loc: the posterior means, shape ``(N..., D)``.
        threshold: :math:`\delta`, a finite number >= 0.
        axis: the latent axis (default ``-1``).

    Returns:
        The count, a Python int.

    >>> import numpy as np
    >>> from kldiv import vae
    >>> mu = np.array([[1.0, 5.0, 0.0], [-1.0, 5.0, 0.1]])  # activities 1, 0, 0.0025
    >>> vae.active_units(mu)  # only the first is above the default threshold 0.01
    1
    >>> vae.active_units(mu, threshold=0.001)
    2
    """
    delta = _nonnegative("threshold", threshold)
    var = activity(loc, axis=axis)
    xp = _xp.xp_of(var)
    return int(xp.sum(xp.astype(var > delta, xp.int32)))
