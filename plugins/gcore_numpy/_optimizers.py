"""In-place optimizers over lists or dicts of ndarrays, configured by gcore's rules.

The hyperparameters and their validation are gcore's rule dataclasses; the arithmetic is
re-expressed with ``out=`` so that a step allocates nothing beyond one scratch buffer per
parameter (and the per-unit means). tests/plugins/test_numpy_optimizers.py checks every
option step by step against ``rule.update``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

import gcore
from gcore import GC, normalize_axis, reduction_axes

__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]

Params = Sequence[np.ndarray] | Mapping[Hashable, np.ndarray]


def _centralize_(s: np.ndarray, axis: int | None, min_ndim: int) -> None:
    """Centralize ``s`` in place (means of float16 accumulate in float32)."""
    if axis is None or s.ndim < min_ndim or s.size == 0:
        return
    axes = reduction_axes(s.ndim, axis)
    if s.dtype.itemsize < 4:
        # Subtract the float32 mean in float32 and round once, as gcore.centralize does.
        mean32 = s.mean(axis=axes, keepdims=True, dtype=np.float32)
        np.subtract(s, mean32, out=s, casting="same_kind")
    else:
        s -= s.mean(axis=axes, keepdims=True)


class Optimizer:
    """Base class: holds the parameters, one gcore rule, per-parameter state and axes.

    Parameters
    ----------
    params : list of ndarray or dict of ndarray
        Arrays updated in place by :meth:`step`; they must be writeable and real floating.
    axes : list or dict, optional
        Per-parameter output axis (an int, or ``None`` for "no GC on this one"),
        overriding ``gc.axis``; same structure as ``params`` (a dict may name a subset).
    **hyperparameters
        Passed to the gcore rule (:class:`gcore.SGD`, :class:`gcore.Adam`, ...), which
        validates them.
    """

    rule_type: ClassVar[type]
    #: Module whose ufuncs (with ``out=``) do the arithmetic; CuPy's plugin swaps it.
    array_module: ClassVar[ModuleType] = np

    def __init__(self, params: Params, *, axes: Any = None, **hyperparameters: Any) -> None:
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
                f"params must be a list/tuple or a dict of numpy arrays, got {type(params)}"
            )
        if not self.params:
            raise ValueError("params is empty: give at least one array to optimize")
        for key, p in zip(self._keys, self.params, strict=True):
            if not isinstance(p, self.array_module.ndarray):
                raise TypeError(
                    f"params[{key!r}] is a {type(p).__name__}, not a "
                    f"{self.array_module.__name__}.ndarray"
                )
            if not np.issubdtype(p.dtype, np.floating):
                raise TypeError(
                    f"params[{key!r}] has dtype {p.dtype}; GC needs real floating point"
                )
            # CuPy's flags have no `writeable`: its arrays always are.
            if not getattr(p.flags, "writeable", True):
                raise ValueError(f"params[{key!r}] is read-only; the optimizer updates in place")
        self.rule = self.rule_type(**hyperparameters)
        self.axes = self._resolve_axes(axes)
        self.state = [self.rule.init(p) for p in self.params]
        self._scratch = [self.array_module.empty_like(p) for p in self.params]
        # Step counts on the host as well, so that a step never waits on a device (CuPy).
        self._steps = [0] * len(self.params)

    # -- configuration ---------------------------------------------------------------
    @property
    def lr(self) -> float:
        """Learning rate; assign to change it between steps (for schedules)."""
        return self.rule.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.rule = dataclasses.replace(self.rule, lr=value)

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
        gc = self.rule.gc
        if gc is None or gc.axis == self.axes[index]:
            return self.rule
        return dataclasses.replace(self.rule, gc=dataclasses.replace(gc, axis=self.axes[index]))

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
            self._update(p, g, self.state[i], self._scratch[i], self.axes[i], self._steps[i])
            self._steps[i] += 1

    def _update(self, p, g, state, s, axis, step) -> None:  # pragma: no cover - abstract
        """Update ``p`` in place; ``step`` counts the updates before this one."""
        raise NotImplementedError

    def _effective_grad(self, p: np.ndarray, g: np.ndarray, s: np.ndarray, l2: float) -> None:
        """``s = ±g + l2·p`` (``-g`` when maximizing)."""
        xp = self.array_module
        if l2 != 0:
            xp.multiply(p, l2, out=s)
            (xp.subtract if self.rule.maximize else xp.add)(s, g, out=s)
        elif self.rule.maximize:
            xp.negative(g, out=s)
        else:
            xp.copyto(s, g)

    def _gc(self, s: np.ndarray, axis: int | None, where: str) -> None:
        gc = self.rule.gc
        if gc is not None and gc.where == where:
            _centralize_(s, axis, gc.min_ndim)

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
        """Restore what :meth:`state_dict` returned (shapes and dtypes must match)."""
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
                src = self.array_module.asarray(saved[k][f])
                if f != "step" and (src.shape != p.shape or src.dtype != p.dtype):
                    raise ValueError(
                        f"state {f!r} of {k!r} is {src.dtype}{src.shape}, expected "
                        f"{p.dtype}{p.shape}"
                    )
                self.array_module.copyto(v, src)
                fields[f] = v
            new_states.append(type(fresh)(**fields))
        self.rule = rule
        self.state = new_states
        self._steps = [int(saved[k]["step"]) for k in self._keys]
        self.axes = self._resolve_axes(dict(state_dict["axes"]))


def _rule_to_dict(rule: Any) -> dict[str, Any]:
    d = {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule)}
    d["gc"] = None if rule.gc is None else dataclasses.asdict(rule.gc)
    return d


class SGD(Optimizer):
    """GC-SGD updating NumPy arrays in place; hyperparameters as :class:`gcore.SGD`.

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
    ) -> None:
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
        )

    def _update(self, p, g, state, s, axis, step) -> None:
        r, xp = self.rule, self.array_module
        self._effective_grad(p, g, s, r.weight_decay)
        self._gc(s, axis, "gradient")
        buf = state.momentum_buffer
        if r.momentum != 0:
            if step == 0:
                xp.copyto(buf, s)
            else:
                buf *= r.momentum
                if r.dampening != 0:
                    s *= 1.0 - r.dampening  # s is not needed again: no Nesterov here
                buf += s
            if r.nesterov:
                # p -= lr·(s + μ·buf), as two subtractions so that s is the only scratch;
                # GC is linear, so "update" GC centralizes each term.
                s *= r.lr
                self._gc(s, axis, "update")
                p -= s
                xp.multiply(buf, r.lr * r.momentum, out=s)
            else:
                xp.multiply(buf, r.lr, out=s)
        else:
            s *= r.lr
        self._gc(s, axis, "update")
        p -= s
        state.step[...] += 1


