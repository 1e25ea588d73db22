"""GC where training code meets it: :func:`centralize_grads_` for hand-written loops,
:func:`apply_gc` for any optimizer, :func:`centralize_` by hand, and :func:`param_groups`
for gcore_torch's optimizers, all with the layouts of :mod:`gcore_torch._layouts`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import _gc
from ._layouts import DEFAULT_EXCLUDE, holds_embeddings, is_bias_name, resolve

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_NO_DECAY",
    "apply_gc",
    "centralize_",
    "centralize_grads_",
    "param_groups",
]

#: Module types whose parameters ``param_groups(..., no_decay=True)`` keeps out of weight
#: decay (beside every parameter with ``ndim < 2``: biases, norm scales).
DEFAULT_NO_DECAY: tuple[type[nn.Module], ...] = DEFAULT_EXCLUDE


def _as_list(tensors: Tensor | Iterable[Tensor], name: str) -> list[Tensor]:
    if isinstance(tensors, Tensor):
        return [tensors]
    out = list(tensors)
    for k, t in enumerate(out):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{k}] is a {type(t).__name__}, not a torch.Tensor")
    return out


def _check_grad(g: Tensor, where: str) -> None:
    if g.is_sparse:
        raise RuntimeError(f"{where} is sparse; GC needs dense gradients")
    if g.is_complex():
        raise TypeError(
            f"{where} has dtype {g.dtype}; gcore_torch centralizes real floating-point "
            "gradients only (split a complex parameter into real and imaginary parts)"
        )
    if not g.is_floating_point():
        raise TypeError(f"{where} has dtype {g.dtype}; GC needs a real floating-point tensor")


def _units(t: Tensor, spec: tuple[int, int]) -> tuple[Tensor, tuple[int, ...]]:
    """``t`` viewed so that its output units are the kept axes; the axes to average over."""
    axis, groups = spec
    if groups == 1:
        return t, tuple(d for d in range(t.ndim) if d != axis)
    x = t.unflatten(0, (groups, -1))
    return x, tuple(d for d in range(x.ndim) if d not in (0, axis + 1))


def _full(t: Tensor) -> Tensor:
    """A plain tensor from a ``DTensor`` scalar (all-reduced), ``t`` otherwise."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


def _norm32(t: Tensor) -> Tensor:
    """``t``'s Euclidean norm as float32 (float16/bfloat16 summed in float32, float64 in
    float64: a float32 ``dtype`` would narrow it, which torch refuses)."""
    if t.dtype == torch.float64:
        return torch.linalg.vector_norm(t).float()
    return torch.linalg.vector_norm(t, dtype=torch.float32)


def _norms32(ts: list[Tensor]) -> Tensor:
    """The norms of ``ts`` as one float32 tensor (as :func:`_norm32`, one foreach call per
    kind)."""
    wide = [i for i, t in enumerate(ts) if t.dtype == torch.float64]
    if not wide:
        return torch.stack(torch._foreach_norm(ts, 2, dtype=torch.float32))
    out = torch.empty(len(ts), dtype=torch.float32, device=ts[0].device)
    narrow = [i for i, t in enumerate(ts) if t.dtype != torch.float64]
    for idx, kw in ((narrow, {"dtype": torch.float32}), (wide, {})):
        if idx:
            norms = torch._foreach_norm([ts[i] for i in idx], 2, **kw)
            out[idx] = torch.stack(norms).float()
    return out


