"""optax transformations built on gcore's centralize and core update rules.

``gcore_jax.adam`` reads as the chain ``centralize → core Adam rule → learning rate``:
:func:`scale_by_rule` maps the core rule (``gcore.Adam(lr=1.0, gc=GC(...))``, whose GC
step sits where the paper puts it) over the parameter pytree, with each leaf's output
axis taken from ``layout``; ``optax.scale_by_learning_rate`` then multiplies by the
(possibly scheduled) learning rate. The rules are linear in ``lr``, so this is the rule
with the learning rate folded in. Under ``jax.jit`` the Python loop over leaves is traced
once and XLA fuses each leaf's update, as it does for optax's own ``tree.map``.

The only JAX-specific piece is how a Flax-layout unit mean is summed (:func:`_leading_mean`,
an XLA:CPU fast path for reductions over the leading axes); it is tested against
:func:`gcore.centralize`, which every other case calls directly.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gcore

from ._layout import Axis, Layout, LayoutSpec, _is_masked

__all__ = ["DampedTraceState", "adam", "adamw", "centralize", "scale_by_rule", "sgd"]

Rule = gcore.SGD | gcore.Adam
Where = Literal["gradient", "update"]
ScalarOrSchedule = float | jax.Array | optax.Schedule


# Rows of at most this many elements when summing over the leading axes (see
# _leading_mean); much longer rows fall off XLA:CPU's fast reduction path.
_ROW = 8192


def _leading_sum(g: jax.Array) -> jax.Array:
    """Sum over all axes but the last, shape ``(n,)``: each output unit's sum in the
    Flax layout.

    XLA:CPU reduces an ``(m, n)`` array over its leading axis much slower than over its
    last (on ResNet-50's kernels, n <= 2048, about 10 ms vs 6 ms for the same bytes).
    Viewed as ``(m / k, k n)`` rows of up to ``_ROW`` elements, the column sums run at
    nearly the speed of a row reduction (about 7 ms); the ``k`` partial sums of each unit
    are then folded. (A matrix-vector product with ones was no faster per step and uses
    more CPU.)
    """
    n = g.shape[-1]
    m = g.size // n
    k = 1
    while 2 * k * n <= _ROW and m % (2 * k) == 0:
        k *= 2
    partial = jnp.sum(g.reshape(m // k, k * n), axis=0)
    return jnp.sum(partial.reshape(k, n), axis=0)


def _leading_mean(g: jax.Array) -> jax.Array:
    """Each output unit's mean in the Flax layout (see :func:`_leading_sum`)."""
    return _leading_sum(g) / (g.size // g.shape[-1])


def _centralize(g: jax.Array, axis: Axis, min_ndim: int) -> jax.Array:
    """:func:`gcore.centralize`, with a faster mean when the output axis is the last, and
    several output axes (a tuple) handled by viewing them as one."""
    if isinstance(axis, tuple):
        if g.ndim < min_ndim:
            return g
        out = tuple(a % g.ndim for a in axis)
        rest = tuple(a for a in range(g.ndim) if a not in out)
        moved = jnp.transpose(g, rest + out)  # a no-op for trailing output axes
        flat = moved.reshape(*moved.shape[: len(rest)], -1)
        centred = _centralize(flat, -1, 2).reshape(moved.shape)
        return jnp.transpose(centred, np.argsort(rest + out))
    if (
        axis is None
        or g.ndim < min_ndim
        or g.size == 0
        or axis % g.ndim != g.ndim - 1
        or not jnp.issubdtype(g.dtype, jnp.floating)
    ):
        return gcore.centralize(g, axis=axis, min_ndim=min_ndim)  # also validates g
    if jnp.finfo(g.dtype).bits < 32:
        # float16/bfloat16: averaged in float32, as the core. XLA:CPU divides by a
        # reciprocal, so sum/m is not exact even where the mean is representable, and a
        # float32 residue such as 2.6e-8 survives the cast back to bfloat16 where the
        # exact result is 0 (Adam then turns it into a full step). (m g - sum) / m is
        # exactly 0 wherever g equals its unit's mean (m g is exact for 16-bit inputs
        # while m < 2**13; beyond, it is rounded once).
        g32 = g.astype(jnp.float32)
        m = g.size // g.shape[-1]
        return ((m * g32 - _leading_sum(g32)) / m).astype(g.dtype)
    return g - _leading_mean(g)


@dataclasses.dataclass(frozen=True)
class _GC(gcore.GC):
    """gcore.GC whose centralization uses :func:`_centralize` (same math, faster mean;
    ``output_axes``, when set, replaces ``axis`` with several output axes)."""

    output_axes: tuple[int, ...] | None = None

    def __call__(self, g: jax.Array, /) -> jax.Array:
        axis = self.axis if self.output_axes is None else self.output_axes
        return _centralize(g, axis, self.min_ndim)


def _gc_for(gc: gcore.GC, axis: Axis) -> _GC | None:
    if axis is None:
        return None
    if isinstance(axis, tuple):
        return _GC(conv_only=gc.conv_only, axis=0, where=gc.where, output_axes=axis)
    return _GC(conv_only=gc.conv_only, axis=axis, where=gc.where)


def centralize(
    *, layout: Layout = "flax", conv_only: bool = False
) -> optax.GradientTransformationExtraArgs:
    r"""Gradient Centralization of every weight, per output unit of its ``layout``.

    By default (``layout="flax"``) the output axis is the **last** one, as in Flax,
    Haiku and Keras kernels (Dense ``(in, out)``, Conv ``(kh, kw, in, out)``); use
    ``layout="torch"`` for weights stored output-first (Equinox, PyTorch). For each
    output unit :math:`i` with weight vector :math:`w_i` of length :math:`M`,

    .. math::

        \Phi_{GC}(\nabla_{w_i} L) = \nabla_{w_i} L - \tfrac{1}{M}\,\mathbf{1}^\top
        \nabla_{w_i} L \; \mathbf{1}.

    ``optax.centralize()`` always treats axis 0 as the output axis, which on Flax
    kernels centralizes each *input* row instead. ``centralize(layout="torch")`` takes
    axis 0 too but leaves embedding tables, tokens and units of one weight alone;
    ``centralize(layout=lambda path, leaf: 0)`` is exactly ``optax.centralize()``.

    Parameters
    ----------
    layout : str, int, None, pytree or callable, default "flax"
        Where each leaf keeps its output axis: ``"flax"``, ``"haiku"``, ``"keras"``
        (``-1``); ``"torch"``, ``"equinox"`` (``0``); an int axis for every leaf; a
        pytree of axes matching the parameters (or a prefix of their structure;
        ``None`` leaves a parameter alone); or a callable ``(path, leaf) -> axis``
        called with each leaf's key path and array while tracing. An axis may be a
        tuple of ints for kernels with several output axes (each unit is one position
        on all of them). ``None`` disables GC. With a name or an int, the registered
        exceptions come first (:func:`register_layout`; built in: embedding tables are
        left alone, Equinox ``Linear``/``Conv``/``ConvTranspose`` weights use axis 0,
        Flax attention ``query``/``key``/``value`` kernels ``(in, heads, head_dim)``
        use ``(-2, -1)`` and their 2-D biases are left alone); a pytree or callable is
        taken as given. :func:`output_axes` shows what a model gets.
    conv_only : bool, default False
        ``False``: every leaf with ``ndim >= 2`` (the paper's GC). ``True``: only
        ``ndim >= 4`` conv kernels (the paper's GCC). Biases and scales are never touched.

    Returns
    -------
    optax.GradientTransformationExtraArgs
        Stateless (``optax.EmptyState``); chain it before any optimizer.

    Raises
    ------
    ValueError
        Unknown layout name; or (at ``init``/``update``) a layout pytree that does not
        match the parameters, or an axis out of range, naming the parameter's path.
    TypeError
        A layout pytree leaf or callable result that is not an axis or ``None``.

    References
    ----------
    H. Yong, J. Huang, X. Hua, L. Zhang, "Gradient Centralization: A New Optimization
    Technique for Deep Neural Networks", ECCV 2020, arXiv:2004.01461.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import gcore_jax
    >>> grads = {"kernel": jnp.array([[1.0, 2.0], [3.0, 6.0]]), "bias": jnp.ones(2)}
    >>> tx = optax.chain(gcore_jax.centralize(), optax.sgd(0.1))
    >>> gc = gcore_jax.centralize()  # Flax layout: each column is one output unit
    >>> out, _ = gc.update(grads, gc.init(grads))
    >>> out["kernel"]
    Array([[-1., -2.],
           [ 1.,  2.]], dtype=float32)
    >>> out["kernel"].mean(axis=0)
    Array([0., 0.], dtype=float32)
    """
    spec = LayoutSpec(layout)
    _check_bool("conv_only", conv_only)
    min_ndim = gcore.GC(conv_only=conv_only).min_ndim

    def init_fn(params: Any) -> optax.EmptyState:
        if jax.tree.leaves(params):
            spec.axes(params, min_ndim=min_ndim)  # fail early, naming the parameter
        return optax.EmptyState()

    def update_fn(
        updates: Any, state: optax.EmptyState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, optax.EmptyState]:
        del params, extra_args
        leaves, treedef = jax.tree.flatten(updates)
        axes = spec.axes(updates, min_ndim=min_ndim)
        out = [_centralize(g, axis, min_ndim) for g, axis in zip(leaves, axes, strict=True)]
        return treedef.unflatten(out), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class DampedTraceState(NamedTuple):
    """State of :func:`scale_by_rule` for ``gcore.SGD`` with dampening: the step count
    (torch starts the buffer undamped) and the momentum buffer, a pytree like the params."""

    count: jax.Array
    trace: Any


class AmsgradState(NamedTuple):
    """State of :func:`scale_by_rule` for ``gcore.Adam`` / ``AdamW`` with ``amsgrad``: as
    ``optax.ScaleByAmsgradState`` but for the last field. ``max_nu`` is the running
    maximum of ``nu`` itself, bias-corrected when used (torch's ``max_exp_avg_sq``, the
    core rule's AMSGrad); optax's ``nu_max`` is the maximum of the bias-corrected ``nu``.
    The two algorithms differ, so their states have different field names: an
    ``optax.amsgrad`` checkpoint does not restore into this one without an error."""

    count: jax.Array
    mu: Any
    nu: Any
    max_nu: Any


def _nonzero(value: Any) -> bool:
    # An array hyperparameter (traced under inject_hyperparams) may be non-zero.
    return not isinstance(value, numbers.Number) or value != 0


class _StateMap:
    """The optax-style state of a core rule over a pytree, and its per-leaf core state.

    * ``gcore.Adam`` / ``AdamW``: ``optax.ScaleByAdamState(count, mu, nu)``, exactly
      ``optax.adam``'s state (:class:`AmsgradState` ``(count, mu, nu, max_nu)`` with
      ``amsgrad``: torch's AMSGrad, not optax's);
    * ``gcore.SGD`` with momentum: ``optax.TraceState(trace)`` as ``optax.sgd``
      (:class:`DampedTraceState` ``(count, trace)`` with dampening, which needs the step);
      without momentum ``optax.EmptyState()``.

    So ``optax.tree.get(state, "mu")``, ``optax.tree.map_params`` and checkpoints of
    ``optax.adam`` / ``optax.sgd`` states work unchanged.
    """

    def __init__(self, rule: Rule) -> None:
        if isinstance(rule, gcore.SGD):
            self.core_fields = ("momentum_buffer",)
            if not _nonzero(rule.momentum):
                self.cls, self.fields, self.counted = optax.EmptyState, (), False
            elif _nonzero(rule.dampening):
                self.cls, self.fields, self.counted = DampedTraceState, ("trace",), True
            else:
                self.cls, self.fields, self.counted = optax.TraceState, ("trace",), False
        else:
            self.core_fields = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
            self.counted = True
            if rule.amsgrad:
                self.cls, self.fields = AmsgradState, ("mu", "nu", "max_nu")
            else:
                self.cls, self.fields = optax.ScaleByAdamState, ("mu", "nu")
        self.core_cls = gcore.SGDState if isinstance(rule, gcore.SGD) else gcore.AdamState

    def pack(self, count: Any, trees: dict[str, Any]) -> Any:
        if self.counted:
            return self.cls(count, **trees)
        return self.cls(**trees)

    def count(self, state: Any) -> jax.Array:
        return state.count if self.counted else jnp.zeros((), jnp.int32)

    def core(self, count: Any, values: dict[str, Any]) -> Any:
        """The core rule's per-leaf state from this leaf's values of ``self.fields``."""
        core = [values.get(f) for f in self.fields]
        core += [None] * (len(self.core_fields) - len(core))
        return self.core_cls(count, *core)

    def leaf_values(self, core_state: Any) -> dict[str, Any]:
        return {f: core_state[1 + i] for i, f in enumerate(self.fields)}


def _named_errors(fn: Callable[..., Any], path: Any, *args: Any) -> Any:
    """``fn(*args)`` for the leaf at ``path``; its TypeError or ValueError (an integer
    parameter, a gradient of another shape) names the parameter."""
    try:
        return fn(*args)
    except (TypeError, ValueError) as err:
        if type(err) not in (TypeError, ValueError):  # jax's tracer errors, say: as raised
            raise
        where = jax.tree_util.keystr(path) or "<root>"
        raise type(err)(f"parameter {where}: {err}") from err


def _check_state(state: Any, states: _StateMap, name: str = "state") -> None:
    if not isinstance(state, states.cls):
        raise TypeError(
            f"{name} is a {type(state).__name__}; this transformation's state is a "
            f"{states.cls.__name__} (from its own init)"
        )


def scale_by_rule(
    rule: Rule, *, layout: Layout = "flax", weight_decay_mask: Any = None
) -> optax.GradientTransformationExtraArgs:
    r"""Apply one of gcore's core rules (``gcore.SGD``, ``Adam``, ``AdamW``) to a pytree.

    Each leaf is updated by ``rule.update(grad, state, param)``; the rule's ``gc``
    supplies ``conv_only`` and ``where``, while the output axis comes from ``layout``
    leaf by leaf (default ``"flax"``: the last axis; ``rule.gc.axis`` is not used, but
    ``gc=gcore.GC(axis=None)`` turns GC off, as in the core). The update includes
    ``-rule.lr``: build the rule with ``lr=1.0`` and chain a learning rate after it, as
    :func:`adam` does, or give it the real learning rate.

    The state is optax's: ``optax.ScaleByAdamState(count, mu, nu)`` for Adam/AdamW
    (:class:`AmsgradState` with ``amsgrad``, whose ``max_nu`` is torch's maximum of the
    raw ``nu``, not optax's ``nu_max``), ``optax.TraceState(trace)`` for SGD with
    momentum (:class:`DampedTraceState` with dampening), ``optax.EmptyState()`` without;
    ``count`` is an ``int32`` scalar and every other field a pytree shaped like the
    parameters. So optax's tree utilities (``optax.tree.get``, ``optax.tree.map_params``)
    and ``optax.adam``/``optax.sgd`` checkpoints work unchanged.

    Parameters
    ----------
    rule : gcore.SGD, gcore.Adam or gcore.AdamW
        Hyperparameters; they may be arrays (e.g. under ``optax.inject_hyperparams``).
    layout : str, int, None, pytree or callable, default "flax"
        As in :func:`centralize`; ``None`` disables GC for every leaf.
    weight_decay_mask : pytree of bool, callable or None, default None
        Which leaves get ``rule.weight_decay`` (true) and which do not, as optax's
        ``mask``: a pytree of bools (or 0/1) matching the parameters or a prefix of them,
        or a callable of the parameters returning one. ``None``: all leaves.

    Returns
    -------
    optax.GradientTransformationExtraArgs
        Extra keyword arguments to ``update`` are accepted and ignored.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import gcore
    >>> import gcore_jax
    >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
    >>> rule = gcore.Adam(lr=1.0, amsgrad=True, gc=gcore.GC(where="update"))
    >>> tx = gcore_jax.scale_by_rule(rule)  # AMSGrad, its final update centralized
    >>> state = tx.init(params)
    >>> type(state).__name__, state.count
    ('AmsgradState', Array(0, dtype=int32))
    >>> grads = {"kernel": jnp.array([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]]),
    ...          "bias": jnp.ones(2)}
    >>> updates, state = tx.update(grads, state, params)
    >>> jnp.abs(updates["kernel"].mean(axis=0)) < 1e-6  # zero mean per output unit
    Array([ True,  True], dtype=bool)
    """
    return _scale_by_rule(
        rule, layout=layout, mask=weight_decay_mask, mask_name="weight_decay_mask"
    )


def _scale_by_rule(
    rule: Rule, *, layout: Layout, mask: Any, mask_name: str
) -> optax.GradientTransformationExtraArgs:
    if not isinstance(rule, (gcore.SGD, gcore.Adam)):
        raise TypeError(f"rule={rule!r}: expected a gcore.SGD, gcore.Adam or gcore.AdamW")
    spec: LayoutSpec | None = LayoutSpec(layout)  # validated even with GC off
    if rule.gc is None or rule.gc.axis is None:  # GC(axis=None): off, as in the core
        spec = None
    min_ndim = rule.gc.min_ndim if rule.gc is not None else 2
    states = _StateMap(rule)
    _check_mask_arg(mask, mask_name)
    leaf_rules: dict[tuple[Axis, bool], Rule] = {}

    def leaf_rule(axis: Axis, decay: bool) -> Rule:
        # One rule object per (axis, decay) combination, built while tracing.
        key = (axis, decay)
        if key not in leaf_rules:
            changes: dict[str, Any] = {}
            if rule.gc is not None:
                changes["gc"] = _gc_for(rule.gc, axis)
            if not decay:
                changes["weight_decay"] = 0.0
            leaf_rules[key] = dataclasses.replace(rule, **changes) if changes else rule
        return leaf_rules[key]

    def axes_of(tree: Any, n: int) -> list[Axis]:
        if spec is None or n == 0:  # n == 0: e.g. optax.tree.map_params' placeholder
            return [None] * n
        return spec.axes(tree, min_ndim=min_ndim)

    def init_fn(params: Any) -> Any:
        leaves, treedef = jax.tree.flatten(params)
        axes_of(params, len(leaves))  # fail early, naming the parameter
        if leaves and mask is not None and _has_decay(rule):
            _mask_leaves(mask, params, params, mask_name)  # the same for the mask
        leaf_states = [
            _named_errors(rule.init, path, p)
            for path, p in jax.tree_util.tree_flatten_with_path(params)[0]
        ]
        trees = {
            f: treedef.unflatten([states.leaf_values(s)[f] for s in leaf_states])
            for f in states.fields
        }
        return states.pack(jnp.zeros((), jnp.int32), trees)

    def update_fn(
        updates: Any, state: Any, params: Any = None, **extra_args: Any
    ) -> tuple[Any, Any]:
        del extra_args
        _check_state(state, states)
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(updates)
        paths, leaves = [k for k, _ in with_paths], [x for _, x in with_paths]
        n = len(leaves)
        axes = axes_of(updates, n)
        decays = _mask_leaves(mask, updates, params, mask_name) if _has_decay(rule) else [True] * n
        param_leaves = [None] * n if params is None else treedef.flatten_up_to(params)
        fields = {f: treedef.flatten_up_to(getattr(state, f)) for f in states.fields}
        count = states.count(state)
        out, new_fields = [], {f: [] for f in states.fields}
        for i, (g, p) in enumerate(zip(leaves, param_leaves, strict=True)):
            core_state = states.core(count, {f: v[i] for f, v in fields.items()})
            u, s = _named_errors(leaf_rule(axes[i], decays[i]).update, paths[i], g, core_state, p)
            out.append(u)
            for f, v in states.leaf_values(s).items():
                new_fields[f].append(v)
        trees = {f: treedef.unflatten(v) for f, v in new_fields.items()}
        new_count = optax.safe_int32_increment(count) if states.counted else None
        return treedef.unflatten(out), states.pack(new_count, trees)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _has_decay(rule: Rule) -> bool:
    return _nonzero(rule.weight_decay)


def _check_mask_arg(mask: Any, name: str) -> None:
    if mask is None or callable(mask):
        return
    if isinstance(mask, jax.Array) and mask.ndim > 0:
        raise TypeError(f"{name}: an array is not a mask; give a pytree of bools or a callable")


def _flag(value: Any, path: Any, name: str) -> bool:
    """A mask leaf as a bool: True/False, 0/1, or a concrete 0-d bool/int array."""
    where = jax.tree_util.keystr(path)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if (
        isinstance(value, (np.ndarray, jax.Array))
        and value.shape == ()
        and (jnp.issubdtype(value.dtype, jnp.bool_) or jnp.issubdtype(value.dtype, jnp.integer))
    ):
        try:
            return bool(value)
        except jax.errors.ConcretizationTypeError:
            raise TypeError(
                f"{name}{where} is a traced array; a mask must be known when tracing "
                "(Python bools, or a callable of the parameters' shapes)"
            ) from None
    raise TypeError(
        f"{name}{where}={value!r}: mask leaves must be True/False (or 1/0), as in optax"
    )


def _mask_leaves(mask: Any, updates: Any, params: Any, name: str = "mask") -> list[bool]:
    """Per-leaf booleans (in ``jax.tree.leaves(updates)`` order) from an optax-style mask:
    a pytree of bools matching ``updates`` or a prefix of it, or a callable of
    ``params`` (of ``updates`` when no params are given) returning one."""
    n = len(jax.tree.leaves(updates))
    if mask is None:
        return [True] * n
    if callable(mask):
        mask = mask(updates if params is None else params)
    items = jax.tree_util.tree_flatten_with_path(updates, is_leaf=_is_masked)[0]
    try:
        # a prefix of the parameters' structure: broadcast each mask leaf over its subtree
        full = jax.tree.map(
            lambda m, sub: jax.tree.map(lambda _: m, sub, is_leaf=_is_masked),
            mask,
            updates,
            is_leaf=lambda x: x is None,
        )
        flags_items = jax.tree_util.tree_flatten_with_path(full, is_leaf=_is_masked)[0]
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{name} does not match the parameters' structure (it must be the same pytree "
            f"or a prefix of it, as optax's mask): {err}"
        ) from None
    if len(flags_items) != len(items):
        raise ValueError(f"{name} does not match the parameters' structure")
    out = []
    for (path, leaf), (_, flag) in zip(items, flags_items, strict=True):
        if _is_masked(leaf):
            continue
        out.append(_flag(flag, path, name))
    return out


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: expected True or False")


def _check_lr(learning_rate: Any) -> None:
    if callable(learning_rate) or isinstance(learning_rate, jax.Array):
        return
    if isinstance(learning_rate, (np.ndarray, np.generic)) and learning_rate.ndim == 0:
        learning_rate = learning_rate.item()  # a NumPy scalar, as optax accepts
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real):
        raise TypeError(
            f"learning_rate={learning_rate!r}: expected a float, an array or a schedule "
            "(a callable of the step count)"
        )
    if not (learning_rate >= 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate={learning_rate!r} is invalid; allowed: finite, >= 0")


def _check_eps_root(eps_root: Any) -> None:
    """gcore's Adam has no ``eps_root``: only ``None`` or a (Python/NumPy) zero."""
    if eps_root is None:
        return
    if isinstance(eps_root, jax.Array):
        raise TypeError(
            f"eps_root={eps_root!r} is an array (optax.inject_hyperparams turns numeric "
            "arguments into arrays); gcore's Adam has no eps inside the square root, so "
            "eps_root must be None or 0 and known when the optimizer is built: leave it "
            "out (its default None is not injected) or pass static_args=('eps_root',)"
        )
    if isinstance(eps_root, (np.ndarray, np.generic)) and np.ndim(eps_root) == 0:
        eps_root = eps_root.item()
    if isinstance(eps_root, bool) or not isinstance(eps_root, numbers.Real):
        raise TypeError(f"eps_root={eps_root!r}: expected None or 0")
    if eps_root != 0:
        raise ValueError(
            f"eps_root={eps_root!r} is not supported (gcore's Adam has no eps inside the "
            "square root; use eps); allowed: None or 0"
        )


def _dtype(name: str, value: Any) -> Any:
    """A storage dtype option canonicalized as optax does (float64 -> float32 without
    x64); ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, (bool, numbers.Number, jax.Array)):
        raise TypeError(f"{name}={value!r}: expected None, a dtype or a dtype name")
    try:
        dtype = jax.dtypes.canonicalize_dtype(value)
    except TypeError:
        raise TypeError(f"{name}={value!r} is not a dtype") from None
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(f"{name}={value!r}: expected a floating-point or complex dtype")
    return dtype


def _gc(gc: bool, gc_where: Where, gc_conv_only: bool) -> gcore.GC | None:
    """The GC settings; validated (under this module's parameter names) even when off."""
    _check_bool("gc", gc)
    _check_bool("gc_conv_only", gc_conv_only)
    if gc_where not in ("gradient", "update"):
        raise ValueError(f"gc_where={gc_where!r} is invalid; allowed: 'gradient', 'update'")
    return gcore.GC(conv_only=gc_conv_only, where=gc_where) if gc else None


def _rule(cls: type, **kwargs: Any) -> Rule:
    # The core names Adam's betas as torch does; report them by optax's names.
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        msg = str(err).replace("betas[0]", "b1").replace("betas[1]", "b2")
        raise type(err)(msg) from None


def _state_only(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx``'s state with an identity update: keeps an alias's state structure that of
    optax's alias (e.g. ``optax.adamw``'s ``add_decayed_weights`` slot, whose work the
    core rule does), so optax checkpoints and tree utilities carry over."""

    def update_fn(updates: Any, state: Any, params: Any = None, **extra_args: Any) -> Any:
        del params, extra_args
        return updates, state

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def _alias(
    rule: Rule,
    learning_rate: ScalarOrSchedule,
    *,
    layout: Layout,
    mask: Any = None,
    decay_slot: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    # centralize → core rule (lr = 1) → learning rate, as in optax's own aliases.
    parts = [_scale_by_rule(rule, layout=layout, mask=mask, mask_name="mask")]
    if decay_slot is not None:
        parts.append(_state_only(decay_slot))
    parts.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
    return optax.chain(*parts)


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    *,
    gc: bool = True,
    layout: Layout = "flax",
    gc_where: Where = "gradient",
    gc_conv_only: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""GC-SGD with (Nesterov) momentum: ``optax.sgd`` with Gradient Centralization.

    Same signature and, with ``gc=False``, same arithmetic as ``optax.sgd``. With
    :math:`\hat g_t = \Phi_{GC}(g_t)` centralized per output unit of ``layout``:

    .. math::

        b_t = \mu b_{t-1} + \hat g_t, \qquad
        w_t = w_{t-1} - \eta_t\,(\hat g_t + \mu b_t \text{ (Nesterov) or } b_t).

    Each output unit's weight mean stays constant, also with L2 weight decay chained
    before it: for L2 weight decay, chain ``optax.add_decayed_weights(wd)`` *before* this
    optimizer, so that the decayed gradient is centralized, the paper's order.

    Parameters
    ----------
    learning_rate : float, array or schedule
        :math:`\eta_t`; a schedule is called with the step count.
    momentum : float or None, default None
        :math:`\mu`; ``None`` or ``0`` keeps no momentum buffer (``optax.sgd`` keeps one
        for ``momentum=0.0``, a ``TraceState`` holding the last update, so its
        checkpoints of that setting do not load here; the updates are the same).
    nesterov : bool, default False
    accumulator_dtype : dtype, str or None, default None
        Storage dtype of the momentum buffer, as ``optax.sgd``'s; ``None`` keeps the
        parameter's dtype. Updates come back in the gradient's dtype.
    gc : bool, default True
        ``False`` gives plain ``optax.sgd``. Complex parameters are accepted either way:
        GC subtracts each unit's complex mean.
    layout : str, int, None, pytree or callable, default "flax"
        Output axis of each leaf (see :func:`centralize`); default: the last axis.
    gc_where : {"gradient", "update"}, default "gradient"
        Centralize the gradient (paper) or the final update.
    gc_conv_only : bool, default False
        Only ``ndim >= 4`` kernels (the paper's GCC).

    Returns
    -------
    optax.GradientTransformationExtraArgs
        State ``(optax.TraceState(trace), optax.EmptyState())`` with momentum,
        ``(optax.EmptyState(), optax.EmptyState())`` without: ``optax.sgd``'s structure.

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import gcore_jax
    >>> params = {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "bias": jnp.zeros(2)}
    >>> tx = gcore_jax.sgd(0.1, momentum=0.9)
    >>> state = tx.init(params)
    >>> grads = {"kernel": jnp.array([[1.0, 5.0], [3.0, 1.0]]), "bias": jnp.ones(2)}
    >>> updates, state = jax.jit(tx.update)(grads, state, params)
    >>> new = optax.apply_updates(params, updates)
    >>> new["kernel"].mean(axis=0)  # per-output-unit means unchanged: 2 and 3
    Array([2., 3.], dtype=float32)
    """
    _check_lr(learning_rate)
    _check_bool("nesterov", nesterov)
    if momentum is None:
        momentum = 0.0
    rule = _rule(
        gcore.SGD,
        lr=1.0,
        momentum=momentum,
        nesterov=nesterov,
        gc=_gc(gc, gc_where, gc_conv_only),
        accumulator_dtype=_dtype("accumulator_dtype", accumulator_dtype),
    )
    return _alias(rule, learning_rate, layout=layout)


def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float | None = None,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    gc: bool = True,
    layout: Layout = "flax",
    gc_where: Where = "gradient",
    gc_conv_only: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""GC-Adam: ``optax.adam`` with Gradient Centralization before the moments.

    Same signature and, with ``gc=False``, same arithmetic as ``optax.adam`` (up to
    float rounding). With :math:`\hat g_t = \Phi_{GC}(g_t)` per output unit of ``layout``:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\hat g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)|\hat g_t|^2 \\
        w_t &= w_{t-1} - \eta_t\,\frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}

    The core rule ``gcore.Adam(lr=1.0, gc=GC(...))`` is mapped over the leaves by
    :func:`scale_by_rule`, followed by ``optax.scale_by_learning_rate``.

    Parameters
    ----------
    learning_rate : float, array or schedule
    b1, b2 : float, default 0.9, 0.999
        In ``[0, 1)``.
    eps : float, default 1e-8
    eps_root : None or 0, default None
        gcore's Adam has no :math:`\epsilon` inside the square root: only ``None`` or
        ``0`` (known when the optimizer is built; an array, as
        ``optax.inject_hyperparams`` makes of a number, raises ``TypeError``). The
        default is ``None``, not optax's ``0.0``, so that ``inject_hyperparams`` leaves it
        alone.
    mu_dtype : dtype, str or None, default None
        Storage dtype of the first moment ``mu``, as ``optax.adam``'s; ``None`` keeps
        the parameter's dtype. Updates come back in the gradient's dtype.
    nesterov : bool, default False
        ``optax.adam(nesterov=True)``'s form (NAdam without momentum decay):
        :math:`\hat m_t = \beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1)\hat g_t/(1-\beta_1^t)`.
    gc, layout, gc_where, gc_conv_only
        As in :func:`sgd`. Complex parameters: with ``gc=False`` as ``optax.adam``; with
        GC each unit's complex mean is subtracted and :math:`v` uses :math:`|\hat g|^2`.

    Returns
    -------
    optax.GradientTransformationExtraArgs
        State ``(optax.ScaleByAdamState(count, mu, nu), optax.EmptyState())``: the same
        structure as ``optax.adam``'s.

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import gcore_jax
    >>> params = {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}
    >>> tx = gcore_jax.adam(optax.linear_schedule(1e-2, 1e-3, 100))
    >>> state = tx.init(params)
    >>> grads = {"kernel": jnp.array([[1.0, 0.0], [2.0, 0.0], [3.0, 6.0]]),
    ...          "bias": jnp.ones(2)}
    >>> updates, state = jax.jit(tx.update)(grads, state, params)
    >>> jnp.round(updates["kernel"], 4)  # sign of the centralized gradient, times -lr
    Array([[ 0.01,  0.01],
           [-0.  ,  0.01],
           [-0.01, -0.01]], dtype=float32)
    """
    _check_lr(learning_rate)
    _check_eps_root(eps_root)
    rule = _rule(
        gcore.Adam,
        lr=1.0,
        betas=(b1, b2),
        eps=eps,
        nesterov=nesterov,
        mu_dtype=_dtype("mu_dtype", mu_dtype),
        gc=_gc(gc, gc_where, gc_conv_only),
    )
    return _alias(rule, learning_rate, layout=layout)


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float | None = None,
    mu_dtype: Any = None,
    weight_decay: float = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
    convention: Literal["torch", "paper"] = "torch",
    gc: bool = True,
    layout: Layout = "flax",
    gc_where: Where = "gradient",
    gc_conv_only: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""GC-AdamW: ``optax.adamw`` with Gradient Centralization of the raw gradient.

    As :func:`adam`, plus the decoupled decay :math:`-\eta_t\lambda w_{t-1}`, which acts
    on the parameter and is *not* centralized (the paper's AdamW). Same signature and,
    with ``gc=False``, same arithmetic as ``optax.adamw``.

    Parameters
    ----------
    learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov
        As in :func:`adam`.
    weight_decay : float, default 1e-4
        :math:`\lambda \ge 0` (optax's default).
    mask : pytree of bool, callable or None, default None
        Which parameters are decayed, as in ``optax.adamw``: a pytree of bools (or 1/0)
        with the parameters' structure or a prefix of it, or a callable of the
        parameters returning one.
    convention : {"torch", "paper"}, default "torch"
        ``"torch"``: ``optax.adamw`` / ``torch.optim.AdamW``. ``"paper"``: the GC
        authors' AdamW (decay inside the bias-corrected step, ``eps`` added to the
        uncorrected :math:`\sqrt{v_t}`; with ``gc_where="update"`` the decay is
        centralized too); see :class:`gcore.AdamW`.
    gc, layout, gc_where, gc_conv_only
        As in :func:`sgd`.

    Returns
    -------
    optax.GradientTransformationExtraArgs
        The state has ``optax.adamw``'s structure (its ``add_decayed_weights`` slot is
        kept, empty or masked, though the core rule applies the decay).

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import gcore_jax
    >>> params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    >>> tx = gcore_jax.adamw(0.1, weight_decay=0.5, mask={"kernel": True, "bias": False})
    >>> zeros = jax.tree.map(jnp.zeros_like, params)
    >>> updates, _ = tx.update(zeros, tx.init(params), params)
    >>> updates["kernel"]  # only the decoupled decay acts, and only where masked in
    Array([[-0.05, -0.05],
           [-0.05, -0.05]], dtype=float32)
    >>> bool(jnp.all(updates["bias"] == 0))
    True
    """
    _check_lr(learning_rate)
    _check_eps_root(eps_root)
    if callable(weight_decay):
        raise TypeError(
            "weight_decay: a schedule is not supported; use optax.inject_hyperparams to "
            "change it during training"
        )
    rule = _rule(
        gcore.AdamW,
        lr=1.0,
        betas=(b1, b2),
        eps=eps,
        weight_decay=weight_decay,
        nesterov=nesterov,
        mu_dtype=_dtype("mu_dtype", mu_dtype),
        convention=convention,
        gc=_gc(gc, gc_where, gc_conv_only),
    )
    # optax.adamw = chain(scale_by_adam, add_decayed_weights(weight_decay, mask), lr): the
    # core rule decays, the middle slot only keeps optax's state structure.
    slot = optax.add_decayed_weights(0.0, mask)
    return _alias(rule, learning_rate, layout=layout, mask=mask, decay_slot=slot)
