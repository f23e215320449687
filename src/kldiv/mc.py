r"""Monte Carlo estimates of KL(p || q) where no closed form exists.

.. math::

    \mathrm{KL}(p \,\|\, q) = \mathbb E_{x \sim p}\big[\log p(x) - \log q(x)\big]

is estimated from samples :math:`x_1, \dots, x_n \sim p` as the mean of a per-sample value
:math:`g(x_i)` whose expectation is the KL (or close to it). With :math:`\ell(x) = \log q(x) -
\log p(x)` (the log of :math:`r = q/p`), the estimators are:

=============  ====================================  ==========================================
name           per-sample value :math:`g(x)`          expectation, and when to use it
=============  ====================================  ==========================================
``"k1"``       :math:`-\ell`                          KL exactly; variance
                                                      :math:`\mathrm{Var}_p[\ell]`, 0 when p = q
``"k2"``       :math:`\tfrac12 \ell^2`                :math:`\tfrac12\mathbb E_p[\ell^2]`: *biased*
                                                      (by :math:`O(\ell^3)`), low variance near
                                                      p = q; never negative
``"k3"``       :math:`e^{\ell} - 1 - \ell`            KL exactly when q > 0 only where p > 0;
                                                      never negative; variance infinite when
                                                      :math:`\mathbb E_p[r^2] = \infty`
``"entropy"``  :math:`-H(p) - \log q(x)`              KL exactly (the VITS form: analytic entropy,
                                                      sampled cross-entropy); variance
                                                      :math:`\mathrm{Var}_p[\log q]`, 0 as p
                                                      concentrates
=============  ====================================  ==========================================

Which one. For :math:`p = N(0, 1)`, :math:`q = N(\mu, 1)` (KL :math:`\mu^2/2`),
:math:`\mathrm{Var}(k_1) = \mu^2` and :math:`\mathrm{Var}(k_3) = e^{\mu^2} - 1 - \mu^2`: ``k3``
wins only below :math:`\mu^2 \approx 1.26` (KL about 0.63 nats). For two Normals of the same
mean, :math:`\mathbb E_p[r^2]` is infinite as soon as :math:`\sigma_q^2 \ge 2\sigma_p^2`: a broad
prior against a sharp posterior, the usual VAE and VITS regime, where ``k3`` must not be used.
There ``"entropy"`` is best: its variance :math:`\mathrm{Var}_p[\log q(x)]` vanishes as the
posterior sharpens (for :math:`p = N(0, s^2)`, :math:`q = N(0, 1)` it is :math:`s^4/2`, against
:math:`(1 - s^2)^2/2` for ``k1``). Near :math:`p = q` (RLHF penalties, distillation), ``k1`` and
``k3`` have vanishing variance and ``"entropy"`` does not.

The default (``estimator="auto"``) is therefore chosen per pair:

- ``p`` a ``Normal`` or ``MultivariateNormal``: ``"entropy"`` (reparameterized, analytic
  entropy, sampled :math:`\log q`; the VITS and VAE regime);
- ``p`` a ``Categorical``, ``Bernoulli`` or any object with ``sample`` and ``log_prob``:
  ``"k1"`` (unbiased, finite variance wherever the KL's integrand has one).

Gradients. ``Normal`` and ``MultivariateNormal`` samples are reparameterized
(:math:`x = \mu + L\varepsilon`), so gradients of ``value`` with respect to their parameters are
unbiased estimates of the exact KL's gradient. Discrete samples are not differentiable: the
gradient of ``value`` then reaches ``p``'s parameters only through :math:`\log p` with the
samples held fixed (see :mod:`kldiv.penalty` for what that gives).

Standard errors. ``stderr`` is the sample standard deviation of :math:`g` (``ddof=1``) over
:math:`\sqrt n`, per distribution; it is ``inf`` for one sample (unknown, not 0). Its interval
``value ± 1.96 stderr`` covers the truth about 95 % of the time when the variance is finite
(tested); it says nothing about ``k2``'s bias.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _kl, _xp
from ._reduce import check_reduction, event_layout, reduce
from .closed.bernoulli import _side_from_logits as _bernoulli_side_from_logits
from .closed.bernoulli import _side_from_probs as _bernoulli_side_from_probs
from .closed.categorical import side_of
from .closed.mvn import factor
from .closed.normal import standardized_gap, std_of
from .dists import Bernoulli, Categorical, Distribution, MultivariateNormal, Normal
from .errors import KLDivError, bad, describe

# k1, k2, k3 on per-token log-probabilities live in kldiv.penalty (one place for the formulas);
# kldiv.mc.k1/k2/k3 and mc.BiasWarning are kept as re-exports.
from .penalty import BiasWarning as BiasWarning
from .penalty import _check_weights, _from_log_ratio, _reduce_weighted, _weights
from .penalty import k1 as k1
from .penalty import k2 as k2
from .penalty import k3 as k3

__all__ = ["ESTIMATORS", "BiasWarning", "Estimate", "k1", "k2", "k3", "kl", "vits_kl"]

ESTIMATORS = ("auto", "k1", "k2", "k3", "entropy")

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_MAX_SEED = 2**63  # what torch.manual_seed and jax.random.key accept


# ----------------------------------------------------------------------------------------------
# Estimate
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    r"""A Monte Carlo estimate: ``value``, its ``stderr``, and the ``num_samples`` behind it.

    ``value`` and ``stderr`` are arrays of the inputs' library, one entry per distribution (or
    one number after a reduction). Estimates of different distributions come from independent
    samples, so a reduction combines them as

    .. math::

        \hat v = \frac{1}{N}\sum_i m_i v_i, \qquad
        \mathrm{se}(\hat v) = \frac{1}{N}\sqrt{\textstyle\sum_i m_i\,\mathrm{se}_i^2}

    with :math:`N` the divisor of the reduction (see :meth:`reduce`). In JAX, an ``Estimate`` is
    a pytree (``num_samples`` is static), so it can be returned from ``jax.jit``.

    >>> import numpy as np
    >>> e = Estimate(np.array([1.0, 3.0]), np.array([0.3, 0.4]), 100)
    >>> r = e.reduce(reduction="mean")
    >>> float(r.value), float(r.stderr)
    (2.0, 0.25)
    """

    value: Any
    stderr: Any
    num_samples: int
    #: Set where the samples say ``stderr`` can't be trusted (:func:`heavy_tail_warning`).
    warning: str | None = None

    def __post_init__(self) -> None:
        _register_pytree_if_jax_loaded()

    def reduce(
        self,
        *,
        mask: Any = None,
        reduction: str = "mean",
        normalizer: Any = None,
        validate: bool = False,
    ) -> Estimate:
        """The estimate of a reduction of the per-distribution values (core semantics).

        ``mask`` (non-negative weights; bool is the 0/1 case), ``reduction`` and
        ``normalizer`` are those of :func:`kldiv.kl` (the mask broadcasts against the
        per-distribution shape); the standard error assumes independent estimates, as
        :func:`kl` and :func:`vits_kl` produce. ``validate=True`` rejects negative or
        non-finite weights.
        """
        check_reduction(reduction, normalizer)
        xp = _xp.xp_of(self.value)
        mask = _prepare_mask(xp, mask, _xp.device_of({"value": self.value}), validate)
        shape = tuple(self.value.shape)
        value, stderr = _reduce_pair(
            xp, self.value, self.stderr, shape, (), mask, reduction, normalizer
        )
        return Estimate(value, stderr, self.num_samples, self.warning)

    def interval(self, level: float = 0.95) -> tuple[Any, Any]:
        """The normal-approximation interval ``value ± z * stderr`` (``z = 1.96`` for 0.95)."""
        if isinstance(level, bool) or not isinstance(level, float) or not 0.0 < level < 1.0:
            raise bad("level", "a float in (0, 1)", describe(level))
        from scipy.special import ndtri

        z = float(ndtri(0.5 + 0.5 * level))
        return self.value - z * self.stderr, self.value + z * self.stderr


_PYTREE_REGISTERED = False


def _register_pytree_if_jax_loaded() -> None:
    global _PYTREE_REGISTERED
    if _PYTREE_REGISTERED or "jax" not in sys.modules:
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.compiler.is_compiling():
        return
    import jax

    _PYTREE_REGISTERED = True
    jax.tree_util.register_pytree_node(
        Estimate,
        lambda e: ((e.value, e.stderr), (e.num_samples, e.warning)),
        lambda aux, children: Estimate(children[0], children[1], *aux),
    )


def _reduce_pair(
    xp: Any,
    value: Any,
    stderr: Any,
    in_shape: tuple[int, ...],
    event_axes: tuple[int, ...],
    mask: Any,
    reduction: str,
    normalizer: Any,
) -> tuple[Any, Any]:
    """Reduce per-distribution ``value`` and ``stderr`` (independent estimates).

    ``value`` has the per-distribution shape: ``in_shape`` less ``event_axes``. The reduction is
    a linear map ``L(v) = sum(m v) / N`` (``m`` the mask's weights); the variance of ``L(v)`` is
    ``sum(m^2 se^2) / N^2``, computed as ``L(m se^2) * L(1) / sum(m)`` so that every reduction
    goes through the core.
    """

    def core(v: Any, red: str, norm: Any) -> Any:
        return _per_distribution_reduce(xp, v, in_shape, event_axes, mask, red, norm)

    out = core(value, reduction, normalizer)
    var = stderr * stderr
    if mask is not None and mask.dtype != xp.bool:  # weights: the variance scales by m^2
        kept = tuple(1 if i in event_axes else s for i, s in enumerate(in_shape))
        w = _weights(xp, mask, kept, event_axes, tuple(value.shape), var.dtype)
        var = xp.where(w != 0, w * var, xp.zeros_like(var))
    if reduction == "none" and normalizer is None:
        return out, xp.sqrt(core(var, "none", None))
    ones = xp.ones_like(value)
    count = core(ones, "sum", None)
    safe = xp.where(count > 0, count, xp.ones_like(count))
    total_var = core(var, reduction, normalizer) * core(ones, reduction, normalizer) / safe
    return out, xp.sqrt(xp.where(count > 0, total_var, xp.zeros_like(total_var)))


def _per_distribution_reduce(
    xp: Any,
    values: Any,
    in_shape: tuple[int, ...],
    event_axes: tuple[int, ...],
    mask: Any,
    reduction: str,
    normalizer: Any,
) -> Any:
    """The core reduction of per-distribution ``values`` whose event axes were summed already.

    The event axes are put back with size 1 (a reshape), so that ``mask`` may have the
    per-distribution shape or the inputs' rank with size 1 on the event axes, as in ``kl``.
    """
    kept = tuple(1 if i in event_axes else s for i, s in enumerate(in_shape))
    if event_axes:
        values = xp.reshape(values, kept)
    return _reduce_weighted(
        xp,
        values,
        in_shape=kept,
        family_axis=None,
        event_axis=event_axes or None,
        mask=mask,
        reduction=reduction,
        normalizer=normalizer,
    )


def _check_validate(validate: Any) -> None:
    if not isinstance(validate, bool):
        raise bad("validate", "True or False", describe(validate))


def _prepare_mask(xp: Any, mask: Any, device: Any, validate: Any) -> Any:
    """``mask`` as an array of ``xp`` (Python lists too); ``validate`` checks its weights."""
    _check_validate(validate)
    if mask is None:
        return None
    if _xp.library_of(mask) is None:
        mask = xp.asarray(mask) if device is None else xp.asarray(mask, device=device)
    if validate:
        _check_weights("mask", mask)
    return mask


# ----------------------------------------------------------------------------------------------
# Random numbers on every backend
# ----------------------------------------------------------------------------------------------
class _Draws:
    """Standard normal and uniform draws in the inputs' library, dtype and device."""

    def __init__(
        self, xp: Any, lib: str | None, dtype: Any, device: Any, seed: Any, generator: Any, key: Any
    ) -> None:
        self.xp, self.lib, self.dtype, self.device = xp, lib, dtype, device
        given = [
            n for n, v in (("seed", seed), ("generator", generator), ("key", key)) if v is not None
        ]
        if len(given) > 1:
            raise KLDivError(
                f"{given[1]}: expected at most one of seed, generator and key, "
                f"got {' and '.join(given)}"
            )
        if seed is not None:
            if isinstance(seed, bool):
                raise bad("seed", "a non-negative int", describe(seed))
            try:
                seed = operator.index(seed)
            except TypeError:
                raise bad("seed", "a non-negative int", describe(seed)) from None
            if seed < 0:
                raise bad("seed", "a non-negative int", str(seed))
            if lib in ("jax", "torch") and seed >= _MAX_SEED:
                raise bad("seed", f"a non-negative int below 2**63 for {lib} arrays", str(seed))
        self.key = None
        self.torch_gen = None
        self.rng = None
        if lib == "jax":
            import jax

            if generator is not None:
                raise bad("generator", "none for JAX arrays (pass key=)", describe(generator))
            if key is None and seed is None:
                raise KLDivError(
                    "key: expected a jax.random key (or seed=int) for JAX arrays, which have "
                    "no global random state; got neither"
                )
            self.key = key if key is not None else jax.random.key(seed)
        elif lib == "torch":
            import torch

            if key is not None:
                raise bad("key", "none for PyTorch tensors (pass generator=)", describe(key))
            if generator is not None and not isinstance(generator, torch.Generator):
                raise bad("generator", "a torch.Generator for PyTorch tensors", describe(generator))
            if seed is not None:
                generator = torch.Generator(device=device or "cpu").manual_seed(seed)
            self.torch_gen = generator
        else:
            if key is not None:
                raise bad("key", f"none for {lib or 'numpy'} arrays (pass seed=)", describe(key))
            if generator is not None and not isinstance(generator, np.random.Generator):
                raise bad(
                    "generator",
                    f"a numpy.random.Generator for {lib or 'numpy'} arrays",
                    describe(generator),
                )
            self.rng = generator if generator is not None else np.random.default_rng(seed)

    def _next_key(self) -> Any:
        import jax

        self.key, sub = jax.random.split(self.key)
        return sub

    def _from_numpy(self, arr: np.ndarray) -> Any:
        if self.lib in (None, "numpy"):
            return arr.astype(self.dtype, copy=False)
        if self.device is None:
            return self.xp.asarray(arr, dtype=self.dtype)
        return self.xp.asarray(arr, dtype=self.dtype, device=self.device)

    def normal(self, shape: tuple[int, ...]) -> Any:
        if self.lib == "jax":
            import jax

            return jax.random.normal(self._next_key(), shape, dtype=self.dtype)
        if self.lib == "torch":
            import torch

            return torch.randn(
                shape, generator=self.torch_gen, dtype=self.dtype, device=self.device
            )
        return self._from_numpy(self.rng.standard_normal(shape))

    def uniform(self, shape: tuple[int, ...]) -> Any:
        """Uniform draws in the open interval (0, 1)."""
        if self.lib == "jax":
            import jax

            u = jax.random.uniform(self._next_key(), shape, dtype=self.dtype)
        elif self.lib == "torch":
            import torch

            u = torch.rand(shape, generator=self.torch_gen, dtype=self.dtype, device=self.device)
        else:
            u = self._from_numpy(self.rng.random(shape))
        info = self.xp.finfo(self.dtype)
        u = self.xp.where(u > 0, u, float(info.smallest_normal))
        return self.xp.where(u < 1.0, u, 1.0 - float(info.eps))


# ----------------------------------------------------------------------------------------------
# The families: samples, log-densities and entropies
# ----------------------------------------------------------------------------------------------
def _log_std(xp: Any, d: Normal) -> Any:
    s = d.scale
    if d.param == "std":
        return _xp.safe_log(xp, s)
    if d.param == "var":
        return 0.5 * _xp.safe_log(xp, s)
    if d.param == "log_std":
        return s
    return 0.5 * s


def _normal_std(xp: Any, d: Normal) -> Any:
    return std_of(xp, d.param, d.scale)


def _normal_log_prob(xp: Any, d: Normal, x: Any) -> Any:
    z = standardized_gap(xp, x, d)
    return -0.5 * (z * z) - _log_std(xp, d) - _HALF_LOG_2PI


def _mvn_log_prob(xp: Any, d: MultivariateNormal, x: Any) -> Any:
    scale = factor(xp, d.param, d.matrix)
    dx = (x - d.loc)[..., None]
    if scale.inverse:
        z = _xp.tril(xp, scale.tri) @ dx
    else:
        z = _xp.solve_triangular(xp, scale.tri, dx, lower=True)
    log_diag = xp.sum(xp.log(xp.abs(xp.linalg.diagonal(scale.tri))), axis=-1)
    half_log_det = -log_diag if scale.inverse else log_diag
    k = x.shape[-1]
    return -0.5 * xp.sum(z * z, axis=(-2, -1)) - half_log_det - k * _HALF_LOG_2PI


def _categorical_log_hat(xp: Any, d: Categorical, axis: int) -> Any:
    return side_of(xp, d, axis).log_hat


def _bernoulli_log_hat(xp: Any, d: Bernoulli) -> Any:
    """``[log P(X=0), log P(X=1)]`` along a new last axis."""
    if d.param == "probs":
        return _bernoulli_side_from_probs(xp, d.value).log_hat
    return _bernoulli_side_from_logits(xp, d.value).log_hat


def _zero_log_zero(xp: Any, log_hat: Any) -> Any:
    """``exp(l) * l`` with the value and gradient 0 where ``l = -inf``."""
    pos = log_hat > -math.inf
    safe = xp.where(pos, log_hat, xp.zeros_like(log_hat))
    return xp.where(pos, xp.exp(safe) * safe, xp.zeros_like(safe))


def _pick(xp: Any, log_hat: Any, onehot: Any, axis: int) -> Any:
    """``log_hat`` at the one-hot positions, summed over ``axis`` (no -inf * 0)."""
    zero = xp.zeros_like(log_hat)
    return xp.sum(xp.where(onehot, log_hat, zero), axis=axis)


@dataclass
class _Drawn:
    """Samples of p: what ``q`` receives, and p's per-sample log-density and entropy.

    ``log_p`` has shape ``(n, *value_shape)`` (the family axis summed); ``entropy`` has
    ``value_shape``; ``x`` is what a callable ``q`` is given.
    """

    x: Any
    log_p: Any
    entropy: Any
    onehot: Any = None  # for a Categorical/Bernoulli q evaluated at p's samples


def _draw_spec(
    xp: Any, p: Distribution, in_shape: tuple[int, ...], family: int | None, n: int, draws: _Draws
) -> _Drawn:
    ndim = len(in_shape)
    value_shape = tuple(s for i, s in enumerate(in_shape) if i != family)
    if isinstance(p, Normal):
        eps = draws.normal((n, *in_shape))
        log_std = _log_std(xp, p)
        x = p.loc + _normal_std(xp, p) * eps  # reparameterized
        log_p = -0.5 * (eps * eps) - log_std - _HALF_LOG_2PI  # z = eps exactly
        entropy = xp.broadcast_to(0.5 + _HALF_LOG_2PI + log_std, in_shape)
        log_p = xp.broadcast_to(log_p, (n, *in_shape))
        if family is not None:  # a diagonal Normal against an MVN: its last axis is the event
            log_p = xp.sum(log_p, axis=-1)
            entropy = xp.sum(entropy, axis=-1)
        return _Drawn(x, log_p, entropy)
    if isinstance(p, MultivariateNormal):
        k = in_shape[-1]
        scale = factor(xp, p.param, p.matrix)
        eps = draws.normal((n, *in_shape))[..., None]
        if scale.inverse:
            step = _xp.solve_triangular(xp, scale.tri, eps, lower=True)
        else:
            step = _xp.tril(xp, scale.tri) @ eps
        x = p.loc + step[..., 0]
        log_diag = xp.sum(xp.log(xp.abs(xp.linalg.diagonal(scale.tri))), axis=-1)
        half_log_det = -log_diag if scale.inverse else log_diag
        log_p = -0.5 * xp.sum(eps * eps, axis=(-2, -1)) - half_log_det - k * _HALF_LOG_2PI
        entropy = xp.broadcast_to(k * (0.5 + _HALF_LOG_2PI) + half_log_det, value_shape)
        return _Drawn(xp.broadcast_to(x, (n, *in_shape)), log_p, entropy)
    if isinstance(p, Categorical):
        axis = family - ndim  # negative: valid with and without the sample axis
        log_hat = xp.broadcast_to(_categorical_log_hat(xp, p, axis), in_shape)
        u = draws.uniform((n, *in_shape))
        gumbel = -xp.log(-xp.log(u))
        idx = xp.argmax(_xp.stop_gradient(xp, log_hat) + gumbel, axis=axis)
        classes = xp.reshape(
            xp.arange(in_shape[family], device=_device_or_none(log_hat)),
            (in_shape[family],) + (1,) * (-axis - 1),
        )
        onehot = xp.expand_dims(idx, axis=axis) == classes
        log_p = _pick(xp, log_hat, onehot, axis)
        entropy = -xp.sum(_zero_log_zero(xp, log_hat), axis=axis)
        return _Drawn(idx, log_p, entropy, onehot)
    if isinstance(p, Bernoulli):
        log_hat = xp.broadcast_to(_bernoulli_log_hat(xp, p), (*in_shape, 2))
        u = draws.uniform((n, *in_shape))
        one = xp.log(u) < _xp.stop_gradient(xp, log_hat[..., 1])
        x = xp.astype(one, log_hat.dtype)
        onehot = xp.stack([~one, one], axis=-1)
        log_p = _pick(xp, log_hat, onehot, -1)
        entropy = -xp.sum(_zero_log_zero(xp, log_hat), axis=-1)
        return _Drawn(x, log_p, entropy, onehot)
    raise bad(  # pragma: no cover - checked before
        "p", "a Normal, MultivariateNormal, Categorical or Bernoulli spec", describe(p)
    )


def _device_or_none(x: Any) -> Any:
    return _xp.device_of({"x": x})


def _spec_log_q(
    xp: Any, p: Distribution, q: Distribution, drawn: _Drawn, family: int | None, ndim: int
) -> Any:
    """``log q`` at p's samples, with shape ``(n, *value_shape)``."""
    x = drawn.x
    if isinstance(q, Normal) and isinstance(p, (Normal, MultivariateNormal)):
        lq = _normal_log_prob(xp, q, x)
        lq = xp.broadcast_to(lq, tuple(x.shape))
        return xp.sum(lq, axis=-1) if family is not None else lq
    if isinstance(q, MultivariateNormal) and isinstance(p, (Normal, MultivariateNormal)):
        return _mvn_log_prob(xp, q, x)
    if isinstance(q, Categorical) and isinstance(p, Categorical):
        axis = family - ndim
        return _pick(xp, _categorical_log_hat(xp, q, axis), drawn.onehot, axis)
    if isinstance(q, Bernoulli) and isinstance(p, Bernoulli):
        return _pick(xp, _bernoulli_log_hat(xp, q), drawn.onehot, -1)
    raise KLDivError(
        f"q: expected a spec on the same space as p ({type(p).__name__}) or a callable "
        f"log-density, got {type(q).__name__}"
    )


# ----------------------------------------------------------------------------------------------
# kl
# ----------------------------------------------------------------------------------------------
def _check_num_samples(num_samples: Any) -> int:
    if isinstance(num_samples, bool):
        raise bad("num_samples", "a positive int", describe(num_samples))
    try:
        n = operator.index(num_samples)
    except TypeError:
        raise bad("num_samples", "a positive int", describe(num_samples)) from None
    if n < 1:
        raise bad("num_samples", "a positive int", str(n))
    return n


def _default_estimator(p: Any) -> str:
    return "entropy" if isinstance(p, (Normal, MultivariateNormal)) else "k1"


def _per_sample(xp: Any, estimator: str, log_p: Any, log_q: Any, entropy: Any) -> Any:
    if estimator == "entropy":
        return -entropy - log_q
    return _from_log_ratio(xp, estimator, log_q - log_p)


#: Hill's estimate of the tail index below which :func:`heavy_tail_warning` speaks up: below 2
#: the variance is infinite (or nearly so), and the normal interval ``value +- 2 stderr`` covers
#: the truth far less often than it says (79 % instead of 95 % for StudentT(3) against N(0, 1)).
HEAVY_TAIL_INDEX = 2.0


def heavy_tail_warning(samples: Any) -> str | None:
    """A warning if the per-sample terms of a Monte Carlo mean have heavy tails, else None.

    ``samples`` has the samples on axis 0 (more axes: one check per distribution, the worst
    reported). The check is Hill's estimator of the tail index of ``|g - median(g)|`` over the
    largest ``max(10, sqrt(n))`` values: a tail index below :data:`HEAVY_TAIL_INDEX` means a
    variance that is infinite or too large for the standard error (and any interval built on
    it) to mean much. It reads values, so it is skipped (None) under ``jit``/``compile``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> heavy_tail_warning(rng.normal(size=4000)) is None
    True
    >>> heavy_tail_warning(rng.standard_t(1.2, size=4000)) is not None
    True
    """
    if not (_xp.is_concrete(samples) or _xp.library_of(samples) == "jax"):
        return None
    try:
        g = np.asarray(samples.detach().cpu() if hasattr(samples, "detach") else samples)
    except Exception:  # a tracer: nothing to read
        return None
    g = g.astype(np.float64).reshape(g.shape[0], -1)
    n = g.shape[0]
    k = max(10, math.isqrt(n))
    if n < 4 * k or not np.all(np.isfinite(g)):
        return None
    dev = np.sort(np.abs(g - np.median(g, axis=0)), axis=0)[::-1]
    top, base = dev[:k], dev[k]
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = k / np.sum(np.log(top / base), axis=0)
    alpha = alpha[np.isfinite(alpha)]
    if not alpha.size or float(alpha.min()) >= HEAVY_TAIL_INDEX:
        return None
    return (
        f"heavy tails: the log-ratio's tail index is about {float(alpha.min()):.2g} (below "
        f"{HEAVY_TAIL_INDEX:g}, the variance is infinite or nearly so), so the standard error, "
        "and an interval built on it, understate the uncertainty (more samples help only "
        "slowly)"
    )


def _mean_and_stderr(xp: Any, g: Any, n: int) -> tuple[Any, Any]:
    mean = xp.mean(g, axis=0)
    if n == 1:
        return mean, xp.full_like(mean, math.inf)
    # an infinite KL (q = 0 where p draws): deviations from 0, so the standard error is
    # infinite too, not inf - inf = NaN
    dev = g - xp.where(xp.isinf(mean), xp.zeros_like(mean), mean)
    var = xp.sum(dev * dev, axis=0) / (n - 1)
    return mean, xp.sqrt(var / n)


def _call_q(
    q: Callable[[Any], Any], x: Any, expected: tuple[int, ...], full: tuple[int, ...]
) -> tuple[Any, bool]:
    """Call a log-density and check what came back: ``expected`` (per distribution) or
    ``full`` (per element, to be summed over the event axes); returns ``(log_q, to_sum)``."""
    lq = q(x)
    if _xp.library_of(lq) != _xp.library_of(x):
        raise bad(
            "q(x)",
            f"an array of the samples' library ({_xp.library_of(x) or 'numpy'})",
            describe(lq),
        )
    shape = tuple(lq.shape)
    if shape == full:
        return lq, True
    if shape == expected:
        return lq, False
    raise bad(
        "q(x)",
        f"log q per sample and distribution, shape {expected}"
        + (f", or elementwise, shape {full}" if full != expected else "")
        + f", for samples x of shape {tuple(x.shape)}",
        f"shape {shape}",
    )


def kl(
    p: Any,
    q: Any,
    *,
    num_samples: int,
    estimator: str = "auto",
    seed: int | None = None,
    generator: Any = None,
    key: Any = None,
    event_axis: int | tuple[int, ...] | None = None,
    mask: Any = None,
    reduction: str = "none",
    normalizer: Any = None,
    validate: bool = False,
) -> Estimate:
    r"""A Monte Carlo estimate of KL(p || q) from ``num_samples`` draws of ``p`` per distribution.

    .. math::

        \mathrm{KL}(p \,\|\, q) \approx \frac1n \sum_{i=1}^n g(x_i), \qquad x_i \sim p

    with :math:`g` the chosen estimator (module docstring: ``k1``, ``k2``, ``k3``, ``entropy``).

    Args:
        p: the distribution the expectation is under (in a VAE or VITS, the posterior): a
            ``Normal`` or ``MultivariateNormal`` (sampled with the reparameterization
            :math:`x = \mu + L\varepsilon`, so gradients flow), a ``Categorical`` or
            ``Bernoulli``, or any object with ``sample(shape)`` (or ``rsample``) and
            ``log_prob(x)``, such as a ``torch.distributions`` distribution.
        q: a spec on the same space (``Normal``/``MultivariateNormal`` against either,
            ``Categorical``, ``Bernoulli``), or a callable ``log_q(x)`` that takes the samples
            ``x`` of shape ``(num_samples, *shape)`` and returns ``log q(x)`` per sample and
            distribution, shape ``(num_samples, *per-distribution shape)``, or elementwise with
            the samples' shape (then summed over the event axes). A flow prior returns
            :math:`\log N(f(x); \mu, \sigma) + \log|\det \partial f/\partial x|`. A
            ``Categorical`` p passes class indices, a ``Bernoulli`` p 0/1 floats.
        num_samples: draws per distribution (a positive int).
        estimator: ``"auto"`` (``"entropy"`` for Gaussian p, ``"k1"`` otherwise), ``"k1"``,
            ``"k2"`` (biased), ``"k3"`` or ``"entropy"`` (needs p's entropy: every spec, or an
            object with ``entropy()``).
        seed: an int; reproducible draws on every backend.
        generator: a ``torch.Generator`` (PyTorch) or ``numpy.random.Generator`` (NumPy and
            other array-API libraries). Without ``seed`` or ``generator``, the library's global
            random state (PyTorch) or fresh entropy (NumPy) is used.
        key: a ``jax.random`` key (JAX has no global random state: pass ``key`` or ``seed``).
        event_axis, mask, reduction, normalizer: as in :func:`kldiv.kl` (the mask holds
            non-negative weights; bool is the 0/1 case); the log-ratio of a whole event is
            formed before the estimator's nonlinearity.
        validate: raise a ``KLDivError`` at the first negative or non-finite mask weight
            (reads the mask's values; outside traced code).

    Returns:
        An :class:`Estimate` (``value``, ``stderr``, ``num_samples``), per distribution or
        reduced; arrays of p's library.

    >>> import kldiv
    >>> from kldiv import Normal
    >>> p, q = Normal(0.0, std=1.0), Normal(1.0, std=2.0)
    >>> est = kldiv.mc.kl(p, q, num_samples=100_000, seed=0)
    >>> exact = float(kldiv.kl(p, q))
    >>> abs(float(est.value) - exact) < 4 * float(est.stderr)
    True
    """
    check_reduction(reduction, normalizer)
    _check_validate(validate)
    n = _check_num_samples(num_samples)
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise bad("estimator", f"one of {', '.join(map(repr, ESTIMATORS))}", describe(estimator))
    q_is_spec = isinstance(q, Distribution)
    if not q_is_spec and not callable(q):
        raise bad("q", "a kldiv spec or a callable log-density log_q(x)", describe(q))
    if isinstance(p, Distribution):
        if not isinstance(p, (Normal, MultivariateNormal, Categorical, Bernoulli)):
            raise bad(
                "p",
                "a Normal, MultivariateNormal, Categorical or Bernoulli spec, or an object "
                "with sample and log_prob",
                f"a {type(p).__name__} spec",
            )
        return _kl_spec(
            p,
            q,
            n,
            estimator,
            seed,
            generator,
            key,
            event_axis,
            mask,
            reduction,
            normalizer,
            validate,
        )
    if hasattr(p, "log_prob") and (hasattr(p, "sample") or hasattr(p, "rsample")):
        return _kl_generic(
            p,
            q,
            n,
            estimator,
            seed,
            generator,
            key,
            event_axis,
            mask,
            reduction,
            normalizer,
            validate,
        )
    raise bad("p", "a kldiv spec or an object with sample(shape) and log_prob(x)", describe(p))


def _kl_spec(
    p: Distribution,
    q: Any,
    n: int,
    estimator: str,
    seed: Any,
    generator: Any,
    key: Any,
    event_axis: Any,
    mask: Any,
    reduction: str,
    normalizer: Any,
    validate: bool,
) -> Estimate:
    q_is_spec = isinstance(q, Distribution)
    xp, lib, p2, q2, in_shape, out_dtype, compute, mask = _kl._prepare(
        p, q if q_is_spec else p, mask, normalizer
    )
    if validate and mask is not None:
        _check_weights("mask", mask)
    family = _kl._family_axis(p2, q2, in_shape)
    if q_is_spec and _kl._is_diag_vs_mvn(p2, q2):
        _kl._check_diag_event_axis(event_axis, in_shape)
    ndim = len(in_shape)
    all_axes, _ = event_layout(ndim, in_shape, family, event_axis)
    if estimator == "auto":
        estimator = _default_estimator(p)
    device = _xp.device_of(p2._arrays())
    draws = _Draws(xp, lib, compute, device, seed, generator, key)
    if lib in (None, "numpy"):
        with np.errstate(all="ignore"):  # where() evaluates branches it then discards
            drawn = _draw_spec(xp, p2, in_shape, family, n, draws)
            log_q, to_sum = _log_q(
                xp, p2, q2 if q_is_spec else q, drawn, family, in_shape, all_axes
            )
    else:
        drawn = _draw_spec(xp, p2, in_shape, family, n, draws)
        log_q, to_sum = _log_q(xp, p2, q2 if q_is_spec else q, drawn, family, in_shape, all_axes)
    return _finish(
        xp,
        drawn.log_p,
        log_q,
        to_sum,
        drawn.entropy,
        estimator,
        n,
        in_shape,
        family,
        event_axis,
        all_axes,
        mask,
        reduction,
        normalizer,
        out_dtype,
        lib,
    )


def _log_q(
    xp: Any,
    p: Distribution,
    q: Any,
    drawn: _Drawn,
    family: int | None,
    in_shape: tuple[int, ...],
    all_axes: tuple[int, ...],
) -> tuple[Any, bool]:
    """``log q`` at p's samples, and whether its event axes are still to be summed."""
    if isinstance(q, Distribution):
        return _spec_log_q(xp, p, q, drawn, family, len(in_shape)), True
    n = drawn.log_p.shape[0]
    value_shape = tuple(drawn.log_p.shape[1:])
    per_shape = tuple(s for i, s in enumerate(in_shape) if i not in all_axes)
    return _call_q(q, drawn.x, (n, *per_shape), (n, *value_shape))


def _finish(
    xp: Any,
    log_p: Any,
    log_q: Any,
    log_q_to_sum: bool,
    entropy: Any,
    estimator: str,
    n: int,
    in_shape: tuple[int, ...],
    family: int | None,
    event_axis: Any,
    all_axes: tuple[int, ...],
    mask: Any,
    reduction: str,
    normalizer: Any,
    out_dtype: Any,
    lib: Any,
) -> Estimate:
    """Sum the event axes of each term, apply the estimator, average, then reduce."""
    sample_shape = (n, *in_shape)
    sample_family = None if family is None else family + 1
    if event_axis is not None:
        axes = _xp.normalize_axes(event_axis, len(in_shape), "event_axis", in_shape)
        sample_event = tuple(a + 1 for a in axes)
    else:
        sample_event = None

    def per_distribution(v: Any, with_samples: bool) -> Any:
        if with_samples:
            return reduce(
                xp,
                v,
                in_shape=sample_shape,
                family_axis=sample_family,
                event_axis=sample_event,
                mask=None,
                reduction="none",
                normalizer=None,
            )
        return reduce(
            xp,
            v,
            in_shape=in_shape,
            family_axis=family,
            event_axis=event_axis,
            mask=None,
            reduction="none",
            normalizer=None,
        )

    lp = per_distribution(log_p, True) if estimator != "entropy" else None  # not read then
    lq = per_distribution(log_q, True) if log_q_to_sum else log_q
    ent = per_distribution(entropy, False) if estimator == "entropy" else None
    g = _per_sample(xp, estimator, lp, lq, ent)
    value, stderr = _mean_and_stderr(xp, g, n)
    warning = heavy_tail_warning(g) if n > 1 else None
    if mask is not None or reduction != "none" or normalizer is not None:
        normalizer = _kl._as_normalizer(xp, normalizer, value.dtype)
        value, stderr = _reduce_pair(
            xp, value, stderr, in_shape, all_axes, mask, reduction, normalizer
        )
    if value.dtype != out_dtype:
        value, stderr = xp.astype(value, out_dtype), xp.astype(stderr, out_dtype)
    return Estimate(value, stderr, n, warning)


def _kl_generic(
    p: Any,
    q: Any,
    n: int,
    estimator: str,
    seed: Any,
    generator: Any,
    key: Any,
    event_axis: Any,
    mask: Any,
    reduction: str,
    normalizer: Any,
    validate: bool,
) -> Estimate:
    """``p`` any object with ``sample``/``rsample`` and ``log_prob`` (e.g. torch.distributions)."""
    if isinstance(q, Distribution):
        raise bad(
            "q",
            "a callable log-density when p is not a kldiv spec",
            f"a {type(q).__name__} spec",
        )
    if key is not None or generator is not None:
        raise KLDivError(
            "seed: a p that is not a kldiv spec draws with its own sample(); pass seed= "
            "(PyTorch distributions) or seed it yourself, got "
            + ("key" if key is not None else "generator")
        )
    x = _sample_generic(p, n, seed)
    log_p = p.log_prob(x)
    lib = _xp.library_of(log_p)
    if lib in ("unknown", "bool"):
        raise bad("p.log_prob(x)", "an array", describe(log_p))
    xp = _xp.namespace_for(lib, log_p)
    if lib is None:
        log_p = xp.asarray(log_p)
    in_shape = tuple(log_p.shape[1:])
    if estimator == "auto":
        estimator = "k1"
    entropy = None
    if estimator == "entropy":
        if not hasattr(p, "entropy"):
            raise bad("estimator", "'k1', 'k2' or 'k3' for a p without entropy()", "'entropy'")
        entropy = xp.broadcast_to(p.entropy(), in_shape)
    all_axes, _ = event_layout(len(in_shape), in_shape, None, event_axis)
    per_shape = tuple(s for i, s in enumerate(in_shape) if i not in all_axes)
    log_q, to_sum = _call_q(q, x, (n, *per_shape), (n, *in_shape))
    mask = _prepare_mask(xp, mask, None, validate)
    return _finish(
        xp,
        log_p,
        log_q,
        to_sum,
        entropy,
        estimator,
        n,
        in_shape,
        None,
        event_axis,
        all_axes,
        mask,
        reduction,
        normalizer,
        log_p.dtype,
        lib,
    )


def _sample_generic(p: Any, n: int, seed: Any) -> Any:
    reparam = hasattr(p, "rsample") and getattr(p, "has_rsample", True)
    draw = p.rsample if reparam else p.sample
    if seed is None:
        return draw((n,))
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _MAX_SEED:
        raise bad("seed", "a non-negative int below 2**63", describe(seed))
    torch = sys.modules.get("torch")
    if torch is not None and type(p).__module__.startswith("torch"):
        from .torch.bridge import _seeded  # one place that seeds and restores torch's state

        with _seeded(torch.Generator().manual_seed(seed)):
            return draw((n,))
    raise KLDivError(
        f"seed: expected none for a p of type {type(p).__name__} (it draws with its own "
        "sample(); seed its random state yourself), got an int"
    )


# ----------------------------------------------------------------------------------------------
# VITS
# ----------------------------------------------------------------------------------------------
class _Required:
    def __repr__(self) -> str:
        return "<required>"


_REQUIRED: Any = _Required()


def vits_kl(
    z_p: Any,
    logs_q: Any,
    m_p: Any,
    logs_p: Any,
    *,
    log_det: Any = 0.0,
    mask: Any = None,
    event_axis: Any = _REQUIRED,
    reduction: str = "none",
    normalizer: Any = None,
    validate: bool = False,
) -> Any:
    r"""The one-sample KL of a Gaussian posterior against a flow prior, as VITS computes it.

    With :math:`z \sim q(z\mid x) = N(m_q, e^{2\,\mathrm{logs}_q})` (the posterior) and a flow
    :math:`f` with :math:`z_p = f(z)` and prior :math:`p(z) = N(f(z); m_p, e^{2\,\mathrm{logs}_p})
    \,|\det \partial f/\partial z|`, per element

    .. math::

        \widehat{\mathrm{KL}} = \underbrace{-H(q)}_{\text{analytic}} - \log p(z)
        = \mathrm{logs}_p - \mathrm{logs}_q - \tfrac12
          + \tfrac12 (z_p - m_p)^2 e^{-2\,\mathrm{logs}_p} - \log|\det \partial f/\partial z|

    summed over ``event_axis``: an unbiased one-sample estimate of KL(q || p) (the ``"entropy"``
    estimator of :func:`kl`). Single values and even batch means can be negative; that is
    sampling noise, not a bug: ``abs`` or a clamp bias the loss. With ``z = m_q + exp(logs_q) *
    eps`` (reparameterized), gradients are unbiased estimates of the exact KL's gradient.

    Args:
        z_p: the flowed posterior sample :math:`f(z)`, e.g. ``(B, C, T)``.
        logs_q: the posterior's log-std (its loc is not needed: the entropy doesn't depend on it).
        m_p, logs_p: the prior's base loc and log-std (what the flow maps onto).
        log_det: :math:`\log|\det \partial f/\partial z|`; 0 for volume-preserving flows (VITS's
            mean-only couplings). Elementwise (the inputs' shape: summed over the event axes
            with the rest), per distribution (broadcasting against the per-distribution shape,
            or the inputs' rank with size 1 on the event axes, such as ``(B, 1, T)``). A
            non-volume-preserving flow without it gives a biased KL.
        mask: as in :func:`kldiv.kl` (non-negative weights; bool is the 0/1 case); VITS's
            ``z_mask`` of shape ``(B, 1, T)``.
        event_axis: required: the latent axis (``1`` for VITS's ``(B, C, T)``), a tuple, or
            ``None`` for per-element values.
        reduction, normalizer: as in :func:`kldiv.kl`. ``event_axis=1, mask=z_mask,
            reduction="mean"`` is VITS's ``sum(kl * z_mask) / sum(z_mask)``.
        validate: raise a ``KLDivError`` at the first negative or non-finite mask weight
            (reads the mask's values; outside traced code).

    Returns:
        An array of the inputs' library (half precision is computed in float32).

    >>> import numpy as np
    >>> from kldiv import mc
    >>> z_p, logs_q = np.zeros((1, 2, 3)), np.zeros((1, 2, 3))  # (B, C, T)
    >>> m_p, logs_p = np.zeros((1, 2, 3)), np.zeros((1, 2, 3))
    >>> z_mask = np.array([[[1.0, 1.0, 0.0]]])
    >>> float(mc.vits_kl(z_p, logs_q, m_p, logs_p, mask=z_mask, event_axis=1, reduction="mean"))
    -1.0
    """
    if event_axis is _REQUIRED:
        raise KLDivError(
            "event_axis: expected the latent axis to sum (1 for VITS's (B, C, T) inputs), a "
            "tuple of axes, or None for per-element values; got nothing"
        )
    check_reduction(reduction, normalizer)
    _check_validate(validate)
    named = {"z_p": z_p, "logs_q": logs_q, "m_p": m_p, "logs_p": logs_p, "log_det": log_det}
    others = {"mask": mask} if mask is not None and _xp.library_of(mask) is not None else {}
    xp, _ = _xp.common_namespace({**named, **others})
    device = _xp.device_of({**named, **others})
    compute, out = _xp.float_dtypes(xp, named)
    arrs = {k: _xp.as_float(xp, v, compute, device) for k, v in named.items()}
    ld = arrs.pop("log_det")
    in_shape = _xp.broadcast_shapes({k: tuple(v.shape) for k, v in arrs.items()})
    all_axes, _ = event_layout(len(in_shape), in_shape, None, event_axis)
    mask = _prepare_mask(xp, mask, device, validate)
    z = (arrs["z_p"] - arrs["m_p"]) * xp.exp(-arrs["logs_p"])
    values = (arrs["logs_p"] - arrs["logs_q"] - 0.5) + 0.5 * (z * z)
    values = xp.broadcast_to(values, in_shape)
    ld_shape = tuple(ld.shape)
    elementwise = (
        len(ld_shape) == len(in_shape)
        and bool(all_axes)
        and any(ld_shape[a] != 1 for a in all_axes)
    )
    if elementwise or not all_axes:
        if len(ld_shape) > len(in_shape) or any(
            a not in (1, b) for a, b in zip(ld_shape[::-1], in_shape[::-1], strict=False)
        ):
            raise bad(
                "log_det", f"a shape that broadcasts to the inputs' {in_shape}", f"shape {ld_shape}"
            )
        values = values - ld
    per = reduce(
        xp,
        values,
        in_shape=in_shape,
        family_axis=None,
        event_axis=event_axis,
        mask=None,
        reduction="none",
        normalizer=None,
    )
    if not elementwise and all_axes:
        per_shape = tuple(per.shape)
        if len(ld_shape) == len(in_shape):  # size 1 on the event axes: drop them
            ld = xp.reshape(ld, tuple(s for i, s in enumerate(ld_shape) if i not in all_axes))
            ld_shape = tuple(ld.shape)
        if len(ld_shape) > len(per_shape) or any(
            a not in (1, b) for a, b in zip(ld_shape[::-1], per_shape[::-1], strict=False)
        ):
            raise bad(
                "log_det",
                f"the inputs' shape {in_shape} (elementwise), a shape that broadcasts to the "
                f"per-distribution shape {per_shape}, or the inputs' rank with size 1 on the "
                f"event axes {all_axes}",
                f"shape {tuple(ld.shape)}",
            )
        per = per - ld
    result = _per_distribution_reduce(
        xp,
        per,
        in_shape,
        all_axes,
        mask,
        reduction,
        _kl._as_normalizer(xp, normalizer, compute),
    )
    return result if result.dtype == out else xp.astype(result, out)
