"""gcore_cupy: GC-SGD, GC-Adam and GC-AdamW over CuPy arrays with fused CUDA kernels.

Same interface as :mod:`gcore_numpy` (lists or dicts of arrays, ``step(grads)`` in place,
``state_dict`` / ``load_state_dict``, per-parameter ``axes``). Each step is one reduction
(the per-unit means) and one fused elementwise kernel per tensor.
"""

try:
    import cupy  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "gcore_cupy needs CuPy: pip install 'gradient-centralization[cupy]' "
        f"(cupy-cuda12x) on a machine with a CUDA GPU ({err})"
    ) from err

from ._optimizers import SGD, Adam, AdamW

FRAMEWORK = "cupy"

__all__ = ["FRAMEWORK", "SGD", "Adam", "AdamW", "devices"]


def devices() -> list[str]:
    """The visible CUDA devices as ``"cuda:<i> (<name>)"``; raises when no driver works."""
    import cupy

    out = []
    for i in range(cupy.cuda.runtime.getDeviceCount()):
        name = cupy.cuda.runtime.getDeviceProperties(i)["name"]
        out.append(f"cuda:{i} ({name.decode() if isinstance(name, bytes) else name})")
    return out
