"""The one exception kldiv raises for bad input, and helpers that word its messages.

Every message names the argument, what was expected and what came, e.g.::

    q.std: expected a floating-point array, got an array of dtype int64
"""

from __future__ import annotations

from typing import Any


class KLDivError(ValueError):
    """Bad input to kldiv: names the argument, what was expected and what came.

    It subclasses ``ValueError`` so that code catching ``ValueError`` keeps working.

    >>> import kldiv
    >>> try:
    ...     kldiv.Normal(0.0)
    ... except kldiv.KLDivError as err:
    ...     print(err)
    Normal: expected exactly one scale keyword of std, var, log_std, log_var; got none
    """


def describe(value: Any) -> str:
    """A short description of ``value`` for an error message (type, shape and dtype)."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        lib = type(value).__module__.split(".")[0]
        return f"{lib} array of shape {tuple(shape)} and dtype {dtype}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def bad(name: str, expected: str, got: str) -> KLDivError:
    """Build the standard message: ``name: expected ..., got ...``."""
    return KLDivError(f"{name}: expected {expected}, got {got}")
