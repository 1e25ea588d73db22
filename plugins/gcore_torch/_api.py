"""GC for any optimizer (:func:`apply_gc`), by hand (:func:`centralize_`), and layouts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import _gc

__all__ = ["DEFAULT_EXCLUDE", "apply_gc", "centralize_", "param_groups"]

_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    _NORMS = (*_NORMS, nn.RMSNorm)

#: Module types whose weights :func:`param_groups` leaves alone by default.
DEFAULT_EXCLUDE: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag, *_NORMS)

_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _as_list(tensors: Tensor | Iterable[Tensor], name: str) -> list[Tensor]:
    if isinstance(tensors, Tensor):
        return [tensors]
    out = list(tensors)
    for k, t in enumerate(out):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{k}] is a {type(t).__name__}, not a torch.Tensor")
    return out


def centralize_(
    tensors: Tensor | Iterable[Tensor],
    *,
    axis: int | Sequence[int | None] | None = 0,
    conv_only: bool = False,
    groups: int | Sequence[int] = 1,
) -> list[Tensor]:
    """Centralize tensors (usually gradients) in place; return them as a list.

    For users who run GC by hand, e.g. after ``torch.nn.utils.clip_grad_norm_``. Tensors
    with ``ndim < 2`` (``< 4`` with ``conv_only``) are left alone. Works on ``DTensor``
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
    if not isinstance(conv_only, bool):
        raise TypeError(f"conv_only={conv_only!r}: expected True or False")
    gc = "conv_only" if conv_only else True
    with torch.no_grad():
        for k, (t, ax, g) in enumerate(zip(ts, axes, grps, strict=True)):
            if t.is_sparse:
                raise RuntimeError(f"tensors[{k}] is sparse; centralize_ needs dense tensors")
            if not t.is_floating_point():
                raise TypeError(
                    f"tensors[{k}] has dtype {t.dtype}; GC needs a real floating-point tensor"
                )
            spec = _gc.make_spec(t, gc, ax, _gc.check_groups(g), where=f"tensors[{k}]")
            _gc.centralize_inplace(t, spec)
    return ts


def apply_gc(
    optimizer: torch.optim.Optimizer,
    *,
    conv_only: bool = False,
    axes: Mapping[Tensor, int | None] | None = None,
) -> RemovableHandle:
    """Add Gradient Centralization to any optimizer through a step pre-hook.

    Before each ``optimizer.step()`` every parameter's ``.grad`` is centralized in place
    (RMSprop, Adagrad, SGD, third-party optimizers alike). A param group's ``gc_axis`` /
    ``gc_groups`` keys (as :func:`param_groups` writes them) give each parameter its output
    axis; ``axes`` overrides per parameter; the default is axis 0. With
    ``torch.amp.GradScaler`` the hook runs after ``unscale_``.

    The hook runs before ``step``'s closure, so optimizers that compute gradients inside
    the closure (LBFGS) need :func:`centralize_` in the closure instead.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    conv_only : bool, default False
        Only centralize ``ndim >= 4`` gradients (the paper's GCC).
    axes : mapping from parameter to int or None, optional
        Output axis per parameter (``None``: leave that gradient alone).

    Returns
    -------
    torch.utils.hooks.RemovableHandle
        ``handle.remove()`` turns GC off again.

    Examples
    --------
    >>> import torch, gcore_torch
    >>> model = torch.nn.Linear(3, 2)
    >>> opt = torch.optim.RMSprop(model.parameters(), lr=0.01)
    >>> handle = gcore_torch.apply_gc(opt)
    >>> model(torch.randn(4, 3)).square().sum().backward()
    >>> opt.step()
    >>> model.weight.grad.mean(dim=1).abs().max() < 1e-6
    tensor(True)
    >>> handle.remove()
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer")
    if not isinstance(conv_only, bool):
        raise TypeError(f"conv_only={conv_only!r}: expected True or False")
    overrides = {} if axes is None else {id(p): a for p, a in axes.items()}
    gc = "conv_only" if conv_only else True

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for gi, group in enumerate(opt.param_groups):
                axis = group.get("gc_axis", 0)
                groups = group.get("gc_groups", 1)
                for k, p in enumerate(group["params"]):
                    g = p.grad
                    if g is None:
                        continue
                    name = f"param_groups[{gi}]['params'][{k}]"
                    if g.is_sparse:
                        raise RuntimeError(f"{name} has a sparse gradient; GC needs dense ones")
                    ax = overrides.get(id(p), axis)
                    spec = _gc.make_spec(g, gc, ax, groups, where=name)
                    _gc.centralize_inplace(g, spec)

    return optimizer.register_step_pre_hook(hook)


def param_groups(
    model: nn.Module,
    *,
    conv_only: bool = False,
    exclude: tuple[type[nn.Module], ...] = DEFAULT_EXCLUDE,
    **group_opts: Any,
) -> list[dict[str, Any]]:
    """Param groups that give every parameter of ``model`` its GC output axis.

    * Linear, Conv{1,2,3}d (and any other weight with ``ndim >= 2``): axis 0.
    * ConvTranspose{1,2,3}d, weight ``(in, out/groups, k…)``: axis 1, and with
      ``groups > 1`` the mean is taken per (group, output channel) — ``gc_groups``.
    * Biases, norm scales (``ndim < 2``) and every parameter of a module in ``exclude``
      (embeddings, normalization layers by default): ``gc_axis=None``, no GC.

    Parameters
    ----------
    model : torch.nn.Module
    conv_only : bool, default False
        Only conv / conv-transpose weights (``ndim >= 4``) get GC (the paper's GCC).
    exclude : tuple of module types, default DEFAULT_EXCLUDE
        Modules whose parameters are never centralized.
    **group_opts
        Extra keys copied into every group (``lr``, ``weight_decay``, ...).

    Returns
    -------
    list of dict
        Groups with ``params``, ``gc_axis`` and ``gc_groups`` keys, for
        :class:`gcore_torch.SGD` / ``Adam`` / ``AdamW`` or any optimizer with
        :func:`apply_gc`. Shared parameters appear once.

    Examples
    --------
    >>> import torch, gcore_torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
    ...                             torch.nn.ConvTranspose2d(8, 4, 3))
    >>> [(g["gc_axis"], g["gc_groups"], len(g["params"])) for g in gcore_torch.param_groups(model)]
    [(0, 1, 1), (None, 1, 4), (1, 1, 1)]
    >>> opt = gcore_torch.SGD(gcore_torch.param_groups(model), lr=0.1)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}, not a torch.nn.Module")
    if not isinstance(conv_only, bool):
        raise TypeError(f"conv_only={conv_only!r}: expected True or False")
    reserved = {"params", "gc_axis", "gc_groups"} & set(group_opts)
    if reserved:
        raise TypeError(f"param_groups sets {sorted(reserved)} itself; do not pass them")
    min_ndim = 4 if conv_only else 2
    buckets: dict[tuple[int | None, int], list[Tensor]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            key: tuple[int | None, int]
            if isinstance(module, exclude) or p.ndim < min_ndim:
                key = (None, 1)
            elif isinstance(module, _CONV_T) and p is module.weight:
                key = (1, module.groups)
            else:
                key = (0, 1)
            buckets.setdefault(key, []).append(p)
    return [
        {"params": ps, "gc_axis": axis, "gc_groups": groups, **group_opts}
        for (axis, groups), ps in buckets.items()
    ]
