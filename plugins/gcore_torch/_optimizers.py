"""``torch.optim.SGD`` / ``Adam`` / ``AdamW`` with Gradient Centralization.

The classes keep torch's signatures, defaults, param-group handling and state layout, and
add four param-group options: ``gc`` (``True``, ``False`` or ``"conv_only"``), ``gc_where``
(``"gradient"`` or ``"update"``), ``gc_axis`` (output axis or ``None``) and ``gc_groups``
(per-group means of grouped ConvTranspose weights). Like torch.optim, ``step`` gathers the
tensors of each group and dispatches to one of three implementations:

* ``single``: calls gcore's core rules (:class:`gcore.SGD`, :class:`gcore.Adam`, ...) on
  each tensor through array-api-compat, then copies the results into the parameter and
  the state in place. This is the reference every other path is tested against.
* ``foreach``: centralized gradients computed with ``torch._foreach_*`` ops, then torch's
  own multi-tensor kernels (``gc_where="update"`` uses a multi-tensor implementation of
  the rules written here, since torch's kernels do not expose the update).
* ``fused``: gradients centralized block by block into a small scratch buffer that stays
  in cache, each block handed straight to torch's fused kernels (``torch._fused_adam_``,
  ``torch._fused_adamw_``, ``torch._fused_sgd_``); or, after
  :func:`gcore_torch.load_kernels`, compiled row-blocked kernels that take each unit's
  mean and update it in one pass over memory.

Under ``torch.compile`` every group takes the single path, which traces into one graph.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.adam import adam as _torch_adam
from torch.optim.optimizer import (
    _default_to_fused_or_foreach,
    _device_dtype_check_for_fused,
    _get_scalar_dtype,
)
from torch.optim.sgd import sgd as _torch_sgd

import gcore

from . import _gc, _kernels
from ._gc import Spec

__all__ = ["SGD", "Adam", "AdamW"]

_GC_VALUES = (True, False, "conv_only")
_WHERE_VALUES = ("gradient", "update")
_GC_KEYS = ("gc", "gc_where", "gc_axis", "gc_groups")


def _check_gc_options(group: dict[str, Any], where: str) -> None:
    gc = group["gc"]
    if not any(gc is v or (isinstance(gc, str) and gc == v) for v in _GC_VALUES):
        raise ValueError(f"gc={gc!r} {where} is invalid; allowed: True, False, 'conv_only'")
    if group["gc_where"] not in _WHERE_VALUES:
        raise ValueError(
            f"gc_where={group['gc_where']!r} {where} is invalid; allowed: 'gradient', 'update'"
        )
    axis = group["gc_axis"]
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool)):
        raise TypeError(f"gc_axis={axis!r} {where}: expected an int output axis or None")
    group["gc_groups"] = _gc.check_groups(group["gc_groups"])


def _rule_gc(group: dict[str, Any], spec: Spec) -> gcore.GC | None:
    # Grouped specs run in the (units, fan_in) layout of _gc.to_units: axis 0 there.
    if spec is None:
        return None
    return gcore.GC(axis=spec[0] if spec[1] == 1 else 0, where=group["gc_where"])


def _scalar(x: Any) -> Any:
    return x.item() if isinstance(x, Tensor) else x


class _GCOptimizer(torch.optim.Optimizer):
    """Shared machinery: validation, GC specs per tensor, path selection, the rule."""

    _rule_type: ClassVar[type]
    _name: ClassVar[str]

    def _setup(self, fused: bool | None, foreach: bool | None, differentiable: bool) -> None:
        if differentiable:
            raise NotImplementedError(
                f"differentiable=True is not supported by gcore_torch.{self._name}; "
                "use torch.optim for differentiating through the optimizer step"
            )
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self._scratch = _gc.Scratch()
        self._block = _gc.DEFAULT_BLOCK

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (validated like the constructor's arguments).

        An invalid group raises and is not kept.
        """
        super().add_param_group(param_group)
        try:
            self._check_group(len(self.param_groups) - 1)
        except Exception:
            self.param_groups.pop()
            raise

    def _check_group(self, index: int) -> None:
        group = self.param_groups[index]
        where = f"in param_groups[{index}]"
        _check_gc_options(group, where)
        try:
            self._rule(group, None)  # gcore's rule validates the hyperparameters
        except (ValueError, TypeError) as err:
            raise type(err)(f"{err} ({where})") from None
        if group.get("capturable"):
            raise NotImplementedError(
                "capturable=True (CUDA-graph capture) is not supported by gcore_torch yet"
            )
        for k, p in enumerate(group["params"]):
            name = f"param_groups[{index}]['params'][{k}]"
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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint, also one saved by ``torch.optim`` (without GC options).

        Groups of a ``torch.optim`` checkpoint keep this optimizer's current ``gc``,
        ``gc_where``, ``gc_axis`` and ``gc_groups``.
        """
        groups = []
        for k, g in enumerate(state_dict.get("param_groups", [])):
            g = dict(g)
            if k < len(self.param_groups):
                for key in _GC_KEYS:
                    g.setdefault(key, self.param_groups[k][key])
            groups.append(g)
        super().load_state_dict({**state_dict, "param_groups": groups})

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # torch.optim pickles only defaults, state and param_groups.
        self.__dict__.setdefault("_scratch", _gc.Scratch())
        self.__dict__.setdefault("_block", _gc.DEFAULT_BLOCK)
        for group in self.param_groups:
            group.setdefault("gc", True)
            group.setdefault("gc_where", "gradient")
            group.setdefault("gc_axis", 0)
            group.setdefault("gc_groups", 1)
            # Checkpoints of older torch releases lack newer options (fused, foreach,
            # decoupled_weight_decay, ...): take this optimizer's defaults, as torch does.
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    # -- per-group helpers ---------------------------------------------------------------
    def _rule(self, group: dict[str, Any], spec: Spec) -> Any:
        """gcore's rule for a tensor with GC ``spec`` (``None``: the plain rule)."""
        gc = _rule_gc(group, spec)
        return self._rule_type(**self._rule_kwargs(group), gc=gc)

    def _rule_kwargs(self, group: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def _specs(self, group: dict[str, Any], params: list[Tensor]) -> list[Spec]:
        return [
            _gc.make_spec(p, group["gc"], group["gc_axis"], group["gc_groups"]) for p in params
        ]

    def _path(self, group: dict[str, Any], params: list[Tensor]) -> str:
        fused, foreach = group["fused"], group["foreach"]
        if torch.compiler.is_compiling():
            # Under torch.compile the core rules trace into one graph; the fused and
            # foreach paths create state and call fused kernels that dynamo cannot trace.
            return "single"
        if fused:
            for p in params:
                _device_dtype_check_for_fused(p)
            return "fused"
        if foreach:
            return "foreach"
        if foreach is False:
            return "single"
        if fused is None and params:
            use_fused, _ = _default_to_fused_or_foreach(params, False, use_fused=True)
            if use_fused:
                return "fused"
        # torch's for-loop is our single path, which is slow; our foreach path works on
        # every device through torch's slow-path foreach fallback.
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
            params.append(p)
            grads.append(p.grad)
        return params, grads

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
        for index, group in enumerate(self.param_groups):
            params, grads = self._gather(group, index)
            if params:
                self._step_group(group, params, grads, self._specs(group, params))
        return loss

    def _step_group(self, group, params, grads, specs) -> None:  # pragma: no cover
        raise NotImplementedError

    def _run_blocked(self, params, grads, states, l2, kernel) -> None:
        # Blocks never mix devices or dtypes.
        keys: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            keys.setdefault((p.device, p.dtype), []).append(i)
        for idx in keys.values():
            _gc.run_blocked(
                _pick(params, idx),
                _pick(grads, idx),
                [_pick(s, idx) for s in states],
                l2,
                lambda ps, gs, ss, ix, idx=idx: kernel(ps, gs, ss, [idx[i] for i in ix]),
                self._scratch,
                self._block,
            )


def _split(specs: list[Spec]) -> tuple[list[int], list[int]]:
    centered = [i for i, s in enumerate(specs) if s is not None]
    plain = [i for i, s in enumerate(specs) if s is None]
    return centered, plain


def _pick(seq: list[Any], idx: list[int]) -> list[Any]:
    return [seq[i] for i in idx]


def _single_update(rule: Any, spec: Spec, p: Tensor, g: Tensor, state: tuple) -> tuple:
    """Run gcore's rule on one tensor (in the unit layout for grouped specs)."""
    if spec is not None and spec[1] > 1:
        shape = p.shape
        unit_state = type(state)(
            *(
                x if x is None or x.ndim == 0 else _gc.to_units(x, spec)
                for x in state  # step is 0-d
            )
        )
        upd, new = rule.update(_gc.to_units(g, spec), unit_state, _gc.to_units(p, spec))
        upd = _gc.from_units(upd, shape, spec)
        new = type(new)(
            *(x if x is None or x.ndim == 0 else _gc.from_units(x, shape, spec) for x in new)
        )
        return upd, new
    return rule.update(g, state, p)


# ---------------------------------------------------------------------------------------
# SGD
# ---------------------------------------------------------------------------------------
class SGD(_GCOptimizer):
    r"""``torch.optim.SGD`` with Gradient Centralization (GC-SGD).

    With :math:`g_t = \pm\nabla L + \lambda w_{t-1}`, :math:`\hat g_t = \Phi_{GC}(g_t)`
    (each output unit's mean removed), then torch's momentum / dampening / Nesterov
    update with :math:`\hat g_t` (see :class:`gcore.SGD`). Without weight decay each
    output unit's weight mean stays constant.

    Parameters
    ----------
    params : iterable
        Parameters or param-group dicts, as for ``torch.optim.SGD``. Groups may set
        ``gc``, ``gc_where``, ``gc_axis`` and ``gc_groups`` (see
        :func:`gcore_torch.param_groups`).
    lr, momentum, dampening, weight_decay, nesterov, maximize, foreach, fused
        As ``torch.optim.SGD`` (same defaults). ``foreach=None, fused=None`` picks the
        fastest path: fused where torch has fused kernels for every parameter.
    differentiable : bool, default False
        ``True`` raises ``NotImplementedError``.
    gc : {True, False, "conv_only"}, default True
        GC on every weight with ``ndim >= 2``; ``False``: plain ``torch.optim.SGD``;
        ``"conv_only"``: only ``ndim >= 4`` (the paper's GCC).
    gc_where : {"gradient", "update"}, default "gradient"
        Centralize the gradient (the paper) or the final update.
    gc_axis : int or None, default 0
        Output axis (0 for Linear/Conv weights; ``None`` disables GC for the group).
    gc_groups : int, default 1
        Per-group means for grouped ConvTranspose weights (requires ``gc_axis=1``).

    References
    ----------
    H. Yong, J. Huang, X. Hua, L. Zhang, "Gradient Centralization: A New Optimization
    Technique for Deep Neural Networks", ECCV 2020, arXiv:2004.01461.

    Examples
    --------
    >>> import torch, gcore_torch
    >>> w = torch.nn.Parameter(torch.tensor([[1.0, 2.0, 3.0]]))
    >>> opt = gcore_torch.SGD([w], lr=0.1, momentum=0.9)
    >>> w.grad = torch.tensor([[3.0, 0.0, 0.0]])
    >>> opt.step()
    >>> w.detach()
    tensor([[0.8000, 2.1000, 3.1000]])
    >>> w.detach().mean(dim=1)  # each unit's weight mean is unchanged
    tensor([2.])
    """

    _rule_type = gcore.SGD
    _name = "SGD"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        gc: bool | str = True,
        gc_where: str = "gradient",
        gc_axis: int | None = 0,
        gc_groups: int = 1,
    ) -> None:
        self._setup(fused, foreach, differentiable)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
            "gc": gc,
            "gc_where": gc_where,
            "gc_axis": gc_axis,
            "gc_groups": gc_groups,
        }
        super().__init__(params, defaults)

    def _rule_kwargs(self, group):
        return {
            "lr": _scalar(group["lr"]),
            "momentum": group["momentum"],
            "dampening": group["dampening"],
            "nesterov": group["nesterov"],
            "weight_decay": _scalar(group["weight_decay"]),
            "maximize": group["maximize"],
        }

    def _step_group(self, group, params, grads, specs) -> None:
        path = self._path(group, params)
        if path == "single":
            self._single(group, params, grads, specs)
        elif path == "fused" and group["gc_where"] == "gradient":
            self._fused(group, params, grads, specs)
        elif group["gc_where"] == "gradient" or all(s is None for s in specs):
            self._foreach(group, params, grads, specs)
        else:
            self._foreach_update(group, params, grads, specs)

    def _buffers(self, group, params) -> list[Tensor | None]:
        if group["momentum"] == 0:
            return []
        return [self.state[p].get("momentum_buffer") for p in params]

    def _store(self, group, params, bufs) -> None:
        if group["momentum"] != 0:
            for p, b in zip(params, bufs, strict=True):
                self.state[p]["momentum_buffer"] = b

    def _torch_sgd(self, group, params, grads, bufs, *, l2, foreach, fused) -> None:
        _torch_sgd(
            params,
            grads,
            bufs,
            foreach=foreach,
            fused=fused,
            weight_decay=l2,
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
        )

    def _single(self, group, params, grads, specs) -> None:
        momentum = group["momentum"] != 0
        for p, g, spec in zip(params, grads, specs, strict=True):
            rule = self._rule(group, spec)
            state = self.state[p]
            buf = state.get("momentum_buffer") if momentum else None
            first = buf is None
            if momentum and first:
                buf = torch.zeros_like(p)
            st = gcore.SGDState(torch.tensor(0 if first else 1), buf)
            upd, new = _single_update(rule, spec, p.detach(), g, st)
            p.add_(upd)
            if momentum:
                buf.copy_(new.momentum_buffer)
                state["momentum_buffer"] = buf

    def _foreach(self, group, params, grads, specs) -> None:
        l2 = group["weight_decay"]
        cl2 = _centered_l2(group, l2)
        bufs = self._buffers(group, params)
        c, n = _split(specs)
        if n:
            nb = _pick(bufs, n) if bufs else []
            self._torch_sgd(
                group, _pick(params, n), _pick(grads, n), nb, l2=l2, foreach=True, fused=False
            )
            for j, i in enumerate(n):
                if bufs:
                    bufs[i] = nb[j]
        if c:
            cp, cg = _pick(params, c), _pick(grads, c)
            eff = torch._foreach_add(cg, cp, alpha=cl2) if l2 != 0 else None
            cg = [
                _gc.centralize_inplace(eff[j], specs[i])
                if eff is not None
                else _gc.centered(cg[j], specs[i])
                for j, i in enumerate(c)
            ]
            cb = _pick(bufs, c) if bufs else []
            self._torch_sgd(group, cp, cg, cb, l2=0.0, foreach=True, fused=False)
            for j, i in enumerate(c):
                if bufs:
                    bufs[i] = cb[j]
        self._store(group, params, bufs)

    def _fused(self, group, params, grads, specs) -> None:
        l2 = group["weight_decay"]
        cl2 = _centered_l2(group, l2)
        momentum = group["momentum"]
        bufs = self._buffers(group, params)
        rowwise = [i for i, s in enumerate(specs) if _gc.is_plain_rowwise(grads[i], s)]
        rowset = set(rowwise)
        plain = [i for i, s in enumerate(specs) if s is None]
        other = [i for i, s in enumerate(specs) if s is not None and i not in rowset]
        for idx, wd, gs in (
            (plain, l2, _pick(grads, plain)),
            (other, 0.0, [_eff_centered(grads[i], params[i], specs[i], cl2) for i in other]),
        ):
            if not idx:
                continue
            by_index = dict(zip(idx, gs, strict=True))
            # torch's fused SGD starts momentum buffers only when all of a call's are None:
            # a parameter whose first gradient comes late gets a call of its own.
            parts = [idx] if not bufs else [
                [i for i in idx if bufs[i] is None], [i for i in idx if bufs[i] is not None]
            ]  # fmt: skip
            for part in parts:
                if not part:
                    continue
                sub_bufs = _pick(bufs, part) if bufs else []
                self._torch_sgd(
                    group, _pick(params, part), [by_index[i] for i in part], sub_bufs,
                    l2=wd, foreach=False, fused=True,
                )  # fmt: skip
                for j, i in enumerate(part):
                    if bufs:
                        bufs[i] = sub_bufs[j]
        lr = _scalar(group["lr"])
        # The first step initializes the momentum buffers (is_first_step), so first-step
        # tensors and the others go to separate kernel calls.
        if bufs:
            new = [i for i in rowwise if bufs[i] is None]
            calls = ((True, new), (False, [i for i in rowwise if bufs[i] is not None]))
            for i in new:
                bufs[i] = torch.empty_like(params[i])
        else:
            calls = ((False, rowwise),)
        for first, all_idx in calls:
            compiled = [i for i in all_idx if _kernels.usable(params[i])]
            if compiled:
                _kernels.get().gc_sgd_(
                    _pick(params, compiled),
                    _pick(grads, compiled),
                    _pick(bufs, compiled) if bufs else [],
                    float(lr),
                    float(momentum),
                    float(group["dampening"]),
                    bool(group["nesterov"]),
                    float(l2),
                    bool(group["maximize"]),
                    first,
                )
            done = set(compiled)
            idx = [i for i in all_idx if i not in done]
            if not idx:
                continue

            def kernel(ps, gs, ss, _ix, first=first):
                torch._fused_sgd_(
                    ps,
                    gs,
                    ss[0] if momentum != 0 else [],
                    weight_decay=0.0,
                    momentum=momentum,
                    lr=lr,
                    dampening=group["dampening"],
                    nesterov=group["nesterov"],
                    maximize=group["maximize"],
                    is_first_step=first and momentum != 0,
                    grad_scale=None,
                    found_inf=None,
                )

            states = [_pick(bufs, idx)] if bufs else []
            self._run_blocked(_pick(params, idx), _pick(grads, idx), states, cl2, kernel)
        self._store(group, params, bufs)

    def _foreach_update(self, group, params, grads, specs) -> None:
        lr = _scalar(group["lr"])
        l2 = group["weight_decay"]
        mu, tau = group["momentum"], group["dampening"]
        g = torch._foreach_neg(grads) if group["maximize"] else list(grads)
        if l2 != 0:
            g = torch._foreach_add(g, params, alpha=l2)
        bufs = self._buffers(group, params)
        if mu != 0:
            for i, b in enumerate(bufs):
                if b is None:
                    bufs[i] = g[i].detach().clone()
                else:
                    b.mul_(mu).add_(g[i], alpha=1 - tau)
            d = torch._foreach_add(g, bufs, alpha=mu) if group["nesterov"] else bufs
        else:
            d = g
        u = torch._foreach_mul(d, -lr)
        for x, spec in zip(u, specs, strict=True):
            _gc.centralize_inplace(x, spec)
        torch._foreach_add_(params, u)
        self._store(group, params, bufs)


