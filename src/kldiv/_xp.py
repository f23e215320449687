"""Array namespaces, dtype policy and the special functions the array API standard lacks.

Everything framework-specific in the core goes through this module: the closed forms only call
the functions of the array API standard on the namespace returned here, plus the helpers below.
Nothing here imports torch or jax at module import time.

The numerically delicate primitives live here, once:

- :func:`log_ratio` -- ``log(x / y)`` for positive ``x, y``, accurate when ``x`` is close to ``y``
  (no difference of separately rounded logs) and when ``x / y`` over- or underflows;
- :func:`weighted_phi` -- ``w * (exp(x) - 1 - x)``, accurate for small ``|x|`` (series), free of
  overflow when ``w`` is tiny and ``x`` huge, and with finite gradients everywhere its value is
  finite.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .errors import KLDivError, bad, describe

#: Python scalars and sequences of them are "weak": they take the dtype and namespace of the
#: arrays they meet, as in NumPy 2 / the array API standard.
_WEAK_TYPES = (int, float)


def library_of(x: Any) -> str | None:
    """Name of the array library ``x`` belongs to, or ``None`` for Python numbers and lists."""
    if isinstance(x, bool):
        return "bool"
    if type(x) in (int, float, list, tuple):
        return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    if isinstance(x, (np.ndarray, np.generic)):
        return "numpy"
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array):
        return "jax"
    if isinstance(x, _WEAK_TYPES):
        return None
    if hasattr(x, "__array_namespace__"):
        return type(x).__module__
    return "unknown"


def namespace_for(library: str | None, example: Any = None) -> Any:
    """The array-API namespace for a library name (as returned by :func:`library_of`)."""
    if library is None or library == "numpy":
        import array_api_compat.numpy as np_xp

        return np_xp
    if library == "torch":
        import array_api_compat.torch as torch_xp

        return torch_xp
    if library == "jax":
        import jax.numpy as jnp

        return jnp
    return example.__array_namespace__()


def xp_of(x: Any) -> Any:
    """The namespace of one array (used inside formulas, where inputs are already checked)."""
    return namespace_for(library_of(x), x)


def common_namespace(named: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The one namespace of the arrays in ``named``; a ``KLDivError`` if libraries are mixed.

    Python numbers and lists don't count: they adopt the namespace of the arrays (NumPy when
    there are none). Anything that is not a number, a list or an array raises.
    """
    seen: dict[str, str] = {}
    example = None
    for name, value in named.items():
        lib = library_of(value)
        if lib == "bool":
            raise bad(name, "a floating-point number or array", f"the bool {value!r}")
        if lib == "unknown":
            raise bad(
                name,
                "a NumPy, PyTorch, JAX or array-API array, or a Python number",
                describe(value),
            )
        if lib is None:
            continue
        if seen and lib not in seen:
            ((other_lib, other_name),) = list(seen.items())[:1]
            raise KLDivError(
                f"{name}: expected an array of the same library as {other_name} ({other_lib}), "
                f"got a {lib} array; convert one of them first"
            )
        seen.setdefault(lib, name)
        example = value if example is None else example
    lib = next(iter(seen), None)
    return namespace_for(lib, example), lib


def is_half(dtype: Any) -> bool:
    """True for float16 and bfloat16 in any library."""
    name = str(dtype)
    return name.endswith("float16")


def _is_real_floating(xp: Any, dtype: Any) -> bool:
    if is_half(dtype):
        return True
    if "torch" in str(dtype):
        return bool(dtype.is_floating_point)
    try:
        return bool(xp.isdtype(dtype, "real floating"))
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - exotic namespaces
        return "float" in str(dtype) and "complex" not in str(dtype)


def float_dtypes(xp: Any, named: Mapping[str, Any]) -> tuple[Any, Any]:
    """The (compute, output) dtypes for the floating-point arrays in ``named``.

    Integer, boolean and complex arrays raise a ``KLDivError`` naming the argument. Arrays of
    several floating dtypes promote as the array API says (float32 with float64 gives float64).
    Half precision (float16, bfloat16) is computed in float32 and returned in its own dtype.
    With no arrays at all, both dtypes are float64.
    """
    dtypes = []
    for name, value in named.items():
        if library_of(value) is None:
            continue
        dtype = value.dtype
        if not _is_real_floating(xp, dtype):
            raise bad(name, "a real floating-point array", f"an array of dtype {dtype}")
        dtypes.append(dtype)
    if not dtypes:
        return xp.float64, xp.float64
    halves = {str(d) for d in dtypes if is_half(d)}
    full = [d for d in dtypes if not is_half(d)]
    if full:
        out = full[0]
        for d in full[1:]:
            out = xp.result_type(out, d)
        return out, out
    if len(halves) == 1:
        return xp.float32, dtypes[0]
    # float16 with bfloat16: no common half type; compute and return float32.
    return xp.float32, xp.float32


def device_of(named: Mapping[str, Any]) -> Any:
    """The one device of the arrays in ``named`` (``None`` for none); mixed devices raise."""
    found = None
    found_name = None
    for name, value in named.items():
        if library_of(value) is None:
            continue
        dev = _device(value)
        if dev is None:  # a JAX tracer has no device of its own
            continue
        if found is None:
            found, found_name = dev, name
        elif dev != found:
            raise KLDivError(
                f"{name}: expected an array on {found_name}'s device {found}, got {dev}"
            )
    return found