def _centralize_batch(
    grads: list[Tensor], specs: list[_gc.Spec], *, measure: bool = False
) -> Tensor | None:
    """Centralize ``grads[k]`` in place by ``specs[k]`` (``None``: leave alone).

    Per centralized tensor one reduction for its unit means and one in-place subtraction:
    the two passes over memory of the hand-written recipe. (A ``torch._foreach_sub_`` of
    the broadcast means measured ~1.3x slower than these per-tensor ``sub_`` calls on
    CPU, and the Python loop is not what costs: ~2 µs a tensor against milliseconds of
    memory traffic.) With ``measure``, one ``torch._foreach_norm`` per device adds one
    read of every gradient and the function returns the fraction of the gradients' total
    norm that GC removed, ``‖g − Φ(g)‖ / ‖g‖`` over all of ``grads`` (float32, on the first
    gradient's device), using ``‖g − Φ(g)‖² = Σ_units M·mean²``. ``DTensor`` gradients
    take the same plain ops, so their sharding propagation applies.
    """
    removed_sq: list[Tensor] = []
    total_sq: list[Tensor] = []
    # per device: the plain gradients, their unit means and units' sizes (for measure)
    plain_by_device: dict[torch.device, tuple[list[Tensor], list[Tensor], list[int]]] = {}
    for g, spec in zip(grads, specs, strict=True):
        plain = type(g) is Tensor or type(g) is nn.Parameter
        if plain and measure:
            every, means, counts = plain_by_device.setdefault(g.device, ([], [], []))
            every.append(g)
        if spec is not None:
            x, dims = _units(g, spec)
            m = _gc.center_into(x, x, dims, means=measure)
            if measure:
                count = math.prod(x.shape[d] for d in dims)
                if plain:
                    means.append(m)
                    counts.append(count)
                else:
                    norm = _full(_norm32(m))
                    removed_sq.append(norm.square() * count)
        if measure and not plain:  # DTensor & co: plain ops, one at a time
            total_sq.append(_full(_norm32(g)).square())
    if not measure:
        return None
    # Norms after the subtraction: ‖g‖² = ‖Φ(g)‖² + ‖g − Φ(g)‖², ‖g − Φ(g)‖² = Σ M·mean².
    for device, (every, means, counts) in plain_by_device.items():
        total_sq.append(_norms32(every).square().sum())
        if means:
            mnorms = _norms32(means)
            weights = torch.tensor(counts, dtype=torch.float32, device=device)
            removed_sq.append((mnorms.square() * weights).sum())
    first = grads[0].device if grads else torch.device("cpu")
    zero = torch.zeros((), dtype=torch.float32, device=first)
    removed = torch.stack([zero, *(t.to(first) for t in removed_sq)]).sum()
    total = torch.stack([zero, *(t.to(first) for t in total_sq)]).sum() + removed
    return torch.where(total > 0, (removed / torch.where(total > 0, total, 1.0)).sqrt(), 0.0)


def _check_conv_only(conv_only: object) -> None:
    if not isinstance(conv_only, bool):
        raise TypeError(f"conv_only={conv_only!r}: expected True or False")


def _check_exclude(exclude: object, name: str = "exclude") -> tuple[type, ...]:
    if not isinstance(exclude, tuple) or not all(isinstance(t, type) for t in exclude):
        raise TypeError(f"{name}={exclude!r}: expected a tuple of module types")
    return exclude


def _model_specs(
    model: nn.Module, conv_only: bool, exclude: tuple[type, ...]
) -> dict[int, tuple[int, int] | None]:
    """``id(param) -> (axis, groups)`` or ``None`` for every parameter of ``model``."""
    return {
        id(p): (None if lay is None else (lay.axis, lay.groups))
        for _, p, lay, _ in resolve(model, exclude=exclude, min_ndim=4 if conv_only else 2)
    }


def centralize_(
    tensors: Tensor | Iterable[Tensor],
    *,
    axis: int | Sequence[int | None] | None = 0,
    conv_only: bool = False,
    groups: int | Sequence[int] = 1,
) -> list[Tensor]:
    """Centralize tensors (usually gradients) in place; return them as a list.

    For users who run GC by hand on tensors they choose (for a whole model,
    :func:`centralize_grads_` finds every layer's output axis itself). Tensors with
    ``ndim < 2`` (``< 4`` with ``conv_only``) are left alone. Works on ``DTensor``
    gradients: shard-local when sharded along ``axis``, reducing partial sums otherwise.

    Parameters
    ----------
    tensors : Tensor or iterable of Tensor
        Real floating-point tensors, modified in place.
    axis : int, None or sequence, default 0
        Output axis (0 for Linear/Conv, 1 for ConvTranspose), ``None`` to skip, or one
        entry per tensor.
    conv_only : bool, default False
        Only centralize ``ndim >= 4`` tensors (the paper's GCC).
    groups : int or sequence of int, default 1
        Per-group means of grouped ConvTranspose weights (with ``axis=1``).

    Returns
    -------
    list of Tensor
        The same tensor objects.

    Examples
    --------
    >>> import torch, gcore_torch
    >>> model = torch.nn.Linear(3, 2)
    >>> model(torch.randn(4, 3)).square().sum().backward()
    >>> _ = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    >>> _ = gcore_torch.centralize_([p.grad for p in model.parameters()])
    >>> model.weight.grad.mean(dim=1).abs().max() < 1e-6
    tensor(True)
    """
    ts = _as_list(tensors, "tensors")
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis] * len(ts)
    grps = list(groups) if isinstance(groups, (list, tuple)) else [groups] * len(ts)
    if len(axes) != len(ts) or len(grps) != len(ts):
        raise ValueError(f"axis/groups have {len(axes)}/{len(grps)} entries for {len(ts)} tensors")
    _check_conv_only(conv_only)
    gc = "conv_only" if conv_only else True
    specs = []
    for k, (t, ax, g) in enumerate(zip(ts, axes, grps, strict=True)):
        _check_grad(t, f"tensors[{k}]")
        specs.append(_gc.make_spec(t, gc, ax, _gc.check_groups(g), where=f"tensors[{k}]"))
    with torch.no_grad():
        _centralize_batch(ts, specs)
    return ts


