r"""KL divergence between multivariate normal distributions, and a diagonal Normal against one.

.. math::

    \mathrm{KL}(\mathcal N(\mu_p, \Sigma_p) \,\|\, \mathcal N(\mu_q, \Sigma_q))
    = \tfrac12\Big(\operatorname{tr}(\Sigma_q^{-1}\Sigma_p)
      + (\mu_q - \mu_p)^\top \Sigma_q^{-1} (\mu_q - \mu_p) - k
      + \log\det\Sigma_q - \log\det\Sigma_p\Big).

With lower-triangular scales :math:`\Sigma = LL^\top` and :math:`M = L_q^{-1} L_p`
(lower-triangular, :math:`M_{ii} = L_{p,ii} / L_{q,ii}`), the trace is
:math:`\sum_{ij} M_{ij}^2` and the log-determinants are :math:`2\sum_i \log M_{ii}`, so

.. math::

    \mathrm{KL} = \tfrac12\Big(\sum_i \varphi(2\log M_{ii}) + \sum_{i>j} M_{ij}^2
      + \big\|L_q^{-1}(\mu_p - \mu_q)\big\|^2\Big),\qquad \varphi(d) = e^d - 1 - d \ge 0.

Every term is non-negative: no cancellation, never a negative result, and ``KL(p, p) = 0``.
:math:`\log M_{ii}` is :func:`kldiv._xp.log_ratio` of the two diagonals, and the off-diagonal
of :math:`M` is taken from the difference of the two factors,
:math:`M - I = L_q^{-1}(L_p - L_q)`, so that close distributions keep their relative accuracy.

Parametrizations. A ``scale_tril`` is used as given (its upper triangle is ignored). A
``covariance`` is turned into its Cholesky factor :math:`L`. A ``precision`` :math:`P` is
factored as :math:`P = K^\top K` with a lower-triangular :math:`K = L^{-1}` (the Cholesky factor
of :math:`P` with its rows and columns reversed, transposed, as ``torch.distributions`` does),
and used as such: :math:`L_q^{-1}x` is then the product :math:`K_q x`, and two precisions give
:math:`M - I = (K_q - K_p)K_p^{-1}`; no inverse is ever formed.

Accuracy. A float64 factorization is exact only up to a backward error of about
``1e-16 * |Sigma|``, which moves the KL by up to ``1e-16`` times the condition number of the
matrix (relative): ``1e-10`` at condition ``1e6``. So for float64 input with ``k <= 64`` the
factorization's residual is computed in doubled precision (:func:`kldiv._xp.gram_residual`)
and the KL corrected to first order in it (see :func:`kl_scales`); against mpmath on the exact
inputs, the relative error is then about ``1e-14`` at condition ``1e6``. float32 inputs are
factored and solved in float64 and the result rounded back to float32 (a float32 Cholesky of a
covariance with condition number ``1e6`` has no correct digits left in its small directions);
JAX without ``jax_enable_x64`` and PyTorch on MPS have no float64 and stay in float32. Half
precision arrives here already as float32 (see :func:`kldiv.kl`).

A matrix that is not positive definite raises the library's own error in the Cholesky
factorization (NumPy, PyTorch) or gives NaN (JAX): values are not checked inside the math;
``kl(..., validate=True)`` checks them and raises a ``KLDivError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._registry import register_kl
from .._xp import (
    _device,
    broadcast_shapes,
    cholesky,
    closed_form,
    gram_residual,
    has_float64,
    log_ratio,
    phi,
    solve_triangular,
    stop_gradient,
    tril,
    xp_of,
)
from ..dists import MultivariateNormal, Normal
from ..errors import bad
from .normal import std_of

#: float64 covariances and precisions of every size get the doubled-precision residual
#: correction of their factorization (about ten ``k x k`` matrix products per factorization:
#: docs/benchmarks.md measures what it costs), which keeps the 1e-10 promise at condition 1e6.


@dataclass(frozen=True)
class Scale:
    r"""One side's covariance as a triangular factor.

    ``tri`` is lower-triangular: the scale :math:`L` (:math:`\Sigma = LL^\top`) or, where
    ``inverse``, :math:`K = L^{-1}` (:math:`\Sigma^{-1} = K^\top K`). ``s``, where not ``None``,
    makes it exact: :math:`\Sigma = L(I + S)L^\top` for the covariance the input stands for,
    to first order in the (tiny) :math:`S`.
    """

    tri: Any
    inverse: bool = False
    s: Any = None


def _widen(xp: Any, *arrays: Any) -> tuple[list[Any], Any]:
    """The arrays in the working dtype (float64 for float32 input) and the dtype to return."""
    dtype = arrays[0].dtype
    if dtype == xp.float32 and has_float64(xp, _device(arrays[0])):
        return [xp.astype(a, xp.float64) for a in arrays], dtype
    return list(arrays), dtype


def _narrow(xp: Any, value: Any, dtype: Any) -> Any:
    return value if value.dtype == dtype else xp.astype(value, dtype)


def _refine(xp: Any, dtype: Any, matrix: Any) -> bool:
    """Whether to correct the factorization (float64 input; float32 is computed in float64)."""
    return dtype == xp.float64


def _eye(xp: Any, k: int, like: Any) -> Any:
    dev = _device(like)
    if dev is None:
        return xp.eye(k, dtype=like.dtype)
    return xp.eye(k, dtype=like.dtype, device=dev)


def _t(xp: Any, a: Any) -> Any:
    return xp.matrix_transpose(a)


def factor(xp: Any, param: str, matrix: Any, *, refine: bool = False) -> Scale:
    r"""The :class:`Scale` of a ``MultivariateNormal`` given by ``param`` and ``matrix``.

    ``param`` is ``"scale_tril"``, ``"covariance"`` or ``"precision"``. With ``refine``, the
    residual of the Cholesky factorization is computed in doubled precision and turned into the
    correction ``s``: :math:`S = L^{-1}(\Sigma - LL^\top)L^{-\top}` for a covariance, and
    :math:`S = -K^{-\top}(P - K^\top K)K^{-1}` for a precision. It carries no gradient (it is
    rounding error). A ``scale_tril`` is exact as given.

    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> P = np.array([[2.0, 1.0], [1.0, 3.0]])
    >>> f = factor(xp, "precision", P)
    >>> f.inverse, bool(f.tri[0, 1] == 0.0 and np.allclose(f.tri.T @ f.tri, P))
    (True, True)
    """
    if param == "scale_tril":
        return Scale(tril(xp, matrix))
    if param == "covariance":
        chol = cholesky(xp, matrix)
        if not refine:
            return Scale(chol)
        r = gram_residual(xp, stop_gradient(xp, matrix), stop_gradient(xp, chol))
        x = solve_triangular(xp, chol, r, lower=True)  # L^-1 R
        return Scale(chol, False, _t(xp, solve_triangular(xp, chol, _t(xp, x), lower=True)))
    flipped = xp.flip(matrix, axis=(-2, -1))
    chol_f = cholesky(xp, flipped)  # J P J = L_f L_f^T, so P = K^T K with K = (J L_f J)^T
    k_tri = _t(xp, xp.flip(chol_f, axis=(-2, -1)))
    if not refine:
        return Scale(k_tri, True)
    r_f = gram_residual(xp, stop_gradient(xp, flipped), stop_gradient(xp, chol_f))
    r_p = xp.flip(r_f, axis=(-2, -1))  # P - K^T K
    upper = _t(xp, k_tri)
    y = solve_triangular(xp, upper, r_p, lower=False)  # K^-T R_P
    return Scale(k_tri, True, -_t(xp, solve_triangular(xp, upper, _t(xp, y), lower=False)))


def diag_scale(xp: Any, param: str, scale: Any, k: int) -> Scale:
    """A ``Normal``'s scale over its last axis (size ``k`` or 1) as a diagonal :class:`Scale`."""
    s = std_of(xp, param, scale)
    eye = _eye(xp, k, s) != 0
    return Scale(xp.where(eye, s[..., None], xp.zeros_like(s[..., None])))


