"""GC-SGD, GC-Adam and GC-AdamW: the one definition of gcore's update rules.

Each rule is a frozen dataclass of hyperparameters with two pure methods, in optax's
convention::

    state = rule.init(param)
    updates, state = rule.update(grad, state, param)
    param = param + updates

The arithmetic is exactly that of ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` (and so of
``optax.sgd`` / ``adam`` / ``adamw``), with Gradient Centralization inserted where the
paper puts it: L2 weight decay is added to the gradient first, then GC, then momentum or
the Adam moments. AdamW's decoupled decay is applied to the parameter and never
centralized. With ``gc=None`` the rules are the plain optimizers.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar, Literal, NamedTuple

from ._compat import Array, array_namespace, check_floating, device, is_low_precision
from .centralize import centralize

__all__ = ["GC", "SGD", "Adam", "AdamState", "AdamW", "SGDState"]

Where = Literal["gradient", "update"]


def _check_number(
    name: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = True,
    allowed: str,
) -> None:
    # Arrays (e.g. a traced learning rate under jax.jit) cannot be checked eagerly.
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        if not hasattr(value, "dtype") or isinstance(value, bool):
            raise TypeError(f"{name}={value!r}: expected a real number, {allowed}")
        return
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high) or math.isnan(value):
        raise ValueError(f"{name}={value!r} is invalid; allowed: {allowed}")


def _nonzero(value: Any) -> bool:
    """False only for a number equal to 0.

    An array hyperparameter (traced under ``jax.jit``, e.g. by ``optax.inject_hyperparams``)
    cannot be tested, so its branch is taken; that branch is exact for a zero value too.
    """
    return not isinstance(value, numbers.Number) or value != 0


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: expected True or False")


@dataclasses.dataclass(frozen=True)
class GC:
    """Where and how Gradient Centralization is applied.

    Parameters
    ----------
    conv_only : bool, default False
        ``False``: centralize every weight with ``ndim >= 2`` (conv and fully connected,
        the paper's GC). ``True``: only ``ndim >= 4`` (conv kernels; the paper's GCC).
    axis : int or None, default 0
        Output axis of the weights (``0`` for PyTorch, ``-1`` for Flax/Keras kernels).
        ``None`` disables GC.
    where : {"gradient", "update"}, default "gradient"
        ``"gradient"``: centralize the gradient (after L2 decay, before momentum/moments),
        as in the paper. ``"update"``: centralize the final update instead (the paper
        code's ``_GC2`` "keep the weight mean" variants, Ranger21's ``gc_loc=False``),
        so each unit's weight mean stays fixed even under Adam.

    Examples
    --------
    >>> import numpy as np
    >>> from gcore import GC
    >>> GC(conv_only=True).min_ndim
    4
    >>> GC(axis=-1)(np.array([[1.0, 2.0], [3.0, 6.0]]))
    array([[-1., -2.],
           [ 1.,  2.]])
    """

    conv_only: bool = False
    axis: int | None = 0
    where: Where = "gradient"

    def __post_init__(self) -> None:
        _check_bool("conv_only", self.conv_only)
        if self.axis is not None and (
            not isinstance(self.axis, numbers.Integral) or isinstance(self.axis, bool)
        ):
            raise TypeError(f"axis={self.axis!r}: expected an int output axis or None")
        if self.where not in ("gradient", "update"):
            raise ValueError(f"where={self.where!r} is invalid; allowed: 'gradient', 'update'")

    @property
    def min_ndim(self) -> int:
        """Smallest ``ndim`` that is centralized: 4 for ``conv_only``, else 2."""
        return 4 if self.conv_only else 2

    def __call__(self, g: Array, /) -> Array:
        """Centralize ``g`` with this configuration (see :func:`gcore.centralize`)."""
        return centralize(g, axis=self.axis, min_ndim=self.min_ndim)


def _check_gc(gc: Any) -> None:
    if gc is not None and not isinstance(gc, GC):
        raise TypeError(f"gc={gc!r}: expected a gcore.GC instance or None (no GC)")


class SGDState(NamedTuple):
    """State of :class:`SGD`: step count and momentum buffer (``None`` without momentum)."""

    step: Array
    momentum_buffer: Array | None


class AdamState(NamedTuple):
    """State of :class:`Adam` / :class:`AdamW`, named as in ``torch.optim``."""

    step: Array
    exp_avg: Array
    exp_avg_sq: Array
    max_exp_avg_sq: Array | None


def _one_minus_pow(beta: Any, t: Array, xp: Any) -> Array:
    """``1 - beta**t`` as ``-expm1(t·log(beta))``.

    Computed naively in float32, ``1 - 0.999**t`` is off by ~60 ulps at small ``t`` (the
    rounding of 0.999 itself); torch.optim evaluates it in double. ``expm1`` keeps it to an
    ulp or two in the array's own precision, and traces under ``jax.jit``.
    """
    if isinstance(beta, numbers.Real):
        if beta == 0:
            return xp.ones_like(t)
        return -xp.expm1(t * math.log(beta))
    return -xp.expm1(t * xp.log(beta))  # a traced hyperparameter


def _step_zero(param: Array) -> Array:
    xp = array_namespace(param)
    return xp.zeros((), dtype=xp.int32, device=device(param))


def _scalar(value: Any, like: Array) -> Array:
    """``value`` as a 0-d array of ``like``'s dtype and device (keeps dtypes from promoting)."""
    xp = array_namespace(like)
    return xp.asarray(value, dtype=like.dtype, device=device(like))