def centralize_grads_(
    parameters: nn.Module | Tensor | Iterable[Tensor],
    *,
    conv_only: bool = False,
    exclude: tuple[type[nn.Module], ...] = DEFAULT_EXCLUDE,
    measure: bool = True,
) -> Tensor | None:
    r"""Centralize the gradients of a model in place, like ``clip_grad_norm_`` clips them.

    The one line for hand-written training loops, between ``loss.backward()`` (and any
    ``unscale_`` / clipping) and ``optimizer.step()``. Given a model, each parameter's
    ``.grad`` is centralized along the output axis of its layer (:func:`layouts`: axis 1
    for ConvTranspose and transformers' ``Conv1D``, axis 0 for Linear / Conv / attention
    / RNN weights); parameters of ``exclude`` modules (embeddings, norms), tied ones
    among them, and those with ``ndim < 2`` are left alone. Given plain tensors, every
    gradient with ``ndim >= 2`` is centralized along axis 0.

    Parameters
    ----------
    parameters : torch.nn.Module, Tensor or iterable of Tensor
        A model (layout-aware) or parameters whose ``.grad`` is centralized (axis 0).
        Parameters without a gradient are skipped.
    conv_only : bool, default False
        Only centralize ``ndim >= 4`` gradients (the paper's GCC).
    exclude : tuple of module types, default DEFAULT_EXCLUDE
        With a model: modules whose parameters are never centralized.
    measure : bool, default True
        Compute the figure below. It costs one more read of every gradient (one
        ``torch._foreach_norm``); ``False`` skips it and returns ``None``.

    Returns
    -------
    Tensor or None
        A float32 scalar worth logging: the fraction of the gradients' total norm that GC
        removed, :math:`\|g - \Phi_{GC}(g)\| / \|g\|` over all the gradients seen
        (0: already centred; 1: constant along every unit). Zero gradients give 0.

    Examples
    --------
    >>> import torch, gcore_torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Unflatten(1, (4, 1)),
    ...                             torch.nn.ConvTranspose1d(4, 2, 3))
    >>> model(torch.randn(5, 3)).square().sum().backward()
    >>> removed = gcore_torch.centralize_grads_(model)  # log it: float(removed)
    >>> bool(0 <= removed <= 1)
    True
    >>> w = model[2].weight.grad  # ConvTranspose (in, out, k): output axis 1
    >>> bool(w.mean(dim=(0, 2)).abs().max() < 1e-6)
    True
    """
    _check_conv_only(conv_only)
    if isinstance(parameters, nn.Module):
        exclude = _check_exclude(exclude)
        specs_of = _model_specs(parameters, conv_only, exclude)
        params = [p for p in parameters.parameters() if p.grad is not None]
        specs_in = [specs_of[id(p)] for p in params]
    else:
        params = [p for p in _as_list(parameters, "parameters") if p.grad is not None]
        min_ndim = 4 if conv_only else 2
        specs_in = [(0, 1) if p.ndim >= min_ndim else None for p in params]
    grads = [p.grad for p in params]
    specs: list[_gc.Spec] = []
    for k, (g, spec) in enumerate(zip(grads, specs_in, strict=True)):
        _check_grad(g, f"the gradient of parameter {k}")
        specs.append(None if spec is None or g.numel() == 0 else spec)
    if not isinstance(measure, bool):
        raise TypeError(f"measure={measure!r}: expected True or False")
    with torch.no_grad():
        return _centralize_batch(grads, specs, measure=measure)


