"""Output axes of module parameters: the registry behind :func:`gcore_torch.param_groups`,
:func:`gcore_torch.centralize_grads_` and :func:`gcore_torch.apply_gc` (``model=``).

A *layout* tells, for one parameter of one module type, which axis indexes the output
units (``axis``; ``None`` = no GC) and, for grouped ConvTranspose weights, how many blocks
axis 0 holds (``groups``). Lookups walk the module's class hierarchy (most derived class
first), so a subclass of ``nn.Linear`` gets Linear's layout unless it registers its own.
A module type may be named by its qualified name (``"transformers.pytorch_utils.Conv1D"``)
so that a layout for a library is registered without importing the library.

Tied parameters (one tensor used by several modules, e.g. GPT-2's ``lm_head.weight`` is
``wte.weight``) get one layout by a rule that does not depend on the order of the
modules: **excluded wins** — if any module that holds the tensor leaves it alone
(embeddings, norms, ``axis=None``), GC leaves it alone; otherwise the holders with a
registered layout must agree on (axis, groups), else :class:`ValueError` (holders without
one, which would fall back to axis 0, defer to them).

A parameter no registration covers gets axis 0 when ``ndim >= 2``, except: a parameter
named as a bias (``bias``, ``r_w_bias``, ``relative_position_bias_table``) and the
tokens held by transformers' ``...Embeddings`` modules (ViT's ``cls_token``) get none,
and transformers 5's mixture-of-experts tensors get one group per expert (see
:func:`_unregistered`).

A weight that weight or spectral normalization reparametrizes is stored as a direction
(``v``, spectral norm's ``original``), which gets the module's layout for the weight, and a
magnitude (``g``), which gets none.
"""

from __future__ import annotations

import fnmatch
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn
from torch.nn.utils import parametrizations as _parametrizations
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm
from torch.utils.hooks import RemovableHandle

from gcore import normalize_axis, unit_size

__all__ = ["DEFAULT_EXCLUDE", "Layout", "layouts", "register_layout", "resolve"]

_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    _NORMS = (*_NORMS, nn.RMSNorm)

#: Module types whose parameters get no GC by default (embeddings and normalization
#: layers), in :func:`param_groups`, :func:`centralize_grads_` and ``apply_gc(model=...)``.
DEFAULT_EXCLUDE: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag, *_NORMS)


class Layout(NamedTuple):
    """Where a parameter's output units are: ``axis`` (and per-group blocks ``groups``)."""

    axis: int
    groups: int = 1


AxisSpec = int | None | Callable[[nn.Module], "int | None"]
GroupsSpec = int | Callable[[nn.Module], int]


@dataclass(frozen=True)
class _Entry:
    key: type | str
    pattern: str
    axis: AxisSpec
    groups: GroupsSpec


# Registration order matters only within one class: the latest matching pattern wins.
_ENTRIES: OrderedDict[int, _Entry] = OrderedDict()  # weak-referenceable, for the handles


def register_layout(
    module_type: type[nn.Module] | str,
    param_name: str = "weight",
    *,
    axis: AxisSpec,
    groups: GroupsSpec = 1,
) -> RemovableHandle:
    """Declare the output axis of a parameter of a module type.

    Consulted by :func:`param_groups`, :func:`centralize_grads_` and
    ``apply_gc(..., model=...)``. The lookup walks the module's class hierarchy (most
    derived class first); within a class the latest matching registration wins, so a
    registration overrides the built-in ones.

    Parameters
    ----------
    module_type : type or str
        A ``torch.nn.Module`` subclass, or its qualified name
        (``"package.module.ClassName"``, as ``f"{cls.__module__}.{cls.__qualname__}"``):
        a layout for a library's modules is registered without importing the library.
    param_name : str, default "weight"
        The parameter's name inside the module (``module.named_parameters(recurse=False)``);
        shell-style patterns (``"weight_ih_l*"``, ``"*"``) are allowed.
    axis : int, None or callable
        Output axis (negative counts from the end); ``None``: never centralize this
        parameter (like an embedding). A callable receives the module instance.
    groups : int or callable, default 1
        Axis 0 holds ``groups`` blocks whose output units are centralized separately
        (grouped ConvTranspose: ``groups=lambda m: m.groups`` with ``axis=1``).

    Returns
    -------
    torch.utils.hooks.RemovableHandle
        ``handle.remove()`` undoes the registration.

    Examples
    --------
    A layer storing its weight ``(in, out)``, like transformers' ``Conv1D``:

    >>> import torch, gcore_torch
    >>> class InOut(torch.nn.Module):
    ...     def __init__(self, n_in, n_out):
    ...         super().__init__()
    ...         self.weight = torch.nn.Parameter(torch.randn(n_in, n_out))
    ...     def forward(self, x):
    ...         return x @ self.weight
    >>> handle = gcore_torch.register_layout(InOut, "weight", axis=1)
    >>> gcore_torch.layouts(torch.nn.Sequential(InOut(3, 4)))
    {'0.weight': Layout(axis=1, groups=1)}
    >>> handle.remove()
    """
    if not isinstance(module_type, (str, type)):
        raise TypeError(f"module_type={module_type!r}: expected a Module subclass or its name")
    if isinstance(module_type, type) and not issubclass(module_type, nn.Module):
        raise TypeError(f"module_type={module_type.__name__} is not a torch.nn.Module subclass")
    if not isinstance(param_name, str) or not param_name:
        raise TypeError(f"param_name={param_name!r}: expected a non-empty str")
    if not (axis is None or callable(axis) or _is_int(axis)):
        raise TypeError(f"axis={axis!r}: expected an int, None or a callable")
    if not (callable(groups) or (_is_int(groups) and groups >= 1)):
        raise ValueError(f"groups={groups!r}: expected an int >= 1 or a callable")
    handle = RemovableHandle(_ENTRIES)
    _ENTRIES[handle.id] = _Entry(module_type, param_name, axis, groups)
    return handle


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _lookup(module: nn.Module, name: str, cache: dict | None = None) -> _Entry | None:
    if cache is not None and (type(module), name) in cache:
        return cache[type(module), name]
    found = _find(type(module), name)
    if cache is not None:
        cache[type(module), name] = found
    return found


