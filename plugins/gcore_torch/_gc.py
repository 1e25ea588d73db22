"""Per-tensor Gradient Centralization on torch tensors: layouts and in-place forms.

A tensor's GC *spec* is ``(axis, groups)`` or ``None`` (left alone). ``axis`` is the output
axis (0 for Linear/Conv, 1 for ConvTranspose); ``groups > 1`` says that axis 0 holds
``groups`` blocks (grouped ConvTranspose, weight ``(in, out/groups, k…)``): the weight is
viewed as ``(groups, in/groups, out/groups, k…)`` and each output unit ``(block, j)`` is
centralized over the remaining axes.

Only plain torch ops are used, so a ``DTensor`` gradient gets DTensor's sharding
propagation for free: a mean over axes that are not sharded stays shard-local, a mean over
a sharded axis becomes a partial sum that is all-reduced before the subtraction.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Sequence

import torch
from torch import Tensor

from gcore import normalize_axis

from . import _kernels

__all__ = [
    "Spec",
    "center_into",
    "centered",
    "centralize_inplace",
    "from_units",
    "make_spec",
    "to_units",
]

Spec = tuple[int, int] | None

_LOW = (torch.float16, torch.bfloat16)
_PLAIN = (Tensor, torch.nn.Parameter)  # not a DTensor: its ops propagate the sharding


def make_spec(
    t: Tensor, gc: bool | str, axis: int | None, groups: int = 1, *, where: str = "tensor"
) -> Spec:
    """The GC spec of ``t`` under a group's ``gc`` / ``gc_axis`` / ``gc_groups`` options."""
    if gc is False or axis is None:
        return None
    min_ndim = 4 if gc == "conv_only" else 2
    if t.ndim < min_ndim or t.numel() == 0:
        return None
    try:
        ax = normalize_axis(axis, t.ndim)
    except (ValueError, TypeError) as err:
        raise ValueError(f"gc_axis of {where} (shape {tuple(t.shape)}): {err}") from None
    if groups != 1:
        if ax == 0:
            raise ValueError(
                f"gc_groups={groups} with gc_axis=0 for {where}: per-group means are for "
                "ConvTranspose weights (in, out/groups, k...), whose output axis is 1"
            )
        if t.shape[0] % groups:
            raise ValueError(
                f"gc_groups={groups} does not divide axis 0 (length {t.shape[0]}) of {where}"
            )
    return ax, groups


def check_groups(groups: object) -> int:
    """Validate a ``gc_groups`` option."""
    if isinstance(groups, bool):
        raise TypeError(f"gc_groups={groups!r}: expected an int >= 1")
    try:
        g = operator.index(groups)
    except TypeError:
        raise TypeError(f"gc_groups={groups!r}: expected an int >= 1") from None
    if g < 1:
        raise ValueError(f"gc_groups={groups!r} is invalid; allowed: an int >= 1")
    return g


def _grouped(t: Tensor, spec: tuple[int, int]) -> tuple[Tensor, tuple[int, ...]]:
    """``t`` viewed so that the output units are the kept axes; the axes to average over."""
    axis, groups = spec
    if groups == 1:
        return t, tuple(d for d in range(t.ndim) if d != axis)
    x = t.unflatten(0, (groups, -1))
    return x, tuple(d for d in range(x.ndim) if d not in (0, axis + 1))


