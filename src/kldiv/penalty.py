r"""Per-token KL penalties for RLHF: k1, k2, k3, importance-weighted and straight-through.

A penalty on the log-probabilities of sampled tokens estimates
:math:`\mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}})`, the KL of the policy :math:`\pi = \pi_\theta`
being trained from the reference. What matters in training is less its value than its
**gradient**: which estimator, placed in the loss or in the reward, with tokens sampled from
which policy, gives the gradient of which KL. The names and formulas below are the ones
docs/estimators.md's gradient table uses; each row of that table is derived there and checked by
brute force on small categorical policies in ``tests/test_penalty.py``.

Notation. For a sampled token :math:`x`, with :math:`\mu` the *behaviour* policy that sampled it
(the rollout engine, or the policy before this step's updates):

=========================  ==============================================  ===================
symbol                     meaning                                         in code
=========================  ==============================================  ===================
:math:`\delta`             :math:`\log\pi(x) - \log\pi_{\mathrm{ref}}(x)`   ``logp - logp_ref``
:math:`\ell = -\delta`     :math:`\log(\pi_{\mathrm{ref}}(x) / \pi(x))`     ``logp_ref - logp``
:math:`r = e^{\ell}`       :math:`\pi_{\mathrm{ref}}(x) / \pi(x)`
:math:`w`                  :math:`\pi(x) / \mu(x)`, the importance weight   ``exp(logp -
                                                                           behavior_logprobs)``
:math:`s`                  :math:`\nabla_\theta \log \pi(x)`, the score
=========================  ==============================================  ===================

The three values (Schulman, "Approximating KL Divergence", 2020,
http://joschu.net/blog/kl-approx.html):

.. math::

    k_1 = \delta, \qquad k_2 = \tfrac12 \delta^2, \qquad
    k_3 = r - 1 - \log r = e^{\ell} - 1 - \ell

:math:`\mathbb E_\pi[k_1] = \mathbb E_\pi[k_3] = \mathrm{KL}(\pi\|\pi_{\mathrm{ref}})`;
:math:`k_2`'s expectation is a different f-divergence (biased, by third order near
:math:`\pi = \pi_{\mathrm{ref}}`). Each function takes, beyond the two log-probabilities:

- ``behavior_logprobs=`` (:math:`\log\mu(x)`): the **importance-weighted** form :math:`w\,k`,
  whose expectation under :math:`\mu` is :math:`\mathbb E_\pi[k]`. With ``detach_weight=False``
  the weight carries its gradient (DeepSeek-V3.2's unbiased KL, arXiv:2512.02556 §3.1; TRL's
  ``use_bias_correction_kl``): :math:`\nabla(w k) = w(k\,s + \nabla k)`, whose expectation is
  :math:`\nabla_\theta \mathbb E_\pi[k]`, the gradient of KL(π‖π_ref) for k1 and k3. With
  ``detach_weight=True`` it is :math:`w \nabla k`, whose expectation is the *on-policy*
  :math:`\mathbb E_\pi[\nabla k]`: the gradient of KL(π‖π_ref) for k2 and for
  ``gradient="k2"``. The choice is required: which one is right depends on the estimator.
- ``gradient=`` (``"k1"``, ``"k2"``, ``"k3"``): a **straight-through** form with the value of
  this estimator and the gradient of the named one,
  :math:`\mathrm{sg}(k) + k_g - \mathrm{sg}(k_g)` (verl's ``k1+`` and ``k3+``:
  ``k1(..., gradient="k2")``, ``k3(..., gradient="k2")``).
- ``clamp=`` (the log-ratio :math:`\ell`, to ``[-c, c]`` or ``(lo, hi)``) and ``clamp_value=``
  (the per-token value, before the importance weight): both bias the estimate and warn with
  :class:`BiasWarning`. verl's ``low_var_kl`` is ``k3(..., clamp=20, clamp_value=10)``.

Order of the operations: clamp :math:`\ell`; the value :math:`k(\ell)`; clamp the value; the
straight-through gradient :math:`k_g(\ell)` (of the clamped :math:`\ell`); times :math:`w`; then
the mask's weights and the reduction.

Masks are non-negative weights: ``"sum"`` is :math:`\sum_t m_t v_t`, ``"mean"``
:math:`\sum_t m_t v_t / \sum_t m_t` (0 when all weights are 0), ``"batchmean"``
:math:`\sum_t m_t v_t / B`, and ``normalizer=`` an explicit divisor (a global token count from
:func:`kldiv.torch.global_normalizer`).
"""

