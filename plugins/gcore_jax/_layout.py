"""Which axis of each leaf of a parameter pytree is its output axis.

A ``layout`` is a layout name (``"flax"``, ``"torch"``, ... see :data:`gcore.LAYOUTS`),
an int axis, ``None``, a pytree of axes matching the parameters (or a prefix of them),
or a callable ``(path, leaf) -> axis``. An axis is an int, a tuple of ints (a kernel
with several output axes, e.g. an attention projection ``(in, heads, head_dim)``) or
``None`` (leave the parameter alone). It is resolved when a transformation is traced,
so under ``jax.jit`` it costs nothing per step.

With a layout *name* or an int, the layers whose parameters break their framework's
rule are looked up in a small registry first (:func:`register_layout`): embedding
tables are left alone, Equinox ``Linear``/``Conv`` weights are output-first whatever
the name says, Flax attention projections have two output axes, and so on.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import numbers
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

import gcore

__all__ = [
    "Layout",
    "LayoutEntry",
    "LayoutSpec",
    "output_axes",
    "register_layout",
    "registered_layouts",
    "stacked_axes",
    "unregister_layout",
]

KeyPath = tuple[Any, ...]
Axis = int | tuple[int, ...] | None
#: What ``layout=`` accepts (see :class:`LayoutSpec`).
Layout = str | int | None | Callable[[KeyPath, Any], Axis] | Any


def _is_masked(x: Any) -> bool:
    # optax.masked / multi_transform hand inner transformations MaskedNode placeholders.
    return isinstance(x, optax.MaskedNode)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, jax.Array))


def _is_axis(value: Any) -> bool:
    """None, an int, or a non-empty tuple of ints."""
    if value is None or _is_int(value):
        return True
    return isinstance(value, tuple) and len(value) > 0 and all(_is_int(a) for a in value)


def _where(path: KeyPath) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_string(path: KeyPath) -> str:
    """A key path as ``"a/b/0/c"`` (dict keys, attribute names, sequence indices)."""
    return "/".join(_key_name(k) for k in path)


def _child(node: Any, key: Any) -> Any:
    if isinstance(key, jax.tree_util.DictKey):
        return node[key.key]
    if isinstance(key, jax.tree_util.GetAttrKey):
        return getattr(node, key.name)
    if isinstance(key, jax.tree_util.SequenceKey):
        return node[key.idx]
    raise LookupError(key)


def _parent(tree: Any, path: KeyPath) -> Any:
    """The node holding the leaf at ``path`` (``None`` when the path cannot be walked)."""
    node = tree
    try:
        for key in path[:-1]:
            node = _child(node, key)
    except (LookupError, TypeError, AttributeError):
        return None
    return node


# ------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class LayoutEntry:
    """One registered exception to a framework's layout rule (see :func:`register_layout`)."""

    where: str | type
    param: str | None
    axis: Axis
    ndim: int | None = None
    #: A further test of the leaf in its tree (built-in entries only).
    check: Callable[[KeyPath, Any, Any], bool] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    def _type(self) -> type | None:
        """The class of a type entry; a dotted name resolves once its package is imported."""
        if isinstance(self.where, type):
            return self.where
        if self.param is None:
            return None  # a path pattern
        top = self.where.split(".", 1)[0]
        if top not in sys.modules:
            return None  # that library is not in use: nothing can match
        module, _, name = self.where.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return None

    def matches(self, path: KeyPath, path_str: str, leaf: Any, tree: Any) -> bool:
        if self.ndim is not None and getattr(leaf, "ndim", None) != self.ndim:
            return False
        if self.check is not None and not self.check(path, leaf, tree):
            return False
        if self.param is None:
            pattern = str(self.where)
            return fnmatch.fnmatchcase(path_str, pattern) or fnmatch.fnmatchcase(
                path_str, "*/" + pattern
            )
        if not path or _key_name(path[-1]) != self.param:
            return False
        cls = self._type()
        if cls is None:
            if isinstance(self.where, str) and "." not in self.where:
                # a bare name: the parent is matched by its path, e.g. ("Embed_0", "embedding")
                parent = path_string(path[:-1])
                return fnmatch.fnmatchcase(parent, self.where) or fnmatch.fnmatchcase(
                    parent, "*/" + self.where
                )
            return False
        return isinstance(_parent(tree, path), cls)


_REGISTRY: list[LayoutEntry] = []


