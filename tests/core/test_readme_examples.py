"""Every ```python block of README.md runs and prints its result.

A block runs where its framework imports (numpy, torch, jax, cupy); otherwise it is
skipped, naming the module. Blocks share nothing: each gets a fresh namespace.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
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
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, f"README.md ({framework} block)", "exec"), {"__name__": "readme"})
    assert buf.getvalue().strip(), "the block prints nothing"
