"""gcore_keras: Gradient Centralization for Keras 3, on the JAX, PyTorch and TensorFlow backends.

``gcore_keras.SGD``, ``Adam`` and ``AdamW`` are Keras's optimizers (same arguments, same
numbers with ``gc=False``) that centralize each kernel's gradient per output unit with
:func:`gcore.centralize` after Keras's gradient accumulation and clipping, before the
update; :func:`centralized` does the same for any other Keras optimizer. Kernels are
channels-last: the output axis comes from the layer (see :func:`output_axes_for`).

.. code-block:: python

    import keras, gcore_keras
    model.compile(optimizer=gcore_keras.SGD(0.1, momentum=0.9), loss="mse")
    model.fit(x, y)
"""

try:
    import keras
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "gcore_keras needs Keras 3 and one of its backends: pip install "
        "'gradient-centralization[keras]' (that is, pip install 'keras>=3') and jax, torch "
        f"or tensorflow, named by KERAS_BACKEND ({err})"
    ) from err
if not str(getattr(keras, "__version__", "3")).startswith("3"):  # pragma: no cover
    raise ImportError(
        f"gcore_keras needs Keras 3 (pip install 'keras>=3'); found Keras {keras.__version__}"
    )

from ._layout import layout, output_axes_for
from ._optimizers import SGD, Adam, AdamW, centralized

FRAMEWORK = "keras"

__all__ = [
    "FRAMEWORK",
    "SGD",
    "Adam",
    "AdamW",
    "backend",
    "centralized",
    "layout",
    "output_axes_for",
]


def backend() -> str:
    """The Keras backend in use: ``"jax"``, ``"torch"`` or ``"tensorflow"``."""
    return keras.backend.backend()
