"""``torch.optim.SGD`` with Gradient Centralization: the class and its three paths."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.optim.sgd import sgd as _torch_sgd

import gcore

from . import _base, _kernels
from ._base import pick, scalar
from ._gc import Spec

__all__ = ["SGD"]


class SGD(_base.GCOptimizerMixin, torch.optim.SGD):
    r"""``torch.optim.SGD`` with Gradient Centralization (GC-SGD).

    With :math:`g_t = \pm\nabla L + \lambda w_{t-1}`, :math:`\hat g_t = \Phi_{GC}(g_t)`
    (each output unit's mean removed), then torch's momentum / dampening / Nesterov
    update with :math:`\hat g_t` (see :class:`gcore.SGD`). Each output unit's weight
    mean stays constant, with or without the (L2) weight decay. A subclass of ``torch.optim.SGD``.

    Parameters
    ----------
    params : iterable
        Parameters or param-group dicts, as for ``torch.optim.SGD``. Groups may set
        ``gc``, ``gc_where``, ``gc_axis`` and ``gc_groups`` (see
        :func:`gcore_torch.param_groups`).
    lr, momentum, dampening, weight_decay, nesterov, maximize, foreach, fused
        As ``torch.optim.SGD`` (same defaults). ``foreach=None, fused=None`` picks the
        fused path on CPU and CUDA (compiled kernels where available; see
        :func:`gcore_torch.load_kernels`), which covers every floating dtype.
    differentiable : bool, default False
        ``True`` raises ``NotImplementedError``.
    gc : {True, False, "conv_only"}, default True
        GC on every weight with ``ndim >= 2``; ``False``: ``torch.optim.SGD`` bit for bit
        (torch's kernels with the same ``foreach`` / ``fused``; its fused one by default);
        ``"conv_only"``: only ``ndim >= 4`` (the paper's GCC). Nothing else is accepted.
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
    >>> isinstance(opt, torch.optim.SGD)
    True
    >>> w.grad = torch.tensor([[3.0, 0.0, 0.0]])
    >>> opt.step()
    >>> w.detach()
    tensor([[0.8000, 2.1000, 3.1000]])
    >>> w.detach().mean(dim=1)  # each unit's weight mean is unchanged
    tensor([2.])
    """

    _state_keys = (frozenset(), frozenset({"momentum_buffer", "step"}))
    _name = "SGD"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
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
        self._gc_init(params, defaults)

    def _rule(self, group: dict[str, Any], spec: Spec) -> gcore.SGD:
        return gcore.SGD(
            lr=scalar(group["lr"]),
            momentum=group["momentum"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            weight_decay=scalar(group["weight_decay"]),
            maximize=group["maximize"],
            gc=_base.rule_gc(group, spec),
        )

    def _step_group(self, group, params, grads, specs, path) -> None:
        single, rest = _base.split_where(group, specs, path)
        if path == "fused":
            single, rest = _base.strided_to_single(single, rest, params)
        if single:
            self._single(group, pick(params, single), pick(grads, single), pick(specs, single))
        if rest:
            fn = _fused_sgd if path == "fused" else _foreach_sgd
            fn(self, group, pick(params, rest), pick(grads, rest), pick(specs, rest))

    def _kernel_step(self, group, params, units) -> bool:
        """One step of a planned group on the CPU kernel; False (nothing written) when a
        tensor no longer suits it (a missing gradient or momentum buffer, say)."""
        if group["momentum"] != 0:
            state = self.state
            bufs = [state[p].get("momentum_buffer") for p in params]
            first = [False] * len(params)
        else:
            bufs, first = [], []
        return _kernels.get().gc_sgd_(
            params, [p.grad for p in params], bufs, first, units,
            *_kernel_scalars(group),
        )  # fmt: skip

    def _torch_plan_ok(self, group, p, fused) -> bool:
        return not fused or _base.torch_fused_ok(p, "sgd")

    def _torch_plan_step(self, group, params, grads, plan) -> bool:
        bufs: list[Tensor] = []
        if group["momentum"] != 0:
            state = self.state
            bufs = [state[p].get("momentum_buffer") for p in params]
            try:
                if not (plan.fits(bufs) and plan.holds(bufs)):
                    return False
            except AttributeError:  # a parameter without a buffer yet
                return False
        parts = _base.plan_parts(plan, params, grads, _centered_l2(group), group["weight_decay"])
        if plan.rows is not None:  # torch's fused CPU kernel, as torch.optim calls it
            kernel = partial(
                torch._fused_sgd_, momentum=group["momentum"], lr=group["lr"],
                dampening=group["dampening"], nesterov=group["nesterov"],
                maximize=group["maximize"], is_first_step=False,
            )  # fmt: skip
            plan.rows.run(
                partial(kernel, weight_decay=0.0), params, grads, _centered_l2(group),
                (bufs or None,),
            )  # fmt: skip
            for part in parts:
                kernel(part.take(params), part.grads, part.take(bufs) if bufs else [],
                       weight_decay=part.l2)  # fmt: skip
            return True
        for part in parts:
            _torch_sgd(
                part.take(params), part.grads, part.take(bufs) if bufs else [],
                foreach=not plan.fused, fused=plan.fused, weight_decay=part.l2,
                momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
                nesterov=group["nesterov"], maximize=group["maximize"],
            )  # fmt: skip
        return True

    def _single(self, group, params, grads, specs) -> None:
        if _base.torch_only(group):  # torch.optim's single-tensor SGD
            _torch_sgd_call(self, group, params, grads, _buffers(self, group, params),
                            l2=group["weight_decay"], foreach=False, fused=False)  # fmt: skip
            return
        momentum = group["momentum"] != 0
        for p, g, spec in zip(params, grads, specs, strict=True):
            rule = self._rule(group, spec)
            state = self.state[p]
            buf = state.get("momentum_buffer") if momentum else None
            first = buf is None
            if momentum and first:
                buf = torch.zeros_like(p, memory_format=torch.preserve_format)
            st = gcore.SGDState(torch.tensor(0 if first else 1), buf)
            upd, new = _base.single_update(rule, spec, p.detach(), g, st)
            p.add_(upd)
            if momentum:
                buf.copy_(new.momentum_buffer)
                state["momentum_buffer"] = buf


def _torch_sgd_call(opt, group, params, grads, bufs, *, l2, foreach, fused) -> None:
    """torch's own SGD over ``params``; ``bufs`` (a list, updated in place) and state."""
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
    if group["momentum"] != 0:
        for p, b in zip(params, bufs, strict=True):
            opt.state[p]["momentum_buffer"] = b


def _buffers(opt, group, params) -> list[Tensor | None]:
    if group["momentum"] == 0:
        return []
    return [opt.state[p].get("momentum_buffer") for p in params]


def _centered_l2(group: dict[str, Any]) -> float:
    # torch's kernels negate the (centralized) gradient when maximizing, so the L2 term
    # folded in before GC enters as g - l2*p then: -(g - l2*p) = -g + l2*p.
    l2 = scalar(group["weight_decay"])
    return -l2 if group["maximize"] else l2


def _foreach_sgd(opt, group, params, grads, specs) -> None:
    """GC by plain torch ops on each gradient, then torch's foreach SGD."""
    bufs = _buffers(opt, group, params)
    c = [i for i, s in enumerate(specs) if s is not None]
    n = [i for i, s in enumerate(specs) if s is None]
    for idx, centered in ((n, False), (c, True)):
        if not idx:
            continue
        ps = pick(params, idx)
        gs = pick(grads, idx)
        if centered:
            gs = opt._scratch.views(ps)
            _base.centered_into(gs, pick(grads, idx), ps, pick(specs, idx), _centered_l2(group))
        sub = pick(bufs, idx) if bufs else []
        l2 = 0.0 if centered else group["weight_decay"]
        _torch_sgd_call(opt, group, ps, gs, sub, l2=l2, foreach=True, fused=False)


def _fused_sgd(opt, group, params, grads, specs) -> None:
    """The compiled kernel (CPU) or Triton kernel (CUDA) where it applies; the
    rest centralized into a cached buffer laid out like the parameter and handed to
    torch's fused kernel (its foreach kernel for float16/bfloat16 on the CPU, which
    torch's fused kernel skips)."""
    momentum = group["momentum"] != 0
    kern, module = _base.kernel_indices(group, params, grads, specs)
    if kern:
        first, bufs = [], []
        for i in kern:
            state = opt.state[params[i]]
            b = state.get("momentum_buffer") if momentum else None
            first.append(b is None)
            if momentum:
                if b is None:
                    state["momentum_buffer"] = b = torch.empty_like(params[i])
                bufs.append(_base.match_layout(state, "momentum_buffer", params[i]))
        if module is _kernels:
            _base.kernel_done(
                _kernels.get().gc_sgd_(
                    pick(params, kern),
                    pick(grads, kern),
                    bufs,
                    first,
                    _base.kernel_units(pick(params, kern), pick(specs, kern)),
                    *_kernel_scalars(group),
                )
            )
        else:  # pragma: no cover - CUDA with Triton
            lr, mu, damp, nest, wd, maximize = _kernel_scalars(group)
            module.sgd_(
                *_base.unit_views(params, grads, kern),
                [_base.as_rows(b) for b in bufs] if momentum else None,
                [specs[i] is not None for i in kern],
                lr=lr, momentum=mu, dampening=damp, weight_decay=wd, nesterov=nest,
                maximize=maximize, first_step=first,
            )  # fmt: skip
    done = set(kern)
    rest = [i for i in range(len(params)) if i not in done]
    plain = [i for i in rest if specs[i] is None]
    cent = [i for i in rest if specs[i] is not None]
    if cent:
        ps = pick(params, cent)
        outs = opt._scratch.views(ps)
        _base.centered_into(outs, pick(grads, cent), ps, pick(specs, cent), _centered_l2(group))
        _torch_sgd_parts(opt, group, ps, outs, l2=0.0)
    if plain:
        ps = pick(params, plain)
        gs = _base.like_params(pick(grads, plain), ps)
        _torch_sgd_parts(opt, group, ps, gs, l2=group["weight_decay"])


def _kernel_scalars(group: dict[str, Any]) -> tuple[float, float, float, bool, float, bool]:
    """lr, momentum, dampening, nesterov, weight_decay, maximize as the kernels take them."""
    return (
        _base.finite_lr(group["lr"]),
        float(group["momentum"]),
        float(group["dampening"]),
        bool(group["nesterov"]),
        float(scalar(group["weight_decay"])),
        bool(group["maximize"]),
    )


def _torch_sgd_parts(opt, group, params, grads, *, l2) -> None:
    """torch's fused SGD where it updates the dtype (else foreach), one call per kind of
    momentum buffer: torch's fused kernel starts buffers only when all of a call's are
    None, so a parameter whose first gradient comes late gets a call of its own."""
    bufs = _buffers(opt, group, params)
    for p in params:
        if bufs and opt.state[p].get("momentum_buffer") is not None:
            _base.match_layout(opt.state[p], "momentum_buffer", p)
    bufs = _buffers(opt, group, params)
    kinds: dict[tuple[bool, bool], list[int]] = {}
    for i, p in enumerate(params):
        fused = _base.torch_fused_ok(p, "sgd")
        kinds.setdefault((fused, bool(bufs) and bufs[i] is None), []).append(i)
    for (fused, _), idx in kinds.items():
        sub = pick(bufs, idx) if bufs else []
        _torch_sgd_call(
            opt, group, pick(params, idx), pick(grads, idx), sub, l2=l2,
            foreach=not fused, fused=fused,
        )  # fmt: skip
