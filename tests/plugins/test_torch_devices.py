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
