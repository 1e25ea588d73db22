"""GC-Adam step time on a CUDA GPU, ResNet-50 parameter shapes (161 tensors, 25.6 M params).

Side by side in one process: torch ``Adam(fused=True)`` (the baseline), gcore_torch's
GC-Adam (fused path), gcore_cupy's GC-Adam (fused kernels), jitted ``optax.adam`` and
``gcore_jax.adam`` on the GPU, plus the device's copy bandwidth measured in the same run.
Rounds interleave the candidates (A B C … A B C …); each step is synchronised; the table
gives medians, ratios to torch fused Adam and the achieved GB/s (Adam moves ≈ 28 B/param;
GC reads the gradient once more, ≈ 32 B/param).

    python benchmarks/bench_cuda.py --steps 50 --rounds 5

Frameworks that are missing (or see no GPU) are reported as skipped, never faked.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from resnet_shapes import count, flax_layout, resnet50

LR = 1e-3


def _torch_candidates(shapes, seed):
    import torch

    if not torch.cuda.is_available():
        return {}, "torch sees no CUDA device"
    import gcore_torch

    def make(factory):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        params = [torch.randn(s, device="cuda", generator=gen) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, device="cuda", generator=gen)
        opt = factory(params)
        return opt.step, torch.cuda.synchronize

    return {
        "torch Adam fused": make(lambda ps: torch.optim.Adam(ps, lr=LR, fused=True)),
        "gcore_torch GC-Adam fused": make(
            lambda ps: gcore_torch.Adam(ps, lr=LR, fused=True, gc=True)
        ),
    }, None


def _cupy_candidates(shapes, seed):
    import cupy

    import gcore_cupy

    rng = cupy.random.default_rng(seed)
    params = [rng.standard_normal(s, dtype=cupy.float32) for s in shapes]
    grads = [rng.standard_normal(s, dtype=cupy.float32) for s in shapes]
    opt = gcore_cupy.Adam(params, lr=LR)

    def step():
        opt.step(grads)

    return {"gcore_cupy GC-Adam fused": (step, cupy.cuda.Device().synchronize)}, None


def _jax_candidates(shapes, seed):
    import jax
    import optax

    import gcore_jax

    if jax.default_backend() != "gpu":
        return {}, f"jax's default backend is {jax.default_backend()!r}, not gpu"
    key = jax.random.PRNGKey(seed)
    flax_shapes = [flax_layout(s) for s in shapes]
    params = [jax.random.normal(jax.random.fold_in(key, i), s) for i, s in enumerate(flax_shapes)]
    grads = [
        jax.random.normal(jax.random.fold_in(key, 10_000 + i), s)
        for i, s in enumerate(flax_shapes)
    ]
    out = {}
    for name, tx in (
        ("optax.adam (jit)", optax.adam(LR)),
        ("gcore_jax GC-Adam (jit)", gcore_jax.adam(LR, layout="flax")),
    ):

        @jax.jit
        def update(ps, st, gs, tx=tx):
            u, st = tx.update(gs, st, ps)
            return optax.apply_updates(ps, u), st

        box = {"p": params, "s": tx.init(params)}

        def step(box=box, update=update):
            box["p"], box["s"] = update(box["p"], box["s"], grads)

        def sync(box=box):
            jax.block_until_ready(box["p"])

        out[name] = (step, sync)
    return out, None


def copy_bandwidth_gbs(nbytes: int = 1 << 30, repeats: int = 20) -> float | None:
    """Device-to-device copy bandwidth (read + write bytes / s), median of ``repeats``."""
    try:
        import cupy
    except ImportError:
        return None
    src = cupy.empty(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    times = []
    for _ in range(repeats + 2):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        dst[...] = src
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return 2 * nbytes / statistics.median(times[2:]) / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cuda"))
    args = parser.parse_args(argv)

    shapes = resnet50()
    n = count(shapes)
    candidates, skipped = {}, {}
    for name, build in (
        ("torch", _torch_candidates),
        ("cupy", _cupy_candidates),
        ("jax", _jax_candidates),
    ):
        try:
            found, why = build(shapes, seed=0)
        except Exception as err:  # a missing framework or driver: report, don't fail
            found, why = {}, f"{type(err).__name__}: {err}"
        candidates.update(found)
        if why:
            skipped[name] = why
    if not candidates:
        print("no CUDA candidates could run:", skipped)
        return 1

    for step, sync in candidates.values():
        for _ in range(args.warmup):
            step()
        sync()
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(args.rounds):
        for name, (step, sync) in candidates.items():
            for _ in range(args.steps):
                sync()
                t0 = time.perf_counter()
                step()
                sync()
                times[name].append(time.perf_counter() - t0)

    device = "unknown"
    try:
        import torch

        device = torch.cuda.get_device_name(0)
    except Exception:
        pass
    bandwidth = copy_bandwidth_gbs()
    base = statistics.median(times.get("torch Adam fused", next(iter(times.values()))))
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        bpp = 32 if "GC" in name else 28
        rows.append(
            {
                "name": name,
                "median_ms": med * 1e3,
                "ratio": med / base,
                "gb_per_s": bpp * n / med / 1e9,
                "steps": len(ts),
            }
        )
    result = {
        "device": device,
        "params": n,
        "tensors": len(shapes),
        "copy_bandwidth_gb_s": bandwidth,
        "python": platform.python_version(),
        "rows": rows,
        "skipped": skipped,
        "method": f"{args.rounds} interleaved rounds x {args.steps} synchronised steps",
    }
    lines = [
        f"GPU: {device}; ResNet-50 shapes ({len(shapes)} tensors, {n / 1e6:.1f} M params)",
        f"copy bandwidth (same run): {bandwidth:.0f} GB/s" if bandwidth else "",
        "",
        "| optimizer step | median ms | × torch fused Adam | GB/s |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['median_ms']:.3f} | {r['ratio']:.2f} | {r['gb_per_s']:.0f} |"
        for r in rows
    ]
    lines += [f"\nskipped: {k}: {v}" for k, v in skipped.items()]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
