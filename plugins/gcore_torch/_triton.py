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
GC flag), its scalars (learning rate, bias corrections, ...: doubles computed on the host)
and a list of tasks ``(tensor, first row)``, one per program. Tile shapes are compile-time
constants, so tensors are grouped into one launch per *row-length bucket*: ``BLOCK =
next_pow2(fan_in)`` (at most :data:`MAX_BLOCK`; longer rows loop over ``BLOCK``-wide
chunks) and ``ROWS = TILE // BLOCK``, so every program covers about ``TILE`` elements
whatever the row length, and no lane is spent on padding beyond the power of two. Tensors
without GC are cut into ``BLOCK``-wide pieces and join the widest launch. ResNet-50 takes
7 launches a step (one per power of two among its fan-ins) where a single launch with
``BLOCK = max fan_in`` would mask out most lanes of every short row, and per-tensor
launches would be 161. Pointers live in the table, not in kernel arguments, so a launch
takes any number of tensors. Tensors at different step counts (or SGD buffers started and
not) go to separate launches with their own scalars.

Host cost per call: the plan (grouping, task lists) is cached by the tensors' shapes,
dtypes and GC flags, and the table on the device by their addresses, so a step that sees
the same tensors again uploads only its scalars (64 bytes a launch group, from pinned
memory without blocking the stream).

On a CPU the kernels run under Triton's interpreter when ``TRITON_INTERPRET=1`` was set
before Triton's first import in the process (the tests run them in a subprocess started
so); :func:`available` reports it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import math
import operator
import os
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

_SUPPORTED = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))
# A launch's table: per tensor 9 int64 fields, pointers (param, grad, up to 3 states: 0 when
# absent) then n_cols, n_rows, numel and the GC flag. Its scalars: 8 doubles.
_F = 9
_NUM_SCALARS = 8

triton: Any = None
tl: Any = None  # triton.language, bound on first use (the kernels read it as a global)
_KERNELS: tuple[Any, Any] | None = None
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
    lr = tl.load(scal).to(ACC)
    momentum = tl.load(scal + 1).to(ACC)
    one_minus_damp = tl.load(scal + 2).to(ACC)
    wd = tl.load(scal + 3).to(ACC)
    first = tl.load(scal + 4) != 0

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
            # (rows * 0 == 0) != first: "not first" as a tensor (a scalar operand of `&`
            # turns the mask into integers in the interpreter)
            old = tl.load(b_ptr + offs, mask=mask & ((rows * 0 == 0) != first), other=0.0)
            buf = tl.where(first, g, momentum * old.to(ACC) + one_minus_damp * g)
            tl.store(b_ptr + offs, buf, mask=mask)
            d = g + momentum * buf if NESTEROV else buf
        else:
            d = g
        tl.store(p_ptr + offs, p - lr * d, mask=mask)


