"""CuPy optimizers: gcore_numpy's containers and checkpoints, fused CUDA kernels per tensor.

Each class is a :class:`gcore_numpy.Optimizer` (the public base: parameters, axes, state,
``state_dict``) over CuPy arrays that overrides only :meth:`update_parameter`: the fused
kernels of :mod:`gcore_cupy._kernels` where they apply, the core rule (pure, run by CuPy
through the array API) everywhere else.
"""

from __future__ import annotations

import functools
from typing import Any

import cupy

import gcore
import gcore_numpy
from gcore import GC

from . import _kernels

__all__ = ["SGD", "Adam", "AdamW"]


@functools.cache
def _elementwise(spec: _kernels.ElementwiseSpec) -> cupy.ElementwiseKernel:
    return cupy.ElementwiseKernel(
        *spec, preamble=_kernels.header(), options=_kernels.NVRTC_OPTIONS
    )


@functools.cache
def _mean_kernel(with_param: bool) -> cupy.ReductionKernel:
    spec = _kernels.MEAN_WITH_PARAM if with_param else _kernels.MEAN
    return cupy.ReductionKernel(*spec, preamble=_kernels.header(), options=_kernels.NVRTC_OPTIONS)


def _check_fused(fused: Any) -> None:
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"fused={fused!r}: expected True, False or None (automatic)")


class _Fused(gcore_numpy.Optimizer):
    """The fused step where :func:`_kernels.fusable` allows it, else the core rule."""

    array_module = cupy

    def _init_fused(self, fused: bool | None) -> None:
        if fused and not _kernels.fusable(self.rule, "float32"):
            raise ValueError(
                "fused=True needs GC on the gradient (or off) and no nesterov / mu_dtype / "
                "accumulator_dtype; use fused=None to fall back to the core rule"
            )
        self.fused = fused is not False

    def update_parameter(self, index: int, grad: cupy.ndarray) -> None:
        p = self.params[index]
        rule = self.rule_for(index)
        # Checked per step: load_state_dict may have brought other hyperparameters.
        if not (self.fused and _kernels.fusable(rule, p.dtype)):
            super().update_parameter(index, grad)
            return
        state = self.state[index]
        _kernels.fused_step(
            rule,
            p,
            grad,
            state,
            self._steps[index],
            self._scratch_for(index),
            mean_kernel=_mean_kernel,
            sgd_kernel=_elementwise(_kernels.SGD),
            adam_kernel=_elementwise(_kernels.ADAM),
        )
        state.step[...] += 1  # asynchronous; the host count drives the kernels


class SGD(_Fused):
    """GC-SGD over CuPy arrays, updated in place by one fused kernel per tensor.

    Same interface as :class:`gcore_numpy.SGD`, with ``fused`` (``None``: automatic,
    ``False``: always the core rule) instead of ``fast``.

    Examples
    --------
    >>> import cupy  # doctest: +SKIP
    >>> from gcore_cupy import SGD  # doctest: +SKIP
    >>> w = cupy.ones((64, 3, 3, 3))  # doctest: +SKIP
    >>> opt = SGD([w], lr=0.1, momentum=0.9)  # doctest: +SKIP
    >>> opt.step([cupy.random.standard_normal(w.shape)])  # doctest: +SKIP
    """

    rule_type = gcore.SGD

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
        accumulator_dtype: Any = None,
        fused: bool | None = None,
    ) -> None:
        _check_fused(fused)
        super().__init__(
            params,
            axes=axes,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            gc=gc,
            accumulator_dtype=accumulator_dtype,
        )
        self._init_fused(fused)


class Adam(_Fused):
    """GC-Adam over CuPy arrays, updated in place by one fused kernel per tensor.

    Examples
    --------
    >>> import cupy  # doctest: +SKIP
    >>> from gcore_cupy import Adam  # doctest: +SKIP
    >>> w = cupy.zeros((128, 64))  # doctest: +SKIP
    >>> Adam([w], lr=1e-3).step([cupy.random.standard_normal(w.shape)])  # doctest: +SKIP
    """

    rule_type = gcore.Adam

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
        nesterov: bool = False,
        mu_dtype: Any = None,
        fused: bool | None = None,
    ) -> None:
        _check_fused(fused)
        super().__init__(
            params,
            axes=axes,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            gc=gc,
            nesterov=nesterov,
            mu_dtype=mu_dtype,
        )
        self._init_fused(fused)


class AdamW(_Fused):
    """GC-AdamW (decoupled weight decay) over CuPy arrays, fused like :class:`Adam`.

    ``convention="paper"`` (the GC authors' AdamW) is fused too.

    Examples
    --------
    >>> import cupy  # doctest: +SKIP
    >>> from gcore_cupy import AdamW  # doctest: +SKIP
    >>> w = cupy.ones((8, 8))  # doctest: +SKIP
    >>> AdamW([w], lr=1e-3, weight_decay=1e-2).step([cupy.ones((8, 8))])  # doctest: +SKIP
    """

    rule_type = gcore.AdamW

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
        nesterov: bool = False,
        mu_dtype: Any = None,
        convention: str = "torch",
        fused: bool | None = None,
    ) -> None:
        _check_fused(fused)
        super().__init__(
            params,
            axes=axes,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            gc=gc,
            nesterov=nesterov,
            mu_dtype=mu_dtype,
            convention=convention,
        )
        self._init_fused(fused)
