"""gcore_cupy's fused kernels, checked on the host through the conformance driver.

No GPU is needed: the kernels' specs (gcore_cupy/_kernels.py: parameter lists and bodies
of the ``ElementwiseKernel`` s and of the per-unit-mean ``ReductionKernel``) are turned
into host C++ that follows CuPy's semantics (inputs read per element, outputs bound by
reference, the reduction's map / reduce / post-map expressions per output unit), compiled
with g++ against the same preamble, ``gcore/csrc/gc_update.h``, and driven by the same
Python step the plugin runs on the GPU (``_kernels.fused_step``). The device compilation
is checked with nvcc where it is installed; the GPU runs are in test_cupy_optimizers.py.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import conformance
import numpy as np
import pytest

import gcore

KERNELS = Path(__file__).parents[2] / "plugins" / "gcore_cupy" / "_kernels.py"


def _load_kernels():
    # By path: importing the gcore_cupy package needs CuPy; _kernels does not.
    spec = importlib.util.spec_from_file_location("_gcore_cupy_kernels", KERNELS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


K = _load_kernels()

#: Inputs that the plugin passes as arrays (the rest are scalars).
ARRAY_INPUTS = {"g", "mean", "p"}


def _params(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        typ, name = item.split()
        out.append((typ, name))
    return out


def _ctype(typ: str) -> str:
    return {"T": "T", "int32": "int"}[typ]


def elementwise_source(spec) -> str:
    """Host C++ of an ``ElementwiseKernel`` spec: a loop with CuPy's bindings."""
    ins, outs = _params(spec.in_params), _params(spec.out_params)
    args, binds = ["long _n"], []
    for typ, name in ins:
        if name in ARRAY_INPUTS:
            args.append(f"const {_ctype(typ)}* _raw_{name}")
            binds.append(f"const {_ctype(typ)} {name} = _raw_{name}[_i];")
        else:
            args.append(f"{_ctype(typ)} {name}")
    for typ, name in outs:
        args.append(f"{_ctype(typ)}* _raw_{name}")
        binds.append(f"{_ctype(typ)}& {name} = _raw_{name}[_i];")
    fn = spec.name
    return f"""
template <typename T>
void {fn}_impl({", ".join(args)}) {{
  for (long _i = 0; _i < _n; ++_i) {{
    {" ".join(binds)}
    {spec.operation}
  }}
}}
extern "C" void {fn}_f32({", ".join(a.replace("T", "float") for a in args)}) {{
  {fn}_impl<float>({", ".join(a.split()[-1] for a in args)});
}}
extern "C" void {fn}_f64({", ".join(a.replace("T", "double") for a in args)}) {{
  {fn}_impl<double>({", ".join(a.split()[-1] for a in args)});
}}
"""


def reduction_source(spec) -> str:
    """Host C++ of a ``ReductionKernel`` spec over ``(units, m)`` contiguous inputs."""
    ins = _params(spec.in_params)
    (out_typ, out_name) = _params(spec.out_params)[0]
    args, binds = ["long _units", "long _m"], []
    for typ, name in ins:
        if name in ARRAY_INPUTS:
            args.append(f"const {_ctype(typ)}* _raw_{name}")
            binds.append(f"const {_ctype(typ)} {name} = _raw_{name}[_u * _m + _k];")
        else:
            args.append(f"{_ctype(typ)} {name}")
    args.append(f"{_ctype(out_typ)}* _raw_{out_name}")
    fn = spec.name
    return f"""
template <typename T>
void {fn}_impl({", ".join(args)}) {{
  const gc_host_ind _in_ind{{_units * _m}}, _out_ind{{_units}};
  for (long _u = 0; _u < _units; ++_u) {{
    T a = T({spec.identity});
    for (long _k = 0; _k < _m; ++_k) {{
      {" ".join(binds)}
      const T b = {spec.map_expr};
      a = {spec.reduce_expr};
    }}
    {_ctype(out_typ)}& {out_name} = _raw_{out_name}[_u];
    {spec.post_map_expr};
  }}
}}
extern "C" void {fn}_f32({", ".join(a.replace("T", "float") for a in args)}) {{
  {fn}_impl<float>({", ".join(a.split()[-1] for a in args)});
}}
extern "C" void {fn}_f64({", ".join(a.replace("T", "double") for a in args)}) {{
  {fn}_impl<double>({", ".join(a.split()[-1] for a in args)});
}}
"""