def _check_entry_axis(axis: Any) -> Axis:
    if not _is_axis(axis):
        raise TypeError(
            f"axis={axis!r}: expected an int output axis, a tuple of them, or None (leave "
            "the parameter alone)"
        )
    if isinstance(axis, tuple) and len(set(axis)) != len(axis):
        raise ValueError(f"axis={axis!r}: repeated output axis")
    return axis if axis is None or isinstance(axis, tuple) else int(axis)


def register_layout(
    where: str | type, param: str | None = None, *, axis: Axis, ndim: int | None = None
) -> LayoutEntry:
    """Register the output axis of a kind of parameter that breaks its framework's rule.

    Consulted, before the layout name, whenever ``layout`` is a name (``"flax"``,
    ``"torch"``, ...) or an int; an explicit pytree or callable ``layout`` is taken as
    given. Later registrations win over earlier ones (and over the built-in entries).

    Parameters
    ----------
    where : str or type
        Without ``param``: a glob pattern matched against the leaf's path written
        ``"a/b/c"`` (dict keys, attribute names, list indices); it may match the whole
        path or any trailing part of it (``"embedding"`` matches
        ``"params/Embed_0/embedding"`` but not ``"pos_embedding"``).
        With ``param``: the node holding the leaf, as a class (e.g. ``equinox.nn.Linear``),
        a dotted class name (``"equinox.nn.Linear"``, resolved only once that package is
        imported) or a glob on the node's path (``"Embed_*"``).
    param : str, optional
        The leaf's own name under that node (``"weight"``, ``"kernel"``).
    axis : int, tuple of int or None
        The output axis (negative counts from the end), several output axes (each unit
        is one position on all of them, e.g. ``(-2, -1)`` for a ``(in, heads, head_dim)``
        projection), or ``None``: no GC for that parameter.
    ndim : int, optional
        Only leaves of this ``ndim`` match.

    Returns
    -------
    LayoutEntry
        The entry, for :func:`unregister_layout`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import gcore_jax
    >>> params = {"ConvTranspose_0": {"kernel": jnp.zeros((3, 3, 8, 4))}}
    >>> entry = gcore_jax.register_layout("ConvTranspose_*/kernel", axis=-2)
    >>> gcore_jax.output_axes(params, "flax")  # transpose_kernel=True: (k, k, out, in)
    {'ConvTranspose_0': {'kernel': -2}}
    >>> gcore_jax.unregister_layout(entry)
    """
    if isinstance(where, str):
        if not where:
            raise ValueError("where='' matches nothing; give a path pattern or a class")
    elif not isinstance(where, type):
        raise TypeError(f"where={where!r}: expected a path pattern (str) or a class")
    if param is not None and not isinstance(param, str):
        raise TypeError(f"param={param!r}: expected the parameter's name (str) or None")
    if ndim is not None and not _is_int(ndim):
        raise TypeError(f"ndim={ndim!r}: expected an int or None")
    entry = LayoutEntry(where, param, _check_entry_axis(axis), ndim)
    _REGISTRY.append(entry)
    return entry


def unregister_layout(entry: LayoutEntry) -> None:
    """Remove an entry returned by :func:`register_layout` (or a built-in one from
    :func:`registered_layouts`)."""
    try:
        _REGISTRY.remove(entry)
    except ValueError:
        raise ValueError(f"{entry!r} is not registered") from None


def registered_layouts() -> tuple[LayoutEntry, ...]:
    """The registry, oldest first (later entries take precedence).

    Examples
    --------
    >>> import gcore_jax
    >>> [e.axis for e in gcore_jax.registered_layouts() if e.where == "embedding"]
    [None]
    """
    return tuple(_REGISTRY)


def _flax_boxes() -> tuple[type, ...]:
    """Flax's boxes around a parameter (none unless Flax is in use)."""
    if "flax" not in sys.modules:
        return ()
    boxes: list[type] = []
    try:
        from flax.core.meta import AxisMetadata  # linen's nn.Partitioned and kin

        boxes.append(AxisMetadata)
        from flax import nnx

        boxes.append(nnx.Variable)  # also what nnx.split / nnx.state trees hold
    except ImportError:  # pragma: no cover - an old Flax without nnx
        pass
    return tuple(boxes)


