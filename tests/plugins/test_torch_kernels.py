"""The compiled row-blocked kernels of the fused path (the CPU default), against the
reference, and the shared header gcore/csrc/gc_update.h on its own.

Building them needs a C++ compiler and ninja (torch's extension tooling); the tests skip
with the build error otherwise, except under ``GCORE_TORCH_KERNELS_STRICT=1`` (set by the
nox torch session), where a failed build fails. The first build takes a minute or more;
it is cached on disk.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
gcore_torch = pytest.importorskip("gcore_torch")

from torch_helpers import (  # noqa: E402
    TOL,
    assert_traj_close,
    groups_of,
    kernels_off,
    one_thread,  # noqa: F401
    run,
    updates,
)

from gcore_torch import _kernels  # noqa: E402

STRICT = os.environ.get("GCORE_TORCH_KERNELS_STRICT", "0") not in ("", "0")
HEADER = Path(__file__).parents[2] / "gcore" / "csrc" / "gc_update.h"


def _unavailable(reason):
    if STRICT:
        pytest.fail(f"GCORE_TORCH_KERNELS_STRICT is set and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def kernels():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        _unavailable("the compiled kernels need a C++ compiler; none found")
    if not _kernels.enabled():
        _unavailable("GCORE_TORCH_KERNELS=0 turns the compiled kernels off")
    ok = gcore_torch.load_kernels()
    if not ok:
        _unavailable(f"building the kernels failed: {_kernels._state['error']}")
    return _kernels.get()


def _check(cls, dtype, calls, **opts):
    def make(**path):
        return lambda ps, idle: cls(groups_of(ps, idle), **opts, **path)

    ref, _, _ = run(make(foreach=False), dtype)
    calls.clear()
    got, _, _ = run(make(fused=True), dtype)
    assert calls, "the compiled kernel was not used"
    assert_traj_close(got, ref, TOL[dtype], "compiled fused vs single")


@pytest.fixture
def calls(kernels, monkeypatch):
    seen = []

    class Spy:
        def __getattr__(self, name):
            fn = getattr(kernels, name)
            return lambda *a: seen.append(name) or fn(*a)

    monkeypatch.setitem(_kernels._state, "module", Spy())
    return seen


def _id(v):
    return str(v).replace("torch.", "")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=_id)
@pytest.mark.parametrize("gc", [True, "conv_only"], ids=_id)
@pytest.mark.parametrize(
    ("name", "amsgrad", "maximize", "weight_decay"),
    list(itertools.product(["Adam", "AdamW"], [False, True], [False, True], [0.0, 0.1])),
    ids=_id,
)
def test_compiled_adam_matches_reference(calls, name, amsgrad, maximize, weight_decay, gc, dtype):
    _check(
        getattr(gcore_torch, name),
        dtype,
        calls,
        lr=0.01 if dtype == torch.float64 else 1e-3,
        amsgrad=amsgrad,
        maximize=maximize,
        weight_decay=weight_decay,
        gc=gc,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=_id)
@pytest.mark.parametrize(
    ("mdn", "maximize", "weight_decay"),
    list(
        itertools.product(
            [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.5, False), (0.9, 0.0, True)],
            [False, True],
            [0.0, 0.1],
        )
    ),
    ids=_id,
)
def test_compiled_sgd_matches_reference(calls, mdn, maximize, weight_decay, dtype):
    momentum, dampening, nesterov = mdn
    _check(
        gcore_torch.SGD,
        dtype,
        calls,
        lr=0.05,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        maximize=maximize,
        weight_decay=weight_decay,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=_id)
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize(
    ("name", "opts"),
    [("Adam", {}), ("Adam", {"amsgrad": True}), ("SGD", {"momentum": 0.9}), ("SGD", {})],
    ids=["Adam", "Adam-amsgrad", "SGD-momentum", "SGD"],
)
def test_rows_whose_centralized_gradient_is_zero_stay_put(calls, name, opts, maximize, dtype):
    """With L2 decay the kernel computes ``g + l2 * p`` for a row's mean and again for its
    update. Rounded apart (an FMA in one of them only, as GCC contracts by default), a row
    of one element, or of equal elements, whose centralized gradient is exactly 0, kept an
    ulp, and Adam's normalization turned it into a step of ``lr`` (0.02 after 3 steps)."""
    torch.manual_seed(0)
    shapes = [(1000, 1)]  # one element a row: Linear(1, n).weight
    if dtype == torch.float32:  # 8 equal ones a row: their sum in double is exact
        shapes.append((64, 8))

    def rows_of(shape):
        return torch.randn(shape[0], 1, dtype=dtype).expand(shape).contiguous()

    def columns_of(shape):  # units along axis 1 (transformers' Conv1D), equal elements
        return torch.randn(1, shape[1], dtype=dtype).expand(shape).contiguous()

    params = [torch.nn.Parameter(rows_of(s)) for s in shapes]
    # columns of 8 (float32: the sum in double is exact) or 2 (float64) equal elements
    column = torch.nn.Parameter(columns_of((8 if dtype == torch.float32 else 2, 300)))
    start = [p.detach().clone() for p in [*params, column]]
    groups = [{"params": params}, {"params": [column], "gc_axis": 1}]
    opt = getattr(gcore_torch, name)(groups, lr=0.01, weight_decay=0.1, maximize=maximize, **opts)
    for _ in range(3):
        for p, s in zip(params, shapes, strict=True):
            p.grad = rows_of(s)
        column.grad = columns_of(column.shape)
        opt.step()
    assert calls, "the compiled kernel was not used"
    for p, p0 in zip([*params, column], start, strict=True):
        assert torch.equal(p.detach(), p0), (p.detach() - p0).abs().max()


