r"""KL divergence between multivariate normal distributions, and a diagonal Normal against one.

.. math::

    \mathrm{KL}(\mathcal N(\mu_p, \Sigma_p) \,\|\, \mathcal N(\mu_q, \Sigma_q))
    = \tfrac12\Big(\operatorname{tr}(\Sigma_q^{-1}\Sigma_p)
      + (\mu_q - \mu_p)^\top \Sigma_q^{-1} (\mu_q - \mu_p) - k
      + \log\det\Sigma_q - \log\det\Sigma_p\Big).

With lower-triangular scales :math:`\Sigma = LL^\top` and :math:`M = L_q^{-1} L_p` (a
triangular solve, lower-triangular with :math:`M_{ii} = L_{p,ii} / L_{q,ii}`), the trace is
:math:`\sum_{ij} M_{ij}^2` and the log-determinants are :math:`2\sum_i \log M_{ii}`, so

.. math::

    \mathrm{KL} = \tfrac12\Big(\sum_i \varphi(2\log M_{ii}) + \sum_{i>j} M_{ij}^2
      + \big\|L_q^{-1}(\mu_p - \mu_q)\big\|^2\Big),\qquad \varphi(d) = e^d - 1 - d \ge 0.

Every term is non-negative: no cancellation, never a negative result, and ``KL(p, p)`` is 0 up
to a few rounding errors in the (then nearly zero) off-diagonal of ``M``. :math:`\log M_{ii}`
is :func:`kldiv._xp.log_ratio` of the two diagonals, so close scales keep their relative
accuracy.

Parametrizations. A ``scale_tril`` is used as given (its upper triangle is ignored). A
``covariance`` is turned into its Cholesky factor; a ``precision`` :math:`P` into
:math:`L = (J\,\mathrm{chol}(JPJ)\,J)^{-\top}` with the exchange matrix :math:`J` (as
``torch.distributions`` does), one triangular solve and no explicit inverse.

Accuracy. A factorization in float64 is exact only up to a backward error of about
``1e-16 * |Sigma|``, which moves the KL by up to ``1e-16`` times the condition number (relative):
``1e-10`` at condition ``1e6``. So for float64 input (``k <= 64``) the residual
:math:`\Sigma - \hat L\hat L^\top` is computed in doubled precision
(:func:`kldiv._xp.gram_residual`) and the KL corrected to first order in it (see
:func:`kl_scale_tril`); measured against mpmath on the exact inputs, the relative error is then
about ``1e-14`` at condition ``1e6``. float32 inputs are factorized and solved in float64 and
the result rounded back to float32 (a float32 Cholesky of a covariance with condition number
``1e6`` has no correct digits left in its small directions). JAX without ``jax_enable_x64`` and
PyTorch on MPS have no float64 and stay in float32. Half precision arrives here already as
float32 (see :func:`kldiv.kl`).

A matrix that is not positive definite raises the library's own error in the Cholesky
factorization (NumPy, PyTorch) or gives NaN (JAX): values are not checked inside the math;
``kl(..., validate=True)`` checks them and raises a ``KLDivError``.
"""

from __future__ import annotations

from typing import Any

from .._registry import register_kl
from .._xp import (
    _device,
    cholesky,
    gram_residual,
    library_of,
    log_ratio,
    phi,
    solve_triangular,
    stop_gradient,
    tril,
    xp_of,
)
from ..dists import MultivariateNormal, Normal

#: Matrices up to this size get the doubled-precision residual correction (``k`` vectorized
#: steps per factorization); larger ones keep the plain float64 factorization.
REFINE_MAX_K = 64


def _float64_usable(xp: Any, x: Any) -> bool:
    """Whether float64 arrays can be made for ``x``'s library and device."""
    lib = library_of(x)
    if lib == "torch":
        return x.device.type != "mps"
    if lib == "jax":
        import jax

        return jax.dtypes.canonicalize_dtype(xp.float64) == xp.float64
    return hasattr(xp, "float64")


