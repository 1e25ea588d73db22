"""Sphinx directives that put result files produced outside docs/ into the pages.

``.. gcore-results:: PATTERN`` includes every benchmark result matching ``PATTERN`` (a
glob under ``gcore_benchmark_results``): a ``.md`` file is parsed with MyST (its headings
become rubrics, so it cannot disturb the page's outline); a ``.json`` file whose records
carry a ``ratio`` is also drawn as a bar chart (embedded in the page, nothing is written
to the source tree). With no matching file the page says the benchmark is not measured
yet and how to run it, so the site builds before any benchmark has been run.

``.. gcore-demo::`` does the same for the demo's committed results in
``gcore_demo_results`` (a ``.md`` table and ``.png`` figures).
"""

from __future__ import annotations

import base64
import io
import json
import numbers
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.utils import new_document
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def _parse_markdown(directive: SphinxDirective, text: str, source: str) -> list[nodes.Node]:
    from myst_parser.parsers.sphinx_ import MystParser

    settings = directive.state.document.settings
    doc = new_document(source, settings)
    MystParser().parse(text, doc)
    # Sections would change the page's outline and anchors: show titles as rubrics.
    for section in list(doc.findall(nodes.section)):
        title = section[0] if section.children and isinstance(section[0], nodes.title) else None
        replacement: list[nodes.Node] = []
        if title is not None:
            replacement.append(nodes.rubric("", "", *title.children))
        replacement.extend(c for c in section.children if c is not title)
        section.replace_self(replacement)
    return list(doc.children)


def _ratio_records(data: Any) -> list[dict[str, Any]]:
    """Dicts anywhere in ``data`` that hold a numeric field named like ``*ratio*``."""
    found: list[dict[str, Any]] = []
    if isinstance(data, dict):
        if any("ratio" in k and isinstance(v, numbers.Real) for k, v in data.items()):
            found.append(data)
        for v in data.values():
            found += _ratio_records(v)
    elif isinstance(data, list):
        for v in data:
            found += _ratio_records(v)
    return found


def _ratio_figure(records: list[dict[str, Any]], title: str) -> nodes.Node | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for rec in records:
        key = next(k for k, v in rec.items() if "ratio" in k and isinstance(v, numbers.Real))
        label = " · ".join(
            str(v) for k, v in rec.items() if isinstance(v, str) and k not in ("machine",)
        )
        rows.append((label or str(len(rows)), float(rec[key]), key))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.2))
    labels, values = [r[0] for r in rows], [r[1] for r in rows]
    ax.barh(range(len(rows)), values, color="#1f77b4")
    ax.axvline(1.0, color="#7f7f7f", ls="--", lw=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{rows[0][2]} (GC step time / baseline step time; 1 = no overhead)")
    ax.set_ylabel("configuration")
    ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=100)
    plt.close(fig)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    figure = nodes.figure()
    figure += nodes.image(uri=uri, alt=f"bar chart of {rows[0][2]} per configuration")
    figure += nodes.caption(
        "",
        f"{title}: median step-time ratio per configuration, drawn from {title}.json. "
        "Bars left of the dashed line would be faster than the baseline.",
    )
    return figure


def _not_yet(text: str) -> list[nodes.Node]:
    note = nodes.note()
    note += nodes.paragraph(text=text)
    return [note]


class ResultsDirective(SphinxDirective):
    """Include benchmark result files matching a glob pattern."""

    required_arguments = 1
    option_spec = {"run": directives.unchanged}  # noqa: RUF012 - docutils API

    def run(self) -> list[nodes.Node]:
        root = Path(self.config.gcore_benchmark_results)
        pattern = self.arguments[0]
        files = sorted(root.glob(pattern)) if root.is_dir() else []
        files.sort(key=lambda f: (f.stem, f.suffix != ".md"))  # a table, then its plot
        for f in files:
            self.env.note_dependency(str(f))
        how = self.options.get("run", "nox -s bench")
        if not files:
            return _not_yet(
                f"Not measured yet: no file benchmarks/results/{pattern} in this checkout. "
                f"Run `{how}` to produce it; the page picks it up at the next build."
            )
        out: list[nodes.Node] = []
        stems_with_md = {f.stem for f in files if f.suffix == ".md"}
        for f in files:
            if f.suffix == ".md":
                out += _parse_markdown(self, f.read_text(encoding="utf-8"), str(f))
            elif f.suffix == ".json":
                try:
                    data = json.loads(f.read_text(encoding="utf-8"))
                except ValueError as err:
                    out += _not_yet(f"benchmarks/results/{f.name} is not valid JSON ({err}).")
                    continue
                fig = _ratio_figure(_ratio_records(data), f.stem)
                if fig is not None:
                    out.append(fig)
                elif f.stem not in stems_with_md:
                    block = nodes.literal_block(text=json.dumps(data, indent=2)[:5000])
                    block["language"] = "json"
                    out += [nodes.rubric(text=f.name), block]
        return out


class DemoDirective(SphinxDirective):
    """Include the demo's committed table and figures."""

    def run(self) -> list[nodes.Node]:
        root = Path(self.config.gcore_demo_results)
        tables = sorted(root.glob("*.md")) if root.is_dir() else []
        images = sorted(root.glob("*.png")) if root.is_dir() else []
        if not tables and not images:
            return _not_yet(
                "No demo results are committed yet (docs/_static/demo/ is empty). Produce "
                "them with `gcore demo` (it writes demo-results/), then copy "
                "demo-results/*.md and demo-results/*.png into docs/_static/demo/."
            )
        out: list[nodes.Node] = []
        for f in tables:
            self.env.note_dependency(str(f))
            out += _parse_markdown(self, f.read_text(encoding="utf-8"), str(f))
        srcdir = Path(self.env.srcdir)
        for f in images:
            figure = nodes.figure()
            # A leading "/" makes the path relative to the source root for Sphinx's
            # image collector, which then copies the file like any `.. image::`.
            uri = "/" + f.relative_to(srcdir).as_posix()
            figure += nodes.image(uri=uri, alt=f.stem.replace("_", " "))
            figure += nodes.caption(
                "",
                f"{f.stem.replace('_', ' ')}: written by gcore demo (see the table above "
                "for the configuration; axes as labelled in the figure).",
            )
            out.append(figure)
        return out


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("gcore_benchmark_results", "", "env")
    app.add_config_value("gcore_demo_results", "", "env")
    app.add_directive("gcore-results", ResultsDirective)
    app.add_directive("gcore-demo", DemoDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
