"""Loss modules: thin ``torch.nn.Module`` layers over :func:`kldiv.kl`.

Each module fixes at construction what a hand-written KL leaves implicit (the parametrization of
each side, the event axes, the reduction), checks those options there, and computes every value
through :func:`kldiv.kl`: no formula is repeated here. ``forward`` takes tensors only, so the
modules work under ``torch.compile(fullgraph=True)``.

Half precision: float16/bfloat16 inputs (and inputs made under ``torch.autocast``) are computed in
float32 with autocast turned off, and the loss is returned in float32, the policy autocast applies
to PyTorch's own losses. A loss whose float32 value is finite therefore stays finite.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .. import _reduce
from .._kl import kl
from ..dists import Bernoulli, Categorical, Normal
from ..errors import bad, describe

_HALF = (torch.float16, torch.bfloat16)
_CATEGORICAL = ("probs", "logits", "log_probs")
_BERNOULLI = ("probs", "logits")


def _one_of(name: str, value: Any, valid: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise bad(name, f"one of {', '.join(repr(v) for v in valid)}", describe(value))
    return value


def _axes(name: str, value: Any) -> Any:
    """A static check of an axis option: an int, a tuple of distinct ints (or ``None``)."""
    if value is None:
        return None
    items = value if isinstance(value, tuple) else (value,)
    if isinstance(value, list):
        items = tuple(value)
    ok = items and all(isinstance(a, int) and not isinstance(a, bool) for a in items)
    if not ok:
        raise bad(name, "an int or a tuple of ints (or None)", describe(value))
    if len(set(items)) != len(items):
        raise bad(name, "distinct axes", repr(value))
    return tuple(items) if isinstance(value, (tuple, list)) else value


def _reduction(value: Any) -> str:
    _reduce.check_reduction(value, None)
    return value


def _float32(x: Any) -> Any:
    """Half-precision tensors as float32 (a differentiable cast); anything else as it is."""
    if isinstance(x, torch.Tensor) and x.dtype in _HALF:
        return x.float()
    return x


def _no_autocast(*tensors: Any) -> Any:
    """A context that turns autocast off on the tensors' device (nothing for Python numbers)."""
    for t in tensors:
        if isinstance(t, torch.Tensor):
            kind = t.device.type
            if torch.amp.autocast_mode.is_autocast_available(kind):
                return torch.autocast(device_type=kind, enabled=False)
            break
    return contextlib.nullcontext()


class _KLLoss(torch.nn.Module):
    """Shared plumbing: options shown by ``repr``; mask and normalizer passed per call."""

    _options: tuple[str, ...] = ()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self._options)

    def _kl(self, p: Any, q: Any, mask: Any, normalizer: Any, **kwargs: Any) -> Any:
        return kl(p, q, mask=mask, normalizer=normalizer, reduction=self.reduction, **kwargs)


