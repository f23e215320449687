"""Calling the user's function safely: backends, timeouts, mutation checks, gradients.

The auditor builds every probe in NumPy float64, hands the function native arrays of the
chosen backend (a fresh copy for each call), and reads the result back as NumPy float64.
Nothing but the user's own function is run.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BACKENDS = ("numpy", "torch", "jax")


class AuditTimeout(Exception):
    """The function did not return within the per-call time limit."""


@dataclass
class Backend:
    """How to hand arrays to the function and read its result back."""

    name: str
    dtype_name: str  # the float dtype the probes are made in

    def native(self, x: np.ndarray, *, requires_grad: bool = False) -> Any:
        """A fresh native array holding ``x`` (NumPy float64 in, backend dtype out)."""
        if self.name == "numpy":
            return np.array(x, dtype=self.dtype_name)
        if self.name == "torch":
            import torch

            t = torch.tensor(np.asarray(x), dtype=getattr(torch, self.dtype_name))
            return t.requires_grad_(True) if requires_grad else t
        import jax.numpy as jnp

        return jnp.asarray(np.asarray(x, dtype=self.dtype_name))

    def round(self, x: np.ndarray) -> np.ndarray:
        """``x`` rounded to the backend dtype and back: the numbers the function really sees."""
        return np.asarray(np.asarray(x, dtype=self.dtype_name), dtype=np.float64)

    def to_numpy(self, y: Any) -> np.ndarray:
        """The function's result as NumPy float64, or raise TypeError for non-arrays."""
        if isinstance(y, (bool, np.bool_)):
            raise TypeError(f"a {type(y).__name__}")
        if isinstance(y, (int, float, np.number)):
            return np.asarray(float(y))
        if isinstance(y, np.ndarray):
            return np.asarray(y, dtype=np.float64)
        mod = type(y).__module__.split(".")[0]
        if mod == "torch":
            return y.detach().cpu().to(dtype=_torch_float64()).numpy()
        if mod in ("jax", "jaxlib"):
            return np.asarray(y, dtype=np.float64)
        raise TypeError(f"a {type(y).__module__}.{type(y).__name__}")

    def output_dtype(self, y: Any) -> str:
        dtype = getattr(y, "dtype", None)
        return str(dtype).replace("torch.", "") if dtype is not None else "float64"


def _torch_float64() -> Any:
    import torch

    return torch.float64


def make_backend(name: str) -> Backend:
    """The backend ``name``; JAX probes are float32 unless x64 mode is on."""
    if name == "jax":
        import jax

        x64 = bool(jax.config.read("jax_enable_x64"))
        return Backend("jax", "float64" if x64 else "float32")
    if name == "torch":
        import torch  # noqa: F401  (fails early if torch is absent)
    return Backend(name, "float64")


def preferred_backends(fn: Callable[..., Any]) -> list[str]:
    """Backends to try: those the function's code names first, then numpy, torch, jax."""
    names = _code_names(fn)
    order = []
    if names & {"torch", "F", "nn"}:
        order.append("torch")
    if names & {"jax", "jnp", "jaxlib"}:
        order.append("jax")
    for other in ("numpy", "torch", "jax"):
        if other not in order:
            order.append(other)
    return [n for n in order if n == "numpy" or n in sys.modules or _importable(n)]


def _code_names(fn: Callable[..., Any]) -> set[str]:
    """Global names used by the function's code and the code objects nested in it."""
    fn = inspect.unwrap(fn) if callable(fn) else fn
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object: its forward (nn.Module) or its __call__
        forward = getattr(type(fn), "forward", None)
        code = getattr(forward, "__code__", None) or getattr(
            vars(type(fn)).get("__call__"), "__code__", None
        )
        if forward is not None and code is not None:
            fn = forward
    names: set[str] = set()
    stack = [code] if code is not None else []
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        names.update(c.co_freevars)
        stack.extend(k for k in c.co_consts if inspect.iscode(k))
    values = dict(getattr(fn, "__globals__", {}) or {})
    closure = getattr(fn, "__closure__", None) or ()
    freevars = code.co_freevars if code is not None else ()
    for name, cell in zip(freevars, closure, strict=False):
        try:
            values[name] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    for n in list(names):
        value = values.get(n)
        if inspect.ismodule(value):
            names.add(value.__name__.split(".")[0])
        elif value is not None and getattr(value, "__module__", None):
            names.add(str(value.__module__).split(".")[0])
    return names


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@dataclass
class Call:
    """One call of the function on one probe."""

    output: np.ndarray | None = None
    dtype: str = "float64"
    error: str | None = None
    trace: str | None = None  # the last frames of the user's traceback, when it raised
    mutated: list[str] = field(default_factory=list)
    seconds: float = 0.0
    se: np.ndarray | None = None  # standard error of ``output`` when it is a mean of many calls


