"""The fused CuPy kernels' arithmetic, checked without a GPU.

gcore_cupy keeps its per-element update as C++ templates; here the same source is
compiled for the host (g++) and driven step by step against gcore's rules, and compiled
for the device with nvcc where that is installed. The GPU runs themselves are in
test_cupy_optimizers.py.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import gcore
from gcore import reduction_axes

KERNELS = Path(__file__).parents[2] / "plugins" / "gcore_cupy" / "_kernels.py"


def _kernel_source() -> str:
    # Load the source module by path: importing the gcore_cupy package needs CuPy.
    spec = importlib.util.spec_from_file_location("_gcore_cupy_kernels", KERNELS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.HEADER


HOST_WRAPPERS = r"""
extern "C" {
#define SGD(NAME, T) \
void NAME(long n, const T* g, const T* mean, T* p, T* buf, int momentum_on, int first, \
          int nesterov, T sgn, T l2, T lr, T momentum, T dscale) { \
    for (long i = 0; i < n; ++i) \
        gc_sgd<T>(g[i], mean[i], p[i], buf[i], momentum_on, first, nesterov, sgn, l2, lr, \
                  momentum, dscale); }
#define ADAM(NAME, T) \
void NAME(long n, const T* g, const T* mean, T* p, T* m, T* v, T* vmax, int amsgrad, T sgn, \
          T l2, T omb1, T b2, T omb2, T step_size, T bc2_sqrt, T eps, T decay) { \
    for (long i = 0; i < n; ++i) \
        gc_adam<T>(g[i], mean[i], p[i], m[i], v[i], vmax[i], amsgrad, sgn, l2, omb1, b2, \
                   omb2, step_size, bc2_sqrt, eps, decay); }
SGD(sgd_f64, double) SGD(sgd_f32, float) ADAM(adam_f64, double) ADAM(adam_f32, float)
}
"""


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++) to compile the kernel source")
    d = tmp_path_factory.mktemp("kernels")
    src = d / "kernels.cpp"
    src.write_text("#define GC_HD\n" + _kernel_source() + HOST_WRAPPERS)
    lib = d / "libkernels.so"
    # -ffp-contract=off: no FMA, so the host result rounds like the Python rules do.
    subprocess.run(
        [cxx, "-O2", "-ffp-contract=off", "-shared", "-fPIC", str(src), "-o", str(lib)],
        check=True,
        capture_output=True,
    )
    return ctypes.CDLL(str(lib))


def _ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def _means(g, p, gc, axis, sgn, l2):
    if gc is None or p.ndim < gc.min_ndim:
        return np.zeros_like(p)
    eff = sgn * g + l2 * p
    m = eff.mean(axis=reduction_axes(p.ndim, axis), keepdims=True, dtype=p.dtype)
    return np.ascontiguousarray(np.broadcast_to(m, p.shape))


def _host_sgd(lib, rule, p, g, buf, step, axis):
    sgn = -1.0 if rule.maximize else 1.0
    T = ctypes.c_double if p.dtype == np.float64 else ctypes.c_float
    fn = lib.sgd_f64 if p.dtype == np.float64 else lib.sgd_f32
    mean = _means(g, p, rule.gc, axis, sgn, rule.weight_decay)
    fn(
        ctypes.c_long(p.size),
        _ptr(g),
        _ptr(mean),
        _ptr(p),
        _ptr(buf),
        int(rule.momentum != 0),
        int(step == 0),
        int(rule.nesterov),
        T(sgn),
        T(rule.weight_decay),
        T(rule.lr),
        T(rule.momentum),
        T(1.0 - rule.dampening),
    )


def _host_adam(lib, rule, p, g, m, v, vmax, step, axis):
    import gcore_numpy

    sgn = -1.0 if rule.maximize else 1.0
    decoupled = isinstance(rule, gcore.AdamW)
    l2 = 0.0 if decoupled else rule.weight_decay
    T = ctypes.c_double if p.dtype == np.float64 else ctypes.c_float
    fn = lib.adam_f64 if p.dtype == np.float64 else lib.adam_f32
    mean = _means(g, p, rule.gc, axis, sgn, l2)
    b1, b2 = rule.betas
    step_size, bc2_sqrt = gcore_numpy.Adam._bias_corrections(rule, p.dtype, step + 1)
    decay = 1.0 - rule.lr * rule.weight_decay if decoupled else 1.0
    fn(
        ctypes.c_long(p.size),
        _ptr(g),
        _ptr(mean),
        _ptr(p),
        _ptr(m),
        _ptr(v),
        _ptr(vmax),
        int(rule.amsgrad),
        T(sgn),
        T(l2),
        T(1.0 - b1),
        T(b2),
        T(1.0 - b2),
        T(step_size),
        T(bc2_sqrt),
        T(rule.eps),
        T(decay),
    )


RULES = {
    "sgd": gcore.SGD(lr=0.05),
    "sgd_momentum": gcore.SGD(lr=0.05, momentum=0.9),
    "sgd_dampening_decay": gcore.SGD(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.1),
    "sgd_nesterov_max": gcore.SGD(lr=0.05, momentum=0.8, nesterov=True, maximize=True),
    "sgd_no_gc": gcore.SGD(lr=0.05, momentum=0.9, gc=None),
    "sgd_conv_only": gcore.SGD(lr=0.05, momentum=0.9, gc=gcore.GC(conv_only=True)),
    "adam": gcore.Adam(lr=0.01),
    "adam_amsgrad_decay": gcore.Adam(lr=0.01, amsgrad=True, weight_decay=0.1),
    "adam_max_betas": gcore.Adam(lr=0.01, maximize=True, betas=(0.5, 0.9), eps=1e-4),
    "adam_no_gc": gcore.Adam(lr=0.01, gc=None),
    "adamw": gcore.AdamW(lr=0.01, weight_decay=0.2),
    "adamw_amsgrad": gcore.AdamW(lr=0.01, amsgrad=True, gc=gcore.GC(conv_only=True)),
}
SHAPES = [((4, 3), 0), ((3, 2, 2, 2), 0), ((6,), 0), ((2, 3, 4), -1)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", RULES)
def test_host_kernel_equals_rule(host_lib, name, dtype):
    rule = RULES[name]
    rng = np.random.default_rng(0)
    for shape, axis in SHAPES:
        r = (
            rule
            if rule.gc is None
            else dataclasses.replace(rule, gc=dataclasses.replace(rule.gc, axis=axis))
        )
        p = rng.standard_normal(shape).astype(dtype)
        expected = p.copy()
        state = r.init(expected)
        bufs = [np.zeros_like(p) for _ in range(3)]
        for step in range(20):
            g = rng.standard_normal(shape).astype(dtype)
            if isinstance(r, gcore.SGD):
                _host_sgd(host_lib, r, p, g, bufs[0], step, axis)
            else:
                _host_adam(host_lib, r, p, g, *bufs, step, axis)
            updates, state = r.update(g, state, expected)
            expected = expected + updates
            tol = 1e-12 if dtype == np.float64 else 2e-6
            np.testing.assert_allclose(
                p,
                expected,
                rtol=tol,
                atol=tol * np.abs(expected).max(),
                err_msg=f"{name} {shape} step {step + 1}",
            )


def test_kernel_source_compiles_for_the_device(tmp_path):
    nvcc = shutil.which("nvcc") or next(
        (str(p) for p in Path("/usr/local").glob("cuda*/bin/nvcc") if p.exists()), None
    )
    if nvcc is None:
        pytest.skip("nvcc is not installed: the device compilation check needs it")
    src = tmp_path / "k.cu"
    src.write_text(
        _kernel_source()
        + r"""
template <typename T>
__global__ void sgd(const T* g, const T* mean, T* p, T* buf, T s, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) gc_sgd<T>(g[i], mean[i], p[i], buf[i], true, false, true, s, s, s, s, s);
}
template <typename T>
__global__ void adam(const T* g, const T* mean, T* p, T* m, T* v, T* vm, T s, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) gc_adam<T>(g[i], mean[i], p[i], m[i], v[i], vm[i], true, s, s, s, s, s, s, s,
                          s, s);
}
template __global__ void sgd<float>(const float*, const float*, float*, float*, float, int);
template __global__ void sgd<double>(const double*, const double*, double*, double*, double,
                                     int);
template __global__ void adam<float>(const float*, const float*, float*, float*, float*,
                                     float*, float, int);
template __global__ void adam<double>(const double*, const double*, double*, double*, double*,
                                      double*, double, int);
"""
    )
    out = subprocess.run(
        [nvcc, "--ptx", str(src), "-o", str(tmp_path / "k.ptx")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
