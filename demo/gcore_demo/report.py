"""The demo's outputs: the terminal table, curves.png, weight_mean.png and results.json."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["format_table", "plot_curves", "plot_weight_mean", "write_json"]

# One colour per arm; SGD arms solid, Adam arms dashed.
COLOURS = {
    "sgd": "#1f77b4",
    "sgd_gc": "#d62728",
    "sgd_gcc": "#2ca02c",
    "adam": "#7f7f7f",
    "adam_gc": "#ff7f0e",
    "adam_gcc": "#9467bd",
}
_FLOOR = 1e-10  # log-scale floor for drifts that are exactly zero


def _style(key: str) -> dict[str, Any]:
    return {"color": COLOURS.get(key, "black"), "ls": "--" if key.startswith("adam") else "-"}


def format_table(results: Mapping[str, Any]) -> str:
    """The summary as a fixed-width text table (what ``gcore demo`` prints).

    Examples
    --------
    >>> from gcore_demo import format_table, run_demo
    >>> res = run_demo(backend="numpy", epochs=1, seeds=2, progress=False)
    >>> print(format_table(res).splitlines()[0])  # doctest: +NORMALIZE_WHITESPACE
    arm  test acc (%)  Δ vs no GC (pp)  final train loss  epochs to 97%  max |Δ w̄ᵢ|  s/run
    """
    cfg = results["config"]
    target = round(100 * cfg["target_accuracy"])
    header = (
        "arm",
        "test acc (%)",
        "Δ vs no GC (pp)",
        "final train loss",
        f"epochs to {target}%",
        "max |Δ w̄ᵢ|",
        "s/run",
    )
    rows = [header]
    for arm in results["arms"]:
        s = results["summary"][arm["key"]]
        acc, loss, ett = s["test_accuracy"], s["final_train_loss"], s["epochs_to_target"]
        d = s.get("delta_test_accuracy")
        rows.append(
            (
                arm["name"],
                f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}",
                "—" if d is None else f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f}",
                f"{loss['mean']:.4f} ± {loss['std']:.4f}",
                "never"
                if ett["mean"] is None
                else f"{ett['mean']:.1f} ({ett['reached']}/{ett['runs']})",
                f"{s['max_abs_weight_mean_drift']:.1e}",
                f"{s['seconds_per_run']:.1f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _band(ax, x, runs, key, label, scale=1.0):
    y = scale * np.asarray(runs)
    mean, std = y.mean(axis=0), y.std(axis=0, ddof=1) if len(y) > 1 else np.zeros(y.shape[1])
    (line,) = ax.plot(x, mean, label=label, lw=1.8, **_style(key))
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
    return mean, std


def _title(results: Mapping[str, Any]) -> str:
    cfg = results["config"]
    return (
        f"{cfg['data']} ({cfg['n_train']} train / {cfg['n_test']} test), {cfg['backend']} "
        f"backend, {len(cfg['seeds'])} seeds: mean ± std"
    )


def plot_curves(results: Mapping[str, Any], path: str | Path) -> Path:
    """Train loss and test accuracy per epoch, mean line with a ± std band per arm."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cfg = results["config"]
    epochs = np.arange(1, cfg["epochs"] + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 5.2), layout="constrained")
    lows = []
    for arm in results["arms"]:
        runs = [r for r in results["runs"] if r["arm"] == arm["key"]]
        _band(ax_loss, epochs, [r["train_loss"] for r in runs], arm["key"], arm["name"])
        mean, std = _band(
            ax_acc, epochs, [r["test_accuracy"] for r in runs], arm["key"], arm["name"], 100
        )
        early = len(mean) // 10  # first tenth of training is allowed to fall off the axis
        lows.append(mean[early] - std[early])
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss (cross-entropy, nats, log scale)")
    ax_loss.set_title("Training loss (mean over the epoch's batches)")
    target = 100 * cfg["target_accuracy"]
    ax_acc.axhline(target, color="black", lw=0.8, ls=":", label=f"target {target:.0f}%")
    # Show the region where the arms differ; epoch 1 may sit far below.
    ax_acc.set_ylim(max(0.0, min(min(lows), target) - 2), 100)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("Test accuracy after each epoch")
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.set_xlim(1, max(2, cfg["epochs"]))
    fig.suptitle(_title(results) + "  (SGD solid, Adam dashed)", fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_weight_mean(results: Mapping[str, Any], path: str | Path) -> Path:
    """Per-unit drift of the weight mean with and without GC (GC-SGD keeps it at 0)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cfg = results["config"]
    epochs = np.arange(0, cfg["epochs"] + 1)
    seed0 = cfg["seeds"][0]
    run = {r["arm"]: r for r in results["runs"] if r["seed"] == seed0}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
    pair = [k for k in ("sgd", "sgd_gc") if k in run]
    lim = max(max(abs(v) for e in run[k]["first_layer_unit_drift"] for v in e) for k in pair)
    lim = 1.1 * lim if lim > 0 else 1.0
    names = {a["key"]: a["name"] for a in results["arms"]}
    for ax, key in zip(axes[:2], pair, strict=False):
        drift = np.asarray(run[key]["first_layer_unit_drift"])  # (epochs + 1, units)
        ax.plot(epochs, drift, color=COLOURS[key], lw=0.9, alpha=0.7)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylim(-lim, lim)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("w̄ᵢ − w̄ᵢ(epoch 0)  (weight units)")
        ax.set_title(
            f"{names[key]}: each line is one unit of {run[key]['first_layer']}\n"
            f"({drift.shape[1]} units, seed {seed0}); max |drift| {np.abs(drift).max():.1e}",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
    ax = axes[2]
    for arm in results["arms"]:
        runs = [r for r in results["runs"] if r["arm"] == arm["key"]]
        # Largest |drift| over all weight tensors and units, averaged over seeds.
        per_run = [
            np.max(np.asarray(list(r["max_abs_weight_mean_drift"].values())), axis=0) for r in runs
        ]
        y = np.maximum(np.mean(per_run, axis=0), _FLOOR)
        ax.plot(epochs[1:], y[1:], label=arm["name"], lw=1.8, **_style(arm["key"]))
    ax.set_yscale("log")
    ax.set_ylim(bottom=_FLOOR / 2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("max over units and layers of |w̄ᵢ − w̄ᵢ⁰|  (log)")
    ax.set_title(
        "Largest drift over all weight tensors (ndim ≥ 2)\nand units, mean over seeds",
        fontsize=10,
    )
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        "Drift of each unit's weight mean w̄ᵢ = eᵀwᵢ/√M during training. GC-SGD without "
        "weight decay is projected descent on eᵀwᵢ = const: it stays at float32 rounding.\n"
        + _title(results),
        fontsize=11,
    )
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
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
