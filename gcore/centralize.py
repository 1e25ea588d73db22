"""Gradient Centralization: subtract from each output unit's gradient its own mean."""

from __future__ import annotations

import operator

from ._compat import Array, array_namespace, check_floating, is_low_precision, size

__all__ = ["centralize", "normalize_axis", "reduction_axes"]


def normalize_axis(axis: int, ndim: int) -> int:
    """Return ``axis`` as a non-negative index into an array of ``ndim`` dimensions.

    Raises
    ------
    ValueError
        If ``axis`` is not in ``[-ndim, ndim)``.
    """
    if isinstance(axis, bool):
        raise TypeError(f"axis={axis!r}: expected an int (the output axis) or None, not a bool")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis={axis!r}: expected an int (the output axis) or None") from None
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis={axis} is out of range for an array of ndim {ndim}; "
            f"allowed: {-ndim} <= axis < {ndim}, or None to leave the array alone"
        )
    return axis % ndim


def reduction_axes(ndim: int, axis: int) -> tuple[int, ...]:
    """Axes the per-unit mean runs over: every axis but the output ``axis``.

    Examples
    --------
    >>> from gcore import reduction_axes
    >>> reduction_axes(4, 0)
    (1, 2, 3)
    >>> reduction_axes(2, -1)
    (0,)
    """
    axis = normalize_axis(axis, ndim)
    return tuple(a for a in range(ndim) if a != axis)


def centralize(g: Array, /, *, axis: int | None = 0, min_ndim: int = 2) -> Array:
    r"""Centralize ``g``: subtract from each output unit its mean over all other axes.

    For the weight vector :math:`w_i` of output unit :math:`i` (the slice of ``g`` at
    index ``i`` along ``axis``, flattened to length :math:`M`),

    .. math::

        \Phi_{GC}(\nabla_{w_i} L) = \nabla_{w_i} L - \frac{1}{M}\sum_{j=1}^{M}
        \nabla_{w_{i,j}} L = P\,\nabla_{w_i} L, \qquad P = I - e e^\top,\;
        e = \tfrac{1}{\sqrt{M}}\mathbf{1}.

    The function is pure (``g`` is not modified) and works on any array of the
    Python array API standard (NumPy, PyTorch, JAX, CuPy, array-api-strict, ...);
    it traces under ``jax.jit``.

    Parameters
    ----------
    g : array
        Gradient (or any array) of a floating-point dtype. A complex unit has its
        complex mean subtracted (the same projection on real and imaginary parts).
    axis : int or None, default 0
        The output axis (``0`` for PyTorch ``Linear``/``Conv`` weights, ``-1`` for
        Flax/Keras kernels). Negative values count from the end. ``None`` returns
        ``g`` unchanged.
    min_ndim : int, default 2
        Arrays with fewer dimensions (biases, norm scales) are returned unchanged;
        ``4`` gives the paper's "GC on conv layers only" variant.

    Returns
    -------
    array
        Same namespace, device, shape and dtype as ``g``. float16/bfloat16 inputs
        are averaged in float32 and cast back.

    Notes
    -----
    A NaN or Inf anywhere in a unit's gradient makes that unit's mean NaN/Inf, so GC
    spreads it to every element of the unit (never to other units); check gradients for
    finiteness before GC if they may overflow (as mixed-precision loss scalers do).

    A unit with a single weight (:math:`M = 1`, e.g. ``Linear(1, n)``) has
    :math:`P = 0`: its gradient becomes zero and, under GC, it does not train. This is
    the paper's definition (and ``optax.centralize``'s); exclude such a parameter
    (``axis=None`` for it) if it must learn.

    Raises
    ------
    TypeError
        If ``g`` is not floating point (integer, bool), or ``axis`` is a bool.
    ValueError
        If ``axis`` is out of range for ``g.ndim``.

    References
    ----------
    H. Yong, J. Huang, X. Hua, L. Zhang, "Gradient Centralization: A New Optimization
    Technique for Deep Neural Networks", ECCV 2020, arXiv:2004.01461.

    Examples
    --------
    >>> import numpy as np
    >>> import gcore
    >>> g = np.array([[1.0, 2.0, 3.0], [4.0, 4.0, 7.0]])
    >>> gcore.centralize(g)
    array([[-1.,  0.,  1.],
           [-1., -1.,  2.]])
    >>> gcore.centralize(g, axis=-1)  # Flax layout: columns are output units
    array([[-1.5, -1. , -2. ],
           [ 1.5,  1. ,  2. ]])
    >>> gcore.centralize(np.array([1.0, 2.0]))  # ndim < min_ndim: unchanged
    array([1., 2.])
    """
    xp = array_namespace(g)
    check_floating(g, xp)
    if axis is None or g.ndim < min_ndim:
        return g
    axes = reduction_axes(g.ndim, axis)
    if size(g) == 0:
        return g
    if is_low_precision(g.dtype, xp):
        g32 = xp.astype(g, xp.float32)
        return xp.astype(g32 - xp.mean(g32, axis=axes, keepdims=True), g.dtype)
    return g - xp.mean(g, axis=axes, keepdims=True)