def _widen(xp: Any, *arrays: Any) -> tuple[list[Any], Any]:
    """The arrays in the working dtype (float64 for float32 input) and the dtype to return."""
    dtype = arrays[0].dtype
    if dtype == xp.float32 and _float64_usable(xp, arrays[0]):
        return [xp.astype(a, xp.float64) for a in arrays], dtype
    return list(arrays), dtype


def _narrow(xp: Any, value: Any, dtype: Any) -> Any:
    return value if value.dtype == dtype else xp.astype(value, dtype)


def _refine(xp: Any, dtype: Any, matrix: Any) -> bool:
    """Whether to correct the factorization (float64 input; float32 is computed in float64)."""
    return dtype == xp.float64 and matrix.shape[-1] <= REFINE_MAX_K


def _eye(xp: Any, k: int, like: Any) -> Any:
    dev = _device(like)
    if dev is None:
        return xp.eye(k, dtype=like.dtype)
    return xp.eye(k, dtype=like.dtype, device=dev)


def factor(xp: Any, param: str, matrix: Any, *, refine: bool = False) -> tuple[Any, Any]:
    r"""``(L, S)``: the lower-triangular scale of a ``MultivariateNormal`` and its correction.

    ``param`` is ``"scale_tril"``, ``"covariance"`` or ``"precision"``. With ``refine``, ``S``
    is :math:`\hat L^{-1}(\Sigma - \hat L\hat L^\top)\hat L^{-\top}`, so that
    :math:`\Sigma = \hat L(I + S)\hat L^\top` for the exact covariance of the input, with the
    residual computed in doubled precision; it carries no gradient (it is rounding error).
    ``S`` is ``None`` for a ``scale_tril`` (exact as given) and without ``refine``.

    A precision :math:`P` with :math:`JPJ = L_f L_f^\top` (Cholesky with rows and columns
    reversed) is :math:`UU^\top` for the upper-triangular :math:`U = JL_fJ`, so
    :math:`L = U^{-\top}`; there :math:`S = -\hat L^\top R_P \hat L` to first order in the
    residual :math:`R_P = P - \hat U\hat U^\top`.

    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> P = np.array([[2.0, 1.0], [1.0, 3.0]])
    >>> L, S = factor(xp, "precision", P)
    >>> bool(L[0, 1] == 0.0 and np.allclose(L @ L.T, np.linalg.inv(P))), S
    (True, None)
    """
    if param == "scale_tril":
        return tril(xp, matrix), None
    if param == "covariance":
        l = cholesky(xp, matrix)
        if not refine:
            return l, None
        r = stop_gradient(xp, gram_residual(xp, matrix, l))
        x = solve_triangular(xp, l, r, lower=True)  # L^-1 R
        return l, xp.matrix_transpose(solve_triangular(xp, l, xp.matrix_transpose(x)))
    flipped = xp.flip(matrix, axis=(-2, -1))
    l_f = cholesky(xp, flipped)
    l_inv = xp.matrix_transpose(xp.flip(l_f, axis=(-2, -1)))  # U^T: lower, the inverse of L
    l = solve_triangular(xp, l_inv, _eye(xp, matrix.shape[-1], matrix), lower=True)
    if not refine:
        return l, None
    r_p = stop_gradient(xp, xp.flip(gram_residual(xp, flipped, l_f), axis=(-2, -1)))
    return l, -(xp.matrix_transpose(l) @ r_p @ l)


def diag_scale_tril(xp: Any, normal: Normal, k: int) -> Any:
    """A ``Normal`` over its last axis (size ``k`` or 1, or none) as a diagonal scale matrix."""
    s = normal.scale
    if normal.param == "var":
        s = xp.sqrt(s)
    elif normal.param == "log_std":
        s = xp.exp(s)
    elif normal.param == "log_var":
        s = xp.exp(0.5 * s)
    eye = _eye(xp, k, s) != 0
    return xp.where(eye, s[..., None], xp.zeros_like(s[..., None]))


