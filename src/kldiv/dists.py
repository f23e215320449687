"""The spec classes: each holds arrays and says how to read them.

A spec does no work: building one checks only which keywords were given (a static fact), never
reads values, and works on NumPy, PyTorch and JAX arrays alike (including under ``jax.jit`` and
``torch.compile``). Shapes, dtypes and libraries are checked when the spec meets :func:`kldiv.kl`.
In JAX, every spec is a registered pytree once JAX has been imported.

Parameters are keyword-only except a location, so that the parametrization is visible where it
is used: ``Normal(mu, log_var=lv)`` can't be misread.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from .errors import KLDivError


def _one_of(owner: str, given: dict[str, Any]) -> tuple[str, Any]:
    present = [(k, v) for k, v in given.items() if v is not None]
    if len(present) != 1:
        names = ", ".join(given)
        got = "none" if not present else " and ".join(k for k, _ in present)
        raise KLDivError(
            f"{owner}: expected exactly one {_KIND[owner]} keyword of {names}; got {got}"
        )
    return present[0]


_KIND = {
    "Normal": "scale",
    "MultivariateNormal": "scale",
    "Categorical": "parameter",
    "Bernoulli": "parameter",
}


class Distribution:
    """Base class of the spec types; subclass it to register KL formulas for your own types.

    A subclass lists its array fields in ``_array_fields`` and its static (non-array) fields in
    ``_static_fields``; :func:`kldiv.kl` reads the arrays by name to check libraries, dtypes and
    shapes, and rebuilds the spec with converted arrays through :meth:`_replace`.
    """

    __slots__ = ()
    _array_fields: ClassVar[tuple[str, ...]] = ()
    _static_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        _register_pytree_if_jax_loaded(type(self))

    # -- the protocol kldiv.kl relies on -----------------------------------------------------
    def _arrays(self) -> dict[str, Any]:
        """The array fields, by name (fields that are ``None`` are left out)."""
        return {f: getattr(self, f) for f in self._array_fields if getattr(self, f) is not None}

    def _replace(self, **arrays: Any) -> Distribution:
        """A copy with some array fields replaced, skipping ``__init__`` (no checks, no copies)."""
        new = object.__new__(type(self))
        for f in self._array_fields + self._static_fields:
            object.__setattr__(new, f, arrays.get(f, getattr(self, f)))
        return new

    def _input_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape each array field has in the inputs' layout (what broadcasts together)."""
        return {k: tuple(v.shape) for k, v in self._arrays().items() if hasattr(v, "shape")}

    def _event_axis(self, ndim: int) -> int | None:
        """The axis (of ``ndim`` input axes) that this family sums itself, or ``None``."""
        return None

    def __repr__(self) -> str:
        parts = []
        for f in self._array_fields:
            v = getattr(self, f)
            if v is None:
                continue
            shape = getattr(v, "shape", None)
            parts.append(f"{f}={v!r}" if shape is None else f"{f}=<array {tuple(shape)}>")
        parts += [
            f"{f}={getattr(self, f)!r}"
            for f in self._static_fields
            if f != "param" and not f.endswith("_")
        ]
        return f"{type(self).__name__}({', '.join(parts)})"


class Normal(Distribution):
    r"""A univariate normal distribution, elementwise over the broadcast shape of its arrays.

    Exactly one scale keyword: ``std`` (:math:`\sigma`), ``var`` (:math:`\sigma^2`), ``log_std``
    (:math:`\log\sigma`) or ``log_var`` (:math:`\log\sigma^2`).

    >>> import kldiv
    >>> kldiv.Normal(0.0, log_var=0.0)
    Normal(loc=0.0, log_var=0.0)
    """

    __slots__ = ("loc", "log_std", "log_var", "param", "standard_", "std", "var")
    _array_fields = ("loc", "std", "var", "log_std", "log_var")
    _static_fields = ("param", "standard_")
    SCALES: ClassVar[tuple[str, ...]] = ("std", "var", "log_std", "log_var")

    def __init__(
        self,
        loc: Any,
        *,
        std: Any = None,
        var: Any = None,
        log_std: Any = None,
        log_var: Any = None,
    ) -> None:
        param, _ = _one_of(
            "Normal", {"std": std, "var": var, "log_std": log_std, "log_var": log_var}
        )
        self.loc, self.std, self.var, self.log_std, self.log_var = loc, std, var, log_std, log_var
        self.param = param
        self.standard_ = False
        super().__init__()

    @classmethod
    def standard(cls) -> Normal:
        """N(0, 1); it broadcasts against anything and takes the other side's dtype and library.

        Its scale is exact in every parametrization (std = var = 1, log_std = log_var = 0), so
        ``kl(Normal(mu, log_var=lv), Normal.standard())`` loses nothing to conversions.
        """
        n = cls(0.0, std=1.0)
        n.standard_ = True
        return n

    @property
    def scale(self) -> Any:
        """The one scale array that was given, in its own parametrization (see ``param``)."""
        return getattr(self, self.param)

    def __repr__(self) -> str:
        if self.standard_:
            return "Normal.standard()"
        return super().__repr__()


