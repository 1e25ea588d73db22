"""Keras optimizers with Gradient Centralization, and ``centralized(opt)`` for any other.

The hook
--------
Every Keras 3 backend runs an optimizer step as
``apply`` → ``_backend_apply_gradients`` → [gradient accumulation] → ``_clip_gradients``
→ ``_apply_weight_decay`` → ``_backend_update_step(grads, variables, lr)``. The JAX,
PyTorch and TensorFlow optimizers each override parts of that chain, but all of them end
in ``_backend_update_step`` with the accumulated, clipped gradients, and every entry
point (``model.fit``, ``optimizer.apply``/``apply_gradients`` in a custom loop,
``stateless_apply``) reaches it. GC is applied there: after clipping and accumulation,
before the update. (``get_gradients``, which GC recipes written for Keras 2 override, is
never called by Keras 3.)
"""

from __future__ import annotations

import functools
import math
import numbers
import re
import textwrap
import warnings
from typing import Any

import keras

import gcore

from ._gc import centralize_tensor
from ._layout import Axes, GCAxes, guessed, is_axis, output_axes_for

__all__ = ["SGD", "Adam", "AdamW", "centralized"]

_BACKEND = keras.backend.backend()
_PACKAGE = "gcore_keras"
_GC_KEYS = ("gc", "gc_where", "gc_axes")


def _check_gc(gc: Any, gc_where: Any) -> gcore.GC | None:
    """Validate through the core's :class:`gcore.GC`; ``None`` when GC is off."""
    if not (gc is True or gc is False or (isinstance(gc, str) and gc == "conv_only")):
        raise ValueError(f"gc={gc!r} is invalid; allowed: True, False, 'conv_only'")
    rule = gcore.GC(conv_only=gc == "conv_only", axis=-1, where=gc_where)
    return rule if gc is not False else None


def _centralized(g: Any, axes: tuple[int, ...], variable: Any) -> Any:
    try:
        return centralize_tensor(g, axes)
    except (TypeError, ValueError) as err:  # the core's message, with the variable
        raise type(err)(f"variable {variable.path!r}: {err}") from None


def _copy(value: Any) -> Any:
    """A snapshot of a variable's value that the in-place torch update cannot change."""
    if _BACKEND == "torch":
        return value.detach().clone()
    if _BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.identity(value)  # a read now (a tf.Variable would be read later)
    return value  # JAX arrays are immutable


