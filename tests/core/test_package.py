"""Packaging promises: import hygiene, plugins through entry points, the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gcore
from gcore import cli, plugins

ROOT = Path(gcore.__file__).parent
FRAMEWORKS = {"numpy", "torch", "jax", "jaxlib", "cupy", "tensorflow"}


def test_core_imports_no_array_library():
    offenders = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FRAMEWORKS]
    assert offenders == []


def test_import_gcore_loads_no_framework():
    code = (
        "import sys, gcore; gcore.plugins.available(); "
        "top = {m.split('.')[0] for m in sys.modules}; "
        f"print(sorted(set({sorted(FRAMEWORKS)!r}) & top))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_are_exported():
    for name in gcore.__all__:
        assert hasattr(gcore, name), name
    assert (ROOT / "py.typed").exists()


def test_available_lists_numpy():
    assert "numpy" in plugins.available()


def test_plugin_loads_numpy_and_reports_framework():
    mod = gcore.plugin("numpy")
    assert mod.FRAMEWORK == "numpy"
    info = plugins.describe("numpy")
    assert info.importable and info.framework_version and "cpu" in info.devices


def test_unknown_plugin_lists_installed():
    with pytest.raises(LookupError, match="numpy"):
        gcore.plugin("no-such-backend")


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"gcore {gcore.__version__}" in out
    assert "array-api-compat" in out
    assert "numpy" in out and "importable" in out


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "gcore", "--version"], capture_output=True, text=True, check=True
    )
    assert gcore.__version__ in out.stdout
