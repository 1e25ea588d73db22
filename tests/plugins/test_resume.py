"""Exact resume in a new process: 20 steps, checkpoint, a *fresh* interpreter loads it and
takes 20 more; every parameter and state array must be bit-identical to 40 uninterrupted
steps (GC-SGD with Nesterov momentum and L2 decay, GC-Adam with AMSGrad, GC-AdamW; float32).

NumPy: ``state_dict()`` pickled. torch: ``torch.save`` / ``torch.load(weights_only=True)``
of the parameters and ``optimizer.state_dict()``, for each path (``foreach=False``,
``foreach=True``, ``fused=True``, default). JAX: the optax state through
``flax.serialization`` and the parameters through ``numpy.savez``.
The work runs in tests/plugins/resume_worker.py (two subprocesses per case).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("resume_worker.py")
CASES = {
    "numpy": ("numpy", "default", ["numpy"]),
    "torch-single": ("torch", "single", ["torch"]),
    "torch-foreach": ("torch", "foreach", ["torch"]),
    "torch-fused": ("torch", "fused", ["torch"]),
    "torch-default": ("torch", "default", ["torch"]),
    "jax": ("jax", "default", ["jax", "optax", "flax"]),
}
ALGOS = ["sgd", "adam", "adamw"]


def _run(mode: str, framework: str, path: str, out: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), mode, framework, path, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"{mode} run failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("case", CASES)
def test_resume_in_new_process_is_bit_identical(case, tmp_path):
    framework, path, needs = CASES[case]
    for mod in needs:
        pytest.importorskip(mod)
    _run("first", framework, path, tmp_path)
    _run("second", framework, path, tmp_path)
    for algo in ALGOS:
        with (
            np.load(tmp_path / f"{algo}.full.npz") as full,
            np.load(tmp_path / f"{algo}.resumed.npz") as resumed,
        ):
            assert sorted(full.files) == sorted(resumed.files), algo
            assert any(k.startswith("state") for k in full.files), algo
            for name in full.files:
                a, b = full[name], resumed[name]
                assert a.dtype == b.dtype and a.shape == b.shape, (algo, name)
                assert np.array_equal(a, b), (
                    f"{case} {algo} {name}: max |diff| {np.max(np.abs(a - b))}"
                )
            # The run really moved: 40 steps changed every parameter.
            init = np.random.default_rng(0).standard_normal(full["param1"].shape)
            assert not np.allclose(full["param1"], init.astype(np.float32))
