"""gcore_torch on every device torch has here: the same checks on CPU and, where present,
CUDA (where torch's fused CUDA kernels run). On a CPU-only machine the CUDA cases skip,
saying so."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
gcore_torch = pytest.importorskip("gcore_torch")

from torch_helpers import TOL, assert_traj_close, groups_of, one_thread, run  # noqa: E402, F401

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="no CUDA device visible to torch"
        ),
    ),
]
CASES = [
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "maximize": True}),
    ("Adam", {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.1, "maximize": True}),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", [{"foreach": True}, {"fused": True}, {}], ids=str)
@pytest.mark.parametrize(("name", "kw"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_paths_follow_the_core_rules_on_device(device, path, name, kw):
    cls = getattr(gcore_torch, name)
    ref, _, _ = run(
        lambda ps, idle: cls(groups_of(ps, idle), foreach=False, **kw), torch.float64, device="cpu"
    )
    got, _, params = run(
        lambda ps, idle: cls(groups_of(ps, idle), **path, **kw), torch.float64, device=device
    )
    assert all(p.device.type == device for p in params)
    assert_traj_close(
        [[p.cpu() for p in step] for step in got],
        ref,
        TOL[torch.float64],
        f"{name} {path} on {device} vs single on cpu",
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("name", "kw"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_gc_off_equals_torch_optim_on_device(device, name, kw):
    ours, _, _ = run(
        lambda ps, idle: getattr(gcore_torch, name)(groups_of(ps, idle), gc=False, **kw),
        torch.float32,
        device=device,
    )
    theirs, _, _ = run(
        lambda ps, idle: getattr(torch.optim, name)(groups_of(ps, idle), **kw),
        torch.float32,
        device=device,
    )
    assert_traj_close(ours, theirs, TOL[torch.float32], f"gc=False {name} on {device}")


_TRITON_HOOK_CHECK = r"""
import os, sys
import torch
import gcore_torch
from gcore_torch import _base, _triton

assert _triton.available("cpu"), "Triton's interpreter is not available"
real = _base.kernel_module
_base.kernel_module = lambda dev: _triton  # the CUDA branch, on the CPU (interpreter)
calls = []
for name in ("sgd_", "adam_"):
    fn = getattr(_triton, name)
    setattr(_triton, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
CASES = [
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "maximize": True}),
    ("SGD", {"lr": 0.05}),
    ("Adam", {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.1, "maximize": True}),
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.1, "convention": "paper"}),
]
shapes = [(6, 4, 3, 3), (5, 7), (5,), (4, 3, 2, 2)]
for name, kw in CASES:
    traj = {}
    for path in ("single", "fused"):
        gen = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
        groups = [{"params": ps[:3]}, {"params": ps[3:], "gc_axis": 1}]
        flags = {"foreach": False} if path == "single" else {"fused": True}
        opt = getattr(gcore_torch, name)(groups, **kw, **flags)
        for _ in range(4):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen) + 0.5
            opt.step()
        traj[path] = [p.detach().clone() for p in ps]
    for a, b in zip(traj["fused"], traj["single"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} {kw}: {m}")
assert "sgd_" in calls and "adam_" in calls, calls
print("OK", len(calls))
"""


def test_fused_path_hands_cuda_tensors_to_triton_kernels():
    """The fused path's CUDA hook (gcore_torch._triton, the Triton kernels), run on the
    CPU under Triton's interpreter: the calls it makes follow the single path."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1", "GCORE_TORCH_KERNELS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", _TRITON_HOOK_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.startswith("OK")
