r"""``kl_divergence`` for ``torch.distributions`` objects: exact where a closed form exists, else
Monte Carlo with its standard error.

.. math::

    \mathrm{KL}(p \,\|\, q) = \mathbb E_{x \sim p}\left[\log p(x) - \log q(x)\right]

Where the value comes from, in this order:

1. ``Independent(Normal, 1)`` or ``MultivariateNormal`` on both sides, both with a diagonal scale
   (an MVN whose ``scale_tril`` is zero below the diagonal): the sum of univariate KLs, O(k)
   instead of torch's O(k^3) triangular solve (method ``"diagonal"``). Two MVNs take this path
   only from ``DIAGONAL_MIN_DIM`` = 32 dimensions on; below, torch's value is returned as is
   (in float32 the two differ by rounding: torch's formula cancels, the diagonal one does not);
2. ``Independent(Normal, 1)`` against a ``MultivariateNormal`` or a
   ``LowRankMultivariateNormal``, or the reverse, which torch lacks: kldiv's closed form (method
   ``"kldiv"``);
3. every pair torch registers: torch's own value (method ``"torch"``), except that a
   ``TransformedDistribution`` with a non-injective transform (``AbsTransform``: folded
   distributions) is never reduced to the KL of its base distributions. A pair registered with
   ``torch.distributions.kl.register_kl`` keeps its formula (1 and 2 don't override it);
4. otherwise, with ``fallback="mc"``, the Monte Carlo mean of ``log p(x) - log q(x)`` over
   ``num_samples`` draws from ``p``: reparameterized (``rsample``) where ``p`` allows, else with a
   score-function term that leaves the value unchanged and makes the gradient unbiased (method
   ``"mc"``). Folded distributions get their density summed over both preimages; a discrete
   ``p`` against a continuous ``q`` gives ``inf`` (``p`` has atoms, ``q`` puts no mass on them).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.distributions as td
from torch.distributions import kl as _torch_kl
from torch.distributions.transforms import AbsTransform, ComposeTransform

from .._kl import kl
from ..dists import MultivariateNormal, Normal
from ..errors import KLDivError, bad, describe
from ..mc import heavy_tail_warning

FALLBACKS = ("mc", "error")


def kl_divergence(
    p: td.Distribution,
    q: td.Distribution,
    *,
    fallback: str = "mc",
    num_samples: int = 1024,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""KL(p || q) for two ``torch.distributions`` objects, exact where possible.

    .. math::

        \mathrm{KL}(p \,\|\, q) = \mathbb E_{x \sim p}\left[\log p(x) - \log q(x)\right]

    A drop-in for ``torch.distributions.kl_divergence`` that also covers the pairs torch lacks
    (see the module docstring for the order in which values are sought).

    Args:
        p: the distribution the expectation is under.
        q: the other distribution, with the same event shape; batch shapes broadcast.
        fallback: ``"mc"`` (default): a Monte Carlo estimate where no closed form exists;
            ``"error"``: raise a ``KLDivError`` naming both types instead.
        num_samples: draws from ``p`` for a Monte Carlo estimate (at least 2).
        generator: a ``torch.Generator`` that makes the estimate reproducible (the global
            random state is left untouched); ``None`` uses the global random state.

    Returns:
        A tensor of the broadcast batch shape, differentiable where the inputs are. Two
        attributes are set on it: ``method`` (``"torch"``, ``"kldiv"``, ``"diagonal"`` or
        ``"mc"``) and ``stderr``, a tensor of the same shape: 0 for a closed form, the standard
        error of the mean for a Monte Carlo estimate (``inf`` where the estimate is ``inf``).
        They live on this tensor object only: arithmetic on it returns plain tensors. A Monte
        Carlo estimate is unbiased and may come out slightly negative. ``warning``: None, or a
        sentence when the samples' log-ratio has heavy tails (StudentT against Normal, say), so
        that ``stderr`` can't be trusted (:func:`kldiv.mc.heavy_tail_warning`).

    >>> import torch
    >>> import torch.distributions as td
    >>> from kldiv.torch import kl_divergence
    >>> p = td.Independent(td.Normal(torch.zeros(3), torch.ones(3)), 1)
    >>> q = td.MultivariateNormal(torch.zeros(3), 2.0 * torch.eye(3))  # torch has no formula
    >>> kl = kl_divergence(p, q)
    >>> round(float(kl), 6), kl.method, float(kl.stderr)  # 3/2 (1/2 - 1 + log 2)
    (0.289721, 'diagonal', 0.0)
    """
    _check_arguments(p, q, fallback, num_samples, generator)
    found = _exact(p, q)
    if found is not None:
        value, method = found
        stderr = torch.zeros_like(value.detach())
        warning = None
    elif fallback == "error":
        raise KLDivError(
            f"kl_divergence(p, q): expected a pair with a closed form, got p: {_name(p)} and "
            f"q: {_name(q)}, for which neither torch nor kldiv has one; pass fallback='mc' for "
            "a Monte Carlo estimate with its standard error"
        )
    else:
        value, stderr, warning = _monte_carlo(p, q, num_samples, generator)
        method = "mc"
    value = value.view(value.shape)  # a new tensor object: attributes never land on a shared one
    value.stderr = stderr
    value.method = method
    value.warning = warning
    return value


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------
def _name(d: Any) -> str:
    t = type(d)
    return f"{t.__module__}.{t.__qualname__}"