def _unboxed(path: KeyPath, tree: Any) -> KeyPath:
    """The path of the Flax box around a leaf, where there is one: ``nnx.Variable``
    (``nnx.split``, ``nnx.state`` trees) and linen's ``nn.Partitioned`` hold the array at
    a trailing ``.value`` and stand where the bare array would, so the registry matches
    the box's path and parent. A field named ``value`` of anything else is a name."""
    if not (path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value"):
        return path
    boxes = _flax_boxes()
    return path[:-1] if boxes and isinstance(_parent(tree, path), boxes) else path


def _registered_axis(path: KeyPath, leaf: Any, tree: Any) -> tuple[bool, Axis]:
    if not _REGISTRY:
        return False, None
    path = _unboxed(path, tree)
    path_str = path_string(path)
    for entry in reversed(_REGISTRY):
        if entry.matches(path, path_str, leaf, tree):
            return True, entry.axis
    return False, None


# Built-in entries: the same defaults as gcore_torch (embedding tables are not
# centralized) and the layers whose kernels differ from their framework's rule.
for _pattern in ("embedding", "embeddings"):  # Flax linen/nnx Embed; Haiku Embed
    register_layout(_pattern, axis=None)
# A bias is a bias whatever its shape: Flax attention projections' and DenseGeneral's
# (features=(heads, head_dim)) are (heads, head_dim).
register_layout("bias", axis=None)
register_layout("equinox.nn.Embedding", "weight", axis=None)
for _cls in ("Linear", "Conv", "ConvTranspose"):  # Equinox: (out, in, k...) always
    register_layout(f"equinox.nn.{_cls}", "weight", axis=0)
# Learned tokens and position tables (ViT's cls (1, 1, D) and pos_embedding (1, N, D),
# DeiT's dist_token, masked models' mask_token): no units to centralize, as gcore_torch
# leaves those of transformers' Embeddings modules.
for _pattern in ("cls", "*_token", "pos_embed", "pos_embedding", "pos_embeddings",
                 "position_embedding", "position_embeddings"):  # fmt: skip
    register_layout(_pattern, axis=None)


def _unbox(x: Any) -> Any:
    boxes = _flax_boxes()
    if not (boxes and isinstance(x, boxes)):
        return x
    for method in ("get_value", "unbox"):  # nnx.Variable; linen's AxisMetadata
        if hasattr(x, method):
            return getattr(x, method)()
    return x  # pragma: no cover - a box of another Flax release


def _named(node: Any, name: str) -> Any:
    if isinstance(node, dict) or hasattr(node, "keys"):
        try:
            return node[name]
        except (KeyError, TypeError):
            return None
    return getattr(node, name, None)


def _beside_attention_out(path: KeyPath, leaf: Any, tree: Any) -> bool:
    """Whether a ``query|key|value/kernel`` leaf ``(in, heads, head_dim)`` has a sibling
    ``out`` projection ``(heads, head_dim, features)``, as Flax attention modules do (a
    1-D convolution named ``query`` has a ``(k, in, out)`` kernel and no such sibling)."""
    module = _parent(tree, path[:-1])  # the attention module, holding query/key/value/out
    out = _unbox(_named(_named(module, "out"), "kernel")) if module is not None else None
    shape = getattr(out, "shape", None)
    return shape is not None and len(shape) == 3 and tuple(shape[:2]) == tuple(leaf.shape[1:])


_NOT_PLAIN_CONV = re.compile(r"transpose|deconv|(^|_)up", re.IGNORECASE)


def _hidden_sibling(path: KeyPath, leaf: Any, tree: Any) -> str | None:
    """The sibling that decides a kernel's output axes under a layout name (``bias``;
    ``out`` for attention's query/key/value), where ``optax.masked`` /
    ``multi_transform`` replaced it by a ``MaskedNode``: the axes are then read without
    it. Kernels of 2 axes need no sibling (a bias can only say "the last one")."""
    if len(getattr(leaf, "shape", ())) < 3:
        return None
    path = _unboxed(path, tree)
    if not path or _key_name(path[-1]) != "kernel":
        return None
    module = _parent(tree, path)
    if module is not None and _is_masked(_named(module, "bias")):
        # A convolution named so (linen's Conv_0, nnx's self.conv1) takes the last axis
        # whatever its bias; a transposed one, a DenseGeneral or another name may not.
        name = _key_name(path[-2]) if len(path) > 1 else ""
        if "conv" in name.lower() and not _NOT_PLAIN_CONV.search(name):
            return None
        return "bias"
    if len(path) >= 2 and _key_name(path[-2]) in ("query", "key", "value"):
        attention = _parent(tree, path[:-1])
        out = _named(attention, "out") if attention is not None else None
        if out is not None and any(
            _is_masked(x) for x in jax.tree.leaves(out, is_leaf=_is_masked)
        ):
            return "out"
    return None


for _proj in ("query", "key", "value"):
    # Flax MultiHeadDotProductAttention / nnx.MultiHeadAttention: kernel (in, heads,
    # head_dim), one unit per (head, feature).
    _REGISTRY.append(
        LayoutEntry(f"{_proj}/kernel", None, (-2, -1), 3, check=_beside_attention_out)
    )
# Haiku ConvNDTranspose: w is (k..., out, in).
register_layout("conv?_d_transpose*/w", axis=-2)


# --------------------------------------------------------------------------- spec


class LayoutSpec:
    """A validated ``layout`` that maps each leaf of a pytree to its output axis.

    Parameters
    ----------
    layout : str, int, None, pytree or callable
        See :func:`gcore_jax.centralize`.
    name : str, default "layout"
        Parameter name used in error messages.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from gcore_jax._layout import LayoutSpec
    >>> params = {"b": jnp.zeros(3), "w": jnp.zeros((2, 3))}
    >>> LayoutSpec("flax").axes(params, min_ndim=2)
    [None, -1]
    >>> LayoutSpec({"b": None, "w": 0}).axes(params, min_ndim=2)
    [None, 0]
    """

    def __init__(self, layout: Layout, *, name: str = "layout") -> None:
        self.name = name
        self._fn: Callable[[KeyPath, Any], Any] | None = None
        self._table: dict[KeyPath, Any] | None = None
        self._axis: Axis = None
        self._registry = False
        if isinstance(layout, jax.Array):
            raise TypeError(
                f"{name}={layout!r} is an array; expected a layout name, a Python int, "
                "None, a pytree of ints/None or a callable (under optax.inject_hyperparams "
                f"pass static_args=({name!r},) so the layout is not turned into an array)"
            )
        if layout is None:
            self._axis = None
        elif _is_int(layout):
            self._axis = int(layout)
            self._registry = True
        elif isinstance(layout, tuple) and _is_axis(layout):
            self._axis = _check_entry_axis(layout)
        elif isinstance(layout, (str, bool)):
            try:
                self._axis = gcore.output_axis(layout)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            self._registry = True
        elif callable(layout):
            self._fn = layout
        else:
            leaves = jax.tree_util.tree_flatten_with_path(
                layout, is_leaf=lambda x: x is None or _is_axis(x)
            )[0]
            for path, value in leaves:
                if not _is_axis(value):
                    raise TypeError(
                        f"{name}{_where(path)}={value!r}: a layout pytree holds int output "
                        "axes, tuples of them, or None (leave the parameter alone)"
                    )
            self._table = {tuple(path): value for path, value in leaves}

    def axes(self, tree: Any, *, min_ndim: int) -> list[Axis]:
        """Output axis (or ``None``) of every leaf of ``tree``, in ``jax.tree.leaves`` order.

        Leaves with ``ndim < min_ndim`` get ``None``. Raises ``ValueError`` naming the
        offending path when the layout does not fit ``tree``.
        """
        items = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_masked)[0]
        if self._table is not None:
            raw = self._lookup(items)
        elif self._fn is not None:
            raw = [None if _is_masked(leaf) else self._call(path, leaf) for path, leaf in items]
        elif self._registry:
            raw, hidden = [], []
            for path, leaf in items:
                found, axis = (
                    (False, None) if _is_masked(leaf) else _registered_axis(path, leaf, tree)
                )
                if not found:
                    axis = self._axis
                    if axis == -1:  # output-last layouts: several output axes, by the bias
                        axis = _bias_axes(path, leaf, tree) or axis
                    axis = None if _one_weight_units(axis, leaf) else axis
                if not found and self._axis == -1 and not _is_masked(leaf):
                    sibling = _hidden_sibling(path, leaf, tree)
                    if sibling is not None:
                        hidden.append(f"{_where(path)} (its {sibling!r})")
                raw.append(axis)
            if hidden:
                shown = ", ".join(hidden[:3]) + (" ..." if len(hidden) > 3 else "")
                warnings.warn(
                    f"gcore_jax: the output axes of {len(hidden)} kernel(s) are read without "
                    f"the sibling that decides them, which optax.masked / multi_transform "
                    f"hides: {shown}. ConvTranspose(transpose_kernel=True), DenseGeneral and "
                    "attention kernels take their axes from it; pass "
                    "layout=gcore_jax.output_axes(params) computed on the whole tree",
                    UserWarning,
                    stacklevel=2,
                )
        else:
            raw = [self._axis] * len(items)
        out: list[Axis] = []
        for (path, leaf), axis in zip(items, raw, strict=True):
            if _is_masked(leaf):
                continue
            if axis is None or leaf.ndim < min_ndim:
                out.append(None)
                continue
            out.append(self._checked(axis, path, leaf))
        return out

    def _checked(self, axis: Axis, path: KeyPath, leaf: Any) -> Axis:
        axes = axis if isinstance(axis, tuple) else (axis,)
        for a in axes:
            if not -leaf.ndim <= a < leaf.ndim:
                raise ValueError(
                    f"{self.name} gives output axis {a} for parameter {_where(path)} of "
                    f"shape {tuple(leaf.shape)}; allowed: {-leaf.ndim} <= axis < "
                    f"{leaf.ndim}, or None to leave it alone"
                )
        if not isinstance(axis, tuple):
            return int(axis)
        norm = tuple(sorted(a % leaf.ndim for a in axes))
        if len(set(norm)) != len(norm):
            raise ValueError(
                f"{self.name} gives repeated output axes {axis} for parameter {_where(path)}"
            )
        if len(norm) == leaf.ndim:
            raise ValueError(
                f"{self.name} gives output axes {axis} for parameter {_where(path)} of "
                f"shape {tuple(leaf.shape)}: every axis is an output axis, so a unit would "
                "have one weight; use None to leave it alone"
            )
        return norm[0] if len(norm) == 1 else norm

    def _call(self, path: KeyPath, leaf: Any) -> Any:
        axis = self._fn(path, leaf)
        if not _is_axis(axis):
            raise TypeError(
                f"{self.name} callable returned {axis!r} for parameter {_where(path)}; "
                "expected an int output axis, a tuple of them, or None"
            )
        return axis

    def _lookup(self, items: Sequence[tuple[KeyPath, Any]]) -> list[Any]:
        # A table from a tree of Flax boxes (nnx.state) reaches each array at a trailing
        # .value, the arrays nnx.Optimizer updates do not: match both without it.
        table = {_without_value(k): v for k, v in (self._table or {}).items()}
        raw = []
        for path, _ in items:
            path = _without_value(tuple(path))
            for k in range(len(path), -1, -1):
                if path[:k] in table:
                    raw.append(table[path[:k]])
                    break
            else:
                raise ValueError(
                    f"{self.name} pytree has no entry for parameter {_where(path)}; give it "
                    "an int output axis or None (the layout must match the parameters' "
                    "structure, or be a prefix of it)"
                )
        # Entries of parameters that are not in the tree are fine: a layout of the whole
        # model serves the parts that an nnx.Optimizer's wrt filter or a split optimizer
        # updates (every parameter present must still have its entry).
        return raw


