"""The fused CuPy kernels: their specs, their per-step scalars and the step that uses them.

Nothing here imports CuPy, so the host tests drive this very code with host-compiled
kernels (tests/plugins/test_cupy_kernels_host.py). The per-element arithmetic is not
written here: it is gcore's one C++ header, ``gcore/csrc/gc_update.h`` (shared with the
PyTorch CPU kernels), loaded as every kernel's preamble. A kernel body only wires the
header's functions together:

* ``MEAN``: a ``ReductionKernel`` giving each output unit's mean of the effective gradient
  ``gc_effective_grad(g, p, sign, l2)`` (one pass over the gradient, and the parameter
  when L2 decay is on);
* ``SGD`` / ``ADAM``: one ``ElementwiseKernel`` per tensor that centralizes
  (``x = g_eff - mean``), updates the state and writes the parameter.

:func:`fused_step` is the whole fused step of one tensor, given the three kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import gcore
from gcore import reduction_axes

HEADER_PATH = Path(gcore.__file__).parent / "csrc" / "gc_update.h"


#: NVRTC options of every kernel. ``--fmad=false``: the mean kernel and the update kernel
#: each compute ``sign * g + l2 * p``; contracted into an FMA in one and not the other,
#: they would round apart, and a unit whose exact centralized gradient is 0 (a row of one
#: element) would keep an ulp, which Adam's normalization turns into a step of
#: ``lr``. (The host tests build with ``-ffp-contract=off`` for the same reason.)
NVRTC_OPTIONS = ("--fmad=false",)


def header() -> str:
    """The text of ``gcore/csrc/gc_update.h``: every kernel's preamble."""
    return HEADER_PATH.read_text()


class ElementwiseSpec(NamedTuple):
    in_params: str
    out_params: str
    operation: str
    name: str


class ReductionSpec(NamedTuple):
    in_params: str
    out_params: str
    map_expr: str
    reduce_expr: str
    post_map_expr: str
    identity: str
    name: str


SGD = ElementwiseSpec(
    "T g, T mean, T sign, T l2, int32 mode, T momentum, T keep, int32 nesterov, T lr",
    "T p, T buf",
    "T x = gc_effective_grad<T>(g, p, sign, l2) - mean; "
    "T d = gc_sgd_direction<T>(x, buf, mode, momentum, keep, nesterov); "
    "p = p - lr * d;",
    "gcore_sgd",
)

ADAM = ElementwiseSpec(
    "T g, T mean, T sign, T l2, int32 amsgrad, T one_minus_beta1, T beta2, "
    "T one_minus_beta2, T bc2_sqrt, T eps, T step_size, T decay, T wd_update",
    "T p, T m, T v, T vmax",
    "T x = gc_effective_grad<T>(g, p, sign, l2) - mean; "
    "T d = gc_adam_direction<T>(x, m, v, vmax, amsgrad, one_minus_beta1, beta2, "
    "one_minus_beta2, bc2_sqrt, eps); "
    "p = gc_adam_param<T>(p, d, step_size, decay, wd_update);",
    "gcore_adam",
)

_MEAN_POST = "y = a / (_in_ind.size() / _out_ind.size())"

#: Per-unit mean of ``sign·g + l2·p`` (reads the parameter).
MEAN_WITH_PARAM = ReductionSpec(
    "T g, T p, T sign, T l2",
    "T y",
    "gc_effective_grad<T>(g, p, sign, l2)",
    "a + b",
    _MEAN_POST,
    "0",
    "gcore_mean_gp",
)

#: Per-unit mean of ``sign·g`` (no L2: the parameter is not read).
MEAN = ReductionSpec(
    "T g, T sign",
    "T y",
    "gc_effective_grad<T>(g, T(0), sign, T(0))",
    "a + b",
    _MEAN_POST,
    "0",
    "gcore_mean_g",
)

# gc_update.h's momentum modes.
SGD_PLAIN, SGD_FIRST, SGD_MOMENTUM = 0, 1, 2


