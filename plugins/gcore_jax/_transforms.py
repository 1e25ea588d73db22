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
import numbers
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gcore

from ._layout import Layout, LayoutSpec, _is_masked

__all__ = ["adam", "adamw", "centralize", "scale_by_rule", "sgd"]

Rule = gcore.SGD | gcore.Adam
Where = Literal["gradient", "update"]
ScalarOrSchedule = float | jax.Array | optax.Schedule


# Rows of at most this many elements when summing over the leading axes (see
# _leading_mean); much longer rows fall off XLA:CPU's fast reduction path.
_ROW = 8192


def _leading_mean(g: jax.Array) -> jax.Array:
    """Mean over all axes but the last, shape ``(n,)``: each output unit's mean in the
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
    return jnp.sum(partial.reshape(k, n), axis=0) / m


def _centralize(g: jax.Array, axis: int | None, min_ndim: int) -> jax.Array:
    """:func:`gcore.centralize`, with a faster mean when the output axis is the last."""
    if (
        axis is None
        or g.ndim < min_ndim
        or g.size == 0
        or axis % g.ndim != g.ndim - 1
        or not jnp.issubdtype(g.dtype, jnp.floating)
    ):
        return gcore.centralize(g, axis=axis, min_ndim=min_ndim)  # also validates g
    if jnp.finfo(g.dtype).bits < 32:  # float16/bfloat16: average in float32, as the core
        g32 = g.astype(jnp.float32)
        return (g32 - _leading_mean(g32)).astype(g.dtype)
    return g - _leading_mean(g)


@dataclasses.dataclass(frozen=True)
class _GC(gcore.GC):
    """gcore.GC whose centralization uses :func:`_centralize` (same math, faster mean)."""

    def __call__(self, g: jax.Array, /) -> jax.Array:
        return _centralize(g, self.axis, self.min_ndim)


def centralize(
    *, layout: Layout = "flax", conv_only: bool = False
) -> optax.GradientTransformation:
    r"""Gradient Centralization of every weight, per output unit of its ``layout``.

    By default (``layout="flax"``) the output axis is the **last** one, as in Flax,
    Haiku and Keras kernels (Dense ``(in, out)``, Conv ``(kh, kw, in, out)``); use
    ``layout="torch"`` for weights stored output-first (Equinox, PyTorch). For each
    output unit :math:`i` with weight vector :math:`w_i` of length :math:`M`,

    .. math::

        \Phi_{GC}(\nabla_{w_i} L) = \nabla_{w_i} L - \tfrac{1}{M}\,\mathbf{1}^\top
        \nabla_{w_i} L \; \mathbf{1}.

    ``optax.centralize()`` always treats axis 0 as the output axis, which on Flax
    kernels centralizes each *input* row instead; ``centralize(layout="torch")`` is
    exactly ``optax.centralize()``.

    Parameters
    ----------
    layout : str, int, None, pytree or callable, default "flax"
        Where each leaf keeps its output axis: ``"flax"``, ``"haiku"``, ``"keras"``
        (``-1``); ``"torch"``, ``"equinox"`` (``0``); an int axis for every leaf; a
        pytree of ints/``None`` matching the parameters (or a prefix of their structure;
        ``None`` leaves a parameter alone); or a callable ``(path, leaf) -> int | None``
        called with each leaf's key path and array while tracing. ``None`` disables GC.
        A single output axis per leaf: kernels with several output axes, such as
        ``DenseGeneral`` / ``nnx.LinearGeneral`` attention projections
        ``(in, heads, head_dim)``, are not told apart from a 1-D conv ``(k, in, out)`` by
        shape; give them ``None`` through a callable (or reshape them) rather than let
        ``"flax"`` average across heads.
    conv_only : bool, default False
        ``False``: every leaf with ``ndim >= 2`` (the paper's GC). ``True``: only
        ``ndim >= 4`` conv kernels (the paper's GCC). Biases and scales are never touched.

    Returns
    -------
    optax.GradientTransformation
        Stateless (``optax.EmptyState``); chain it before any optimizer.

    Raises
    ------
    ValueError
        Unknown layout name; or (at ``init``/``update``) a layout pytree that does not
        match the parameters, or an axis out of range, naming the parameter's path.
    TypeError
        A layout pytree leaf or callable result that is not an int or ``None``.

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
        spec.axes(params, min_ndim=min_ndim)  # fail early, naming the parameter
        return optax.EmptyState()

    def update_fn(
        updates: Any, state: optax.EmptyState, params: Any = None
    ) -> tuple[Any, optax.EmptyState]:
        del params
        leaves, treedef = jax.tree.flatten(updates)
        axes = spec.axes(updates, min_ndim=min_ndim)
        out = [_centralize(g, axis, min_ndim) for g, axis in zip(leaves, axes, strict=True)]
        return treedef.unflatten(out), state

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_rule(
    rule: Rule, *, layout: Layout = "flax", weight_decay_mask: Any = None
) -> optax.GradientTransformation:
    r"""Apply one of gcore's core rules (``gcore.SGD``, ``Adam``, ``AdamW``) to a pytree.

    Each leaf is updated by ``rule.update(grad, state, param)``; the rule's ``gc``
    supplies ``conv_only`` and ``where``, while the output axis comes from ``layout``
    leaf by leaf (default ``"flax"``: the last axis; ``rule.gc.axis`` is not used). The
    update includes ``-rule.lr``: build the rule with ``lr=1.0`` and chain a learning
    rate after it, as :func:`adam` does, or give it the real learning rate.

    The state is the rule's own NamedTuple (``gcore.SGDState`` / ``gcore.AdamState``)
    with one shared ``int32`` ``step`` and, in every other field, a pytree shaped like
    the parameters, like ``optax.ScaleByAdamState``.

    Parameters
    ----------
    rule : gcore.SGD, gcore.Adam or gcore.AdamW
        Hyperparameters; they may be arrays (e.g. under ``optax.inject_hyperparams``).
    layout : str, int, None, pytree or callable, default "flax"
        As in :func:`centralize`; ``None`` disables GC for every leaf.
    weight_decay_mask : pytree of bool, callable or None, default None
        Which leaves get ``rule.weight_decay`` (``True``) and which do not; a callable
        is called with the parameters. ``None``: all leaves (optax's ``mask``).

    Returns
    -------
    optax.GradientTransformation

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
    >>> type(state).__name__, state.step
    ('AdamState', Array(0, dtype=int32))
    >>> grads = {"kernel": jnp.array([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]]),
    ...          "bias": jnp.ones(2)}
    >>> updates, state = tx.update(grads, state, params)
    >>> jnp.abs(updates["kernel"].mean(axis=0)) < 1e-6  # zero mean per output unit
    Array([ True,  True], dtype=bool)
    """
    if not isinstance(rule, (gcore.SGD, gcore.Adam)):
        raise TypeError(f"rule={rule!r}: expected a gcore.SGD, gcore.Adam or gcore.AdamW")
    spec: LayoutSpec | None = LayoutSpec(layout)  # validated even with GC off
    if rule.gc is None:
        spec = None
    min_ndim = rule.gc.min_ndim if rule.gc is not None else 2
    state_cls = gcore.SGDState if isinstance(rule, gcore.SGD) else gcore.AdamState
    leaf_rules: dict[tuple[int | None, bool], Rule] = {}

    def leaf_rule(axis: int | None, decay: bool) -> Rule:
        # One rule object per (axis, decay) combination, built while tracing.
        key = (axis, decay)
        if key not in leaf_rules:
            changes: dict[str, Any] = {}
            if rule.gc is not None:
                changes["gc"] = (
                    None
                    if axis is None
                    else _GC(conv_only=rule.gc.conv_only, axis=axis, where=rule.gc.where)
                )
            if not decay:
                changes["weight_decay"] = 0.0
            leaf_rules[key] = dataclasses.replace(rule, **changes)
        return leaf_rules[key]

    def axes_of(tree: Any, n: int) -> list[int | None]:
        return [None] * n if spec is None else spec.axes(tree, min_ndim=min_ndim)

    def init_fn(params: Any) -> Any:
        leaves, treedef = jax.tree.flatten(params)
        axes_of(params, len(leaves))  # fail early, naming the parameter
        states = [rule.init(p) for p in leaves]
        fields = {}
        for name in state_cls._fields[1:]:
            values = [getattr(s, name) for s in states]
            fields[name] = None if not values or values[0] is None else treedef.unflatten(values)
        return state_cls(jnp.zeros((), jnp.int32), **fields)

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        leaves, treedef = jax.tree.flatten(updates)
        n = len(leaves)
        axes = axes_of(updates, n)
        decays = _mask_leaves(weight_decay_mask, updates, params)
        param_leaves = [None] * n if params is None else treedef.flatten_up_to(params)
        fields = {
            name: None
            if getattr(state, name) is None
            else treedef.flatten_up_to(getattr(state, name))
            for name in state_cls._fields[1:]
        }
        out, new_states = [], []
        for i, (g, p) in enumerate(zip(leaves, param_leaves, strict=True)):
            leaf_state = state_cls(
                state.step, **{k: None if v is None else v[i] for k, v in fields.items()}
            )
            u, s = leaf_rule(axes[i], decays[i]).update(g, leaf_state, p)
            out.append(u)
            new_states.append(s)
        new_fields = {
            name: None
            if fields[name] is None
            else treedef.unflatten([getattr(s, name) for s in new_states])
            for name in fields
        }
        step = new_states[0].step if new_states else state.step + 1
        return treedef.unflatten(out), state_cls(step, **new_fields)

    return optax.GradientTransformation(init_fn, update_fn)


def _mask_leaves(mask: Any, updates: Any, params: Any) -> list[bool]:
    """Per-leaf booleans (in ``jax.tree.leaves(updates)`` order) from an optax-style mask."""
    items, treedef = jax.tree_util.tree_flatten(updates, is_leaf=_is_masked)
    if mask is None:
        return [True] * len(jax.tree.leaves(updates))
    if callable(mask):
        if params is None:
            raise ValueError("weight_decay_mask is a callable of the parameters: pass params")
        mask = mask(params)
    try:
        flags = treedef.flatten_up_to(mask)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"weight_decay_mask does not match the parameters' structure: {err}"
        ) from None
    out = []
    for leaf, flag in zip(items, flags, strict=True):
        if _is_masked(leaf):
            continue
        if not isinstance(flag, (bool, jnp.bool_)):
            raise TypeError(f"weight_decay_mask leaves must be True or False, got {flag!r}")
        out.append(bool(flag))
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
    if not learning_rate >= 0:
        raise ValueError(f"learning_rate={learning_rate!r} is invalid; allowed: >= 0")


def _check_zero(name: str, value: Any, why: str) -> None:
    """Reject a non-zero ``value``; traced arrays (unknown until run) are let through."""
    try:
        nonzero = bool(value != 0)
    except jax.errors.ConcretizationTypeError:
        return
    if nonzero:
        raise ValueError(f"{name}={value!r} is not supported ({why}); allowed: 0")


def _require(name: str, value: Any, allowed: Any, why: str) -> None:
    if value is not allowed:
        raise ValueError(f"{name}={value!r} is not supported ({why}); allowed: {allowed!r}")


def _check_adam_options(learning_rate: Any, eps_root: Any, mu_dtype: Any, nesterov: Any) -> None:
    """The optax Adam options gcore's Adam rule has no counterpart for must stay default."""
    _check_lr(learning_rate)
    _check_zero("eps_root", eps_root, "gcore's Adam has no eps inside the square root")
    _require("mu_dtype", mu_dtype, None, "the moments have the param dtype")
    _require("nesterov", nesterov, False, "NAdam is not one of gcore's rules")


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


def _alias(
    rule: Rule, learning_rate: ScalarOrSchedule, **kwargs: Any
) -> optax.GradientTransformation:
    # centralize → core rule (lr = 1) → learning rate, as in optax's own aliases.
    return optax.chain(
        scale_by_rule(rule, **kwargs),
        optax.scale_by_learning_rate(learning_rate, flip_sign=False),
    )


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
) -> optax.GradientTransformation:
    r"""GC-SGD with (Nesterov) momentum: ``optax.sgd`` with Gradient Centralization.

    Same signature and, with ``gc=False``, same arithmetic as ``optax.sgd``. With
    :math:`\hat g_t = \Phi_{GC}(g_t)` centralized per output unit of ``layout``:

    .. math::

        b_t = \mu b_{t-1} + \hat g_t, \qquad
        w_t = w_{t-1} - \eta_t\,(\hat g_t + \mu b_t \text{ (Nesterov) or } b_t).

    Without weight decay each output unit's weight mean stays constant. For L2 weight
    decay, chain ``optax.add_decayed_weights(wd)`` *before* this optimizer: the decayed
    gradient is then centralized, the paper's order.

    Parameters
    ----------
    learning_rate : float, array or schedule
        :math:`\eta_t`; a schedule is called with the step count.
    momentum : float or None, default None
        :math:`\mu`; ``None`` keeps no momentum buffer.
    nesterov : bool, default False
    accumulator_dtype : None
        Only ``None``: the buffer has the parameter's dtype.
    gc : bool, default True
        ``False`` gives plain ``optax.sgd``.
    layout : str, int, None, pytree or callable, default "flax"
        Output axis of each leaf (see :func:`centralize`); default: the last axis.
    gc_where : {"gradient", "update"}, default "gradient"
        Centralize the gradient (paper) or the final update.
    gc_conv_only : bool, default False
        Only ``ndim >= 4`` kernels (the paper's GCC).

    Returns
    -------
    optax.GradientTransformation

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
    _require("accumulator_dtype", accumulator_dtype, None, "the buffer has the param dtype")
    if momentum is None:
        momentum = 0.0
    rule = _rule(
        gcore.SGD,
        lr=1.0,
        momentum=momentum,
        nesterov=nesterov,
        gc=_gc(gc, gc_where, gc_conv_only),
    )
    return _alias(rule, learning_rate, layout=layout)


def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    gc: bool = True,
    layout: Layout = "flax",
    gc_where: Where = "gradient",
    gc_conv_only: bool = False,
) -> optax.GradientTransformation:
    r"""GC-Adam: ``optax.adam`` with Gradient Centralization before the moments.

    Same signature and, with ``gc=False``, same arithmetic as ``optax.adam`` (up to
    float rounding). With :math:`\hat g_t = \Phi_{GC}(g_t)` per output unit of ``layout``:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\hat g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\hat g_t^2 \\
        w_t &= w_{t-1} - \eta_t\,\frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}

    The core rule ``gcore.Adam(lr=1.0, gc=GC(...))`` is mapped over the leaves by
    :func:`scale_by_rule`, followed by ``optax.scale_by_learning_rate``.

    Parameters
    ----------
    learning_rate : float, array or schedule
    b1, b2 : float, default 0.9, 0.999
        In ``[0, 1)``.
    eps : float, default 1e-8
    eps_root : float, default 0
        Only ``0``.
    mu_dtype : None
        Only ``None``: the moments have the parameter's dtype.
    nesterov : bool, default False
        Only ``False`` (NAdam is not a gcore rule).
    gc, layout, gc_where, gc_conv_only
        As in :func:`sgd`.

    Returns
    -------
    optax.GradientTransformation

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
    _check_adam_options(learning_rate, eps_root, mu_dtype, nesterov)
    rule = _rule(gcore.Adam, lr=1.0, betas=(b1, b2), eps=eps, gc=_gc(gc, gc_where, gc_conv_only))
    return _alias(rule, learning_rate, layout=layout)


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: float = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
    gc: bool = True,
    layout: Layout = "flax",
    gc_where: Where = "gradient",
    gc_conv_only: bool = False,
) -> optax.GradientTransformation:
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
        Which parameters are decayed, as in ``optax.adamw``.
    gc, layout, gc_where, gc_conv_only
        As in :func:`sgd`.

    Returns
    -------
    optax.GradientTransformation

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
    _check_adam_options(learning_rate, eps_root, mu_dtype, nesterov)
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
        gc=_gc(gc, gc_where, gc_conv_only),
    )
    return _alias(rule, learning_rate, layout=layout, weight_decay_mask=mask)
