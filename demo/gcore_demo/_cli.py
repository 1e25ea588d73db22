"""``gcore demo``: train with and without GC, print the table, write the plots and JSON."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
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


def _per_optimizer(name: str):
    """``X`` (both optimizers) or ``sgd=X,adam=Y`` (either may be left out) → a dict."""

    def parse(text: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for item in text.split(","):
            key, sep, value = item.strip().rpartition("=")
            keys = [key.strip().lower()] if sep else ["sgd", "adam"]
            if any(k not in ("sgd", "adam") for k in keys):
                raise argparse.ArgumentTypeError(
                    f"{name}: {item!r}: expected a number, or sgd=NUMBER and/or adam=NUMBER"
                )
            try:
                number = float(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number") from None
            if not number >= 0 or number == float("inf"):
                raise argparse.ArgumentTypeError(f"{name}: {number} must be finite and >= 0")
            out.update(dict.fromkeys(keys, number))
        return out

    return parse


def _hyperparameters(lr: dict[str, float] | None, wd: dict[str, float] | None) -> dict:
    hyper = {k: dict(v) for k, v in DEFAULT_HYPERPARAMETERS.items()}
    for key, value in (lr or {}).items():
        hyper[key]["lr"] = value
    for key, value in (wd or {}).items():
        hyper[key]["weight_decay"] = value
    return hyper


def _describe(hyper: dict) -> str:
    parts = []
    for key, name in (("sgd", "SGD"), ("adam", "Adam")):
        h = dict(hyper[key])
        wd = h.pop("weight_decay", 0.0)
        kw = ", ".join(f"{k} {v:g}" for k, v in h.items())
        parts.append(f"{name} {kw}, " + (f"L2 weight decay {wd:g}" if wd else "no weight decay"))
    return "; ".join(parts)


def _check_out(out: Path) -> str | None:
    """Why results cannot be written to ``out`` (``None``: they can). Creates the folder."""
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a folder; give a folder (new or existing)"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        return f"cannot write results to --out {out}: {err.strerror or err}"
    if not os.access(out, os.W_OK):
        return f"cannot write results to --out {out}: permission denied"
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


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
    lrs = ", ".join(f"{k} {v['lr']:g}" for k, v in DEFAULT_HYPERPARAMETERS.items())
    p.add_argument(
        "--lr",
        type=_per_optimizer("--lr"),
        metavar="LR",
        help=f"learning rate: one number for both optimizers, or sgd=X,adam=Y (default: {lrs})",
    )
    p.add_argument(
        "--weight-decay",
        type=_per_optimizer("--weight-decay"),
        metavar="WD",
        help=(
            "L2 weight decay added to the gradient before GC, as in the paper: one number for "
            "both optimizers, or sgd=X,adam=Y (default: 0)"
        ),
    )
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
    hyper = _hyperparameters(args.lr, args.weight_decay)
    started = time.perf_counter()
    # Everything that can fail without training fails first: the output folder, then the
    # packages (a traceback after minutes of training would lose the results).
    problem = _check_out(args.out)
    if problem:
        print(f"gcore demo: error: {problem}", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401  (plots are drawn after training)

        from . import report

        _backend(args.backend)  # a missing framework is reported before any work
        _say(
            f"gcore demo: {args.data} data, {args.backend} backend, "
            f"{_plural(epochs, 'epoch')}, {_plural(seeds, 'seed')}, batch {args.batch_size}; "
            + _describe(hyper)
        )
        results = run_demo(
            backend=args.backend,
            data=args.data,
            epochs=epochs,
            seeds=seeds,
            batch_size=args.batch_size,
            hyperparameters=hyper,
            progress=not args.no_progress,
        )
    except ImportError as err:
        if getattr(err, "name", None) == "matplotlib":
            err = ImportError(
                "the plots need matplotlib: pip install 'gradient-centralization[demo]'"
            )
        print(f"gcore demo: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # an option out of range for this data (e.g. --batch-size)
        print(f"gcore demo: error: {err}", file=sys.stderr)
        return 2
    cfg = results["config"]
    _say(f"\ndata:  {cfg['data_description']}\nmodel: {cfg['model']}\n")
    _say(
        f"Final-epoch test accuracy and train loss, mean ± std over {_plural(seeds, 'seed')}; "
        "Δ vs no GC is paired by seed:"
    )
    _say(report.format_table(results))
    for line in report.table_notes(results):
        _say(line)
    for line in results["verdicts"]:
        _say("  " + line)
    results["command"] = "gcore demo " + " ".join(sys.argv[1:] if argv is None else argv)
    written = [
        report.plot_curves(results, args.out / "curves.png"),
        report.plot_weight_mean(results, args.out / "weight_mean.png"),
    ]
    written.append(report.write_markdown(results, args.out / "table.md"))
    written.append(report.write_json(results, args.out / "results.json"))
    _say("wrote " + ", ".join(str(p) for p in written))
    _say(f"total {time.perf_counter() - started:.0f} s")
    return 0
