"""The demo's arms: SGD with momentum and Adam, each without GC, with GC, with GC-conv-only."""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["ARMS", "DEFAULT_HYPERPARAMETERS", "Arm"]

Optim = Literal["sgd", "adam"]
GCMode = Literal["none", "all", "conv"]

_OPTIM_NAMES = {"sgd": "SGD", "adam": "Adam"}
_GC_SUFFIX = {"none": "", "all": " + GC", "conv": " + GC-conv"}
_GC_KEY = {"none": "", "all": "_gc", "conv": "_gcc"}


@dataclasses.dataclass(frozen=True)
class Arm:
    """One optimizer configuration that the demo trains with.

    Parameters
    ----------
    optimizer : {"sgd", "adam"}
        SGD with momentum or Adam (hyperparameters in :data:`DEFAULT_HYPERPARAMETERS`).
    gc : {"none", "all", "conv"}
        No GC; GC on every weight with ``ndim >= 2`` (conv and linear, the paper's GC);
        GC on conv kernels only (``ndim >= 4``, the paper's GCC).

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
            raise ValueError(f"gc={self.gc!r} is invalid; allowed: 'none', 'all', 'conv'")

    @property
    def key(self) -> str:
        """Short identifier used in results.json (``"adam_gc"``)."""
        return self.optimizer + _GC_KEY[self.gc]

    @property
    def name(self) -> str:
        """Human-readable label used in the table and the plots (``"Adam + GC"``)."""
        return _OPTIM_NAMES[self.optimizer] + _GC_SUFFIX[self.gc]

    @property
    def baseline(self) -> Arm:
        """The same optimizer without GC (what this arm is compared against)."""
        return Arm(self.optimizer, "none")


ARMS: tuple[Arm, ...] = tuple(Arm(o, g) for o in ("sgd", "adam") for g in ("none", "all", "conv"))
"""All six arms, in table order."""

# Common settings for small CNNs, not tuned for or against GC; no weight decay, so that
# GC-SGD's invariant (each unit's weight mean stays constant) holds exactly.
DEFAULT_HYPERPARAMETERS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "adam": {"lr": 1e-3},
}