#: Units that are not rows, some large enough for the kernels to cut into bands of rows
#: (300 rows) or pieces of rows (20000 elements).
WIDE_UNITS = [
    ((300, 700), {"gc_axis": 1}),  # transformers' Conv1D (in, out)
    ((64, 300, 3, 3), {"gc_axis": 1}),  # ConvTranspose2d (in, out, kh, kw)
    ((8, 160, 60), {"gc_axis": 1, "gc_groups": 2}),  # grouped ConvTranspose1d
    ((4, 96, 200), {"gc_axis": 2, "gc_groups": 4}),  # stacked experts (experts, in, out)
    ((2, 1000, 20), {"gc_axis": 1}),  # ConvTranspose1d of long rows (cut in pieces)
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=_id)
@pytest.mark.parametrize(
    ("name", "opts"),
    [
        ("SGD", {}),
        ("SGD", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "maximize": True}),
        ("Adam", {"amsgrad": True, "weight_decay": 0.1, "maximize": True}),
        ("AdamW", {"weight_decay": 0.1}),
    ],
    ids=["SGD", "SGD-nesterov-l2-max", "Adam-amsgrad-l2-max", "AdamW"],
)
def test_kernels_take_units_that_are_not_rows(calls, name, opts, dtype):
    """Conv1D, ConvTranspose, grouped and stacked-expert layouts go to the compiled
    kernels, and their updates follow the core rule; split between two threads, the
    kernels give the same bits as on one (the work is cut by shape, not by threads)."""
    cls = getattr(gcore_torch, name)
    gen = torch.Generator().manual_seed(5)
    start = [torch.randn(s, generator=gen, dtype=dtype) for s, _ in WIDE_UNITS]
    grads = [[torch.randn(s, generator=gen, dtype=dtype) + 0.5 for s, _ in WIDE_UNITS]
             for _ in range(3)]  # fmt: skip

    def trajectory(**path):
        params = [torch.nn.Parameter(x.clone()) for x in start]
        groups = [{"params": [p], **g} for p, (_, g) in zip(params, WIDE_UNITS, strict=True)]
        opt = cls(groups, lr=0.01 if dtype == torch.float64 else 1e-3, **opts, **path)
        traj = []
        for gs in grads:
            for p, g in zip(params, gs, strict=True):
                p.grad = g
            opt.step()
            traj.append([p.detach().clone() for p in params])
        return traj

    ref = trajectory(foreach=False)
    calls.clear()
    got = trajectory()
    assert calls == [f"gc_{name.lower().rstrip('w')}_"] * (3 * len(WIDE_UNITS))
    assert_traj_close(updates(got, start), updates(ref, start), TOL[dtype], "units vs single")
    torch.set_num_threads(2)
    for a, b in zip(trajectory()[-1], got[-1], strict=True):
        assert torch.equal(a, b)


