"""Gradient Centralization of Keras backend tensors, by the core's ``gcore.centralize``.

On the JAX and PyTorch backends a Keras variable's value and its gradient are a
``jax.Array`` / ``torch.Tensor``, which array-api-compat already serves: the core runs on
them directly. TensorFlow tensors are not array API arrays, so :class:`_TFArray` wraps
one in the few methods the core's ``centralize`` touches (``dtype``, ``shape``, ``ndim``,
subtraction) and :data:`_tf_namespace` supplies the namespace functions it calls
(``isdtype``, ``finfo``, ``astype``, ``mean``, ``reshape``, ``permute_dims``), each one
TensorFlow op. That is the whole TensorFlow route: the arithmetic stays the core's.
"""

from __future__ import annotations

import math
from types import ModuleType, SimpleNamespace
from typing import Any

import keras

import gcore

__all__ = ["centralize_tensor"]

_BACKEND = keras.backend.backend()


def centralize_tensor(g: Any, axes: tuple[int, ...]) -> Any:
    """Centralize backend tensor ``g`` per output unit; ``axes`` are the output axes.

    One output axis is the core's ``centralize(g, axis=...)``. Several (a depthwise
    kernel's ``(in, depth_multiplier)`` pair, an ``EinsumDense`` kernel with more than
    one output axis) are first moved to the end and flattened into one, so that each
    output unit is one index of the core's output axis; the result is reshaped back.
    """
    if _BACKEND == "tensorflow":
        return _centralize_any(_TFArray(_tf_dense(g)), axes).t
    return _centralize_any(g, axes)


def _centralize_any(g: Any, axes: tuple[int, ...]) -> Any:
    if len(axes) == 1:
        return gcore.centralize(g, axis=axes[0], min_ndim=1)
    xp = _namespace(g)
    ndim = g.ndim
    rest = tuple(a for a in range(ndim) if a not in axes)
    order = rest + axes
    moved = g if order == tuple(range(ndim)) else xp.permute_dims(g, order)
    shape = tuple(moved.shape)
    units = math.prod(shape[len(rest) :])
    flat = xp.reshape(moved, (*shape[: len(rest)], units))
    out = xp.reshape(gcore.centralize(flat, axis=-1, min_ndim=1), shape)
    if moved is g:
        return out
    inverse = tuple(order.index(a) for a in range(ndim))
    return xp.permute_dims(out, inverse)


def _namespace(g: Any) -> Any:
    if isinstance(g, _TFArray):
        return _tf_namespace
    from array_api_compat import array_namespace

    return array_namespace(g)


# -- TensorFlow: the thinnest array-API surface the core's centralize needs -------------


def _tf_dense(g: Any) -> Any:
    import tensorflow as tf

    if isinstance(g, tf.IndexedSlices):  # sparse gradient (e.g. a gathered kernel)
        return tf.convert_to_tensor(g)
    return g


class _TFArray:
    """A ``tf.Tensor`` seen as an array API array (only what ``centralize`` uses)."""

    __slots__ = ("t",)

    def __init__(self, t: Any) -> None:
        self.t = t

    def __array_namespace__(self, *, api_version: str | None = None) -> Any:
        return _tf_namespace

    @property
    def dtype(self) -> Any:
        return self.t.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.t.shape)

    @property
    def ndim(self) -> int:
        return len(self.t.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __sub__(self, other: _TFArray) -> _TFArray:
        return _TFArray(self.t - other.t)


def _tf_isdtype(dtype: Any, kind: Any) -> bool:
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    for k in kinds:
        if k == "real floating" and dtype.is_floating:
            return True
        if k == "complex floating" and dtype.is_complex:
            return True
        if not isinstance(k, str) and dtype == k:
            return True
    return False


def _tf_finfo(dtype: Any) -> Any:
    return SimpleNamespace(bits=dtype.size * 8)


def _tf_astype(x: _TFArray, dtype: Any) -> _TFArray:
    import tensorflow as tf

    return _TFArray(tf.cast(x.t, dtype))


def _tf_mean(x: _TFArray, axis: Any = None, keepdims: bool = False) -> _TFArray:
    import tensorflow as tf

    return _TFArray(tf.reduce_mean(x.t, axis=axis, keepdims=keepdims))


def _tf_reshape(x: _TFArray, shape: tuple[int, ...]) -> _TFArray:
    import tensorflow as tf

    return _TFArray(tf.reshape(x.t, shape))


def _tf_permute_dims(x: _TFArray, axes: tuple[int, ...]) -> _TFArray:
    import tensorflow as tf

    return _TFArray(tf.transpose(x.t, axes))


def _make_tf_namespace() -> ModuleType:
    ns = ModuleType("gcore_keras._tf_namespace", "array API functions over TensorFlow ops")
    ns.isdtype = _tf_isdtype
    ns.finfo = _tf_finfo
    ns.astype = _tf_astype
    ns.mean = _tf_mean
    ns.reshape = _tf_reshape
    ns.permute_dims = _tf_permute_dims
    if _BACKEND == "tensorflow":
        import tensorflow as tf

        ns.float32 = tf.float32
    return ns


_tf_namespace = _make_tf_namespace()
