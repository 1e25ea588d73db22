"""Step time of GC optimizers on ResNet-50 (or GPT-2) parameter shapes vs torch.optim (CPU).

ResNet-50: 161 tensors, 25.6 M parameters; GPT-2 (``--model gpt2``): 148 tensors, 124 M
parameters, its Conv1D weights (in, out) centralized along axis 1 and its embeddings,
norms and biases left alone; random gradients. Every variant updates the same
parameter tensors (each with its own optimizer state), and the variants of one algorithm
run interleaved (A B C … A B C …) so that the load of a shared machine hits them alike;
we quote the median step time and the median of the per-round ratios to torch's fused
optimizer of the same algorithm.

    python benchmarks/bench_torch.py [--repeats 15] [--warmup 8] [--single] [--threads 2]
                                     [--fresh-build] [--dtype bfloat16] [--model gpt2]

"gcore_torch default" is what a user gets: the fused path with the row-blocked C++
kernels (compiled on first use; the warm-up rounds exclude the build). "kernels off" is
the same path with GCORE_TORCH_KERNELS=0 (pure PyTorch: row-unit gradients centralized in
cache-sized row blocks, each block handed to torch's fused kernel at once; ``.grad`` is
left as it is; see RowBlocks).
"naive GC" is the usual per-tensor mean + sub_ before torch's fused step;
"gcore_torch.centralize_grads_ + torch fused" is the same in-place route through
gcore's layout-aware helper (what to use without a compiler when ``.grad`` may be
overwritten); pytorch_optimizer's centralize_gradient (when installed) is the peer.
``--fresh-build`` compiles the kernels into an empty cache first and records the time.
``--dtype bfloat16`` (or float16) times parameters and gradients of that dtype: the CPU
kernels take float32/float64 only, so gcore_torch's fused path centralizes in float32
chunks and calls torch's kernels; torch's fused CPU SGD skips such tensors (they do not
move), so its SGD row is no baseline there: compare with torch foreach.

Writes benchmarks/results/torch.md and torch.json (torch_<dtype>.* for --dtype,
torch_gpt2.* for --model gpt2).
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
from resnet_shapes import count, gpt2, resnet50

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


def _naive_gc(params, axes):
    # The common recipe: per tensor, mean then sub_ (along each tensor's output axis).
    for p, axis in zip(params, axes, strict=True):
        if axis is not None:
            g = p.grad
            g.sub_(g.mean(dim=tuple(d for d in range(g.ndim) if d != axis), keepdim=True))


def _groups(params, axes):
    """gcore_torch's param groups for ``axes`` (``params`` itself when the defaults, axis
    0 for ndim > 1, say it all). Fresh dicts for each optimizer: torch.optim fills a
    group's missing options into the dict it is given, so a shared dict would carry one
    optimizer's ``foreach`` / ``fused`` into the next."""
    if all(a == (0 if p.ndim > 1 else None) for p, a in zip(params, axes, strict=True)):
        return params
    groups = {}
    for p, a in zip(params, axes, strict=True):
        groups.setdefault(a, []).append(p)
    return [{"params": ps, "gc": False} if a is None else {"params": ps, "gc_axis": a}
            for a, ps in groups.items()]  # fmt: skip


def _without_kernels(step):
    # GCORE_TORCH_KERNELS is read at every step: the same process times both forms.
    def run():
        before = os.environ.get("GCORE_TORCH_KERNELS")
        os.environ["GCORE_TORCH_KERNELS"] = "0"
        try:
            step()
        finally:
            if before is None:
                del os.environ["GCORE_TORCH_KERNELS"]
            else:
                os.environ["GCORE_TORCH_KERNELS"] = before

    return run