def test_load_kernels_reports_state(kernels):
    assert gcore_torch.load_kernels(build=False) is True
    assert gcore_torch.load_kernels() is True  # loading twice is a no-op


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=_id)
@pytest.mark.parametrize("gc", [True, False])
def test_compiled_adamw_paper_convention(calls, gc, dtype):
    _check(
        gcore_torch.AdamW,
        dtype,
        calls,
        lr=0.01 if dtype == torch.float64 else 1e-3,
        weight_decay=0.1,
        convention="paper",
        gc=gc,
    )


def test_kernels_opt_out(calls):
    """GCORE_TORCH_KERNELS=0: the fused path never calls the compiled kernels."""
    p = torch.nn.Parameter(torch.randn(8, 4))
    opt = gcore_torch.Adam([p], fused=True)
    p.grad = torch.randn(8, 4)
    with kernels_off():
        opt.step()
        assert not _kernels.usable(p)
    assert calls == []
    opt.step()
    assert calls == ["gc_adam_"]


def test_default_path_uses_the_kernels(calls):
    p = torch.nn.Parameter(torch.randn(8, 4))
    opt = gcore_torch.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.randn(8, 4)
    opt.step()
    assert calls == ["gc_sgd_"]


def test_header_compiles_as_plain_cpp(tmp_path):
    """gc_update.h on its own (no torch), as host C++ with warnings as errors: one GC-Adam
    element and one GC-SGD element against hand-computed values."""
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        _unavailable("no C++ compiler found")
    src = tmp_path / "t.cpp"
    src.write_text(
        f'#include "{HEADER}"\n'
        "#include <cstdio>\n"
        "int main() {\n"
        "  float buf = 0.f;\n"
        "  float d = gc_sgd_direction<float>(1.f, buf, GC_SGD_FIRST, 0.9f, 1.f, 1);\n"
        "  double s, c, dec, wu;\n"
        "  gc_adam_coefficients(0.1, 0.9, 0.999, 1.0, 0.01, 1, 0, &s, &c, &dec, &wu);\n"
        "  double m = 0, v = 0, vm = 0;\n"
        "  double dd = gc_adam_direction<double>(2.0, m, v, vm, 1, 0.1, 0.999, 0.001, c, 1e-8);\n"
        '  std::printf("%.9g %.9g %.9g %.9g\\n", d, buf, dd,\n'
        "              gc_adam_param<double>(1.0, dd, s, dec, wu));\n"
        "}\n"
    )
    exe = tmp_path / "t"
    subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", str(src), "-o", str(exe)],
                   check=True)  # fmt: skip
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    d, buf, direction, new_p = map(float, out)
    assert (d, buf) == (1.9, 1.0) or (abs(d - 1.9) < 1e-6 and buf == 1.0)
    # Adam, first step, x=2: m=0.2, v=0.004, m / (sqrt(v)/sqrt(0.001) + eps) = 0.1;
    # AdamW (torch): p = (1 - 0.1*0.01) * 1 - (0.1/0.1) * 0.1 = 0.899.
    assert abs(direction - 0.1) < 1e-7
    assert abs(new_p - 0.899) < 1e-7


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=_id)
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_foreach_path_centralizes_with_the_kernel(calls, name, weight_decay, dtype):
    """``foreach=True`` centralizes row-unit gradients with ``gc_center_`` (one pass) before
    torch's foreach kernels; the result follows the core rule."""
    cls = getattr(gcore_torch, name)
    opts = {"lr": 0.05, "weight_decay": weight_decay, "maximize": True}
    if name == "SGD":
        opts["momentum"] = 0.9

    def make(**path):
        # one group of row-unit tensors (the kernel declines mixed layouts as a whole)
        return lambda ps, idle: cls([ps[0], ps[1], ps[2], idle], **opts, **path)

    ref, _, _ = run(make(foreach=False), dtype)
    calls.clear()
    got, _, _ = run(make(foreach=True), dtype)
    assert "gc_center_" in calls
    assert_traj_close(got, ref, TOL[dtype], "foreach with the centering kernel vs single")