class Adam(Optimizer):
    """GC-Adam updating NumPy arrays in place; hyperparameters as :class:`gcore.Adam`.

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

    @staticmethod
    def _bias_corrections(rule: Any, dtype: np.dtype, step: int) -> tuple[Any, Any]:
        """``lr / (1 - β1^t)`` and ``sqrt(1 - β2^t)`` for update ``t = step``.

        Evaluated in double precision on the host, as torch.optim does, then rounded once
        to the parameter's dtype (float16: float32).
        """
        beta1, beta2 = rule.betas
        f = dtype.type if dtype.itemsize >= 4 else np.float32
        return f(rule.lr / (1.0 - beta1**step)), f(math.sqrt(1.0 - beta2**step))

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
    ) -> None:
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
        )

    def _update(self, p, g, state, s, axis, step) -> None:
        r, xp = self.rule, self.array_module
        decoupled = r._decoupled
        beta1, beta2 = r.betas
        self._effective_grad(p, g, s, 0.0 if decoupled else r.weight_decay)
        self._gc(s, axis, "gradient")
        state.step[...] += 1
        m, v, vmax = state.exp_avg, state.exp_avg_sq, state.max_exp_avg_sq
        m -= s  # m ← s + β1·(m − s) = β1·m + (1 − β1)·s
        m *= beta1
        m += s
        v *= beta2
        xp.multiply(s, s, out=s)
        s *= 1.0 - beta2
        v += s
        if r.amsgrad:
            xp.maximum(vmax, v, out=vmax)
        step_size, bc2_sqrt = self._bias_corrections(r, p.dtype, step + 1)
        xp.sqrt(vmax if r.amsgrad else v, out=s)
        s /= bc2_sqrt
        s += r.eps
        xp.divide(m, s, out=s)
        s *= -step_size
        self._gc(s, axis, "update")
        if decoupled and r.weight_decay != 0:
            p *= 1.0 - r.lr * r.weight_decay
        p += s


class AdamW(Adam):
    """GC-AdamW (decoupled weight decay) in place; hyperparameters as :class:`gcore.AdamW`.

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
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            gc=gc,
            axes=axes,
        )