def _check_arguments(p: Any, q: Any, fallback: Any, num_samples: Any, generator: Any) -> None:
    for side, d in (("p", p), ("q", q)):
        if not isinstance(d, td.Distribution):
            raise bad(side, "a torch.distributions.Distribution", describe(d))
    if not isinstance(fallback, str) or fallback not in FALLBACKS:
        raise bad("fallback", f"one of {', '.join(repr(f) for f in FALLBACKS)}", describe(fallback))
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise bad("num_samples", "an int >= 2", describe(num_samples))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise bad("generator", "a torch.Generator or None", describe(generator))
    if p.event_shape != q.event_shape:
        raise KLDivError(
            f"q: expected the event shape of p ({tuple(p.event_shape)}, p: {_name(p)}), got "
            f"{tuple(q.event_shape)} (q: {_name(q)})"
        )
    try:
        torch.broadcast_shapes(p.batch_shape, q.batch_shape)
    except RuntimeError:
        raise KLDivError(
            f"q: expected a batch shape that broadcasts with p's {tuple(p.batch_shape)} "
            f"(p: {_name(p)}), got {tuple(q.batch_shape)} (q: {_name(q)})"
        ) from None


# ----------------------------------------------------------------------------------------------
# closed forms
# ----------------------------------------------------------------------------------------------
def _gaussian(d: Any) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """``(loc, array, kind)`` of a Gaussian with a vector event: ``kind`` is ``"diag"`` for an
    ``Independent(Normal, 1)`` (array: the stds), ``"tril"`` for a ``MultivariateNormal`` (its
    lower-triangular factor) and ``"cov"`` for a ``LowRankMultivariateNormal`` (its covariance);
    ``None`` for anything else."""
    if isinstance(d, td.MultivariateNormal):
        tril = getattr(d, "_unbroadcasted_scale_tril", None)
        return d.loc, d.scale_tril if tril is None else tril, "tril"
    if isinstance(d, td.LowRankMultivariateNormal):
        return d.loc, d.covariance_matrix, "cov"
    if (
        type(d) is td.Independent
        and type(d.base_dist) is td.Normal
        and d.reinterpreted_batch_ndims == 1
    ):
        return d.base_dist.loc, d.base_dist.scale, "diag"
    return None


def _is_diagonal(tril: torch.Tensor) -> bool:
    """Whether a triangular factor is zero off its diagonal (reads values, one pass): its
    nonzero entries are all on the diagonal."""
    diagonal = torch.diagonal(tril, dim1=-2, dim2=-1)
    return int(torch.count_nonzero(tril)) == int(torch.count_nonzero(diagonal))