def _mean(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    # float16/bfloat16 accumulate in float32 (the subtraction then rounds once).
    if x.dtype in _LOW:
        return x.mean(dims, keepdim=True, dtype=torch.float32)
    return x.mean(dims, keepdim=True)


#: Elements of a float16/bfloat16 tensor that :func:`center_into` converts to float32 at
#: once: 4 MiB of float32, which stays in cache through the four passes (the best of
#: 64 Ki–16 Mi elements on a 2048 x 4608 bfloat16 gradient, 2 threads).
LOW_CHUNK = 1 << 20
#: Below this many elements torch's direct mixed-dtype ops are the faster (fewer calls):
#: 28 against 46 µs at 64 Ki elements, 62 against 92 µs at 192 Ki; 675 against 88 µs at
#: 256 Ki, where torch's route falls off.
LOW_DIRECT = 1 << 17
#: From this many elements the compiled rows pay for their call (a few µs).
LOW_KERNEL = 1 << 12
_scratch = threading.local()


def _float32_scratch(numel: int) -> Tensor:
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < numel:
        buf = _scratch.buf = torch.empty(numel, dtype=torch.float32)
    return buf


def center_into(
    out: Tensor, x: Tensor, dims: tuple[int, ...], *, means: bool = True
) -> Tensor | None:
    """``out = x - mean(x over dims)`` (``out`` may be ``x``); returns the means (with
    ``means=False``, ``None`` where they were not computed as a tensor).

    float16/bfloat16 means are float32 and the subtraction rounds once. On the CPU, torch
    reduces and subtracts across those dtypes through slow conversions (a mean over a
    2048 x 4608 bfloat16 tensor took ~30 ms, as long as 25 float32 ones, and a fresh
    float32 copy pays its page faults). So contiguous rows go to the compiled
    ``gc_center_low_`` where the kernels are on (~1.9 ms on that tensor; it keeps the
    means to itself), and other layouts are converted in chunks of whole units into a
    reused float32 buffer and centralized there (~3.4 ms); the result is the same.
    """
    # float32/float64, CUDA and DTensor (and small or unit-free tensors) take torch's ops
    # as they are; the first test keeps the hot float32 path free of layout work.
    low = x.dtype in _LOW and x.device.type == "cpu" and type(x) in _PLAIN
    if (
        low
        and not means
        and 0 not in dims
        and len(dims) == x.ndim - 1  # the units are the rows
        and x.numel() >= LOW_KERNEL
        and x.is_contiguous()
        and out.is_contiguous()
        and _kernels.enabled()
        and _kernels.load_kernels()
        and _kernels.get().gc_center_low_([out], [x])
    ):
        return None
    if not low or len(dims) == x.ndim or x.numel() < LOW_DIRECT:
        m = _mean(x, dims)
        torch.sub(x, m, out=out)
        return m
    kept = [d for d in range(x.ndim) if d not in dims]
    shape = [1 if d in dims else n for d, n in enumerate(x.shape)]
    result = torch.empty(shape, dtype=torch.float32)
    k = max(kept, key=lambda d: x.shape[d])  # the finest slices of whole units
    size = x.shape[k]
    step = max(1, LOW_CHUNK // max(1, x.numel() // size))
    buf = _float32_scratch(min(x.numel(), step * (x.numel() // size)))
    for start in range(0, size, step):
        n = min(step, size - start)
        part = x.narrow(k, start, n)
        b = buf[: part.numel()].view(part.shape)
        b.copy_(part)
        m = result.narrow(k, start, n)
        torch.mean(b, dims, keepdim=True, out=m)
        b.sub_(m)
        out.narrow(k, start, n).copy_(b)
    return result


def centralize_inplace(t: Tensor, spec: Spec) -> Tensor:
    """Subtract each output unit's mean from ``t`` in place; returns ``t``."""
    if spec is None:
        return t
    x, dims = _grouped(t, spec)
    center_into(x, x, dims, means=False)
    return t


def centered(t: Tensor, spec: Spec) -> Tensor:
    """A new centralized tensor (``t`` is not modified)."""
    if spec is None:
        return t.clone()
    x, dims = _grouped(t, spec)
    out = x - _mean(x, dims)
    return out.to(t.dtype).reshape(t.shape)


def to_units(t: Tensor, spec: tuple[int, int]) -> Tensor:
    """``t`` as a 2-D ``(units, fan_in)`` tensor (a copy unless already in that layout)."""
    axis, groups = spec
    if groups == 1:
        return t.movedim(axis, 0).reshape(t.shape[axis], -1)
    x = t.unflatten(0, (groups, -1)).movedim(axis + 1, 1)
    return x.reshape(groups * x.shape[1], -1)


def from_units(u: Tensor, shape: Sequence[int], spec: tuple[int, int]) -> Tensor:
    """Inverse of :func:`to_units` for a tensor of ``shape``."""
    axis, groups = spec
    shape = tuple(shape)
    if groups == 1:
        moved = (shape[axis], *shape[:axis], *shape[axis + 1 :])
        return u.reshape(moved).movedim(0, axis)
    g_shape = (groups, shape[0] // groups, *shape[1:])
    moved = list(g_shape)
    out_ax = axis + 1
    moved = [moved[0], moved[out_ax], *[s for i, s in enumerate(moved) if i not in (0, out_ax)]]
    return u.reshape(moved).movedim(1, out_ax).flatten(0, 1)