def _adam_kernel(
    tab,
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
    one_minus_beta1 = tl.load(scal).to(ACC)
    beta2 = tl.load(scal + 1).to(ACC)
    one_minus_beta2 = tl.load(scal + 2).to(ACC)
    eps = tl.load(scal + 3).to(ACC)
    wd = tl.load(scal + 4).to(ACC)
    decay = tl.load(scal + 5).to(ACC)
    step_size = tl.load(scal + 6).to(ACC)
    bc2_sqrt = tl.load(scal + 7).to(ACC)

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
            vm = tl.load(vm_ptr + offs, mask=mask, other=0.0).to(ACC)
            vm = tl.maximum(vm, v, propagate_nan=tl.PropagateNan.ALL)  # as torch.maximum
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


# --- launch planning ------------------------------------------------------------------

_SHAPE = operator.attrgetter("shape")
_DTYPE = operator.attrgetter("dtype")
_PTR = Tensor.data_ptr
_PLANS: dict[tuple[Any, ...], _Plan] = {}


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


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _block_for_row(n_cols: int) -> int:
    return min(MAX_BLOCK, max(2, _next_pow2(n_cols)))


def _validate(params: Sequence[Tensor], named: list[tuple[str, Sequence[Tensor]]]) -> None:
    """Every list matches ``params``' shapes, is contiguous, supported and on one device.

    Each check is one C-level pass over a list (``map``); the loops that name the culprit
    run only on failure.
    """
    n = len(params)
    shapes = list(map(_SHAPE, params))
    device = params[0].get_device() if n else None
    for name, ts in [("params2d", params), *named]:
        if len(ts) != n:
            raise ValueError(f"{name} has {len(ts)} tensors, params2d has {n}")
        if not n:
            continue
        if name != "params2d" and list(map(_SHAPE, ts)) != shapes:
            i = next(i for i, t in enumerate(ts) if t.shape != shapes[i])
            raise ValueError(
                f"{name}[{i}] has shape {tuple(ts[i].shape)}, params2d[{i}] {tuple(shapes[i])}"
            )
        if not all(map(Tensor.is_contiguous, ts)):
            i = next(i for i, t in enumerate(ts) if not t.is_contiguous())
            raise ValueError(f"{name}[{i}] is not contiguous")
        if not _SUPPORTED.issuperset(map(_DTYPE, ts)):
            i = next(i for i, t in enumerate(ts) if t.dtype not in _SUPPORTED)
            raise TypeError(
                f"{name}[{i}] has dtype {ts[i].dtype}; the Triton kernels take float16, "
                "bfloat16, float32 and float64"
            )
        if set(map(Tensor.get_device, ts)) != {device}:
            i = next(i for i, t in enumerate(ts) if t.get_device() != device)
            raise ValueError(
                f"{name}[{i}] is on {ts[i].device}, params2d[0] on {params[0].device}"
            )


def _per_tensor(name: str, value: Any, n: int) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} tensors")
        return list(value)
    return [value] * n


