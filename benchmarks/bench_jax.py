"""JAX/optax step time with and without Gradient Centralization, ResNet-50 in Flax layout.

Times one jitted optimizer step (``tx.update`` + ``optax.apply_updates``, parameters and
state donated) on the 161 parameter tensors of ResNet-50 (25.6 M float32 parameters) in
the Flax layout (conv kernels ``(kh, kw, in, out)``, dense ``(in, out)``), for:

* Adam: ``optax.adam`` | ``optax.chain(optax.centralize(), optax.adam)`` (axis 0: the
  wrong axis for Flax, shown for its cost) | ``optax.chain(gcore_jax.centralize(),
  optax.adam)`` | ``gcore_jax.adam``;
* SGD with momentum 0.9: the same four with ``sgd``.

Variants run interleaved (A B C D A B C D ...) after a warm-up; each step ends with
``block_until_ready``. Reported: median step time per variant and the median over rounds
of each variant's time divided by the plain optax step of the same round.

Usage: ``python benchmarks/bench_jax.py [--repeats 30] [--warmup 3]``; writes
``benchmarks/results/jax.md`` and ``jax.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).parent))

from resnet_shapes import count, flax_layout, resnet50

import gcore_jax

RESULTS = Path(__file__).parent / "results"


def variants() -> dict[str, dict[str, optax.GradientTransformation]]:
    return {
        "adam": {
            "optax.adam": optax.adam(1e-3),
            "chain(optax.centralize(), optax.adam)": optax.chain(
                optax.centralize(), optax.adam(1e-3)
            ),
            "chain(gcore_jax.centralize(), optax.adam)": optax.chain(
                gcore_jax.centralize(), optax.adam(1e-3)
            ),
            "gcore_jax.adam": gcore_jax.adam(1e-3),
        },
        "sgd": {
            "optax.sgd": optax.sgd(0.1, momentum=0.9),
            "chain(optax.centralize(), optax.sgd)": optax.chain(
                optax.centralize(), optax.sgd(0.1, momentum=0.9)
            ),
            "chain(gcore_jax.centralize(), optax.sgd)": optax.chain(
                gcore_jax.centralize(), optax.sgd(0.1, momentum=0.9)
            ),
            "gcore_jax.sgd": gcore_jax.sgd(0.1, momentum=0.9),
        },
    }


def _step_fn(tx: optax.GradientTransformation):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def run_group(txs, shapes, *, repeats: int, warmup: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = {
        f"p{i:03d}": (0.05 * rng.standard_normal(s)).astype(np.float32)
        for i, s in enumerate(shapes)
    }
    grads = {
        k: jnp.asarray(1e-3 * rng.standard_normal(v.shape).astype(np.float32))
        for k, v in base.items()
    }
    runs = {}
    for name, tx in txs.items():
        params = {k: jnp.array(v) for k, v in base.items()}
        runs[name] = [_step_fn(tx), params, tx.init(params)]
    for _ in range(warmup):
        for run in runs.values():
            run[1], run[2] = run[0](run[1], run[2], grads)
            jax.block_until_ready((run[1], run[2]))
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            run[1], run[2] = run[0](run[1], run[2], grads)
            jax.block_until_ready((run[1], run[2]))
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    baseline = next(iter(times))
    same_work = list(times)[1]  # chain(optax.centralize(), ...): the same work on axis 0
    rows = []
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times[baseline], strict=True)]
        same = [t / b for t, b in zip(ts, times[same_work], strict=True)]
        cpu_ratios = [t / b for t, b in zip(cpu[name], cpu[baseline], strict=True)]
        rows.append(
            {
                "variant": name,
                "median_ms": 1e3 * statistics.median(ts),
                "min_ms": 1e3 * min(ts),
                "median_ratio": statistics.median(ratios),
                "median_ratio_vs_optax_centralize": statistics.median(same),
                "min_ratio": min(ts) / min(times[baseline]),
                "median_cpu_ms": 1e3 * statistics.median(cpu[name]),
                "median_cpu_ratio": statistics.median(cpu_ratios),
                "times_ms": [1e3 * t for t in ts],
            }
        )
    return rows


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": version("jaxlib"),
        "optax": optax.__version__,
        "numpy": np.__version__,
        "devices": [str(d) for d in jax.devices()],
        # other processes share the cores: the 1-minute load average at the start
        "load_average": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    shapes = [flax_layout(s) for s in resnet50()]
    result = {
        "benchmark": "jax optimizer step, ResNet-50 shapes, Flax layout, float32",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tensors": len(shapes),
        "params": count(shapes),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "machine": machine(),
        "groups": {},
    }
    for group, txs in variants().items():
        rows = run_group(txs, shapes, repeats=args.repeats, warmup=args.warmup)
        result["groups"][group] = rows
        for r in rows:
            print(
                f"{r['variant']:45s} {r['median_ms']:8.2f} ms  x{r['median_ratio']:.3f} "
                f"(vs optax.centralize chain x{r['median_ratio_vs_optax_centralize']:.3f}) "
                f"(min x{r['min_ratio']:.3f}, cpu x{r['median_cpu_ratio']:.3f})"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "jax.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "jax.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# JAX / optax: GC step time on ResNet-50 shapes (Flax layout)",
        "",
        f"{result['tensors']} tensors, {result['params'] / 1e6:.1f} M float32 parameters; "
        "one jitted step = `tx.update` + `optax.apply_updates`, params and state donated. "
        f"Variants interleaved, {result['warmup']} warm-up steps, median of "
        f"{result['repeats']} steps; ratio = median over rounds of (variant / plain optax "
        "step of the same round); min ratio = fastest step / fastest plain optax step; "
        "CPU time ratio = the same median ratio of the process's CPU time (all threads) per "
        "step, less sensitive to other processes on shared cores.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; Python {m['python']}, "
        f"jax {m['jax']}, jaxlib {m['jaxlib']}, optax {m['optax']}, numpy {m['numpy']}; "
        f"devices {', '.join(m['devices'])}. Run {result['date']}, load average "
        f"{m['load_average']:.1f} at the start (the cores are shared).",
        "",
        "| optimizer | variant | median step (ms) | min (ms) | median ratio | min ratio "
        "| CPU time ratio | median ratio vs `chain(optax.centralize(), ...)` |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for group, rows in result["groups"].items():
        for r in rows:
            lines.append(
                f"| {group} | `{r['variant']}` | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
                f"{r['median_ratio']:.3f} | {r['min_ratio']:.3f} | {r['median_cpu_ratio']:.3f} | "
                f"{r['median_ratio_vs_optax_centralize']:.3f} |"
            )
    lines += [
        "",
        "`optax.centralize()` centralizes along axis 0, i.e. per kernel row / input unit on "
        "Flax kernels (not the paper's GC); it is listed for its cost only. "
        "`gcore_jax.centralize()` and `gcore_jax.adam/sgd` centralize per output unit "
        "(last axis). The last column is each step's time over the same round's "
        "`chain(optax.centralize(), ...)` step, which does the same work (one mean and one "
        "subtraction per unit) on axis 0: the target is within ±3 %. No GPU on this machine: "
        "CPU (XLA:CPU) figures only.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
