"""The demo's outputs: the terminal table, curves.png, weight_mean.png and results.json."""

from __future__ import annotations

import json
import math
import textwrap
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "format_table",
    "plot_curves",
    "plot_weight_mean",
    "table_notes",
    "write_json",
    "write_markdown",
]

# One colour per arm; the line style says where GC acts, the marker which optimizer.
COLOURS = {
    "sgd": "#1f77b4",
    "sgd_gc": "#d62728",
    "sgd_gcc": "#2ca02c",
    "adam": "#7f7f7f",
    "adam_gc": "#ff7f0e",
    "adam_gcc": "#9467bd",
    "adam_gcu": "#000000",
}
_LINESTYLES = {"": "-", "gc": "--", "gcc": ":", "gcu": "-."}
_MARKERS = {"sgd": "o", "adam": "s"}
_FLOOR = 1e-10  # log-scale floor for drifts that are exactly zero


def _style(key: str, n_points: int = 20) -> dict[str, Any]:
    optim, _, mode = key.partition("_")
    return {
        "color": COLOURS.get(key, "black"),
        "ls": _LINESTYLES.get(mode, "-"),
        "marker": _MARKERS.get(optim, "x"),
        "markersize": 4.5,
        "markevery": max(1, n_points // 8),
        "markerfacecolor": "white" if mode else None,
    }


def _width(text: str) -> int:
    """Columns ``text`` takes in a terminal (combining marks take none, wide glyphs two)."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def _rows(results: Mapping[str, Any]) -> list[tuple[str, ...]]:
    cfg = results["config"]
    target = round(100 * cfg["target_accuracy"])
    header = (
        "arm",
        "test acc (%)",
        "Δ vs no GC (pp)",
        "final train loss",
        f"epochs to {target}% (reached)",
        "max |Δ w̄ᵢ|, GC'd tensors",
        "s/run",
    )
    rows = [header]
    for arm in results["arms"]:
        s = results["summary"][arm["key"]]
        acc, loss, ett = s["test_accuracy"], s["final_train_loss"], s["epochs_to_target"]
        d = s.get("delta_test_accuracy")
        reached = f"({ett['reached']}/{ett['runs']})"
        median = ett["median"]
        rows.append(
            (
                arm["name"],
                f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}",
                "—" if d is None else f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f}",
                f"{loss['mean']:.4f} ± {loss['std']:.4f}",
                (f">{cfg['epochs']}" if median is None else f"{median:g}") + " " + reached,
                f"{s['max_abs_weight_mean_drift']:.1e}",
                f"{s['seconds_per_run']:.1f}",
            )
        )
    return rows


def format_table(results: Mapping[str, Any]) -> str:
    """The summary as a fixed-width text table (what ``gcore demo`` prints).

    Columns are padded by display width, so rows stay aligned with ``±``, ``Δ`` and
    combining marks.

    Examples
    --------
    >>> from gcore_demo import format_table, run_demo
    >>> res = run_demo(backend="numpy", epochs=1, seeds=2, progress=False)
    >>> print(format_table(res).splitlines()[0])  # doctest: +NORMALIZE_WHITESPACE
    arm  test acc (%)  Δ vs no GC (pp)  final train loss  epochs to 97% (reached)
    max |Δ w̄ᵢ|, GC'd tensors  s/run
    """
    rows = _rows(results)
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(_pad(c, w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_notes(results: Mapping[str, Any]) -> list[str]:
    """What the table's columns mean, for this run (printed under the table)."""
    cfg = results["config"]
    target = round(100 * cfg["target_accuracy"])
    n = len(cfg["seeds"])
    keys = {a["key"] for a in results["arms"]}
    notes = [
        f"epochs to {target}%: median over all {n} run{'s' if n != 1 else ''} of the arm, a run "
        f"that never got there counting as later than any that did (>{cfg['epochs']}: half or "
        "more never did); in brackets how many reached it.",
        "max |Δ w̄ᵢ|, GC'd tensors: the largest change of a unit's weight mean during "
        "training, over the weight tensors the arm centralizes (GC: every ndim ≥ 2 weight; "
        "GC-conv: conv kernels only; no GC: the ndim ≥ 2 weights GC would centralize).",
        "s/run: median wall time per run, evaluation after each epoch included"
        + (" (and, with jax, each arm's first run compiles)." if cfg["backend"] == "jax" else "."),
    ]
    if "adam_gcu" in keys:
        notes.append(
            'Adam + GC (update): GC applied to Adam\'s update (gc_where="update"). Adam + GC '
            "centralizes the gradient, but Adam then divides each element by its own √v̂, so "
            "the update's unit mean is not zero and the weight means drift; centralizing the "
            "update holds them."
        )
    return notes


def _band(ax, x, runs, key, label, scale=1.0, floor=None):
    y = scale * np.asarray(runs, dtype=float)
    mean, std = y.mean(axis=0), y.std(axis=0, ddof=1) if len(y) > 1 else np.zeros(y.shape[1])
    low = mean - std if floor is None else np.maximum(mean - std, floor)
    shown = mean if floor is None else np.maximum(mean, floor)
    (line,) = ax.plot(x, shown, label=label, lw=1.6, **_style(key, len(x)))
    ax.fill_between(x, low, mean + std, color=line.get_color(), alpha=0.12, lw=0)
    return mean, std


def _title(results: Mapping[str, Any]) -> str:
    cfg = results["config"]
    n = len(cfg["seeds"])
    wd = cfg.get("weight_decay") or {}
    decay = (
        ", L2 decay " + ", ".join(f"{k} {v:g}" for k, v in wd.items())
        if isinstance(wd, Mapping) and any(wd.values())
        else ""
    )
    return (
        f"{cfg['data']} ({cfg['n_train']} train / {cfg['n_test']} test), {cfg['backend']} "
        f"backend, {n} seed{'s' if n != 1 else ''}{decay}"
    )


def _runs(results: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    return sorted((r for r in results["runs"] if r["arm"] == key), key=lambda r: r["seed"])


def plot_curves(results: Mapping[str, Any], path: str | Path) -> Path:
    """Train loss, its paired ratio to the same optimizer without GC, and test accuracy per
    epoch: mean line with a ± std band over seeds for every arm."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cfg = results["config"]
    epochs = np.arange(1, cfg["epochs"] + 1)
    fig, (ax_loss, ax_ratio, ax_acc) = plt.subplots(1, 3, figsize=(17, 5.4), layout="constrained")
    lows, accs = [], {}
    for arm in results["arms"]:
        key, runs = arm["key"], _runs(results, arm["key"])
        _band(ax_loss, epochs, [r["train_loss"] for r in runs], key, arm["name"])
        mean, std = _band(
            ax_acc, epochs, [r["test_accuracy"] for r in runs], key, arm["name"], 100
        )
        accs[arm["name"]] = mean
        early = len(mean) // 10  # the first tenth of training may fall below the axis
        lows.append(mean[early] - std[early])
        base = {r["seed"]: r for r in _runs(results, arm["key"].split("_")[0])}
        if arm["gc"] != "none" and base:
            ratio = [np.asarray(r["train_loss"]) / base[r["seed"]]["train_loss"] for r in runs]
            _band(ax_ratio, epochs, ratio, key, arm["name"])
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("train loss (cross-entropy, nats, log scale)")
    ax_loss.set_title("Training loss (mean over the epoch's batches)")
    ax_ratio.axhline(1.0, color="black", lw=0.8)
    ax_ratio.set_yscale("log")
    ax_ratio.set_ylabel("train loss ÷ same optimizer without GC (log)")
    ax_ratio.set_title(
        "Paired by seed: below 1, GC's loss is lower\n(the lines of the left panel overlap)"
    )
    target = 100 * cfg["target_accuracy"]
    ax_acc.axhline(target, color="black", lw=0.8, ls=":", label=f"target {target:.0f}%")
    bottom = max(0.0, min(min(lows), target) - 2)
    ax_acc.set_ylim(bottom, 100)
    cut: dict[str, list[str]] = {}  # epochs below the axis -> the arms they belong to
    for name, m in accs.items():
        if (m < bottom).any():
            below = [str(e) for e in epochs[m < bottom]]
            label = ("epoch " if len(below) == 1 else "epochs ") + ", ".join(below)
            cut.setdefault(label, []).append(name)
    ax_acc.set_title("Test accuracy after each epoch")
    if cut:
        note = f"Axis starts at {bottom:.0f}%; below it (mean over seeds): " + "; ".join(
            f"{label} of {', '.join(names)}" for label, names in cut.items()
        )
        ax_acc.text(
            0.98, 0.03, textwrap.fill(note, 48), transform=ax_acc.transAxes, fontsize=8,
            ha="right", va="bottom", bbox={"facecolor": "white", "alpha": 0.85, "lw": 0.5},
        )  # fmt: skip
    ax_acc.set_ylabel("test accuracy (%)")
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9)
    for ax in (ax_loss, ax_ratio, ax_acc):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        ax.set_xlim(1, max(2, cfg["epochs"]))
    fig.suptitle(
        _title(results) + ": mean over seeds, band ± 1 std. Line style: where GC acts "
        "(none solid, GC dashed, GC-conv dotted, update dash-dot); marker: SGD ○, Adam □",
        fontsize=11,
    )
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _unit_panel(ax, epochs, run, key, name, lim, seed):
    drift = np.asarray(run["first_layer_unit_drift"])  # (epochs + 1, units)
    ax.plot(epochs, drift, color=COLOURS.get(key, "black"), lw=0.9, alpha=0.7)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylim(-lim, lim)
    ax.set_title(
        f"{name}, seed {seed}: each line is one unit of {run['first_layer']}\n"
        f"({drift.shape[1]} units); max |drift| {np.abs(drift).max():.1e}",
        fontsize=10,
    )


def plot_weight_mean(results: Mapping[str, Any], path: str | Path) -> Path:
    """How each unit's weight mean moves: per unit for seed 0 (SGD, SGD + GC, Adam + GC and
    Adam + GC on the update), and the largest drift of every arm, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    cfg = results["config"]
    epochs = np.arange(0, cfg["epochs"] + 1)
    seed0 = cfg["seeds"][0]
    run = {r["arm"]: r for r in results["runs"] if r["seed"] == seed0}
    names = {a["key"]: a["name"] for a in results["arms"]}
    fig, axes = plt.subplots(2, 2, figsize=(14, 10), layout="constrained")
    (ax_sgd, ax_sgd_gc), (ax_adam, ax_all) = axes
    shown = [k for k in ("sgd", "sgd_gc", "adam_gc", "adam_gcu") if k in run]
    lim = max(max(abs(v) for e in run[k]["first_layer_unit_drift"] for v in e) for k in shown)
    lim = 1.1 * lim if lim > 0 else 1.0
    for ax, key in ((ax_sgd, "sgd"), (ax_sgd_gc, "sgd_gc")):
        if key in run:
            _unit_panel(ax, epochs, run[key], key, names[key], lim, seed0)
    if "adam_gc" in run:
        # Its own scale: Adam's steps (~lr per element) move the means far less than SGD's.
        a_lim = 1.1 * np.abs(run["adam_gc"]["first_layer_unit_drift"]).max() or 1.0
        _unit_panel(ax_adam, epochs, run["adam_gc"], "adam_gc", names["adam_gc"], a_lim, seed0)
        if "adam_gcu" in run:
            drift = np.asarray(run["adam_gcu"]["first_layer_unit_drift"])
            ax_adam.plot(epochs, drift, color=COLOURS["adam_gcu"], lw=1.2, ls="-.")
            ax_adam.set_title(
                f"Adam + GC (orange) and Adam + GC (update) (black), seed {seed0}:\n"
                f"each unit of {run['adam_gc']['first_layer']}; max |drift| "
                f"{np.abs(run['adam_gc']['first_layer_unit_drift']).max():.1e} and "
                f"{np.abs(drift).max():.1e}",
                fontsize=10,
            )
            ax_adam.legend(
                [
                    Line2D([], [], color=COLOURS["adam_gc"]),
                    Line2D([], [], color=COLOURS["adam_gcu"], ls="-."),
                ],
                ["Adam + GC: GC of the gradient", "Adam + GC (update): GC of the update"],
                fontsize=9,
                loc="upper left",
            )
    for ax in (ax_sgd, ax_sgd_gc, ax_adam):
        ax.set_ylabel("w̄ᵢ − w̄ᵢ(epoch 0)  (weight units)")
    for arm in results["arms"]:
        runs = _runs(results, arm["key"])
        min_ndim = {"none": 2, "all": 2, "conv": 4, "update": 2}.get(arm["gc"], 2)
        per_run = []
        for r in runs:
            nd = r.get("weight_ndims") or {}
            layers = [n for n in r["max_abs_weight_mean_drift"] if nd.get(n, 2) >= min_ndim]
            per_run.append(np.max([r["max_abs_weight_mean_drift"][n] for n in layers], axis=0))
        _band(ax_all, epochs[1:], [p[1:] for p in per_run], arm["key"], arm["name"], floor=_FLOOR)
    ax_all.set_yscale("log")
    ax_all.set_ylim(bottom=_FLOOR / 2)
    ax_all.set_ylabel("max over units of |w̄ᵢ − w̄ᵢ⁰|  (log)")
    ax_all.set_title(
        "Largest drift over the tensors each arm centralizes\n(no GC: all ndim ≥ 2 weights; "
        "GC-conv: conv kernels), mean ± std over seeds",
        fontsize=10,
    )
    ax_all.legend(fontsize=8, loc="lower right", ncol=2)
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        "Drift of each unit's weight mean w̄ᵢ during training — " + _title(results) + "\n"
        "GC-SGD is projected descent on eᵀwᵢ = const: its means stay at float32 rounding. "
        "Adam + GC still drifts: GC zeroes the mean of the gradient,\nnot of Adam's update "
        "m̂/(√v̂ + ε), which divides each element by its own scale; GC of the update "
        '(gc_where="update") holds the means.',
        fontsize=11,
    )
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _paired_markdown(results: Mapping[str, Any]) -> list[str]:
    """Per seed, each GC arm's final test accuracy minus its optimizer's without GC."""
    gc_arms = [a for a in results["arms"] if a["gc"] != "none"]
    if not gc_arms:
        return []
    seeds = results["config"]["seeds"]
    head = ["arm", *(f"seed {s}" for s in seeds), "mean", "std", "min", "max"]
    lines = [
        "Paired differences in final test accuracy (pp), GC arm minus the same optimizer "
        "without GC, seed by seed:",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for arm in gc_arms:
        d = results["summary"][arm["key"]].get("delta_test_accuracy")
        if d is None:
            continue
        per = [100 * v for v in d["per_seed"]]
        cells = [f"{v:+.2f}" for v in per]
        stats = [f"{100 * d['mean']:+.2f}", f"{100 * d['std']:.2f}", f"{min(per):+.2f}"]
        lines.append("| " + " | ".join([arm["name"], *cells, *stats, f"{max(per):+.2f}"]) + " |")
    return [*lines, ""]


def write_markdown(results: Mapping[str, Any], path: str | Path) -> Path:
    """The table, its notes, the verdicts and the configuration as Markdown."""
    cfg, env = results["config"], results.get("environment", {})
    rows = _rows(results)
    md = [
        "| " + " | ".join(c.replace("|", "\\|") for c in rows[0]) + " |",
        "|" + "|".join("---" for _ in rows[0]) + "|",
        *("| " + " | ".join(r) + " |" for r in rows[1:]),
    ]
    optimizers = "; ".join(
        f"{name} " + ", ".join(f"{k} {v:g}" for k, v in cfg["hyperparameters"][key].items())
        for key, name in (("sgd", "SGD"), ("adam", "Adam"))
        if key in cfg["hyperparameters"]
    )
    n = len(cfg["seeds"])
    text = [
        f"**{_title(results)}**, {cfg['epochs']} epochs, batch {cfg['batch_size']}; "
        f"{optimizers}. Model: {cfg['model']}.",
        "",
        f"Final-epoch test accuracy and train loss, mean ± std over {n} "
        f"seed{'s' if n != 1 else ''}; Δ vs no GC is the paired difference (same seed, same "
        "initial weights, same batches), mean ± std over seeds.",
        "",
        *md,
        "",
        *(f"- {line}" for line in table_notes(results)),
        "",
        *_paired_markdown(results),
        *(f"- {line}" for line in results.get("verdicts", [])),
        "",
        f"`{results.get('command', 'gcore demo')}` — training "
        f"{results.get('total_seconds', 0):.0f} s "
        f"on {env.get('cpu', '?')} ({env.get('cpu_count', '?')} logical CPUs), "
        f"Python {env.get('python', '?')}, "
        + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
    ]
    path = Path(path)
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def _clean(obj: Any) -> Any:
    # JSON has no NaN/inf; numpy scalars are not serialisable.
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(results: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``results`` as indented JSON (non-finite numbers become ``null``)."""
    path = Path(path)
    path.write_text(json.dumps(_clean(results), indent=1) + "\n")
    return path
