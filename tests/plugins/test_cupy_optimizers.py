"""gcore_cupy on a CUDA device: fused kernels step by step against gcore's rules.

Skips (with the reason) where CuPy or a CUDA device is missing; the kernels' arithmetic
is also checked on the host in test_cupy_kernels_host.py.
"""

from __future__ import annotations

import dataclasses

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

SHAPES = [(4, 3), (3, 2, 2, 2), (6,), (2, 3, 4)]
AXES = [0, -1, None, 1]
CASES = [
    (gcore_cupy.SGD, {"lr": 0.05}),
    (gcore_cupy.SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1}),
    (gcore_cupy.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "maximize": True}),
    (gcore_cupy.SGD, {"lr": 0.05, "momentum": 0.9, "gc": None}),
    (gcore_cupy.SGD, {"lr": 0.05, "momentum": 0.9, "gc": gcore.GC(where="update")}),
    (gcore_cupy.Adam, {"lr": 0.01}),
    (gcore_cupy.Adam, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1, "maximize": True}),
    (gcore_cupy.Adam, {"lr": 0.01, "gc": gcore.GC(conv_only=True)}),
    (gcore_cupy.AdamW, {"lr": 0.01, "weight_decay": 0.2}),
    (gcore_cupy.AdamW, {"lr": 0.01, "amsgrad": True, "gc": gcore.GC(where="update")}),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("cls", "kwargs"), CASES)
def test_step_equals_core_rule(cls, kwargs, dtype):
    rng = np.random.default_rng(0)
    params = [cupy.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
    expected = [p.copy() for p in params]
    opt = cls(params, axes=AXES, **kwargs)
    states = [opt.rule_for(i).init(p) for i, p in enumerate(expected)]
    tol = 1e-12 if dtype == "float64" else 1e-6
    for t in range(20):
        grads = [cupy.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
        opt.step(grads)
        for i, g in enumerate(grads):
            updates, states[i] = opt.rule_for(i).update(g, states[i], expected[i])
            expected[i] = expected[i] + updates
            want = cupy.asnumpy(expected[i])
            np.testing.assert_allclose(
                cupy.asnumpy(params[i]),
                want,
                rtol=tol,
                atol=tol * np.abs(want).max(),
                err_msg=f"param {i} step {t + 1}",
            )


@pytest.mark.parametrize("cls", [gcore_cupy.SGD, gcore_cupy.Adam, gcore_cupy.AdamW])
def test_fused_equals_ufunc_path(cls):
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
    with pytest.raises(ValueError, match="where"):
        gcore_cupy.Adam([cupy.ones((2, 2))], gc=gcore.GC(where="update"), fused=True)


def test_rejects_numpy_arrays_and_reports_devices():
    with pytest.raises(TypeError, match=r"cupy\.ndarray"):
        gcore_cupy.SGD([np.ones((2, 2))], lr=0.1)
    assert gcore_cupy.devices() and gcore_cupy.devices()[0].startswith("cuda:0")


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
