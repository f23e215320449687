"""Shared fixtures: the ``xp`` fixture runs a test on numpy, array-api-strict, torch and jax.

``backend.call(fn, *arrays)`` runs ``fn`` eagerly, except on JAX where it runs under ``jax.jit``
(so every core test is also a tracing test). ``backend.np(x)`` reads a result back into NumPy
after checking that it is an array of the backend's own library.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

# Deterministic property tests in CI (the same examples every run); set
# HYPOTHESIS_PROFILE=explore locally to search new random examples.
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

BACKENDS = ["numpy", "array_api_strict", "torch", "jax"]

if importlib.util.find_spec("jax") is not None:
    import jax

    jax.config.update("jax_enable_x64", True)


class Backend:
    """One array library, as the tests see it."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "numpy":
            import array_api_compat.numpy as xp
        elif name == "array_api_strict":
            xp = pytest.importorskip("array_api_strict")
        elif name == "torch":
            pytest.importorskip("torch")
            import array_api_compat.torch as xp
        else:
            pytest.importorskip("jax")
            import jax.numpy as xp
        self.xp = xp

    def __repr__(self) -> str:
        return self.name

    def dtype(self, name: str) -> Any:
        if name == "bfloat16":
            if self.name == "torch":
                import torch

                return torch.bfloat16
            if self.name == "jax":
                import jax.numpy as jnp

                return jnp.bfloat16
            pytest.skip(f"{self.name} has no bfloat16")
        if name == "float16" and self.name == "array_api_strict":
            pytest.skip("array-api-strict has no float16")
        return getattr(self.xp, name)

    def asarray(self, x: Any, dtype: str = "float64") -> Any:
        if self.name == "torch":
            import torch

            return torch.as_tensor(np.asarray(x, dtype=np.float64)).to(self.dtype(dtype))
        if dtype in ("float16", "bfloat16"):
            arr = self.xp.asarray(np.asarray(x, dtype=np.float32))
            return self.xp.astype(arr, self.dtype(dtype))
        return self.xp.asarray(np.asarray(x, dtype=np.float64), dtype=self.dtype(dtype))

    def bool(self, x: Any) -> Any:
        if self.name == "torch":
            import torch

            return torch.as_tensor(np.asarray(x, dtype=bool))
        return self.xp.asarray(np.asarray(x, dtype=bool))

    def call(self, fn: Any, *args: Any) -> Any:
        if self.name == "jax":
            import jax

            return jax.jit(fn)(*args)
        return fn(*args)

    def np(self, x: Any) -> np.ndarray:
        assert self.is_own(x), f"expected a {self.name} array, got {type(x)}"
        if self.name == "torch":
            return x.detach().cpu().double().numpy()
        if self.name == "array_api_strict":
            return np.asarray(x._array, dtype=np.float64)
        return np.asarray(x, dtype=np.float64)

    def is_own(self, x: Any) -> bool:
        mod = type(x).__module__.split(".")[0]
        return {
            "numpy": mod == "numpy",
            "torch": mod == "torch",
            "jax": mod in ("jax", "jaxlib"),
            "array_api_strict": mod == "array_api_strict",
        }[self.name]

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype).rsplit(".", 1)[-1]


@pytest.fixture(params=BACKENDS)
def xp(request: pytest.FixtureRequest) -> Backend:
    return Backend(request.param)