def _without_value(path: KeyPath) -> KeyPath:
    last = path[-1] if path else None
    if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "value":
        return path[:-1]
    return path


def _bias_axes(path: KeyPath, leaf: Any, tree: Any) -> int | tuple[int, ...] | None:
    """What a ``kernel``'s sibling ``bias`` says of its output axes, where it says more
    than "the last one" (``None`` otherwise):

    * a bias of 2 or more axes that is the kernel's trailing shape: those axes (Flax's
      ``DenseGeneral`` / ``nnx.LinearGeneral`` with several output features, kernel
      ``(in..., out...)``; ``nnx.Einsum`` with a bias);
    * a 1-d bias whose length is not the last axis's but one other axis's: that axis
      (``ConvTranspose(transpose_kernel=True)``, kernel ``(k..., out, in)``).
    """
    path = _unboxed(path, tree)
    if not path or _key_name(path[-1]) != "kernel":
        return None
    bias = _unbox(_named(_parent(tree, path), "bias"))
    shape, kernel = getattr(bias, "shape", None), tuple(getattr(leaf, "shape", ()))
    if shape is None or not 1 <= len(shape) < len(kernel):
        return None
    shape = tuple(shape)
    if len(shape) == 1:
        if kernel[-1] == shape[0]:
            return None
        at = [d for d, n in enumerate(kernel) if n == shape[0]]
        return at[0] - len(kernel) if len(at) == 1 else None
    if kernel[-len(shape) :] != shape:
        return None
    return tuple(range(-len(shape), 0))


