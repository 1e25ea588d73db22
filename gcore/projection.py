"""The explicit GC operator: unit vector ``e`` and projection ``P = I - e eᵀ``.

:func:`gcore.centralize` is the fast way to apply ``P``; these functions build the
operator itself for teaching, tests and diagnostics.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from ._compat import (
    Array,
    Namespace,
    array_namespace,
    check_floating,
    device,
    is_low_precision,
    size,
)
from .centralize import normalize_axis

__all__ = ["project", "projection_matrix", "unit_vector"]


def _check_length(m: int) -> int:
    m = operator.index(m)
    if m < 1:
        raise ValueError(f"m={m}: the weight-vector length must be a positive integer")
    return m


def unit_vector(m: int, /, *, xp: Namespace, dtype: Any = None, device: Any = None) -> Array:
    r"""The unit vector :math:`e = \frac{1}{\sqrt{m}}\mathbf{1}` of length ``m``.

    Parameters
    ----------
    m : int
        Length of each output unit's weight vector (fan-in × kernel size), ``m >= 1``.
    xp : namespace
        Array namespace to create the vector in (e.g. ``numpy``, ``torch``).
    dtype, device : optional
        Passed to ``xp.full``; default floating dtype and device when omitted.

    Examples
    --------
    >>> import numpy as np
    >>> from gcore import unit_vector
    >>> unit_vector(4, xp=np)
    array([0.5, 0.5, 0.5, 0.5])
    """
    m = _check_length(m)
    return xp.full((m,), 1.0 / math.sqrt(m), dtype=dtype, device=device)


def projection_matrix(m: int, /, *, xp: Namespace, dtype: Any = None, device: Any = None) -> Array:
    r"""The GC projection :math:`P = I - e e^\top` as a dense ``(m, m)`` matrix.

    :math:`P` is symmetric and idempotent with eigenvalues 0 (once, eigenvector
    :math:`e`) and 1 (``m - 1`` times): it removes the component of a weight vector's
    gradient along :math:`e`, i.e. its mean.

    Examples
    --------
    >>> import numpy as np
    >>> from gcore import projection_matrix
    >>> P = projection_matrix(3, xp=np)
    >>> np.round(P * 3)
    array([[ 2., -1., -1.],
           [-1.,  2., -1.],
           [-1., -1.,  2.]])
    >>> np.allclose(P @ P, P)
    True
    """
    m = _check_length(m)
    eye = xp.eye(m, dtype=dtype, device=device)
    return eye - xp.full((m, m), 1.0 / m, dtype=eye.dtype, device=device)


def project(g: Array, /, *, axis: int | None = 0, min_ndim: int = 2) -> Array:
    """Apply :func:`projection_matrix` explicitly to each output unit of ``g``.

    Mathematically identical to :func:`gcore.centralize` (same arguments, same
    result up to rounding) but costs ``O(N M²)``: use it to check, not to train.

    Examples
    --------
    >>> import numpy as np
    >>> import gcore
    >>> g = np.arange(12.0).reshape(2, 2, 3) ** 2
    >>> np.allclose(gcore.project(g), gcore.centralize(g))
    True
    """
    xp = array_namespace(g)
    check_floating(g, xp, complex_ok=False)
    if axis is None or g.ndim < min_ndim:
        return g
    axis = normalize_axis(axis, g.ndim)
    if size(g) == 0:
        return g
    work = xp.astype(g, xp.float32) if is_low_precision(g.dtype, xp) else g
    order = (axis, *(a for a in range(g.ndim) if a != axis))
    moved = xp.permute_dims(work, order)
    n = g.shape[axis]
    m = math.prod(moved.shape[1:])
    P = projection_matrix(m, xp=xp, dtype=work.dtype, device=device(g))
    rows = xp.reshape(moved, (n, m)) @ P  # P is symmetric: (P g_i)ᵀ = g_iᵀ P
    inverse = tuple(order.index(a) for a in range(g.ndim))
    out = xp.permute_dims(xp.reshape(rows, moved.shape), inverse)
    return xp.astype(out, g.dtype) if out.dtype != g.dtype else out