@pytest.mark.parametrize("k", [200_000, 40 * 256 + 7])
def test_long_rows_take_accurate_means(kernels, k):
    """Long float32 rows far from zero mean: the kernels' row means (float partial sums
    within a chunk, double across chunks) equal a float64 mean to float32 rounding of
    the result; float32 sums across chunks would be off by ~1e-4 here."""
    gen = torch.Generator().manual_seed(3)
    g = (100.0 + torch.randn(4, k, generator=gen, dtype=torch.float64)).float()
    want = g.double() - g.double().mean(1, keepdim=True)
    bound = 4 * torch.finfo(torch.float32).eps * 110
    for stream in (False, True):
        out = torch.empty_like(g)
        assert kernels.gc_center_([out], [g], [torch.zeros_like(g)], 0.0, stream)
        assert (out.double() - want).abs().max() <= bound
    p = torch.zeros_like(g)
    assert kernels.gc_sgd_([p], [g], [], [], [1, 1, 4, k], 1.0, 0.0, 0.0, False, 0.0, False)
    assert (-p.double() - want).abs().max() <= bound
    # units that do not describe the tensor are declined, nothing written (also where
    # their product wraps around int64 into the element count)
    before = p.clone()
    for units in ([1, 1, 3, k], [0, 0, 0, 1], [1, 1, 2**62 + 2, 2 * k], [1, -1, -4, k]):
        assert not kernels.gc_sgd_([p], [g], [], [], units, 1.0, 0.0, 0.0, False, 0.0, False)
    assert torch.equal(p, before)
    # the same tensor's columns as the units (a transformers Conv1D (in, out) layout)
    cols = g.t().contiguous()
    p = torch.zeros_like(cols)
    assert kernels.gc_sgd_([p], [cols], [], [], [1, k, 4, 1], 1.0, 0.0, 0.0, False, 0.0, False)
    assert (-p.double() - want.t()).abs().max() <= bound


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=_id)
def test_streaming_stores_give_the_same_bits(kernels, dtype):
    """``gc_center_`` with streaming stores writes what it writes without them, bit for
    bit, on rows of any width and outputs at any alignment (views at odd offsets); with
    L2 decay the flag is ignored (plain stores)."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(1, 1), (3, 7), (5, 33), (2, 8 * 256 + 3), (64, 3, 3, 3), (4, 1000)]
    params = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    grads = [3.0 + torch.randn(s, generator=gen, dtype=dtype) for s in shapes]

    def outs():  # views at 1, 2, 3, ... elements into their buffers: unaligned starts
        return [
            torch.full((p.numel() + k + 1,), float("nan"), dtype=dtype)[k + 1 :].view(p.shape)
            for k, p in enumerate(params)
        ]

    for l2 in (0.0, 0.1):
        plain, streamed = outs(), outs()
        assert kernels.gc_center_(plain, grads, params, l2, False)
        assert kernels.gc_center_(streamed, grads, params, l2, True)
        for a, b, g, p in zip(plain, streamed, grads, params, strict=True):
            assert torch.equal(a, b)
            x = (g + l2 * p).view(g.shape[0], -1)
            want = x - x.mean(1, keepdim=True)
            torch.testing.assert_close(a.view_as(want), want, rtol=0, atol=1e-12 if
                                       dtype == torch.float64 else 1e-5)  # fmt: skip


def test_foreach_path_streams_outputs_larger_than_the_cache(kernels, monkeypatch):
    """The foreach path asks for streaming stores when its centralized gradients exceed
    the last-level cache, and the steps are the same bits either way."""
    from gcore_torch import _base

    flags = []

    class Spy:
        def __getattr__(self, name):
            return getattr(kernels, name)

        def gc_center_(self, *args):
            flags.append(args[-1])
            return kernels.gc_center_(*args)

    monkeypatch.setitem(_kernels._state, "module", Spy())

    def trajectory(cache_bytes):
        monkeypatch.setattr(_base, "last_level_cache_bytes", lambda: cache_bytes)
        return run(
            lambda ps, idle: gcore_torch.SGD(
                [ps[0], ps[1], ps[2], idle], lr=0.05, momentum=0.9, foreach=True
            ),
            torch.float32,
        )[0]

    big = trajectory(1 << 40)
    assert flags and not any(flags)
    flags.clear()
    small = trajectory(0)
    assert flags and all(flags)
    for a, b in zip(big, small, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