class MultivariateNormal(Distribution):
    r"""A multivariate normal over the last axis of ``loc`` (the event axis).

    Exactly one of ``scale_tril`` (lower-triangular :math:`L` with :math:`\Sigma = LL^\top`),
    ``covariance`` (:math:`\Sigma`) or ``precision`` (:math:`\Sigma^{-1}`), each of shape
    ``(..., k, k)`` for ``loc`` of shape ``(..., k)``.
    """

    __slots__ = ("covariance", "loc", "param", "precision", "scale_tril")
    _array_fields = ("loc", "scale_tril", "covariance", "precision")
    _static_fields = ("param",)

    def __init__(
        self, loc: Any, *, scale_tril: Any = None, covariance: Any = None, precision: Any = None
    ) -> None:
        param, _ = _one_of(
            "MultivariateNormal",
            {"scale_tril": scale_tril, "covariance": covariance, "precision": precision},
        )
        self.loc, self.scale_tril, self.covariance, self.precision = (
            loc,
            scale_tril,
            covariance,
            precision,
        )
        self.param = param
        super().__init__()

    @property
    def matrix(self) -> Any:
        """The one matrix that was given (see ``param``)."""
        return getattr(self, self.param)

    def _input_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super()._input_shapes()
        m = shapes.get(self.param)
        if m is not None:
            if len(m) < 2 or m[-1] != m[-2]:
                raise KLDivError(
                    f"{self.param}: expected a matrix of shape (..., k, k), got shape {m}"
                )
            shapes[self.param] = m[:-1]
        loc = shapes.get("loc")
        if loc is not None and len(loc) == 0:
            raise KLDivError(
                f"loc: expected an array of shape (..., k) for a "
                f"MultivariateNormal, got shape {loc}"
            )
        if loc is not None and m is not None and loc[-1] != m[-1]:
            raise KLDivError(
                f"{self.param}: expected a ({loc[-1]}, {loc[-1]}) matrix to match "
                f"loc of shape {loc}, got shape {m}"
            )
        return shapes

    def _event_axis(self, ndim: int) -> int | None:
        return ndim - 1


class Categorical(Distribution):
    r"""A discrete distribution over the classes along ``axis`` (default: the last).

    Exactly one of ``probs`` (:math:`p_i`, summing to 1), ``logits`` (any real numbers or
    ``-inf``; :math:`p = \mathrm{softmax}(\text{logits})`) or ``log_probs`` (:math:`\log p_i`,
    normalized again with a log-sum-exp, so slightly unnormalized input is harmless).
    """

    __slots__ = ("axis", "log_probs", "logits", "param", "probs")
    _array_fields = ("probs", "logits", "log_probs")
    _static_fields = ("axis", "param")

    def __init__(
        self, *, probs: Any = None, logits: Any = None, log_probs: Any = None, axis: int = -1
    ) -> None:
        param, _ = _one_of(
            "Categorical", {"probs": probs, "logits": logits, "log_probs": log_probs}
        )
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise KLDivError(f"axis: expected an int, got {type(axis).__name__} {axis!r}")
        self.probs, self.logits, self.log_probs = probs, logits, log_probs
        self.axis = axis
        self.param = param
        super().__init__()

    @property
    def value(self) -> Any:
        """The one array that was given (see ``param``)."""
        return getattr(self, self.param)

    def _event_axis(self, ndim: int) -> int | None:
        own = len(getattr(self.value, "shape", (0,)))
        if own == 0:
            raise KLDivError(
                f"{self.param}: expected an array with a class axis, got a 0-d "
                "array (a single number is not a distribution over classes)"
            )
        if not -own <= self.axis < own:
            raise KLDivError(
                f"axis: expected an axis in [-{own}, {own}) for {self.param} of "
                f"shape {tuple(getattr(self.value, 'shape', ()))}, got {self.axis}"
            )
        return (self.axis % own) + (ndim - own)


class Bernoulli(Distribution):
    r"""A Bernoulli distribution (one coin per element), from ``probs`` :math:`P(X=1)` or
    ``logits`` :math:`\log\frac{P(X=1)}{P(X=0)}`.
    """

    __slots__ = ("logits", "param", "probs")
    _array_fields = ("probs", "logits")
    _static_fields = ("param",)

    def __init__(self, *, probs: Any = None, logits: Any = None) -> None:
        param, _ = _one_of("Bernoulli", {"probs": probs, "logits": logits})
        self.probs, self.logits = probs, logits
        self.param = param
        super().__init__()

    @property
    def value(self) -> Any:
        """The one array that was given (see ``param``)."""
        return getattr(self, self.param)


# ----------------------------------------------------------------------------------------------
# JAX pytrees, registered lazily so that `import kldiv` never imports jax.
# ----------------------------------------------------------------------------------------------
_REGISTERED: set[type] = set()


def _register_pytree_if_jax_loaded(cls: type) -> None:
    if cls in _REGISTERED or "jax" not in sys.modules:
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.compiler.is_compiling():
        return  # torch.compile can't trace JAX's registry; the class is registered eagerly
    register_pytree(cls)


def register_pytree(cls: type) -> None:
    """Register a spec class as a JAX pytree (arrays are children; static fields are aux)."""
    import jax

    if cls in _REGISTERED:
        return
    _REGISTERED.add(cls)
    fields = cls._array_fields
    static = cls._static_fields

    def flatten(d: Distribution) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        return tuple(getattr(d, f) for f in fields), tuple(getattr(d, f) for f in static)

    def unflatten(aux: tuple[Any, ...], children: tuple[Any, ...]) -> Distribution:
        new = object.__new__(cls)
        for f, v in zip(fields, children, strict=False):
            object.__setattr__(new, f, v)
        for f, v in zip(static, aux, strict=False):
            object.__setattr__(new, f, v)
        return new

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)


def register_all_pytrees() -> None:
    """Register every built-in spec class with JAX (done on first use once jax is imported)."""
    for cls in (Normal, MultivariateNormal, Categorical, Bernoulli):
        register_pytree(cls)