def has_float64(xp: Any, device: Any) -> bool:
    """Whether float64 arrays can be made here (not in JAX without x64, nor on Apple's MPS)."""
    if "mps" in str(device):
        return False
    if getattr(xp, "__name__", "") == "jax.numpy":
        import jax

        return bool(jax.config.jax_enable_x64)
    return True


def _device(x: Any) -> Any:
    if library_of(x) in ("torch", "numpy"):
        return getattr(x, "device", "cpu")  # no array-api-compat helpers: torch.compile traces this
    from array_api_compat import device

    return device(x)


def as_float(xp: Any, value: Any, dtype: Any, device: Any) -> Any:
    """``value`` as an array of ``dtype`` on ``device``; arrays keep their autograd graph."""
    if library_of(value) is None:
        if device is None:
            return xp.asarray(value, dtype=dtype)
        return xp.asarray(value, dtype=dtype, device=device)
    if value.dtype == dtype:
        return value
    return xp.astype(value, dtype)


def broadcast_shapes(named: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Broadcast the shapes in ``named``; a ``KLDivError`` names the two that clash."""
    result: tuple[int, ...] = ()
    source: dict[int, str] = {}
    for name, shape in named.items():
        shape = tuple(shape)
        ndim = max(len(result), len(shape))
        a = (1,) * (ndim - len(result)) + result
        b = (1,) * (ndim - len(shape)) + shape
        merged = []
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x == y or y == 1:
                merged.append(x)
            elif x == 1:
                merged.append(y)
                source[i - ndim] = name
            else:
                other = source.get(i - ndim, "the other arguments")
                raise KLDivError(
                    f"{name}: expected a shape that broadcasts with {other} "
                    f"(broadcast so far {result}), got shape {shape}"
                )
            if y != 1 and (i - ndim) not in source:
                source[i - ndim] = name
        result = tuple(merged)
    return result


def normalize_axes(
    axes: int | Iterable[int], ndim: int, name: str, shape: tuple
) -> tuple[int, ...]:
    """Non-negative, sorted axes; out-of-range or repeated axes raise naming ``name``."""
    if isinstance(axes, bool):
        raise bad(name, "an int or a tuple of ints", f"the bool {axes!r}")
    if isinstance(axes, (list, tuple)):
        items = tuple(axes)
    else:
        items = (axes,)
    out = []
    for a in items:
        try:
            if isinstance(a, bool):
                raise TypeError
            a = operator.index(a)  # ints and NumPy integers; not floats
        except TypeError:
            raise bad(name, "an int or a tuple of ints", describe(a)) from None
        if not -ndim <= a < ndim:
            raise bad(name, f"an axis in [-{ndim}, {ndim}) for inputs of shape {shape}", str(a))
        a = a % ndim
        if a in out:
            raise bad(name, "distinct axes", f"axis {a} repeated in {axes!r}")
        out.append(a)
    return tuple(sorted(out))


# ----------------------------------------------------------------------------------------------
# Special functions. Every branch gets "safe" inputs so that gradients of the branch not taken
# are finite (a NaN there would leak through `where` into the gradient).
# ----------------------------------------------------------------------------------------------

#: Coefficients of phi(x) / x**2 = sum_{k>=2} x**(k-2) / k!, enough for |x| < 1/4 in float64.
_PHI_SERIES = tuple(1.0 / math.factorial(k) for k in range(2, 16))
_SERIES_LIMIT = 0.25


def _phi_series(xp: Any, x: Any) -> Any:
    acc = _PHI_SERIES[-1]
    for c in reversed(_PHI_SERIES[:-1]):
        acc = acc * x + c
    return acc * x * x


def weighted_phi(xp: Any, w: Any, log_w: Any, x: Any, log_wexp: Any = None) -> Any:
    """``w * phi(x)`` with ``phi(x) = exp(x) - 1 - x >= 0``, accurate and overflow-free.

    ``w`` must be positive and ``log_w`` its logarithm. Three regimes:

    - ``|x| < 1/4``: ``w * x**2 * (1/2 + x/6 + ...)``, a series with no cancellation;
    - ``x < 1``: ``w * (expm1(x) - x)``; for ``x -> -inf`` this is ``+inf`` as it should be;
    - ``x >= 1``: ``w * exp(x) * (1 - exp(log1p(x) - x))``, with ``exp(log_w + x)`` in place of
      ``w * exp(x)`` where ``exp(x)`` alone would overflow (``w`` tiny).

    ``w`` and ``log_w`` may be Python floats. Where the caller knows ``log(w * exp(x))`` more
    accurately than ``log_w + x`` (a categorical's ``log q``), ``log_wexp`` gives it: the
    large-``x`` branch then uses it alone, which also keeps its gradient free of cancellation.
    """
    small = xp.abs(x) < _SERIES_LIMIT
    big = x >= 1.0
    mid = ~(small | big)
    xs = xp.where(small, x, 0.0)
    xm = xp.where(mid, x, -1.0)
    xb = xp.where(big, x, 1.0)
    xf = xp.where(xb < math.inf, xb, 1.0)  # the factor below tends to 1 as x -> inf
    info = xp.finfo(x.dtype)
    direct = xb < math.log(float(info.max))
    if not isinstance(log_w, float):  # a subnormal (or underflowed) w: use its logarithm
        direct = direct & (log_w > math.log(float(info.smallest_normal)))
    xd = xp.where(direct, xb, 1.0)
    lw = log_w if isinstance(log_w, float) else xp.where(big & ~direct, log_w, 0.0)
    v_small = w * _phi_series(xp, xs)
    v_mid = w * (xp.expm1(xm) - xm)
    if log_wexp is not None:
        scale = xp.exp(xp.where(big, log_wexp, 0.0))
    else:
        scale = xp.where(direct, w * xp.exp(xd), xp.exp(lw + xp.where(direct, 1.0, xb)))
    # 1 - exp(u), not -expm1(u): u <= log 2 - 1 here, so no digits are lost, and frameworks
    # differentiate expm1 through its output (expm1(u) + 1), which is 0 in float32 for u < -17.
    v_big = scale * (1.0 - xp.exp(xp.log1p(xf) - xf))
    return xp.where(small, v_small, xp.where(big, v_big, v_mid))


def phi(xp: Any, x: Any) -> Any:
    """``exp(x) - 1 - x``, never negative, accurate to a few ulp for every ``x``.

    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> float(phi(xp, np.asarray(1e-10)))  # expm1(x) - x would lose every digit here
    5.000000000166667e-21
    """
    one = xp.ones_like(x)
    return weighted_phi(xp, one, xp.zeros_like(x), x)


def log_ratio(xp: Any, x: Any, y: Any) -> Any:
    """``log(x / y)`` for positive ``x`` and ``y``.

    Within a factor of two of each other, ``x - y`` is exact (Sterbenz) and the result is
    ``log1p((x - y) / y)``, accurate to a few ulp even when ``x / y`` is ``1 + 1e-15``. Farther
    apart, ``log(x / y)``, or ``log(x) - log(y)`` where ``x / y`` would over- or underflow.

    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> float(log_ratio(xp, np.asarray(1.0 + 2**-40), np.asarray(1.0)))
    9.094947017725146e-13
    """
    near = (x >= 0.5 * y) & (x <= 2.0 * y)
    xn, yn = xp.where(near, x, 1.0), xp.where(near, y, 1.0)
    v_near = xp.log1p((xn - yn) / yn)
    xf, yf = xp.where(near, 1.0, x), xp.where(near, 1.0, y)
    v_logs = xp.log(xf) - xp.log(yf)
    # log(x / y) rounds once where log(x) - log(y) rounds twice, so it gives the value; but
    # frameworks differentiate x / y through (x / y) / y, which overflows for tiny y, so the
    # gradient comes from the difference of logs (the two differ by a constant correction).
    r = xf / yf
    ok = (r >= xp.finfo(r.dtype).smallest_normal) & (r < math.inf)
    correction = xp.where(ok, xp.log(xp.where(ok, r, 1.0)) - v_logs, 0.0)
    v_far = v_logs + stop_gradient(xp, correction)
    return xp.where(near, v_near, v_far)


def log_ratio_of_square(xp: Any, s: Any, v: Any) -> Any:
    """``log(s**2 / v)`` for positive ``s`` and ``v`` (a standard deviation against a variance).

    Near equality ``s**2`` is taken exactly as ``hi + lo`` (Dekker's product), so the result
    keeps its relative accuracy where ``log_ratio(s * s, v)`` would not; elsewhere it is
    ``2 * log_ratio(s, sqrt(v))``.

    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> s = np.float64(1.0 + 2**-30)
    >>> float(log_ratio_of_square(xp, s, s * s))  # s*s rounds: log(s**2 / fl(s**2)) != 0
    8.673617363728164e-19
    """
    hi, lo = two_product(xp, s, s)
    near = (hi >= 0.5 * v) & (hi <= 2.0 * v) & (xp.abs(lo) < math.inf)  # lo: NaN near overflow
    vn = xp.where(near, v, 1.0)
    v_near = xp.log1p(((xp.where(near, hi, 1.0) - vn) + xp.where(near, lo, 0.0)) / vn)
    sf, vf = xp.where(near, 1.0, s), xp.where(near, 1.0, v)
    return xp.where(near, v_near, 2.0 * log_ratio(xp, sf, xp.sqrt(vf)))


def two_product(xp: Any, a: Any, b: Any) -> tuple[Any, Any]:
    """``a * b = hi + lo`` exactly (Dekker, with Veltkamp's splitting for the array's dtype).

    Exact unless ``a * b`` over- or underflows.
    """
    bits = xp.finfo(a.dtype).bits
    splitter = 134217729.0 if bits == 64 else 4097.0  # 2**27 + 1, 2**12 + 1
    hi = a * b
    ca, cb = splitter * a, splitter * b
    ah = ca - (ca - a)
    bh = cb - (cb - b)
    al, bl = a - ah, b - bh
    return hi, (((ah * bh - hi) + ah * bl) + al * bh) + al * bl


def safe_log(xp: Any, x: Any) -> Any:
    """``log(x)`` with ``log(0) = -inf`` and a zero (not NaN) gradient at ``x = 0``; NaN stays
    NaN."""
    zero = x == 0
    return xp.where(zero, -math.inf, xp.log(xp.where(zero, 1.0, x)))


# ----------------------------------------------------------------------------------------------
# Linear algebra. The standard has `xp.linalg.cholesky` but no triangular solve; these helpers
# delegate to each library's own (batched, differentiable, traceable) routine, importing it
# lazily. Batch axes (all but the last two) broadcast between `a` and `b`.
# ----------------------------------------------------------------------------------------------

#: Batched NumPy solves of matrices smaller than this use a vectorized substitution (one Python
#: step per row); larger ones call SciPy's LAPACK routine once per matrix.
_SUBSTITUTION_MAX_K = 64


def cholesky(xp: Any, a: Any) -> Any:
    """The lower Cholesky factor ``L`` (``a = L L^T``) of symmetric positive-definite ``a``.

    ``a`` has shape ``(..., k, k)``. Values are not checked (that would break ``jit``): a matrix
    that is not positive definite raises the library's own error (NumPy, PyTorch) or gives NaN
    (JAX); ``kl(..., validate=True)`` raises a ``KLDivError`` for it instead.
    """
    return xp.linalg.cholesky(a)


def tril(xp: Any, a: Any, k: int = 0) -> Any:
    """``a`` with the entries above its ``k``-th diagonal set to 0 (``(..., n, m)`` arrays)."""
    lib = library_of(a)
    if lib == "torch":
        return a.tril(k)
    if lib == "numpy":
        return np.tril(a, k)
    if lib == "jax":
        import jax.numpy as jnp

        return jnp.tril(a, k)
    rows, cols = a.shape[-2], a.shape[-1]
    dev = _device(a)
    r = xp.arange(rows, device=dev) if dev is not None else xp.arange(rows)
    c = xp.arange(cols, device=dev) if dev is not None else xp.arange(cols)
    keep = (r[:, None] + k) >= c[None, :]
    return xp.where(keep, a, xp.zeros_like(a))


def solve_triangular(xp: Any, a: Any, b: Any, *, lower: bool = True) -> Any:
    """The solution ``x`` of ``a @ x = b`` for triangular ``a`` of shape ``(..., k, k)``.

    ``b`` has shape ``(..., k, m)`` (a matrix; add a trailing axis for a vector); the batch axes
    of ``a`` and ``b`` broadcast. Only the ``lower`` (or upper) triangle of ``a`` is read.
    PyTorch uses ``torch.linalg.solve_triangular``, JAX ``jax.scipy.linalg.solve_triangular``
    (both differentiable and traceable), NumPy SciPy's LAPACK routine or, for batches of small
    matrices, a vectorized substitution; other array-API libraries ``xp.linalg.solve`` on the
    triangle of ``a``.

    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> solve_triangular(xp, np.array([[2.0, 0.0], [1.0, 4.0]]), np.array([[2.0], [9.0]]))
    array([[1.],
           [2.]])
    """
    lib = library_of(a)
    if lib == "torch":
        import torch

        return torch.linalg.solve_triangular(a, b, upper=not lower)
    if lib == "numpy" and library_of(b) == "numpy":
        return _solve_triangular_numpy(a, b, lower)
    # JAX reads a `b` of one dimension less than `a` as a batch of vectors: broadcast first.
    batch = broadcast_shapes({"a": tuple(a.shape[:-2]), "b": tuple(b.shape[:-2])})
    a = xp.broadcast_to(a, batch + tuple(a.shape[-2:]))
    b = xp.broadcast_to(b, batch + tuple(b.shape[-2:]))
    if lib == "jax":
        import jax.scipy.linalg

        return jax.scipy.linalg.solve_triangular(a, b, lower=lower)
    a = tril(xp, a) if lower else xp.matrix_transpose(tril(xp, xp.matrix_transpose(a)))
    return xp.linalg.solve(a, b)


def _solve_triangular_numpy(a: np.ndarray, b: np.ndarray, lower: bool) -> np.ndarray:
    import scipy.linalg

    if not lower:  # J U J is lower triangular for the exchange matrix J
        return np.flip(_solve_triangular_numpy(np.flip(a, (-2, -1)), np.flip(b, -2), True), -2)
    dtype = np.result_type(a.dtype, b.dtype)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    k, m = a.shape[-1], b.shape[-1]
    if not batch:
        try:
            x = scipy.linalg.solve_triangular(a, b, lower=True, check_finite=False)
        except np.linalg.LinAlgError:  # a zero on the diagonal: inf/NaN, as the batched case
            return _solve_triangular_numpy(a[None], b[None], True)[0]
        return x.astype(dtype, copy=False)
    a = np.broadcast_to(a, (*batch, k, k))
    b = np.broadcast_to(b, (*batch, k, m))
    x = np.empty((*batch, k, m), dtype=dtype)
    if k < _SUBSTITUTION_MAX_K:
        return _substitute(a, b, x)
    for idx in np.ndindex(*batch):
        try:
            x[idx] = scipy.linalg.solve_triangular(a[idx], b[idx], lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            x[idx] = _substitute(a[idx][None], b[idx][None])[0]
    return x


def _substitute(a: np.ndarray, b: np.ndarray, x: Any = None) -> np.ndarray:
    """Forward substitution, vectorized over the batch and columns (a zero pivot gives inf/NaN
    rather than an error)."""
    if x is None:
        x = np.empty(np.broadcast_shapes((*a.shape[:-1], b.shape[-1]), b.shape), dtype=b.dtype)
    with np.errstate(all="ignore"):
        for i in range(a.shape[-1]):
            s = b[..., i, :] - (a[..., i : i + 1, :i] @ x[..., :i, :])[..., 0, :]
            x[..., i, :] = s / a[..., i, i, None]
    return x


def stop_gradient(xp: Any, x: Any) -> Any:
    """``x`` as a constant for automatic differentiation (PyTorch, JAX); ``x`` itself otherwise."""
    lib = library_of(x)
    if lib == "torch":
        return x.detach()
    if lib == "jax":
        import jax

        return jax.lax.stop_gradient(x)
    return x


def _two_sum(a: Any, b: Any) -> tuple[Any, Any]:
    """``a + b = s + err`` exactly (Knuth), ``s`` the rounded sum."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _next_power_two(xp: Any, p: Any) -> Any:
    """``2**ceil(log2(p))`` for ``p >= 0`` (0 for 0), by exact arithmetic (Rump et al.)."""
    q = p * 2.0**53
    out = xp.abs((q + p) - q)
    return xp.where(out == 0, p, out)


#: Slices per entry in :func:`gram_residual` (each carries 53 - rho >= 20 bits for k <= 2**13).
_SLICES = 4


def gram_residual(xp: Any, a: Any, low: Any) -> Any:
    """``a - low @ low^T`` for float64 arrays, as if computed in about twice the precision.

    The residual of a Cholesky factorization is of the order of its rounding errors, so a plain
    float64 ``a - low @ low.T`` has no correct digits. Here (Ozaki's scheme) each row of ``low`` is
    cut into slices on a fixed-point grid, ``low = X_1 + ... + X_4 + (negligible)``, so coarse
    that every matrix product ``X_a @ X_b^T`` is exact in float64 whatever the summation order;
    ``a`` minus those products is then summed with compensation (Knuth's two-sum). Shapes
    ``(..., k, k)``; ``a`` need not be symmetric. Entries beyond about ``1e290`` overflow.

    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> a, low = np.array([[2.0]]), np.array([[np.sqrt(2.0)]])
    >>> print(f"{gram_residual(xp, a, low)[0, 0]:.6e}")  # 2 - fl(sqrt 2)**2 (plain: -4.44e-16)
    -2.734323e-16
    """
    k = low.shape[-1]
    rho = math.ceil((53 + math.log2(max(k, 1))) / 2)  # sums of k slice products stay exact
    sigma = _next_power_two(xp, xp.max(xp.abs(low), axis=-1, keepdims=True)) * 2.0**rho
    slices = []
    rest = low
    for _ in range(_SLICES):
        x = (sigma + rest) - sigma  # rest rounded to the grid of sigma: exact, and so is rest - x
        rest = rest - x
        slices.append(x)
        sigma = sigma * 2.0 ** (rho - 53)
    t = [xp.matrix_transpose(x) for x in slices]
    s = a - xp.zeros_like(low)  # a copy in the broadcast shape
    c = xp.zeros_like(s)
    for order in range(_SLICES):  # the products X_i X_j^T with i + j = order, largest first
        for i in range(order // 2 + 1):
            prod = slices[i] @ t[order - i]
            terms = [prod] if 2 * i == order else [prod, xp.matrix_transpose(prod)]
            for term in terms:
                s, err = _two_sum(s, -term)
                c = c + err
    return s + c


# ----------------------------------------------------------------------------------------------
# Branch-free forms for the fast path. They are evaluated inside `closed_form` (below), which
# supplies the gradient from each family's own formula, so they need no gradient of their own:
# no `where` with safe inputs, only arithmetic, `maximum` and `copysign`, one pass each.
# ----------------------------------------------------------------------------------------------

#: ``expm1``'s relative error bound, by library and precision (bits): twice what was measured
#: (`tests/test_xp.py` measures each backend against it): SLEEF (torch CPU) and glibc 1 ulp,
#: NumPy 2.3 ulp in float32, XLA 4.4 ulp in float32 and 3 ulp in float64; CUDA documents 1 ulp.
_EXPM1_ERROR = {
    ("torch", 24): 2 * 2.0**-23,
    ("torch", 53): 2 * 2.0**-52,
    ("numpy", 24): 5 * 2.0**-23,
    ("numpy", 53): 2 * 2.0**-52,
    ("jax", 24): 9 * 2.0**-23,
    ("jax", 53): 6 * 2.0**-52,
}
_EXPM1_ERROR_OTHER = {24: 9 * 2.0**-23, 53: 6 * 2.0**-52}


#: phi(x) = exp(x) - 1 - x = sum_{k>=2} x**k / k!, truncated after an odd power: the remainder
#: exp(xi) x**8 / 8! is >= 0 for every real x, so the polynomial never exceeds phi.
_PHI_LOWER = tuple(1.0 / math.factorial(k) for k in range(2, 8))


def _precision(xp: Any, x: Any) -> int:
    return 53 if x.dtype == xp.float64 else 24


def phi_fast(xp: Any, x: Any, e: Any = None) -> Any:
    r"""``phi(x) = exp(x) - 1 - x`` without a branch: the larger of two lower estimates.

    - the Taylor polynomial through ``x**7``, a lower bound of phi for every real ``x`` (its
      remainder is ``e^xi x^8 / 8! >= 0``), accurate for ``|x|`` below about 0.5 (float32) or
      0.03 (float64);
    - ``expm1(x) - x`` less a bound on its rounding error (``expm1``'s relative error, twice
      what was measured, times ``|expm1(x)|``), accurate where ``|x|`` is not small (the bias
      costs a few ulp).

    Where one is accurate the other is not larger, so the maximum is accurate everywhere: relative
    error below 4e-6 in float32 and 1e-13 in float64 (tested against mpmath on every backend),
    never negative, ``+inf`` for ``x = +-inf``, NaN only for NaN. ``e``, if given, is
    ``expm1(x)``, which callers reuse for gradients. Temporaries are updated in place where the
    backend allows it.

    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> float(phi_fast(xp, np.asarray(1e-10)))
    5.000000000166667e-21
    """
    if e is None:
        e = xp.expm1(x)
    bits, lib = _precision(xp, x), library_of(x)
    if lib == "numpy":
        shape = np.shape(x)
        return _phi_numpy(np.atleast_1d(x), np.atleast_1d(e), bits).reshape(shape)
    if lib.startswith("array_api_strict"):  # NumPy underneath
        lib = "numpy"
    kappa = _EXPM1_ERROR.get((lib, bits), _EXPM1_ERROR_OTHER[bits])
    if is_concrete(x):
        direct = e - x  # x = +inf or an overflowed e give NaN here: refine() takes those over
    else:  # traced: x and |e| held finite, so that they give +inf instead
        big = float(xp.finfo(x.dtype).max)
        direct = e - xp.clip(x, max=big)
        e = xp.clip(e, max=big)
    if lib == "torch":
        direct.sub_(e.abs(), alpha=kappa)
    else:
        direct -= kappa * xp.abs(e)
    coef = _PHI_LOWER
    if library_of(x) == "torch":  # Horner by fused multiply-adds with cached constants
        import torch

        cs = _torch_constants(coef, x.dtype, x.device)
        acc = torch.addcmul(cs[-2], x, cs[-1])
        for c in reversed(cs[:-2]):
            acc = torch.addcmul(c, acc, x)
    else:
        acc = x * coef[-1]
        acc += coef[-2]
        for c in reversed(coef[:-2]):
            acc *= x
            acc += c
    acc *= x
    acc *= x
    return xp.maximum(acc, direct)


_CONSTANTS: dict = {}


def _torch_constants(values: tuple, dtype: Any, device: Any) -> tuple:
    """``values`` as 0-d tensors, made once per dtype and device (outside compile)."""
    import torch

    if torch.compiler.is_compiling():
        return tuple(torch.tensor(v, dtype=dtype, device=device) for v in values)
    key = (values, dtype, device)
    found = _CONSTANTS.get(key)
    if found is None:
        found = tuple(torch.tensor(v, dtype=dtype, device=device) for v in values)
        _CONSTANTS[key] = found
    return found


#: NumPy: |x| below which phi comes from the series (on those elements only), above which from
#: expm1(x) - x; both are accurate on either side of it (to 1e-6 in float32, 2e-14 in float64).
_NUMPY_SERIES_BELOW = {24: 0.5, 53: 0.03}


def _phi_numpy(x: np.ndarray, e: np.ndarray, bits: int) -> np.ndarray:
    """:func:`phi_fast` for NumPy, where each regime can be evaluated on its own elements."""
    out = e - np.minimum(x, np.finfo(x.dtype).max)
    small = np.abs(x) < _NUMPY_SERIES_BELOW[bits]
    if small.any():
        xs = x[small]
        acc = xs * _PHI_LOWER[-1] + _PHI_LOWER[-2]
        for c in reversed(_PHI_LOWER[:-2]):
            acc *= xs
            acc += c
        out[small] = acc * xs * xs
    return out


def log_ratio_fast(xp: Any, x: Any, y: Any) -> Any:
    """``log(x / y)`` for positive ``x, y``, without a branch: ``±log1p(|x - y| / min(x, y))``.

    ``x - y`` is exact when the two are within a factor of two (Sterbenz) and a relative rounding
    otherwise, so the result keeps its relative accuracy both near ``x = y`` and far from it;
    ``x = 0`` gives ``-inf``, ``y = 0`` gives ``+inf``.

    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> float(log_ratio_fast(xp, np.asarray(1.0 + 2**-40), np.asarray(1.0)))
    9.094947017725146e-13
    """
    diff = x - y
    return xp.copysign(xp.log1p(xp.abs(diff) / xp.minimum(x, y)), diff)


# ----------------------------------------------------------------------------------------------
# A closed form with its own gradient. Each family writes, once, a function
#
#     fn(xp, *args, need=(bool, ...), smooth=False) -> (value, partials)
#
# whose ``partials[i]`` is d value / d args[i] (None where ``need[i]`` is False), with the
# value's (broadcast) shape followed by the event axes the value sums over (a categorical's class
# axis, a multivariate normal's event axes), which are the arrays' last ones; the chain rule
# broadcasts the incoming gradient along them. ``smooth=True`` asks for partials that autodiff
# can differentiate again (no kinks such as `log_ratio_fast`'s |x - y| at x = y), with no
# in-place updates. `closed_form` makes them the
# gradient on every backend: a `torch.autograd.Function` (`kldiv._torch_ops`, which recomputes
# the partials with autograd recording when a second derivative is asked for, so the Hessian is
# the formula's too), a `jax.custom_jvp` (forward and reverse mode, any order), and a plain call
# elsewhere. Autodiff then never differentiates through the branches of the value.
#
# ``fn`` may return a third item, ``aux``, an array with no gradient (a flag per distribution).
# ----------------------------------------------------------------------------------------------


def closed_form(xp: Any, fn: Any, args: tuple) -> Any:
    """``fn``'s value, with ``fn``'s partials as its gradient (see the comment above).

    ``fn`` may return a third item, ``aux``: an array that carries no gradient (a flag per
    distribution, say); the result is then ``(value, aux)``.
    """
    lib = library_of(args[0])
    if lib == "torch":
        import torch

        if torch.is_grad_enabled() and any(a.requires_grad for a in args):
            from ._torch_ops import ClosedForm

            return ClosedForm.apply(fn, *args)
        from ._torch_ops import call

        res = call(fn, args, (False,) * len(args))
        return (res[0], res[2]) if len(res) == 3 else res[0]
    elif lib == "jax":
        return _jax_closed_form()(fn, *args)
    res = fn(xp, *args, need=(False,) * len(args))
    return (res[0], res[2]) if len(res) == 3 else res[0]


_JAX_FN: list = []


def _jax_closed_form() -> Any:
    if _JAX_FN:
        return _JAX_FN[0]
    import functools

    import jax
    import jax.numpy as jnp

    @functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
    def closed(fn: Any, *args: Any) -> Any:
        res = fn(jnp, *args, need=(False,) * len(args))
        return (res[0], res[2]) if len(res) == 3 else res[0]

    def jvp(fn: Any, primals: tuple, tangents: tuple) -> tuple:
        zero = jax.custom_derivatives.SymbolicZero
        need = tuple(not isinstance(t, zero) for t in tangents)
        res = fn(jnp, *primals, need=need, smooth=True)
        value, partials = res[0], res[1]
        out = None
        for p, t in zip(partials, tangents, strict=True):
            if p is None:
                continue
            term = p * t
            extra = term.ndim - value.ndim  # the event axes the value sums, last
            if extra > 0:
                term = jnp.sum(term, axis=tuple(range(-extra, 0)))
            term = jnp.broadcast_to(term, value.shape)
            out = term if out is None else out + term
        if out is None:
            out = jnp.zeros_like(value)
        if len(res) == 3:
            aux = res[2]
            return (value, aux), (out, np.zeros(aux.shape, dtype=jax.dtypes.float0))
        return value, out

    closed.defjvp(jvp, symbolic_zeros=True)
    _JAX_FN.append(closed)
    return closed


# ----------------------------------------------------------------------------------------------
# Refinement: a fast value where it vouches for itself, the exact evaluation elsewhere. Rare
# regimes (infinities, point masses, nearly equal categoricals) must not charge the common path:
# eagerly, the exact evaluation runs only on the entries that need it (and a fully finite,
# accepted result costs one check); under tracing, `lax.cond` / `torch.cond` run it only when
# some entry needs it.
# ----------------------------------------------------------------------------------------------


def is_concrete(x: Any) -> bool:
    """Whether ``x``'s values can be read here (not a tracer, not under torch.compile)."""
    lib = library_of(x)
    if lib == "numpy":
        return True
    if lib == "torch":
        import torch

        if torch.compiler.is_compiling():
            return False
        return not torch._C._functorch.is_functorch_wrapped_tensor(x)
    return False


def all_finite(xp: Any, x: Any) -> bool:
    """Whether the non-negative array ``x`` is finite everywhere: one sum, read on the host."""
    total = xp.sum(x)
    if library_of(total) == "torch":
        total = total.detach()
    return math.isfinite(float(total))


def evaluate(
    xp: Any,
    fn: Any,
    args: tuple,
    exact: Any,
    full_shape: tuple,
    *,
    refit: bool = True,
    traced_exact: bool = True,
) -> Any:
    """A fast closed form ``fn`` (see :func:`closed_form`) where it vouches for its value, the
    exact evaluation ``exact`` elsewhere.

    ``fn`` returns ``(value, partials)`` or ``(value, partials, ok)``; without ``ok``, a value is
    kept where it is finite. ``value`` has the per-distribution shape ``S``; ``args`` broadcast to
    ``full_shape`` (``S`` plus trailing event axes), and ``exact`` maps arrays of shape
    ``(n, *event)`` (or ``full_shape``) to their ``n`` (or ``S``) values.

    - Eagerly (NumPy, PyTorch outside compile): ``exact`` runs on the entries not kept only, and
      autograd differentiates it there. With ``refit``, the kept entries are evaluated again on
      their own when some are not finite, so that a discarded entry's gradient (maybe NaN) never
      meets theirs; without it ``fn`` must give finite partials where it is not kept.
    - Traced (JAX, torch.compile) and other libraries: the selection happens inside the custom
      gradient, ``lax.cond`` running ``exact`` only when some entry needs it; the gradient there
      is the exact evaluation's too. ``traced_exact=False``: ``fn`` itself gives the exact
      evaluation's values when traced (a family whose edges are a few fused ``where``), which
      spares the ``cond`` (under reverse mode it keeps the values and partials in memory).
    """
    lib = library_of(args[0])
    if lib in ("numpy", "torch") and is_concrete(args[0]):
        res = closed_form(xp, fn, args)
        value, ok = res if isinstance(res, tuple) else (res, None)
        if ok is None:
            if all_finite(xp, value):  # terms are >= 0: a finite sum, all finite
                return value
            ok = xp.isfinite(value)
        elif bool(xp.all(ok)):
            return value
        if value.ndim == 0 or not bool(xp.any(ok)):
            full = [xp.broadcast_to(a, full_shape) for a in args]
            return xp.astype(exact(*full), value.dtype)
        bad = ~ok
        fixed = exact(*[xp.broadcast_to(a, full_shape)[bad] for a in args])
        if lib == "numpy":
            out = np.array(value, copy=True)
            out[bad] = fixed
            return out
        fixed = fixed.to(value.dtype)
        if refit and value.requires_grad:
            kept = closed_form(xp, fn, tuple(xp.broadcast_to(a, full_shape)[ok] for a in args))
            kept = kept[0] if isinstance(kept, tuple) else kept
            value = xp.zeros_like(value).index_put((ok,), kept)
        return value.index_put((bad,), fixed)
    if not traced_exact:
        res = closed_form(xp, fn, args)
        return res[0] if isinstance(res, tuple) else res
    return closed_form(xp, _selecting(fn, exact, full_shape), args)


def _selecting(fn: Any, exact: Any, full_shape: tuple) -> Any:
    """``fn`` with the exact evaluation selected inside it (traced and other backends).

    The entries not kept take the exact evaluation's value and its gradient (by autodiff of
    ``exact``, computed inside the custom gradient's forward, so that no residual of it is kept);
    ``lax.cond`` / ``torch.cond`` run all of that only when some entry is not kept.
    """

    def selecting(xp: Any, *args: Any, need: tuple, smooth: bool = False) -> tuple:
        res = fn(xp, *args, need=need, smooth=smooth)
        value, partials = res[0], list(res[1])
        finite = xp.isfinite(value)
        ok = res[2] if len(res) == 3 else finite
        lib = library_of(value)
        if lib not in ("jax", "torch"):  # no autodiff: select the values
            full = [xp.broadcast_to(a, full_shape) for a in args]
            return xp.where(ok, value, xp.astype(exact(*full), value.dtype)), partials
        needed = tuple(i for i, n in enumerate(need) if n)
        if needed:
            partials = finite_partials(xp, value, partials, keep=finite)
        kept = [partials[i] for i in needed]

        def good(value: Any, ok: Any, *rest: Any) -> tuple:
            return (value + 0, *(p + 0 for p in rest[: len(needed)]))

        def bad(value: Any, ok: Any, *rest: Any) -> tuple:
            fast, arrays = rest[: len(needed)], rest[len(needed) :]
            full = [xp.broadcast_to(a, full_shape) for a in arrays]
            out = (xp.where(ok, value, xp.astype(exact(*full), value.dtype)),)
            if not needed:
                return out
            total = lambda *f: xp.sum(exact(*f))  # noqa: E731
            if lib == "jax":
                import jax

                grads = jax.grad(total, argnums=needed)(*full)
            else:
                import torch

                grads = torch.func.grad(total, argnums=needed)(*full)
            for p, g in zip(fast, grads, strict=True):
                k = xp.reshape(ok, (*ok.shape, *(1,) * (p.ndim - ok.ndim)))
                out += (xp.where(k, p, xp.astype(g, p.dtype)),)
            return out

        operands = (value, ok, *kept, *args)
        if lib == "jax":
            import jax

            out = jax.lax.cond(xp.all(ok), good, bad, *operands)
        else:
            import torch

            out = torch.cond(xp.all(ok), good, bad, operands)
        value = out[0]
        for i, p in zip(needed, out[1:], strict=True):
            partials[i] = p
        return value, partials

    return selecting


def finite_partials(xp: Any, value: Any, partials: list, keep: Any = None) -> list:
    """``partials`` with 0 where ``value`` is not finite (or where ``keep`` is False).

    Such entries are replaced by the exact evaluation (:func:`evaluate`), so their incoming
    gradient is 0, and 0 times an infinite or NaN partial would poison the gradient. Eagerly this
    costs one sum when every value is finite; under tracing, one fused ``where`` per partial.
    """
    if keep is None:
        if is_concrete(value) and all_finite(xp, value):
            return partials
        keep = xp.isfinite(value)
    out = []
    for p in partials:
        if p is not None:  # a partial may have trailing event axes the value sums
            k = (
                keep
                if p.ndim == keep.ndim
                else xp.reshape(keep, (*keep.shape, *(1,) * (p.ndim - keep.ndim)))
            )
            p = xp.where(k, p, xp.zeros_like(p))
        out.append(p)
    return out