def _diag(xp: Any, a: Any) -> Any:
    return xp.abs(xp.linalg.diagonal(a))


def kl_scales(xp: Any, dloc: Any, p: Scale, q: Scale, parts: bool = False) -> Any:
    r"""KL(p || q) from ``dloc`` :math:`= \mu_p - \mu_q` and the two sides' :class:`Scale`.

    ``dloc`` has shape ``(..., k)``, the triangular factors ``(..., k, k)`` (lower-triangular,
    zeros above the diagonal, as :func:`factor` makes them); batch axes broadcast and the event
    axis is summed (see the module docstring for the formula). The signs of their diagonals
    don't matter.

    Where a side carries a correction :math:`S`, the result adds the first-order term
    :math:`\tfrac12\big(\langle M^\top M - I, S_p\rangle
    - \langle MM^\top + zz^\top - I, S_q\rangle\big)` with :math:`z = L_q^{-1}(\mu_p - \mu_q)`
    (and is kept non-negative).

    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> p, q = Scale(np.eye(2)), Scale(np.sqrt(2.0) * np.eye(2))
    >>> round(float(kl_scales(xp, np.array([-1.0, -1.0]), p, q)), 6)  # log 2
    0.693147
    """
    a, b = p.tri, q.tri
    z = dloc[..., None]
    z = b @ z if q.inverse else solve_triangular(xp, b, z, lower=True)  # L_q^-1 (mu_p - mu_q)
    if not p.inverse and not q.inverse:  # M - I = L_q^-1 (L_p - L_q)
        delta = solve_triangular(xp, b, a - b, lower=True)
        log_m = log_ratio(xp, _diag(xp, a), _diag(xp, b))
    elif p.inverse and q.inverse:  # M = K_q K_p^-1, M - I = (K_q - K_p) K_p^-1
        diff = b - a
        delta = _t(xp, solve_triangular(xp, _t(xp, a), _t(xp, diff), lower=False))
        log_m = log_ratio(xp, _diag(xp, b), _diag(xp, a))
    elif q.inverse:  # M = K_q L_p
        m = b @ a
        delta = m - _eye(xp, m.shape[-1], m)
        log_m = log_ratio(xp, _diag(xp, a) * _diag(xp, b), xp.ones_like(_diag(xp, a)))
    else:  # M = L_q^-1 K_p^-1 = (K_p L_q)^-1
        kp_lq = a @ b
        eye = _eye(xp, kp_lq.shape[-1], kp_lq)
        delta = solve_triangular(xp, kp_lq, eye, lower=True) - eye
        d = _diag(xp, a) * _diag(xp, b)
        log_m = log_ratio(xp, xp.ones_like(d), d)
    # Every factor is lower-triangular (and so is delta: a product or a solve of such ones, with
    # exact zeros above the diagonal), so the strictly lower part's squares are the total less
    # the diagonal's; the diagonal's are at most about the KL's own size.
    d = xp.linalg.diagonal(delta)
    below_sq = xp.sum(delta * delta, axis=(-2, -1)) - xp.sum(d * d, axis=-1)
    diag_terms = xp.sum(phi(xp, 2.0 * log_m), axis=-1)
    kl = 0.5 * (diag_terms + below_sq + xp.sum(z * z, axis=(-2, -1)))
    # A singular factor (a zero on its diagonal) is a degenerate Gaussian: +inf, like Normal's
    # point mass (the solves give inf/NaN there). NaN parameters still give NaN.
    singular = xp.zeros_like(kl) != 0
    for f in (p, q):
        if not f.inverse:
            singular = singular | xp.any(xp.linalg.diagonal(f.tri) == 0, axis=-1)
    nan_in = xp.isnan(xp.sum(xp.abs(dloc), axis=-1))
    for f in (p, q):
        nan_in = nan_in | xp.isnan(xp.sum(xp.abs(f.tri), axis=(-2, -1)))
    kl = xp.where(singular & ~nan_in, math.inf, kl)
    if parts:  # for the gradient: M - I and z = L_q^-1 (mu_p - mu_q), as a column
        return kl, delta, z
    if p.s is None and q.s is None:
        return kl
    delta_t = _t(xp, delta)
    corr = xp.zeros_like(kl)
    if p.s is not None:  # M^T M - I
        corr = corr + xp.sum((delta_t @ delta + delta + delta_t) * p.s, axis=(-2, -1))
    if q.s is not None:  # M M^T + z z^T - I
        g_q = delta @ delta_t + delta + delta_t + z @ _t(xp, z)
        corr = corr - xp.sum(g_q * q.s, axis=(-2, -1))
    value = kl + 0.5 * corr
    # where, not maximum: at p = q the value is exactly 0 and maximum's tie would halve the
    # Hessian (the Fisher information)
    return xp.where(value < 0, xp.zeros_like(value), value)