def _one_weight_units(axis: Axis, leaf: Any) -> bool:
    """Whether ``axis`` leaves ``leaf`` units of one weight (M = 1: GC would zero the
    gradient, and the parameter would never train): a layout name's or an int's own rule
    then leaves it alone (ViT's cls token (1, 1, D), a Dense of one input feature)."""
    shape = getattr(leaf, "shape", None)
    if axis is None or shape is None or len(shape) < 2:
        return False
    try:
        return gcore.unit_size(shape, axis) == 1
    except ValueError:  # an axis out of range: reported, with the parameter, by the update
        return False


def output_axes(params: Any, layout: Layout = "flax", *, conv_only: bool = False) -> Any:
    """The output axis gcore_jax uses for each parameter: a pytree like ``params``.

    ``None`` marks a parameter left alone (``ndim < 2``, or ``< 4`` with ``conv_only``,
    an embedding table, or ``None`` in ``layout``). Handy to check a model's layout
    before training.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import gcore_jax
    >>> params = {"Embed_0": {"embedding": jnp.zeros((100, 8))},
    ...           "Dense_0": {"kernel": jnp.zeros((8, 4)), "bias": jnp.zeros(4)}}
    >>> gcore_jax.output_axes(params)
    {'Dense_0': {'bias': None, 'kernel': -1}, 'Embed_0': {'embedding': None}}
    """
    min_ndim = gcore.GC(conv_only=conv_only).min_ndim
    axes = LayoutSpec(layout).axes(params, min_ndim=min_ndim)
    treedef = jax.tree.structure(params)
    return treedef.unflatten(axes)


