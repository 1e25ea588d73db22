"""Compiled CPU kernels: GC-SGD and GC-Adam/AdamW at the memory traffic of torch's fused ones.

The fused path's default on the CPU. ``csrc/gc_kernels.cpp`` reads each output unit's row
once for its mean and updates it while it is still in cache, so the centralized gradient
never travels to main memory. Units that are not rows (transformers' ``Conv1D`` weights
``(in, out)``, ConvTranspose, stacked experts stored ``(experts, in, out)``) take one pass
for their means and one for the update. The per-element arithmetic is
``gcore/csrc/gc_update.h``, shared with the CuPy kernels.

The kernels are compiled on first use with torch's C++ extension tooling (a C++ compiler
and ninja; about a minute, one line printed while it builds) and cached on disk under a
name keyed by the torch version, the compiler and the CPU, as DeepSpeed builds its ops.
``GCORE_TORCH_KERNELS=0`` opts out (the pure-PyTorch fused path is used); where the build
fails the same fallback is used after one ``RuntimeWarning``, unless
``GCORE_TORCH_KERNELS_STRICT=1`` (set by the test session), which makes it an error.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["enabled", "get", "load_kernels", "loaded", "usable"]

_SOURCE = Path(__file__).parent / "csrc" / "gc_kernels.cpp"
_state: dict[str, Any] = {
    "module": None,
    "error": None,
    "build_seconds": None,  # wall clock of the first-use build (None: loaded from cache)
    "build_cpu_seconds": None,  # CPU time of the compiler processes
}


def _header_dir() -> Path:
    import gcore

    return Path(gcore.__file__).parent / "csrc"


def enabled() -> bool:
    """False when ``GCORE_TORCH_KERNELS=0`` opts out of the compiled kernels."""
    return os.environ.get("GCORE_TORCH_KERNELS", "1").strip().lower() not in ("0", "false", "no")


def _strict() -> bool:
    return os.environ.get("GCORE_TORCH_KERNELS_STRICT", "0").strip() not in ("", "0")


def _compiler_id() -> str:
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run(
            [cxx, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        return cxx + out.stdout.splitlines()[0] if out.stdout else cxx
    except (OSError, subprocess.SubprocessError):
        return cxx


#: ``-ffp-contract=off``: the mean's sum and the update each compute ``g + l2 * p``; fused
#: into an FMA in one and not the other, they would round apart, and a row whose exact
#: centralized gradient is 0 (a row of one element) would keep a residue of an ulp,
#: which Adam's normalization turns into a step of ``lr``. Rounded as written, both equal
#: the core rule's arithmetic.
_CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp"]


@functools.lru_cache(maxsize=1)
def _fingerprint() -> str:
    """Hash of the torch version, the compiler, the CPU (model and flags: the build uses
    ``-march=native``), the compiler flags and the sources, so that a shared cache (an NFS
    home directory) never hands one machine's build to another."""
    import torch

    info = [torch.__version__, _compiler_id(), platform.machine(), platform.processor()]
    info += _CFLAGS
    try:
        with open("/proc/cpuinfo") as f:
            info += [ln for ln in f if ln.startswith(("model name", "flags", "Features"))][:2]
    except OSError:
        pass
    for src in (_SOURCE, _header_dir() / "gc_update.h"):
        info.append(src.read_text())
    return hashlib.sha1("\n".join(info).encode()).hexdigest()[:12]


def _children_cpu() -> float:
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
    except (ImportError, OSError):  # pragma: no cover - not POSIX
        return 0.0
    return r.ru_utime + r.ru_stime


def get() -> Any:
    """The loaded kernel module, or ``None`` (not loaded, or failed to build)."""
    return _state["module"]


def loaded() -> bool:
    """Whether the kernels are loaded and not opted out of (no build is attempted)."""
    return _state["module"] is not None and enabled()


def load_kernels(build: bool = True, *, verbose: bool = False) -> bool:
    """Compile (or load from the on-disk cache) the CPU kernels.

    The fused path calls this on its first CPU step, so calling it by hand is only needed
    to build ahead of time (e.g. before timing) or to check that the build works.

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
        ``False``; the reason is in the ``RuntimeWarning`` it issues (an error instead when
        ``GCORE_TORCH_KERNELS_STRICT=1``). Also ``False`` with ``GCORE_TORCH_KERNELS=0``.

    Examples
    --------
    >>> import gcore_torch
    >>> gcore_torch.load_kernels(build=False) in (True, False)
    True
    """
    if _state["module"] is not None or not build:
        return _state["module"] is not None
    if not enabled() or _state["error"] is not None:
        return False
    import warnings

    from torch.utils import cpp_extension

    name = f"gcore_torch_kernels_{_fingerprint()}"
    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    cached = any(build_dir.glob(f"{name}*.so"))
    if not cached:
        print(
            f"gcore_torch: compiling the CPU kernels once (about a minute), cache {build_dir}",
            file=sys.stderr,
            flush=True,
        )
    start = time.perf_counter()
    cpu_start = _children_cpu()
    try:
        module = cpp_extension.load(
            name=name,
            sources=[str(_SOURCE)],
            extra_include_paths=[str(_header_dir())],
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=verbose,
        )
    except Exception as err:  # no compiler / ninja / headers: keep the torch path
        _state["error"] = f"{type(err).__name__}: {err}"
        if _strict():
            raise RuntimeError(
                "gcore_torch: building the C++ kernels failed and GCORE_TORCH_KERNELS_STRICT "
                f"is set: {_state['error']}"
            ) from err
        warnings.warn(
            "gcore_torch: building the C++ kernels failed, the fused path uses torch's "
            f"kernels instead ({_state['error'].splitlines()[0]}); set "
            "GCORE_TORCH_KERNELS=0 to skip the attempt",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    if not cached:
        _state["build_seconds"] = time.perf_counter() - start
        _state["build_cpu_seconds"] = _children_cpu() - cpu_start
    _state["module"] = module
    return True


def usable(t: Any) -> bool:
    """Whether the kernels can update ``t`` (dense CPU float32/float64 rows), building
    them on first use."""
    import torch

    if not (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and enabled()):
        return False
    return _state["module"] is not None or load_kernels()
