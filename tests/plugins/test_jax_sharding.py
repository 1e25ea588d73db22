"""gcore_jax on sharded parameters: 4 host CPU devices, in a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax", reason="jax is not installed")
pytest.importorskip("optax", reason="optax is not installed")

SCRIPT = Path(__file__).with_name("jax_sharding_check.py")


def test_sharded_update_keeps_sharding_and_equals_unsharded():
    """NamedSharding along the output axis and along an input axis: the jitted update
    keeps each parameter's sharding and equals the unsharded result (float32 rounding)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "sharding checks passed" in proc.stdout
    assert proc.stdout.count("checked") == 8