def _kl_gaussians(p: MultivariateNormal | Normal, q: MultivariateNormal | Normal) -> Any:
    """The three registered pairs: each side becomes a :class:`Scale` (a factored matrix, or a
    diagonal Normal over the last axis), in the working dtype, then :func:`kl_scales`."""
    mvn = p if isinstance(p, MultivariateNormal) else q
    xp = xp_of(mvn.loc)
    k = mvn.matrix.shape[-1]

    def param_array(d: MultivariateNormal | Normal) -> Any:
        return d.matrix if isinstance(d, MultivariateNormal) else d.scale

    if getattr(p, "param", None) == getattr(q, "param", None) == "scale_tril":
        return closed_form(xp, _scale_tril_terms, (p.loc, p.matrix, q.loc, q.matrix))
    (loc_p, arr_p, loc_q, arr_q), dtype = _widen(xp, p.loc, param_array(p), q.loc, param_array(q))
    refine = _refine(xp, dtype, mvn.matrix)

    def scale(d: MultivariateNormal | Normal, arr: Any, side: str) -> Scale:
        if isinstance(d, MultivariateNormal):
            try:
                return factor(xp, d.param, arr, refine=refine)
            except Exception as err:  # the library's Cholesky: not positive definite
                if "LinAlgError" not in type(err).__name__:
                    raise
                raise bad(
                    f"{side}.{d.param}",
                    "a symmetric positive-definite matrix",
                    f"one whose Cholesky factorization fails ({err})",
                ) from None
        return diag_scale(xp, d.param, arr, k)

    sp, sq = scale(p, arr_p, "p"), scale(q, arr_q, "q")
    return _narrow(xp, kl_scales(xp, loc_p - loc_q, sp, sq), dtype)