def _find(module_type: type, name: str) -> _Entry | None:
    entries = list(_ENTRIES.values())
    for cls in module_type.__mro__:
        keys = (cls, _qualname(cls))
        for entry in reversed(entries):
            if entry.key in keys and fnmatch.fnmatchcase(name, entry.pattern):
                return entry
    return None


_NO_GC = object()
#: weight_norm's parametrization (private in torch: absent, nothing matches).
_WEIGHT_NORM = getattr(_parametrizations, "_WeightNorm", ())


def _site_layout(
    module: nn.Module, name: str, p: Tensor, exclude: tuple[type, ...], cache: dict
) -> object:
    """Layout of one (module, parameter name) site: a Layout, ``_NO_GC``, or ``None``
    (nothing registered: the plain-tensor default applies)."""
    if exclude and isinstance(module, exclude):
        return _NO_GC
    entry = _lookup(module, name, cache)
    if entry is None:
        return _unregistered(module, name, p)
    axis = entry.axis(module) if callable(entry.axis) else entry.axis
    if axis is None:
        return _NO_GC
    groups = entry.groups(module) if callable(entry.groups) else entry.groups
    if p.ndim == 0:
        return _NO_GC
    try:
        ax = normalize_axis(axis, p.ndim)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"layout registered for {type(module).__name__}.{name} gives axis={axis!r} for "
            f"a parameter of shape {tuple(p.shape)}: {err}"
        ) from None
    return Layout(ax, int(groups))


#: A parameter named so (``bias``, ``r_w_bias``, ``bias_k``, ``gate_up_proj_bias``,
#: ``relative_position_bias_table``; not ``bias_proj``) is a bias, whatever its shape: never
#: a weight of units.
_BIAS_NAME = re.compile(r"(?:^|_)bias(?:_[a-z]|_table)?$")


def is_bias_name(name: str) -> bool:
    """Whether a parameter's own name (the last part of its full name) says it is a bias."""
    return _BIAS_NAME.search(name) is not None


def holds_embeddings(module: nn.Module) -> bool:
    """A transformers ``...Embedding(s)`` module: its own parameters are tokens and
    position tables (ViT's ``cls_token`` and ``position_embeddings``, DINOv2's
    ``mask_token``, Perceiver's ``latents``); its layers are child modules."""
    # The class hierarchy, as for registrations: FSDP2 and user subclasses rename it.
    return any(
        cls.__module__.startswith("transformers.")
        and cls.__name__.endswith(("Embedding", "Embeddings"))
        for cls in type(module).__mro__
    )


def _experts(module: nn.Module) -> bool | None:
    """``is_transposed`` of a transformers 5 mixture-of-experts block (the classes that
    ``@use_experts_implementation`` wraps set it on the instance, with ``num_experts``);
    ``None`` for any other module."""
    attrs = module.__dict__
    transposed, count = attrs.get("is_transposed"), attrs.get("num_experts")
    if isinstance(transposed, bool) and _is_int(count):
        return transposed
    return None


