"""Output axes of Keras variables (channels-last kernels), by layer type or by path.

=================================================  ==========================  ===========
variable                                           kernel shape                output axes
=================================================  ==========================  ===========
``Dense`` / ``Conv1D/2D/3D`` kernel                 ``(…, in, out)``            ``(-1,)``
``EinsumDense`` kernel                             from the equation           kernel axes
                                                                               kept in the
                                                                               output
``Conv1D/2D/3DTranspose`` kernel                    ``(…, out, in)``            ``(-2,)``
``DepthwiseConv1D/2D`` kernel                       ``(…, in, multiplier)``     ``(-2, -1)``
``SeparableConv1D/2D`` ``depthwise_kernel``         ``(…, in, multiplier)``     ``(-2, -1)``
``SeparableConv1D/2D`` ``pointwise_kernel``         ``(1…, in·mult, out)``      ``(-1,)``
``MultiHeadAttention`` query/key/value kernels     ``(in, heads, head_dim)``   ``(-2, -1)``
biases, norm scales/offsets, ``embeddings``,       any                         ``None``
Embedding's LoRA tables, PReLU's ``alpha``
=================================================  ==========================  ===========

A depthwise output channel ``c·multiplier + d`` is computed from the spatial taps
``kernel[..., c, d]`` alone, so its unit is that slice: two output axes, centralized over
the taps (9 weights for a 3×3 kernel).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from gcore import unit_size

__all__ = ["Axes", "GCAxes", "layout", "output_axes_for"]

#: Output axes of one variable: a tuple of axes (negative counts from the end), or
#: ``None`` (left alone).
Axes = tuple[int, ...] | None
#: ``gc_axes`` option: ``{regex on variable.path: int | tuple[int, ...] | None}``.
GCAxes = Mapping[str, Any]

# Embedding's LoRA tables are looked up like the embeddings; PReLU's alpha holds
# per-element slopes: none is a kernel of output units.
_UNTOUCHED_NAMES = {
    "bias", "gamma", "beta", "embeddings", "moving_mean", "moving_variance",
    "lora_embeddings_a", "lora_embeddings_b", "alpha",
}  # fmt: skip
#: MultiHeadAttention's query/key/value EinsumDense kernels (in, heads, head_dim): a unit
#: is one (head, feature) pair.
_ATTENTION_QKV = {"query", "key", "value"}
_TRANSPOSE = re.compile(r"conv\dd_transpose|conv_transpose|deconv", re.IGNORECASE)
# keras.applications name their depthwise convolutions "conv_dw_1" (MobileNet),
# "block1a_dwconv" (EfficientNet), "expanded_conv_depthwise" (MobileNetV2/V3).
_DEPTHWISE = re.compile(r"depthwise|dw_?conv|conv_?dw(?![a-z])", re.IGNORECASE)
# Names that leave the layout open: an up-convolution is a Conv2DTranspose or a Conv2D
# after UpSampling2D; an EinsumDense's kernel axes depend on its equation.
_UNSURE = re.compile(r"(^|_)up_?conv|einsum", re.IGNORECASE)
# Convolutions by name: Keras's defaults, and keras.applications' 1x1 ones that do not
# say "conv" (EfficientNet's squeeze-excitation "block1a_se_reduce", MobileNetV3's
# "logits").
_CONV = re.compile(r"conv|(^|_)se_(reduce|expand)$|^logits$", re.IGNORECASE)


def is_axis(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def normalize_axes(value: Any, ndim: int, where: str) -> Axes:
    """``int | tuple | None`` → sorted non-negative tuple (or ``None``); validated."""
    if value is None:
        return None
    items = (value,) if is_axis(value) else value
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(
            f"{where}: output axes {value!r} must be an int, a tuple of ints or None"
        ) from None
    out = []
    for a in items:
        if not is_axis(a):
            raise TypeError(f"{where}: output axis {a!r} is not an int")
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{where}: output axis {a} is out of range for a variable of ndim {ndim}"
            )
        out.append(a % ndim)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"{where}: output axes {value!r} must be non-empty and distinct")
    return tuple(sorted(out))


def output_axes_for(path: str, shape: tuple[int, ...], overrides: GCAxes | None = None) -> Axes:
    """The output axes of the variable at ``path`` (``"model/conv2d/kernel"``).

    ``overrides`` (``gc_axes``) is searched first: the first regular expression (in
    mapping order) that ``re.search`` finds in ``path`` decides. Otherwise the layer is
    recognised from its default name in the path (``conv2d_transpose``,
    ``depthwise_conv2d``, ``separable_conv2d``, ...); for layers given custom names, pass
    ``gc_axes=gcore_keras.layout(model)``, which reads the layer types.

    Examples
    --------
    >>> from gcore_keras import output_axes_for
    >>> output_axes_for("seq/dense/kernel", (8, 4))
    (1,)
    >>> output_axes_for("seq/conv2d_transpose/kernel", (3, 3, 16, 8))
    (2,)
    >>> output_axes_for("seq/depthwise_conv2d/kernel", (3, 3, 8, 2))
    (2, 3)
    >>> output_axes_for("seq/embedding/embeddings", (100, 16)) is None
    True
    >>> output_axes_for("seq/dense/kernel", (8, 4), {"dense": None}) is None
    True
    """
    ndim = len(shape)
    if overrides:
        for pattern, value in overrides.items():
            if re.search(pattern, path):
                return normalize_axes(value, ndim, f"gc_axes[{pattern!r}] for {path!r}")
    return _trainable(_by_name(path, ndim)[0], shape)


def _trainable(axes: Axes, shape: tuple[int, ...]) -> Axes:
    """``axes``, or ``None`` where they leave units of one weight (M = 1, a ``Dense``
    of one input): GC would zero the gradient and the layer would never train, so the
    name and type rules leave such a kernel alone (``gc_axes`` is taken as given)."""
    return None if axes is not None and unit_size(shape, axes) == 1 else axes


def _by_name(path: str, ndim: int, paths: Collection[str] | None = None) -> tuple[Axes, bool]:
    """The name rules: the axes of the variable at ``path``, and whether the names say
    them (``False``: a kernel of 3 or more axes of a layer the rules do not recognise,
    an ``EinsumDense`` or an up-convolution, which get the last axis by guess)."""
    if ndim < 2:
        return None, True
    parts = path.split("/")
    name = parts[-1]
    layer = parts[-2] if len(parts) > 1 else ""
    if name in _UNTOUCHED_NAMES:
        return None, True
    if name == "depthwise_kernel" or (_DEPTHWISE.search(layer) and name == "kernel" and ndim >= 3):
        return (ndim - 2, ndim - 1), True
    if _TRANSPOSE.search(layer) and name == "kernel":
        return (ndim - 2,), True
    if layer in _ATTENTION_QKV and name == "kernel" and ndim == 3:
        # MultiHeadAttention's, unless no attention_output kernel is beside it (a
        # Conv1D(name="query"), or an attention whose output projection is frozen): then
        # only a guess, which warns
        output = "/".join([*parts[:-2], "attention_output", "kernel"])
        return (1, 2), paths is None or output in paths
    if layer == "attention_output" and name == "kernel" and ndim >= 3:
        # (heads, head_dim, *output_shape): every axis of the output shape
        return tuple(range(2, ndim)), True
    # The last axis: Dense and Conv by their names; a variable of no layer by the
    # documented convention.
    sure = not _UNSURE.search(layer) and (ndim < 3 or len(parts) < 2 or bool(_CONV.search(layer)))
    return (ndim - 1,), sure


def guessed(path: str, shape: tuple[int, ...], paths: Collection[str] | None = None) -> bool:
    """Whether the name rules of :func:`output_axes_for` only guess at a variable: a
    kernel of a layer they do not recognise (an ``EinsumDense``, an up-convolution, a
    custom layer's kernel of 3 or more axes), which gets the last axis, or a ``query`` /
    ``key`` / ``value`` kernel with no ``attention_output`` kernel among ``paths`` (the
    variables an optimizer updates: a ``Conv1D(name="query")``, or an attention whose
    output projection is frozen), which gets MultiHeadAttention's axes."""
    return not _by_name(path, len(shape), paths)[1]


def _einsum_output_axes(equation: str, ndim: int) -> Axes:
    """Kernel axes that survive into the output of ``EinsumDense(equation)``."""
    inputs, output = equation.replace(" ", "").split("->")
    kernel = inputs.split(",")[1]
    if "." in kernel or len(kernel) != ndim:
        return (ndim - 1,)
    axes = tuple(i for i, c in enumerate(kernel) if c in output)
    return axes or None


def _layer_axes(layer: Any, var: Any) -> Axes:
    from keras import layers

    ndim = len(var.shape)
    name = var.path.split("/")[-1]
    if ndim < 2 or name in _UNTOUCHED_NAMES or isinstance(layer, (layers.Embedding, layers.PReLU)):
        return None
    transpose = tuple(
        getattr(layers, n)
        for n in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
        if hasattr(layers, n)
    )
    depthwise = tuple(
        getattr(layers, n) for n in ("DepthwiseConv1D", "DepthwiseConv2D") if hasattr(layers, n)
    )
    if isinstance(layer, transpose) and name == "kernel":
        return (ndim - 2,)
    if (isinstance(layer, depthwise) and name == "kernel") or name == "depthwise_kernel":
        return (ndim - 2, ndim - 1)
    if isinstance(layer, layers.EinsumDense) and name == "kernel":
        return _einsum_output_axes(layer.equation, ndim)
    return (ndim - 1,)


def layout(model: Any) -> dict[str, Axes]:
    """Output axes of every trainable variable of a built ``model``, by layer type.

    Returns ``{"(^|/)<escaped layer/variable path>$": axes}`` (``axes`` a tuple, or
    ``None`` for variables left alone), ready to pass as ``gc_axes``; layers with custom
    names are recognised by their class. A pattern holds the layer's and the variable's
    names only (``up/kernel``, not ``model/decoder/up/kernel``), because a model loaded
    with ``keras.models.load_model`` names its variables without the enclosing models'
    names; where two variables of different axes share those, their patterns keep the
    whole path (without the model's own name), which a nested model loses on loading.
    Variables of layers it does not know (a custom layer's ``kernel``) get the default
    rule, the last axis for ``ndim >= 2``.

    Examples
    --------
    .. code-block:: python

        model = keras.Sequential([keras.Input((8, 8, 3)),
                                  keras.layers.Conv2DTranspose(4, 3, name="up")])
        gcore_keras.layout(model)
        # {'(^|/)up/kernel$': (1,), '(^|/)up/bias$': None}
        opt = gcore_keras.SGD(0.1, gc_axes=gcore_keras.layout(model))
    """
    if not getattr(model, "built", False):
        raise ValueError(
            "layout(model) needs a built model (its variables exist): call the model on "
            "data or build it (keras.Input in Sequential) first"
        )
    prefix = f"{model.name}/"
    found: dict[str, Axes] = {}  # path without the model's name -> axes
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for var in getattr(layer, "_trainable_variables", []):
            axes = _trainable(_layer_axes(layer, var), tuple(var.shape))
            found.setdefault(var.path.removeprefix(prefix), axes)
    for var in model.trainable_variables:  # variables held outside any layer list
        found.setdefault(
            var.path.removeprefix(prefix), output_axes_for(var.path, tuple(var.shape))
        )

    # A loaded model names a nested model's variables without the outer names
    # ("decoder/up/kernel" becomes "up/kernel"): the patterns keep only "layer/variable",
    # unless two variables of different axes share it.
    def tail(path: str) -> str:
        return "/".join(path.split("/")[-2:])

    axes_of_tail: dict[str, set[Axes]] = {}
    for path, axes in found.items():
        axes_of_tail.setdefault(tail(path), set()).add(axes)
    out: dict[str, Axes] = {}
    # Longest first: the first pattern that matches decides, and a shorter one ("up/kernel",
    # "kernel") also matches the paths that end like it.
    for path, axes in sorted(found.items(), key=lambda item: -item[0].count("/")):
        name = tail(path) if len(axes_of_tail[tail(path)]) == 1 else path
        out.setdefault("(^|/)" + re.escape(name) + "$", axes)
    return out