class _GCMixin:
    """GC in ``_backend_update_step``; put first in the bases of a Keras optimizer."""

    _gc_rule: gcore.GC | None

    @staticmethod
    def _gc_check(
        gc: Any,
        gc_where: Any,
        gc_axes: GCAxes | None,
        learning_rate: Any = None,
        **hyper: Any,
    ) -> Any:
        """Validate the GC options, a numeric learning rate and the numeric ``hyper``
        parameters (``beta_1``, ``beta_2``, ``epsilon``, ``weight_decay``), before Keras's
        ``__init__``, which does not check them: a NaN would train to NaN silently."""
        if isinstance(learning_rate, numbers.Real) and not (
            math.isfinite(learning_rate) and learning_rate >= 0
        ):
            raise ValueError(
                f"learning_rate={learning_rate!r} is invalid; allowed: a finite number "
                ">= 0, a LearningRateSchedule or a callable"
            )
        for name, value in hyper.items():
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                continue  # None (no decay), a callable or a tensor: Keras's to take
            beta = name.startswith("beta_")
            if not (math.isfinite(value) and value >= 0 and (not beta or value < 1)):
                allowed = "0 <= value < 1" if beta else "a finite number >= 0"
                raise ValueError(f"{name}={value!r} is invalid; allowed: {allowed}")
        rule = _check_gc(gc, gc_where)
        if gc_axes is None:
            return rule, None
        if not hasattr(gc_axes, "items"):
            raise TypeError(
                "gc_axes must be a mapping {regex on variable.path: int | tuple | None}, "
                f"e.g. gcore_keras.layout(model); got {type(gc_axes).__name__}"
            )
        items = []
        for pattern, value in gc_axes.items():
            if not isinstance(pattern, str):
                raise TypeError(f"gc_axes key {pattern!r} is not a string (a regex)")
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"gc_axes key {pattern!r} is not a valid regex: {err}") from None
            if isinstance(value, list):
                value = tuple(value)
            if not (
                value is None
                or is_axis(value)
                or (isinstance(value, tuple) and value and all(is_axis(a) for a in value))
            ):
                raise TypeError(
                    f"gc_axes[{pattern!r}] = {value!r}: expected an int, a non-empty tuple "
                    "or list of ints, or None"
                )
            items.append((pattern, value))
        return rule, tuple(items)

    def _gc_init(self, checked: Any, gc: Any, gc_where: Any) -> None:
        # After Keras's __init__ (Keras refuses attributes set before it).
        self._gc_rule, self._gc_axes_items = checked
        self._gc_options = (gc, gc_where)
        self._gc_specs = None
        self._gc_before = None

    # Read-only: the options shape the built step (and a jitted one), and get_config must
    # say what runs; a new optimizer is the way to change them.
    @property
    def gc(self) -> Any:
        """The ``gc`` option (``True``, ``False`` or ``"conv_only"``), fixed at construction."""
        return self._gc_options[0]

    @gc.setter
    def gc(self, value: Any) -> None:
        raise AttributeError(
            "gc is fixed at construction (the step is built with it); create a new "
            "optimizer with the gc option you want"
        )

    @property
    def gc_where(self) -> str:
        """The ``gc_where`` option, fixed at construction."""
        return self._gc_options[1]

    @gc_where.setter
    def gc_where(self, value: Any) -> None:
        raise AttributeError(
            "gc_where is fixed at construction; create a new optimizer with the option you want"
        )

    @property
    def gc_axes(self) -> dict[str, Any] | None:
        """The ``gc_axes`` overrides (``None``: layer-name rules only)."""
        items = self._gc_axes_items
        return None if items is None else dict(items)

    def _gc_snapshot(self, variables: Any) -> None:
        # gc_where="update": the optimizer's change of each variable is what gets
        # centralized; remember the values before it. Decoupled weight decay acts on the
        # weight and is not centralized (gcore.AdamW), so the snapshot follows it (but
        # for AdamW(convention="paper"), whose decay joins the centralized update).
        if self._gc_rule is not None and self._gc_rule.where == "update":
            self._gc_before = [
                _copy(v.value) if self._gc_spec(v) is not None else None for v in variables
            ]

    # -- which variables, along which axes ---------------------------------------------

    def gc_output_axes(self, variable: Any) -> Axes:
        """The output axes GC uses for ``variable`` (``None``: not centralized)."""
        rule = self._gc_rule
        if rule is None:
            return None
        shape = tuple(variable.shape)
        if len(shape) < rule.min_ndim:
            return None
        return output_axes_for(variable.path, shape, self.gc_axes)

    def build(self, variables: Any) -> None:
        super().build(variables)  # type: ignore[misc]
        paths = frozenset(v.path for v in self._trainable_variables)
        self._gc_specs = [self.gc_output_axes(v) for v in self._trainable_variables]
        items = self._gc_axes_items or ()
        unsure = [
            v.path
            for v, axes in zip(self._trainable_variables, self._gc_specs, strict=True)
            if axes is not None
            and guessed(v.path, tuple(v.shape), paths)
            and not any(re.search(pattern, v.path) for pattern, _ in items)
        ]
        if unsure:
            shown = ", ".join(repr(p) for p in unsure[:4]) + (" ..." if len(unsure) > 4 else "")
            warnings.warn(
                f"gcore_keras: the output axes of {len(unsure)} kernel(s) "
                f"({shown}) are guessed from their names (the last axis); pass "
                "gc_axes=gcore_keras.layout(model), which reads the layer types "
                "(EinsumDense equations, custom names)",
                UserWarning,
                stacklevel=2,
            )

    def _gc_spec(self, variable: Any) -> Axes:
        if self._gc_specs is None:
            return self.gc_output_axes(variable)
        return self._gc_specs[self._get_variable_index(variable)]

    # -- the hook ------------------------------------------------------------------------

    def _apply_weight_decay(self, variables: Any) -> None:
        super()._apply_weight_decay(variables)  # type: ignore[misc]
        self._gc_snapshot(variables)

    def _backend_update_step(self, grads: Any, trainable_variables: Any, learning_rate: Any):
        rule = self._gc_rule
        if rule is None:
            return self._keras_update_step(grads, trainable_variables, learning_rate)
        specs = [self._gc_spec(v) for v in trainable_variables]
        for g, v in zip(grads, trainable_variables, strict=True):
            shape = None if g is None else tuple(g.shape)
            if shape is not None and None not in shape and shape != tuple(v.shape):
                raise ValueError(
                    f"gradient of shape {shape} for variable {v.path!r} of shape "
                    f"{tuple(v.shape)}: shapes must match (no broadcasting)"
                )
        if rule.where == "gradient":
            grads = [
                g if s is None or g is None else _centralized(g, s, v)
                for g, s, v in zip(grads, specs, trainable_variables, strict=True)
            ]
            return self._keras_update_step(grads, trainable_variables, learning_rate)
        before, self._gc_before = self._gc_before, None
        if before is None or len(before) != len(trainable_variables):
            before = [
                _copy(v.value) if s is not None else None
                for v, s in zip(trainable_variables, specs, strict=True)
            ]
        self._keras_update_step(grads, trainable_variables, learning_rate)
        for v, b, s in zip(trainable_variables, before, specs, strict=True):
            if s is None:
                continue
            after = keras.ops.convert_to_tensor(v.value)
            delta = _centralized(after - b, s, v)
            self.assign(v, b + delta)
        return None

    def _keras_update_step(self, grads: Any, variables: Any, learning_rate: Any) -> Any:
        step = _torch_parallel_step(type(self))
        if step is not None:
            import torch

            with torch.no_grad():
                return step(self, grads, variables, learning_rate)
        return super()._backend_update_step(grads, variables, learning_rate)  # type: ignore[misc]

    # -- serialization -------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()  # type: ignore[misc]
        axes = self.gc_axes
        config.update(
            {
                "gc": self.gc,
                "gc_where": self.gc_where,
                "gc_axes": None
                if axes is None
                else {k: (list(v) if isinstance(v, tuple) else v) for k, v in axes.items()},
            }
        )
        return config