#: CuPy's ``_in_ind`` / ``_out_ind`` as the post-map expression uses them (their sizes).
HOST_IND = """
struct gc_host_ind { long n; long size() const { return n; } };
"""

COEFFICIENTS = """
extern "C" void coefficients(double lr, double beta1, double beta2, double t, double wd,
                             int decoupled, int paper, double* out) {
  gc_adam_coefficients(lr, beta1, beta2, t, wd, decoupled, paper, out, out + 1, out + 2,
                       out + 3);
}
"""


def _compiler():
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++) to compile the kernels")
    return cxx


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    cxx = _compiler()
    d = tmp_path_factory.mktemp("kernels")
    src = d / "kernels.cpp"
    src.write_text(
        K.header()
        + elementwise_source(K.SGD)
        + elementwise_source(K.ADAM)
        + HOST_IND
        + reduction_source(K.MEAN)
        + reduction_source(K.MEAN_WITH_PARAM)
        + COEFFICIENTS
    )
    lib = d / "libkernels.so"
    # -ffp-contract=off: no FMA, so the host result rounds like NumPy's core rule does.
    out = subprocess.run(
        [cxx, "-O2", "-ffp-contract=off", "-shared", "-fPIC", str(src), "-o", str(lib)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return ctypes.CDLL(str(lib))


def _ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


class HostElementwise:
    """Calls a host-compiled ElementwiseKernel the way CuPy calls the device one."""

    def __init__(self, lib, spec):
        self.lib, self.spec = lib, spec
        self.ins, self.outs = _params(spec.in_params), _params(spec.out_params)
        self.calls = 0

    def __call__(self, *args):
        ins, outs = args[: len(self.ins)], args[len(self.ins) :]
        assert len(outs) == len(self.outs)
        dtype, shape = outs[0].dtype, outs[0].shape
        real = ctypes.c_double if dtype == np.float64 else ctypes.c_float
        c_args = [ctypes.c_long(outs[0].size)]
        keep = []
        for (typ, name), value in zip(self.ins, ins, strict=True):
            if name in ARRAY_INPUTS:
                a = np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype), shape))
                keep.append(a)
                c_args.append(_ptr(a))
            elif typ == "T":
                c_args.append(real(value))
            else:
                assert isinstance(value, (int, np.integer)), (name, value)
                c_args.append(ctypes.c_int(int(value)))
        for out in outs:
            assert out.dtype == dtype and out.shape == shape and out.flags.c_contiguous
            c_args.append(_ptr(out))
        suffix = "f64" if dtype == np.float64 else "f32"
        getattr(self.lib, f"{self.spec.name}_{suffix}")(*c_args)
        self.calls += 1


