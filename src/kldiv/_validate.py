"""Opt-in value checks (``kl(..., validate=True)``): they read values, so never inside ``jit``.

Each failure raises a ``KLDivError`` naming the argument, the first bad index and its value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dists import Categorical, Distribution
from .errors import KLDivError


def to_numpy(name: str, x: Any) -> np.ndarray:
    """Read an array's values into NumPy (float64 for floating types)."""
    try:
        if hasattr(x, "detach"):  # torch
            x = x.detach().cpu()
            if str(x.dtype).endswith("float16"):
                x = x.float()
        arr = np.asarray(x)
    except Exception as err:  # tracers, lazy arrays
        raise KLDivError(
            f"{name}: validate=True needs concrete values, got {type(x).__name__} "
            f"({err.__class__.__name__}); validate outside jit/compile"
        ) from None
    return arr.astype(np.float64) if arr.dtype.kind == "f" or arr.dtype.kind == "V" else arr


def _first_bad(name: str, arr: np.ndarray, bad: np.ndarray, expected: str) -> None:
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f"{name}[{', '.join(map(str, idx))}]" if arr.ndim else name
        raise KLDivError(f"{where}: expected {expected}, got {arr[idx] if arr.ndim else arr}")


def _check_finite_or_inf(name: str, arr: np.ndarray) -> None:
    _first_bad(name, arr, np.isnan(arr), "a number, not NaN")


def check_values(d: Any, name: str) -> None:
    """Raise on the first invalid value of spec (or mask) ``d``."""
    if not isinstance(d, Distribution):
        m = to_numpy(name, d)
        if m.dtype != bool:  # weights: a bool mask is the 0/1 case
            _first_bad(name, m, ~(np.isfinite(m) & (m >= 0)), "a finite non-negative weight")
        return
    for field, value in d._arrays().items():
        arr = to_numpy(f"{name}.{field}", value)
        _check_finite_or_inf(f"{name}.{field}", arr)
        label = f"{name}.{field}"
        if field in ("std", "var"):
            _first_bad(label, arr, ~(arr > 0) | np.isinf(arr), "a positive finite scale")
        elif field in ("log_std", "log_var", "loc"):
            _first_bad(label, arr, np.isinf(arr), "a finite number")
        elif field == "probs":
            _first_bad(label, arr, (arr < 0) | (arr > 1), "a probability in [0, 1]")
            if isinstance(d, Categorical):
                axis = d.axis
                total = arr.sum(axis=axis)
                tol = 1e-6 if str(value.dtype).endswith("float64") else 1e-3
                _first_bad(
                    f"sum of {label} along axis {axis}",
                    total,
                    np.abs(total - 1) > tol,
                    f"1 (within {tol:g})",
                )
        elif field in ("logits", "log_probs"):
            _first_bad(label, arr, arr == np.inf, "a number below +inf")
            if isinstance(d, Categorical) and field == "log_probs":
                m = arr.max(axis=d.axis, keepdims=True)
                with np.errstate(invalid="ignore", over="ignore"):
                    total = np.exp(arr - m).sum(axis=d.axis) * np.exp(m.squeeze(d.axis))
                tol = 1e-6 if str(value.dtype).endswith("float64") else 1e-3
                _first_bad(
                    f"sum of exp({label}) along axis {d.axis}",
                    total,
                    ~(np.abs(total - 1) <= tol),
                    f"1 (within {tol:g})",
                )
            if isinstance(d, Categorical):
                top = arr.max(axis=d.axis)
                _first_bad(
                    f"max of {label} along axis {d.axis}",
                    top,
                    top == -np.inf,
                    "at least one finite entry (a class with positive probability)",
                )
        elif field in ("scale_tril", "covariance", "precision"):
            _check_matrix(label, field, arr)


def _check_matrix(label: str, field: str, arr: np.ndarray) -> None:
    _first_bad(label, arr, np.isinf(arr), "finite entries")
    if field == "scale_tril":
        diag = np.diagonal(arr, axis1=-2, axis2=-1)
        _first_bad(f"diagonal of {label}", diag, ~(diag > 0), "a positive diagonal")
        upper = np.triu(arr, 1)
        _first_bad(label, arr, upper != 0, "zeros above the diagonal (lower-triangular)")
        return
    asym = np.abs(arr - np.swapaxes(arr, -1, -2)) > 1e-8 * np.maximum(1.0, np.abs(arr))
    _first_bad(label, arr, asym, "a symmetric matrix")
    try:
        np.linalg.cholesky(arr)
    except np.linalg.LinAlgError:
        raise KLDivError(
            f"{label}: expected a positive-definite matrix, got one whose "
            "Cholesky factorization fails"
        ) from None
