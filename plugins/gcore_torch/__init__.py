"""gcore_torch: Gradient Centralization for PyTorch.

Drop-in ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` with GC (:class:`SGD`, :class:`Adam`,
:class:`AdamW`), GC for any optimizer (:func:`apply_gc`), by hand (:func:`centralize_`),
and per-layer output axes from a model (:func:`param_groups`). The default (fused) path
compiles CPU kernels on first use (:func:`load_kernels`; ``GCORE_TORCH_KERNELS=0``
opts out).

>>> import torch, gcore_torch
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> opt = gcore_torch.AdamW(gcore_torch.param_groups(model), lr=1e-3)
>>> model(torch.randn(16, 4)).square().mean().backward()
>>> opt.step()
"""

try:
    import torch
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"gcore_torch needs PyTorch: pip install 'gradient-centralization[torch]' ({err})"
    ) from err

from ._adam import Adam, AdamW
from ._api import (
    DEFAULT_EXCLUDE,
    DEFAULT_NO_DECAY,
    apply_gc,
    centralize_,
    centralize_grads_,
    param_groups,
)
from ._kernels import load_kernels
from ._layouts import Layout, layouts, register_layout
from ._sgd import SGD

FRAMEWORK = "torch"

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_NO_DECAY",
    "FRAMEWORK",
    "SGD",
    "Adam",
    "AdamW",
    "Layout",
    "apply_gc",
    "centralize_",
    "centralize_grads_",
    "devices",
    "layouts",
    "load_kernels",
    "param_groups",
    "register_layout",
]


def devices() -> list[str]:
    """Devices torch can compute on here: ``"cpu"`` plus each visible CUDA/MPS device.

    Examples
    --------
    >>> import gcore_torch
    >>> "cpu" in gcore_torch.devices()
    True
    """
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found
