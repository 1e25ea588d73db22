"""The demo's arms: SGD with momentum and Adam, each without GC, with GC, with GC-conv-only;
and Adam with GC applied to its update (``gc_where="update"``)."""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["ARMS", "DEFAULT_HYPERPARAMETERS", "Arm"]

Optim = Literal["sgd", "adam"]
GCMode = Literal["none", "all", "conv", "update"]

_OPTIM_NAMES = {"sgd": "SGD", "adam": "Adam"}
_GC_SUFFIX = {"none": "", "all": " + GC", "conv": " + GC-conv", "update": " + GC (update)"}
_GC_KEY = {"none": "", "all": "_gc", "conv": "_gcc", "update": "_gcu"}


@dataclasses.dataclass(frozen=True)
class Arm:
    """One optimizer configuration that the demo trains with.

    Parameters
    ----------
    optimizer : {"sgd", "adam"}
        SGD with momentum or Adam (hyperparameters in :data:`DEFAULT_HYPERPARAMETERS`).
    gc : {"none", "all", "conv", "update"}
        No GC; GC on every weight with ``ndim >= 2`` (conv and linear, the paper's GC);
        GC on conv kernels only (``ndim >= 4``, the paper's GCC); GC of the *update* of
        every weight with ``ndim >= 2`` (``gc_where="update"``, the paper code's
        ``Adam_GC2``), which keeps each unit's weight mean fixed under Adam too.

    Examples
    --------
    >>> from gcore_demo import Arm
    >>> arm = Arm("sgd", "conv")
    >>> arm.key, arm.name
    ('sgd_gcc', 'SGD + GC-conv')
    """

    optimizer: Optim
    gc: GCMode

    def __post_init__(self) -> None:
        if self.optimizer not in _OPTIM_NAMES:
            raise ValueError(f"optimizer={self.optimizer!r} is invalid; allowed: 'sgd', 'adam'")
        if self.gc not in _GC_SUFFIX:
            raise ValueError(
                f"gc={self.gc!r} is invalid; allowed: 'none', 'all', 'conv', 'update'"
            )

    @property
    def key(self) -> str:
        """Short identifier used in results.json (``"adam_gc"``)."""
        return self.optimizer + _GC_KEY[self.gc]

    @property
    def name(self) -> str:
        """Human-readable label used in the table and the plots (``"Adam + GC"``)."""
        return _OPTIM_NAMES[self.optimizer] + _GC_SUFFIX[self.gc]

    @property
    def min_ndim(self) -> int | None:
        """Smallest ``ndim`` this arm centralizes (``None``: no GC)."""
        return {"none": None, "all": 2, "conv": 4, "update": 2}[self.gc]

    @property
    def baseline(self) -> Arm:
        """The same optimizer without GC (what this arm is compared against)."""
        return Arm(self.optimizer, "none")


ARMS: tuple[Arm, ...] = (
    *(Arm("sgd", g) for g in ("none", "all", "conv")),
    *(Arm("adam", g) for g in ("none", "all", "conv", "update")),
)
"""All seven arms, in table order. (SGD has no "update" arm: with momentum and L2 decay
added before GC, centralizing the update equals centralizing the gradient.)"""

# Common settings for small CNNs, not tuned for or against GC; no weight decay by default
# (``--weight-decay`` adds L2 decay before GC, as the paper does, which keeps GC-SGD's
# invariant: each unit's weight mean stays constant).
DEFAULT_HYPERPARAMETERS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "adam": {"lr": 1e-3},
}
