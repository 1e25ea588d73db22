"""Float64 NumPy reference implementations, written from the equations.

Nothing here calls gcore: these are the oracle every backend is compared against.
"""

from __future__ import annotations

import numpy as np


def centralize(g: np.ndarray, axis=0, min_ndim: int = 2) -> np.ndarray:
    """Each output unit (index along ``axis``) minus its own mean, by explicit loops."""
    g = np.asarray(g, dtype=np.float64)
    if axis is None or g.ndim < min_ndim or g.size == 0:
        return g.copy()
    moved = np.moveaxis(g, axis, 0)
    out = np.empty_like(moved)
    for i in range(moved.shape[0]):
        row = moved[i]
        out[i] = row - row.sum() / row.size
    return np.moveaxis(out, 0, axis)


def projection(m: int) -> np.ndarray:
    e = np.full((m, 1), 1.0 / np.sqrt(m))
    return np.eye(m) - e @ e.T


def sgd(
    w0,
    grads,
    *,
    lr,
    momentum=0.0,
    dampening=0.0,
    nesterov=False,
    weight_decay=0.0,
    maximize=False,
    gc=True,
    axis=0,
    min_ndim=2,
    where="gradient",
):
    """Trajectory of torch.optim.SGD's equations with GC inserted (list of iterates)."""
    w = np.array(w0, dtype=np.float64)
    buf = None
    out = []
    for t, grad in enumerate(grads):
        g = -grad if maximize else grad.copy()
        g = g + weight_decay * w
        if gc and where == "gradient":
            g = centralize(g, axis, min_ndim)
        if momentum:
            buf = g.copy() if t == 0 else momentum * buf + (1 - dampening) * g
            d = g + momentum * buf if nesterov else buf
        else:
            d = g
        if gc and where == "update":
            d = centralize(d, axis, min_ndim)
        w = w - lr * d
        out.append(w)
    return out


def adam(
    w0,
    grads,
    *,
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    amsgrad=False,
    maximize=False,
    decoupled=False,
    gc=True,
    axis=0,
    min_ndim=2,
    where="gradient",
):
    """Trajectory of torch.optim.Adam (decoupled=False) / AdamW (True) with GC inserted."""
    b1, b2 = betas
    w = np.array(w0, dtype=np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    vmax = np.zeros_like(w)
    out = []
    for t, grad in enumerate(grads, start=1):
        g = -grad if maximize else grad.copy()
        if not decoupled:
            g = g + weight_decay * w
        if gc and where == "gradient":
            g = centralize(g, axis, min_ndim)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        m_hat = m / (1 - b1**t)
        v_hat = (vmax if amsgrad else v) / (1 - b2**t)
        step = -lr * m_hat / (np.sqrt(v_hat) + eps)
        if gc and where == "update":
            step = centralize(step, axis, min_ndim)
        if decoupled:
            step = step - lr * weight_decay * w
        w = w + step
        out.append(w)
    return out
