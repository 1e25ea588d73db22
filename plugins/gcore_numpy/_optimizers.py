"""In-place optimizers over lists or dicts of ndarrays, driven by gcore's core rules.

Every step is ``rule.update`` (:class:`gcore.SGD` / :class:`gcore.Adam` /
:class:`gcore.AdamW`) for each parameter, written back in place (``np.add(p, updates,
out=p)``); the hyperparameters, their validation, the low-precision policy and every
option are the core rule's.

One exception, measured (benchmarks/bench_numpy.py, benchmarks/results/numpy.md): the core
rule is pure, so a step allocates a dozen temporaries per tensor and runs about 2-2.3x
slower than an in-place NumPy step on ResNet-50 shapes. For float32/float64 parameters and
the torch-convention options (SGD; Adam/AdamW without ``nesterov``, ``mu_dtype`` or
``convention="paper"``) the step therefore runs as in-place ufuncs with ``out=``, block by
block over whole output units, with one shared scratch block (``fast=False`` turns that
off): 0.97x-1.06x the hand-written plain Adam with GC, 0.76x-0.8x without. It is checked step
by step against the core rule by tests/plugins/conformance.py, like every other plugin
path.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar, NamedTuple

import numpy as np

import gcore
from gcore import GC, normalize_axis, reduction_axes

__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]

Params = Sequence[np.ndarray] | Mapping[Hashable, np.ndarray]


#: Elements per block of the in-place path: a step runs its ~15 ufuncs block by block, so
#: that gradient, parameter, state and scratch of a block stay in the CPU cache between
#: them (one pass over memory instead of one per ufunc).
BLOCK = 1 << 17


class _Plan(NamedTuple):
    """How the in-place path walks one tensor: its blocks, unit means and scratch."""

    blocks: list[Any]  # indices into the tensor (slices along axis 0, or Ellipsis)
    mean: np.ndarray | None  # unit means of the effective gradient, when taken up front
    block_mean_axes: tuple[int, ...] | None  # else: GC on the gradient, means per block
    unit_axes: tuple[int, ...] | None  # axes of a unit's mean for GC on the update


def _mean(g: np.ndarray, p: np.ndarray, axes: tuple[int, ...], sign: float, l2: float) -> Any:
    """Unit means of ``sign·g + l2·p`` (no full-size temporary)."""
    mean = g.mean(axis=axes, keepdims=True)
    if sign < 0:
        np.negative(mean, out=mean)
    if l2 != 0:
        mean += l2 * p.mean(axis=axes, keepdims=True)
    return mean


def _plan(
    p: np.ndarray, g: np.ndarray, gc: GC | None, axis: int | None, sign: float, l2: float
) -> _Plan:
    active = gc is not None and axis is not None and p.ndim >= gc.min_ndim and p.size > 0
    out_axis = normalize_axis(axis, p.ndim) if active else None
    axes = reduction_axes(p.ndim, out_axis) if active else None
    on_grad = active and gc.where == "gradient"
    unit_axes = axes if active and not on_grad else None
    if p.ndim == 0 or p.size == 0 or (unit_axes is not None and out_axis != 0):
        # GC of the update needs whole units in a block: along another axis, that is
        # the whole tensor (and a 0-d or empty tensor is one block).
        return _Plan([Ellipsis], None, None, unit_axes)
    rows = max(1, BLOCK // max(1, p.size // p.shape[0]))
    blocks = [slice(a, a + rows) for a in range(0, p.shape[0], rows)]
    if on_grad and out_axis == 0:
        # Blocks hold whole units: each block's means are taken while it is in cache.
        return _Plan(blocks, None, axes, unit_axes)
    mean = _mean(g, p, axes, sign, l2) if on_grad else None
    return _Plan(blocks, mean, None, unit_axes)


def _centralize_block(s: np.ndarray, unit_axes: tuple[int, ...] | None) -> None:
    if unit_axes is not None:
        s -= s.mean(axis=unit_axes, keepdims=True)


def _effective_grad(s: Any, g: Any, p: Any, mean: Any, sign: float, l2: float) -> Any:
    """``sign·g + l2·p - mean`` (``mean`` may be None), in ``s`` or ``g`` itself.

    The result is read-only for the caller: it is ``g`` when there is nothing to do.
    """
    if l2 != 0:
        np.multiply(p, l2, out=s)
        (np.add if sign > 0 else np.subtract)(s, g, out=s)
        if mean is not None:
            s -= mean
    elif mean is not None:
        if sign > 0:
            np.subtract(g, mean, out=s)
        else:  # mean = -mean(g): -g - mean = mean(g) - g; one pass over the tensor
            np.subtract(np.negative(mean), g, out=s)
    elif sign > 0:
        return g
    else:
        np.negative(g, out=s)
    return s


class Optimizer:
    """Base class: the parameters, one gcore rule, per-parameter state, axes and steps.

    Parameters
    ----------
    params : list of ndarray or dict of ndarray
        Arrays updated in place by :meth:`step`; they must be writeable, floating point
        and distinct (no array, or overlapping views of one, twice).
    axes : list or dict, optional
        Per-parameter output axis (an int, or ``None`` for "no GC on this one"),
        overriding ``gc.axis``; same structure as ``params`` (a dict may name a subset).
    **hyperparameters
        Passed to the gcore rule (:class:`gcore.SGD`, :class:`gcore.Adam`, ...), which
        validates them.

    Notes
    -----
    A backend (e.g. :mod:`gcore_cupy`) subclasses this class, sets
    :attr:`array_module` and overrides :meth:`update_parameter`.
    """

    rule_type: ClassVar[type]
    #: The array library of the parameters (CuPy's plugin sets ``cupy``).
    array_module: ClassVar[ModuleType] = np

    def __init__(self, params: Params, *, axes: Any = None, **hyperparameters: Any) -> None:
        xp = self.array_module
        if isinstance(params, Mapping):
            self._keys: list[Hashable] = list(params)
            self.params: list[np.ndarray] = [params[k] for k in self._keys]
            self._is_dict = True
        elif isinstance(params, (list, tuple)):
            self._keys = list(range(len(params)))
            self.params = list(params)
            self._is_dict = False
        else:
            raise TypeError(
                f"params must be a list/tuple or a dict of {xp.__name__} arrays, "
                f"got {type(params)}"
            )
        if not self.params:
            raise ValueError("params is empty: give at least one array to optimize")
        for key, p in zip(self._keys, self.params, strict=True):
            if not isinstance(p, xp.ndarray):
                raise TypeError(
                    f"params[{key!r}] is a {type(p).__name__}, not a {xp.__name__}.ndarray"
                )
            if not np.issubdtype(p.dtype, np.floating):
                raise TypeError(
                    f"params[{key!r}] has dtype {p.dtype}; GC needs real floating point"
                )
            # CuPy's flags have no `writeable`: its arrays always are.
            if not getattr(p.flags, "writeable", True):
                raise ValueError(f"params[{key!r}] is read-only; the optimizer updates in place")
        self._check_distinct()
        self.rule = self.rule_type(**hyperparameters)
        self._rules: dict[int, Any] = {}
        self.axes = self._resolve_axes(axes)
        self.state = [self.rule_for(i).init(p) for i, p in enumerate(self.params)]
        self._scratch: list[Any] = [None] * len(self.params)
        self._shared: dict[Any, Any] = {}
        # Step counts on the host as well, so that a step never waits on a device (CuPy).
        self._steps = [0] * len(self.params)

    def _check_distinct(self) -> None:
        # Updating one array twice per step would silently take a double step. Arrays can
        # only overlap when they view the same base array, so compare within those groups.
        by_base: dict[int, list[int]] = {}
        for i, p in enumerate(self.params):
            base = p
            while getattr(base, "base", None) is not None:
                base = base.base
            group = by_base.setdefault(id(base), [])
            for j in group:
                q = self.params[j]
                if q is p or self.array_module.may_share_memory(q, p):
                    what = "is" if q is p else "overlaps in memory with"
                    raise ValueError(
                        f"params[{self._keys[i]!r}] {what} params[{self._keys[j]!r}]: each "
                        "array may be given to an optimizer once (it would be updated twice "
                        "per step)"
                    )
            group.append(i)

    # -- configuration ---------------------------------------------------------------
    @property
    def lr(self) -> float:
        """Learning rate; assign to change it between steps (for schedules)."""
        return self.rule.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.rule = dataclasses.replace(self.rule, lr=value)
        self._rules.clear()

    def _resolve_axes(self, axes: Any) -> list[int | None]:
        gc = self.rule.gc
        default = None if gc is None else gc.axis
        if axes is None:
            chosen = [default] * len(self.params)
        elif isinstance(axes, Mapping):
            unknown = set(axes) - set(self._keys)
            if unknown:
                raise KeyError(f"axes names unknown parameters: {sorted(map(repr, unknown))}")
            chosen = [axes.get(k, default) for k in self._keys]
        else:
            chosen = list(axes)
            if len(chosen) != len(self.params):
                raise ValueError(
                    f"axes has {len(chosen)} entries for {len(self.params)} parameters"
                )
        min_ndim = 2 if gc is None else gc.min_ndim
        for key, p, axis in zip(self._keys, self.params, chosen, strict=True):
            if axis is not None and p.ndim >= min_ndim:
                try:
                    normalize_axis(axis, p.ndim)
                except (ValueError, TypeError) as err:
                    raise ValueError(f"axes[{key!r}]: {err}") from None
        return chosen

    def rule_for(self, index: int) -> Any:
        """The gcore rule that parameter ``index`` follows (its own output axis)."""
        rule = self._rules.get(index)
        if rule is None:
            gc = self.rule.gc
            rule = self.rule
            if gc is not None and gc.axis != self.axes[index]:
                rule = dataclasses.replace(rule, gc=dataclasses.replace(gc, axis=self.axes[index]))
            self._rules[index] = rule
        return rule

    # -- stepping ----------------------------------------------------------------------
    def step(self, grads: Params) -> None:
        """Update every parameter in place from ``grads`` (same structure; ``None`` skips)."""
        if self._is_dict:
            if not isinstance(grads, Mapping):
                raise TypeError("params were given as a dict, so grads must be a dict too")
            unknown = set(grads) - set(self._keys)
            if unknown:
                raise KeyError(f"grads names unknown parameters: {sorted(map(repr, unknown))}")
            glist = [grads.get(k) for k in self._keys]
        else:
            glist = list(grads)
            if len(glist) != len(self.params):
                raise ValueError(f"got {len(glist)} grads for {len(self.params)} parameters")
        checked = []
        for i, g in enumerate(glist):
            if g is None:
                continue
            g = self.array_module.asarray(g)
            p = self.params[i]
            if not np.issubdtype(g.dtype, np.floating):
                raise TypeError(
                    f"grads[{self._keys[i]!r}] has dtype {g.dtype}; GC needs real floating point"
                )
            if g.shape != p.shape or g.dtype != p.dtype:
                raise (ValueError if g.shape != p.shape else TypeError)(
                    f"grads[{self._keys[i]!r}] has dtype {g.dtype} and shape {g.shape}; its "
                    f"parameter has {p.dtype} and {p.shape}: they must match"
                )
            checked.append((i, g))
        # All gradients are checked before any parameter moves: a bad one leaves none half
        # updated.
        for i, g in checked:
            self.update_parameter(i, g)
            self._steps[i] += 1

    def update_parameter(self, index: int, grad: Any) -> None:
        """One step of parameter ``index`` in place: the core rule, written back.

        ``grad`` has been checked (same shape and dtype as the parameter). Backends
        override this with their fast paths and call it for everything else.
        """
        p = self.params[index]
        updates, self.state[index] = self.rule_for(index).update(grad, self.state[index], p)
        self.array_module.add(p, updates, out=p)

    def _scratch_for(self, index: int) -> Any:
        """A scratch array of parameter ``index``'s shape (made on first use, then kept)."""
        if self._scratch[index] is None:
            self._scratch[index] = self.array_module.empty_like(self.params[index])
        return self._scratch[index]

    def _block_scratch(self, index: int, p: np.ndarray, blk: Any) -> np.ndarray:
        """Scratch for ``p[blk]``: a view of one shared block buffer when it fits."""
        shape = p[blk].shape
        n = math.prod(shape)
        if n > BLOCK:
            return self._scratch_for(index)[blk]
        flat = self._shared.get(p.dtype)
        if flat is None:
            flat = self._shared[p.dtype] = np.empty(BLOCK, p.dtype)
        return flat[:n].reshape(shape)

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Copies of the state arrays, the hyperparameters and the axes."""
        return {
            "rule": type(self.rule).__name__,
            "hyperparameters": _rule_to_dict(self.rule),
            "axes": dict(zip(self._keys, self.axes, strict=True)),
            "state": {
                k: {
                    f: (int(v) if f == "step" else v.copy())
                    for f, v in st._asdict().items()
                    if v is not None
                }
                for k, st in zip(self._keys, self.state, strict=True)
            },
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (shapes and dtypes must match).

        Checkpoints written before an option existed load with its default.
        """
        if state_dict.get("rule") != type(self.rule).__name__:
            raise ValueError(
                f"state_dict is for {state_dict.get('rule')!r}, this optimizer is "
                f"{type(self.rule).__name__!r}"
            )
        hyper = dict(state_dict["hyperparameters"])
        gc = hyper.pop("gc")
        rule = self.rule_type(**hyper, gc=None if gc is None else GC(**gc))
        saved = state_dict["state"]
        if set(saved) != set(self._keys):
            raise ValueError("state_dict's parameters do not match this optimizer's")
        axes = self._resolve_axes(dict(state_dict["axes"]))
        xp = self.array_module
        new_states = []
        for k, p in zip(self._keys, self.params, strict=True):
            fresh = rule.init(p)
            fields = {}
            for f, v in fresh._asdict().items():
                if v is None:
                    fields[f] = None
                    continue
                if f not in saved[k]:
                    raise ValueError(f"state_dict lacks {f!r} for parameter {k!r}")
                src = xp.asarray(saved[k][f])
                if f != "step" and (src.shape != v.shape or src.dtype != v.dtype):
                    raise ValueError(
                        f"state {f!r} of {k!r} is {src.dtype}{src.shape}, expected "
                        f"{v.dtype}{v.shape}"
                    )
                xp.copyto(v, src, casting="same_kind")
                fields[f] = v
            new_states.append(type(fresh)(**fields))
        self.rule = rule
        self.axes = axes
        self._rules.clear()
        self.state = new_states
        self._steps = [int(saved[k]["step"]) for k in self._keys]


