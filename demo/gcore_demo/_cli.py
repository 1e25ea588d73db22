"""``gcore demo``: train with and without GC, print the table, write the plots and JSON."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .arms import DEFAULT_HYPERPARAMETERS
from .data import DATASETS
from .experiment import BACKENDS, DEFAULT_EPOCHS, _backend, run_demo

QUICK_EPOCHS = 3
QUICK_SEEDS = 2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    epochs = ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items())
    p = argparse.ArgumentParser(
        prog="gcore demo",
        description=(
            "Train a small network with SGD-momentum and Adam, each without GC, with GC and "
            "with GC on conv kernels only, over several seeds (same initial weights and "
            "batch order for every arm of a seed). Prints a table and writes curves.png, "
            "weight_mean.png and results.json. Offline: the data are generated locally."
        ),
    )
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="default: torch (CPU)")
    p.add_argument("--data", choices=DATASETS, default="digits", help="default: digits")
    p.add_argument("--epochs", type=_positive, help=f"default: {epochs}; --quick: 3")
    p.add_argument("--seeds", type=_positive, help="number of seeds (default 3; --quick: 2)")
    p.add_argument("--batch-size", type=_positive, default=64, help="default: 64")
    p.add_argument(
        "--out", type=Path, default=Path("demo-results"), help="output folder (demo-results)"
    )
    p.add_argument(
        "--quick", action="store_true", help="a short run (3 epochs, 2 seeds), for tests"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def _say(text: str) -> None:
    enc = sys.stdout.encoding or "utf-8"
    print(text.encode(enc, errors="replace").decode(enc), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gcore demo`` with command-line arguments ``argv`` (``sys.argv[1:]`` if None).

    Returns the exit status: 0 on success, 2 for a usage error or a missing dependency.

    Examples
    --------
    >>> import tempfile
    >>> from gcore_demo import main
    >>> with tempfile.TemporaryDirectory() as out:  # doctest: +ELLIPSIS
    ...     main(["--backend", "numpy", "--epochs", "1", "--seeds", "1", "--no-progress",
    ...           "--out", out])
    gcore demo: digits ...
    0
    """
    args = _parser().parse_args(argv)
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS[args.data])
    seeds = args.seeds or (QUICK_SEEDS if args.quick else 3)
    started = time.perf_counter()
    try:
        from . import report  # matplotlib is imported when plotting

        _backend(args.backend)  # a missing framework is reported before any work
        _say(
            f"gcore demo: {args.data} data, {args.backend} backend, {epochs} epochs, "
            f"{seeds} seeds, batch {args.batch_size}, no weight decay; "
            f"SGD {DEFAULT_HYPERPARAMETERS['sgd']}, Adam {DEFAULT_HYPERPARAMETERS['adam']}"
        )
        results = run_demo(
            backend=args.backend,
            data=args.data,
            epochs=epochs,
            seeds=seeds,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except ImportError as err:
        print(f"gcore demo: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # an option out of range for this data (e.g. --batch-size)
        print(f"gcore demo: error: {err}", file=sys.stderr)
        return 2
    cfg = results["config"]
    _say(f"\ndata:  {cfg['data_description']}\nmodel: {cfg['model']}\n")
    _say(
        f"Final-epoch test accuracy and train loss, mean ± std over {seeds} seeds; "
        "Δ vs no GC is paired by seed:"
    )
    _say(report.format_table(results))
    _say(
        "max |Δ w̄ᵢ|: largest change of any unit's weight mean during training; s/run: median "
        "wall time per run, epoch-wise evaluation included (and, for jax, compilation)."
    )
    for line in results["verdicts"]:
        _say("  " + line)
    args.out.mkdir(parents=True, exist_ok=True)
    results["command"] = "gcore demo " + " ".join(sys.argv[1:] if argv is None else argv)
    written = [
        report.plot_curves(results, args.out / "curves.png"),
        report.plot_weight_mean(results, args.out / "weight_mean.png"),
    ]
    written.append(report.write_json(results, args.out / "results.json"))
    _say("wrote " + ", ".join(str(p) for p in written))
    _say(f"total {time.perf_counter() - started:.0f} s")
    return 0
