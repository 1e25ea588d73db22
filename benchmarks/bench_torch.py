"""Step time of GC optimizers on ResNet-50 parameter shapes vs torch.optim (CPU).

161 tensors, 25.6 M parameters, random gradients. Every variant updates the same
parameter tensors (each with its own optimizer state), and the variants of one algorithm
run interleaved (A B C … A B C …) so that the load of a shared machine hits them alike;
we quote the median step time and the median of the per-round ratios to torch's fused
optimizer of the same algorithm.

    python benchmarks/bench_torch.py [--repeats 15] [--warmup 2] [--single] [--threads N]

"gcore_torch fused + compiled kernels" is the fused path after gcore_torch.load_kernels()
(row-blocked C++ kernels built on this machine); the other gcore_torch rows run without
them (pure PyTorch). "naive GC" is the usual per-tensor mean + sub_ before torch's fused
step; pytorch_optimizer's centralize_gradient (when installed) is the peer.

Writes benchmarks/results/torch.md and torch.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import gcore_torch
from gcore_torch import _kernels

sys.path.insert(0, str(Path(__file__).parent))
from resnet_shapes import count, resnet50

RESULTS = Path(__file__).parent / "results"
ALGOS = {
    "Adam": {"torch": torch.optim.Adam, "ours": gcore_torch.Adam, "kw": {"lr": 1e-3}},
    "AdamW": {"torch": torch.optim.AdamW, "ours": gcore_torch.AdamW, "kw": {"lr": 1e-3}},
    "SGD": {
        "torch": torch.optim.SGD,
        "ours": gcore_torch.SGD,
        "kw": {"lr": 0.1, "momentum": 0.9},
    },
}


def _naive_gc(params):
    # The common recipe: per tensor, mean then sub_ (GC of every ndim > 1 gradient).
    for p in params:
        g = p.grad
        if g.ndim > 1:
            g.sub_(g.mean(dim=tuple(range(1, g.ndim)), keepdim=True))


def _without_kernels(step):
    # The compiled kernels are process-wide once loaded; the pure-PyTorch paths are timed
    # with them switched off.
    def run():
        saved = _kernels._state["module"]
        _kernels._state["module"] = None
        try:
            step()
        finally:
            _kernels._state["module"] = saved

    return run


def variants(algo, params, single):
    spec = ALGOS[algo]
    kw = spec["kw"]
    out = {
        "torch fused": spec["torch"](params, fused=True, **kw),
        "torch foreach": spec["torch"](params, foreach=True, **kw),
        "gcore_torch fused (GC)": spec["ours"](params, fused=True, **kw),
        "gcore_torch foreach (GC)": spec["ours"](params, foreach=True, **kw),
        "gcore_torch default (GC)": spec["ours"](params, **kw),
        "naive GC + torch fused": spec["torch"](params, fused=True, **kw),
    }
    if single:
        out["gcore_torch single (GC)"] = spec["ours"](params, foreach=False, **kw)
    steps = {name: opt.step for name, opt in out.items()}
    kernels = _kernels.get()
    if kernels is not None:
        out["gcore_torch fused + compiled kernels (GC)"] = spec["ours"](params, fused=True, **kw)
        steps["gcore_torch fused + compiled kernels (GC)"] = out[
            "gcore_torch fused + compiled kernels (GC)"
        ].step
        for name in list(steps):
            if name.startswith("gcore_torch") and "compiled" not in name:
                steps[name] = _without_kernels(steps[name])
    naive = out["naive GC + torch fused"]

    def naive_step():
        _naive_gc(params)
        naive.step()

    steps["naive GC + torch fused"] = naive_step
    try:
        from pytorch_optimizer.optimizer.gradient_centralization import centralize_gradient
    except ImportError:
        pass
    else:
        peer = spec["torch"](params, fused=True, **kw)

        def peer_step():
            centralize_gradient([p.grad for p in params])
            peer.step()

        steps["pytorch_optimizer centralize_gradient + torch fused"] = peer_step
    return steps


def bench(algo, params, grads, repeats, warmup, single):
    steps = variants(algo, params, single)
    times = {name: [] for name in steps}

    def one(name):
        # The naive and peer variants centralize .grad in place: restore it each time.
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone() if "GC +" in name or "centralize" in name else g
        t = time.perf_counter()
        steps[name]()
        return time.perf_counter() - t

    for _ in range(warmup):
        for name in steps:
            one(name)
    for _ in range(repeats):
        for name in steps:
            if name == "gcore_torch single (GC)" and len(times[name]) >= 3:
                continue  # the reference path is slow; 3 samples say enough
            times[name].append(one(name))
    base = times["torch fused"]
    rows = []
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base, strict=False)]
        rows.append(
            {
                "algorithm": algo,
                "variant": name,
                "median_ms": statistics.median(ts) * 1e3,
                "ratio_vs_torch_fused": statistics.median(ratios),
                "samples": len(ts),
            }
        )
    return rows


def machine():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gradient-centralization": version("gradient-centralization"),
        "pytorch_optimizer": version("pytorch_optimizer"),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--single", action="store_true", help="also time the core-rule path")
    ap.add_argument("--algos", default="Adam,AdamW,SGD")
    ap.add_argument(
        "--threads", default="1,2", help="torch intra-op thread counts to run, e.g. 1,2"
    )
    ap.add_argument("--no-kernels", action="store_true", help="skip the compiled kernels")
    args = ap.parse_args(argv)
    kernels = False if args.no_kernels else gcore_torch.load_kernels()
    shapes = resnet50()
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.05) for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-2 for s in shapes]
    info = machine()
    info.update(
        tensors=len(shapes), params=count(shapes), repeats=args.repeats, compiled_kernels=kernels
    )
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for algo in args.algos.split(","):
            for r in bench(algo, params, grads, args.repeats, args.warmup, args.single):
                rows.append({"threads": threads, **r})
            info[f"load_average_after_{algo}_{threads}threads"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "torch.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    lines = [
        "# gcore_torch step time on ResNet-50 shapes (CPU)",
        "",
        f"{info['tensors']} tensors, {info['params'] / 1e6:.1f} M parameters, random "
        f"gradients; {args.repeats} interleaved rounds after {args.warmup} warm-up rounds; "
        "median step time and median per-round ratio to torch's fused optimizer.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, shared with other jobs "
        f"(load average at start "
        f"{info['load_average_at_start'][0]:.1f}); Python {info['python']}, torch "
        f"{info['torch']}, pytorch_optimizer {info['pytorch_optimizer']}.",
        "",
        "| threads | algorithm | variant | median step (ms) | ratio vs torch fused | samples |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['threads']} | {r['algorithm']} | {r['variant']} | {r['median_ms']:.1f} | "
            f"{r['ratio_vs_torch_fused']:.2f}x | {r['samples']} |"
        )
    (RESULTS / "torch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