class HostReduction:
    """Calls a host-compiled ReductionKernel as CuPy does: ``k(*ins, axis=, keepdims=)``."""

    def __init__(self, lib, spec):
        self.lib, self.spec = lib, spec
        self.ins = _params(spec.in_params)

    def __call__(self, *ins, axis, keepdims):
        assert keepdims
        g = ins[0]
        (out_axis,) = [a for a in range(g.ndim) if a not in axis]
        dtype = g.dtype
        real = ctypes.c_double if dtype == np.float64 else ctypes.c_float
        units = g.shape[out_axis]
        c_args = [ctypes.c_long(units), ctypes.c_long(g.size // units)]
        keep = []
        for (_, name), value in zip(self.ins, ins, strict=True):
            if name in ARRAY_INPUTS:
                a = np.ascontiguousarray(np.moveaxis(value, out_axis, 0))
                keep.append(a)
                c_args.append(_ptr(a))
            else:
                c_args.append(real(value))
        y = np.empty(units, dtype)
        c_args.append(_ptr(y))
        suffix = "f64" if dtype == np.float64 else "f32"
        getattr(self.lib, f"{self.spec.name}_{suffix}")(*c_args)
        shape = [1] * g.ndim
        shape[out_axis] = units
        return y.reshape(shape)


class HostFusedStepper:
    """gcore_cupy's fused step (``_kernels.fused_step``) with the host-compiled kernels."""

    lib = None  # set by the fixture

    def __init__(self, case, params):
        lib = type(self).lib
        self.dtype = case.dtype
        self.rules = [case.rule_for(i) for i in range(len(params))]
        assert all(K.fusable(r, case.dtype) for r in self.rules), case
        self.params = [p.astype(case.dtype) for p in params]
        self.states = [r.init(p) for r, p in zip(self.rules, self.params, strict=True)]
        self.scratch = [np.empty_like(p) for p in self.params]
        self.steps = [0] * len(params)
        self.kernels = {
            "mean_kernel": lambda with_param: HostReduction(
                lib, K.MEAN_WITH_PARAM if with_param else K.MEAN
            ),
            "sgd_kernel": HostElementwise(lib, K.SGD),
            "adam_kernel": HostElementwise(lib, K.ADAM),
        }

    def step(self, grads):
        for i, g in enumerate(grads):
            K.fused_step(
                self.rules[i],
                self.params[i],
                g.astype(self.dtype),
                self.states[i],
                self.steps[i],
                self.scratch[i],
                **self.kernels,
            )
            self.steps[i] += 1
        return [p.astype(np.float64) for p in self.params]


FUSED_CASES = conformance.cases(
    dtypes=("float64", "float32"),
    predicate=lambda c: K.fusable(c.rule, c.dtype),
    full=True,
)


@pytest.mark.parametrize("case", FUSED_CASES, ids=str)
def test_host_fused_kernels_conform(host_lib, case):
    HostFusedStepper.lib = host_lib
    conformance.assert_matches_rule(HostFusedStepper, case)


def test_every_fusable_option_is_in_the_table():
    names = {c.algorithm for c in FUSED_CASES}
    assert names == set(conformance.ALGORITHMS)  # paper AdamW included
    assert {c.gc_option for c in FUSED_CASES} == {"off", "on", "conv_only"}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("shape", "axis"), [((5, 3, 2), 0), ((4, 6), -1), ((2, 7, 3), 1)])
@pytest.mark.parametrize(("sign", "l2"), [(1.0, 0.0), (-1.0, 0.0), (1.0, 0.3), (-1.0, 0.3)])
def test_host_mean_reduction(host_lib, dtype, shape, axis, sign, l2):
    rng = np.random.default_rng(1)
    g = rng.standard_normal(shape).astype(dtype)
    p = rng.standard_normal(shape).astype(dtype)
    axes = gcore.reduction_axes(len(shape), axis)
    if l2 != 0:
        got = HostReduction(host_lib, K.MEAN_WITH_PARAM)(g, p, sign, l2, axis=axes, keepdims=True)
    else:
        got = HostReduction(host_lib, K.MEAN)(g, sign, axis=axes, keepdims=True)
    want = (sign * g.astype(np.float64) + l2 * p).mean(axis=axes, keepdims=True)
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize(
    ("cls", "convention"), [(gcore.Adam, "torch"), (gcore.AdamW, "torch"), (gcore.AdamW, "paper")]
)
@pytest.mark.parametrize("t", [1, 2, 7, 1000])
def test_adam_coefficients_match_the_header(host_lib, cls, convention, t):
    kw = {"convention": convention} if cls is gcore.AdamW else {}
    rule = cls(lr=3e-3, betas=(0.8, 0.95), weight_decay=0.2, **kw)
    out = (ctypes.c_double * 4)()
    host_lib.coefficients(
        ctypes.c_double(rule.lr),
        ctypes.c_double(rule.betas[0]),
        ctypes.c_double(rule.betas[1]),
        ctypes.c_double(t),
        ctypes.c_double(rule.weight_decay),
        int(rule._decoupled),
        int(convention == "paper"),
        out,
    )
    assert K.adam_coefficients(rule, t) == tuple(out)


@pytest.mark.parametrize(
    ("rule", "dtype", "expected"),
    [
        (gcore.SGD(momentum=0.9), "float32", True),
        (gcore.AdamW(convention="paper"), "float64", True),
        (gcore.Adam(gc=None), "float32", True),
        (gcore.Adam(), "float16", False),
        (gcore.Adam(gc=gcore.GC(where="update")), "float32", False),
        (gcore.Adam(nesterov=True), "float32", False),
        (gcore.Adam(mu_dtype="float64"), "float32", False),
        (gcore.SGD(momentum=0.9, accumulator_dtype="float64"), "float32", False),
    ],
)
def test_what_is_fused(rule, dtype, expected):
    assert K.fusable(rule, dtype) is expected


def test_kernels_take_their_arithmetic_from_the_shared_header():
    # The bodies only call the header's functions: no arithmetic of their own beyond
    # the centralization (x = g_eff - mean) and p = p - lr * d (SGD).
    header = K.header()
    for spec in (K.SGD, K.ADAM):
        for fn in re.findall(r"(gc_\w+)<T>", spec.operation):
            assert f" {fn}(" in header, fn
    assert K.HEADER_PATH.name == "gc_update.h" and K.HEADER_PATH.parent.name == "csrc"
    assert "gc_effective_grad<T>" in K.MEAN.map_expr + K.MEAN_WITH_PARAM.map_expr


def test_kernel_source_compiles_for_the_device(tmp_path):
    nvcc = shutil.which("nvcc") or next(
        (str(p) for p in Path("/usr/local").glob("cuda*/bin/nvcc") if p.exists()), None
    )
    if nvcc is None:
        pytest.skip("nvcc is not installed: the device compilation check needs it")
    kernels = []
    for spec in (K.SGD, K.ADAM):
        ins, outs = _params(spec.in_params), _params(spec.out_params)
        args = [f"const float* _raw_{n}" if n in ARRAY_INPUTS else f"{_ctype(t)} {n}"
                for t, n in ins] + [f"float* _raw_{n}" for _, n in outs]  # fmt: skip
        binds = [f"const float {n} = _raw_{n}[i];" for _, n in ins if n in ARRAY_INPUTS]
        binds += [f"float& {n} = _raw_{n}[i];" for _, n in outs]
        kernels.append(
            f"__global__ void {spec.name}(int n, {', '.join(args).replace('T ', 'float ')}) "
            f"{{ typedef float T; int i = blockIdx.x * blockDim.x + threadIdx.x; "
            f"if (i < n) {{ {' '.join(binds)} {spec.operation} }} }}\n"
        )
    src = tmp_path / "k.cu"
    src.write_text(K.header() + "".join(kernels))
    out = subprocess.run(
        [nvcc, "--ptx", str(src), "-o", str(tmp_path / "k.ptx")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_conformance_table_covers_the_fused_layouts():
    # torch (axis 0, ConvTranspose axis 1) and channels-last (axis -1) both reach the
    # reduction kernel, and some cases run without GC (mean 0).
    layouts = {(c.layout, c.gc_option) for c in FUSED_CASES}
    assert ("torch", "on") in layouts and ("channels_last", "on") in layouts
    assert any(c.gc is None for c in FUSED_CASES)