class NormalKLLoss(_KLLoss):
    r"""KL(posterior || prior) for diagonal Gaussians, the VAE/VITS term.

    .. math::

        \mathrm{KL}\big(\mathcal N(\mu, \sigma^2) \,\|\, \mathcal N(\mu_0, \sigma_0^2)\big)
        = \log\frac{\sigma_0}{\sigma} + \frac{\sigma^2 + (\mu - \mu_0)^2}{2\sigma_0^2}
          - \frac12

    per element, summed over ``event_axis`` (the latent axis), then reduced over the rest.

    Args:
        param: how ``forward``'s second tensor reads: ``"std"`` (:math:`\sigma`), ``"var"``
            (:math:`\sigma^2`), ``"log_std"`` or ``"log_var"``. Required: it is the one thing a
            hand-written VAE loss gets wrong most often.
        prior_param: the parametrization of ``prior_scale`` when a prior is given per call
            (default: the same as ``param``).
        event_axis: the axes summed as independent latent dimensions (default ``-1``; ``1`` for
            VITS's ``(B, C, T)``; ``None`` for elementwise values).
        reduction: ``"mean"`` (default: over the remaining distributions, e.g. the batch),
            ``"sum"``, ``"batchmean"`` or ``"none"`` (see :func:`kldiv.kl`).

    ``forward(loc, scale, prior_loc=None, prior_scale=None, *, mask=None, normalizer=None)``:
    the prior is N(0, I) unless both ``prior_loc`` and ``prior_scale`` are given; ``mask`` and
    ``normalizer`` are those of :func:`kldiv.kl` (``normalizer`` overrides the reduction: a
    global count under data parallelism or gradient accumulation).

    >>> import torch
    >>> from kldiv.torch import NormalKLLoss
    >>> loss = NormalKLLoss(param="log_var")
    >>> loss
    NormalKLLoss(param='log_var', prior_param='log_var', event_axis=-1, reduction='mean')
    >>> mu, log_var = torch.zeros(4, 2), torch.zeros(4, 2)
    >>> float(loss(mu + 1.0, log_var))  # two latent dimensions, each 1/2
    1.0
    """

    _options = ("param", "prior_param", "event_axis", "reduction")

    def __init__(
        self,
        *,
        param: str,
        prior_param: str | None = None,
        event_axis: int | tuple[int, ...] | None = -1,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.param = _one_of("param", param, Normal.SCALES)
        self.prior_param = (
            self.param
            if prior_param is None
            else _one_of("prior_param", prior_param, Normal.SCALES)
        )
        self.event_axis = _axes("event_axis", event_axis)
        self.reduction = _reduction(reduction)

    def forward(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        prior_loc: torch.Tensor | None = None,
        prior_scale: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        normalizer: Any = None,
    ) -> torch.Tensor:
        if (prior_loc is None) != (prior_scale is None):
            given, missing = (
                ("prior_loc", "prior_scale")
                if prior_scale is None
                else ("prior_scale", "prior_loc")
            )
            raise bad(missing, f"a tensor together with {given} (or neither, for N(0, I))", "None")
        with _no_autocast(loc):
            p = Normal(_float32(loc), **{self.param: _float32(scale)})
            if prior_loc is None:
                q = Normal.standard()
            else:
                q = Normal(_float32(prior_loc), **{self.prior_param: _float32(prior_scale)})
            return self._kl(p, q, mask, normalizer, event_axis=self.event_axis)


class CategoricalKLLoss(_KLLoss):
    r"""KL(p || q) between categorical distributions along a class axis (distillation, RLHF).

    .. math::

        \mathrm{KL}(p \,\|\, q) = \sum_i p_i \log\frac{p_i}{q_i}

    ``forward(p, q)`` is KL(p || q): the first argument is the distribution the expectation is
    under (in distillation usually the teacher, in an RLHF penalty the policy). Note that
    ``F.kl_div(input, target)`` takes them the other way round.

    Args:
        p_param, q_param: what each side's tensor holds: ``"probs"``, ``"logits"`` or
            ``"log_probs"``. Required.
        axis: the class axis (default ``-1``).
        event_axis: further axes to sum (e.g. the token axis for a per-sequence KL).
        reduction: ``"mean"`` (default: over distributions, e.g. valid tokens with a ``mask``),
            ``"sum"``, ``"batchmean"`` or ``"none"``.

    ``forward(p, q, *, mask=None, normalizer=None)``.

    >>> import torch
    >>> from kldiv.torch import CategoricalKLLoss
    >>> loss = CategoricalKLLoss(p_param="probs", q_param="logits")
    >>> p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    >>> round(float(loss(p, torch.zeros(2, 2))), 6)  # (0 + log 2) / 2
    0.346574
    """

    _options = ("p_param", "q_param", "axis", "event_axis", "reduction")

    def __init__(
        self,
        *,
        p_param: str,
        q_param: str,
        axis: int = -1,
        event_axis: int | tuple[int, ...] | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.p_param = _one_of("p_param", p_param, _CATEGORICAL)
        self.q_param = _one_of("q_param", q_param, _CATEGORICAL)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise bad("axis", "an int", describe(axis))
        self.axis = axis
        self.event_axis = _axes("event_axis", event_axis)
        self.reduction = _reduction(reduction)

    def forward(
        self,
        p: torch.Tensor,
        q: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        normalizer: Any = None,
    ) -> torch.Tensor:
        with _no_autocast(p):
            dp = Categorical(**{self.p_param: _float32(p)}, axis=self.axis)
            dq = Categorical(**{self.q_param: _float32(q)}, axis=self.axis)
            return self._kl(dp, dq, mask, normalizer, event_axis=self.event_axis)


class BernoulliKLLoss(_KLLoss):
    r"""KL(p || q) between Bernoulli distributions, elementwise (one coin per element).

    .. math::

        \mathrm{KL}(p \,\|\, q) = p \log\frac{p}{q} + (1 - p) \log\frac{1 - p}{1 - q}

    Args:
        p_param, q_param: ``"probs"`` (P(X = 1)) or ``"logits"`` (its log-odds). Required.
        event_axis: axes to sum as independent coins (e.g. the pixels of a binary image).
        reduction: ``"mean"`` (default), ``"sum"``, ``"batchmean"`` or ``"none"``.

    ``forward(p, q, *, mask=None, normalizer=None)``.

    >>> import torch
    >>> from kldiv.torch import BernoulliKLLoss
    >>> loss = BernoulliKLLoss(p_param="probs", q_param="logits", reduction="sum")
    >>> round(float(loss(torch.tensor([1.0]), torch.tensor([0.0]))), 6)  # log 2
    0.693147
    """

    _options = ("p_param", "q_param", "event_axis", "reduction")

    def __init__(
        self,
        *,
        p_param: str,
        q_param: str,
        event_axis: int | tuple[int, ...] | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.p_param = _one_of("p_param", p_param, _BERNOULLI)
        self.q_param = _one_of("q_param", q_param, _BERNOULLI)
        self.event_axis = _axes("event_axis", event_axis)
        self.reduction = _reduction(reduction)

    def forward(
        self,
        p: torch.Tensor,
        q: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        normalizer: Any = None,
    ) -> torch.Tensor:
        with _no_autocast(p):
            dp = Bernoulli(**{self.p_param: _float32(p)})
            dq = Bernoulli(**{self.q_param: _float32(q)})
            return self._kl(dp, dq, mask, normalizer, event_axis=self.event_axis)