class _Worker:
    """One daemon thread that runs the calls, so that a call can be abandoned at its time limit
    without starting a thread per call."""

    def __init__(self) -> None:
        self._todo: list[Callable[[], None]] = []
        self._ready = threading.Condition()
        self._done = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._todo:
                    self._ready.wait()
                job = self._todo.pop()
            job()
            self._done.set()

    def run(self, job: Callable[[], None], timeout: float) -> bool:
        """Run ``job`` on the thread; False if it did not finish within ``timeout``."""
        self._done.clear()
        with self._ready:
            self._todo.append(job)
            self._ready.notify()
        return self._done.wait(timeout)


class Caller:
    """Calls ``fn`` on NumPy probes through a backend, with a time limit per call."""

    def __init__(
        self,
        fn: Callable[..., Any],
        backend: Backend,
        *,
        timeout: float = 5.0,
        extra: Mapping[str, Any] | None = None,
    ):
        self.fn = fn
        self.backend = backend
        self.timeout = timeout
        self.extra = dict(extra or {})  # the user's own values of further arguments (keywords)
        self.scalars: set[str] = set()  # arguments handed over as Python floats
        self.calls = 0
        self.mutated: set[str] = set()
        self.warnings: dict[str, None] = {}  # the distinct warnings the function raised

    def natives(self, args: Mapping[str, np.ndarray], **kw: Any) -> dict[str, Any]:
        """The probe arrays as the function receives them (Python floats for ``scalars``)."""
        return {
            k: float(np.asarray(v).reshape(-1)[0])
            if k in self.scalars
            else self.backend.native(v, **kw)
            for k, v in args.items()
        }

    def invoke(self, natives: Mapping[str, Any], *, keywords: bool) -> Any:
        """Call the function with the probe arguments and the user's extra ones."""
        if keywords:
            return self.fn(**natives, **self.extra)
        return self.fn(*natives.values(), **self.extra)

    def __call__(self, args: Mapping[str, np.ndarray], *, keywords: bool = False) -> Call:
        natives = self.natives(args)
        arrays = {k: v for k, v in natives.items() if k not in self.scalars}
        before = {k: self.backend.to_numpy(v).copy() for k, v in arrays.items()}
        result: dict[str, Any] = {}

        def target() -> None:
            try:
                result["y"] = self.invoke(natives, keywords=keywords)
            except BaseException as exc:  # the user's code may raise anything
                result["exc"] = exc

        start = time.perf_counter()
        with self.capture_warnings():
            finished = self._worker().run(target, self.timeout)
        seconds = time.perf_counter() - start
        self.calls += 1
        if not finished:
            self._thread = None  # abandoned: it runs on, daemonic, until the process exits
            raise AuditTimeout(f"no result after {self.timeout:g} s")
        call = Call(seconds=seconds)
        for k, v in arrays.items():
            after = self.backend.to_numpy(v)
            if not np.array_equal(after, before[k], equal_nan=True):
                call.mutated.append(k)
                self.mutated.add(k)
        if "exc" in result:
            exc = result["exc"]
            call.error = f"{type(exc).__name__}: {exc}".strip()
            call.trace = user_traceback(exc)
            return call
        try:
            call.output = self.backend.to_numpy(result["y"])
            call.dtype = self.backend.output_dtype(result["y"])
        except TypeError as exc:
            call.error = f"returned {exc}, not an array or a number"
        return call

    def _worker(self) -> _Worker:
        if getattr(self, "_thread", None) is None:
            self._thread = _Worker()
        return self._thread

    @contextlib.contextmanager
    def capture_warnings(self) -> Iterator[None]:
        """Record the function's warnings for the report instead of letting them escape."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            self.warnings.setdefault(f"{w.category.__name__}: {w.message}", None)

    def gradients(
        self,
        args: Mapping[str, np.ndarray],
        weights: np.ndarray,
        *,
        keywords: bool = False,
    ) -> dict[str, np.ndarray]:
        """d(sum(weights * fn(args)))/d(args) by the backend's autograd (torch or jax)."""
        with self.capture_warnings():
            return self._gradients(args, weights, keywords=keywords)

    def _gradients(
        self, args: Mapping[str, np.ndarray], weights: np.ndarray, *, keywords: bool
    ) -> dict[str, np.ndarray]:
        def f(natives: dict[str, Any]) -> Any:
            return self.invoke(natives, keywords=keywords)

        arrays = {k: v for k, v in args.items() if k not in self.scalars}
        fixed = {
            k: float(np.asarray(v).reshape(-1)[0]) for k, v in args.items() if k in self.scalars
        }

        def g(natives: dict[str, Any]) -> Any:
            merged = {k: natives[k] if k in natives else fixed[k] for k in args}
            return f(merged)

        return autograd(self.backend, g, arrays, weights)