def _diagonal_kl(p: tuple, q: tuple) -> torch.Tensor:
    """KL between two diagonal Gaussians, O(k); exact in value and in gradient.

    With ``q``'s factor ``L = D + E`` (``E`` strictly lower, zero here), the KL is the diagonal
    one plus ``-sum_{i>j} (z_i / D_i) E_ij z_j`` to first order, ``z = (mu_p - mu_q) / D``. That
    term is 0 in value but carries the gradient with respect to ``E`` (a learnable full factor
    that happens to be diagonal keeps learning its off-diagonal). ``p``'s off-diagonal has zero
    gradient at a diagonal point.
    """
    (loc_p, s_p, kind_p), (loc_q, s_q, kind_q) = p, q
    std_p = torch.diagonal(s_p, dim1=-2, dim2=-1) if kind_p == "tril" else s_p
    std_q = torch.diagonal(s_q, dim1=-2, dim2=-1) if kind_q == "tril" else s_q
    value = kl(Normal(loc_p, std=std_p), Normal(loc_q, std=std_q), event_axis=-1)
    if kind_q == "tril" and s_q.requires_grad and torch.is_grad_enabled():
        z = (loc_p - loc_q) / std_q
        off = torch.tril(s_q, -1)
        value = value - torch.sum((z / std_q) * (off @ z.unsqueeze(-1)).squeeze(-1), dim=-1)
    return value


def _spec(g: tuple) -> Any:
    loc, array, kind = g
    if kind == "diag":
        return Normal(loc, std=array)
    if kind == "tril":
        return MultivariateNormal(loc, scale_tril=array)
    return MultivariateNormal(loc, covariance=array)


#: below this event size, two diagonal MultivariateNormals get torch's own formula and value
DIAGONAL_MIN_DIM = 32


def _gaussian_kl(p: Any, q: Any) -> tuple[torch.Tensor, str] | None:
    gp, gq = _gaussian(p), _gaussian(q)
    if gp is None or gq is None or gp[2] == gq[2] == "diag":
        return None  # not two Gaussians; or two Independent(Normal): torch's own formula

    def diagonal(g: tuple) -> bool:
        return g[2] == "diag" or (g[2] == "tril" and _is_diagonal(g[1]))

    # Two MVNs are a pair torch registers: below DIAGONAL_MIN_DIM its O(k^3) formula is cheap,
    # and its value (rounding included) is returned; above, the O(k) path pays for itself.
    both_mvn = gp[2] != "diag" and gq[2] != "diag"
    small = both_mvn and gp[0].shape[-1] < DIAGONAL_MIN_DIM
    if not small and "cov" not in (gp[2], gq[2]) and diagonal(gp) and diagonal(gq):
        return _diagonal_kl(gp, gq), "diagonal"
    if "diag" not in (gp[2], gq[2]):
        return None  # (low-rank) MVN pairs: torch's own formula
    return kl(_spec(gp), _spec(gq), event_axis=-1), "kldiv"


def _has_own_log_prob(d: td.TransformedDistribution) -> bool:
    return type(d).log_prob is not td.TransformedDistribution.log_prob


def _transforms(d: td.TransformedDistribution) -> list:
    out = []
    for t in d.transforms:
        out.extend(t.parts if isinstance(t, ComposeTransform) else [t])
    return out


def _bijective(d: td.TransformedDistribution) -> bool:
    return all(t.bijective for t in d.transforms)


def _needs_folding(d: Any) -> bool:
    """Whether ``d.log_prob`` would take a non-injective transform (``AbsTransform``) for a
    bijection: a ``TransformedDistribution`` (possibly nested, or in ``Independent``) with such a
    transform and torch's generic ``log_prob`` (``HalfNormal`` has a correct one of its own)."""
    if isinstance(d, td.Independent):
        return _needs_folding(d.base_dist)
    if isinstance(d, td.TransformedDistribution):
        if _has_own_log_prob(d):
            return False
        return not _bijective(d) or _needs_folding(d.base_dist)
    return False


