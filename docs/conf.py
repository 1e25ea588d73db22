"""Sphinx configuration for gcore's documentation (``nox -s docs`` builds it)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
# The plugins are normally installed with the distribution; from a bare checkout they
# are still found in plugins/ (and gcore in the root).
for path in (ROOT / "plugins", ROOT):
    if str(path) not in sys.path:
        sys.path.append(str(path))

import gcore  # noqa: E402

project = "gcore"
author = "gcore developers"
copyright = "gcore developers"
release = gcore.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_copybutton",
    "myst_parser",
    "gcore_docs",
    "gcore_offline_math",  # MathJax served from the site; no outside scripts (checked)
]

source_suffix = {".rst": "restructuredtext"}  # pages are reST; MyST parses included .md
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]
default_role = "py:obj"  # numpydoc convention: `name` cross-references a Python object
pygments_style = "sphinx"
nitpicky = False  # an unresolved cross-reference stays plain text (see intersphinx below)

# -- autodoc / autosummary / numpydoc -------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# The framework plugins are documented with their real framework when it is installed
# (`nox -s docs` installs torch, jax, optax and flax). Without it, autodoc imports the
# plugin against mocks so that a partial environment still builds.
autodoc_mock_imports = [
    name
    for name in ("torch", "jax", "jaxlib", "optax", "flax", "equinox", "cupy")
    if importlib.util.find_spec(name) is None
]
# Keras picks its backend at import (KERAS_BACKEND): use one that is installed, or mock
# Keras too when it or every backend is missing.
_keras_backends = [b for b in ("jax", "torch", "tensorflow") if importlib.util.find_spec(b)]
if importlib.util.find_spec("keras") is None or not _keras_backends:
    autodoc_mock_imports.append("keras")
else:
    os.environ.setdefault("KERAS_BACKEND", _keras_backends[0])

# -- intersphinx ------------------------------------------------------------------------
# Inventories are read from docs/_intersphinx/ (committed) because the build has no network.
# A project whose inventory file is absent is left out of the mapping, instead of letting
# Sphinx try the network and fail with a warning that -W turns into an error. Set
# GCORE_DOCS_ONLINE=1 to fetch every inventory from its site instead.
_INVENTORIES = {
    "python": "https://docs.python.org/3/",
    "numpy": "https://numpy.org/doc/stable/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "jax": "https://docs.jax.dev/en/latest/",
    "optax": "https://optax.readthedocs.io/en/latest/",
}
if os.environ.get("GCORE_DOCS_ONLINE") == "1":
    intersphinx_mapping = {name: (url, None) for name, url in _INVENTORIES.items()}
else:
    intersphinx_mapping = {
        name: (url, str(DOCS / "_intersphinx" / f"{name}.inv"))
        for name, url in _INVENTORIES.items()
        if (DOCS / "_intersphinx" / f"{name}.inv").exists()
    }
intersphinx_timeout = 5

# -- math -------------------------------------------------------------------------------
# MathJax 3 is copied into the built site by docs/_ext/gcore_offline_math.py (from the
# sphinx-mathjax-offline package of the docs extra, or a MathJax 3 es5 directory named by
# GCORE_DOCS_MATHJAX), so the pages render offline; the build warns (-W: fails) otherwise
# and whenever a page would load a script from outside the site.
mathjax3_config = {"tex": {"macros": {"R": r"\mathbb{R}"}}}

# -- HTML -------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"gcore {release}"
html_static_path = ["_static"]
html_css_files = ["gcore.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
# Pages without sub-pages get no (empty) left sidebar; the guides and the API keep theirs.
html_sidebars = {
    page: []
    for page in (
        "index",
        "theory",
        "layouts",
        "migrating",
        "benchmarks",
        "demo",
        "changelog",
        "contributing",
    )
}

# -- copy buttons: strip prompts so that a copied example runs --------------------------
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True

# -- gcore_docs extension: where benchmark and demo results are read from ----------------
gcore_benchmark_results = str(ROOT / "benchmarks" / "results")
gcore_demo_results = str(DOCS / "_static" / "demo")
