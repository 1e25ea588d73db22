"""Every ```python block of README.md runs and prints its result.

A block runs where its framework imports (numpy, torch, jax, keras, cupy); otherwise it
is skipped, naming the module. Each block runs in a fresh interpreter, as a reader runs it
(Keras blocks with KERAS_BACKEND set to an installed backend when it is not set).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_FRAMEWORKS = ("cupy", "torch", "jax", "keras", "numpy")


def _blocks() -> list[tuple[str, str]]:
    out = []
    for code in _BLOCK.findall(README.read_text(encoding="utf-8")):
        imports = re.findall(r"^import (.+)$", code, re.M)
        names = {n.split()[0].split(".")[0] for line in imports for n in line.split(",")}
        framework = next((f for f in _FRAMEWORKS if f in names), "core")
        out.append((framework, code))
    return out


BLOCKS = _blocks()


def test_readme_has_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize(
    "framework,code", BLOCKS, ids=[f"{i}-{f}" for i, (f, _) in enumerate(BLOCKS)]
)
def test_readme_block_runs_and_prints(framework, code):
    needed = re.findall(r"^import (.+)$", code, re.M)
    for module in {n.split()[0].split(".")[0] for line in needed for n in line.split(",")}:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    if framework == "cupy":
        import cupy

        try:
            cupy.cuda.runtime.getDeviceCount()
        except Exception as err:
            pytest.skip(f"no CUDA device for CuPy: {err}")
    env = dict(os.environ)
    if framework == "keras" and "KERAS_BACKEND" not in env:
        # Keras's default backend is TensorFlow; use one that is installed.
        found = [b for b in ("tensorflow", "jax", "torch") if importlib.util.find_spec(b)]
        if not found:
            pytest.skip("Keras has no backend installed (tensorflow, jax or torch)")
        env["KERAS_BACKEND"] = found[0]
    # A fresh interpreter per block, as a reader would run it.
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"the {framework} block failed:\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), "the block prints nothing"
