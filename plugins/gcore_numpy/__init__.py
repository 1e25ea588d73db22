"""gcore_numpy: GC-SGD, GC-Adam and GC-AdamW that update NumPy arrays in place.

>>> import numpy as np
>>> import gcore_numpy
>>> params = {"w": np.ones((4, 3)), "b": np.zeros(4)}
>>> opt = gcore_numpy.SGD(params, lr=0.1, momentum=0.9)
>>> opt.step({"w": np.arange(12.0).reshape(4, 3), "b": np.ones(4)})
>>> params["w"].mean(axis=1)  # GC keeps each unit's weight mean
array([1., 1., 1., 1.])
"""

try:
    import numpy  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"gcore_numpy needs NumPy: pip install 'gradient-centralization[numpy]' ({err})"
    ) from err

from ._optimizers import SGD, Adam, AdamW, Optimizer

FRAMEWORK = "numpy"

__all__ = ["FRAMEWORK", "SGD", "Adam", "AdamW", "Optimizer", "devices"]


def devices() -> list[str]:
    """NumPy computes on the host CPU only."""
    return ["cpu"]