def _leading(name: str) -> Callable[[nn.Module], int]:
    """``groups`` read from the length of axis 0 of the module's tensor ``name``: the
    experts it holds (not ``num_experts``, which expert parallelism sets to a rank's count
    while the parameter, a DTensor, keeps its global shape)."""
    return lambda module: getattr(module, name).shape[0]


def _unregistered(module: nn.Module, name: str, p: Tensor) -> object:
    """The layout of a site no registration covers: ``None`` (the plain-tensor default,
    axis 0 for ``ndim >= 2``) but for biases, tensors held by transformers' embedding
    modules, and transformers 5's expert weights: ``(experts, out, in)`` (``F.linear``
    per expert) or, ``is_transposed``, ``(experts, in, out)`` (``x @ W[e]``), one group
    per expert, so each expert's output units are centralized on their own."""
    if is_bias_name(name) or holds_embeddings(module):
        return _NO_GC
    transposed = _experts(module)
    if transposed is not None and p.ndim == 3:
        return Layout(2 if transposed else 1, p.shape[0])
    return None


def _reparametrized(
    owners: dict[str, nn.Module], mod_name: str, module: nn.Module, name: str
) -> tuple[nn.Module, str] | object | None:
    """For a tensor that weight or spectral normalization stores in place of a module's
    weight: ``(the module, the weight's name)`` for the direction (``v``, spectral norm's
    ``original``; the weight's layout applies), ``_NO_GC`` for a magnitude (``g``: one
    element a unit, which GC would zero); ``None`` for any other parameter. Covers
    ``torch.nn.utils.parametrizations`` (a ``ParametrizationList`` under
    ``<module>.parametrizations.<name>``) and the legacy hooks (``weight_g``/``weight_v``,
    ``weight_orig``)."""
    if isinstance(module, parametrize.ParametrizationList):
        owner_name, _, tensor = mod_name.rpartition(".")
        owner_name = owner_name.removesuffix("parametrizations").removesuffix(".")
        owner = owners.get(owner_name)
        if owner is None:
            return None
        # Not by evaluating the weight: spectral norm's power iteration would advance.
        if name == "original":  # one tensor with the weight's shape (spectral norm, ...)
            return owner, tensor
        if any(isinstance(f, _WEIGHT_NORM) for f in module):
            return {"original0": _NO_GC, "original1": (owner, tensor)}.get(name)
        return None
    for hook in module._forward_pre_hooks.values():
        base = getattr(hook, "name", None)
        if isinstance(hook, WeightNorm) and name in (f"{base}_g", f"{base}_v"):
            return (module, base) if name.endswith("_v") else _NO_GC
        if isinstance(hook, SpectralNorm) and name == f"{base}_orig":
            return module, base
    return None


def _default(p: Tensor) -> Layout | None:
    return Layout(0, 1) if p.ndim >= 2 else None


def resolve(
    model: nn.Module, *, exclude: tuple[type, ...] = DEFAULT_EXCLUDE, min_ndim: int = 2
) -> Iterator[tuple[str, nn.Parameter, Layout | None, bool]]:
    """Each distinct parameter of ``model`` once, in ``model.parameters()`` order:
    ``(name, param, layout or None, excluded)``.

    ``excluded`` is True when some holder of the tensor is in ``exclude`` or registered
    with ``axis=None`` (the tied-weight rule: excluded wins). ``layout`` is ``None`` for
    excluded parameters and for those with ``ndim < min_ndim``.
    """
    sites: dict[int, list[tuple[str, object]]] = {}
    cache: dict = {}
    owners = dict(model.named_modules(remove_duplicate=False))
    for mod_name, module in owners.items():
        for name, p in module.named_parameters(recurse=False, remove_duplicate=False):
            if p is None:
                continue
            full = f"{mod_name}.{name}" if mod_name else name
            site = _reparametrized(owners, mod_name, module, name)
            if site is _NO_GC:
                lay: object = _NO_GC
            elif site is not None:
                lay = _site_layout(*site, p, exclude, cache)  # type: ignore[misc]
            else:
                lay = _site_layout(module, name, p, exclude, cache)
            sites.setdefault(id(p), []).append((full, lay))
    for name, p in model.named_parameters():
        found = sites.get(id(p), [])
        if any(lay is _NO_GC for _, lay in found):
            yield name, p, None, True
            continue
        lays = {lay for _, lay in found if lay is not None}
        if not lays:
            lay = _default(p)
        elif len(lays) == 1:
            lay = next(iter(lays))
        else:
            where = ", ".join(
                f"{n} (axis={lay.axis}, groups={lay.groups})"
                for n, lay in found
                if isinstance(lay, Layout)
            )
            raise ValueError(
                f"parameter {name!r} is shared by modules with different GC layouts: {where}. "
                "Register one layout with gcore_torch.register_layout, or exclude the tensor"
            )
        if lay is not None and (p.ndim < min_ndim or _one_weight_units(p, lay)):
            lay = None
        yield name, p, lay, False