_HERE = os.path.dirname(os.path.abspath(__file__))


def user_traceback(exc: BaseException, frames: int = 3) -> str:
    """The last ``frames`` frames of the user's traceback (the auditor's own frames dropped)."""
    stack = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_HERE)]
    lines = traceback.format_list(stack[-frames:])
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip()


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed NumPy's and torch's global generators for the audit; restore them afterwards.

    A function that samples inside (``torch.randn_like``, ``q.rsample()``, ``np.random``) then
    gives the same report on every run, and the caller's random state is left as it was.
    """
    np_state = np.random.get_state()  # noqa: NPY002 (the user's code draws from it)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch = sys.modules.get("torch")
    torch_state = torch.random.get_rng_state() if torch is not None else None
    if torch is not None:
        torch.manual_seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        if torch is not None and torch_state is not None:
            torch.random.set_rng_state(torch_state)


def autograd(
    backend: Backend,
    f: Callable[[dict[str, Any]], Any],
    args: Mapping[str, np.ndarray],
    weights: np.ndarray,
) -> dict[str, np.ndarray]:
    """d(sum(weights * f(args)))/d(args) by the backend's autograd, as NumPy float64.

    ``f`` takes a dict of native arrays; the weights make a non-scalar output a scalar loss.
    """
    names = list(args)
    if backend.name == "torch":
        import torch

        leaves = {k: backend.native(args[k], requires_grad=True) for k in names}
        y = f(leaves)
        w = torch.tensor(weights, dtype=y.dtype).reshape(y.shape)
        grads = torch.autograd.grad((w * y).sum(), list(leaves.values()), allow_unused=True)
        return {
            k: (np.zeros_like(args[k]) if g is None else g.detach().double().numpy())
            for k, g in zip(names, grads, strict=True)
        }
    if backend.name == "jax":
        import jax
        import jax.numpy as jnp

        def loss(*xs: Any) -> Any:
            y = f(dict(zip(names, xs, strict=True)))
            return jnp.sum(jnp.asarray(weights, dtype=y.dtype).reshape(y.shape) * y)

        natives = [backend.native(args[k]) for k in names]
        # one compiled program, not one per primitive: tracing under grad already rules out
        # reading concrete values, so jit adds no restriction
        grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(names)))))(*natives)
        return {k: np.asarray(g, dtype=np.float64) for k, g in zip(names, grads, strict=True)}
    raise NotImplementedError("no autograd on NumPy")


def parameter_names(fn: Callable[..., Any], *, required: bool = False) -> list[str] | None:
    """The function's positional parameter names (or, with ``required``, every parameter
    without a default), or None if it has no inspectable signature."""
    sig = signature(fn)
    if sig is None:
        return None
    params = sig.parameters.values()
    if required:
        return [
            p.name
            for p in params
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``fn``'s signature; for an ``nn.Module`` (or any object whose ``__call__`` takes only
    ``*args, **kwargs``), that of its ``forward``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = {p.kind for p in sig.parameters.values()}
    forward = getattr(fn, "forward", None)
    if kinds <= {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} and callable(
        forward
    ):
        try:
            return inspect.signature(forward)
        except (TypeError, ValueError):
            return sig
    return sig


def required_extras(fn: Callable[..., Any], used: list[str], given: Mapping[str, Any]) -> list[str]:
    """Parameters the function requires beyond the probed ones and those the user gave."""
    sig = signature(fn)
    if sig is None:
        return []
    out = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is not p.empty:
            continue
        if p.name not in used and p.name not in given:
            out.append(p.name)
    return out
