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
centralized (``convention="paper"`` gives the GC authors' own AdamW instead). With
``gc=None`` the rules are the plain optimizers.

Options shared with optax: ``Adam(nesterov=True)`` (optax's NAdam form), ``mu_dtype`` /
``SGD(accumulator_dtype=...)`` (storage dtype of the first moment / momentum buffer).
Complex parameters are accepted: GC subtracts each unit's complex mean and Adam's second
moment uses :math:`|g|^2`, as optax does.

Low precision: float16/bfloat16 moments are stored in the parameter's dtype, but Adam's
moments, denominator (square root, ``+ eps``) and division are evaluated in float32 (as
torch's fused kernels do), so that ``eps=1e-8`` (which rounds to 0 in float16) never
turns a zero gradient into ``0/0`` and ``g²`` does not overflow for ``|g| > 256``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar, Literal, NamedTuple

from ._compat import (
    Array,
    array_namespace,
    check_floating,
    device,
    is_complex,
    is_low_precision,
)
from .centralize import centralize

__all__ = ["GC", "SGD", "Adam", "AdamState", "AdamW", "SGDState"]

Where = Literal["gradient", "update"]
Convention = Literal["torch", "paper"]


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
    # A NaN fails both comparisons; no math.isnan, which torch.compile cannot trace on a
    # symbolic float (a learning rate that a scheduler changes).
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
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


def _check_dtype_option(name: str, value: Any) -> None:
    if value is None or isinstance(value, str):
        return
    if isinstance(value, (bool, numbers.Number)):
        raise TypeError(
            f"{name}={value!r}: expected None, a dtype name such as 'bfloat16', or a dtype"
        )


def _resolve_dtype(name: str, value: Any, xp: Any) -> Any:
    """``value`` as a dtype of namespace ``xp`` (``None`` stays ``None``)."""
    if value is None:
        return None
    dtype = getattr(xp, value, None) if isinstance(value, str) else value
    try:
        ok = dtype is not None and xp.isdtype(dtype, ("real floating", "complex floating"))
    except Exception:
        ok = False
    if not ok:
        raise TypeError(
            f"{name}={value!r} is not a floating-point dtype of {getattr(xp, '__name__', xp)}"
        )
    return dtype


def _check_shape(name: str, x: Array | None, like: Array) -> None:
    if x is not None and tuple(x.shape) != tuple(like.shape):
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} but the gradient has shape "
            f"{tuple(like.shape)}; they must match (no broadcasting)"
        )


def _cast(x: Array, dtype: Any, xp: Any) -> Array:
    return x if dtype is None or x.dtype == dtype else xp.astype(x, dtype)


def _real_dtype(dtype: Any, xp: Any) -> Any:
    """The real dtype of ``dtype``'s precision (float32 for complex64, ...)."""
    if xp.isdtype(dtype, "complex floating"):
        return xp.float32 if dtype == xp.complex64 else xp.float64
    return dtype


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
        _check_shape("param", param, grad)
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
    With or without (L2, coupled) weight decay each output unit's weight mean
    :math:`e^\top w` stays constant: projected gradient descent on the hyperplane
    :math:`e^\top w = e^\top w_0`.

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
    accumulator_dtype : dtype, str or None, default None
        Storage dtype of the momentum buffer (optax's ``accumulator_dtype``); ``None``
        keeps the parameter's dtype. The step itself runs in the promoted dtype and the
        updates come back in the gradient's dtype.

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
    accumulator_dtype: Any = None

    def __post_init__(self) -> None:
        _check_number("lr", self.lr, low=0.0, allowed="lr >= 0")
        _check_number("momentum", self.momentum, low=0.0, allowed="momentum >= 0")
        _check_dtype_option("accumulator_dtype", self.accumulator_dtype)
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
        dtype = _resolve_dtype("accumulator_dtype", self.accumulator_dtype, xp)
        buf = xp.zeros_like(param, dtype=dtype) if _nonzero(self.momentum) else None
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
            _check_shape("state.momentum_buffer", buf, grad)
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
        if buf is not None:
            stored = _resolve_dtype("accumulator_dtype", self.accumulator_dtype, xp)
            buf = _cast(buf, stored if stored is not None else state.momentum_buffer.dtype, xp)
        updates = _cast(-self.lr * direction, grad.dtype, xp)
        return updates, SGDState(state.step + 1, buf)


@dataclasses.dataclass(frozen=True)
class Adam:
    r"""GC-Adam (with optional AMSGrad, Nesterov momentum and L2 weight decay).

    With :math:`g_t = \pm\nabla L + \lambda w_{t-1}`:

    .. math::

        \hat g_t &= \Phi_{GC}(g_t) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\hat g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)|\hat g_t|^2 \\
        w_t &= w_{t-1} - \frac{\eta}{1-\beta_1^t}\,
               \frac{m_t}{\sqrt{\max(v_{1..t})\text{ or } v_t}\,/\sqrt{1-\beta_2^t} + \epsilon}

    which is ``torch.optim.Adam`` when ``gc=None``. With ``nesterov=True`` the first
    moment in the numerator is optax's Nesterov form
    :math:`\beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1)\hat g_t/(1-\beta_1^t)`
    (``optax.adam(nesterov=True)``, i.e. NAdam without momentum decay).

    Parameters
    ----------
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
        Each in ``[0, 1)``.
    eps : float, default 1e-8
        ``eps > 0``. For float16/bfloat16 parameters it is added in float32.
    weight_decay : float, default 0
        L2 coefficient, added to the gradient before GC.
    amsgrad : bool, default False
    maximize : bool, default False
    gc : GC or None, default GC()
    nesterov : bool, default False
        optax's Nesterov variant (see above).
    mu_dtype : dtype, str or None, default None
        Storage dtype of the first moment ``exp_avg`` (optax's ``mu_dtype``); ``None``
        keeps the parameter's dtype. Updates come back in the gradient's dtype.

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
    nesterov: bool = False
    mu_dtype: Any = None

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
        _check_bool("nesterov", self.nesterov)
        _check_dtype_option("mu_dtype", self.mu_dtype)
        _check_gc(self.gc)

    def init(self, param: Array, /) -> AdamState:
        """Zero moments for ``param`` (``max_exp_avg_sq`` only with ``amsgrad``)."""
        xp = array_namespace(param)
        check_floating(param, xp, "param")
        mu_dtype = _resolve_dtype("mu_dtype", self.mu_dtype, xp)
        vmax = xp.zeros_like(param) if self.amsgrad else None
        return AdamState(
            _step_zero(param), xp.zeros_like(param, dtype=mu_dtype), xp.zeros_like(param), vmax
        )

    def _direction(
        self, g: Array, state: AdamState
    ) -> tuple[Array, Array, AdamState, Array, Array]:
        """Moments for step ``t`` and the bias-corrected first moment.

        Returns ``(m, numerator, new_state, sqrt_second, t)``: the new first moment ``m``
        (before any ``mu_dtype`` rounding), ``numerator = m̂_t`` (Nesterov form if asked)
        and ``sqrt_second = √v_t`` (or its AMSGrad maximum), all in float32 for
        float16/bfloat16 and else in the promoted dtype of gradient and moments; ``t``
        is the step count as a real array of that precision.
        """
        xp = array_namespace(g)
        beta1, beta2 = self.betas
        _check_shape("state.exp_avg", state.exp_avg, g)
        _check_shape("state.exp_avg_sq", state.exp_avg_sq, g)
        _check_shape("state.max_exp_avg_sq", state.max_exp_avg_sq, g)
        step = state.step + 1
        low = is_low_precision(g.dtype, xp)
        # float16/bfloat16: the moments are updated in float32 and only stored rounded
        # (as torch's fused kernels do): g² neither overflows (|g| > 256) nor underflows.
        work = xp.float32 if low else None
        g_w = _cast(g, work, xp)
        mu_w = _cast(state.exp_avg, work, xp)
        nu_w = _cast(state.exp_avg_sq, work, xp)
        exp_avg = mu_w + (1.0 - beta1) * (g_w - mu_w)
        sq = g_w * xp.conj(g_w) if is_complex(g, xp) else g_w * g_w
        exp_avg_sq = beta2 * nu_w + (1.0 - beta2) * sq
        vmax = state.max_exp_avg_sq
        second = exp_avg_sq
        if self.amsgrad:
            vmax_w = _cast(vmax, work, xp)
            if is_complex(exp_avg_sq, xp):  # |g|² moments: compare the real parts
                second = xp.astype(xp.maximum(xp.real(vmax_w), xp.real(exp_avg_sq)), vmax.dtype)
            else:
                second = xp.maximum(vmax_w, exp_avg_sq)
            vmax = _cast(second, vmax.dtype, xp)

        t = xp.astype(step, _real_dtype(exp_avg.dtype, xp))
        bc1 = _one_minus_pow(beta1, t, xp)
        m = exp_avg
        if self.nesterov:
            bc1_next = _one_minus_pow(beta1, t + 1, xp)
            numerator = (beta1 / bc1_next) * m + ((1.0 - beta1) / bc1) * _cast(g_w, m.dtype, xp)
        else:
            numerator = m / bc1
        sqrt_second = xp.sqrt(second)

        stored_mu = state.exp_avg.dtype
        if self.mu_dtype is not None:
            stored_mu = _resolve_dtype("mu_dtype", self.mu_dtype, xp)
        new_state = AdamState(
            step,
            _cast(exp_avg, stored_mu, xp),
            _cast(exp_avg_sq, state.exp_avg_sq.dtype, xp),
            vmax,
        )
        return m, numerator, new_state, sqrt_second, t

    def update(
        self, grad: Array, state: AdamState, param: Array | None = None, /
    ) -> tuple[Array, AdamState]:
        """Return ``(updates, new_state)``; ``param + updates`` is the new parameter.

        ``param`` is needed only when ``weight_decay != 0``.
        """
        xp = array_namespace(grad)
        decay = self.weight_decay
        g = _prepare(grad, param, maximize=self.maximize, l2=0.0 if self._decoupled else decay)
        gc = self.gc
        if gc is not None and gc.where == "gradient":
            g = gc(g)
        if not self.nesterov and not is_low_precision(g.dtype, xp) and self.mu_dtype is None:
            updates, new_state = self._torch_update(g, state)
        else:
            _, numerator, new_state, sqrt_second, t = self._direction(g, state)
            bc2_sqrt = xp.sqrt(_one_minus_pow(self.betas[1], t, xp))
            updates = -self.lr * numerator / (sqrt_second / bc2_sqrt + self.eps)
        updates = _cast(updates, g.dtype, xp)
        if gc is not None and gc.where == "update":
            updates = gc(updates)
        if self._decoupled and _nonzero(decay):
            if param is None:
                raise ValueError("param is required when weight_decay != 0")
            updates = updates - (self.lr * decay) * param
        return updates, new_state

    def _torch_update(self, g: Array, state: AdamState) -> tuple[Array, AdamState]:
        # torch.optim.Adam's exact order of operations (float32/float64/complex): the
        # bias corrections rounded to the gradient's dtype, then one division.
        xp = array_namespace(g)
        m, _, new_state, sqrt_second, t = self._direction(g, state)
        dtype = _real_dtype(g.dtype, xp)
        step_size = _cast(self.lr / _one_minus_pow(self.betas[0], t, xp), dtype, xp)
        bc2_sqrt = _cast(xp.sqrt(_one_minus_pow(self.betas[1], t, xp)), dtype, xp)
        updates = -step_size * m / (sqrt_second / bc2_sqrt + self.eps)
        return updates, new_state


@dataclasses.dataclass(frozen=True)
class AdamW(Adam):
    r"""GC-AdamW: :class:`Adam` with decoupled weight decay.

    ``convention="torch"`` (default) is ``torch.optim.AdamW`` / ``optax.adamw``: the decay
    :math:`w \leftarrow w - \eta\lambda w` acts on the parameter directly and is not
    centralized; GC applies to the raw gradient before the moments.

    ``convention="paper"`` is the GC authors' own ``AdamW`` (their ``AdamW_GC`` /
    ``AdamW_GCC`` with GC on the gradient, ``AdamW_GC2`` / ``AdamW_GCC2`` with
    ``GC(where="update")``): the decay is scaled by the bias-corrected step and ``eps``
    is added to the uncorrected :math:`\sqrt{v_t}`,

    .. math::

        u_t = \frac{m_t}{\sqrt{v_t} + \epsilon} + \lambda w_{t-1}, \qquad
        w_t = w_{t-1} - \eta\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\; u_t,

    and with ``where="update"`` the whole :math:`u_t`, decay included, is centralized.

    Parameters
    ----------
    convention : {"torch", "paper"}, default "torch"
        See above. ``"paper"`` cannot be combined with ``nesterov=True``.

    Examples
    --------
    >>> import numpy as np
    >>> import gcore
    >>> rule = gcore.AdamW(lr=0.1, weight_decay=0.5, gc=None)
    >>> w = np.ones((1, 2))
    >>> updates, _ = rule.update(np.zeros((1, 2)), rule.init(w), w)
    >>> updates  # only the decoupled decay acts on a zero gradient
    array([[-0.05, -0.05]])
    >>> paper = gcore.AdamW(lr=0.1, weight_decay=0.5, gc=None, convention="paper")
    >>> np.round(paper.update(np.zeros((1, 2)), paper.init(w), w)[0], 6)
    array([[-0.015811, -0.015811]])
    """

    weight_decay: float = 1e-2
    convention: Convention = "torch"

    _decoupled: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.convention not in ("torch", "paper"):
            raise ValueError(
                f"convention={self.convention!r} is invalid; allowed: 'torch' "
                "(torch.optim.AdamW, the default) or 'paper' (the GC authors' AdamW)"
            )
        if self.convention == "paper" and self.nesterov:
            raise ValueError("nesterov=True is not defined for convention='paper'")

    def update(
        self, grad: Array, state: AdamState, param: Array | None = None, /
    ) -> tuple[Array, AdamState]:
        """Return ``(updates, new_state)``; ``param + updates`` is the new parameter.

        ``param`` is needed only when ``weight_decay != 0``.
        """
        if self.convention == "torch":
            return super().update(grad, state, param)
        xp = array_namespace(grad)
        g = _prepare(grad, param, maximize=self.maximize, l2=0.0)
        gc = self.gc
        if gc is not None and gc.where == "gradient":
            g = gc(g)
        m, _, new_state, sqrt_second, t = self._direction(g, state)
        low = is_low_precision(g.dtype, xp)
        u = m / (sqrt_second + self.eps)
        if _nonzero(self.weight_decay):
            if param is None:
                raise ValueError("param is required when weight_decay != 0")
            u = u + self.weight_decay * _cast(param, xp.float32 if low else None, xp)
        if gc is not None and gc.where == "update":
            u = gc(u)
        bc1 = _one_minus_pow(self.betas[0], t, xp)
        step_size = self.lr * xp.sqrt(_one_minus_pow(self.betas[1], t, xp)) / bc1
        return _cast(-step_size * u, g.dtype, xp), new_state
