"""Docs that render offline: MathJax served from the built site, and a check that no page
loads a script (or stylesheet) from outside it.

MathJax 3 is taken at build time from, in this order:

* ``GCORE_DOCS_MATHJAX``: a MathJax 3 ``es5`` directory (the one holding
  ``tex-chtml.js``), e.g. from ``npm pack mathjax@3``;
* the ``sphinx-mathjax-offline`` distribution (PyPI; MathJax 3.2.2), part of the
  ``docs`` extra, so ``nox -s docs`` and ``pip install .[docs]`` bring it.

Only what ``tex-chtml.js`` loads is copied into ``_static/mathjax`` (its fonts, the TeX
extensions it autoloads, the menu and accessibility components it loads on demand),
about 8 MB; nothing is committed to the repository. Without a local MathJax the build
warns (an error under ``-W``): the pages would otherwise fetch MathJax from a CDN and show
raw TeX offline. After an HTML build every page is scanned; a ``<script src>`` or a
stylesheet ``<link>`` pointing outside the site is a warning too.
"""

from __future__ import annotations

import os
import re
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

ENTRY = "tex-chtml.js"
# Loaded by tex-chtml.js on demand, relative to its own directory.
PARTS = ("input/tex/extensions", "output/chtml/fonts/woff-v2", "ui", "a11y", "sre")
TARGET = "mathjax"  # under _static/

_EXTERNAL = re.compile(
    r"""<script\b[^>]*\bsrc\s*=\s*["']?(?:https?:)?//[^"'\s>]+"""
    r"""|<link\b(?=[^>]*\brel\s*=\s*["']?stylesheet)[^>]*\bhref\s*=\s*["']?(?:https?:)?//""",
    re.IGNORECASE,
)


def find_mathjax() -> Path | None:
    """The local MathJax 3 ``es5`` directory, or ``None``."""
    env = os.environ.get("GCORE_DOCS_MATHJAX")
    if env:
        path = Path(env)
        if path.is_file():
            path = path.parent
        return path if (path / ENTRY).is_file() else None
    try:
        files = metadata.files("sphinx-mathjax-offline") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == ENTRY and f.parent.name == "mathjax":
            path = Path(str(f.locate())).parent
            if (path / ENTRY).is_file():
                return path
    return None


def _configure(app: Sphinx) -> None:
    if app.builder.format != "html":
        return
    source = find_mathjax()
    app.gcore_mathjax_source = source  # type: ignore[attr-defined]
    if source is None:
        logger.warning(
            "gcore_offline_math: no local MathJax 3 found (install the docs extra, which "
            "brings sphinx-mathjax-offline, or set GCORE_DOCS_MATHJAX to a MathJax 3 es5 "
            "directory); the pages would load MathJax from a CDN"
        )
        return
    app.config.mathjax_path = f"{TARGET}/{ENTRY}"


def _copy_and_check(app: Sphinx, exc: Exception | None) -> None:
    if exc is not None or app.builder.format != "html":
        return
    out = Path(app.outdir)
    source = getattr(app, "gcore_mathjax_source", None)
    if source is not None:
        dest = out / "_static" / TARGET
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / ENTRY, dest / ENTRY)
        for part in PARTS:
            if (source / part).is_dir():
                shutil.copytree(source / part, dest / part, dirs_exist_ok=True)
    for page in sorted(out.rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        for match in _EXTERNAL.finditer(text):
            logger.warning(
                "gcore_offline_math: %s loads %r from outside the site",
                page.relative_to(out),
                match.group(0)[:120],
            )
    if source is not None and not (out / "_static" / TARGET / ENTRY).is_file():
        logger.warning("gcore_offline_math: MathJax was not copied into the site")


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("builder-inited", _configure)
    app.connect("build-finished", _copy_and_check)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