def _rule_to_dict(rule: Any) -> dict[str, Any]:
    d = {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule)}
    d["gc"] = None if rule.gc is None else dataclasses.asdict(rule.gc)
    return d


def _check_fast(fast: Any) -> None:
    if not isinstance(fast, bool):
        raise TypeError(f"fast={fast!r}: expected True or False")


class SGD(Optimizer):
    """GC-SGD updating NumPy arrays in place; hyperparameters as :class:`gcore.SGD`.

    ``fast=True`` (default) runs float32/float64 steps as in-place ufuncs (equal to the
    core rule to rounding); ``fast=False`` always calls :meth:`gcore.SGD.update`.

    Examples
    --------
    >>> import numpy as np
    >>> from gcore_numpy import SGD
    >>> w = np.array([[1.0, 2.0], [3.0, 5.0]])
    >>> opt = SGD([w], lr=0.5)
    >>> opt.step([np.array([[1.0, 0.0], [2.0, 2.0]])])
    >>> w
    array([[0.75, 2.25],
           [3.  , 5.  ]])
    """

    rule_type = gcore.SGD

    def __init__(
        self,
        params: Params,
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
        fast: bool = True,
    ) -> None:
        _check_fast(fast)
        self.fast = fast
        super().__init__(
            params,
            axes=axes,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
            maximize=maximize,
            gc=gc,
            accumulator_dtype=accumulator_dtype,
        )

    def _fast_for(self, p: np.ndarray) -> bool:
        return (
            self.fast
            and p.dtype in (np.float32, np.float64)
            and self.rule.accumulator_dtype is None
        )

    def update_parameter(self, index: int, grad: np.ndarray) -> None:
        p = self.params[index]
        if not self._fast_for(p):
            super().update_parameter(index, grad)
            return
        r, state = self.rule, self.state[index]
        sign = -1.0 if r.maximize else 1.0
        plan = _plan(p, grad, r.gc, self.axes[index], sign, r.weight_decay)
        buf, first = state.momentum_buffer, self._steps[index] == 0
        for blk in plan.blocks:
            pb, s = p[blk], self._block_scratch(index, p, blk)
            mean = plan.mean
            if plan.block_mean_axes is not None:
                mean = _mean(grad[blk], pb, plan.block_mean_axes, sign, r.weight_decay)
            x = _effective_grad(s, grad[blk], pb, mean, sign, r.weight_decay)
            if r.momentum != 0:
                bb = buf[blk]
                if first:
                    np.copyto(bb, x)
                else:
                    bb *= r.momentum
                    if r.dampening != 0:
                        # no Nesterov with dampening: x is not needed again
                        np.multiply(x, 1.0 - r.dampening, out=s)
                        bb += s
                    else:
                        bb += x
                if r.nesterov:
                    # p -= lr·(x + μ·buf) as two subtractions, s the only scratch; GC is
                    # linear, so "update" GC centralizes each term.
                    np.multiply(x, r.lr, out=s)
                    _centralize_block(s, plan.unit_axes)
                    pb -= s
                    np.multiply(bb, r.lr * r.momentum, out=s)
                else:
                    np.multiply(bb, r.lr, out=s)
            else:
                np.multiply(x, r.lr, out=s)
            _centralize_block(s, plan.unit_axes)
            pb -= s
        state.step[...] += 1