def kl_scale_tril(
    xp: Any, dloc: Any, l_p: Any, l_q: Any, s_p: Any = None, s_q: Any = None
) -> Any:
    r"""KL(p || q) from ``dloc`` :math:`= \mu_p - \mu_q` and lower-triangular scales.

    ``dloc`` has shape ``(..., k)``, ``l_p`` and ``l_q`` ``(..., k, k)``; batch axes broadcast
    and the event axis is summed (see the module docstring for the formula). Only the lower
    triangles of ``l_p`` and ``l_q`` are read, and the signs of their diagonals don't matter.

    ``s_p`` and ``s_q`` (from :func:`factor`, optional) describe the exact covariances
    :math:`\Sigma = L(I + S)L^\top`; the result then adds the first-order correction
    :math:`\tfrac12\big(\langle M^\top M - I, S_p\rangle
    - \langle MM^\top + zz^\top - I, S_q\rangle\big)` with :math:`z = L_q^{-1}(\mu_p - \mu_q)`
    (and is kept non-negative).

    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> l_p, l_q = np.eye(2), np.sqrt(2.0) * np.eye(2)
    >>> round(float(kl_scale_tril(xp, np.array([-1.0, -1.0]), l_p, l_q)), 6)  # log 2
    0.693147
    """
    m = tril(xp, solve_triangular(xp, l_q, tril(xp, l_p), lower=True))
    z = solve_triangular(xp, l_q, dloc[..., None], lower=True)  # (..., k, 1)
    d_p = xp.abs(xp.linalg.diagonal(l_p))
    d_q = xp.abs(xp.linalg.diagonal(l_q))
    diag_terms = xp.sum(phi(xp, 2.0 * log_ratio(xp, d_p, d_q)), axis=-1)
    below = tril(xp, m, -1)
    kl = 0.5 * (diag_terms + xp.sum(below * below, axis=(-2, -1)) + xp.sum(z * z, axis=(-2, -1)))
    if s_p is None and s_q is None:
        return kl
    eye = _eye(xp, m.shape[-1], m)
    mt = xp.matrix_transpose(m)
    corr = xp.zeros_like(kl)
    if s_p is not None:
        corr = corr + xp.sum((mt @ m - eye) * s_p, axis=(-2, -1))
    if s_q is not None:
        g_q = m @ mt + z @ xp.matrix_transpose(z) - eye
        corr = corr - xp.sum(g_q * s_q, axis=(-2, -1))
    return xp.maximum(kl + 0.5 * corr, xp.zeros_like(kl))


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
    xp = xp_of(p.loc)
    (loc_p, mat_p, loc_q, mat_q), dtype = _widen(xp, p.loc, p.matrix, q.loc, q.matrix)
    refine = _refine(xp, dtype, mat_p)
    l_p, s_p = factor(xp, p.param, mat_p, refine=refine)
    l_q, s_q = factor(xp, q.param, mat_q, refine=refine)
    return _narrow(xp, kl_scale_tril(xp, loc_p - loc_q, l_p, l_q, s_p, s_q), dtype)


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
    xp = xp_of(q.loc)
    (loc_p, scale_p, loc_q, mat_q), dtype = _widen(xp, p.loc, p.scale, q.loc, q.matrix)
    l_p = diag_scale_tril(xp, p._replace(**{p.param: scale_p}), mat_q.shape[-1])
    l_q, s_q = factor(xp, q.param, mat_q, refine=_refine(xp, dtype, mat_q))
    return _narrow(xp, kl_scale_tril(xp, loc_p - loc_q, l_p, l_q, None, s_q), dtype)


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
    xp = xp_of(p.loc)
    (loc_p, mat_p, loc_q, scale_q), dtype = _widen(xp, p.loc, p.matrix, q.loc, q.scale)
    l_p, s_p = factor(xp, p.param, mat_p, refine=_refine(xp, dtype, mat_p))
    l_q = diag_scale_tril(xp, q._replace(**{q.param: scale_q}), mat_p.shape[-1])
    return _narrow(xp, kl_scale_tril(xp, loc_p - loc_q, l_p, l_q, s_p, None), dtype)