def fusable(rule: Any, dtype: Any) -> bool:
    """Whether the fused kernels compute ``rule`` for parameters of ``dtype``.

    float32/float64 with GC on the gradient (or off), without the optax options
    (``nesterov`` Adam, ``mu_dtype``, ``accumulator_dtype``); everything else (float16,
    ``GC(where="update")``, ...) takes the core rule.
    """
    if str(dtype) not in ("float32", "float64"):
        return False
    if rule.gc is not None and rule.gc.where != "gradient":
        return False
    if isinstance(rule, gcore.SGD):
        return rule.accumulator_dtype is None
    return not rule.nesterov and rule.mu_dtype is None


def _one_minus_pow(beta: float, t: int) -> float:
    # gc_one_minus_pow: 1 - beta**t = -expm1(t·ln beta), in double.
    return 1.0 if beta == 0 else -math.expm1(t * math.log(beta))


def adam_coefficients(rule: Any, t: int) -> tuple[float, float, float, float]:
    """``(step_size, bc2_sqrt, decay, wd_update)`` of step ``t`` (>= 1), in double.

    The Python twin of ``gc_adam_coefficients`` in gc_update.h (the host tests compare
    the two).
    """
    beta1, beta2 = rule.betas
    bc1 = _one_minus_pow(beta1, t)
    bc2_sqrt = math.sqrt(_one_minus_pow(beta2, t))
    decoupled = bool(rule._decoupled)
    if decoupled and getattr(rule, "convention", "torch") == "paper":
        return rule.lr * bc2_sqrt / bc1, 1.0, 1.0, float(rule.weight_decay)
    decay = 1.0 - rule.lr * rule.weight_decay if decoupled else 1.0
    return rule.lr / bc1, bc2_sqrt, decay, 0.0


def _unit_mean(
    rule: Any, axis: int | None, p: Any, g: Any, sign: float, l2: float, mean_kernel: Callable
) -> Any:
    gc = rule.gc
    if gc is None or axis is None or p.ndim < gc.min_ndim or p.size == 0:
        return 0.0
    axes = reduction_axes(p.ndim, axis)
    if l2 != 0:
        return mean_kernel(True)(g, p, sign, l2, axis=axes, keepdims=True)
    return mean_kernel(False)(g, sign, axis=axes, keepdims=True)


def fused_step(
    rule: Any,
    p: Any,
    g: Any,
    state: Any,
    step: int,
    scratch: Any,
    *,
    mean_kernel: Callable[[bool], Callable],
    sgd_kernel: Callable,
    adam_kernel: Callable,
) -> None:
    """One fused step of ``p`` in place (``fusable(rule, p.dtype)`` must hold).

    ``rule`` is the parameter's own rule (its GC axis); ``step`` counts the updates before
    this one (host-side, so nothing waits on the device); ``scratch`` is any array of
    ``p``'s shape, passed where a kernel's unused state argument needs one.
    ``mean_kernel(with_param)`` returns the reduction kernel, called CuPy's way.
    """
    axis = None if rule.gc is None else rule.gc.axis
    sign = -1.0 if rule.maximize else 1.0
    if isinstance(rule, gcore.SGD):
        l2 = rule.weight_decay
        mean = _unit_mean(rule, axis, p, g, sign, l2, mean_kernel)
        if rule.momentum == 0:
            mode, buf = SGD_PLAIN, scratch
        else:
            mode, buf = (SGD_FIRST if step == 0 else SGD_MOMENTUM), state.momentum_buffer
        sgd_kernel(
            g, mean, sign, l2, mode, rule.momentum, 1.0 - rule.dampening,
            int(rule.nesterov), rule.lr, p, buf,
        )  # fmt: skip
        return
    l2 = 0.0 if rule._decoupled else rule.weight_decay
    mean = _unit_mean(rule, axis, p, g, sign, l2, mean_kernel)
    beta1, beta2 = rule.betas
    step_size, bc2_sqrt, decay, wd_update = adam_coefficients(rule, step + 1)
    vmax = state.max_exp_avg_sq if rule.amsgrad else scratch
    adam_kernel(
        g, mean, sign, l2, int(rule.amsgrad), 1.0 - beta1, beta2, 1.0 - beta2, bc2_sqrt,
        rule.eps, step_size, decay, wd_update, p, state.exp_avg, state.exp_avg_sq, vmax,
    )  # fmt: skip
