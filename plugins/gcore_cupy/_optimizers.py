"""CuPy optimizers: gcore_numpy's interface, with fused CUDA kernels for the step."""

from __future__ import annotations

import functools
from typing import Any

import cupy

import gcore_numpy
from gcore import GC, reduction_axes

from . import _kernels

__all__ = ["SGD", "Adam", "AdamW"]


@functools.cache
def _sgd_kernel() -> cupy.ElementwiseKernel:
    return cupy.ElementwiseKernel(
        _kernels.SGD_PARAMS_IN,
        "T p, T buf",
        _kernels.SGD_BODY,
        "gcore_sgd",
        preamble=_kernels.HEADER,
    )


@functools.cache
def _adam_kernel() -> cupy.ElementwiseKernel:
    return cupy.ElementwiseKernel(
        _kernels.ADAM_PARAMS_IN,
        "T p, T m, T v, T vmax",
        _kernels.ADAM_BODY,
        "gcore_adam",
        preamble=_kernels.HEADER,
    )


@functools.cache
def _mean_kernel(with_param: bool) -> cupy.ReductionKernel:
    """Per-unit mean of ``sgn·g (+ l2·p)`` in one pass over the gradient (and parameter)."""
    if with_param:
        return cupy.ReductionKernel(
            "T g, T p, T sgn, T l2",
            "T y",
            "sgn * g + l2 * p",
            "a + b",
            "y = a / (_in_ind.size() / _out_ind.size())",
            "0",
            "gcore_mean_gp",
        )
    return cupy.ReductionKernel(
        "T g, T sgn",
        "T y",
        "sgn * g",
        "a + b",
        "y = a / (_in_ind.size() / _out_ind.size())",
        "0",
        "gcore_mean_g",
    )


class _FusedMixin:
    """Chooses the fused kernels where they apply; otherwise gcore_numpy's ufunc path.

    Fused: float32/float64 parameters with GC on the gradient (or off). GC on the update
    (``GC(where="update")``) and float16 use the ufunc path, which CuPy runs as well.
    """

    array_module = cupy
    rule: Any

    def _init_fused(self, fused: bool | None) -> None:
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"fused={fused!r}: expected True, False or None (automatic)")
        if fused and not self._fusable():
            raise ValueError("fused=True does not support GC(where='update'); use fused=None")
        self.fused = fused is not False

    def _fusable(self) -> bool:
        gc = self.rule.gc
        return gc is None or gc.where == "gradient"

    def _fused_for(self, p: cupy.ndarray) -> bool:
        # Checked per step: load_state_dict may have brought a different GC setting.
        return self.fused and self._fusable() and p.dtype in (cupy.float32, cupy.float64)

    def _means(self, g, p, axis: int | None, l2: float):
        gc: GC | None = self.rule.gc
        if gc is None or axis is None or p.ndim < gc.min_ndim or p.size == 0:
            return 0.0
        axes = reduction_axes(p.ndim, axis)
        sgn = -1.0 if self.rule.maximize else 1.0
        if l2 != 0:
            return _mean_kernel(True)(g, p, sgn, l2, axis=axes, keepdims=True)
        return _mean_kernel(False)(g, sgn, axis=axes, keepdims=True)


class SGD(_FusedMixin, gcore_numpy.SGD):
    """GC-SGD over CuPy arrays, updated in place by one fused kernel per tensor.

    Same interface as :class:`gcore_numpy.SGD`, plus ``fused`` (``None``: automatic).

    Examples
    --------
    >>> import cupy  # doctest: +SKIP
    >>> from gcore_cupy import SGD  # doctest: +SKIP
    >>> w = cupy.ones((64, 3, 3, 3))  # doctest: +SKIP
    >>> opt = SGD([w], lr=0.1, momentum=0.9)  # doctest: +SKIP
    >>> opt.step([cupy.random.standard_normal(w.shape)])  # doctest: +SKIP
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        gc: GC | None = GC(),
        axes: Any = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params, lr, momentum, dampening, weight_decay, nesterov,
            maximize=maximize, gc=gc, axes=axes,
        )  # fmt: skip
        self._init_fused(fused)

    def _update(self, p, g, state, s, axis, step) -> None:
        if not self._fused_for(p):
            return super()._update(p, g, state, s, axis, step)
        r = self.rule
        mean = self._means(g, p, axis, r.weight_decay)
        buf = state.momentum_buffer if r.momentum != 0 else s  # s: an unused placeholder
        _sgd_kernel()(
            g, mean, r.momentum != 0, step == 0, r.nesterov, -1.0 if r.maximize else 1.0,
            r.weight_decay, r.lr, r.momentum, 1.0 - r.dampening, p, buf,
        )  # fmt: skip
        state.step[...] += 1  # asynchronous; the host count drives the kernel
        return None


class Adam(_FusedMixin, gcore_numpy.Adam):
    """GC-Adam over CuPy arrays, updated in place by one fused kernel per tensor.

    Examples
    --------
    >>> import cupy  # doctest: +SKIP
    >>> from gcore_cupy import Adam  # doctest: +SKIP
    >>> w = cupy.zeros((128, 64))  # doctest: +SKIP
    >>> Adam([w], lr=1e-3).step([cupy.random.standard_normal(w.shape)])  # doctest: +SKIP
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        gc: GC | None = GC(),
        axes: Any = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, gc=gc, axes=axes
        )
        self._init_fused(fused)

    def _update(self, p, g, state, s, axis, step) -> None:
        if not self._fused_for(p):
            return super()._update(p, g, state, s, axis, step)
        r = self.rule
        decoupled = r._decoupled
        beta1, beta2 = r.betas
        l2 = 0.0 if decoupled else r.weight_decay
        mean = self._means(g, p, axis, l2)
        step_size, bc2_sqrt = self._bias_corrections(r, p.dtype, step + 1)
        decay = 1.0 - r.lr * r.weight_decay if decoupled else 1.0
        vmax = state.max_exp_avg_sq if r.amsgrad else s  # s: an unused placeholder
        _adam_kernel()(
            g, mean, r.amsgrad, -1.0 if r.maximize else 1.0, l2, 1.0 - beta1, beta2,
            1.0 - beta2, step_size, bc2_sqrt, r.eps, decay,
            p, state.exp_avg, state.exp_avg_sq, vmax,
        )  # fmt: skip
        state.step[...] += 1
        return None


class AdamW(Adam):
    """GC-AdamW (decoupled weight decay) over CuPy arrays, fused like :class:`Adam`.

    Examples
    --------
    >>> import cupy  # doctest: +SKIP
    >>> from gcore_cupy import AdamW  # doctest: +SKIP
    >>> w = cupy.ones((8, 8))  # doctest: +SKIP
    >>> AdamW([w], lr=1e-3, weight_decay=1e-2).step([cupy.ones((8, 8))])  # doctest: +SKIP
    """

    rule_type = gcore_numpy.AdamW.rule_type

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        gc: GC | None = GC(),
        axes: Any = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad,
            maximize=maximize, gc=gc, axes=axes, fused=fused,
        )  # fmt: skip
