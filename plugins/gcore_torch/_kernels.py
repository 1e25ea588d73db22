"""Optional compiled CPU kernels: row-blocked GC-Adam/AdamW and GC-SGD in one pass.

torch's fused kernels cannot subtract a per-row mean, so the pure-PyTorch fused path
centralizes each block of rows into a cached scratch buffer before calling them (about
1.5x torch's fused Adam on CPU). The C++ kernels in ``csrc/gc_kernels.cpp`` read each
output unit's row once for its mean and update it while it is still in cache, which
brings the step to about 1.05x. They are compiled on the machine with torch's C++
extension tooling (a C++ compiler and ninja; about a minute the first time, cached by
torch afterwards), so they are opt-in: call :func:`load_kernels` once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["get", "load_kernels", "usable"]

_SOURCE = Path(__file__).parent / "csrc" / "gc_kernels.cpp"
_state: dict[str, Any] = {"module": None, "error": None}


def _cpu_fingerprint() -> str:
    """Short hash of the CPU model and its flags.

    The build uses ``-march=native`` and torch caches builds by name, sources and flags,
    not by CPU: the fingerprint in the name keeps a shared cache (an NFS home directory)
    from handing one CPU's build to another that lacks its instructions.
    """
    import hashlib
    import platform

    info = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            info += "".join(
                line for line in f if line.startswith(("model name", "flags", "Features"))
            )
    except OSError:
        pass
    return hashlib.sha1(info.encode()).hexdigest()[:10]


def get() -> Any:
    """The loaded kernel module, or ``None`` (not loaded, or failed to build)."""
    return _state["module"]


def load_kernels(build: bool = True, *, verbose: bool = False) -> bool:
    """Compile (or load from torch's extension cache) the row-blocked CPU kernels.

    Once loaded, the ``fused`` path of :class:`gcore_torch.SGD` / ``Adam`` / ``AdamW``
    uses them for centralized float32/float64 CPU weights (contiguous, output axis 0,
    ``gc_where="gradient"``); everything else keeps the pure-PyTorch path.

    Parameters
    ----------
    build : bool, default True
        ``False`` only reports whether the kernels are already loaded.
    verbose : bool, default False
        Show the compiler's output.

    Returns
    -------
    bool
        Whether the kernels are loaded. A failed build (no C++ compiler, no ninja) returns
        ``False``; the reason is in the ``RuntimeWarning`` it issues.

    Examples
    --------
    >>> import gcore_torch
    >>> gcore_torch.load_kernels(build=False) in (True, False)
    True
    """
    if _state["module"] is not None or not build:
        return _state["module"] is not None
    import warnings

    from torch.utils import cpp_extension

    try:
        module = cpp_extension.load(
            name=f"gcore_torch_gc_kernels_{_cpu_fingerprint()}",
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=verbose,
        )
    except Exception as err:  # no compiler / ninja / headers: keep the torch path
        _state["error"] = f"{type(err).__name__}: {err}"
        warnings.warn(
            "gcore_torch.load_kernels: building the C++ kernels failed, the fused path "
            f"keeps using torch's kernels ({_state['error'].splitlines()[0]})",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    _state["module"] = module
    return True


def usable(t: Any) -> bool:
    """Whether the loaded kernels can update parameter ``t`` (dense CPU float32/64)."""
    import torch

    return (
        _state["module"] is not None
        and t.device.type == "cpu"
        and t.dtype in (torch.float32, torch.float64)
        and t.is_contiguous()
    )