@functools.cache
def _torch_parallel_step(cls: type) -> Any:
    """Keras's foreach step for ``cls`` on the torch backend, if Keras has one.

    ``keras.optimizers.SGD(...)`` on torch is really an instance of Keras's private
    ``torch_sgd.SGD`` with a foreach ``_parallel_update_step``; a subclass of the public
    class is not redirected there, so the plugin calls it itself (same numbers as
    Keras's own optimizer). ``None`` where the class already has it, or has none.
    """
    if _BACKEND != "torch":
        return None
    try:
        from keras.src.backend.torch.optimizers import torch_parallel_optimizer as tpo
        from keras.src.backend.torch.optimizers.torch_optimizer import TorchOptimizer
    except ImportError:  # pragma: no cover - a Keras that moved its private modules
        return None
    if issubclass(cls, tpo.TorchParallelOptimizer):
        return None  # super()._backend_update_step is the parallel step already
    mapping = _torch_classes(TorchOptimizer)
    for base in cls.__mro__:
        torch_cls = mapping.get(base)
        if torch_cls is not None:
            return torch_cls._parallel_update_step
        if "update_step" in vars(base) or "_parallel_update_step" in vars(base):
            return None  # a user's own step, which Keras's foreach step would skip
    return None


def _torch_classes(torch_optimizer: type) -> dict[type, type]:
    # TorchOptimizer.__new__ maps keras.optimizers.X -> the torch X; rebuild that map by
    # creating nothing: read the classes' modules.
    from keras.src.backend.torch.optimizers import (
        torch_adam,
        torch_adamw,
        torch_rmsprop,
        torch_sgd,
    )

    opts = keras.optimizers
    return {
        opts.SGD: torch_sgd.SGD,
        opts.Adam: torch_adam.Adam,
        opts.AdamW: torch_adamw.AdamW,
        opts.RMSprop: torch_rmsprop.RMSprop,
    }