def _torch_formula_is_sound(p: Any, q: Any) -> bool:
    """False where torch's registered formula would treat a non-injective transform as a
    bijection (its KL of two transformed distributions is the KL of their bases)."""
    fn = _torch_kl._dispatch_kl(type(p), type(q))
    if fn is NotImplemented:
        return False
    if fn is _torch_kl._kl_transformed_transformed:
        both = _bijective(p) and _bijective(q)
        return both and _torch_formula_is_sound(p.base_dist, q.base_dist)
    if fn is _torch_kl._kl_independent_independent:
        return _torch_formula_is_sound(p.base_dist, q.base_dist)
    return True


def _exact(p: Any, q: Any) -> tuple[torch.Tensor, str] | None:
    fn = _torch_kl._dispatch_kl(type(p), type(q))
    # kldiv's Gaussian forms fill torch's gaps and replace its MVN formula for diagonal scales;
    # a pair a user registered with torch keeps the user's formula
    if fn is NotImplemented or fn is _torch_kl._kl_multivariatenormal_multivariatenormal:
        found = _gaussian_kl(p, q)
        if found is not None:
            return found
    if not _torch_formula_is_sound(p, q):
        return None
    try:
        return td.kl_divergence(p, q), "torch"
    except NotImplementedError:  # registered, but not for these instances
        return None


# ----------------------------------------------------------------------------------------------
# Monte Carlo
# ----------------------------------------------------------------------------------------------
def _unvalidated(d: Any) -> Any:
    """A shallow copy of ``d`` (and its inner distributions) that skips argument validation, so
    that ``log_prob`` may be called outside the support; ``d`` itself is left as it is."""
    d = copy.copy(d)
    d._validate_args = False
    # every inner distribution held as an attribute: base_dist, a mixture's _component_distribution
    # (behind a read-only property), Beta's _dirichlet, ...
    for attr, inner in list(vars(d).items()):
        if isinstance(inner, td.Distribution):
            setattr(d, attr, _unvalidated(inner))
    return d


def _inside(d: Any, x: torch.Tensor) -> torch.Tensor | None:
    """Where ``x`` lies in the support of ``d`` (``None`` if the support can't say)."""
    try:
        inside = d.support.check(x)
    except NotImplementedError:
        return None
    if (
        isinstance(d, td.TransformedDistribution)
        and _bijective(d)
        and not _has_own_log_prob(d)
        and not any(t.domain.event_dim or t.codomain.event_dim for t in d.transforms)
    ):
        # torch's support is the last codomain (Real for an affine map of a Beta): check the
        # preimage against the base's support as well
        for t in reversed(d.transforms):
            x = t.inv(x)
        base = _inside(d.base_dist, x)
        if base is not None:
            inside = inside & base
    return inside


def _discrete(d: Any) -> bool | None:
    """Whether ``d`` is a discrete distribution (``None`` if its support can't say)."""
    if isinstance(d, td.TransformedDistribution):  # its support is the transform's codomain
        return _discrete(d.base_dist)
    try:
        return bool(d.support.is_discrete)
    except NotImplementedError:
        return None


def _log_prob(d: Any, x: torch.Tensor) -> torch.Tensor:
    """``log d(x)``: ``-inf`` outside the support, and correct for folded distributions."""
    inside = _inside(d, x)
    if inside is not None and not bool(torch.all(inside)):
        return torch.where(inside, _density(_unvalidated(d), x), -math.inf)
    return _density(d, x)


def _density(d: Any, x: torch.Tensor) -> torch.Tensor:
    if isinstance(d, td.Independent) and _needs_folding(d):
        lp = _log_prob(d.base_dist, x)
        n = d.reinterpreted_batch_ndims
        return lp.sum(tuple(range(-n, 0))) if n else lp
    if isinstance(d, td.TransformedDistribution) and _needs_folding(d):
        return _folded_log_prob(d, x)
    return d.log_prob(x)


