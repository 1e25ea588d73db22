"""Draw the documentation's figures into docs/_static/figures/ (committed PNGs).

Run from the repository root after changing the maths or the look of a figure::

    python docs/make_figures.py

Every number drawn is computed here with gcore itself (NumPy backend), so a figure cannot
disagree with the code it illustrates.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import gcore

OUT = Path(__file__).parent / "_static" / "figures"
BLUE, ORANGE, GREEN, GREY, RED = "#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f", "#d62728"

plt.rcParams.update(
    {
        "figure.dpi": 110,
        "savefig.dpi": 110,
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)


def _arrow(ax, start, vec, color, label, offset=(0.0, 0.0), **kw):
    ax.annotate(
        "",
        xy=(start[0] + vec[0], start[1] + vec[1]),
        xytext=start,
        arrowprops={"arrowstyle": "-|>", "color": color, "lw": 2, "mutation_scale": 14},
    )
    ax.text(*(np.asarray(start) + np.asarray(vec) * 1.04 + offset), label, color=color, **kw)


def gc_in_one_picture() -> None:
    """Left: the geometry for M = 2. Right: one unit's gradient before and after GC."""
    fig, (geo, bars) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"wspace": 0.3})

    # Geometry: the hyperplane e^T w = e^T w0 is the line w1 + w2 = const.
    w0 = np.array([0.6, 1.6])
    g = np.array([1.3, 0.35])  # descent direction is -g; draw g itself
    pg = gcore.centralize(g[None, :])[0]  # P g for one unit (a 1 x 2 "weight")
    t = np.linspace(-1.2, 1.9, 2)
    line = w0[:, None] + np.array([1.0, -1.0])[:, None] * t
    geo.plot(*line, color=GREY, lw=1.5, ls="--")
    geo.annotate(
        r"hyperplane $e^\top w = e^\top w^0$",
        xy=w0 + np.array([1.0, -1.0]) * 1.0,
        xytext=(-0.5, 0.05),
        color=GREY,
        fontsize=9,
        arrowprops={"arrowstyle": "->", "color": GREY, "lw": 1},
    )
    e = np.ones(2) / np.sqrt(2)
    _arrow(geo, w0, g, BLUE, r"$g = \nabla_w L$", ha="left", va="bottom")
    _arrow(geo, w0, pg, ORANGE, r"$Pg = g - (e^\top g)\,e$", (0.12, 0.0), ha="left", va="top")
    _arrow(geo, w0, 0.7 * e, GREEN, r"$e = \frac{1}{\sqrt{M}}\mathbf{1}$", ha="right", va="bottom")
    geo.plot([w0[0] + g[0], w0[0] + pg[0]], [w0[1] + g[1], w0[1] + pg[1]], ":", color=GREY)
    geo.plot(*w0, "ko", ms=5)
    geo.text(w0[0] - 0.08, w0[1] - 0.05, r"$w^0$", ha="right", va="top")
    geo.set_xlim(-0.6, 2.4)
    geo.set_ylim(-0.2, 2.8)
    geo.set_aspect("equal")
    geo.set_xlabel(r"weight $w_1$")
    geo.set_ylabel(r"weight $w_2$")
    geo.set_title("GC projects the gradient onto the\nhyperplane of constant weight mean")

    rng = np.random.default_rng(3)
    grad = rng.normal(1.0, 0.7, size=(1, 9))  # one output unit, M = 9 (a 3x3 kernel)
    cent = gcore.centralize(grad)
    x = np.arange(grad.shape[1])
    bars.bar(x - 0.2, grad[0], width=0.4, color=BLUE, label=r"gradient $g$")
    bars.bar(x + 0.2, cent[0], width=0.4, color=ORANGE, label=r"centralized $Pg$")
    bars.hlines([grad.mean(), 0.0], -0.7, 8.5, colors=[BLUE, ORANGE], ls="--", lw=1)
    bars.text(8.6, grad.mean(), f" mean {grad.mean():.2f}", color=BLUE, va="center")
    bars.text(8.6, 0.0, " mean 0", color=ORANGE, va="center")
    bars.set_xlim(-0.7, 10.2)
    bars.set_ylim(top=3.3)
    bars.set_xticks(x)
    bars.set_xlabel(r"weight index $j$ within one output unit ($M = 9$)")
    bars.set_ylabel("gradient entry")
    bars.set_title("…i.e. it subtracts each unit's own mean")
    bars.legend(loc="upper right", frameon=False)
    fig.savefig(OUT / "gc_one_picture.png", bbox_inches="tight")
    plt.close(fig)