def _prepare(grad: Array, param: Array | None, *, maximize: bool, l2: float) -> Array:
    xp = array_namespace(grad) if param is None else array_namespace(grad, param)
    check_floating(grad, xp)
    if param is not None:
        check_floating(param, xp, "param")
    g = -grad if maximize else grad
    if _nonzero(l2):
        if param is None:
            raise ValueError("param is required when weight_decay != 0")
        g = g + l2 * param
    return g


@dataclasses.dataclass(frozen=True)
class SGD:
    r"""GC-SGD with momentum, dampening, Nesterov momentum and L2 weight decay.

    With :math:`g_t = \pm\nabla L + \lambda w_{t-1}` (``maximize`` flips the sign):

    .. math::

        \hat g_t &= \Phi_{GC}(g_t) \\
        b_t &= \mu b_{t-1} + (1-\tau)\hat g_t \quad (b_1 = \hat g_1) \\
        d_t &= \hat g_t + \mu b_t \text{ (Nesterov) or } b_t \\
        w_t &= w_{t-1} - \eta\, d_t

    which is ``torch.optim.SGD`` (same parameters, same order) when ``gc=None``.
    Without weight decay each output unit's weight mean :math:`e^\top w` stays
    constant: projected gradient descent on the hyperplane :math:`e^\top w = e^\top w_0`.

    Parameters
    ----------
    lr : float, default 1e-3
        Learning rate :math:`\eta \ge 0`.
    momentum : float, default 0
        :math:`\mu \ge 0`.
    dampening : float, default 0
        :math:`\tau \in [0, 1]`.
    weight_decay : float, default 0
        L2 coefficient :math:`\lambda \ge 0`, added to the gradient before GC.
    nesterov : bool, default False
        Requires ``momentum > 0`` and ``dampening == 0``.
    maximize : bool, default False
        Ascend instead of descend.
    gc : GC or None, default GC()
        Gradient Centralization settings; ``None`` for plain SGD.

    Examples
    --------
    >>> import numpy as np
    >>> import gcore
    >>> rule = gcore.SGD(lr=0.1, momentum=0.9)
    >>> w = np.array([[1.0, 2.0, 3.0]])
    >>> state = rule.init(w)
    >>> updates, state = rule.update(np.array([[3.0, 0.0, 0.0]]), state, w)
    >>> updates
    array([[-0.2,  0.1,  0.1]])
    >>> (w + updates).mean(axis=1)  # the unit's weight mean is unchanged
    array([2.])
    """

    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    maximize: bool = False
    gc: GC | None = GC()

    def __post_init__(self) -> None:
        _check_number("lr", self.lr, low=0.0, allowed="lr >= 0")
        _check_number("momentum", self.momentum, low=0.0, allowed="momentum >= 0")
        _check_number(
            "dampening",
            self.dampening,
            low=0.0,
            high=1.0,
            high_open=False,
            allowed="0 <= dampening <= 1",
        )
        _check_number("weight_decay", self.weight_decay, low=0.0, allowed="weight_decay >= 0")
        _check_bool("nesterov", self.nesterov)
        _check_bool("maximize", self.maximize)
        _check_gc(self.gc)
        if self.nesterov and (not _nonzero(self.momentum) or _nonzero(self.dampening)):
            raise ValueError(
                "nesterov=True requires momentum > 0 and dampening = 0; "
                f"got momentum={self.momentum!r}, dampening={self.dampening!r}"
            )

    def init(self, param: Array, /) -> SGDState:
        """Zero state for ``param`` (no momentum buffer when ``momentum == 0``)."""
        xp = array_namespace(param)
        check_floating(param, xp, "param")
        buf = xp.zeros_like(param) if _nonzero(self.momentum) else None
        return SGDState(_step_zero(param), buf)

    def update(
        self, grad: Array, state: SGDState, param: Array | None = None, /
    ) -> tuple[Array, SGDState]:
        """Return ``(updates, new_state)``; ``param + updates`` is the new parameter.

        ``param`` is needed only when ``weight_decay != 0``.
        """
        xp = array_namespace(grad)
        g = _prepare(grad, param, maximize=self.maximize, l2=self.weight_decay)
        gc = self.gc
        if gc is not None and gc.where == "gradient":
            g = gc(g)
        buf = state.momentum_buffer
        if _nonzero(self.momentum):
            if _nonzero(self.dampening):
                # torch starts the buffer at the first gradient, undamped.
                first = state.step == 0
                scale = xp.where(first, _scalar(1.0, g), _scalar(1.0 - self.dampening, g))
                buf = self.momentum * buf + scale * g
            else:
                buf = self.momentum * buf + g
            direction = g + self.momentum * buf if self.nesterov else buf
        else:
            direction = g
        if gc is not None and gc.where == "update":
            direction = gc(direction)
        return -self.lr * direction, SGDState(state.step + 1, buf)


