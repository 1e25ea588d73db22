"""Diagnostics that make GC's geometry measurable during training."""

from __future__ import annotations

from ._compat import Array, array_namespace, check_floating, device, is_low_precision, size
from .centralize import centralize, reduction_axes

__all__ = ["mean_drift", "removed_fraction", "unit_means"]


def unit_means(w: Array, /, *, axis: int = 0) -> Array:
    """Mean of each output unit's weight vector, shape ``(w.shape[axis],)``.

    Examples
    --------
    >>> import numpy as np
    >>> from gcore.diagnostics import unit_means
    >>> unit_means(np.array([[1.0, 3.0], [0.0, 4.0]]))
    array([2., 2.])
    """
    xp = array_namespace(w)
    check_floating(w, xp, "w", complex_ok=False)
    if w.ndim == 0:
        raise ValueError("w must have at least one dimension (the output axis)")
    return xp.mean(w, axis=reduction_axes(w.ndim, axis)) if w.ndim > 1 else w


def mean_drift(param: Array, initial: Array, /, *, axis: int = 0) -> Array:
    r"""Per-unit change of the weight mean since ``initial``.

    Returns :math:`\bar w_i - \bar w_i^{0} = e^\top (w_i - w_i^0)/\sqrt{M}` for every
    output unit :math:`i`. GC-SGD, with or without (coupled L2) weight decay, keeps
    it at zero (up to rounding): the iterates stay on the hyperplane
    :math:`e^\top w_i = e^\top w_i^0`.

    Examples
    --------
    >>> import numpy as np
    >>> from gcore.diagnostics import mean_drift
    >>> w0 = np.zeros((2, 3))
    >>> mean_drift(w0 + np.array([[1.0, -1.0, 0.0], [3.0, 0.0, 0.0]]), w0)
    array([0., 1.])
    """
    if param.shape != initial.shape:
        raise ValueError(
            f"param and initial must have the same shape; got {param.shape} and {initial.shape}"
        )
    return unit_means(param - initial, axis=axis)


def removed_fraction(grad: Array, /, *, axis: int = 0, min_ndim: int = 2) -> Array:
    r"""Fraction of the gradient's norm that GC removes, :math:`\|g - Pg\| / \|g\|`.

    0 for a gradient that already has zero mean per unit (or that GC leaves alone),
    1 for a gradient constant along each unit. A zero gradient gives 0.

    Examples
    --------
    >>> import numpy as np
    >>> from gcore.diagnostics import removed_fraction
    >>> float(removed_fraction(np.array([[1.0, 1.0], [2.0, 2.0]])))
    1.0
    >>> float(removed_fraction(np.array([[1.0, -1.0]])))
    0.0
    """
    xp = array_namespace(grad)
    check_floating(grad, xp, complex_ok=False)
    g = xp.astype(grad, xp.float32) if is_low_precision(grad.dtype, xp) else grad
    if size(g) == 0:
        return xp.zeros((), dtype=g.dtype, device=device(g))
    removed = xp.sqrt(xp.sum((g - centralize(g, axis=axis, min_ndim=min_ndim)) ** 2))
    total = xp.sqrt(xp.sum(g**2))
    return xp.where(total > 0, removed / xp.where(total > 0, total, 1.0), 0.0)