def variants(algo, params, axes, single):
    spec = ALGOS[algo]
    kw = spec["kw"]
    plain = _groups(params, axes) is params  # the defaults: plain tensors, axis 0
    out = {
        "torch fused": spec["torch"](params, fused=True, **kw),
        "torch foreach": spec["torch"](params, foreach=True, **kw),
        "naive GC + torch fused": spec["torch"](params, fused=True, **kw),
        "gcore_torch default (GC)": spec["ours"](_groups(params, axes), **kw),
        "gcore_torch default, kernels off (GC)": spec["ours"](_groups(params, axes), **kw),
        "gcore_torch foreach (GC)": spec["ours"](_groups(params, axes), foreach=True, **kw),
    }
    if single:
        out["gcore_torch single (GC)"] = spec["ours"](_groups(params, axes), foreach=False, **kw)
    steps = {name: opt.step for name, opt in out.items()}
    steps["gcore_torch default, kernels off (GC)"] = _without_kernels(
        steps["gcore_torch default, kernels off (GC)"]
    )
    naive = out["naive GC + torch fused"]

    def naive_step():
        _naive_gc(params, axes)
        naive.step()

    steps["naive GC + torch fused"] = naive_step
    if not plain:  # the helpers below take plain tensors as axis 0
        return steps
    helper = spec["torch"](params, fused=True, **kw)

    def helper_step():
        gcore_torch.centralize_grads_(params, measure=False)
        helper.step()

    steps["gcore_torch.centralize_grads_ + torch fused"] = helper_step
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


#: (name, variant, baseline, target): the acceptance ratios of issue 11.
TARGETS = [
    ("default GC vs torch fused", "gcore_torch default (GC)", "torch fused", {"Adam": 1.10,
     "AdamW": 1.10, "SGD": 1.20}),
    ("kernels off vs torch fused", "gcore_torch default, kernels off (GC)", "torch fused", None),
    ("naive GC vs torch fused", "naive GC + torch fused", "torch fused", None),
    ("kernels off vs naive GC", "gcore_torch default, kernels off (GC)",
     "naive GC + torch fused", {"Adam": 1.0, "AdamW": 1.0, "SGD": 1.0}),
    ("centralize_grads_ + torch fused vs naive GC", "gcore_torch.centralize_grads_ + torch fused",
     "naive GC + torch fused", None),
    ("foreach GC vs torch foreach", "gcore_torch foreach (GC)", "torch foreach",
     {"Adam": 1.5, "AdamW": 1.5, "SGD": 1.5}),
]  # fmt: skip