@dataclasses.dataclass(frozen=True)
class Adam:
    r"""GC-Adam (with optional AMSGrad and L2 weight decay).

    With :math:`g_t = \pm\nabla L + \lambda w_{t-1}`:

    .. math::

        \hat g_t &= \Phi_{GC}(g_t) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\hat g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\hat g_t^2 \\
        w_t &= w_{t-1} - \frac{\eta}{1-\beta_1^t}\,
               \frac{m_t}{\sqrt{\max(v_{1..t})\text{ or } v_t}\,/\sqrt{1-\beta_2^t} + \epsilon}

    which is ``torch.optim.Adam`` when ``gc=None``.

    Parameters
    ----------
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
        Each in ``[0, 1)``.
    eps : float, default 1e-8
        ``eps > 0``.
    weight_decay : float, default 0
        L2 coefficient, added to the gradient before GC.
    amsgrad : bool, default False
    maximize : bool, default False
    gc : GC or None, default GC()

    Examples
    --------
    >>> import numpy as np
    >>> import gcore
    >>> rule = gcore.Adam(lr=0.01)
    >>> w = np.zeros((2, 3))
    >>> updates, state = rule.update(np.arange(6.0).reshape(2, 3), rule.init(w), w)
    >>> np.round(updates, 6)
    array([[ 0.01, -0.  , -0.01],
           [ 0.01, -0.  , -0.01]])
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    maximize: bool = False
    gc: GC | None = GC()

    _decoupled: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_number("lr", self.lr, low=0.0, allowed="lr >= 0")
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"betas={self.betas!r}: expected a pair (beta1, beta2)")
        object.__setattr__(self, "betas", tuple(self.betas))
        for i, beta in enumerate(self.betas):
            _check_number(f"betas[{i}]", beta, low=0.0, high=1.0, allowed=f"0 <= betas[{i}] < 1")
        _check_number("eps", self.eps, low=0.0, low_open=True, allowed="eps > 0")
        _check_number("weight_decay", self.weight_decay, low=0.0, allowed="weight_decay >= 0")
        _check_bool("amsgrad", self.amsgrad)
        _check_bool("maximize", self.maximize)
        _check_gc(self.gc)

    def init(self, param: Array, /) -> AdamState:
        """Zero moments for ``param`` (``max_exp_avg_sq`` only with ``amsgrad``)."""
        xp = array_namespace(param)
        check_floating(param, xp, "param")
        vmax = xp.zeros_like(param) if self.amsgrad else None
        return AdamState(_step_zero(param), xp.zeros_like(param), xp.zeros_like(param), vmax)

    def update(
        self, grad: Array, state: AdamState, param: Array | None = None, /
    ) -> tuple[Array, AdamState]:
        """Return ``(updates, new_state)``; ``param + updates`` is the new parameter.

        ``param`` is needed only when ``weight_decay != 0``.
        """
        xp = array_namespace(grad)
        beta1, beta2 = self.betas
        decay = self.weight_decay
        g = _prepare(grad, param, maximize=self.maximize, l2=0.0 if self._decoupled else decay)
        gc = self.gc
        if gc is not None and gc.where == "gradient":
            g = gc(g)
        step = state.step + 1
        exp_avg = state.exp_avg + (1.0 - beta1) * (g - state.exp_avg)
        exp_avg_sq = beta2 * state.exp_avg_sq + (1.0 - beta2) * (g * g)
        vmax = state.max_exp_avg_sq
        if self.amsgrad:
            vmax = xp.maximum(vmax, exp_avg_sq)
        second = vmax if self.amsgrad else exp_avg_sq

        # Bias corrections at (at least) float32 precision, then in the gradient's dtype.
        sdtype = xp.float32 if is_low_precision(g.dtype, xp) else g.dtype
        t = xp.astype(step, sdtype)
        step_size = xp.astype(self.lr / _one_minus_pow(beta1, t, xp), g.dtype)
        bc2_sqrt = xp.astype(xp.sqrt(_one_minus_pow(beta2, t, xp)), g.dtype)
        updates = -step_size * exp_avg / (xp.sqrt(second) / bc2_sqrt + self.eps)
        if gc is not None and gc.where == "update":
            updates = gc(updates)
        if self._decoupled and _nonzero(decay):
            if param is None:
                raise ValueError("param is required when weight_decay != 0")
            updates = updates - (self.lr * decay) * param
        return updates, AdamState(step, exp_avg, exp_avg_sq, vmax)


@dataclasses.dataclass(frozen=True)
class AdamW(Adam):
    r"""GC-AdamW: :class:`Adam` with decoupled weight decay (``torch.optim.AdamW``).

    The decay :math:`w \leftarrow w - \eta\lambda w` acts on the parameter directly and is
    not centralized; GC applies to the raw gradient before the moments.

    Examples
    --------
    >>> import numpy as np
    >>> import gcore
    >>> rule = gcore.AdamW(lr=0.1, weight_decay=0.5, gc=None)
    >>> w = np.ones((1, 2))
    >>> updates, _ = rule.update(np.zeros((1, 2)), rule.init(w), w)
    >>> updates  # only the decoupled decay acts on a zero gradient
    array([[-0.05, -0.05]])
    """

    weight_decay: float = 1e-2

    _decoupled: ClassVar[bool] = True
