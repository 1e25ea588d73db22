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

import operator

__all__ = ["LAYOUTS", "output_axis"]

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
