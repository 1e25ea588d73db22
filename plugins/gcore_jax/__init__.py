"""gcore_jax: Gradient Centralization as optax transformations, for every JAX layout.

``optax.centralize`` always centralizes along axis 0, which on Flax/Haiku/Keras kernels
(output axis last) is per *input* row; gcore_jax centralizes per output unit of the
``layout`` you name (default ``"flax"``) and provides GC-SGD/Adam/AdamW built on gcore's
core rules. Everything works under ``jax.jit`` and composes with optax's wrappers.

>>> import jax
>>> import jax.numpy as jnp
>>> import optax
>>> import gcore_jax
>>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
>>> tx = gcore_jax.sgd(0.1, momentum=0.9)
>>> state = tx.init(params)
>>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
>>> updates, state = jax.jit(tx.update)(grads, state, params)
>>> params = optax.apply_updates(params, updates)
>>> params["kernel"].mean(axis=0)  # GC-SGD keeps each output unit's weight mean
Array([1., 1.], dtype=float32)

(GC-Adam's per-element scaling moves the means a little; ``gc_where="update"``
centralizes Adam's update itself and keeps them.)
"""

try:
    import jax  # noqa: F401
    import optax  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"gcore_jax needs JAX and optax: pip install 'gradient-centralization[jax]' ({err})"
    ) from err

from ._layout import (
    Layout,
    LayoutEntry,
    output_axes,
    register_layout,
    registered_layouts,
    stacked_axes,
    unregister_layout,
)
from ._transforms import (
    AmsgradState,
    DampedTraceState,
    adam,
    adamw,
    centralize,
    scale_by_rule,
    sgd,
)

FRAMEWORK = "jax"

__all__ = [
    "FRAMEWORK",
    "AmsgradState",
    "DampedTraceState",
    "Layout",
    "LayoutEntry",
    "adam",
    "adamw",
    "centralize",
    "devices",
    "output_axes",
    "register_layout",
    "registered_layouts",
    "scale_by_rule",
    "sgd",
    "stacked_axes",
    "unregister_layout",
]


def devices() -> list[str]:
    """The devices JAX computes on, e.g. ``["cpu:0"]``.

    Examples
    --------
    >>> import gcore_jax
    >>> all(":" in d for d in gcore_jax.devices())
    True
    """
    import jax

    return [f"{d.platform}:{d.id}" for d in jax.devices()]