def flax_axis() -> None:
    """A Flax Dense kernel (in=4, out=3): the right and the wrong centralization axis."""
    g = np.array(
        [[0.9, -0.2, 0.1], [1.1, -0.4, 0.3], [0.7, 0.0, 0.2], [1.3, -0.2, 0.2]]
    )  # column j = output unit j; each unit has its own mean (1.0, -0.2, 0.2)
    right = gcore.centralize(g, axis=-1)  # output axis last: column means removed
    wrong = gcore.centralize(g, axis=0)  # treats rows (inputs) as units
    panels = [
        (g, "Flax Dense kernel gradient\n(in = 4, out = 3)"),
        (right, "centralize(g, axis=-1): correct,\neach unit's mean is 0"),
        (wrong, "centralize(g, axis=0): wrong,\nunits keep their means"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 4.4), gridspec_kw={"wspace": 0.45})
    vmax = np.abs(g).max()
    for ax, (a, title) in zip(axes, panels, strict=True):
        im = ax.imshow(a, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        for (i, j), v in np.ndenumerate(a):
            color = "white" if abs(v) > 0.7 * vmax else "black"
            ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=10, color=color)
        means = np.round(a.mean(axis=0), 2) + 0.0  # + 0.0 turns -0.0 into 0.0
        ax.set_xticks(
            range(3), [f"{j}\n(mean\n{m:+.2f})" for j, m in enumerate(means)], fontsize=9.5
        )
        ax.set_yticks(range(4))
        ax.set_xlabel("axis 1 = output unit")
        ax.set_ylabel("axis 0 = input feature")
        ax.set_title(title)
        ax.spines[:].set_visible(False)
    fig.colorbar(im, ax=axes, shrink=0.8, label="gradient entry")
    fig.savefig(OUT / "flax_axis.png", bbox_inches="tight")
    plt.close(fig)


def _toy_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 1.0, size=(256, 12))  # inputs with a non-zero mean
    w_true = rng.normal(size=(4, 12))
    y = x @ w_true.T
    w0 = rng.normal(0.3, 0.3, size=(4, 12))  # (out, in): torch layout, axis 0
    return x, y, w0


def _trajectory(rule, x, y, w0, steps: int = 150) -> np.ndarray:
    w = w0.copy()
    state = rule.init(w)
    drift = []
    for _ in range(steps):
        grad = (w @ x.T - y.T) @ x / len(x)  # mean-squared-error gradient
        updates, state = rule.update(grad, state, w)
        w = w + updates
        drift.append(float(np.abs(gcore.diagnostics.mean_drift(w, w0)).max()))
    return np.asarray(drift)


def weight_mean() -> None:
    """Per-unit weight-mean drift on a least-squares problem, for several optimizers."""
    x, y, w0 = _toy_problem()
    update_gc = gcore.GC(where="update")
    runs = [
        ("SGD, no GC", gcore.SGD(lr=0.02, momentum=0.9, gc=None), GREY, "-"),
        ("GC-SGD", gcore.SGD(lr=0.02, momentum=0.9), BLUE, "-"),
        ("GC-SGD + L2 decay", gcore.SGD(lr=0.02, momentum=0.9, weight_decay=0.1), GREEN, "--"),
        ("GC-Adam (where='gradient')", gcore.Adam(lr=0.02), ORANGE, "-"),
        ("GC-Adam (where='update')", gcore.Adam(lr=0.02, gc=update_gc), RED, "--"),
        ("GC-AdamW, decoupled decay 0.5", gcore.AdamW(lr=0.02, weight_decay=0.5), "#9467bd", ":"),
    ]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, rule, color, ls in runs:
        drift = _trajectory(rule, x, y, w0)
        ax.plot(
            np.arange(1, len(drift) + 1),
            np.maximum(drift, 1e-16),
            ls,
            color=color,
            lw=2,
            label=label,
        )
    ax.set_yscale("log")
    ax.set_ylim(5e-17, 10)
    ax.set_xlabel("optimizer step $t$")
    ax.set_ylabel(r"$\max_i\,|\bar w_i^{\,t} - \bar w_i^{\,0}|$ (weight-mean drift)")
    ax.set_title("Does each output unit's weight mean stay where it started?")
    ax.legend(loc="center right", frameon=False, fontsize=9)
    fig.savefig(OUT / "weight_mean.png", bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    gc_in_one_picture()
    flax_axis()
    weight_mean()
    print(f"wrote {', '.join(sorted(p.name for p in OUT.glob('*.png')))} to {OUT}")


if __name__ == "__main__":
    main()