_GC_DOC = """
    gc : {True, False, "conv_only"}, default True
        ``True``: centralize every kernel with ``ndim >= 2`` (Dense, Conv, ...; the
        paper's GC). ``"conv_only"``: kernels with ``ndim >= 4`` only (Conv2D/3D and
        their transposed / depthwise / separable forms; the paper's GCC, as in
        :class:`gcore.GC`). ``False``: exactly Keras's optimizer.
    gc_where : {"gradient", "update"}, default "gradient"
        ``"gradient"``: centralize the (accumulated, clipped) gradient before the update,
        as in the paper. ``"update"``: centralize the optimizer's change of each kernel,
        so every unit's weight mean stays fixed; decoupled weight decay (Keras's
        ``weight_decay``) is not centralized, as in :class:`gcore.AdamW`: the means then
        shrink by the decay factor.
    gc_axes : dict, optional
        ``{regular expression on variable.path: output axes}``; axes are an int, a tuple
        of ints or ``None`` (leave the variable alone). The first pattern that matches
        decides; other variables follow the layer-name rules of
        :func:`gcore_keras.output_axes_for`. ``gcore_keras.layout(model)`` builds this
        mapping from the model's layer types. It says along which axes, not whether:
        with ``gc="conv_only"`` a kernel of fewer than 4 axes stays alone even if a
        pattern matches it.
"""


def _doc(cls_name: str, math: str, extra: str = "") -> str:
    math = textwrap.indent(textwrap.dedent(math).strip(), "    ")
    return f"""Keras's ``keras.optimizers.{cls_name}`` with Gradient Centralization.

    Takes every argument of ``keras.optimizers.{cls_name}`` (same names, order and
    defaults) plus the GC options below. Each step centralizes each kernel's gradient
    per output unit with :func:`gcore.centralize` — after Keras's gradient accumulation
    and clipping (``clipnorm``, ``clipvalue``, ``global_clipnorm``), before the update —
    then runs Keras's own update on it; with ``gc=False`` it is Keras's optimizer
    exactly.

{math}

    Parameters
    ----------
    *args, **kwargs
        As ``keras.optimizers.{cls_name}``.
{_GC_DOC}{extra}
    References
    ----------
    H. Yong, J. Huang, X. Hua, L. Zhang, "Gradient Centralization: A New Optimization
    Technique for Deep Neural Networks", ECCV 2020, arXiv:2004.01461.
    """


_SGD_MATH = r"""
With momentum :math:`\mu` and learning rate :math:`\eta` (Keras's form):

.. math::

    v \leftarrow \mu v - \eta\,\Phi_{GC}(g), \qquad w \leftarrow w + v .
"""
_ADAM_MATH = r"""
Keras's Adam on the centralized gradient :math:`\hat g = \Phi_{GC}(g)`:
:math:`m \leftarrow \beta_1 m + (1-\beta_1)\hat g`,
:math:`v \leftarrow \beta_2 v + (1-\beta_2)\hat g^2`,
:math:`w \leftarrow w - \eta\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\frac{m}{\sqrt v + \epsilon}`
(Keras adds :math:`\epsilon` outside the bias correction).
"""
_ADAMW_MATH = r"""
``convention="torch"`` (default) is Keras's AdamW: it decays first,
:math:`w \leftarrow w - \eta\lambda w` (the decoupled decay of Loshchilov & Hutter and
``torch.optim.AdamW``), then takes Keras's Adam step on the centralized gradient.
``convention="paper"`` is the GC authors' AdamW, ``gcore.AdamW(convention="paper")``:
the decay is scaled by the Adam step size,
:math:`w \leftarrow w - s\,(\lambda w + m/(\sqrt v + \epsilon))` with
:math:`s = \eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)`; with ``gc_where="update"`` decay
and step are centralized together.
"""
_ADAMW_EXTRA = """    convention : {"torch", "paper"}, default "torch"
        How the decoupled weight decay is scaled (see above).
"""


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SGD(_GCMixin, keras.optimizers.SGD):
    __doc__ = _doc("SGD", _SGD_MATH)

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        nesterov=False,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        gc=True,
        gc_where="gradient",
        gc_axes=None,
        **kwargs,
    ):
        checked = self._gc_check(gc, gc_where, gc_axes, learning_rate, weight_decay=weight_decay)
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self._gc_init(checked, gc, gc_where)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Adam(_GCMixin, keras.optimizers.Adam):
    __doc__ = _doc("Adam", _ADAM_MATH)

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        gc=True,
        gc_where="gradient",
        gc_axes=None,
        **kwargs,
    ):
        checked = self._gc_check(
            gc, gc_where, gc_axes, learning_rate, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, weight_decay=weight_decay,
        )  # fmt: skip
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self._gc_init(checked, gc, gc_where)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AdamW(_GCMixin, keras.optimizers.AdamW):
    __doc__ = _doc("AdamW", _ADAMW_MATH, _ADAMW_EXTRA)

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.004,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        gc=True,
        gc_where="gradient",
        gc_axes=None,
        convention="torch",
        **kwargs,
    ):
        checked = self._gc_check(
            gc, gc_where, gc_axes, learning_rate, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, weight_decay=weight_decay,
        )  # fmt: skip
        if convention not in ("torch", "paper"):
            raise ValueError(f"convention={convention!r} is invalid; allowed: 'torch', 'paper'")
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self._gc_init(checked, gc, gc_where)
        self.convention = convention

    def _apply_weight_decay(self, variables: Any) -> None:
        if self.convention != "paper":
            return super()._apply_weight_decay(variables)
        # The GC authors' AdamW decays by the Adam step size, lr·sqrt(1-β2^t)/(1-β1^t),
        # not by lr; the update-step hook centralizes it with the Adam step under
        # gc_where="update" (the snapshot is taken before it).
        if self.weight_decay is None:
            return None
        self._gc_snapshot(variables)
        for v in variables:
            if self._use_weight_decay(v):
                dtype = v.dtype
                t = keras.ops.cast(self.iterations + 1, dtype)
                b1 = keras.ops.power(keras.ops.cast(self.beta_1, dtype), t)
                b2 = keras.ops.power(keras.ops.cast(self.beta_2, dtype), t)
                lr = keras.ops.cast(self.learning_rate, dtype)
                step = lr * keras.ops.sqrt(1 - b2) / (1 - b1)
                wd = keras.ops.cast(self.weight_decay, dtype)
                self.assign(v, v - v * wd * step)
        return None

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["convention"] = self.convention
        return config