def _one_weight_units(p: Tensor, lay: Layout) -> bool:
    """Whether ``lay`` gives ``p`` units of one weight (M = 1, ``Linear(1, n)``): GC
    would zero their gradient and the layer would never train, so a model's layouts
    leave such a parameter alone (plain tensors keep the paper's definition)."""
    try:
        return p.numel() > 0 and unit_size(p.shape, lay.axis, groups=lay.groups) == 1
    except ValueError:  # a layout that does not fit p: reported where it is applied
        return False


def layouts(
    model: nn.Module, *, exclude: tuple[type, ...] = DEFAULT_EXCLUDE, conv_only: bool = False
) -> dict[str, Layout | None]:
    """The GC layout of every parameter of ``model``, by name (``None``: no GC).

    What :func:`param_groups`, :func:`centralize_grads_` and ``apply_gc(model=...)``
    use; handy to check a model from a library before training.

    Examples
    --------
    >>> import torch, gcore_torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ConvTranspose1d(4, 2, 3))
    >>> gcore_torch.layouts(model)  # doctest: +NORMALIZE_WHITESPACE
    {'0.weight': Layout(axis=0, groups=1), '0.bias': None,
     '1.weight': Layout(axis=1, groups=1), '1.bias': None}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}, not a torch.nn.Module")
    return {
        name: lay
        for name, _, lay, _ in resolve(model, exclude=exclude, min_ndim=4 if conv_only else 2)
    }


# -- built-in layouts -----------------------------------------------------------------
# Linear and Conv{1,2,3}d store (out, in, k...): axis 0. ConvTranspose stores
# (in, out/groups, k...): axis 1, one block of axis 0 per group.
register_layout(nn.Linear, "weight", axis=0)
register_layout(nn.Bilinear, "weight", axis=0)  # (out, in1, in2)
register_layout(nn.modules.conv._ConvNd, "weight", axis=0)
register_layout(nn.modules.conv._ConvTransposeNd, "weight", axis=1, groups=lambda m: m.groups)
# MultiheadAttention packs the q, k and v projections along the output axis:
# in_proj_weight is (3E, E), each row one output unit of one of them, so GC per row of
# the packed tensor equals GC of the three projections separately. bias_k / bias_v
# (1, 1, E) are learned key / value vectors, not weights: left alone.
for _name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
    register_layout(nn.MultiheadAttention, _name, axis=0)
register_layout(nn.MultiheadAttention, "bias_[kv]", axis=None)
# RNN / LSTM / GRU: weight_ih_l{k}[_reverse] (gates*H, in), weight_hh_l{k} (gates*H, H)
# and LSTM's projection weight_hr_l{k} (P, H): each row is the pre-activation of one
# gate of one hidden unit (an output unit); the gates are stacked along axis 0.
register_layout(nn.RNNBase, "weight_*", axis=0)
register_layout(nn.RNNCellBase, "weight_*", axis=0)
# transformers' Conv1D (GPT-2, GPT, ImageGPT, ...) computes x @ W + b with W (in, out):
# the output axis is 1. Named, not imported: transformers is never imported by gcore.
register_layout("transformers.pytorch_utils.Conv1D", "weight", axis=1)
# transformers' mixture-of-experts blocks that hold every expert in one 3-D tensor and
# predate or skip the is_transposed marker (see _unregistered): Llama 4 and gpt-oss
# multiply x @ W[e] with W (experts, in, out); Step 3.7 and JetMoe call F.linear with
# (experts, out, in). Their biases (experts, out) are biases by name.
_EXPERTS = "transformers.models.{0}.modeling_{0}.{1}"
for _model, _cls, _names, _axis in (
    ("llama4", "Llama4TextExperts", ("*_proj", "gate_up_proj"), 2),
    ("gpt_oss", "GptOssExperts", ("*_proj", "gate_up_proj"), 2),
    ("step3p7", "Step3p7Experts", ("*_proj", "gate_up_proj"), 1),
    ("jetmoe", "JetMoeParallelExperts", ("weight", "weight"), 1),
):
    register_layout(
        _EXPERTS.format(_model, _cls), _names[0], axis=_axis, groups=_leading(_names[1])
    )
