"""gcore: Gradient Centralization for every Python array library.

The core is written once against the Python array API standard: it imports no array
library and works on NumPy, PyTorch, JAX, CuPy and any other compliant namespace.
Framework conventions live in the plugins (``gcore_numpy``, ``gcore_torch``, ...).
"""

from . import diagnostics, plugins
from ._version import __version__
from .centralize import centralize, normalize_axis, reduction_axes
from .layout import LAYOUTS, output_axis, unit_size
from .plugins import plugin
from .projection import project, projection_matrix, unit_vector
from .reproject import reproject
from .rules import GC, SGD, Adam, AdamState, AdamW, SGDState

__all__ = [
    "GC",
    "LAYOUTS",
    "SGD",
    "Adam",
    "AdamState",
    "AdamW",
    "SGDState",
    "__version__",
    "centralize",
    "diagnostics",
    "normalize_axis",
    "output_axis",
    "plugin",
    "plugins",
    "project",
    "projection_matrix",
    "reduction_axes",
    "reproject",
    "unit_size",
    "unit_vector",
]
