"""gcore_cupy on a CUDA device: both paths through the conformance driver, and its own API.

Skips (with the reason) where CuPy or a CUDA device is missing; the fused kernels'
arithmetic and their Python step are also checked on the host in
test_cupy_kernels_host.py.
"""

from __future__ import annotations

import dataclasses
import functools

import conformance
import numpy as np
import pytest

import gcore

cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
try:
    _count = cupy.cuda.runtime.getDeviceCount()
except Exception as err:  # no usable driver
    pytest.skip(f"CuPy is installed but no CUDA device is usable: {err}", allow_module_level=True)
if _count == 0:
    pytest.skip("CuPy is installed but no CUDA device is visible", allow_module_level=True)

import gcore_cupy  # noqa: E402

CLASSES = {"SGD": gcore_cupy.SGD, "Adam": gcore_cupy.Adam, "AdamW": gcore_cupy.AdamW}
SHAPES = [(4, 3), (3, 2, 2, 2), (6,), (2, 3, 4)]


class CupyStepper:
    """gcore_cupy on a conformance case (``fused=None``: kernels where they apply)."""

    def __init__(self, case, params, *, fused=None):
        self.dtype = case.dtype
        self.params = [cupy.asarray(p, dtype=case.dtype) for p in params]
        self.opt = CLASSES[case.family](
            self.params, **case.kwargs, gc=case.gc, axes=list(case.axes), fused=fused
        )

    def step(self, grads):
        self.opt.step([cupy.asarray(g, dtype=self.dtype) for g in grads])
        return [cupy.asnumpy(p).astype(np.float64) for p in self.params]


#: CuPy has no bfloat16 dtype.
DTYPES = ("float64", "float32", "float16")


@pytest.mark.parametrize("case", conformance.cases(dtypes=DTYPES), ids=str)
def test_conforms_to_core_rule(case):
    conformance.assert_matches_rule(CupyStepper, case)


@pytest.mark.parametrize(
    "case", conformance.cases(dtypes=("float64", "float32"), layouts="torch"), ids=str
)
def test_core_rule_path_conforms(case):
    conformance.assert_matches_rule(functools.partial(CupyStepper, fused=False), case)


@pytest.mark.parametrize("cls", [gcore_cupy.SGD, gcore_cupy.Adam, gcore_cupy.AdamW])
def test_fused_equals_core_rule_path(cls):
    kwargs = {"lr": 0.05, "momentum": 0.9} if cls is gcore_cupy.SGD else {"lr": 0.01}
    rng = np.random.default_rng(1)
    a = [cupy.asarray(rng.standard_normal(s)) for s in SHAPES]
    b = [p.copy() for p in a]
    fused, plain = cls(a, fused=True, **kwargs), cls(b, fused=False, **kwargs)
    assert fused.fused and not plain.fused
    for _ in range(10):
        grads = [cupy.asarray(rng.standard_normal(s)) for s in SHAPES]
        fused.step(grads)
        plain.step(grads)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(cupy.asnumpy(x), cupy.asnumpy(y), rtol=1e-12, atol=1e-13)


def test_update_gc_cannot_be_forced_fused():
    with pytest.raises(ValueError, match="fused=True"):
        gcore_cupy.Adam([cupy.ones((2, 2))], gc=gcore.GC(where="update"), fused=True)
    with pytest.raises(TypeError, match="fused"):
        gcore_cupy.SGD([cupy.ones((2, 2))], fused="yes")


def test_rejects_numpy_arrays_duplicates_and_reports_devices():
    with pytest.raises(TypeError, match=r"cupy\.ndarray"):
        gcore_cupy.SGD([np.ones((2, 2))], lr=0.1)
    w = cupy.ones((2, 2))
    with pytest.raises(ValueError, match=r"params\[1\] is params\[0\]"):
        gcore_cupy.SGD([w, w], lr=0.1)
    assert gcore_cupy.devices() and gcore_cupy.devices()[0].startswith("cuda:0")


def test_float16_adam_zero_gradient_gives_no_nan():
    w = cupy.zeros((2, 3), cupy.float16)
    gcore_cupy.Adam([w], lr=1e-2).step([cupy.asarray([[1, 1, 1], [1, 2, 3]], cupy.float16)])
    assert bool(cupy.isfinite(w).all())


def test_state_dict_round_trip():
    rng = np.random.default_rng(2)
    a = [cupy.asarray(rng.standard_normal(s)) for s in SHAPES]
    opt = gcore_cupy.Adam(a, amsgrad=True)
    opt.step([cupy.ones(s) for s in SHAPES])
    saved = opt.state_dict()
    b = [p.copy() for p in a]
    opt2 = gcore_cupy.Adam(b, lr=0.5)
    opt2.load_state_dict(saved)
    assert dataclasses.asdict(opt2.rule) == dataclasses.asdict(opt.rule)
    g = [cupy.asarray(rng.standard_normal(s)) for s in SHAPES]
    opt.step(g)
    opt2.step(g)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(cupy.asnumpy(x), cupy.asnumpy(y))
