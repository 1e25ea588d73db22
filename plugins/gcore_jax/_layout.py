"""Which axis of each leaf of a parameter pytree is its output axis.

A ``layout`` is a layout name (``"flax"``, ``"torch"``, ... see :data:`gcore.LAYOUTS`),
an int axis, ``None``, a pytree of ints/``None`` matching the parameters (or a prefix of
them), or a callable ``(path, leaf) -> int | None``. It is resolved when a transformation
is traced, so under ``jax.jit`` it costs nothing per step.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

import gcore

__all__ = ["Layout", "LayoutSpec"]

KeyPath = tuple[Any, ...]
#: What ``layout=`` accepts (see :class:`LayoutSpec`).
Layout = str | int | None | Callable[[KeyPath, Any], int | None] | Any


def _is_masked(x: Any) -> bool:
    # optax.masked / multi_transform hand inner transformations MaskedNode placeholders.
    return isinstance(x, optax.MaskedNode)


def _is_axis(value: Any) -> bool:
    return value is None or (
        isinstance(value, numbers.Integral) and not isinstance(value, (bool, jax.Array))
    )


def _where(path: KeyPath) -> str:
    return jax.tree_util.keystr(path) or "<root>"


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
        self._axis: int | None = None
        if isinstance(layout, jax.Array):
            raise TypeError(
                f"{name}={layout!r} is an array; expected a layout name, a Python int, "
                "None, a pytree of ints/None or a callable (under optax.inject_hyperparams "
                f"pass static_args=({name!r},) so the layout is not turned into an array)"
            )
        if _is_axis(layout):
            self._axis = None if layout is None else int(layout)
        elif isinstance(layout, (str, bool)):
            try:
                self._axis = gcore.output_axis(layout)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        elif callable(layout):
            self._fn = layout
        else:
            leaves = jax.tree_util.tree_flatten_with_path(layout, is_leaf=lambda x: x is None)[0]
            for path, value in leaves:
                if not _is_axis(value):
                    raise TypeError(
                        f"{name}{_where(path)}={value!r}: a layout pytree holds int output "
                        "axes or None (leave the parameter alone)"
                    )
            self._table = {tuple(path): value for path, value in leaves}

    def axes(self, tree: Any, *, min_ndim: int) -> list[int | None]:
        """Output axis (or ``None``) of every leaf of ``tree``, in ``jax.tree.leaves`` order.

        Leaves with ``ndim < min_ndim`` get ``None``. Raises ``ValueError`` naming the
        offending path when the layout does not fit ``tree``.
        """
        items = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_masked)[0]
        if self._table is not None:
            raw = self._lookup(items)
        elif self._fn is not None:
            raw = [None if _is_masked(leaf) else self._call(path, leaf) for path, leaf in items]
        else:
            raw = [self._axis] * len(items)
        out = []
        for (path, leaf), axis in zip(items, raw, strict=True):
            if _is_masked(leaf):
                continue
            if axis is None or leaf.ndim < min_ndim:
                out.append(None)
                continue
            if not -leaf.ndim <= axis < leaf.ndim:
                raise ValueError(
                    f"{self.name} gives output axis {axis} for parameter {_where(path)} of "
                    f"shape {tuple(leaf.shape)}; allowed: {-leaf.ndim} <= axis < {leaf.ndim}, "
                    "or None to leave it alone"
                )
            out.append(int(axis))
        return out

    def _call(self, path: KeyPath, leaf: Any) -> Any:
        axis = self._fn(path, leaf)
        if not _is_axis(axis):
            raise TypeError(
                f"{self.name} callable returned {axis!r} for parameter {_where(path)}; "
                "expected an int output axis or None"
            )
        return axis

    def _lookup(self, items: Sequence[tuple[KeyPath, Any]]) -> list[Any]:
        table = self._table
        assert table is not None
        used: set[KeyPath] = set()
        raw = []
        for path, _ in items:
            path = tuple(path)
            for k in range(len(path), -1, -1):
                if path[:k] in table:
                    used.add(path[:k])
                    raw.append(table[path[:k]])
                    break
            else:
                raise ValueError(
                    f"{self.name} pytree has no entry for parameter {_where(path)}; give it "
                    "an int output axis or None (the layout must match the parameters' "
                    "structure, or be a prefix of it)"
                )
        extra = [p for p in table if p not in used]
        if extra:
            raise ValueError(
                f"{self.name} pytree entry {_where(extra[0])} matches no parameter; the "
                "layout must match the parameters' structure (or be a prefix of it)"
            )
        return raw
