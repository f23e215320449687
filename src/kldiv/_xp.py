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
        import array_api_compat.torch as torch_xp  # noqa: I001

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
            raise bad(name, "a NumPy, PyTorch, JAX or array-API array, or a Python number",
                      describe(value))
        if lib is None:
            continue
        if seen and lib not in seen:
            (other_lib, other_name), = list(seen.items())[:1]
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
        if found is None:
            found, found_name = dev, name
        elif dev != found:
            raise KLDivError(f"{name}: expected an array on {found_name}'s device {found}, got {dev}")
    return found


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
        for i, (x, y) in enumerate(zip(a, b)):
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


def normalize_axes(axes: int | Iterable[int], ndim: int, name: str, shape: tuple) -> tuple[int, ...]:
    """Non-negative, sorted axes; out-of-range or repeated axes raise naming ``name``."""
    if isinstance(axes, bool):
        raise bad(name, "an int or a tuple of ints", f"the bool {axes!r}")
    items = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, int):
            raise bad(name, "an int or a tuple of ints", describe(a))
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


def weighted_phi(xp: Any, w: Any, log_w: Any, x: Any) -> Any:
    """``w * phi(x)`` with ``phi(x) = exp(x) - 1 - x >= 0``, accurate and overflow-free.

    ``w`` must be positive and ``log_w`` its logarithm. Three regimes:

    - ``|x| < 1/4``: ``w * x**2 * (1/2 + x/6 + ...)``, a series with no cancellation;
    - ``x < 1``: ``w * (expm1(x) - x)``; for ``x -> -inf`` this is ``+inf`` as it should be;
    - ``x >= 1``: ``exp(log_w + x) * -expm1(log1p(x) - x)``, finite when ``w`` is tiny and
      ``exp(x)`` alone would overflow.
    """
    small = xp.abs(x) < _SERIES_LIMIT
    big = x >= 1.0
    mid = ~(small | big)
    xs = xp.where(small, x, 0.0)
    xm = xp.where(mid, x, -1.0)
    xb = xp.where(big, x, 1.0)
    lw = xp.where(big, log_w, 0.0)
    v_small = w * _phi_series(xp, xs)
    v_mid = w * (xp.expm1(xm) - xm)
    v_big = xp.exp(lw + xb) * -xp.expm1(xp.log1p(xb) - xb)
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
    9.094947017729282e-13
    """
    near = (x >= 0.5 * y) & (x <= 2.0 * y)
    xn = xp.where(near, x, y)
    v_near = xp.log1p((xn - y) / y)
    r = x / y
    tiny = xp.finfo(r.dtype).smallest_normal
    ok = ~near & (r >= tiny) & (r < math.inf)
    v_ratio = xp.log(xp.where(ok, r, 1.0))
    xf = xp.where(near | ok, 1.0, x)
    yf = xp.where(near | ok, 1.0, y)
    v_far = xp.log(xf) - xp.log(yf)
    return xp.where(near, v_near, xp.where(ok, v_ratio, v_far))


def safe_log(xp: Any, x: Any) -> Any:
    """``log(x)`` with ``log(0) = -inf`` and a zero (not NaN) gradient at ``x = 0``."""
    pos = x > 0
    return xp.where(pos, xp.log(xp.where(pos, x, 1.0)), -math.inf)


def softplus(xp: Any, x: Any) -> Any:
    """``log(1 + exp(x))`` without overflow."""
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))


def torch_loaded() -> bool:
    """Whether torch has been imported by someone (kldiv never imports it on its own)."""
    return "torch" in sys.modules