def _folded_log_prob(d: td.TransformedDistribution, y: torch.Tensor) -> torch.Tensor:
    """The density of a univariate distribution folded by one ``AbsTransform`` (with bijections
    before and after it): the sum over both preimages, never the base density at one of them."""
    base, ts = d.base_dist, _transforms(d)
    while isinstance(base, td.TransformedDistribution) and not _has_own_log_prob(base):
        base, ts = base.base_dist, _transforms(base) + ts  # nested: one chain of transforms
    folds = [i for i, t in enumerate(ts) if not t.bijective]
    if (
        len(folds) != 1
        or not isinstance(ts[folds[0]], AbsTransform)
        or base.event_shape != ()
        or any(t.domain.event_dim or t.codomain.event_dim for t in ts)
    ):
        raise KLDivError(
            f"p, q: expected the non-injective transforms of a TransformedDistribution to be "
            f"one AbsTransform on a univariate distribution (its density is then known), got "
            f"transforms {ts} on {_name(base)}"
        )
    a = folds[0]
    x, ladj_after = y, 0.0
    for t in reversed(ts[a + 1 :]):
        x_in = t.inv(x)
        ladj_after = ladj_after + t.log_abs_det_jacobian(x_in, x)
        x = x_in
    w = x  # |u| for the base's preimages u = +w and u = -w
    terms = []
    for sign in (1.0, -1.0):
        u, ladj = sign * w, 0.0
        for t in reversed(ts[:a]):
            u_in = t.inv(u)
            ladj = ladj + t.log_abs_det_jacobian(u_in, u)
            u = u_in
        terms.append(_log_prob(base, u) - ladj)
    folded = torch.logsumexp(torch.stack(terms), dim=0) - ladj_after
    return torch.where(w >= 0, folded, -math.inf)


class _seeded:
    """Within the block, the global random state is seeded from ``generator`` and restored
    afterwards (torch.distributions samplers take no generator argument)."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator
        self.fork: Any = None

    def __enter__(self) -> None:
        if self.generator is None:
            return
        seed = int(
            torch.randint(
                0, 2**62, (), generator=self.generator, device=self.generator.device
            ).item()
        )
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        devices = list(range(torch.cuda.device_count())) if cuda else []
        self.fork = torch.random.fork_rng(devices=devices)
        self.fork.__enter__()
        torch.random.default_generator.manual_seed(seed)
        if devices:  # initialized CUDA only: seeding it lazily would outlive the block
            torch.cuda.manual_seed_all(seed)

    def __exit__(self, *exc: Any) -> None:
        if self.fork is not None:
            self.fork.__exit__(*exc)


def _monte_carlo(
    p: Any, q: Any, n: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    batch = torch.broadcast_shapes(p.batch_shape, q.batch_shape)
    if p.batch_shape != batch:
        p = p.expand(batch)
    try:
        with _seeded(generator):
            x = p.rsample((n,)) if p.has_rsample else p.sample((n,))
    except NotImplementedError:
        raise KLDivError(
            f"p: expected a distribution that can be sampled for a Monte Carlo estimate, got "
            f"{_name(p)}"
        ) from None
    log_p = _log_prob(p, x)
    log_q = _log_prob(q, x)
    if _discrete(p) and _discrete(q) is False:
        log_q = torch.full_like(log_q, -math.inf)  # a density puts no mass on p's atoms: inf
    log_r = log_p - log_q
    if not p.has_rsample:
        # score-function term: 0 in value (where log_r is inf too: inf * 0 would be NaN);
        # makes the gradient that of E_p[log p - log q]
        weight = torch.where(torch.isfinite(log_r), log_r, 0.0).detach()
        log_r = log_r + weight * (log_p - log_p.detach())
    value = log_r.mean(0)
    stderr = log_r.detach().std(0) / math.sqrt(n)
    stderr = torch.where(torch.isfinite(value.detach()), stderr, math.inf)
    return value, stderr, heavy_tail_warning(log_r.detach())
