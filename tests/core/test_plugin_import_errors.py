"""Importing a plugin whose framework is missing names the extra that installs it."""

from __future__ import annotations

import importlib
import sys

import pytest

CASES = [
    ("gcore_numpy", ["numpy"], "gradient-centralization[numpy]"),
    ("gcore_torch", ["torch"], "gradient-centralization[torch]"),
    ("gcore_jax", ["jax"], "gradient-centralization[jax]"),
    ("gcore_jax", ["optax"], "gradient-centralization[jax]"),
    ("gcore_cupy", ["cupy"], "gradient-centralization[cupy]"),
    ("gcore_keras", ["keras"], "gradient-centralization[keras]"),
]


@pytest.mark.parametrize(("plugin", "blocked", "hint"), CASES, ids=lambda v: str(v))
def test_missing_framework_names_the_extra(monkeypatch, plugin, blocked, hint):
    if importlib.util.find_spec(plugin) is None:
        pytest.skip(f"{plugin} is not installed")
    for name in list(sys.modules):  # a fresh import of the plugin, restored afterwards
        if name == plugin or name.startswith(plugin + "."):
            monkeypatch.delitem(sys.modules, name)
    for name in blocked:  # `import name` now raises ImportError
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install '?" + hint.replace("[", r"\[")):
        importlib.import_module(plugin)