from __future__ import annotations

import warnings
from typing import Any

from . import _kl, _xp
from ._reduce import _mask_to_per_distribution, check_reduction, event_layout, reduce
from .errors import KLDivError, bad, describe

__all__ = ["ESTIMATORS", "BiasWarning", "k1", "k2", "k3"]

#: The per-token estimators, by name (the values of ``gradient=``).
ESTIMATORS = ("k1", "k2", "k3")


class BiasWarning(UserWarning):
    """A requested option biases a Monte Carlo estimate (e.g. clamping the log-ratio)."""


# ----------------------------------------------------------------------------------------------
# The one place for the three formulas
# ----------------------------------------------------------------------------------------------
def _from_log_ratio(xp: Any, name: str, ell: Any) -> Any:
    """k1, k2 or k3 of ``ell = log q - log p`` (``logp_ref - logp`` for a penalty)."""
    if name == "k1":
        return -ell
    if name == "k2":
        return 0.5 * (ell * ell)
    return _xp.phi(xp, ell)  # k3 = exp(ell) - 1 - ell, accurate and never negative


# ----------------------------------------------------------------------------------------------
# Masks as non-negative weights, on top of the core's reduction
# ----------------------------------------------------------------------------------------------
def _weights(
    xp: Any,
    mask: Any,
    in_shape: tuple[int, ...],
    event_axes: tuple[int, ...],
    per_shape: tuple[int, ...],
    dtype: Any,
) -> Any:
    """``mask`` as weights of ``dtype`` broadcast to ``per_shape`` (the core checks its shape).

    The core's ``_mask_to_per_distribution`` checks the shape and drops size-1 event axes (the
    ``(B, 1, T)`` form); the weights take the shape it returns.
    """
    support = _mask_to_per_distribution(xp, mask, in_shape, event_axes, per_shape)
    w = mask if mask.dtype == dtype else xp.astype(mask, dtype)
    return xp.broadcast_to(xp.reshape(w, tuple(support.shape)), per_shape)


