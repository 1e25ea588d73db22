"""Run every arm over several seeds and summarise: the numbers behind the table and plots."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

import gcore

from .arms import ARMS, DEFAULT_HYPERPARAMETERS, Arm
from .data import DATASETS, Dataset, load_data

__all__ = ["BACKENDS", "DEFAULT_EPOCHS", "run_demo", "summarize"]

BACKENDS = ("torch", "jax", "numpy")
# Long enough for every arm to plateau (digits: by epoch ~12; MNIST-1D: ~15). Measured on a
# shared 2-core VM under a load average of 9-15: the default `gcore demo` (torch, digits,
# 3 seeds) 424 s wall for 69 s of CPU time; `--data mnist1d --seeds 5` 1699 s for 255 s.
DEFAULT_EPOCHS: dict[str, int] = {"digits": 20, "mnist1d": 20}
_EXTRA_FOR = {"torch": "demo", "jax": "demo-jax", "numpy": "demo"}


def _backend(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is unknown; allowed: {', '.join(BACKENDS)}")
    try:
        return importlib.import_module(f"gcore_demo._{name}_backend")
    except ImportError as err:
        raise ImportError(
            f"backend {name!r} needs {err.name or 'a missing package'}: "
            f"pip install 'gradient-centralization[{_EXTRA_FOR[name]}]'"
        ) from err


def _check_count(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r} is invalid; allowed: an integer >= {low}")


def batch_plan(n: int, batch_size: int, epochs: int, seed: int) -> list[list[np.ndarray]]:
    """Shuffled mini-batch indices per epoch (last partial batch dropped), fixed by seed.

    Every arm of a seed trains on exactly these batches, in this order.
    """
    rng = np.random.default_rng([seed, 1])  # independent of the weight init stream
    n_batches = n // batch_size
    plan = []
    for _ in range(epochs):
        perm = rng.permutation(n)
        plan.append([perm[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)])
    return plan


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", disable=not enabled, leave=True)


def _run_one(mod, arm, data, seed, plan, hyper, progress) -> dict[str, Any]:
    t0 = time.perf_counter()
    trainer = mod.Trainer(arm, data, seed, hyper)
    drifts = [trainer.weight_mean_drift()]
    losses: list[float] = []
    accs: list[float] = []
    with _progress(len(plan), f"{arm.name:<18} seed {seed}", progress) as bar:
        for batches in plan:
            losses.append(trainer.train_epoch(batches))
            accs.append(trainer.accuracy(data.x_test, data.y_test))
            drifts.append(trainer.weight_mean_drift())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", test_acc=f"{accs[-1]:.3f}", refresh=False)
            bar.update()
    seconds = time.perf_counter() - t0
    reached = [e + 1 for e, a in enumerate(accs) if a >= data.target_accuracy]
    layers = list(drifts[0])  # weight tensors (ndim >= 2), first layer first
    ndims = {n: int(trainer.initial[n].ndim) for n in layers}
    return {
        "arm": arm.key,
        "seed": seed,
        "train_loss": losses,
        "test_accuracy": accs,
        "epochs_to_target": reached[0] if reached else None,
        "seconds": seconds,
        # Per layer, per epoch (0 = initial): the largest |change of a unit's weight mean|.
        "max_abs_weight_mean_drift": {
            layer: [float(np.max(np.abs(d[layer]))) for d in drifts] for layer in layers
        },
        "weight_ndims": ndims,
        "first_layer": layers[0],
        # Every unit of the first layer, per epoch: mean(w_i) - mean(w_i at epoch 0).
        "first_layer_unit_drift": [d[layers[0]].tolist() for d in drifts],
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _centralized(run: Mapping[str, Any], arm: Arm) -> list[str]:
    """The weight tensors ``arm`` centralizes; for an arm without GC, those GC would (all
    ``ndim >= 2``). Runs recorded without ``weight_ndims`` count every tensor."""
    ndims = run.get("weight_ndims")
    layers = list(run["max_abs_weight_mean_drift"])
    if ndims is None:
        return layers
    low = arm.min_ndim or 2
    return [n for n in layers if ndims[n] >= low]


def _epochs_to_target(reached: Sequence[int | None]) -> dict[str, Any]:
    """Median over *all* runs, a run that never reached the target counting as later than
    any that did (so the median is ``None`` when fewer than half reached it)."""
    ranked = sorted(math.inf if e is None else e for e in reached)
    n = len(ranked)
    mid = ranked[(n - 1) // 2], ranked[n // 2]
    median = None if math.inf in mid else (mid[0] + mid[1]) / 2
    return {"median": median, "reached": sum(e is not None for e in reached), "runs": n}


def summarize(runs: Sequence[Mapping[str, Any]], arms: Sequence[Arm]) -> dict[str, Any]:
    """Per arm: final test accuracy and train loss (mean, sample std), epochs to the target
    (median over all runs, and how many reached it), seconds per run, the largest
    weight-mean drift of the tensors the arm centralizes, and the paired change against the
    same optimizer without GC (same seeds, same init, same batches).

    Examples
    --------
    >>> from gcore_demo import Arm, summarize
    >>> def run(arm, seed, acc):
    ...     return {"arm": arm, "seed": seed, "test_accuracy": [acc], "train_loss": [0.1],
    ...             "epochs_to_target": None, "seconds": 1.0,
    ...             "max_abs_weight_mean_drift": {"w": [0.0, 0.01]}}
    >>> runs = [run("sgd", 0, 0.90), run("sgd", 1, 0.92),
    ...         run("sgd_gc", 0, 0.93), run("sgd_gc", 1, 0.94)]
    >>> s = summarize(runs, [Arm("sgd", "none"), Arm("sgd", "all")])
    >>> round(s["sgd_gc"]["delta_test_accuracy"]["mean"], 3)
    0.025
    """
    by_arm: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r
    out: dict[str, Any] = {}
    for arm in arms:
        rs = by_arm.get(arm.key, {})
        if not rs:
            raise ValueError(f"no runs for arm {arm.key!r}")
        seeds = sorted(rs)
        acc = [rs[s]["test_accuracy"][-1] for s in seeds]
        entry: dict[str, Any] = {
            "name": arm.name,
            "seeds": seeds,
            "test_accuracy": dict(zip(("mean", "std"), _mean_std(acc), strict=True)),
            "final_train_loss": dict(
                zip(
                    ("mean", "std"),
                    _mean_std([rs[s]["train_loss"][-1] for s in seeds]),
                    strict=True,
                )
            ),
            "epochs_to_target": _epochs_to_target([rs[s]["epochs_to_target"] for s in seeds]),
            # Median: the very first run of a process also pays its warm-up (imports,
            # allocator, jit), which a mean would charge to whichever arm runs first.
            "seconds_per_run": float(np.median([rs[s]["seconds"] for s in seeds])),
            # Over the tensors this arm centralizes (for no GC: those GC would): a GC-conv
            # arm's untouched linear layer would otherwise hide that its conv kernels hold.
            "max_abs_weight_mean_drift": max(
                max(rs[s]["max_abs_weight_mean_drift"][n])
                for s in seeds
                for n in _centralized(rs[s], arm)
            ),
            "max_abs_weight_mean_drift_all": max(
                max(v) for s in seeds for v in rs[s]["max_abs_weight_mean_drift"].values()
            ),
        }
        base = by_arm.get(arm.baseline.key, {})
        if arm.gc != "none" and base:
            paired = [rs[s]["test_accuracy"][-1] - base[s]["test_accuracy"][-1] for s in seeds]
            m, sd = _mean_std(paired)
            entry["delta_test_accuracy"] = {"mean": m, "std": sd, "per_seed": paired}
        out[arm.key] = entry
    return out


def verdicts(
    summary: Mapping[str, Any], arms: Sequence[Arm], *, resolution: float = 0.0
) -> list[str]:
    """One plain sentence per GC arm: did it change accuracy beyond the seed-to-seed spread?

    The paired change (GC minus no GC, same seed) is called clear when its mean exceeds
    twice its standard error, the seed-to-seed std of the plain optimizer *and* two test
    examples (``resolution`` = 1 / number of test examples: accuracy moves in such steps,
    so with few seeds both spreads are often exactly 0). Fewer than 3 seeds: inconclusive.
    """
    lines = []
    for arm in arms:
        d = summary[arm.key].get("delta_test_accuracy")
        if d is None:
            continue
        n = len(summary[arm.key]["seeds"])
        spread = summary[arm.baseline.key]["test_accuracy"]["std"]
        se = d["std"] / math.sqrt(n) if n > 1 else math.inf
        clear = abs(d["mean"]) > max(2 * se, spread, 2 * resolution)
        if n < 3:
            word = "inconclusive (fewer than 3 seeds)"
        else:
            word = ("helped" if d["mean"] > 0 else "hurt") if clear else "made no clear difference"
        lines.append(
            f"{arm.name}: {word} — test accuracy {100 * d['mean']:+.2f} pp vs "
            f"{arm.baseline.name} (paired over {n} seeds, std {100 * d['std']:.2f} pp); "
            f"seed-to-seed std of {arm.baseline.name}: {100 * spread:.2f} pp"
        )
    return lines


def _versions() -> dict[str, str]:
    out = {}
    for dist in (
        "gradient-centralization",
        "numpy",
        "torch",
        "jax",
        "flax",
        "optax",
        "scikit-learn",
        "mnist1d",
        "matplotlib",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    """Machine and library versions, recorded in results.json."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "versions": _versions(),
    }


