"""Every public name (``__all__``) of gcore and of each plugin is in the API reference.

The reference is read from the source of docs/api/*.rst (``currentmodule`` /
``automodule`` / ``autosummary`` / ``auto*`` directives), so the test needs neither
Sphinx nor a docs build. Plugins that cannot be imported in this session are skipped.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import gcore

API_DIR = Path(__file__).resolve().parents[2] / "docs" / "api"
KNOWN_PLUGINS = ("gcore_numpy", "gcore_torch", "gcore_jax", "gcore_cupy")

_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\.\s+(?P<name>[\w:-]+)::\s*(?P<arg>\S*)\s*$")


def documented_names(text: str) -> set[str]:
    """Fully qualified names that an API page's reST documents.

    ``automodule``/``auto<kind>`` document their argument; each entry of an
    ``autosummary`` block documents ``<currentmodule>.<entry>``.
    """
    found: set[str] = set()
    current = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i])
        i += 1
        if not m:
            continue
        name, arg, indent = m["name"], m["arg"], len(m["indent"])
        if name in ("currentmodule", "py:currentmodule", "module", "py:module"):
            current = arg
        elif name == "automodule":
            found.add(arg)
        elif name.startswith("auto") and name != "autosummary" and arg:
            found.add(arg if "." in arg or not current else f"{current}.{arg}")
        elif name == "autosummary":
            # The block is every line indented deeper than the directive; entries are
            # the lines that are not options (":toctree: ...").
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
                entry = lines[i].strip()
                i += 1
                if entry and not entry.startswith(":"):
                    entry = entry.lstrip("~").split()[0]
                    found.add(f"{current}.{entry}" if current else entry)
                    if "." in entry:  # autosummary also resolves dotted names absolutely
                        found.add(entry)
    return found


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _reference() -> set[str]:
    pages = sorted(API_DIR.glob("*.rst"))
    assert pages, f"no API pages found in {API_DIR}"
    names: set[str] = set()
    for page in pages:
        names |= documented_names(page.read_text(encoding="utf-8"))
    return names


def _missing(module_name: str, public: list[str], reference: set[str]) -> list[str]:
    return [n for n in public if f"{module_name}.{n}" not in reference]


def _plugin_modules() -> list[str]:
    modules = set(KNOWN_PLUGINS)
    for ep in importlib.metadata.entry_points(group=gcore.plugins.GROUP):
        modules.add(ep.value.split(":")[0])
    repo_plugins = API_DIR.parents[1] / "plugins"
    modules |= {p.name for p in repo_plugins.glob("gcore_*") if (p / "__init__.py").exists()}
    return sorted(modules)


@pytest.mark.parametrize("module_name", ["gcore", "gcore.diagnostics", "gcore.plugins"])
def test_core_public_names_are_documented(module_name):
    module = importlib.import_module(module_name)
    assert _missing(module_name, list(module.__all__), _reference()) == []


@pytest.mark.parametrize("module_name", _plugin_modules())
def test_plugin_public_names_are_documented(module_name):
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        pytest.skip(f"{module_name} is not importable in this session ({err})")
    public = getattr(module, "__all__", None)
    assert public, f"{module_name} defines no __all__"
    reference = _reference()
    assert module_name in reference, f"no API page documents the module {module_name}"
    assert _missing(module_name, list(public), reference) == []


def test_parser_sees_entries_and_misses_what_is_absent():
    text = """
.. automodule:: pkg
   :no-members:

.. currentmodule:: pkg

.. autosummary::
   :toctree: generated/

   alpha
   ~pkg.sub.beta

After the block.

.. autofunction:: gamma
"""
    found = documented_names(text)
    assert {"pkg", "pkg.alpha", "pkg.sub.beta", "pkg.gamma"} <= found
    assert "pkg.After" not in found
    assert _missing("pkg", ["alpha", "delta"], found) == ["delta"]