def _centered_l2(group: dict[str, Any], l2: float) -> float:
    # Centralized gradients keep torch's sign convention (the kernel applies maximize),
    # so the L2 term enters as g - l2*p when maximizing: -(g - l2*p) = -g + l2*p.
    return -l2 if group["maximize"] else l2


def _eff_centered(g: Tensor, p: Tensor, spec: Spec, l2: float) -> Tensor:
    if l2 != 0:
        return _gc.centralize_inplace(torch.add(g, p, alpha=l2), spec)
    return _gc.centered(g, spec)


# ---------------------------------------------------------------------------------------
# Adam / AdamW
# ---------------------------------------------------------------------------------------
class Adam(_GCOptimizer):
    r"""``torch.optim.Adam`` with Gradient Centralization (GC-Adam).

    With :math:`g_t = \pm\nabla L + \lambda w_{t-1}` (L2 decay; with
    ``decoupled_weight_decay=True`` the decay acts on the weight instead, as AdamW),
    :math:`\hat g_t = \Phi_{GC}(g_t)` feeds torch's Adam moments (see
    :class:`gcore.Adam`). State keys are torch's (``step``, ``exp_avg``, ``exp_avg_sq``,
    ``max_exp_avg_sq``), so checkpoints move between ``torch.optim.Adam`` and this class.

    Parameters
    ----------
    params : iterable
        Parameters or param-group dicts; groups may set ``gc``, ``gc_where``,
        ``gc_axis``, ``gc_groups``.
    lr, betas, eps, weight_decay, amsgrad, foreach, maximize, fused, decoupled_weight_decay
        As ``torch.optim.Adam`` (same defaults). ``foreach=None, fused=None`` picks the
        fastest path: fused where torch has fused kernels for every parameter.
    capturable, differentiable : bool, default False
        ``True`` raises ``NotImplementedError``.
    gc, gc_where, gc_axis, gc_groups
        As :class:`gcore_torch.SGD`.

    Examples
    --------
    >>> import torch, gcore_torch
    >>> w = torch.nn.Parameter(torch.zeros(2, 2))
    >>> opt = gcore_torch.Adam([w], lr=0.1)
    >>> w.grad = torch.tensor([[1.0, -1.0], [3.0, 1.0]])
    >>> opt.step()
    >>> w.detach()
    tensor([[-0.1000,  0.1000],
            [-0.1000,  0.1000]])
    >>> sorted(opt.state[w])
    ['exp_avg', 'exp_avg_sq', 'step']
    """

    _rule_type = gcore.Adam
    _name = "Adam"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        gc: bool | str = True,
        gc_where: str = "gradient",
        gc_axis: int | None = 0,
        gc_groups: int = 1,
    ) -> None:
        self._setup(fused, foreach, differentiable)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
            "gc": gc,
            "gc_where": gc_where,
            "gc_axis": gc_axis,
            "gc_groups": gc_groups,
        }
        super().__init__(params, defaults)

    def _rule(self, group, spec):
        rule_type = gcore.AdamW if group["decoupled_weight_decay"] else gcore.Adam
        gc = _rule_gc(group, spec)
        return rule_type(**self._rule_kwargs(group), gc=gc)

    def _rule_kwargs(self, group):
        return {
            "lr": _scalar(group["lr"]),
            "betas": tuple(_scalar(b) for b in group["betas"]),
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "amsgrad": group["amsgrad"],
            "maximize": group["maximize"],
        }

    def _state(self, group, params, fused: bool) -> tuple[list, list, list, list]:
        m, v, vmax, steps = [], [], [], []
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                state["step"] = (
                    torch.zeros((), dtype=_get_scalar_dtype(is_fused=True), device=p.device)
                    if fused
                    else torch.tensor(0.0, dtype=_get_scalar_dtype())
                )
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            elif fused and (
                state["step"].device != p.device or state["step"].dtype != torch.float32
            ):
                # A checkpoint from a non-fused optimizer keeps step on the CPU.
                state["step"] = state["step"].to(p.device, torch.float32)
            if group["amsgrad"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p)
            m.append(state["exp_avg"])
            v.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                vmax.append(state["max_exp_avg_sq"])
            steps.append(state["step"])
        return m, v, vmax, steps

    def _step_group(self, group, params, grads, specs) -> None:
        path = self._path(group, params)
        fused_kernels = path == "fused" and group["gc_where"] == "gradient"
        m, v, vmax, steps = self._state(group, params, fused_kernels)
        args = (group, params, grads, specs, m, v, vmax, steps)
        if path == "single":
            self._single(*args)
        elif fused_kernels:
            self._fused(*args)
        elif group["gc_where"] == "gradient" or all(s is None for s in specs):
            self._foreach(*args)
        else:
            self._foreach_update(*args)

    def _torch_adam(self, group, params, grads, m, v, vmax, steps, *, l2, foreach, fused):
        beta1, beta2 = group["betas"]
        _torch_adam(
            params,
            grads,
            m,
            v,
            vmax,
            steps,
            foreach=foreach,
            fused=fused,
            decoupled_weight_decay=group["decoupled_weight_decay"],
            amsgrad=group["amsgrad"],
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            # Decoupled decay is never centralized: it always stays in torch's kernel.
            weight_decay=group["weight_decay"] if group["decoupled_weight_decay"] else l2,
            eps=group["eps"],
            maximize=group["maximize"],
        )

    def _l2(self, group) -> float:
        return 0.0 if group["decoupled_weight_decay"] else group["weight_decay"]

    def _single(self, group, params, grads, specs, m, v, vmax, steps) -> None:
        for i, (p, g, spec) in enumerate(zip(params, grads, specs, strict=True)):
            rule = self._rule(group, spec)
            st = gcore.AdamState(
                steps[i].to(torch.int64), m[i], v[i], vmax[i] if group["amsgrad"] else None
            )
            upd, new = _single_update(rule, spec, p.detach(), g, st)
            p.add_(upd)
            m[i].copy_(new.exp_avg)
            v[i].copy_(new.exp_avg_sq)
            if group["amsgrad"]:
                vmax[i].copy_(new.max_exp_avg_sq)
            steps[i].add_(1)

    def _foreach(self, group, params, grads, specs, m, v, vmax, steps) -> None:
        l2 = self._l2(group)
        cl2 = _centered_l2(group, l2)
        c, n = _split(specs)
        ams = group["amsgrad"]
        for idx, centered in ((n, False), (c, True)):
            if not idx:
                continue
            ps, gs = _pick(params, idx), _pick(grads, idx)
            if centered:
                eff = torch._foreach_add(gs, ps, alpha=cl2) if l2 != 0 else None
                gs = [
                    _gc.centralize_inplace(eff[j], specs[i])
                    if eff is not None
                    else _gc.centered(gs[j], specs[i])
                    for j, i in enumerate(idx)
                ]
            self._torch_adam(
                group,
                ps,
                gs,
                _pick(m, idx),
                _pick(v, idx),
                _pick(vmax, idx) if ams else [],
                _pick(steps, idx),
                l2=0.0 if centered else l2,
                foreach=True,
                fused=False,
            )

    def _fused(self, group, params, grads, specs, m, v, vmax, steps) -> None:
        l2 = self._l2(group)
        cl2 = _centered_l2(group, l2)
        ams = group["amsgrad"]
        rowwise = [i for i, s in enumerate(specs) if _gc.is_plain_rowwise(grads[i], s)]
        rowset = set(rowwise)
        plain = [i for i, s in enumerate(specs) if s is None]
        other = [i for i, s in enumerate(specs) if s is not None and i not in rowset]
        for idx, wd, gs in (
            (plain, l2, _pick(grads, plain)),
            (other, 0.0, [_eff_centered(grads[i], params[i], specs[i], cl2) for i in other]),
        ):
            if idx:
                self._torch_adam(
                    group,
                    _pick(params, idx),
                    gs,
                    _pick(m, idx),
                    _pick(v, idx),
                    _pick(vmax, idx) if ams else [],
                    _pick(steps, idx),
                    l2=wd,
                    foreach=False,
                    fused=True,
                )
        if not rowwise:
            return
        beta1, beta2 = group["betas"]
        torch._foreach_add_(_pick(steps, rowwise), 1)
        compiled = [i for i in rowwise if _kernels.usable(params[i])]
        if compiled:
            _kernels.get().gc_adam_(
                _pick(params, compiled),
                _pick(grads, compiled),
                _pick(m, compiled),
                _pick(v, compiled),
                _pick(vmax, compiled) if ams else [],
                [float(steps[i]) for i in compiled],
                float(_scalar(group["lr"])),
                float(_scalar(beta1)),
                float(_scalar(beta2)),
                float(group["eps"]),
                float(l2),
                float(group["weight_decay"]) if group["decoupled_weight_decay"] else 0.0,
                bool(group["maximize"]),
                bool(ams),
            )
            done = set(compiled)
            rowwise = [i for i in rowwise if i not in done]
            if not rowwise:
                return
        rsteps = _pick(steps, rowwise)
        op = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        lr = group["lr"]
        wd = group["weight_decay"] if group["decoupled_weight_decay"] else 0.0

        def kernel(ps, gs, ss, ix):
            op(
                ps,
                gs,
                ss[0],
                ss[1],
                ss[2] if ams else [],
                [rsteps[i] for i in ix],
                amsgrad=ams,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=wd,
                eps=group["eps"],
                maximize=group["maximize"],
                grad_scale=None,
                found_inf=None,
            )

        states = [_pick(m, rowwise), _pick(v, rowwise)]
        if ams:
            states.append(_pick(vmax, rowwise))
        self._run_blocked(_pick(params, rowwise), _pick(grads, rowwise), states, cl2, kernel)

    def _foreach_update(self, group, params, grads, specs, m, v, vmax, steps) -> None:
        lr = _scalar(group["lr"])
        beta1, beta2 = (_scalar(b) for b in group["betas"])
        wd = group["weight_decay"]
        g = torch._foreach_neg(grads) if group["maximize"] else list(grads)
        if wd != 0 and not group["decoupled_weight_decay"]:
            g = torch._foreach_add(g, params, alpha=wd)
        torch._foreach_add_(steps, 1)
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1 - beta2)
        second = v
        if group["amsgrad"]:
            torch._foreach_maximum_(vmax, v)
            second = vmax
        ts = [s.item() for s in steps]
        step_size = [-lr / (1 - beta1**t) for t in ts]
        bc2_sqrt = [math.sqrt(1 - beta2**t) for t in ts]
        denom = torch._foreach_sqrt(second)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, group["eps"])
        u = torch._foreach_div(m, denom)
        torch._foreach_mul_(u, step_size)
        for x, spec in zip(u, specs, strict=True):
            _gc.centralize_inplace(x, spec)
        if wd != 0 and group["decoupled_weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_add_(params, u)


class AdamW(Adam):
    r"""``torch.optim.AdamW`` with Gradient Centralization (GC-AdamW).

    The decoupled decay :math:`w \leftarrow w(1 - \eta\lambda)` acts on the weight and is
    not centralized; GC applies to the raw gradient before the moments (see
    :class:`gcore.AdamW`). Parameters as :class:`gcore_torch.Adam`, with torch's AdamW
    default ``weight_decay=1e-2``.

    Examples
    --------
    >>> import torch, gcore_torch
    >>> w = torch.nn.Parameter(torch.ones(2, 2))
    >>> opt = gcore_torch.AdamW([w], lr=0.1, weight_decay=0.5)
    >>> w.grad = torch.zeros(2, 2)
    >>> opt.step()
    >>> w.detach()  # only the decoupled decay acts on a zero gradient
    tensor([[0.9500, 0.9500],
            [0.9500, 0.9500]])
    """

    _name = "AdamW"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        gc: bool | str = True,
        gc_where: str = "gradient",
        gc_axis: int | None = 0,
        gc_groups: int = 1,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            gc=gc,
            gc_where=gc_where,
            gc_axis=gc_axis,
            gc_groups=gc_groups,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