def stacked_axes(
    layers: Any, layout: Layout = "flax", *, axes: int = 1, conv_only: bool = False
) -> Any:
    """Output axes of stacked layers: parameters with leading layer axes, as ``nn.scan``
    and ``nnx.scan`` / ``nnx.vmap`` over layers store them (a Dense kernel ``(layers,
    in, out)``).

    Each unit is one position on the layer axes and on the layer's own output axes,
    found by :func:`output_axes` on one layer's slice (so registrations, attention
    projections and the parameters left alone apply as to an unstacked layer); a layer
    axis is never averaged over. Put the result in the ``layout`` pytree where the
    stacked parameters are.

    Parameters
    ----------
    layers : pytree
        The stacked parameters (the subtree of the scanned block).
    layout : str, int, None, pytree or callable, default "flax"
        The layout of one layer.
    axes : int, default 1
        How many leading axes stack the layers.
    conv_only : bool, default False
        As in :func:`output_axes`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import gcore_jax
    >>> block = {"Dense_0": {"kernel": jnp.zeros((4, 8, 3)), "bias": jnp.zeros((4, 3))},
    ...          "LayerNorm_0": {"scale": jnp.zeros((4, 8))}}
    >>> gcore_jax.stacked_axes(block)  # 4 layers: units (layer, out)
    {'Dense_0': {'bias': None, 'kernel': (0, 2)}, 'LayerNorm_0': {'scale': None}}
    >>> params = {"embed": {"embedding": jnp.zeros((10, 8))}, "layers": block}
    >>> layout = {**gcore_jax.output_axes(params), "layers": gcore_jax.stacked_axes(block)}
    >>> tx = gcore_jax.adamw(1e-3, layout=layout)
    """
    if not _is_int(axes) or axes < 1:
        raise ValueError(f"axes={axes!r}: expected the number of leading layer axes, an int >= 1")
    for path, leaf in jax.tree_util.tree_flatten_with_path(layers)[0]:
        if getattr(leaf, "ndim", 0) < axes:
            raise ValueError(
                f"stacked_axes: parameter {_where(path)} of shape "
                f"{tuple(getattr(leaf, 'shape', ()))} has fewer than axes={axes} axes"
            )
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[axes:], x.dtype), layers)
    min_ndim = gcore.GC(conv_only=conv_only).min_ndim
    inner = LayoutSpec(layout).axes(one, min_ndim=min_ndim)
    leaves, treedef = jax.tree.flatten(layers)
    out: list[Axis] = []
    for axis, leaf in zip(inner, leaves, strict=True):
        own = () if axis is None else axis if isinstance(axis, tuple) else (axis,)
        ndim = leaf.ndim - axes
        out.append(None if axis is None else (*range(axes), *sorted(a % ndim + axes for a in own)))
    return treedef.unflatten(out)
