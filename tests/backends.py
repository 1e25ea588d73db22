"""Which array library a test session runs on, chosen by ``GCORE_BACKEND``."""

from __future__ import annotations

import enum
import os


class Backend(enum.Enum):
    NUMPY = "numpy"
    ARRAY_API_STRICT = "array_api_strict"
    TORCH = "torch"
    JAX = "jax"
    CUPY = "cupy"
    DASK = "dask"
    NDONNX = "ndonnx"

    @property
    def modname(self) -> str:
        return {"jax": "jax.numpy", "dask": "dask.array"}.get(self.value, self.value)


def current() -> Backend:
    name = os.environ.get("GCORE_BACKEND", "numpy")
    try:
        return Backend(name)
    except ValueError:
        allowed = ", ".join(b.value for b in Backend)
        raise RuntimeError(f"GCORE_BACKEND={name!r} is unknown; allowed: {allowed}") from None