def _groups(values: list[Any]) -> tuple[list[Any], tuple[int, ...] | None]:
    """Distinct ``values`` (one launch group each) and each tensor's group (None: all 0)."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) <= 1:
        return distinct, None
    where = {v: k for k, v in enumerate(distinct)}
    return distinct, tuple(where[v] for v in values)


class _Launch:
    __slots__ = ("acc64", "block", "count", "first", "group", "offset", "rows", "tasks")

    def __init__(self, group, first, rows, block, offset, count, tasks, acc64) -> None:
        self.group, self.first, self.rows, self.block = group, first, rows, block
        self.offset, self.count, self.tasks, self.acc64 = offset, count, tasks, acc64


class _Plan:
    """Launches of one signature (shapes, dtypes, GC flags, groups) and its last table.

    ``order``: tensor indices in table order; ``static``: their ``(n_cols, n_rows, numel,
    gc)`` fields. The device table is rebuilt only when a tensor's address changes.
    """

    def __init__(self, launches: list[_Launch], order: list[int], static: Tensor) -> None:
        self.launches, self.static = launches, static
        self.order = torch.tensor(order, dtype=torch.int64)
        self.ptrs: tuple[int, ...] | None = None
        self.table: Tensor | None = None


def _tasks(rows_per_task: int, n_rows: list[int]) -> Tensor:
    """``(tensor, first row)`` per program, as int32 pairs (tensor = index in the launch)."""
    if max(n_rows) >= 2**31:
        raise ValueError("a tensor has 2**31 rows or more")
    counts = torch.tensor([-(-r // rows_per_task) for r in n_rows], dtype=torch.int64)
    which = torch.repeat_interleave(torch.arange(len(n_rows)), counts)
    starts = torch.cumsum(counts, 0) - counts
    row0 = (torch.arange(which.numel()) - starts[which]) * rows_per_task
    return torch.stack([which, row0], 1).to(torch.int32).reshape(-1)


def _make_plan(
    shapes: list[Any],
    dtype_keys: list[tuple[Any, ...]],
    centralize: Sequence[bool],
    group_of: tuple[int, ...] | None,
    device: torch.device,
) -> _Plan:
    """Group tensors by (launch group, dtypes, row-length bucket); one launch each."""
    buckets: dict[tuple[Any, ...], dict[int, list[int]]] = {}
    flat: dict[tuple[Any, ...], list[int]] = {}
    for i, (shape, c) in enumerate(zip(shapes, centralize, strict=True)):
        if math.prod(shape) == 0:
            continue
        key = (0 if group_of is None else group_of[i], dtype_keys[i])
        if c:
            if len(shape) != 2:
                raise ValueError(
                    f"params2d[{i}] has shape {tuple(shape)}: a centralized tensor must be "
                    "a 2-D (units, fan_in) view"
                )
            buckets.setdefault(key, {}).setdefault(_block_for_row(shape[1]), []).append(i)
        else:
            flat.setdefault(key, []).append(i)
    launches: list[_Launch] = []
    order: list[int] = []
    static: list[list[int]] = []
    for key in {**buckets, **flat}:
        by_block = buckets.get(key, {})
        rest = flat.get(key, [])
        # Uncentralized tensors are cut into BLOCK-wide rows and join the widest launch.
        join = max(by_block) if by_block else TILE
        if rest:
            by_block.setdefault(join, [])
        for block, idx in sorted(by_block.items()):
            fields = [[shapes[i][1], shapes[i][0], shapes[i][0] * shapes[i][1], 1] for i in idx]
            if block == join:
                for i in rest:
                    numel = math.prod(shapes[i])
                    fields.append([block, -(-numel // block), numel, 0])
                idx = idx + rest
            rows = max(1, TILE // block)
            tasks = _tasks(rows, [f[1] for f in fields]).to(device)
            acc64 = torch.float64 in key[1]
            launches.append(
                _Launch(key[0], idx[0], rows, block, len(order), len(idx), tasks, acc64)
            )
            order += idx
            static += fields
    return _Plan(launches, order, torch.tensor(static, dtype=torch.int64).reshape(-1, 4))


def _upload(words: Tensor, device: torch.device) -> Tensor:
    if device.type == "cpu":  # the interpreter
        return words
    # From pinned memory without blocking: a pageable copy would wait for all the work
    # queued on the stream (the backward pass) before the step could be enqueued.
    return words.pin_memory().to(device, non_blocking=True)


def _run(
    kernel: Any,
    lists: list[Sequence[Tensor]],
    centralize: Sequence[bool],
    group_of: tuple[int, ...] | None,
    scalars: list[list[float]],
    constexprs: dict[str, Any],
    n_likes: int,
) -> None:
    """Launch ``kernel`` once per (group, dtypes, row bucket) over tensors ``lists``.

    ``lists``: params, grads, then the state lists; ``scalars[k]``: launch group ``k``'s
    scalars (``_NUM_SCALARS`` doubles).
    """
    params = lists[0]
    if not params:
        return
    device = params[0].device
    shapes = list(map(_SHAPE, params))
    dtype_keys = list(zip(*(map(_DTYPE, ts) for ts in lists), strict=True))
    key = (device, tuple(shapes), tuple(dtype_keys), tuple(map(bool, centralize)), group_of)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 64:
            _PLANS.clear()
        plan = _PLANS[key] = _make_plan(shapes, dtype_keys, centralize, group_of, device)
    if not plan.launches:
        return
    ptr_lists = [list(map(_PTR, ts)) for ts in lists]
    ptrs = tuple(itertools.chain.from_iterable(ptr_lists))
    if ptrs != plan.ptrs:
        cols = torch.tensor(ptr_lists, dtype=torch.int64).T[plan.order]
        pad = torch.zeros(len(plan.order), 5 - len(lists), dtype=torch.int64)
        table = torch.cat([cols, pad, plan.static], 1).reshape(-1)
        plan.table, plan.ptrs = _upload(table, device), ptrs
    table = plan.table
    words = [x for group in scalars for x in (*group, *[0.0] * (_NUM_SCALARS - len(group)))]
    scal = _upload(torch.tensor(words, dtype=torch.float64), device)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for launch in plan.launches:
            i = launch.first
            likes = [ts[i] for ts in lists] + [params[i]] * (n_likes - len(lists))
            g = launch.group * _NUM_SCALARS
            kernel[(launch.tasks.numel() // 2,)](
                table[launch.offset * _F : (launch.offset + launch.count) * _F],
                scal[g : g + _NUM_SCALARS],
                launch.tasks,
                *likes,
                F=_F,
                ROWS=launch.rows,
                BLOCK=launch.block,
                ACC=tl.float64 if launch.acc64 else tl.float32,
                IS64=launch.acc64,
                num_warps=8 if launch.rows * launch.block >= 4096 else 4,
                # Both loops compute g + wd * p: contracted into an FMA in one and not the
                # other, they would round apart, and a row whose exact centralized gradient
                # is 0 (a row of one element) would keep an ulp, which Adam's
                # normalization turns into a step of lr.
                enable_fp_fusion=False,
                **constexprs,
            )


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
    momentum, dampening, wd = float(momentum), float(dampening), float(weight_decay)
    use_momentum = momentum != 0
    lists: list[Sequence[Tensor]] = [params2d, grads2d]
    if use_momentum:
        if bufs2d is None or any(b is None for b in bufs2d):
            raise ValueError("bufs2d (a tensor per parameter) is required when momentum != 0")
        lists.append(bufs2d)  # type: ignore[arg-type]
    if nesterov and (not use_momentum or dampening != 0):
        raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")
    _validate(params2d, list(zip(("grads2d", "bufs2d"), lists[1:], strict=False)))
    if len(centralize) != n:
        raise ValueError(f"centralize has {len(centralize)} entries for {n} tensors")
    firsts, group_of = _groups([bool(f) for f in _per_tensor("first_step", first_step, n)])
    scalars = [[float(lr), momentum, 1.0 - dampening, wd, float(f)] for f in firsts]
    _run(
        _kernels()[0],
        lists,
        centralize,
        group_of,
        scalars,
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
    lists: list[Sequence[Tensor]] = [params2d, grads2d, exp_avgs2d, exp_avg_sqs2d]
    names = ["grads2d", "exp_avgs2d", "exp_avg_sqs2d"]
    if amsgrad:
        if max_exp_avg_sqs2d is None:
            raise ValueError("max_exp_avg_sqs2d is required when amsgrad=True")
        lists.append(max_exp_avg_sqs2d)
        names.append("max_exp_avg_sqs2d")
    _validate(params2d, list(zip(names, lists[1:], strict=True)))
    if len(centralize) != n:
        raise ValueError(f"centralize has {len(centralize)} entries for {n} tensors")
    if convention not in ("torch", "paper"):
        raise ValueError(f"convention={convention!r}; allowed: 'torch', 'paper'")
    paper = convention == "paper"
    if paper and not decoupled:
        raise ValueError("convention='paper' is AdamW's: it needs decoupled=True")
    lr, beta1, beta2, wd = float(lr), float(beta1), float(beta2), float(weight_decay)
    steps, group_of = _groups(_per_tensor("step", step, n))
    scalars = []
    for t in steps:
        if float(t) < 1:
            raise ValueError(f"step={t!r}: the count including this step, >= 1")
        # Bias corrections in double, as torch.optim's single-tensor Adam computes them.
        bc1 = 1.0 - beta1 ** float(t)
        bc2 = 1.0 - beta2 ** float(t)
        step_size, bc2_sqrt = (
            (lr * math.sqrt(bc2) / bc1, 1.0) if paper else (lr / bc1, math.sqrt(bc2))
        )
        scalars.append(
            [1.0 - beta1, beta2, 1.0 - beta2, float(eps), wd, 1.0 - lr * wd, step_size, bc2_sqrt]
        )
    _run(
        _kernels()[1],
        lists,
        centralize,
        group_of,
        scalars,
        {
            "MAXIMIZE": bool(maximize),
            "L2": wd != 0 and not decoupled,
            "DECOUPLED": bool(decoupled) and wd != 0,
            "AMSGRAD": bool(amsgrad),
            "PAPER": paper,
        },
        5,
    )
