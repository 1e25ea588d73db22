"""``torch.optim.Adam`` / ``AdamW`` with Gradient Centralization: classes and paths."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam as _torch_adam
from torch.optim.optimizer import _get_scalar_dtype

import gcore

from . import _base, _kernels
from ._base import pick, scalar
from ._gc import Spec

__all__ = ["Adam", "AdamW"]


class Adam(_base.GCOptimizerMixin, torch.optim.Adam):
    r"""``torch.optim.Adam`` with Gradient Centralization (GC-Adam).

    With :math:`g_t = \pm\nabla L + \lambda w_{t-1}` (L2 decay; with
    ``decoupled_weight_decay=True`` the decay acts on the weight instead, as AdamW),
    :math:`\hat g_t = \Phi_{GC}(g_t)` feeds torch's Adam moments (see
    :class:`gcore.Adam`). A subclass of ``torch.optim.Adam``; state keys are torch's
    (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``), so checkpoints move
    between ``torch.optim.Adam`` and this class.

    Parameters
    ----------
    params : iterable
        Parameters or param-group dicts; groups may set ``gc``, ``gc_where``,
        ``gc_axis``, ``gc_groups``.
    lr, betas, eps, weight_decay, amsgrad, foreach, maximize, fused, decoupled_weight_decay
        As ``torch.optim.Adam`` (same defaults). ``foreach=None, fused=None`` picks the
        fused path on CPU and CUDA (compiled kernels where available).
    capturable, differentiable : bool, default False
        ``True`` raises ``NotImplementedError``.
    gc, gc_where, gc_axis, gc_groups
        As :class:`gcore_torch.SGD`.

    Notes
    -----
    float16 with ``gc=False``: torch.optim.Adam evaluates ``sqrt(v) + eps`` in float16,
    where ``eps=1e-8`` rounds to 0, so a zero gradient gives ``0/0 = NaN``; gcore's rule
    (the single path) evaluates the denominator in float32 and stays finite there, and
    the fused path uses torch's fused kernel (float32 arithmetic) as torch does with
    ``fused=True``.

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

    _state_keys = (
        frozenset({"step", "exp_avg", "exp_avg_sq"}),
        frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
    )
    _name = "Adam"
    _no_tensor_with_foreach = ("lr", "betas")

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
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
        self._gc_init(params, defaults)

    def _rule(self, group: dict[str, Any], spec: Spec) -> gcore.Adam:
        kw = {
            "lr": scalar(group["lr"]),
            "betas": tuple(scalar(b) for b in group["betas"]),
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "amsgrad": group["amsgrad"],
            "maximize": group["maximize"],
            "gc": _base.rule_gc(group, spec),
        }
        if not group["decoupled_weight_decay"]:
            return gcore.Adam(**kw)
        if group.get("convention", "torch") != "torch":
            kw["convention"] = group["convention"]
        return gcore.AdamW(**kw)

    def _state(self, group, params, device_steps: bool) -> tuple[list, list, list, list]:
        m, v, vmax, steps = [], [], [], []
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                state["step"] = (
                    torch.zeros((), dtype=_get_scalar_dtype(is_fused=True), device=p.device)
                    if device_steps
                    else torch.tensor(0.0, dtype=_get_scalar_dtype())
                )
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif not isinstance(state["step"], Tensor):  # an old checkpoint's int
                state["step"] = torch.tensor(float(state["step"]), dtype=_get_scalar_dtype())
            elif not state["step"].is_floating_point():  # an int64 count: torch's fused
                # kernels take float counts (torch converts them on load only when fused)
                state["step"] = state["step"].to(_get_scalar_dtype())
            if group["amsgrad"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            m.append(state["exp_avg"])
            v.append(state["exp_avg_sq"])
            vmax.append(state["max_exp_avg_sq"] if group["amsgrad"] else None)
            steps.append(state["step"])
        if torch.compiler.is_compiling():  # traced as the single path; views would break it
            return m, v, vmax, steps
        return m, v, vmax, self._packed_counts(params, steps)

    def _packed_counts(self, params: list[Tensor], steps: list[Tensor]) -> list[Tensor]:
        """``steps`` packed into one tensor (see :func:`_base.packed_counts`), written back
        into the state where they were not."""
        packed = _base.packed_counts(steps)
        if packed is not steps:
            for p, count in zip(params, packed, strict=True):
                self.state[p]["step"] = count
        return packed

    def _step_group(self, group, params, grads, specs, path) -> None:
        single, rest = _base.split_where(group, specs, path)
        if path == "fused":
            single, rest = _base.strided_to_single(single, rest, params)
        elif path == "foreach":
            # torch's float16 foreach Adam adds eps in float16 (1e-8 rounds to 0: a zero
            # gradient gives 0/0); gcore's rule evaluates the denominator in float32.
            half = [i for i in rest if params[i].dtype == torch.float16]
            single = sorted(single + half)
            rest = [i for i in rest if params[i].dtype != torch.float16]
        on_device = path == "fused" and bool(rest) and params[rest[0]].device.type == "cuda"
        if single:
            sp = pick(params, single)
            self._single(group, sp, pick(grads, single), pick(specs, single),
                         *self._state(group, sp, False))  # fmt: skip
        if rest:
            rp = pick(params, rest)
            fn = _fused_adam if path == "fused" else _foreach_adam
            fn(self, group, rp, pick(grads, rest), pick(specs, rest),
               *self._state(group, rp, on_device))  # fmt: skip

    def _kernel_step(self, group, params, units) -> bool:
        """One step of a planned group on the CPU kernel; False (nothing written) when a
        tensor no longer suits it (a missing state, a gradient of another layout)."""
        states = [self.state[p] for p in params]
        vmax = [s.get("max_exp_avg_sq") for s in states] if group["amsgrad"] else []
        try:
            return _kernels.get().gc_adam_(
                params, [p.grad for p in params], [s.get("exp_avg") for s in states],
                [s.get("exp_avg_sq") for s in states], vmax, [s.get("step") for s in states],
                units, *_kernel_scalars(group),
            )  # fmt: skip
        except TypeError:  # a state entry that is not a tensor (an edited int step)
            return False

    def _torch_plan_ok(self, group, p, fused) -> bool:
        if group.get("convention", "torch") != "torch":  # torch has no kernel for it
            return False
        # float16 foreach goes to the core rule (see _step_group)
        return _base.torch_fused_ok(p, "adam") if fused else p.dtype != torch.float16

    def _torch_plan_step(self, group, params, grads, plan) -> bool:
        ams = group["amsgrad"]
        states = [self.state[p] for p in params]
        try:
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            vmax = [s["max_exp_avg_sq"] for s in states] if ams else [None] * len(params)
            steps = [s["step"] for s in states]
            moments = (m, v, vmax) if ams else (m, v)
            if not all(plan.fits(x) and plan.holds(x) for x in moments):
                return False
            if not all(isinstance(t, Tensor) and t.is_floating_point() for t in steps):
                return False  # the general path converts them
            if plan.rows is not None and any(s.device != params[0].device for s in steps):
                return False  # the general path moves them to the parameters' device
        except (KeyError, AttributeError):  # a parameter without state yet
            return False
        parts = _base.plan_parts(plan, params, grads, _centered_l2(group), _l2(group))
        if plan.rows is not None:  # torch's fused CPU kernel, called directly
            # every count advanced once, as torch.optim.adam does; a parameter's row blocks
            # all read its count
            counts = _base.counts_base(steps)
            if counts is None:  # loaded or set by hand since the general path packed them
                steps = self._packed_counts(params, steps)
                counts = _base.counts_base(steps)
            if counts is None:
                torch._foreach_add_(steps, 1)
            else:
                counts.add_(1)
            kernel = _fused_rows_kernel(group)
            plan.rows.run(kernel, params, grads, _centered_l2(group),
                          (m, v, vmax if ams else None), steps)  # fmt: skip
            decay = group["weight_decay"] if group["decoupled_weight_decay"] else None
            for part in parts:
                kernel(
                    part.take(params), part.grads, part.take(m), part.take(v),
                    part.take(vmax) if ams else [], pick(steps, part.idx),
                    weight_decay=part.l2 if decay is None else decay,
                )  # fmt: skip
            return True
        for part in parts:
            ps, ss = part.take(params), pick(steps, part.idx)
            before = list(ss)
            _torch_adam_call(
                group, ps, part.grads, part.take(m), part.take(v), part.take(vmax), ss,
                l2=part.l2, foreach=not plan.fused, fused=plan.fused,
            )  # fmt: skip
            for p, old, new in zip(ps, before, ss, strict=True):
                if old is not new:  # moved to the parameter's device for torch's kernel
                    self.state[p]["step"] = new
        return True

    def _single(self, group, params, grads, specs, m, v, vmax, steps) -> None:
        if _base.torch_only(group):
            # torch.optim's single-tensor Adam (float16 keeps the core rule: see _step_group)
            theirs = [i for i, p in enumerate(params) if p.dtype != torch.float16]
            if theirs:
                _torch_adam_call(
                    group, *(pick(x, theirs) for x in (params, grads, m, v, vmax, steps)),
                    l2=_l2(group), foreach=False, fused=False,
                )  # fmt: skip
            if len(theirs) == len(params):
                return
            half = [i for i, p in enumerate(params) if p.dtype == torch.float16]
            params, grads, specs, m, v, vmax, steps = (
                pick(x, half) for x in (params, grads, specs, m, v, vmax, steps)
            )
        for i, (p, g, spec) in enumerate(zip(params, grads, specs, strict=True)):
            rule = self._rule(group, spec)
            st = gcore.AdamState(steps[i].to(torch.int64), m[i], v[i], vmax[i])
            upd, new = _base.single_update(rule, spec, p.detach(), g, st)
            p.add_(upd)
            m[i].copy_(new.exp_avg)
            v[i].copy_(new.exp_avg_sq)
            if group["amsgrad"]:
                vmax[i].copy_(new.max_exp_avg_sq)
            steps[i].add_(1)


def _l2(group) -> float:
    return 0.0 if group["decoupled_weight_decay"] else group["weight_decay"]


def _centered_l2(group) -> float:
    # torch negates the gradient it is given when maximizing (see _sgd._centered_l2).
    return -_l2(group) if group["maximize"] else _l2(group)


def _torch_adam_call(group, params, grads, m, v, vmax, steps, *, l2, foreach, fused) -> None:
    beta1, beta2 = group["betas"]
    if fused:
        for i, (p, s) in enumerate(zip(params, steps, strict=True)):
            if s.device != p.device:  # a checkpoint of a non-fused optimizer
                steps[i] = s.to(p.device)
    _torch_adam(
        params,
        grads,
        m,
        v,
        [x for x in vmax if x is not None] if group["amsgrad"] else [],
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


def _fused_rows_kernel(group) -> Callable[..., Any]:
    """torch's fused CPU kernel with the group's settings, called as ``torch.optim.adam``
    calls it after advancing the step counts; for row blocks (gradients centralized with
    any L2 folded in), a call for other tensors passes its own ``weight_decay``."""
    beta1, beta2 = group["betas"]
    kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
    return partial(
        kernel, amsgrad=group["amsgrad"], lr=group["lr"], beta1=float(scalar(beta1)),
        beta2=float(scalar(beta2)),
        weight_decay=group["weight_decay"] if group["decoupled_weight_decay"] else 0.0,
        eps=group["eps"], maximize=group["maximize"],
    )  # fmt: skip


def _kernel_scalars(group: dict[str, Any]) -> tuple:
    """The CPU kernel's scalar arguments after its step counts: lr, beta1, beta2, eps,
    L2 (Adam), decoupled decay (AdamW), decoupled, paper convention, maximize, amsgrad."""
    beta1, beta2 = (float(scalar(b)) for b in group["betas"])
    decoupled = bool(group["decoupled_weight_decay"])
    wd = float(group["weight_decay"])
    return (
        _base.finite_lr(group["lr"]), beta1, beta2, float(group["eps"]),
        0.0 if decoupled else wd, wd if decoupled else 0.0, decoupled,
        group.get("convention", "torch") == "paper", bool(group["maximize"]),
        bool(group["amsgrad"]),
    )  # fmt: skip


def _host_counts(steps: list[Tensor]) -> list[float]:
    """Step counts as Python floats (one device sync for steps kept on a GPU)."""
    if all(s.device.type == "cpu" for s in steps):
        return [float(s) for s in steps]
    dev = next(s.device for s in steps if s.device.type != "cpu")
    return torch.stack([s.to(dev, torch.float64) for s in steps]).tolist()


def _write_steps(opt, params, steps) -> None:
    for p, s in zip(params, steps, strict=True):
        opt.state[p]["step"] = s


def _foreach_adam(opt, group, params, grads, specs, m, v, vmax, steps) -> None:
    """GC by plain torch ops on each gradient, then torch's foreach Adam."""
    if group.get("convention", "torch") != "torch":  # torch has no kernel for it
        opt._single(group, params, grads, specs, m, v, vmax, steps)
        return
    c = [i for i, s in enumerate(specs) if s is not None]
    n = [i for i, s in enumerate(specs) if s is None]
    for idx, centered in ((n, False), (c, True)):
        if not idx:
            continue
        ps, gs = pick(params, idx), pick(grads, idx)
        if centered:
            gs = opt._scratch.views(ps)
            _base.centered_into(gs, pick(grads, idx), ps, pick(specs, idx), _centered_l2(group))
        _torch_adam_call(
            group, ps, gs, pick(m, idx), pick(v, idx), pick(vmax, idx), pick(steps, idx),
            l2=0.0 if centered else _l2(group), foreach=True, fused=False,
        )  # fmt: skip


def _fused_adam(opt, group, params, grads, specs, m, v, vmax, steps) -> None:
    """The compiled kernel (CPU) or Triton kernel (CUDA) where it applies; the
    rest centralized into a cached buffer laid out like the parameter and handed to
    torch's fused kernel (its foreach kernel where torch has no fused one)."""
    ams = group["amsgrad"]
    kern, module = _base.kernel_indices(group, params, grads, specs)
    if kern:
        for i in kern:
            state = opt.state[params[i]]
            m[i] = _base.match_layout(state, "exp_avg", params[i])
            v[i] = _base.match_layout(state, "exp_avg_sq", params[i])
            if ams:
                vmax[i] = _base.match_layout(state, "max_exp_avg_sq", params[i])
        states = (pick(m, kern), pick(v, kern), pick(vmax, kern) if ams else [])
        if module is _kernels:
            ks = []
            for i in kern:  # the kernel counts in one-element float tensors, as torch's fused
                s = steps[i]
                if s.device.type != "cpu" or s.dtype not in (torch.float32, torch.float64):
                    s = opt.state[params[i]]["step"] = s.to("cpu", _get_scalar_dtype())
                ks.append(s)
            _base.kernel_done(
                _kernels.get().gc_adam_(
                    pick(params, kern),
                    pick(grads, kern),
                    *states,
                    ks,
                    _base.kernel_units(pick(params, kern), pick(specs, kern)),
                    *_kernel_scalars(group),
                )
            )
        else:  # pragma: no cover - CUDA with Triton
            ks = pick(steps, kern)
            torch._foreach_add_(ks, 1)
            counts = _host_counts(ks)
            beta1, beta2 = (float(scalar(b)) for b in group["betas"])
            lr, eps = _base.finite_lr(group["lr"]), float(group["eps"])
            decoupled = bool(group["decoupled_weight_decay"])
            convention = group.get("convention", "torch")
            wd = float(group["weight_decay"])
            module.adam_(
                *_base.unit_views(params, grads, kern),
                [_base.as_rows(x) for x in states[0]], [_base.as_rows(x) for x in states[1]],
                [_base.as_rows(x) for x in states[2]] if ams else None,
                [specs[i] is not None for i in kern],
                step=[int(c) for c in counts], lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                weight_decay=wd, decoupled=decoupled, amsgrad=bool(ams),
                maximize=bool(group["maximize"]), convention=convention,
            )  # fmt: skip
    done = set(kern)
    rest = [i for i in range(len(params)) if i not in done]
    if not rest:
        return
    if group.get("convention", "torch") != "torch":  # torch has no kernel for it
        opt._single(group, *(pick(x, rest) for x in (params, grads, specs, m, v, vmax, steps)))
        return
    for idx, centered in (
        ([i for i in rest if specs[i] is not None], True),
        ([i for i in rest if specs[i] is None], False),
    ):
        if not idx:
            continue
        ps = pick(params, idx)
        if centered:
            gs = opt._scratch.views(ps)
            _base.centered_into(gs, pick(grads, idx), ps, pick(specs, idx), _centered_l2(group))
        else:
            gs = _base.like_params(pick(grads, idx), ps)
        sm, sv, svm = [], [], []
        for p in ps:
            state = opt.state[p]
            sm.append(_base.match_layout(state, "exp_avg", p))
            sv.append(_base.match_layout(state, "exp_avg_sq", p))
            svm.append(_base.match_layout(state, "max_exp_avg_sq", p) if ams else None)
        ss = pick(steps, idx)
        kinds: dict[bool, list[int]] = {}
        for j, p in enumerate(ps):
            kinds.setdefault(_base.torch_fused_ok(p, "adam"), []).append(j)
        for fused, sub in kinds.items():
            sub_steps = pick(ss, sub)
            _torch_adam_call(
                group, pick(ps, sub), pick(gs, sub), pick(sm, sub), pick(sv, sub),
                pick(svm, sub), sub_steps, l2=0.0 if centered else _l2(group),
                foreach=not fused, fused=fused,
            )  # fmt: skip
            _write_steps(opt, pick(ps, sub), sub_steps)


class AdamW(Adam, torch.optim.AdamW):
    r"""``torch.optim.AdamW`` with Gradient Centralization (GC-AdamW).

    The decoupled decay :math:`w \leftarrow w(1 - \eta\lambda)` acts on the weight and is
    not centralized; GC applies to the raw gradient before the moments (see
    :class:`gcore.AdamW`). A subclass of ``torch.optim.AdamW``. Parameters as
    :class:`gcore_torch.Adam`, with torch's AdamW default ``weight_decay=1e-2``, plus:

    Parameters
    ----------
    convention : {"torch", "paper"}, default "torch"
        ``"paper"``: the GC authors' AdamW (``gcore.AdamW(convention="paper")``): the
        decay joins the (centralized) update and the bias corrections fold into the step
        size. A param-group key like ``lr``.

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
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
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
        convention: str = "torch",
    ) -> None:
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
            "decoupled_weight_decay": True,
            "gc": gc,
            "gc_where": gc_where,
            "gc_axis": gc_axis,
            "gc_groups": gc_groups,
            "convention": convention,
        }
        self._gc_init(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
            group.setdefault("convention", "torch")
