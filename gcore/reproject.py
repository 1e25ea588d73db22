r"""Opt-in re-projection of weights onto GC-SGD's hyperplanes :math:`e^\top w_i = c_i`.

In exact arithmetic GC-SGD (with or without coupled L2 decay) never changes an output
unit's weight mean. In float32 every step rounds ``w + update``, so the means
random-walk. Measured by ``tests/core/test_drift.py`` (10,000 steps, noisy quadratic
loss, weights of their initial scale): at most 2e-6 of a unit's weight RMS, median
~1e-7; when the weights grow far beyond their initial scale the drift grows with them
(about 2e-3 of the *initial* RMS for weights that grew ~500x). :func:`reproject` moves
each unit back onto its hyperplane (after it: ~1e-7), as one cheap, pure correction a
training loop may call every few hundred steps, e.g. for very long runs; GC itself is
unchanged.
"""

from __future__ import annotations

from ._compat import Array, array_namespace, check_floating, is_low_precision, size
from .centralize import normalize_axis, reduction_axes

__all__ = ["reproject"]


def reproject(
    param: Array, reference_means: Array, /, *, axis: int | None = 0, min_ndim: int = 2
) -> Array:
    r"""Shift each output unit of ``param`` so that its mean is ``reference_means``.

    .. math::

        w_i \leftarrow w_i - \bigl(\tfrac{1}{M}\mathbf 1^\top w_i - c_i\bigr)\mathbf 1

    the orthogonal projection of :math:`w_i` onto the hyperplane
    :math:`\tfrac{1}{M}\mathbf 1^\top w = c_i` (the complement of GC's projection
    :math:`P`: only the unit's mean changes, and only by its drift).

    Parameters
    ----------
    param : array
        Floating-point weights.
    reference_means : array
        The unit means to restore, shape ``(param.shape[axis],)``, usually
        ``gcore.diagnostics.unit_means(initial_param, axis=axis)`` taken at the start.
    axis : int or None, default 0
        Output axis (as for :func:`gcore.centralize`); ``None`` returns ``param``.
    min_ndim : int, default 2
        Arrays with fewer dimensions are returned unchanged (they are not centralized).

    Returns
    -------
    array
        A new array (``param`` is not modified) of ``param``'s namespace, dtype and device.
        float16/bfloat16 are corrected in float32 and rounded once.

    Raises
    ------
    TypeError
        If ``param`` is not floating point or ``axis`` is a bool.
    ValueError
        If ``axis`` is out of range or ``reference_means`` has the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> import gcore
    >>> w0 = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    >>> ref = gcore.diagnostics.unit_means(w0)
    >>> w = w0 + np.array([[0.25], [-0.5]])  # drifted means
    >>> gcore.reproject(w, ref)
    array([[1., 2., 3.],
           [0., 0., 3.]])
    """
    xp = array_namespace(param, reference_means)
    check_floating(param, xp, "param")
    if axis is None or param.ndim < min_ndim:
        return param
    axes = reduction_axes(param.ndim, axis)
    ax = normalize_axis(axis, param.ndim)
    n = param.shape[ax]
    if tuple(reference_means.shape) != (n,):
        raise ValueError(
            f"reference_means has shape {tuple(reference_means.shape)}; expected ({n},), "
            f"one mean per output unit along axis {axis} of a {tuple(param.shape)} array"
        )
    if size(param) == 0:
        return param
    shape = tuple(n if a == ax else 1 for a in range(param.ndim))
    work = xp.float32 if is_low_precision(param.dtype, xp) else param.dtype
    p = xp.astype(param, work) if work != param.dtype else param
    ref = xp.reshape(xp.astype(reference_means, work), shape)
    delta = xp.mean(p, axis=axes, keepdims=True) - ref
    out = p - delta
    return xp.astype(out, param.dtype) if out.dtype != param.dtype else out
