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
    "is_jax_array",
    "size",
]

Array = Any
Namespace = Any


def check_floating(x: Array, xp: Namespace, name: str = "gradient") -> None:
    """Raise ``TypeError`` unless ``x`` has a real floating-point dtype."""
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{name} has dtype {x.dtype}; Gradient Centralization needs a real "
            "floating-point array (float16, bfloat16, float32 or float64)"
        )


def is_low_precision(dtype: Any, xp: Namespace) -> bool:
    """True for float16 / bfloat16, whose means gcore accumulates in float32."""
    return xp.finfo(dtype).bits < 32