# -- centralized(): GC for any Keras optimizer ------------------------------------------

_BUILTIN = (
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Ftrl",
    "Lamb",
    "Lion",
    "Muon",
    "Nadam",
    "RMSprop",
    "SGD",
)


def _public_class(cls: type) -> type:
    """``keras.optimizers.RMSprop`` for Keras's private torch ``RMSprop`` (else ``cls``)."""
    if not cls.__module__.startswith("keras.src."):
        return cls  # a user's class (perhaps a subclass of a Keras optimizer): keep it
    for base in cls.__mro__:
        if base.__module__.startswith("keras.src.optimizers."):
            public = getattr(keras.optimizers, base.__name__, None)
            if public is base:
                return base
    return cls


def _runtime_class(public: type) -> type:
    """The class Keras really instantiates for ``public`` (its torch subclass on torch)."""
    if _BACKEND != "torch":
        return public
    try:
        return type(public.__new__(public))  # TorchOptimizer.__new__ picks the torch class
    except Exception:  # pragma: no cover - an optimizer whose __new__ needs arguments
        return public


def _registered_name(public: type) -> str:
    """``Centralized<Name>`` for Keras's optimizers; a user's class also carries its module,
    so that a class named like one of Keras's (or like another user class) does not take
    over another's name in saved models."""
    name = f"Centralized{public.__name__}"
    if getattr(keras.optimizers, public.__name__, None) is public:
        return name
    return re.sub(r"\W", "_", f"{name}_{public.__module__}_{public.__qualname__}")


@functools.cache
def _centralized_class(public: type) -> type:
    base = _runtime_class(public)
    name = f"Centralized{public.__name__}"

    def __init__(self, *args, gc=True, gc_where="gradient", gc_axes=None, **kwargs):
        lr = kwargs["learning_rate"] if "learning_rate" in kwargs else (args or [None])[0]
        # Names whose meaning is the same in every Keras optimizer that has them (betas
        # differ: Lion's beta_1 may be 1).
        hyper = {k: kwargs[k] for k in ("epsilon", "weight_decay") if k in kwargs}
        checked = self._gc_check(gc, gc_where, gc_axes, lr, **hyper)
        base.__init__(self, *args, **kwargs)
        self._gc_init(checked, gc, gc_where)

    cls = type(
        name,
        (_GCMixin, base),
        {
            "__init__": __init__,
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"``{public.__module__}.{public.__name__}`` with Gradient "
            "Centralization; made by :func:`gcore_keras.centralized`.",
        },
    )
    registered = _registered_name(public)
    return keras.saving.register_keras_serializable(package=_PACKAGE, name=registered)(cls)


