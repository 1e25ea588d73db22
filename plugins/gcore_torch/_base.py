"""What gcore_torch's SGD / Adam / AdamW share: validation, path choice, checkpoints.

Like ``torch.optim``, ``step`` gathers each param group's tensors and hands them to one of
three functions of the algorithm's module (``_sgd.py``, ``_adam.py``):

* ``single``: gcore's core rule (:class:`gcore.SGD`, :class:`gcore.Adam`,
  :class:`gcore.AdamW`) on each tensor, results copied into the parameter and state in
  place. Every other path is tested against it. ``gc_where="update"``, AdamW's
  ``convention="paper"`` (without the compiled kernels), strided parameters and
  ``torch.compile`` always take it.
* ``foreach``: each gradient centralized by plain torch ops, then torch's multi-tensor
  kernels.
* ``fused`` (the default on CPU and CUDA): on the CPU, compiled kernels
  (``csrc/gc_kernels.cpp`` over the shared ``gcore/csrc/gc_update.h``) that take each
  output unit's mean and update the row while it is in cache (units that are not rows,
  such as transformers' Conv1D or ConvTranspose: a pass for the means, then the update);
  on CUDA, the row-blocked Triton kernels where available. Everything they do not cover
  (float16/bfloat16, non-contiguous tensors, units that are not rows on CUDA, no
  compiler) is centralized into a cached buffer in the parameter's
  memory format and given to torch's fused kernel, or to torch's foreach kernel where
  torch's fused kernel would skip the dtype (float16/bfloat16 SGD on the CPU). Once a
  group's routing is known (its step plan), row-unit tensors on the CPU are centralized
  and handed to torch's fused kernel in cache-sized row blocks instead (:class:`RowBlocks`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from functools import cache, partial
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import _device_dtype_check_for_fused

import gcore

from . import _gc
from ._gc import Spec

__all__ = ["GCOptimizerMixin", "Scratch", "pick", "rule_gc", "scalar"]

_GC_KEYS = ("gc", "gc_where", "gc_axis", "gc_groups")
#: Group settings that every step reads afresh (the CPU kernels' and torch's scalars), so a
#: change of them (an lr scheduler's) keeps a group's step plan.
PER_STEP = frozenset(
    {"lr", "betas", "eps", "weight_decay", "momentum", "dampening", "initial_lr", "max_lr",
     "min_lr", "base_momentum", "max_momentum"}
)  # fmt: skip
_GC_DEFAULTS = {"gc": True, "gc_where": "gradient", "gc_axis": 0, "gc_groups": 1}
_LOW = (torch.float16, torch.bfloat16)
_ALL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CPU_KERNEL_DTYPES = (torch.float32, torch.float64)
_CPU = torch.device("cpu")


def scalar(x: Any) -> Any:
    """A Python number from a number or a one-element tensor (learning rates, betas)."""
    return x.item() if isinstance(x, Tensor) else x


def pick(seq: list[Any], idx: list[int]) -> list[Any]:
    return [seq[i] for i in idx]


def counts_base(steps: list[Any]) -> Tensor | None:
    """The one tensor whose elements are exactly ``steps`` (0-d views, in order), as
    :func:`packed_counts` makes them; ``None`` otherwise."""
    base = getattr(steps[0], "_base", None)
    if base is None or base.dim() != 1 or base.numel() != len(steps) or base.stride(0) != 1:
        return None
    first = base.storage_offset()
    for k, s in enumerate(steps):
        if getattr(s, "_base", None) is not base or s.dim() or s.storage_offset() != first + k:
            return None
    return base


def packed_counts(steps: list[Any]) -> list[Any]:
    """Step counts as the elements of one tensor (values kept), so that a planned step
    advances them with one ``add_`` where ``torch._foreach_add_`` takes ~2.5 µs a tensor
    on the CPU; ``steps`` itself where they are packed already or cannot be (not all 0-d
    tensors of one dtype and device)."""
    if len(steps) < 2 or counts_base(steps) is not None:
        return steps
    if not all(isinstance(s, Tensor) and s.dim() == 0 for s in steps):
        return steps
    if len({(s.dtype, s.device) for s in steps}) != 1:
        return steps
    return list(torch.stack(steps).unbind())


def rule_gc(group: dict[str, Any], spec: Spec) -> gcore.GC | None:
    """The core rule's GC for a tensor with ``spec``.

    Grouped specs run in the ``(units, fan_in)`` layout of :func:`_gc.to_units`: axis 0.
    """
    if spec is None:
        return None
    return gcore.GC(axis=spec[0] if spec[1] == 1 else 0, where=group["gc_where"])


def torch_only(group: dict[str, Any]) -> bool:
    """Whether a group's step is torch.optim's own (no GC: ``gc=False`` or
    ``gc_axis=None``, with torch's arithmetic): it then runs on torch's kernels, so that
    it equals torch.optim with the same flags bit for bit (the default path: torch's
    fused kernel) and an A/B of GC against no GC differs by GC alone."""
    off = group["gc"] is False or group["gc_axis"] is None
    return off and group.get("convention", "torch") == "torch"


def check_gc_options(group: dict[str, Any], where: str) -> None:
    """``gc`` is exactly True, False or "conv_only"; ``gc_where``, ``gc_axis``,
    ``gc_groups`` as documented. ``None``, ``0``, ``"conv-only"`` raise."""
    gc = group["gc"]
    if not (gc is True or gc is False or (isinstance(gc, str) and gc == "conv_only")):
        raise ValueError(f"gc={gc!r} {where} is invalid; allowed: True, False, 'conv_only'")
    gw = group["gc_where"]
    if not (isinstance(gw, str) and gw in ("gradient", "update")):
        raise ValueError(f"gc_where={gw!r} {where} is invalid; allowed: 'gradient', 'update'")
    axis = group["gc_axis"]
    if axis is not None and (not isinstance(axis, numbers.Integral) or isinstance(axis, bool)):
        raise TypeError(f"gc_axis={axis!r} {where}: expected an int output axis or None")
    group["gc_groups"] = _gc.check_groups(group["gc_groups"])


def is_plain(t: Tensor) -> bool:
    """A plain tensor (not a DTensor or other subclass, which keep plain torch ops)."""
    return type(t) in (Tensor, torch.nn.Parameter)


def is_dense(t: Tensor) -> bool:
    """Whether ``t`` covers its storage densely (contiguous or channels_last)."""
    if t.is_contiguous():
        return True
    if t.ndim == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    if t.ndim == 5:
        return t.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def same_layout(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.stride() == b.stride()


def match_layout(state: dict[str, Any], key: str, p: Tensor) -> Tensor:
    """``state[key]`` with ``p``'s strides (a loaded checkpoint keeps its own): fused
    kernels walk all their tensors with one set of strides."""
    t = state[key]
    if t.stride() != p.stride() or t.shape != p.shape:
        t = torch.empty_like(p).copy_(t)
        state[key] = t
    return t


_FUSED_OK: dict[tuple[str, torch.dtype, str], bool] = {}


def torch_fused_ok(p: Tensor, algorithm: str) -> bool:
    """Whether torch's fused kernel updates ``p`` (it skips float16/bfloat16 SGD on the
    CPU, leaving the weights where they were)."""
    key = (p.device.type, p.dtype, algorithm)
    ok = _FUSED_OK.get(key)
    if ok is None:
        ok = not (p.device.type == "cpu" and algorithm == "sgd" and p.dtype in _LOW)
        if ok:
            try:
                _device_dtype_check_for_fused(p)
            except RuntimeError:
                ok = False
        _FUSED_OK[key] = ok
    return ok


class Scratch:
    """One cached flat buffer per (device, dtype), grown on demand, handed out as views
    laid out like given tensors (for centralized gradients)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._views: tuple[tuple, list[Tensor]] | None = None

    def views(self, like: list[Tensor]) -> list[Tensor]:
        # The same tensors come every step: reuse the last views while nothing changed.
        key = tuple((id(t), t.shape, t.stride(), t.dtype, t.device) for t in like)
        cached = getattr(self, "_views", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        out = self._make_views(like)
        self._views = (key, out)
        return out

    def _make_views(self, like: list[Tensor]) -> list[Tensor]:
        out: list[Tensor] = [None] * len(like)  # type: ignore[list-item]
        by_key: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(like):
            by_key.setdefault((t.device, t.dtype), []).append(i)
        for key, idx in by_key.items():
            total = sum(like[i].numel() for i in idx)
            buf = self._buffers.get(key)
            if buf is None or buf.numel() < total:
                buf = torch.empty(total, dtype=key[1], device=key[0])
                self._buffers[key] = buf
            off = 0
            for i in idx:
                t = like[i]
                if not is_plain(t):  # a DTensor: its own sharded empty_like
                    out[i] = torch.empty_like(t)
                    continue
                n = t.numel()
                flat = buf[off : off + n]
                # Laid out like t where t is dense; a strided t gets a contiguous view.
                out[i] = (
                    flat.as_strided(t.shape, t.stride()) if is_dense(t) else flat.view(t.shape)
                )
                off += n
        return out


def centered_into(
    outs: list[Tensor], grads: list[Tensor], params: list[Tensor], specs: list[Spec], l2: float
) -> None:
    """``outs[i] = Φ(grads[i] + l2 · params[i])`` (plain copy where the spec is None).

    On the CPU, tensors whose units are rows are centralized by the compiled ``gc_center_``
    in one pass (built on first use like the fused path's kernels; it declines, writing
    nothing, unless every tensor suits it). When the outputs are larger than the CPU's
    last-level cache, torch's kernel reads them back from memory anyway, so they are
    written by streaming stores (no read of each line before it is written).
    """
    from . import _kernels

    if (
        outs
        and params[0].device.type == "cpu"
        and all(s == (0, 1) for s in specs)
        and _kernels.enabled()
        and _kernels.load_kernels()
    ):
        stream = sum(o.numel() for o in outs) * outs[0].element_size() > last_level_cache_bytes()
        if _kernels.get().gc_center_(outs, grads, params, float(l2), stream):
            return
    for out, g, p, spec in zip(outs, grads, params, specs, strict=True):
        if l2 != 0:
            torch.add(g, p, alpha=l2, out=out)
            _gc.centralize_inplace(out, spec)
        elif spec is None:
            out.copy_(g)
        else:
            x, dims = _gc._grouped(g, spec)
            ox, _ = _gc._grouped(out, spec)
            _gc.center_into(ox, x, dims, means=False)


@cache
def last_level_cache_bytes() -> int:
    """The largest CPU cache (Linux sysfs; 32 MiB where it cannot be read)."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        digits = size.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes, default=32 << 20)


def cuda_kernels(device: torch.device) -> Any:
    """The Triton module for ``device`` (``gcore_torch._triton``), or ``None``."""
    if device.type != "cuda":
        return None
    try:
        from . import _triton  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _triton if _triton.available(device) else None


def kernel_module(device: torch.device) -> Any:
    """The compiled kernels for ``device``: :mod:`gcore_torch._kernels` on the CPU
    (compiled on first use, unless ``GCORE_TORCH_KERNELS=0``), the Triton module on CUDA
    where importable and available; ``None`` otherwise."""
    from . import _kernels

    if device.type == "cpu":
        return _kernels if _kernels.enabled() and _kernels.load_kernels() else None
    return cuda_kernels(device)


def kernel_indices(
    group: dict[str, Any], params: list[Tensor], grads: list[Tensor], specs: list[Spec]
) -> tuple[list[int], Any]:
    """Tensors a compiled kernel can update (plain and contiguous; for the CPU kernels
    float32/float64 of any layout, for the Triton kernels units that are rows: output axis
    0 or no GC; none of a group that is torch's own, :func:`torch_only`), and the kernel
    module."""
    from . import _kernels

    if not params or torch_only(group):
        return [], None
    dev = params[0].device
    if dev.type == "cpu" and not any(p.dtype in _CPU_KERNEL_DTYPES for p in params):
        return [], None  # nothing for the CPU kernels: do not build them
    module = kernel_module(dev)
    if module is None:
        return [], None
    cpu = module is _kernels
    dtypes = _CPU_KERNEL_DTYPES if cpu else _ALL_FLOATS
    ok = [
        i
        for i, (p, g) in enumerate(zip(params, grads, strict=True))
        if kernel_takes(p, dev, dtypes) and is_plain(g) and g.is_contiguous()
        and (cpu or specs[i] in (None, (0, 1)))
    ]  # fmt: skip
    return ok, (module if ok else None)


def kernel_takes(p: Tensor, device: torch.device, dtypes: tuple[torch.dtype, ...]) -> bool:
    """Whether a compiled kernel on ``device`` updates ``p`` (its gradient aside)."""
    return is_plain(p) and p.device == device and p.dtype in dtypes and p.is_contiguous()


def kernel_units(params: list[Tensor], specs: list[Spec]) -> list[int]:
    """The CPU kernels' ``units`` argument: per tensor ``(G, A, U, B)``, the contiguous
    tensor viewed as ``(G, A, U, B)`` whose output units are the ``(g, u)`` pairs
    (``(1, 1, rows, fan_in)`` for rows; ``(1, in, out, 1)`` for transformers' Conv1D;
    grouped ConvTranspose ``(in, out/G, k...)``: ``(G, in/G, out/G, k)``), or
    ``(0, 0, 0, 0)`` without GC; flattened."""
    units: list[int] = []
    for p, spec in zip(params, specs, strict=True):
        if spec is None:
            units += (0, 0, 0, 0)
            continue
        axis, groups = spec
        shape = p.shape
        units += (groups, math.prod(shape[:axis]) // groups, shape[axis],
                  math.prod(shape[axis + 1 :]))  # fmt: skip
    return units


def as_rows(t: Tensor) -> Tensor:
    """A contiguous tensor as its ``(units, fan_in)`` view (a 1-d tensor: one row)."""
    if t.ndim == 0:
        return t.view(1, 1)
    return t.view(t.shape[0], -1) if t.ndim >= 2 else t.view(1, -1)


def unit_views(params: list[Tensor], grads: list[Tensor], idx: list[int]) -> tuple[list, list]:
    return [as_rows(params[i]) for i in idx], [as_rows(grads[i]) for i in idx]


def like_params(grads: list[Tensor], params: list[Tensor]) -> list[Tensor]:
    """``grads`` with their parameters' strides (copies only where they differ)."""
    return [
        g if same_layout(g, p) else torch.empty_like(p).copy_(g)
        for g, p in zip(grads, params, strict=True)
    ]


class GCOptimizerMixin:
    """Validation, checkpoints and dispatch for a ``torch.optim`` class it is mixed into.

    Subclasses set ``_name`` and implement ``_rule(group, spec)`` and
    ``_step_group(group, index, params, grads, specs, path)``.
    """

    _name: ClassVar[str]
    #: Hyperparameters torch's foreach kernel of this algorithm cannot take as tensors
    #: (without capturable, which gcore_torch does not support): rejected like torch.optim.
    _no_tensor_with_foreach: ClassVar[tuple[str, ...]] = ()
    #: (required, allowed) per-parameter state keys, checked by ``load_state_dict``.
    _state_keys: ClassVar[tuple[frozenset[str], frozenset[str]]]
    param_groups: list[dict[str, Any]]
    state: Any
    defaults: dict[str, Any]

    # -- construction ----------------------------------------------------------------------
    def _gc_init(self, params: Any, defaults: dict[str, Any]) -> None:
        fused, foreach = defaults.get("fused"), defaults.get("foreach")
        if defaults.get("differentiable"):
            raise NotImplementedError(
                f"differentiable=True is not supported by gcore_torch.{self._name}; "
                "use torch.optim for differentiating through the optimizer step"
            )
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self._scratch = Scratch()
        self._signatures: list[Any] = []
        # torch.optim's own __init__ would add the groups before our defaults exist.
        torch.optim.Optimizer.__init__(self, params, defaults)  # type: ignore[arg-type]
        self._signatures = [self._signature(g) for g in self.param_groups]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, validated like the constructor's arguments.

        An invalid group raises and is not kept.
        """
        super().add_param_group(param_group)  # type: ignore[misc]
        try:
            self._check_group(self.param_groups[-1], len(self.param_groups) - 1)
        except Exception:
            self.param_groups.pop()
            raise
        if hasattr(self, "_signatures"):
            self._signatures.append(self._signature(self.param_groups[-1]))

    def _check_group(self, group: dict[str, Any], index: int) -> None:
        where = f"in param_groups[{index}]"
        check_gc_options(group, where)
        try:
            self._rule(group, None)  # gcore's rule validates the hyperparameters
        except (ValueError, TypeError) as err:
            raise type(err)(f"{err} ({where})") from None
        if group.get("foreach"):
            for key in self._no_tensor_with_foreach:
                for label in self._tensor_values(group, key):
                    raise ValueError(
                        f"{label} as a Tensor is not supported for capturable=False and "
                        f"foreach=True ({where}); pass a float, or leave foreach unset"
                    )
        if group.get("capturable"):
            raise NotImplementedError(
                "capturable=True (CUDA-graph capture) is not supported by gcore_torch yet"
            )
        if group.get("differentiable"):
            raise NotImplementedError(
                f"differentiable=True is not supported by gcore_torch.{self._name}"
            )
        first: dict[int, int] = {}
        for k, p in enumerate(group["params"]):
            name = f"param_groups[{index}]['params'][{k}]"
            j = first.setdefault(id(p), k)
            if j != k:
                raise ValueError(
                    f"{name} is the same tensor as param_groups[{index}]['params'][{j}]; "
                    "list each parameter once (torch.optim steps a repeated one twice and "
                    "warns that this will become an error)"
                )
            if p.is_complex():
                raise TypeError(
                    f"{name} is complex ({p.dtype}); Gradient Centralization is defined for "
                    "real weights. Optimize torch.view_as_real(p) as a real parameter instead"
                )
            if not p.is_floating_point():
                raise TypeError(
                    f"{name} has dtype {p.dtype}; gcore_torch.{self._name} needs "
                    "floating-point parameters"
                )
            _gc.make_spec(p, group["gc"], group["gc_axis"], group["gc_groups"], where=name)

    @staticmethod
    def _tensor_values(group: dict[str, Any], key: str) -> list[str]:
        """The names of ``group[key]``'s tensor values (``"lr"``, ``"betas[0]"``)."""
        value = group[key]
        if isinstance(value, (tuple, list)):
            return [f"{key}[{j}]" for j, v in enumerate(value) if isinstance(v, Tensor)]
        return [key] if isinstance(value, Tensor) else []

    # -- re-validation when a group changed --------------------------------------------------
    @staticmethod
    def _signature(group: dict[str, Any]) -> tuple:
        items = []
        for k, v in group.items():
            if k == "params":
                items.append((k, tuple(map(id, v))))
            elif isinstance(v, Tensor):
                items.append((k, id(v), v._version))
            elif isinstance(v, (list, tuple)):
                items.append((k, tuple((id(x), x._version) if isinstance(x, Tensor) else x
                                       for x in v)))  # fmt: skip
            else:
                items.append((k, type(v), v))
        return tuple(items)

    def _route(self, index: int) -> tuple:
        """What a step plan of group ``index`` depends on: its validated signature but for
        the values every planned step reads afresh (:data:`PER_STEP`), so that an lr
        scheduler keeps the plan. The same object for as long as it is equal."""
        sig = self._signatures[index]
        routes = self.__dict__.setdefault("_routes", {})
        cached = routes.get(index)
        if cached is not None and cached[0] is sig:
            return cached[1]
        route = tuple(item for item in sig if item[0] not in PER_STEP)
        if cached is not None and cached[1] == route:
            route = cached[1]
        routes[index] = (sig, route)
        return route

    def _revalidate(self) -> None:
        """Validate every group whose settings changed since the last check (a cached
        signature: edits of ``param_groups`` such as a negative ``lr`` raise here)."""
        sigs = getattr(self, "_signatures", None)
        if sigs is None or len(sigs) != len(self.param_groups):
            sigs = self._signatures = [None] * len(self.param_groups)
        for i, group in enumerate(self.param_groups):
            sig = self._signature(group)
            if sig != sigs[i]:
                self._check_group(group, i)
                sigs[i] = sig

    # -- checkpoints ---------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint, also one saved by ``torch.optim`` or by an older release.

        Groups without GC options (a ``torch.optim`` checkpoint) keep this optimizer's
        current ``gc``, ``gc_where``, ``gc_axis``, ``gc_groups``; other missing keys take
        this optimizer's defaults, and an integer ``step`` becomes a tensor, as torch.optim
        does. Before anything is written, every group is validated and every state tensor
        is checked against its parameter: a wrong shape (a checkpoint of another model)
        raises ``ValueError`` naming the parameter.
        """
        saved_groups = state_dict.get("param_groups", [])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        groups = []
        for k, (g, mine) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            g = dict(g)
            for key in _GC_KEYS:
                g.setdefault(key, mine[key])
            for key, value in self.defaults.items():
                g.setdefault(key, value)
            if len(g["params"]) != len(mine["params"]):
                raise ValueError(
                    f"loaded state dict's param_groups[{k}] has {len(g['params'])} "
                    f"parameters, this optimizer's has {len(mine['params'])}"
                )
            self._check_group({**g, "params": mine["params"]}, k)
            groups.append(g)
        self._check_state_shapes(state_dict.get("state", {}), groups)
        super().load_state_dict({**state_dict, "param_groups": groups})  # type: ignore[misc]
        self._signatures = [self._signature(g) for g in self.param_groups]

    def _check_state_shapes(self, state: dict[Any, Any], groups: list[dict[str, Any]]) -> None:
        where: dict[Any, tuple[Tensor, str]] = {}
        for gi, (g, mine) in enumerate(zip(groups, self.param_groups, strict=True)):
            for k, (key, p) in enumerate(zip(g["params"], mine["params"], strict=True)):
                where[key] = (p, f"param_groups[{gi}]['params'][{k}] (shape {tuple(p.shape)})")
        required, allowed = self._state_keys
        for key, entries in state.items():
            if key not in where:
                continue
            p, name = where[key]
            unknown = set(entries) - allowed
            missing = required - set(entries) if entries else set()
            if unknown or missing:
                raise ValueError(
                    f"load_state_dict: the state of {name} has keys {sorted(entries)}; "
                    f"{type(self).__name__} keeps {sorted(allowed)} — a checkpoint of "
                    "another optimizer?"
                )
            for sk, v in entries.items():
                if sk == "step":
                    if isinstance(v, Tensor) and v.numel() != 1:
                        raise ValueError(
                            f"load_state_dict: state 'step' of {name} has {v.numel()} "
                            "elements; expected a single step count"
                        )
                    continue
                if not isinstance(v, Tensor):
                    continue
                if v.shape != p.shape:
                    raise ValueError(
                        f"load_state_dict: state {sk!r} of {name} has shape "
                        f"{tuple(v.shape)}; the checkpoint does not belong to this model"
                    )
                if not v.is_floating_point():
                    raise ValueError(
                        f"load_state_dict: state {sk!r} of {name} has dtype {v.dtype}; "
                        "expected a real floating-point tensor"
                    )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        # torch.optim pickles only defaults, state and param_groups.
        self.__dict__.setdefault("_scratch", Scratch())
        for group in self.param_groups:
            for key, value in _GC_DEFAULTS.items():
                group.setdefault(key, value)
            # Checkpoints of older releases lack newer options: take the defaults.
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self._signatures = [None] * len(self.param_groups)

    # -- stepping --------------------------------------------------------------------------------
    def _rule(self, group: dict[str, Any], spec: Spec) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _path(self, group: dict[str, Any], params: list[Tensor]) -> str:
        fused, foreach = group["fused"], group["foreach"]
        if torch.compiler.is_compiling():
            # Under torch.compile the core rules trace into one graph.
            return "single"
        if fused:
            for p in params:
                _device_dtype_check_for_fused(p)
            return "fused"
        if foreach:
            return "foreach"
        if foreach is False:
            return "single"
        if all(p.device.type in ("cpu", "cuda") and is_plain(p) for p in params):
            if fused is None:
                return "fused"
            # fused=False, as torch.optim: its foreach kernels on CUDA, else one at a time
            return "foreach" if all(p.device.type == "cuda" for p in params) else "single"
        if any(self._tensor_values(group, key) for key in self._no_tensor_with_foreach):
            return "single"  # as torch.optim, which then leaves its foreach kernel
        # DTensors (FSDP2) keep plain torch ops, whose sharding propagation makes GC exact;
        # torch's foreach ops fall back to a loop on other devices.
        return "foreach"

    def _gather(self, group: dict[str, Any], index: int) -> tuple[list[Tensor], list[Tensor]]:
        params, grads = [], []
        for k, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"param_groups[{index}]['params'][{k}] has a sparse gradient; "
                    f"gcore_torch.{self._name} needs dense gradients (GC of a sparse "
                    "gradient is dense)"
                )
            if p.grad.shape != p.shape:
                raise ValueError(
                    f"param_groups[{index}]['params'][{k}] has shape {tuple(p.shape)} but "
                    f"its gradient has shape {tuple(p.grad.shape)}"
                )
            params.append(p)
            grads.append(p.grad)
        return params, grads

    def _specs(self, group: dict[str, Any], params: list[Tensor]) -> list[Spec]:
        return [
            _gc.make_spec(p, group["gc"], group["gc_axis"], group["gc_groups"]) for p in params
        ]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Perform a single optimization step.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        compiling = torch.compiler.is_compiling()
        if not compiling:
            self._revalidate()
        plans = self.__dict__.setdefault("_plans", {})
        for index, group in enumerate(self.param_groups):
            plan = plans.get(index)
            if plan is not None and not compiling and self._run_plan(plan, group, index):
                continue
            params, grads = self._gather(group, index)
            if params:
                path = self._path(group, params)
                specs = self._specs(group, params)
                self._step_group(group, params, grads, specs, path)
                plans[index] = None if compiling else self._plan(group, index, params, specs, path)
        return loss

    # -- the cached step plan -------------------------------------------------------------------
    # Once a group has stepped, its routing (which tensors go to the CPU kernel, which are
    # centralized into which scratch views for torch's kernels) is known and rarely changes:
    # the next steps reuse it after cheap checks (the group's validated settings but for lr
    # and the other values read at every step, shapes and strides), and anything else falls
    # back to the general path, which explains. The CPU kernel itself checks every tensor
    # before writing and declines when one does not suit.
    def _plan(self, group, index, params, specs, path) -> KernelPlan | TorchPlan | None:
        from . import _kernels

        members = group["params"]
        if not (
            path in ("fused", "foreach")
            and group["gc_where"] == "gradient"
            and all(is_plain(p) and is_dense(p) for p in params)
        ):
            return None
        # Members without a gradient (frozen ones, say) are left out while they stay so.
        present = (
            None if len(params) == len(members) else tuple(p.grad is not None for p in members)
        )
        signature = (self._route(index), present)
        shapes = [p.shape for p in params]
        ours = not torch_only(group)
        takes = [ours and kernel_takes(p, _CPU, _CPU_KERNEL_DTYPES) for p in params]
        if path == "fused" and _kernels.loaded():
            if all(takes):
                return KernelPlan(signature, shapes, kernel_units(params, specs))
            if any(takes) or params[0].device.type != "cpu":
                return None  # the general path splits the group
            # None of them is the kernels' (float16/bfloat16, say): torch's, as without them.
        fused = path == "fused"
        if fused and (
            params[0].device.type == "cpu"
            and _kernels.enabled()
            and not _kernels.loaded()
            and any(takes)
        ):
            return None  # the kernels are not built yet: the next step may build them
        devices = {(p.device, p.dtype) for p in params}
        if len(devices) != 1 or not self._torch_plan_ok(group, params[0], fused):
            return None
        cent = [i for i, sp in enumerate(specs) if sp is not None]
        rows = None
        if fused and params[0].device.type == "cpu":
            by_row = [
                i for i in cent
                if specs[i] == (0, 1) and params[i].is_contiguous() and params[i].numel() > 0
            ]  # fmt: skip
            if by_row:
                in_rows = set(by_row)
                cent = [i for i in cent if i not in in_rows]
                rows = RowBlocks(params, by_row, ROW_BLOCK_BYTES)
        outs = self._scratch.views(pick(params, cent))
        return TorchPlan(
            signature,
            shapes,
            [p.stride() for p in params],
            cent,
            [i for i, sp in enumerate(specs) if sp is None],
            outs,
            pick(specs, cent),
            fused,
            rows,
            params[0].device.type == "cpu" and not any(takes),
            params[0].dtype,
            params[0].device,
        )

    def _run_plan(self, plan: KernelPlan | TorchPlan, group: dict[str, Any], index: int) -> bool:
        from . import _kernels

        members = group["params"]
        route, present = plan.signature
        ok = route is self._route(index)
        if ok and present is not None:
            ok = tuple(p.grad is not None for p in members) == present
            members = [p for p, has in zip(members, present, strict=True) if has]
        if ok and isinstance(plan, KernelPlan):
            ok = (
                plan.shapes == [p.shape for p in members]
                and _kernels.loaded()
                and self._kernel_step(group, members, plan.units)
            )
        elif ok:  # _torch_step checks the shapes and strides
            ok = not (plan.fused and not plan.kernel_free and _kernels.loaded()) and (
                self._torch_step(group, members, plan)
            )
        if not ok:
            self._plans[index] = None
        return ok

    def _torch_step(self, group, params, plan: TorchPlan) -> bool:
        """A planned step on torch's kernels; False (nothing written) when a tensor's
        layout changed or a gradient or state entry is missing."""
        try:
            grads = [p.grad for p in params]
            if not (plan.fits(grads) and plan.fits(params) and plan.holds(params)):
                return False
        except (AttributeError, RuntimeError):  # a missing or sparse gradient
            return False
        return self._torch_plan_step(group, params, grads, plan)

    def _torch_plan_ok(self, group, p, fused) -> bool:  # pragma: no cover
        raise NotImplementedError

    def _torch_plan_step(self, group, params, grads, plan) -> bool:  # pragma: no cover
        raise NotImplementedError

    def _kernel_step(self, group, params, units) -> bool:  # pragma: no cover
        raise NotImplementedError

    def _step_group(self, group, params, grads, specs, path) -> None:  # pragma: no cover
        raise NotImplementedError


class KernelPlan(NamedTuple):
    """What the general path found for a group whose tensors all go to the CPU kernels."""

    signature: tuple  # the group's route (by identity) and which members have gradients
    shapes: list[torch.Size]
    units: list[int]  # the kernels' (G, A, U, B) per parameter (see kernel_units)


class TorchPlan(NamedTuple):
    """A group on torch's fused or foreach kernels, every tensor dense, one device/dtype."""

    signature: tuple  # as KernelPlan's
    shapes: list[torch.Size]
    strides: list[tuple[int, ...]]  # of the parameters; gradients and state must match
    cent: list[int]  # tensors centralized into ``outs`` (the rest go to torch as they are)
    plain: list[int]
    outs: list[Tensor]  # scratch views, laid out like their parameters
    specs: list[Spec]  # of ``cent``
    fused: bool  # torch's fused kernel (else its foreach kernel)
    rows: RowBlocks | None  # centralized tensors whose units are rows (CPU fused only)
    kernel_free: bool  # a CPU group of which the kernels take no tensor: it holds with them
    dtype: torch.dtype  # of every parameter (a tensor swapped behind the plan drops it)
    device: torch.device

    def holds(self, tensors: list[Tensor]) -> bool:
        """Whether per-parameter ``tensors`` (parameters, state) have the planned dtype and
        device (``p.data = ...``, or state cast by hand, can change them)."""
        dtype, device = self.dtype, self.device
        return all(t.dtype == dtype and t.device == device for t in tensors)

    def fits(self, tensors: list[Tensor]) -> bool:
        """Whether per-parameter ``tensors`` (gradients, state) have the planned shapes and
        strides (an ``AttributeError`` for a missing one is the caller's to catch)."""
        return [t.stride() for t in tensors] == self.strides and [
            t.shape for t in tensors
        ] == self.shapes


class Part(NamedTuple):
    """One call of torch's kernel in a planned step."""

    take: Callable[[list[Any]], list[Any]]  # the call's entries of a per-parameter list
    idx: list[int]  # the parameter of each entry
    grads: list[Tensor]
    l2: float  # weight decay for torch's kernel (0 where it was folded in before GC)


def plan_parts(plan: TorchPlan, params, grads, centered_l2, plain_l2) -> Iterator[Part]:
    """The calls of torch's kernel for a planned step's tensors outside its row blocks,
    gradients centralized as each call comes (the centralized tensors, then the plain
    ones)."""
    for idx, gs, l2 in ((plan.cent, plan.outs, 0.0), (plan.plain, None, plain_l2)):
        if not idx:
            continue
        if gs is None:
            gs = pick(grads, idx)
        else:
            centered_into(gs, pick(grads, idx), pick(params, idx), plan.specs, centered_l2)

        yield Part(partial(pick, idx=idx), idx, gs, l2)


#: Most bytes of centralized gradient per call of torch's fused CPU kernel in
#: :class:`RowBlocks`: small enough to stay in cache from the subtraction that writes it to
#: the kernel that reads it (each thread's share in its core's L2), large enough that the
#: calls' overhead stays small. 4 MiB was the best of 0.5–256 MiB on ResNet-50 shapes at
#: 2 threads (2 MiB L2 a core, 32 MiB L3).
ROW_BLOCK_BYTES = 4 << 20
#: torch's fused CPU kernels hand each thread whole 64-byte lines of a tensor.
_LINE_BYTES = 64
#: torch runs an elementwise op on fewer elements than this on one thread (its grain size).
_SERIAL = 32768


class RowBlocks:
    """Centralization in row blocks for torch's fused CPU kernel (the pure-PyTorch path).

    Centralizing every gradient into a buffer and then calling torch's kernel once moves
    each gradient through memory four times beyond the kernel's own read (the mean's read,
    the subtraction's read, its write, which first reads the line) — more than the usual
    in-place recipe, which is not open to an optimizer that leaves ``.grad`` as it is.
    Here the parameters' rows are cut into blocks of at most :data:`ROW_BLOCK_BYTES` (or
    one row, when a row is longer): small parameters whole, several to a block, a larger
    one in pieces of whole rows, each piece a block of its own. A block's centralized rows
    are written to one small buffer and torch's kernel is called on the block at once, so
    the buffer does not leave the cache: the gradient is read from memory for its mean,
    and the rest of the traffic is the kernel's own.

    torch splits each tensor of an elementwise op or of its fused kernel into one equal
    run per thread. Were every block written from the buffer's start, the run of a thread
    would move with the block's size, and the buffer's lines would pass from core to core
    on every block — on the shared VM where this was measured, that made the path 1.45x
    the in-place recipe for seconds at a time. So a block of one piece that torch splits
    (at least its grain size) is placed where its runs meet the thread's own part of the
    buffer (for two threads, exactly: the block is centred on the
    buffer's middle; see :meth:`offset`), and the placement follows
    ``torch.get_num_threads()``. Units must be the rows of contiguous tensors (output axis
    0, no grouping).
    """

    def __init__(self, params: list[Tensor], members: list[int], block_bytes: int) -> None:
        self.members = members
        # Per block: (parameter, its piece number, rows, row length); a parameter's pieces
        # are consecutive runs of its rows, in order.
        self.blocks: list[list[tuple[int, int, int, int]]] = []
        self.splits: dict[int, list[int]] = {}  # a parameter's piece sizes, if it has >1
        p0 = params[members[0]]
        cap = max(1, block_bytes // p0.element_size())
        pack = min(cap, _SERIAL - 1)
        block: list[tuple[int, int, int, int]] = []
        used = 0
        for i in members:
            rows = params[i].shape[0]
            width = params[i].numel() // max(rows, 1)
            if rows * width <= pack:  # whole, with the small ones before it if it fits
                if used + rows * width > cap and block:
                    self.blocks.append(block)
                    block, used = [], 0
                block.append((i, 0, rows, width))
                used += rows * width
                continue
            per = max(1, cap // max(width, 1))
            sizes = [min(per, rows - start) for start in range(0, rows, per)]
            self.blocks += [[(i, k, n, width)] for k, n in enumerate(sizes)]
            if len(sizes) > 1:
                self.splits[i] = sizes
        if block:
            self.blocks.append(block)
        self.idx = [[i for i, _, _, _ in b] for b in self.blocks]  # per block, its pieces'
        self._refs = [[(i, k) for i, k, _, _ in b] for b in self.blocks]
        self._members = [
            (i, w, self.splits.get(i)) for b in self.blocks for i, k, _, w in b if k == 0
        ]
        self._empty: list[list[Any]] = [[] for _ in self.blocks]
        self.cap = cap
        self.unit = max(1, _LINE_BYTES // p0.element_size())
        # Placed: the blocks of one piece that torch splits between threads; one starts at
        # most (cap - numel) / 2 in (see offset), so it ends by (cap + numel) / 2.
        self._placed = [len(b) == 1 and b[0][2] * b[0][3] >= _SERIAL for b in self.blocks]
        size = max(
            -(-(cap + sum(n * w for _, _, n, w in b)) // 2) if placed
            else sum(n * w for _, _, n, w in b)
            for b, placed in zip(self.blocks, self._placed, strict=True)
        )  # fmt: skip
        self.buffer = torch.empty(size, dtype=p0.dtype, device=p0.device)
        self._shapes = {i: params[i].shape for i in members}
        self.threads = 0  # the thread count the views below were placed for
        self.outs: list[list[Tensor]] = []  # per block, the centralized rows of its pieces
        self._rows: list[list[Tensor]] = []  # the same as (rows, row length) views
        self._cache: dict[tuple[Any, ...], list[list[Any]]] = {}
        self._used: set[tuple[Any, ...]] = set()  # the keys of _cache a step took

    def offset(self, numel: int, threads: int) -> int:
        """Where in the buffer a block of one piece of ``numel`` elements starts.

        torch gives each of ``threads`` threads a run of ``c`` elements (whole lines); the
        buffer is ``threads`` parts of ``C`` elements. Thread ``t``'s run ends at
        ``off + (t + 1) c`` and its part at ``(t + 1) C``; ``off = threads (C - c) / 2``
        makes the largest gap between them as small as it can be, and zero for two
        threads. With one thread, or a block over a part, the block starts at 0. As
        ``C <= cap / threads`` and ``c >= numel / threads``, ``off <= (cap - numel) / 2``.
        """
        unit = self.unit
        part = self.cap // threads // unit * unit
        run = -(-((numel + unit - 1) // unit) // threads) * unit
        if threads < 2 or run >= part:
            return 0
        return threads * (part - run) // 2 // unit * unit

    def _place(self, threads: int) -> None:
        self.outs, self._rows, self.threads = [], [], threads
        for b, placed in zip(self.blocks, self._placed, strict=True):
            off = self.offset(b[0][2] * b[0][3], threads) if placed else 0
            views, rows_views = [], []
            for i, _, n, w in b:
                flat_rows = self.buffer[off : off + n * w]
                views.append(flat_rows.view(n, w) if i in self.splits
                             else flat_rows.view(self._shapes[i]))  # fmt: skip
                rows_views.append(flat_rows.view(n, w))
                off += n * w
            self.outs.append(views)
            self._rows.append(rows_views)

    def pieces(self, seq: list[Any], rows: bool = False) -> list[list[Any]]:
        """Per block, its pieces of ``seq`` (a per-parameter list): whole tensors, or
        ``(rows, row length)`` views of row ranges (all pieces as such views with
        ``rows``)."""
        views = {
            i: seq[i].detach().view(-1, w).split_with_sizes(sizes) if sizes
            else (seq[i].view(-1, w) if rows else seq[i],)
            for i, w, sizes in self._members
        }  # fmt: skip
        return [[views[i][k] for i, k in refs] for refs in self._refs]

    def take(self, seq: list[Any], rows: bool = False) -> list[list[Any]]:
        """:meth:`pieces` of a list of parameters or state, cached by the tensors'
        addresses (a cached view keeps its storage alive, so an equal address is the same
        memory) for as long as each step of :meth:`run` uses them."""
        if seq[self.members[0]] is None:
            return [[None] * len(b) for b in self.blocks]
        key = (rows, *(seq[i].data_ptr() for i in self.members))
        self._used.add(key)
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = self.pieces(seq, rows)
        return out

    def run(
        self,
        kernel: Callable[..., Any],
        params: list[Tensor],
        grads: list[Tensor],
        l2: float,
        split: tuple[list[Tensor] | None, ...],
        counts: list[Tensor] | None = None,
    ) -> None:
        """A planned step's row blocks: each block's rows of ``grads`` (plus ``l2`` times
        the parameters') centralized into the buffer, then torch's ``kernel(parameters,
        centralized gradients, *states)`` on the block's pieces at once. ``split``:
        per-parameter state lists, cut into pieces like the parameters (``None``: an empty
        list each call); ``counts``: per-parameter step counts, last, each piece given its
        parameter's."""
        threads = torch.get_num_threads()
        if threads != self.threads:
            self._place(threads)
        self._used = set()
        grad_rows = self.pieces(grads, rows=True)
        param_rows = self.take(params, rows=True) if l2 != 0 else None
        states = [self.take(params)]
        states += [self._empty if s is None else self.take(s) for s in split]
        if counts is not None:
            states.append([[counts[i] for i in idx] for idx in self.idx])
        for b, (gs, outs) in enumerate(zip(grad_rows, self._rows, strict=True)):
            for k, (g, o) in enumerate(zip(gs, outs, strict=True)):
                if param_rows is not None:
                    torch.add(g, param_rows[b][k], alpha=l2, out=o)
                    g = o
                _gc.center_into(o, g, (1,), means=False)
            kernel(states[0][b], self.outs[b], *[s[b] for s in states[1:]])
        # Views of replaced tensors (a loaded checkpoint, state set by hand) would keep
        # their storage alive: keep only what this step took.
        if len(self._cache) > len(self._used):
            self._cache = {k: v for k, v in self._cache.items() if k in self._used}


def single_update(rule: Any, spec: Spec, p: Tensor, g: Tensor, state: tuple) -> tuple:
    """Run gcore's rule on one tensor (in the unit layout for grouped specs)."""
    if spec is not None and spec[1] > 1:
        shape = p.shape

        def units(x):
            return x if x is None or x.ndim == 0 else _gc.to_units(x, spec)

        def back(x):
            return x if x is None or x.ndim == 0 else _gc.from_units(x, shape, spec)

        unit_state = type(state)(*(units(x) for x in state))
        upd, new = rule.update(_gc.to_units(g, spec), unit_state, _gc.to_units(p, spec))
        return back(upd), type(new)(*(back(x) for x in new))
    return rule.update(g, state, p)


def split_where(group: dict[str, Any], specs: list[Spec], path: str) -> tuple[list, list]:
    """Indices for the single path and for ``path``: centralized updates
    (``gc_where="update"``) and non-dense tensors always take the single path."""
    if path == "single":
        return list(range(len(specs))), []
    if group["gc_where"] == "update":
        return [i for i, s in enumerate(specs) if s is not None], [
            i for i, s in enumerate(specs) if s is None
        ]
    return [], list(range(len(specs)))


def strided_to_single(single: list[int], rest: list[int], params) -> tuple[list, list]:
    """``single`` and ``rest`` with the non-dense tensors of ``rest`` moved to ``single``
    (torch's fused kernels take dense tensors only)."""
    if all(is_dense(params[i]) for i in rest):
        return single, rest
    return sorted(single + [i for i in rest if not is_dense(params[i])]), [
        i for i in rest if is_dense(params[i])
    ]


def kernel_done(ok: bool) -> None:
    """The general path hands the CPU kernels only tensors they take: a refusal is a bug."""
    if not ok:  # pragma: no cover - guarded by kernel_indices
        raise RuntimeError("gcore_torch: the CPU kernel declined tensors the fused path chose")


def finite_lr(lr: Any) -> float:
    value = float(scalar(lr))
    if not math.isfinite(value):  # pragma: no cover - validated by the rule
        raise ValueError(f"lr={lr!r} is invalid")
    return value
