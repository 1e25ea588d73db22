"""Shared builders for the gcore_torch tests: parameters in every layout, runs, checks."""

from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch

# (shape, group): group 0 is axis 0 (Linear/Conv), 1 a ConvTranspose2d weight (axis 1),
# 2 a grouped ConvTranspose1d weight (in=6, out/groups=2, k=3; groups=2).
SHAPES = [((6, 4, 3, 3), 0), ((5, 7), 0), ((5,), 0), ((4, 3, 2, 2), 1), ((6, 2, 3), 2)]
GROUP_OPTS = [{}, {"gc_axis": 1}, {"gc_axis": 1, "gc_groups": 2}]
TOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def make_params(dtype=torch.float64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)  # drawn on the CPU: every device sees the same
    params = [
        torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype).to(device))
        for s, _ in SHAPES
    ]
    idle = torch.nn.Parameter(torch.randn(3, 3, generator=gen, dtype=dtype).to(device))
    return params, idle  # idle: its grad stays None


def groups_of(params, idle, **opts):
    groups = [{"params": [], **g} for g in GROUP_OPTS]
    for p, (_, gi) in zip(params, SHAPES, strict=True):
        groups[gi]["params"].append(p)
    groups[0]["params"].append(idle)
    for g in groups:
        g.update(opts)
    return groups


def grads_for(params, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        [(torch.randn(p.shape, generator=gen, dtype=p.dtype) + 0.5).to(p.device) for p in params]
        for _ in range(steps)
    ]


def run(opt_factory, dtype=torch.float64, steps=20, seed=0, device="cpu"):
    """Trajectory of every parameter (a list per step) under ``opt_factory(groups)``."""
    params, idle = make_params(dtype, seed, device)
    opt = opt_factory(params, idle)
    traj = []
    for gs in grads_for(params, steps):
        for p, g in zip(params, gs, strict=True):
            p.grad = g
        opt.step()
        traj.append([p.detach().clone() for p in params])
    return traj, opt, params


def assert_traj_close(actual, desired, rtol, msg=""):
    for t, (a_step, d_step) in enumerate(zip(actual, desired, strict=True)):
        for k, (a, d) in enumerate(zip(a_step, d_step, strict=True)):
            torch.testing.assert_close(
                a,
                d,
                rtol=rtol,
                atol=rtol,
                msg=lambda m, t=t, k=k: f"{msg} step {t} param {k}: {m}",
            )


def clone_state(opt):
    return copy.deepcopy(opt.state_dict())


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one intra-op thread: on a shared, loaded CPU each fused-kernel call on a tiny
    tensor otherwise waits milliseconds for a second OpenMP thread (results are the same)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def small_row_blocks(nbytes=200):
    """The kernels off, and the pure-PyTorch fused path's row blocks cut to ``nbytes``, so
    that the test shapes are split across blocks (a few rows each) as large weights are."""
    from gcore_torch import _base

    before = _base.ROW_BLOCK_BYTES
    _base.ROW_BLOCK_BYTES = nbytes
    try:
        with kernels_off():
            yield
    finally:
        _base.ROW_BLOCK_BYTES = before


@contextlib.contextmanager
def kernels_off():
    """``GCORE_TORCH_KERNELS=0`` for the duration (the fused path's pure-PyTorch form)."""
    before = os.environ.get("GCORE_TORCH_KERNELS")
    os.environ["GCORE_TORCH_KERNELS"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["GCORE_TORCH_KERNELS"]
        else:
            os.environ["GCORE_TORCH_KERNELS"] = before


def updates(traj, start):
    """Per-step updates ``p_t - p_{t-1}`` of a trajectory from :func:`run`."""
    out, prev = [], start
    for step in traj:
        out.append([a - b for a, b in zip(step, prev, strict=True)])
        prev = step
    return out


def need_kernels():
    """Skip where the compiled kernels are off or cannot be built (a failure where the
    build must succeed); only the tests of the kernel path need them."""
    import gcore_torch
    from gcore_torch import _kernels

    if not gcore_torch.load_kernels():
        error = _kernels._state["error"]
        if not _kernels.enabled():
            pytest.skip("GCORE_TORCH_KERNELS=0 turns the compiled kernels off")
        if _kernels._strict():
            pytest.fail(f"GCORE_TORCH_KERNELS_STRICT is set and the build failed: {error}")
        pytest.skip(f"the compiled kernels are unavailable: {error}")