def apply_gc(
    optimizer: torch.optim.Optimizer,
    *,
    conv_only: bool = False,
    axes: Mapping[Tensor, int | None] | None = None,
    model: nn.Module | None = None,
    exclude: tuple[type[nn.Module], ...] = DEFAULT_EXCLUDE,
) -> RemovableHandle:
    """Add Gradient Centralization to any optimizer through a step pre-hook.

    Each ``optimizer.step()`` centralizes every parameter's ``.grad`` in place before
    the update (RMSprop, Adagrad, SGD, third-party optimizers alike). When ``step`` is
    given a closure (LBFGS, PyTorch Lightning's automatic optimization), the gradients
    are centralized right after the closure has computed them, each time it runs.

    Each parameter's output axis comes from, in this order: ``axes``; ``model``'s layouts
    (:func:`layouts`: ConvTranspose and transformers' ``Conv1D`` on axis 1, embeddings
    and norms excluded); its param group's ``gc_axis`` / ``gc_groups`` keys (as
    :func:`param_groups` writes them); axis 0. With ``torch.amp.GradScaler`` the hook
    runs after ``unscale_``.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    conv_only : bool, default False
        Only centralize ``ndim >= 4`` gradients (the paper's GCC).
    axes : mapping from parameter to int or None, optional
        Output axis per parameter (``None``: leave that gradient alone).
    model : torch.nn.Module, optional
        The model the optimizer trains: its layouts give the output axes.
    exclude : tuple of module types, default DEFAULT_EXCLUDE
        With ``model``: modules whose parameters are never centralized.

    Returns
    -------
    torch.utils.hooks.RemovableHandle
        ``handle.remove()`` turns GC off again.

    Raises
    ------
    TypeError
        At ``step()``, for a complex gradient.

    Examples
    --------
    >>> import torch, gcore_torch
    >>> model = torch.nn.Linear(3, 2)
    >>> opt = torch.optim.RMSprop(model.parameters(), lr=0.01)
    >>> handle = gcore_torch.apply_gc(opt, model=model)
    >>> model(torch.randn(4, 3)).square().sum().backward()
    >>> opt.step()
    >>> model.weight.grad.mean(dim=1).abs().max() < 1e-6
    tensor(True)
    >>> handle.remove()
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer")
    _check_conv_only(conv_only)
    overrides = {} if axes is None else {id(p): a for p, a in axes.items()}
    from_model: dict[int, tuple[int, int] | None] = {}
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model is a {type(model).__name__}, not a torch.nn.Module")
        from_model = _model_specs(model, conv_only, _check_exclude(exclude))
    gc = "conv_only" if conv_only else True

    def centralize_all(opt: torch.optim.Optimizer) -> None:
        grads: list[Tensor] = []
        specs: list[_gc.Spec] = []
        for gi, group in enumerate(opt.param_groups):
            axis = group.get("gc_axis", 0)
            groups = _gc.check_groups(group.get("gc_groups", 1))
            for k, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                name = f"the gradient of param_groups[{gi}]['params'][{k}]"
                _check_grad(g, name)
                if id(p) in overrides:
                    spec = _gc.make_spec(g, gc, overrides[id(p)], 1, where=name)
                elif id(p) in from_model:
                    spec = from_model[id(p)]
                    spec = None if spec is None else _gc.make_spec(g, gc, *spec, where=name)
                else:
                    spec = _gc.make_spec(g, gc, axis, groups, where=name)
                grads.append(g)
                specs.append(spec)
        with torch.no_grad():
            _centralize_batch(grads, specs)

    def hook(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> Any:
        # torch passes step's own arguments: args = (optimizer, [closure]).
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            centralize_all(opt)
            return None

        def centralizing_closure() -> Any:
            loss = closure()
            centralize_all(opt)
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": centralizing_closure}
        return (args[0], centralizing_closure, *args[2:]), kwargs

    return optimizer.register_step_pre_hook(hook)


def _held_by(model: nn.Module, types: tuple[type, ...], embeddings: bool = False) -> set[int]:
    """``id`` of each parameter of a module of ``types`` (and, with ``embeddings``, of
    transformers' embedding modules)."""
    return {
        id(p)
        for module in model.modules()
        if isinstance(module, types) or (embeddings and holds_embeddings(module))
        for p in module.parameters(recurse=False)
    }


def param_groups(
    model: nn.Module,
    *,
    conv_only: bool = False,
    exclude: tuple[type[nn.Module], ...] = DEFAULT_EXCLUDE,
    no_decay: bool | tuple[type[nn.Module], ...] = False,
    **group_opts: Any,
) -> list[dict[str, Any]]:
    """Param groups that give every parameter of ``model`` its GC output axis.

    The axes come from the layout registry (:func:`layouts`, :func:`register_layout`):

    * Linear, Conv{1,2,3}d, MultiheadAttention's packed ``in_proj_weight``, RNN/LSTM/GRU
      weights (and any other weight with ``ndim >= 2``): axis 0.
    * ConvTranspose{1,2,3}d, weight ``(in, out/groups, k…)``: axis 1, and with
      ``groups > 1`` the mean is taken per (group, output channel) — ``gc_groups``.
    * transformers' ``Conv1D`` (GPT-2), weight ``(in, out)``: axis 1.
    * transformers 5's mixture-of-experts weights ``(experts, out, in)`` (or
      ``(experts, in, out)``): axis 1 (2), one group per expert.
    * Biases, norm scales (``ndim < 2``), parameters named as biases whatever their shape
      (``bias``, ``r_w_bias``, ``relative_position_bias_table``, ``*_bias``), the tokens
      and position tables held by transformers' ``...Embeddings`` modules (ViT's
      ``cls_token``), weights whose units would have one weight each (``Linear(1, n)``:
      GC would zero their gradient and freeze them), and every parameter of a module in
      ``exclude`` (embeddings, normalization layers by default) — including a weight
      *tied* to an embedding, such as GPT-2's ``lm_head.weight``: ``gc_axis=None``, no GC.

    Parameters
    ----------
    model : torch.nn.Module
    conv_only : bool, default False
        Only conv / conv-transpose weights (``ndim >= 4``) get GC (the paper's GCC).
    exclude : tuple of module types, default DEFAULT_EXCLUDE
        Modules whose parameters are never centralized.
    no_decay : bool or tuple of module types, default False
        ``True``: biases (every parameter with ``ndim < 2`` or named as a bias) and the
        parameters of embeddings and norms (:data:`DEFAULT_NO_DECAY`, and the tokens of
        transformers' ``...Embeddings`` modules; tied ones too) go into groups with
        ``weight_decay=0.0``; a tuple names the module types instead. The other
        groups keep ``weight_decay`` from ``group_opts`` (or the optimizer's default).
    **group_opts
        Extra keys copied into every group (``lr``, ``weight_decay``, ...).

    Returns
    -------
    list of dict
        Groups with ``params``, ``gc_axis`` and ``gc_groups`` keys (and ``weight_decay``
        for the no-decay groups), for :class:`gcore_torch.SGD` / ``Adam`` / ``AdamW``
        or any optimizer with :func:`apply_gc`. Shared parameters appear once.

    Examples
    --------
    >>> import torch, gcore_torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
    ...                             torch.nn.ConvTranspose2d(8, 4, 3))
    >>> [(g["gc_axis"], g["gc_groups"], len(g["params"])) for g in gcore_torch.param_groups(model)]
    [(0, 1, 1), (None, 1, 4), (1, 1, 1)]
    >>> groups = gcore_torch.param_groups(model, no_decay=True, weight_decay=0.05)
    >>> [(g["gc_axis"], g["weight_decay"], len(g["params"])) for g in groups]
    [(0, 0.05, 1), (None, 0.0, 4), (1, 0.05, 1)]
    >>> opt = gcore_torch.AdamW(groups, lr=1e-3)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}, not a torch.nn.Module")
    _check_conv_only(conv_only)
    exclude = _check_exclude(exclude)
    reserved = {"params", "gc_axis", "gc_groups"} & set(group_opts)
    if reserved:
        raise TypeError(f"param_groups sets {sorted(reserved)} itself; do not pass them")
    if isinstance(no_decay, bool):
        decay_free = _held_by(model, DEFAULT_NO_DECAY, embeddings=True) if no_decay else None
    else:
        decay_free = _held_by(model, _check_exclude(no_decay, "no_decay"))
    buckets: dict[tuple[int | None, int, bool], list[Tensor]] = {}
    for name, p, lay, _ in resolve(model, exclude=exclude, min_ndim=4 if conv_only else 2):
        axis, groups = (None, 1) if lay is None else (lay.axis, lay.groups)
        free = decay_free is not None and (
            p.ndim < 2 or id(p) in decay_free or is_bias_name(name.rpartition(".")[2])
        )
        buckets.setdefault((axis, groups, free), []).append(p)
    out = []
    for (axis, groups, free), ps in buckets.items():
        group = {"params": ps, "gc_axis": axis, "gc_groups": groups, **group_opts}
        if free:
            group["weight_decay"] = 0.0
        out.append(group)
    return out