class Adam(Optimizer):
    """GC-Adam updating NumPy arrays in place; hyperparameters as :class:`gcore.Adam`.

    ``fast=True`` (default) runs float32/float64 steps without ``nesterov`` or
    ``mu_dtype`` as in-place ufuncs (equal to the core rule to rounding); everything else,
    float16 included, calls :meth:`gcore.Adam.update`.

    Examples
    --------
    >>> import numpy as np
    >>> from gcore_numpy import Adam
    >>> w = np.zeros((2, 2))
    >>> opt = Adam([w], lr=0.1)
    >>> opt.step([np.array([[1.0, -1.0], [3.0, 1.0]])])
    >>> np.round(w, 6)
    array([[-0.1,  0.1],
           [-0.1,  0.1]])
    """

    rule_type = gcore.Adam

    def __init__(
        self,
        params: Params,
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
        fast: bool = True,
    ) -> None:
        _check_fast(fast)
        self.fast = fast
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

    def _fast_for(self, p: np.ndarray) -> bool:
        r = self.rule
        return (
            self.fast
            and p.dtype in (np.float32, np.float64)
            and not r.nesterov
            and r.mu_dtype is None
            and getattr(r, "convention", "torch") == "torch"
        )

    def update_parameter(self, index: int, grad: np.ndarray) -> None:
        p = self.params[index]
        if not self._fast_for(p):
            super().update_parameter(index, grad)
            return
        r, state = self.rule, self.state[index]
        decoupled = r._decoupled
        beta1, beta2 = r.betas
        sign = -1.0 if r.maximize else 1.0
        l2 = 0.0 if decoupled else r.weight_decay  # AdamW: decay on the parameter
        plan = _plan(p, grad, r.gc, self.axes[index], sign, l2)
        # Bias corrections of step t as the core rule takes them: 1 - β^t = -expm1(t·ln β).
        t = self._steps[index] + 1
        dtype = p.dtype.type
        bc1 = -math.expm1(t * math.log(beta1)) if beta1 > 0 else 1.0
        bc2 = -math.expm1(t * math.log(beta2)) if beta2 > 0 else 1.0
        bc2_sqrt = math.sqrt(bc2)
        eps_scaled, neg_scale = dtype(r.eps * bc2_sqrt), dtype(-r.lr / bc1 * bc2_sqrt)
        decay = 1.0 - r.lr * r.weight_decay if decoupled and r.weight_decay != 0 else None
        m, v, vmax = state.exp_avg, state.exp_avg_sq, state.max_exp_avg_sq
        for blk in plan.blocks:
            pb, s = p[blk], self._block_scratch(index, p, blk)
            mb, vb = m[blk], v[blk]
            mean = plan.mean
            if plan.block_mean_axes is not None:
                mean = _mean(grad[blk], pb, plan.block_mean_axes, sign, l2)
            x = _effective_grad(s, grad[blk], pb, mean, sign, l2)
            mb -= x  # m ← x + β1·(m − x) = β1·m + (1 − β1)·x  (torch's lerp)
            mb *= beta1
            mb += x
            vb *= beta2
            np.multiply(x, x, out=s)
            s *= 1.0 - beta2
            vb += s
            if r.amsgrad:
                second = vmax[blk]
                np.maximum(second, vb, out=second)
            else:
                second = vb
            # -step_size·m/(√v/bc2_sqrt + eps) as -(step_size·bc2_sqrt)·m/(√v + eps·bc2_sqrt):
            # one pass less, the same to rounding.
            np.sqrt(second, out=s)
            s += eps_scaled
            np.divide(mb, s, out=s)
            s *= neg_scale
            _centralize_block(s, plan.unit_axes)
            if decay is not None:
                pb *= decay
            pb += s
        state.step[...] += 1


class AdamW(Adam):
    """GC-AdamW (decoupled weight decay) in place; hyperparameters as :class:`gcore.AdamW`.

    ``convention="paper"`` is the GC authors' AdamW (see :class:`gcore.AdamW`); it runs
    through the core rule.

    Examples
    --------
    >>> import numpy as np
    >>> from gcore_numpy import AdamW
    >>> w = np.ones((2, 2))
    >>> AdamW([w], lr=0.1, weight_decay=0.5).step([np.zeros((2, 2))])
    >>> w
    array([[0.95, 0.95],
           [0.95, 0.95]])
    """

    rule_type = gcore.AdamW

    def __init__(
        self,
        params: Params,
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
        fast: bool = True,
    ) -> None:
        _check_fast(fast)
        self.fast = fast
        Optimizer.__init__(
            self,
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            gc=gc,
            axes=axes,
            nesterov=nesterov,
            mu_dtype=mu_dtype,
            convention=convention,
        )