def centralized(
    optimizer: Any, *, gc: Any = True, gc_where: str = "gradient", gc_axes: GCAxes | None = None
) -> Any:
    """Give any Keras optimizer Gradient Centralization (RMSprop, Lion, Nadam, ...).

    GC runs at the same point as in :class:`gcore_keras.SGD`: on the accumulated, clipped
    gradients, right before the optimizer's own update (``gc_where="gradient"``), or on
    the change the update makes (``gc_where="update"``).

    Parameters
    ----------
    optimizer : keras.optimizers.Optimizer or a subclass of it
        An optimizer not yet built (no variables created), whose configuration is copied
        (its learning-rate schedule or callable and its ``exclude_from_weight_decay``
        settings included; a ``LossScaleOptimizer`` is rebuilt around its centralized
        inner optimizer); or an optimizer class, for which the GC class is returned (it
        takes the class's arguments plus the GC options).
    gc, gc_where, gc_axes
        As in :class:`gcore_keras.SGD`.

    Returns
    -------
    keras.optimizers.Optimizer or type
        A new optimizer, an instance of ``Centralized<Name>``, a subclass of the
        optimizer's class, registered for ``model.save`` / ``keras.models.load_model``
        (the built-in optimizers' GC classes exist as soon as ``gcore_keras`` is
        imported; for a class of your own, call ``centralized(YourOptimizer)`` before
        loading a model saved with it).

    Raises
    ------
    ValueError
        If ``optimizer`` is already built (its state would be lost) or already has GC,
        or an option is invalid.
    TypeError
        If ``optimizer`` is the ``LossScaleOptimizer`` class (centralize the inner
        optimizer's class) or not a Keras optimizer.

    Examples
    --------
    .. code-block:: python

        opt = gcore_keras.centralized(keras.optimizers.RMSprop(1e-3))
        model.compile(optimizer=opt, loss="mse")
    """
    scaler = keras.optimizers.LossScaleOptimizer
    if isinstance(optimizer, type):
        if issubclass(optimizer, scaler):
            raise TypeError(
                "centralized(LossScaleOptimizer) would centralize nothing (the wrapper hands "
                "the step to its inner optimizer): centralize the inner optimizer's class"
            )
        if issubclass(optimizer, _GCMixin):
            raise ValueError(f"{optimizer.__name__} already applies Gradient Centralization")
        if not issubclass(optimizer, keras.optimizers.Optimizer):
            raise TypeError(f"{optimizer!r} is not a keras.optimizers.Optimizer subclass")
        return _centralized_class(_public_class(optimizer))
    if isinstance(optimizer, _GCMixin):
        raise ValueError(
            f"{type(optimizer).__name__} already applies Gradient Centralization; "
            "create it with the GC options you want instead"
        )
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            f"centralized() takes a keras.optimizers.Optimizer, not {type(optimizer).__name__}"
        )
    if optimizer.built:
        raise ValueError(
            "centralized() needs an optimizer that is not built yet (its state would be "
            "lost): wrap it before model.compile / the first apply"
        )
    if isinstance(optimizer, scaler):
        # The wrapper hands the step to its inner optimizer: that is the one to centralize.
        config = optimizer.get_config()
        config.pop("inner_optimizer")
        inner = centralized(optimizer.inner_optimizer, gc=gc, gc_where=gc_where, gc_axes=gc_axes)
        return scaler(inner, **config)
    cls = _centralized_class(_public_class(type(optimizer)))
    config = optimizer.get_config()
    config.update({"gc": gc, "gc_where": gc_where, "gc_axes": gc_axes})
    lr = getattr(optimizer, "_learning_rate", None)
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) or (
        callable(lr) and not isinstance(lr, keras.Variable)
    ):
        config["learning_rate"] = lr  # the object itself: a lambda does not serialize
    new = cls.from_config(config)
    # Not in the config: which variables weight decay leaves alone.
    for attr in ("_exclude_from_weight_decay", "_exclude_from_weight_decay_pattern"):
        if hasattr(optimizer, attr):
            setattr(new, attr, getattr(optimizer, attr))
    return new


for _name in _BUILTIN:
    _cls = getattr(keras.optimizers, _name, None)
    if isinstance(_cls, type):
        _centralized_class(_cls)