def _reduce_weighted(
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
    """The core's :func:`kldiv._reduce.reduce`, with a non-bool ``mask`` read as weights.

    ``"sum"`` is ``sum(m v)``, ``"mean"`` ``sum(m v) / sum(m)`` (0 when ``sum(m) == 0``),
    ``"batchmean"`` ``sum(m v) / B``, ``normalizer`` ``sum(m v) / normalizer``; a bool mask (or
    none) goes to the core unchanged. The weighted values go through the core with their
    support as the (0/1) mask, so this stays right once the core itself takes weights
    (issue 12), when it can become a plain call of ``reduce``.
    """
    if mask is None or mask.dtype == xp.bool:
        return reduce(
            xp,
            values,
            in_shape=in_shape,
            family_axis=family_axis,
            event_axis=event_axis,
            mask=mask,
            reduction=reduction,
            normalizer=normalizer,
        )
    per = reduce(
        xp,
        values,
        in_shape=in_shape,
        family_axis=family_axis,
        event_axis=event_axis,
        mask=None,
        reduction="none",
        normalizer=None,
    )
    per_shape = tuple(per.shape)
    all_axes, _ = event_layout(len(in_shape), in_shape, family_axis, event_axis)
    w = _weights(xp, mask, in_shape, all_axes, per_shape, per.dtype)
    counted = w != 0
    weighted = xp.where(counted, w * per, xp.zeros_like(per))  # masked NaN/inf count 0

    def core(red: str, norm: Any) -> Any:
        return reduce(
            xp,
            weighted,
            in_shape=per_shape,
            family_axis=None,
            event_axis=None,
            mask=counted,
            reduction=red,
            normalizer=norm,
        )

    if normalizer is not None or reduction in ("none", "sum"):
        return core(reduction, normalizer)
    if reduction == "batchmean":
        if per_shape and per_shape[0] == 0:
            return core("sum", None)  # an empty batch: 0, not 0 / 0
        return core("batchmean", None)
    total = core("sum", None)
    count = xp.sum(xp.where(counted, w, xp.zeros_like(w)))
    return total / xp.where(count > 0, count, xp.ones_like(count))


def _check_weights(name: str, mask: Any) -> None:
    """``validate=True``: a mask must hold non-negative, finite weights (bool is 0/1)."""
    import numpy as np

    from ._validate import _first_bad, to_numpy

    m = to_numpy(name, mask)
    if m.dtype == bool:
        return
    if m.dtype.kind == "c":
        raise bad(name, "a boolean or real array of non-negative weights", f"dtype {m.dtype}")
    _first_bad(name, m, ~np.isfinite(m) | (m < 0), "a non-negative, finite weight")


def _check_log_probs(name: str, x: Any) -> None:
    """``validate=True``: log-probabilities are numbers below +inf (-inf is probability 0)."""
    import numpy as np

    from ._validate import _first_bad, to_numpy

    arr = to_numpy(name, x)
    _first_bad(name, arr, np.isnan(arr) | (arr == np.inf), "a log-probability (not NaN or +inf)")


# ----------------------------------------------------------------------------------------------
# The token estimators
# ----------------------------------------------------------------------------------------------
def _clamp_bounds(clamp: Any, name: str = "clamp") -> tuple[float, float]:
    if isinstance(clamp, (int, float)) and not isinstance(clamp, bool):
        if not clamp > 0:
            raise bad(name, "a positive number c (for [-c, c]) or a pair (lo, hi)", str(clamp))
        return -float(clamp), float(clamp)
    if isinstance(clamp, (tuple, list)) and len(clamp) == 2:
        lo, hi = clamp
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
            if lo < hi:
                return float(lo), float(hi)
    raise bad(
        name,
        "a positive number c (for [-c, c]) or a pair (lo, hi) with lo < hi",
        describe(clamp),
    )


def _token_estimator(
    name: str,
    logp: Any,
    logp_ref: Any,
    *,
    behavior_logprobs: Any,
    detach_weight: Any,
    gradient: Any,
    clamp: Any,
    clamp_value: Any,
    mask: Any,
    reduction: str,
    normalizer: Any,
    validate: Any,
) -> Any:
    check_reduction(reduction, normalizer)
    if not isinstance(validate, bool):
        raise bad("validate", "True or False", describe(validate))
    if gradient is not None and (not isinstance(gradient, str) or gradient not in ESTIMATORS):
        raise bad(
            "gradient",
            f"None (the estimator's own) or one of {', '.join(map(repr, ESTIMATORS))}",
            describe(gradient),
        )
    if behavior_logprobs is None:
        if detach_weight is not None:
            raise bad(
                "detach_weight",
                "nothing without behavior_logprobs= (there is no importance weight)",
                describe(detach_weight),
            )
    elif not isinstance(detach_weight, bool):
        raise KLDivError(
            "detach_weight: expected True or False with behavior_logprobs= (False for k1 and "
            "k3: the gradient of E[w k] is that of KL(pi || pi_ref), DeepSeek-V3.2's form; True "
            "for k2 and gradient='k2': E[w grad k] is then the on-policy gradient), got "
            + ("nothing" if detach_weight is None else describe(detach_weight))
        )
    named = {"logp": logp, "logp_ref": logp_ref}
    if behavior_logprobs is not None:
        named["behavior_logprobs"] = behavior_logprobs
    others = {"mask": mask} if mask is not None and _xp.library_of(mask) is not None else {}
    xp, _ = _xp.common_namespace({**named, **others})
    device = _xp.device_of({**named, **others})
    compute, out = _xp.float_dtypes(xp, named)
    arrs = {k: _xp.as_float(xp, v, compute, device) for k, v in named.items()}
    shape = _xp.broadcast_shapes({k: tuple(v.shape) for k, v in arrs.items()})
    if mask is not None and _xp.library_of(mask) is None:
        mask = xp.asarray(mask) if device is None else xp.asarray(mask, device=device)
    if validate:
        for k, v in arrs.items():
            _check_log_probs(k, v)
        if mask is not None:
            _check_weights("mask", mask)
    a, b = arrs["logp"], arrs["logp_ref"]
    ell = b - a  # log(pi_ref / pi) at the sampled tokens
    if clamp is not None:
        lo, hi = _clamp_bounds(clamp)
        warnings.warn(
            f"{name}: clamping the log-ratio to [{lo}, {hi}] biases the estimate (the KL is "
            "no longer its expectation); report it with the clamp, or drop it",
            BiasWarning,
            stacklevel=3,
        )
        ell = xp.clip(ell, lo, hi)
    values = _from_log_ratio(xp, name, ell)
    if clamp_value is not None:
        lo, hi = _clamp_bounds(clamp_value, "clamp_value")
        warnings.warn(
            f"{name}: clamping the per-token value to [{lo}, {hi}] biases the estimate low "
            "and gives clamped tokens no gradient; report it with the clamp, or drop it",
            BiasWarning,
            stacklevel=3,
        )
        values = xp.clip(values, lo, hi)
    if gradient is not None and gradient != name:
        g = _from_log_ratio(xp, gradient, ell)
        g = xp.where(xp.isfinite(g), g, xp.zeros_like(g))  # no inf - inf where the KL is inf
        # the value of `name`, the gradient of `gradient`: g - sg(g) is exactly 0
        values = _xp.stop_gradient(xp, values) + (g - _xp.stop_gradient(xp, g))
    if behavior_logprobs is not None:
        weight = xp.exp(a - arrs["behavior_logprobs"])
        if detach_weight:
            weight = _xp.stop_gradient(xp, weight)
        values = weight * values
    values = xp.broadcast_to(values, shape)
    result = _reduce_weighted(
        xp,
        values,
        in_shape=shape,
        family_axis=None,
        event_axis=None,
        mask=mask,
        reduction=reduction,
        normalizer=_kl._as_normalizer(xp, normalizer, compute),
    )
    return result if result.dtype == out else xp.astype(result, out)


_ARGS_DOC = """
    Args:
        logp: ``log pi(x_t)`` of the sampled tokens ``x_t`` under the policy being trained
            (with its gradient).
        logp_ref: ``log pi_ref(x_t)`` of the same tokens under the reference.
        behavior_logprobs: ``log mu(x_t)`` under the policy that sampled them (the rollout
            policy, or the policy before this step's updates): the estimate becomes its
            importance-weighted form ``w * k`` with ``w = exp(logp - behavior_logprobs)``.
            On-policy, ``logp.detach()`` gives the weight 1 with its gradient.
        detach_weight: required with ``behavior_logprobs``: ``False`` lets the gradient flow
            through ``w`` (the expected gradient is that of ``E_pi[k]``), ``True`` stops it
            (the expected gradient is the on-policy ``E_pi[grad k]``).
        gradient: ``None`` (this estimator's own), or ``"k1"``, ``"k2"``, ``"k3"``: the value
            of this estimator with the gradient of that one (straight-through).
        clamp: ``c`` to clamp the log-ratio ``logp_ref - logp`` to ``[-c, c]``, or ``(lo,
            hi)``. Biases the estimate; warns with :class:`BiasWarning`.
        clamp_value: ``c`` or ``(lo, hi)``: clamp each token's value (before the weight).
            Biases the estimate low (``E[min(k, c)] < E[k]``) and gives clamped tokens no
            gradient; warns with :class:`BiasWarning`.
        mask: non-negative weights per token (bool is the 0/1 case), broadcasting against
            the inputs.
        reduction: ``"none"`` (per token), ``"sum"``, ``"mean"`` (``sum(m v) / sum(m)``) or
            ``"batchmean"`` (``sum(m v) / B``), as in :func:`kldiv.kl`.
        normalizer: an explicit divisor of ``sum(m v)`` (a global token count).
        validate: read the values and raise a ``KLDivError`` at the first NaN or +inf
            log-probability or negative or non-finite mask weight (outside traced code).

    Returns:
        An array of the inputs' library: per token, or reduced (half precision is computed in
        float32).
"""


def k1(
    logp: Any,
    logp_ref: Any,
    *,
    behavior_logprobs: Any = None,
    detach_weight: bool | None = None,
    gradient: str | None = None,
    clamp: Any = None,
    clamp_value: Any = None,
    mask: Any = None,
    reduction: str = "none",
    normalizer: Any = None,
    validate: bool = False,
) -> Any:
    r"""The k1 estimate of KL(π ‖ π_ref) per token: ``logp - logp_ref``.

    .. math::

        k_1 = \log\frac{\pi(x)}{\pi_{\mathrm{ref}}(x)} = \delta,\qquad x \sim \pi,\qquad
        \mathbb E_\pi[k_1] = \mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}})

    Unbiased, but single values are often negative, and its variance does not vanish unless
    π = π_ref pointwise. Expected gradients (module notation; docs/estimators.md):

    - in the **reward** (``sg(k1)`` times the score): :math:`\mathbb E_\pi[\delta s] =
      \nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})`, exactly;
    - in the **loss**, on-policy: :math:`\mathbb E_\pi[s] = 0`: no penalty at all;
    - in the loss with ``behavior_logprobs`` and ``detach_weight=False``:
      :math:`\nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})` (the weight carries the score);
    - ``gradient="k2"`` (verl's ``k1+``): k1's unbiased value with k2's gradient,
      :math:`\nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})` on-policy in the loss.
    """
    return _token_estimator(
        "k1",
        logp,
        logp_ref,
        behavior_logprobs=behavior_logprobs,
        detach_weight=detach_weight,
        gradient=gradient,
        clamp=clamp,
        clamp_value=clamp_value,
        mask=mask,
        reduction=reduction,
        normalizer=normalizer,
        validate=validate,
    )


def k2(
    logp: Any,
    logp_ref: Any,
    *,
    behavior_logprobs: Any = None,
    detach_weight: bool | None = None,
    gradient: str | None = None,
    clamp: Any = None,
    clamp_value: Any = None,
    mask: Any = None,
    reduction: str = "none",
    normalizer: Any = None,
    validate: bool = False,
) -> Any:
    r"""The k2 estimate per token: ``0.5 * (logp - logp_ref)**2`` (biased value).

    .. math::

        k_2 = \tfrac12\delta^2,\qquad
        \mathbb E_\pi[k_2] = \mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}}) + O(\text{third order})

    **Biased** value: its expectation is an f-divergence that agrees with the KL to second order
    near π = π_ref (for two unit Normals a distance :math:`\mu` apart it is
    :math:`\mu^2/2 + \mu^4/8` against :math:`\mu^2/2`); never negative, low variance near
    π = π_ref. Expected gradients:

    - in the **loss**, on-policy: :math:`\mathbb E_\pi[\delta s] =
      \nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})`, exactly; off-policy the same with
      ``behavior_logprobs`` and ``detach_weight=True`` (:math:`\mathbb E_\mu[w\delta s]`);
    - with ``detach_weight=False``: :math:`\nabla\mathbb E_\pi[k_2]`, biased by
      :math:`\mathbb E_\pi[k_2 s]`;
    - in the **reward**: :math:`\mathbb E_\pi[k_2 s]`, biased (second order in δ: close to no
      penalty near π = π_ref).
    """
    return _token_estimator(
        "k2",
        logp,
        logp_ref,
        behavior_logprobs=behavior_logprobs,
        detach_weight=detach_weight,
        gradient=gradient,
        clamp=clamp,
        clamp_value=clamp_value,
        mask=mask,
        reduction=reduction,
        normalizer=normalizer,
        validate=validate,
    )


def k3(
    logp: Any,
    logp_ref: Any,
    *,
    behavior_logprobs: Any = None,
    detach_weight: bool | None = None,
    gradient: str | None = None,
    clamp: Any = None,
    clamp_value: Any = None,
    mask: Any = None,
    reduction: str = "none",
    normalizer: Any = None,
    validate: bool = False,
) -> Any:
    r"""The k3 estimate per token: ``r - 1 - log r`` with ``r = exp(logp_ref - logp)``.

    .. math::

        k_3 = e^{\ell} - 1 - \ell,\quad \ell = \log\frac{\pi_{\mathrm{ref}}(x)}{\pi(x)},\qquad
        \mathbb E_\pi[k_3] = \mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}})

    Unbiased when π_ref puts no mass where π has none (otherwise biased low by that mass), never
    negative, and of lower variance than k1 near π = π_ref; its variance is infinite when
    :math:`\mathbb E_\pi[r^2] = \infty`. Computed without cancellation (``kldiv``'s
    :math:`\varphi`). Expected gradients:

    - in the **loss**, on-policy (GRPO's default): :math:`\mathbb E_\pi[(1 - r)s] =
      \nabla\mathrm{KL}(\pi_{\mathrm{ref}}\|\pi)`, the gradient of the *other* KL;
    - with ``behavior_logprobs`` and ``detach_weight=False`` (DeepSeek-V3.2's unbiased KL,
      TRL's default): :math:`\mathbb E_\mu[w\delta s] = \nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})`,
      on- and off-policy;
    - ``gradient="k2"`` (verl's ``k3+``): k3's value with k2's gradient,
      :math:`\nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})` on-policy, and off-policy with
      ``detach_weight=True``;
    - in the **reward**: :math:`\nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}}) -
      \nabla\mathrm{KL}(\pi_{\mathrm{ref}}\|\pi)`, biased (zero to first order).

    ``clamp=20, clamp_value=10`` is verl's ``low_var_kl``.
    """
    return _token_estimator(
        "k3",
        logp,
        logp_ref,
        behavior_logprobs=behavior_logprobs,
        detach_weight=detach_weight,
        gradient=gradient,
        clamp=clamp,
        clamp_value=clamp_value,
        mask=mask,
        reduction=reduction,
        normalizer=normalizer,
        validate=validate,
    )


for _fn, _example in (
    (
        k1,
        """
    >>> import numpy as np
    >>> from kldiv import penalty
    >>> lp, lr = np.log([0.5, 0.25]), np.log([0.25, 0.5])
    >>> penalty.k1(lp, lr)
    array([ 0.69314718, -0.69314718])
    >>> round(float(penalty.k1(lp, lr, mask=[1.0, 0.5], reduction="mean")), 6)  # weights
    0.231049
    """,
    ),
    (
        k2,
        """
    >>> import numpy as np
    >>> from kldiv import penalty
    >>> round(float(penalty.k2(np.log([0.5, 0.25]), np.log([0.25, 0.5]), reduction="mean")), 6)
    0.240227
    """,
    ),
    (
        k3,
        """
    >>> import numpy as np
    >>> from kldiv import penalty
    >>> lp, lr, old = np.log([0.5, 0.25]), np.log([0.25, 0.5]), np.log([0.4, 0.4])
    >>> penalty.k3(lp, lr)
    array([0.19314718, 0.30685282])
    >>> penalty.k3(lp, lr, behavior_logprobs=old, detach_weight=False)  # w = [1.25, 0.625]
    array([0.24143398, 0.19178301])
    """,
    ),
):
    _fn.__doc__ = (_fn.__doc__ or "") + _ARGS_DOC + _example
del _fn, _example