def _scale_tril_terms(
    xp: Any, loc_p: Any, tri_p: Any, loc_q: Any, tri_q: Any, need: tuple, smooth: bool = False
) -> tuple:
    r"""Two ``scale_tril`` sides, as a :func:`kldiv._xp.closed_form` function: the value of
    :func:`kl_scales` and the formula's own gradient. With :math:`M = L_q^{-1}L_p`,
    :math:`z = L_q^{-1}(\mu_p - \mu_q)` and :math:`[W_M, w_z] = L_q^{-\top}[M, z]`,

    .. math::

        \partial_{\mu_p} = w_z = -\partial_{\mu_q},\quad
        \partial_{L_p} = \mathrm{tril}(W_M) - \mathrm{diag}(1/L_{p,ii}),\quad
        \partial_{L_q} = -\mathrm{tril}(W_M M^\top + w_z z^\top) + \mathrm{diag}(1/L_{q,ii}),

    one triangular solve and one matrix product beyond the value. The value is computed in the
    working dtype (float64 for float32 input, see :func:`_widen`); the gradient needs no more
    than the input's own precision, and is computed in it (except for a second derivative).
    """
    (loc_p, tri_p, loc_q, tri_q), dtype = _widen(xp, loc_p, tri_p, loc_q, tri_q)
    a, b = tril(xp, tri_p), tril(xp, tri_q)
    value, delta, z = kl_scales(xp, loc_p - loc_q, Scale(a), Scale(b), parts=True)
    value = _narrow(xp, value, dtype)
    partials: list = [None] * 4
    if any(need):
        if not smooth:
            a, b, delta, z = (_narrow(xp, t, dtype) for t in (a, b, delta, z))
        k = a.shape[-1]
        m = delta + _eye(xp, k, delta)
        batch = broadcast_shapes({"M": tuple(m.shape[:-2]), "z": tuple(z.shape[:-2])})
        m = xp.broadcast_to(m, (*batch, k, k))
        rhs = xp.concat([m, xp.broadcast_to(z, (*batch, k, 1))], axis=-1)
        w = solve_triangular(xp, _t(xp, b), rhs, lower=False)
        w_m, w_z = w[..., :k], w[..., k:]
        if need[0] or need[2]:
            g = w_z[..., 0]
            partials[0] = g if need[0] else None
            partials[2] = -g if need[2] else None
        if need[1]:
            inv_a = 1.0 / xp.linalg.diagonal(a)
            partials[1] = tril(xp, w_m) - _diag_matrix(xp, inv_a)
        if need[3]:
            inv_b = 1.0 / xp.linalg.diagonal(b)
            partials[3] = _diag_matrix(xp, inv_b) - tril(xp, w_m @ _t(xp, m) + w_z @ _t(xp, z))
    return value, partials


