"""The one place gcore imports array-api-compat.

Swapping or vendoring it is a one-file change.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
from array_api_compat import array_namespace, device, is_jax_array, size

__all__ = [
    "Array",
    "Namespace",
    "array_api_compat",
    "array_namespace",
    "check_floating",
    "device",
    "is_complex",
    "is_jax_array",
    "size",
]

Array = Any
Namespace = Any


def check_floating(
    x: Array, xp: Namespace, name: str = "gradient", *, complex_ok: bool = True
) -> None:
    """Raise ``TypeError`` unless ``x`` has a floating-point dtype.

    Complex dtypes are accepted unless ``complex_ok=False``: centralizing a complex unit
    (subtracting its complex mean) is the same orthogonal projection, applied to the real
    and imaginary parts alike.
    """
    kinds = ("real floating", "complex floating") if complex_ok else "real floating"
    if not xp.isdtype(x.dtype, kinds):
        allowed = "float16, bfloat16, float32, float64" + (
            ", complex64 or complex128" if complex_ok else ""
        )
        raise TypeError(
            f"{name} has dtype {x.dtype}; Gradient Centralization needs a "
            f"floating-point array ({allowed})"
        )


def is_low_precision(dtype: Any, xp: Namespace) -> bool:
    """True for float16 / bfloat16, whose means gcore accumulates in float32."""
    if xp.isdtype(dtype, "complex floating"):
        return False
    return xp.finfo(dtype).bits < 32


def is_complex(x: Array, xp: Namespace) -> bool:
    """True for an array of a complex floating dtype."""
    return bool(xp.isdtype(x.dtype, "complex floating"))
