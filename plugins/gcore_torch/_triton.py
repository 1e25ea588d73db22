"""Triton kernels for GC-SGD, GC-Adam and GC-AdamW on CUDA (row-blocked, many tensors a launch).

Each program of a launch owns a tile of ``ROWS x BLOCK`` elements: ``ROWS`` output units
(rows of a ``(units, fan_in)`` view) of one tensor. It reads the rows' gradients once to
take each unit's mean in the accumulation dtype (float32; float64 for float64 tensors),
then reads them again (from cache) with the parameter and state, subtracts the mean and
applies the update, writing parameter and state once. The centralized gradient never
reaches memory and the gradient tensors are not modified.

The interface, called by ``gcore_torch``'s fused path (keep this shape)::

    available(device) -> bool
    sgd_(params2d, grads2d, bufs2d, centralize, *, lr, momentum, dampening,
         weight_decay, nesterov, maximize, first_step) -> None
    adam_(params2d, grads2d, exp_avgs2d, exp_avg_sqs2d, max_exp_avg_sqs2d, centralize, *,
          step, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize,
          convention="torch") -> None

* ``params2d``, ``grads2d`` and the state lists hold, tensor by tensor, contiguous tensors
  of one shape on one device; a tensor whose ``centralize[i]`` is true must be 2-D
  ``(units, fan_in)`` (rows = output units), the others may have any shape (they are
  updated as flat arrays). Parameters and state are updated in place.
* ``bufs2d``: momentum buffers (``None`` or a list of ``None`` when ``momentum == 0``).
  ``first_step`` (a bool, or one per tensor): the buffer is started from the gradient as
  ``torch.optim.SGD`` does (its old contents, e.g. ``torch.empty_like``, are not read).
* ``step``: the step count *including* this step (1 on the first call), an int or one per
  tensor (a tensor whose first gradient came late has a smaller count).
* ``max_exp_avg_sqs2d``: a list when ``amsgrad`` else ``None``.
* ``decoupled=False`` is Adam (L2 ``weight_decay`` added to the gradient before GC);
  ``True`` is AdamW (``p *= 1 - lr*wd``, not centralized). ``convention="paper"``
  (AdamW only) is the GC authors' AdamW: ``u = m/(sqrt(v)+eps) + wd*p``,
  ``p -= lr*sqrt(1-beta2^t)/(1-beta1^t) * u``. SGD adds L2 decay before GC.
* Hyperparameters are Python numbers (a tensor is read with ``float()``).
* Only GC on the gradient (``gc_where="gradient"``, see :data:`GC_WHERE`); the update
  variant, complex tensors and DTensors are the caller's to route elsewhere.

The arithmetic is ``torch.optim``'s in the order of its fused kernels (``_fused_adam_``):
maximize, weight decay, GC, moments (``m += (1-beta1)(g-m)``, ``v = beta2 v +
(1-beta2) g^2``), AMSGrad maximum, ``denom = sqrt(v)/sqrt(1-beta2^t) + eps``,
``p -= lr/(1-beta1^t) * m/denom``; bias corrections in double on the host. float16 and
bfloat16 tensors are loaded into float32, computed there and rounded once when stored
(moments stay in their own dtype); ``eps`` is added in float32. Division and square root
are IEEE round-to-nearest (``div_rn`` / ``sqrt_rn``), not the fast approximations.

Many tensors per launch: a launch takes a table with one row per tensor (pointers, shape,
GC flag, per-tensor step scalars) and a cached list of tasks ``(tensor, first row)``, one
per program. Tile shapes are compile-time constants, so tensors are grouped into one
launch per *row-length bucket*: ``BLOCK = next_pow2(fan_in)`` (at most
:data:`MAX_BLOCK`; longer rows loop over ``BLOCK``-wide chunks) and ``ROWS = TILE //
BLOCK``, so every program covers about ``TILE`` elements whatever the row length and no
lane is spent on a padded row beyond the power of two. Tensors without GC are cut into
``BLOCK``-wide pieces and join one of those launches. ResNet-50 needs about ten launches a
step per dtype (one per distinct power of two of its fan-ins), where a single launch with
``BLOCK = max fan_in`` would mask out most lanes of every short row. Pointers live in the
table, not in kernel arguments, so the number of tensors a launch takes is unbounded.

On a CPU the kernels run under Triton's interpreter when ``TRITON_INTERPRET=1`` was set
before Triton's first import in the process (the tests run them in a subprocess started
so); :func:`available` reports it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import struct
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["GC_WHERE", "MAX_BLOCK", "TILE", "adam_", "available", "sgd_"]

#: The GC variants the kernels implement (``gc_where`` values).
GC_WHERE = ("gradient",)
#: Elements a program covers (``ROWS * BLOCK`` for rows up to this long).
TILE = 4096
#: Longest row a program holds in one chunk; longer rows loop.
MAX_BLOCK = 4096

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_F = 12  # int64 fields per tensor in a launch's table (see _row)
_NUM_SCALARS = 8

triton: Any = None
tl: Any = None  # triton.language, bound on first use (the kernels read it as a global)
_KERNELS: tuple[Any, Any] | None = None
_TASKS: dict[tuple[Any, ...], Tensor] = {}
_TRITON_ERROR: str | None = None


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _import_triton() -> bool:
    global triton, tl, _TRITON_ERROR
    if triton is not None:
        return True
    if _TRITON_ERROR is not None:
        return False
    if importlib.util.find_spec("triton") is None:
        _TRITON_ERROR = "triton is not installed"
        return False
    try:
        import triton as _triton_mod
        import triton.language as _tl
    except Exception as err:  # a broken install: report unavailable, never crash
        _TRITON_ERROR = f"import triton failed: {err!r}"
        return False
    triton, tl = _triton_mod, _tl
    return True


def _imported_interpreted() -> bool:
    """Whether Triton was imported in interpreter mode.

    Triton's own library functions (``tl.sum``, ``tl.zeros``, ...) are built when Triton is
    imported, as interpreted or as compiled functions, so a process runs kernels one way
    only: ``TRITON_INTERPRET=1`` must be set before Triton's first import.
    """
    return type(tl.zeros).__name__ == "InterpretedFunction"


def available(device: torch.device | str) -> bool:
    """Whether the kernels run on ``device``.

    True on a CUDA device where Triton imports, and on the CPU when ``TRITON_INTERPRET=1``
    was set before Triton was first imported (Triton's interpreter: slow, for tests).
    Triton is imported only when one of those can hold, so asking about the CPU without
    the interpreter costs nothing.
    """
    dev = torch.device(device)
    if _interpret():
        return dev.type == "cpu" and _import_triton() and _imported_interpreted()
    return (
        dev.type == "cuda"
        and torch.cuda.is_available()
        and _import_triton()
        and not _imported_interpreted()
    )


# --- the kernels (plain functions, given to triton.jit on first use) ---------------------


def _sgd_kernel(
    tab,
    tabf,
    scal,
    tasks,
    P,
    G,
    B,
    F: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
    IS64: tl.constexpr,
    MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    L2: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(tasks + 2 * pid).to(tl.int64)
    row0 = tl.load(tasks + 2 * pid + 1).to(tl.int64)
    meta = tab + t * F
    p_ptr = tl.load(meta).to(P.dtype)
    g_ptr = tl.load(meta + 1).to(G.dtype)
    b_ptr = tl.load(meta + 2).to(B.dtype)
    n_cols = tl.load(meta + 5)
    n_rows = tl.load(meta + 6)
    numel = tl.load(meta + 7)
    gc = tl.load(meta + 8)
    first = tl.load(meta + 9)
    lr = tl.load(scal).to(ACC)
    momentum = tl.load(scal + 1).to(ACC)
    one_minus_damp = tl.load(scal + 2).to(ACC)
    wd = tl.load(scal + 3).to(ACC)

    rows = row0 + tl.arange(0, ROWS)[:, None]
    lanes = tl.arange(0, BLOCK)[None, :]
    row_ok = rows < n_rows
    mean = tl.zeros([ROWS, 1], ACC)
    if gc != 0:
        acc = tl.zeros([ROWS, BLOCK], ACC)
        for c0 in range(0, n_cols, BLOCK):
            cols = c0 + lanes
            offs = rows * n_cols + cols
            mask = row_ok & (cols < n_cols) & (offs < numel)
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
            if MAXIMIZE:
                g = -g
            if L2:
                g += wd * tl.load(p_ptr + offs, mask=mask, other=0.0).to(ACC)
            acc += g
        total = tl.sum(acc, axis=1)[:, None]
        mean = total / n_cols.to(ACC) if IS64 else tl.div_rn(total, n_cols.to(ACC))
    for c0 in range(0, n_cols, BLOCK):
        cols = c0 + lanes
        offs = rows * n_cols + cols
        mask = row_ok & (cols < n_cols) & (offs < numel)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(ACC)
        if MAXIMIZE:
            g = -g
        if L2:
            g += wd * p
        g = g - mean
        if MOMENTUM:
            # (rows * 0 + first): a tensor, so the mask stays boolean in the interpreter too
            old = tl.load(b_ptr + offs, mask=mask & (rows * 0 + first == 0), other=0.0).to(ACC)
            buf = tl.where(first != 0, g, momentum * old + one_minus_damp * g)
            tl.store(b_ptr + offs, buf, mask=mask)
            d = g + momentum * buf if NESTEROV else buf
        else:
            d = g
        tl.store(p_ptr + offs, p - lr * d, mask=mask)


def _adam_kernel(
    tab,
    tabf,
    scal,
    tasks,
    P,
    G,
    M1,
    V,
    VM,
    F: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
    IS64: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    L2: tl.constexpr,
    DECOUPLED: tl.constexpr,
    AMSGRAD: tl.constexpr,
    PAPER: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(tasks + 2 * pid).to(tl.int64)
    row0 = tl.load(tasks + 2 * pid + 1).to(tl.int64)
    meta = tab + t * F
    p_ptr = tl.load(meta).to(P.dtype)
    g_ptr = tl.load(meta + 1).to(G.dtype)
    m_ptr = tl.load(meta + 2).to(M1.dtype)
    v_ptr = tl.load(meta + 3).to(V.dtype)
    vm_ptr = tl.load(meta + 4).to(VM.dtype)
    n_cols = tl.load(meta + 5)
    n_rows = tl.load(meta + 6)
    numel = tl.load(meta + 7)
    gc = tl.load(meta + 8)
    step_size = tl.load(tabf + t * F + 10).to(ACC)
    bc2_sqrt = tl.load(tabf + t * F + 11).to(ACC)
    one_minus_beta1 = tl.load(scal).to(ACC)
    beta2 = tl.load(scal + 1).to(ACC)
    one_minus_beta2 = tl.load(scal + 2).to(ACC)
    eps = tl.load(scal + 3).to(ACC)
    wd = tl.load(scal + 4).to(ACC)
    decay = tl.load(scal + 5).to(ACC)

    rows = row0 + tl.arange(0, ROWS)[:, None]
    lanes = tl.arange(0, BLOCK)[None, :]
    row_ok = rows < n_rows
    mean = tl.zeros([ROWS, 1], ACC)
    if gc != 0:
        acc = tl.zeros([ROWS, BLOCK], ACC)
        for c0 in range(0, n_cols, BLOCK):
            cols = c0 + lanes
            offs = rows * n_cols + cols
            mask = row_ok & (cols < n_cols) & (offs < numel)
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
            if MAXIMIZE:
                g = -g
            if L2:
                g += wd * tl.load(p_ptr + offs, mask=mask, other=0.0).to(ACC)
            acc += g
        total = tl.sum(acc, axis=1)[:, None]
        mean = total / n_cols.to(ACC) if IS64 else tl.div_rn(total, n_cols.to(ACC))
    for c0 in range(0, n_cols, BLOCK):
        cols = c0 + lanes
        offs = rows * n_cols + cols
        mask = row_ok & (cols < n_cols) & (offs < numel)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(ACC)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(ACC)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(ACC)
        if MAXIMIZE:
            g = -g
        if L2:
            g += wd * p
        g = g - mean
        m = m + one_minus_beta1 * (g - m)
        v = beta2 * v + one_minus_beta2 * (g * g)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)
        if AMSGRAD:
            vm = tl.maximum(tl.load(vm_ptr + offs, mask=mask, other=0.0).to(ACC), v)
            tl.store(vm_ptr + offs, vm, mask=mask)
            second = vm
        else:
            second = v
        root = tl.sqrt(second) if IS64 else tl.sqrt_rn(second)
        if PAPER:
            u = m / (root + eps) if IS64 else tl.div_rn(m, root + eps)
            if DECOUPLED:
                u += wd * p
            p = p - step_size * u
        else:
            if DECOUPLED:
                p = p * decay
            if IS64:
                denom = root / bc2_sqrt + eps
                p = p - step_size * (m / denom)
            else:
                denom = tl.div_rn(root, bc2_sqrt) + eps
                p = p - step_size * tl.div_rn(m, denom)
        tl.store(p_ptr + offs, p, mask=mask)


def _kernels() -> tuple[Any, Any]:
    """The jitted kernels (compiled, or interpreted where Triton was imported so)."""
    global _KERNELS
    if _KERNELS is None:
        if not _import_triton():
            raise RuntimeError(f"gcore_torch's Triton kernels are unavailable: {_TRITON_ERROR}")
        if _imported_interpreted() != _interpret():
            raise RuntimeError(
                "TRITON_INTERPRET changed after Triton was imported; set it (or not) before "
                "the first import of triton in the process"
            )
        _KERNELS = (triton.jit(_sgd_kernel), triton.jit(_adam_kernel))
    return _KERNELS


# --- launch planning ------------------------------------------------------------------


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _block_for_row(n_cols: int) -> int:
    return min(MAX_BLOCK, max(2, _next_pow2(n_cols)))


def _check(
    name: str, tensors: Sequence[Tensor | None], like: Sequence[Tensor], optional: bool = False
) -> None:
    if len(tensors) != len(like):
        raise ValueError(f"{name} has {len(tensors)} tensors, params2d has {len(like)}")
    for i, (t, p) in enumerate(zip(tensors, like, strict=True)):
        if t is None:
            if optional:
                continue
            raise ValueError(f"{name}[{i}] is None")
        if t.shape != p.shape:
            raise ValueError(
                f"{name}[{i}] has shape {tuple(t.shape)}, params2d[{i}] {tuple(p.shape)}"
            )
        if t.device != p.device:
            raise ValueError(f"{name}[{i}] is on {t.device}, params2d[{i}] on {p.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name}[{i}] is not contiguous")
        if t.dtype not in _SUPPORTED:
            raise TypeError(
                f"{name}[{i}] has dtype {t.dtype}; the Triton kernels take float16, "
                "bfloat16, float32 and float64"
            )


def _per_tensor(name: str, value: Any, n: int) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} tensors")
        return list(value)
    return [value] * n


def _f64_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _tasks(device: torch.device, rows_per_task: int, n_rows: tuple[int, ...]) -> Tensor:
    """``(tensor, first row)`` per program (int32 pairs), cached by shapes."""
    key = (device, rows_per_task, n_rows)
    got = _TASKS.get(key)
    if got is None:
        if max(n_rows) >= 2**31:
            raise ValueError("a tensor has 2**31 rows or more")
        counts = torch.tensor([-(-r // rows_per_task) for r in n_rows], dtype=torch.int64)
        which = torch.repeat_interleave(torch.arange(len(n_rows)), counts)
        starts = torch.cumsum(counts, 0) - counts
        row0 = (torch.arange(which.numel()) - starts[which]) * rows_per_task
        got = torch.stack([which, row0], 1).to(torch.int32).reshape(-1).to(device)
        if len(_TASKS) >= 256:
            _TASKS.clear()
        _TASKS[key] = got
    return got


def _plan(
    params: Sequence[Tensor], centralize: Sequence[bool], dtype_keys: list[tuple[Any, ...]]
) -> list[tuple[tuple[Any, ...], int, int, list[int], list[tuple[int, int, int]]]]:
    """``[(dtype key, ROWS, BLOCK, tensor indices, [(n_cols, n_rows, numel)]), ...]``."""
    buckets: dict[tuple[Any, ...], dict[int, list[int]]] = {}
    flat: dict[tuple[Any, ...], list[int]] = {}
    for i, (p, c) in enumerate(zip(params, centralize, strict=True)):
        if p.numel() == 0:
            continue
        key = dtype_keys[i]
        if c:
            if p.ndim != 2:
                raise ValueError(
                    f"params2d[{i}] has shape {tuple(p.shape)}: a centralized tensor must "
                    "be a 2-D (units, fan_in) view"
                )
            buckets.setdefault(key, {}).setdefault(_block_for_row(p.shape[1]), []).append(i)
        else:
            flat.setdefault(key, []).append(i)
    out = []
    for key in {**buckets, **flat}:
        by_block = buckets.get(key, {})
        rest = flat.get(key, [])
        # Uncentralized tensors are cut into BLOCK-wide rows and join the widest launch.
        join = max(by_block) if by_block else TILE
        if rest:
            by_block.setdefault(join, [])
        for block, idx in sorted(by_block.items()):
            rows = max(1, TILE // block)
            shapes = [(params[i].shape[1], params[i].shape[0], params[i].numel()) for i in idx]
            if block == join:
                for i in rest:
                    n = params[i].numel()
                    shapes.append((block, -(-n // block), n))
                idx = idx + rest
            out.append((key, rows, block, idx, shapes))
    return out


def _launch(
    kernel: Any,
    state_lists: Sequence[Sequence[Tensor | None]],
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    centralize: Sequence[bool],
    scalars: Sequence[float],
    per_tensor: Any,
    constexprs: dict[str, Any],
    n_likes: int,
) -> None:
    """Group, upload one table for the call, and launch once per (dtypes, bucket).

    ``per_tensor(i) -> (flag9, float10, float11)``: the tensor's extra table fields.
    """
    n = len(params)
    if n == 0:
        return
    device = params[0].device
    for i, p in enumerate(params):
        if p.device != device:
            raise ValueError(f"params2d[{i}] is on {p.device}, params2d[0] on {device}")
    cols = [[s[i] if s is not None else None for s in state_lists] for i in range(n)]
    dtype_keys = [
        (p.dtype, g.dtype, *(s.dtype if s is not None else None for s in c))
        for p, g, c in zip(params, grads, cols, strict=True)
    ]
    plan = _plan(params, centralize, dtype_keys)
    if not plan:
        return
    words = [_f64_bits(x) for x in scalars]
    words += [0] * (_NUM_SCALARS - len(words))
    offsets = []
    for _key, _rows, _block, idx, shapes in plan:
        offsets.append(len(words))
        for i, (n_cols, n_rows, numel) in zip(idx, shapes, strict=True):
            st = cols[i]
            ptrs = [s.data_ptr() if s is not None else 0 for s in st]
            ptrs += [0] * (3 - len(ptrs))
            flag9, f10, f11 = per_tensor(i)
            words += [
                params[i].data_ptr(),
                grads[i].data_ptr(),
                *ptrs,
                n_cols,
                n_rows,
                numel,
                int(bool(centralize[i])),
                int(flag9),
                _f64_bits(f10),
                _f64_bits(f11),
            ]
    table = torch.tensor(words, dtype=torch.int64)
    if device.type != "cpu":
        table = table.to(device)
    tablef = table.view(torch.float64)
    with torch.cuda.device(device) if device.type == "cuda" else _nullcontext():
        for (key, rows, block, idx, shapes), off in zip(plan, offsets, strict=True):
            first = idx[0]
            likes = [params[first], grads[first]]
            likes += [s if s is not None else params[first] for s in cols[first]]
            likes += [params[first]] * (n_likes - len(likes))  # unused pointers
            is64 = torch.float64 in key
            size = len(idx) * _F
            tasks = _tasks(device, rows, tuple(s[1] for s in shapes))
            grid = (tasks.numel() // 2,)
            kernel[grid](
                table[off : off + size],
                tablef[off : off + size],
                tablef[:_NUM_SCALARS],
                tasks,
                *likes,
                F=_F,
                ROWS=rows,
                BLOCK=block,
                ACC=tl.float64 if is64 else tl.float32,
                IS64=is64,
                num_warps=8 if rows * block >= 4096 else 4,
                **constexprs,
            )


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --- public entry points ----------------------------------------------------------------


def sgd_(
    params2d: Sequence[Tensor],
    grads2d: Sequence[Tensor],
    bufs2d: Sequence[Tensor | None] | None,
    centralize: Sequence[bool],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    first_step: bool | Sequence[bool],
) -> None:
    """GC-SGD (``torch.optim.SGD``'s step with GC after L2 decay) on many tensors in place."""
    n = len(params2d)
    _check("grads2d", grads2d, params2d)
    _check("params2d", params2d, params2d)
    if len(centralize) != n:
        raise ValueError(f"centralize has {len(centralize)} entries for {n} tensors")
    momentum, dampening = float(momentum), float(dampening)
    use_momentum = momentum != 0
    if use_momentum:
        if bufs2d is None:
            raise ValueError("bufs2d is required when momentum != 0")
        _check("bufs2d", bufs2d, params2d)
        states: list[Sequence[Tensor | None]] = [bufs2d]
    else:
        states = []
    if nesterov and (not use_momentum or dampening != 0):
        raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")
    firsts = _per_tensor("first_step", first_step, n)
    wd = float(weight_decay)
    sgd, _ = _kernels()
    _launch(
        sgd,
        states,
        params2d,
        grads2d,
        centralize,
        [float(lr), momentum, 1.0 - dampening, wd],
        lambda i: (bool(firsts[i]), 0.0, 0.0),
        {
            "MOMENTUM": use_momentum,
            "NESTEROV": bool(nesterov),
            "MAXIMIZE": bool(maximize),
            "L2": wd != 0,
        },
        3,
    )


def adam_(
    params2d: Sequence[Tensor],
    grads2d: Sequence[Tensor],
    exp_avgs2d: Sequence[Tensor],
    exp_avg_sqs2d: Sequence[Tensor],
    max_exp_avg_sqs2d: Sequence[Tensor] | None,
    centralize: Sequence[bool],
    *,
    step: int | Sequence[int],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
    convention: str = "torch",
) -> None:
    """GC-Adam / GC-AdamW (``torch.optim``'s arithmetic, GC on the gradient) in place."""
    n = len(params2d)
    _check("params2d", params2d, params2d)
    _check("grads2d", grads2d, params2d)
    _check("exp_avgs2d", exp_avgs2d, params2d)
    _check("exp_avg_sqs2d", exp_avg_sqs2d, params2d)
    if len(centralize) != n:
        raise ValueError(f"centralize has {len(centralize)} entries for {n} tensors")
    states: list[Sequence[Tensor | None]] = [exp_avgs2d, exp_avg_sqs2d]
    if amsgrad:
        if max_exp_avg_sqs2d is None:
            raise ValueError("max_exp_avg_sqs2d is required when amsgrad=True")
        _check("max_exp_avg_sqs2d", max_exp_avg_sqs2d, params2d)
        states.append(max_exp_avg_sqs2d)
    if convention not in ("torch", "paper"):
        raise ValueError(f"convention={convention!r}; allowed: 'torch', 'paper'")
    paper = convention == "paper"
    if paper and not decoupled:
        raise ValueError("convention='paper' is AdamW's: it needs decoupled=True")
    lr, beta1, beta2, wd = float(lr), float(beta1), float(beta2), float(weight_decay)
    steps = _per_tensor("step", step, n)
    corrections: dict[Any, tuple[float, float]] = {}

    def per_tensor(i: int) -> tuple[int, float, float]:
        t = steps[i]
        got = corrections.get(t)
        if got is None:
            t = float(t)
            if t < 1:
                raise ValueError(f"step={steps[i]!r}: the count including this step, >= 1")
            bc1 = 1.0 - beta1**t
            bc2 = 1.0 - beta2**t
            got = (lr * math.sqrt(bc2) / bc1, 1.0) if paper else (lr / bc1, math.sqrt(bc2))
            corrections[steps[i]] = got
        return 0, got[0], got[1]

    _, adam = _kernels()
    _launch(
        adam,
        states,
        params2d,
        grads2d,
        centralize,
        [1.0 - beta1, beta2, 1.0 - beta2, float(eps), wd, 1.0 - lr * wd],
        per_tensor,
        {
            "MAXIMIZE": bool(maximize),
            "L2": wd != 0 and not decoupled,
            "DECOUPLED": bool(decoupled) and wd != 0,
            "AMSGRAD": bool(amsgrad),
            "PAPER": paper,
        },
        5,
    )