def _diag_matrix(xp: Any, d: Any) -> Any:
    """A batch of diagonal matrices from their diagonals ``(..., k)``."""
    k = d.shape[-1]
    return d[..., None] * _eye(xp, k, d)


@register_kl(MultivariateNormal, MultivariateNormal)
def kl_mvn_mvn(p: MultivariateNormal, q: MultivariateNormal) -> Any:
    """KL(p || q) for two ``MultivariateNormal`` specs, one value per batch element.

    >>> import numpy as np
    >>> import kldiv
    >>> from kldiv import MultivariateNormal
    >>> p = MultivariateNormal(np.zeros(2), covariance=np.eye(2))
    >>> q = MultivariateNormal(np.ones(2), precision=0.5 * np.eye(2))
    >>> round(float(kldiv.kl(p, q)), 6)  # 1/2 (1 + 1 - 2 + log 4)
    0.693147
    """
    return _kl_gaussians(p, q)


@register_kl(Normal, MultivariateNormal)
def kl_normal_mvn(p: Normal, q: MultivariateNormal) -> Any:
    """KL(p || q) for a diagonal ``Normal`` over its last axis (``event_axis=-1``) and an MVN.

    >>> import numpy as np
    >>> import kldiv
    >>> from kldiv import MultivariateNormal, Normal
    >>> q = MultivariateNormal(np.zeros(3), covariance=np.eye(3))
    >>> float(kldiv.kl(Normal.standard(), q, event_axis=-1))
    0.0
    """
    return _kl_gaussians(p, q)


@register_kl(MultivariateNormal, Normal)
def kl_mvn_normal(p: MultivariateNormal, q: Normal) -> Any:
    """KL(p || q) for an MVN and a diagonal ``Normal`` over its last axis (``event_axis=-1``).

    >>> import numpy as np
    >>> import kldiv
    >>> from kldiv import MultivariateNormal, Normal
    >>> p = MultivariateNormal(np.zeros(2), covariance=np.eye(2))
    >>> round(float(kldiv.kl(p, Normal(np.ones(2), var=2.0), event_axis=-1)), 6)
    0.693147
    """
    return _kl_gaussians(p, q)