def run_demo(
    *,
    backend: str = "torch",
    data: str | Dataset = "digits",
    epochs: int | None = None,
    seeds: int = 3,
    batch_size: int = 64,
    hyperparameters: Mapping[str, Mapping[str, float]] | None = None,
    progress: bool = True,
    arms: Sequence[Arm] | None = None,
) -> dict[str, Any]:
    """Train every arm for every seed and return all numbers (what results.json holds).

    Parameters
    ----------
    backend : {"torch", "jax", "numpy"}
        Framework and model: the BatchNorm CNN in PyTorch or Flax, or a NumPy MLP (which has
        no conv kernels, so its GC-conv-only arms are skipped).
    data : {"digits", "mnist1d"} or Dataset
        The dataset (see :func:`load_data`).
    epochs : int, optional
        Passes over the training set; default :data:`DEFAULT_EPOCHS` for the dataset.
    seeds : int, default 3
        Seeds ``0 … seeds-1``; within a seed every arm starts from the same weights and
        sees the same batches in the same order.
    batch_size : int, default 64
    hyperparameters : dict, optional
        ``{"sgd": {...}, "adam": {...}}`` keyword arguments of the optimizers; default
        :data:`DEFAULT_HYPERPARAMETERS`. A ``weight_decay`` entry is L2 decay added to
        the gradient before GC (as in the paper).
    progress : bool, default True
        Show a progress bar per run (on stderr).
    arms : sequence of Arm, optional
        Default :data:`ARMS` (those with GC-conv skipped on a backend without conv).

    Notes
    -----
    The torch backend calls ``torch.set_num_threads(1)``: a model this small runs no
    faster on more threads, and on a shared CPU their spin-waits stall whole runs.

    Returns
    -------
    dict
        ``config``, ``environment``, ``arms``, ``runs`` (one per arm × seed, with
        per-epoch train loss, test accuracy and weight-mean drift) and ``summary``.

    Examples
    --------
    >>> from gcore_demo import run_demo
    >>> res = run_demo(backend="numpy", epochs=2, seeds=1, progress=False)
    >>> [a["key"] for a in res["arms"]]
    ['sgd', 'sgd_gc', 'adam', 'adam_gc', 'adam_gcu']
    >>> res["summary"]["sgd_gc"]["max_abs_weight_mean_drift"] < 1e-6  # GC-SGD invariant
    True
    """
    mod = _backend(backend)
    if isinstance(data, str):
        data = load_data(data)
    elif not isinstance(data, Dataset):
        raise TypeError(f"data must be one of {DATASETS} or a Dataset, got {type(data)}")
    if epochs is None:
        epochs = DEFAULT_EPOCHS.get(data.name, DEFAULT_EPOCHS["digits"])
    _check_count("epochs", epochs, 1)
    _check_count("seeds", seeds, 1)
    _check_count("batch_size", batch_size, 2)
    if batch_size > len(data.y_train):
        raise ValueError(
            f"batch_size={batch_size} is larger than the training set ({len(data.y_train)})"
        )
    hyper = {k: dict(v) for k, v in (hyperparameters or DEFAULT_HYPERPARAMETERS).items()}
    missing = {"sgd", "adam"} - set(hyper)
    if missing:
        raise ValueError(f"hyperparameters lacks {sorted(missing)}")
    arms = [a for a in (ARMS if arms is None else arms) if mod.HAS_CONV or a.gc != "conv"]
    started = time.perf_counter()
    runs = []
    # Seeds outermost: the arms of a seed run back to back, so a change in machine load
    # affects every arm alike.
    for seed in range(seeds):
        plan = batch_plan(len(data.y_train), batch_size, epochs, seed)
        for arm in arms:
            runs.append(_run_one(mod, arm, data, seed, plan, hyper, progress))
    summary = summarize(runs, arms)
    return {
        "config": {
            "backend": backend,
            "data": data.name,
            "data_description": data.description,
            "n_train": len(data.y_train),
            "n_test": len(data.y_test),
            "model": mod.describe(data),
            "epochs": epochs,
            "seeds": list(range(seeds)),
            "batch_size": batch_size,
            "hyperparameters": hyper,
            "weight_decay": {k: float(v.get("weight_decay", 0.0)) for k, v in hyper.items()},
            "target_accuracy": data.target_accuracy,
            "gcore_version": gcore.__version__,
        },
        "environment": environment(),
        "arms": [
            {"key": a.key, "name": a.name, "optimizer": a.optimizer, "gc": a.gc} for a in arms
        ],
        "runs": runs,
        "summary": summary,
        "verdicts": verdicts(summary, arms, resolution=1.0 / len(data.y_test)),
        "total_seconds": time.perf_counter() - started,
    }
