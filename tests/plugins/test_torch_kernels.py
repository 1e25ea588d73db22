"""The optional compiled row-blocked kernels of the fused path, against the reference.

Building them needs a C++ compiler and ninja (torch's extension tooling); the tests skip
with the build error otherwise. The first build takes about a minute; torch caches it.
"""

from __future__ import annotations

import itertools
import shutil

import pytest

torch = pytest.importorskip("torch")
gcore_torch = pytest.importorskip("gcore_torch")

from torch_helpers import TOL, assert_traj_close, groups_of, one_thread, run  # noqa: E402, F401

from gcore_torch import _kernels  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("the compiled kernels need a C++ compiler; none found")
    before = dict(_kernels._state)
    ok = gcore_torch.load_kernels()
    if not ok:
        pytest.skip(f"building the kernels failed: {_kernels._state['error']}")
    yield _kernels.get()
    # Later test modules exercise the pure-PyTorch fused path again.
    _kernels._state.update(before)


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


def test_load_kernels_reports_state(kernels):
    assert gcore_torch.load_kernels(build=False) is True
    assert gcore_torch.load_kernels() is True  # loading twice is a no-op
