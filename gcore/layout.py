"""Named weight layouts: where each framework keeps a weight's output axis.

================================  ============  =========================================
layout name                       output axis   weights
================================  ============  =========================================
``"torch"``, ``"equinox"``        ``0``         Linear ``(out, in)``, Conv ``(out, in, k…)``
``"flax"``, ``"haiku"``,          ``-1``        Dense ``(in, out)``, Conv ``(k…, in, out)``
``"keras"``, ``"tensorflow"``
================================  ============  =========================================

PyTorch's ``ConvTranspose`` weights ``(in, out/groups, k…)`` are the exception to
``"torch"``: their output axis is 1 (see the PyTorch plugin's ``param_groups``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

from .centralize import normalize_axis

__all__ = ["LAYOUTS", "output_axis", "unit_size"]

LAYOUTS: dict[str, int] = {
    "torch": 0,
    "equinox": 0,
    "flax": -1,
    "haiku": -1,
    "keras": -1,
    "tensorflow": -1,
}


def output_axis(layout: str | int | None) -> int | None:
    """Return the output axis for a named ``layout`` (ints and ``None`` pass through).

    Raises
    ------
    ValueError
        For an unknown layout name; the message lists the known ones.

    Examples
    --------
    >>> from gcore import output_axis
    >>> output_axis("flax"), output_axis("torch"), output_axis(1)
    (-1, 0, 1)
    """
    if layout is None:
        return None
    if isinstance(layout, str):
        if layout.lower() in LAYOUTS:
            return LAYOUTS[layout.lower()]
    elif not isinstance(layout, bool):
        try:
            return operator.index(layout)  # int, numpy integer, ...
        except TypeError:
            pass
    raise ValueError(
        f"layout={layout!r} is unknown; allowed: {sorted(LAYOUTS)}, an int axis, or None"
    )


def unit_size(shape: Sequence[int], axes: int | Sequence[int], *, groups: int = 1) -> int:
    """Return ``M``, the number of weights each output unit of a ``shape`` tensor owns.

    ``axes`` are the output axes (one int, or several for a kernel with several output
    axes such as Flax's ``DenseGeneral``); every other axis belongs to the unit. With
    ``groups > 1`` the units are split further into that many groups along their other
    axes, as PyTorch's grouped ``ConvTranspose`` weights ``(in, out/groups, k…)`` are.

    A unit of one weight (``M == 1``: ``Linear(1, n)``, a ``(1, 1, D)`` cls token under
    an output-last layout) is its own mean, so GC turns its gradient into zero and the
    parameter never trains: the layouts the plugins derive from a model leave such a
    parameter alone, and this is the one definition they use.

    Raises
    ------
    ValueError
        If an axis is out of range for ``shape``, ``groups`` is not a positive int, or
        the weights of a unit do not split into ``groups``.

    Examples
    --------
    >>> from gcore import unit_size
    >>> unit_size((64, 3, 3, 3), 0)  # torch Conv2d (out, in, kh, kw)
    27
    >>> unit_size((3, 3, 3, 64), -1)  # Flax Conv (kh, kw, in, out)
    27
    >>> unit_size((16, 8, 3), 1, groups=2)  # torch ConvTranspose1d(16, 16, 3, groups=2)
    24
    >>> unit_size((1, 1, 768), -1)  # ViT's cls token under Flax's layout: GC would zero it
    1
    """
    shape = tuple(operator.index(n) for n in shape)
    outs = {normalize_axis(a, len(shape)) for a in ((axes,) if _is_int(axes) else axes)}
    if isinstance(groups, bool) or not _is_int(groups) or groups < 1:
        raise ValueError(f"groups={groups!r}: expected a positive int")
    weights = math.prod(n for d, n in enumerate(shape) if d not in outs)
    if weights % groups:
        raise ValueError(
            f"groups={groups} does not divide the {weights} weights per output axis entry "
            f"of a tensor of shape {shape} with output axes {sorted(outs)}"
        )
    return weights // groups


def _is_int(x: object) -> bool:
    try:
        operator.index(x)
    except TypeError:
        return False
    return True