def bench(algo, params, axes, grads, repeats, warmup, single, targets=True):
    steps = variants(algo, params, axes, single)
    times = {name: [] for name in steps}

    def one(name):
        # The naive, helper and peer variants centralize .grad in place: restore it each time.
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
        to_foreach = [t / b for t, b in zip(ts, times["torch foreach"], strict=False)]
        rows.append(
            {
                "algorithm": algo,
                "variant": name,
                "median_ms": statistics.median(ts) * 1e3,
                "ratio_vs_torch_fused": statistics.median(ratios),
                "ratio_vs_torch_foreach": statistics.median(to_foreach),
                "samples": len(ts),
            }
        )
    checks = []
    for label, variant, baseline, target in TARGETS:
        if variant not in times:
            continue
        ratios = [a / b for a, b in zip(times[variant], times[baseline], strict=False)]
        checks.append(
            {
                "algorithm": algo,
                "check": label,
                "median_ratio": statistics.median(ratios),
                "target": None if target is None or not targets else target[algo],
            }
        )
    return rows, checks


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
        # The kernels-off path makes many short parallel regions: how OpenMP's idle
        # threads wait (spin or sleep) moves it.
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    # Warm-up covers the kernels' build and the kernels-off path's first step, which plans.
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--single", action="store_true", help="also time the core-rule path")
    ap.add_argument(
        "--algos", default="Adam,AdamW,SGD", help=f"comma-separated, of {', '.join(ALGOS)}"
    )
    ap.add_argument("--threads", default="2", help="torch intra-op thread counts to run, e.g. 1,2")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the parameters and gradients (the acceptance targets are float32's)",
    )
    ap.add_argument(
        "--model",
        default="resnet50",
        choices=["resnet50", "gpt2"],
        help="parameter shapes (the acceptance targets are ResNet-50's)",
    )
    ap.add_argument(
        "--fresh-build",
        action="store_true",
        help="compile the kernels into an empty cache first and record the build time",
    )
    args = ap.parse_args(argv)
    unknown = [a for a in args.algos.split(",") if a not in ALGOS]
    if unknown:
        ap.error(f"--algos: unknown {', '.join(unknown)}; allowed: {', '.join(ALGOS)}")
    if args.fresh_build:
        import tempfile

        os.environ["TORCH_EXTENSIONS_DIR"] = tempfile.mkdtemp(prefix="gcore-bench-ext-")
    start = time.perf_counter()
    kernels = gcore_torch.load_kernels()
    load_seconds = time.perf_counter() - start
    if args.model == "gpt2":
        shapes, axes = (list(x) for x in zip(*gpt2(), strict=True))
    else:
        shapes = resnet50()
        axes = [0 if len(s) > 1 else None for s in shapes]
    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    params = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.05).to(dtype)) for s in shapes]
    grads = [(torch.randn(s, generator=gen) * 1e-2).to(dtype) for s in shapes]
    info = machine()
    info.update(
        tensors=len(shapes),
        params=count(shapes),
        repeats=args.repeats,
        compiled_kernels=kernels,
        kernel_build_seconds=_kernels._state["build_seconds"],
        kernel_build_cpu_seconds=_kernels._state.get("build_cpu_seconds"),
        kernel_load_seconds=load_seconds,
        fresh_build=args.fresh_build,
        dtype=args.dtype,
        model=args.model,
    )
    low = args.dtype != "float32"
    targets = not low and args.model == "resnet50"
    stem = "torch" + ("" if args.model == "resnet50" else f"_{args.model}")
    stem += f"_{args.dtype}" if low else ""
    title = {"resnet50": "ResNet-50", "gpt2": "GPT-2"}[args.model]
    rows, checks = [], []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for algo in args.algos.split(","):
            r, c = bench(
                algo, params, axes, grads, args.repeats, args.warmup, args.single, targets=targets
            )
            rows += [{"threads": threads, **x} for x in r]
            checks += [{"threads": threads, **x} for x in c]
            info[f"load_average_after_{algo}_{threads}threads"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({"machine": info, "rows": rows, "checks": checks}, indent=2)
    )
    build = info["kernel_build_seconds"]
    build_line = (
        f"Compiled kernels: built on first use in {build:.0f} s wall clock "
        f"({info['kernel_build_cpu_seconds'] or 0:.0f} s of compiler CPU time; into an empty "
        "cache, on the shared machine; excluded from the timings by the warm-up rounds)."
        if build is not None
        else f"Compiled kernels: {'loaded from the cache' if kernels else 'NOT available'} "
        f"({load_seconds:.1f} s)."
    )
    lines = [
        f"# gcore_torch step time on {title} shapes (CPU{', ' + args.dtype if low else ''})",
        "",
        f"{info['tensors']} tensors, {info['params'] / 1e6:.1f} M parameters, random "
        f"gradients; {args.repeats} interleaved rounds after {args.warmup} warm-up rounds; "
        "median step time and median per-round ratio to torch's fused optimizer.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, shared with other jobs "
        f"(load average at start "
        f"{info['load_average_at_start'][0]:.1f}); Python {info['python']}, torch "
        f"{info['torch']}, pytorch_optimizer {info['pytorch_optimizer']}, OMP_WAIT_POLICY "
        f"{info['OMP_WAIT_POLICY']}.",
        "",
        build_line,
        "",
    ]
    if low:
        lines += [
            f"Parameters and gradients in {args.dtype}. The compiled CPU kernels take float32 "
            "and float64 only: gcore_torch's default path centralizes in float32 chunks and "
            "hands the rest to torch's kernels. torch's fused CPU SGD skips "
            f"{args.dtype} tensors (they do not move): its SGD row is no baseline; "
            "compare with torch foreach, torch.optim.SGD's default.",
            "",
        ]
    lines += [
        ("Acceptance ratios" if targets else "Ratios")
        + " (median of the per-round ratios"
        + ("; the targets are float32's):" if low else "):"),
        "",
        "| threads | algorithm | ratio | median | target |",
        "|---:|---|---|---:|---:|",
    ]
    for c in checks:
        target = "" if c["target"] is None else f"≤ {c['target']:.2f}x"
        lines.append(
            f"| {c['threads']} | {c['algorithm']} | {c['check']} | {c['median_ratio']:.2f}x | "
            f"{target} |"
        )
    lines += [
        "",
        "All variants:",
        "",
        "| threads | algorithm | variant | median step (ms) | ratio vs torch fused "
        "| ratio vs torch foreach | samples |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['threads']} | {r['algorithm']} | {r['variant']} | {r['median_ms']:.1f} | "
            f"{r['ratio_vs_torch_fused']:.2f}x | {r['ratio_vs_torch_foreach']:.2f}x | "
            f"{r['samples']} |"
        )
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
