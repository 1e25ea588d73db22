"""GC-Adam and GC-SGD step time on a CUDA GPU, ResNet-50 shapes (161 tensors, 25.6 M params).

Side by side in one process: torch ``Adam(fused=True)`` (the baseline), gcore_torch's
GC-Adam (its default fused path), gcore_torch's Triton kernels called directly
(``gcore_torch._triton.adam_`` / ``sgd_``: the kernels alone, without the optimizer's
bookkeeping), gcore_cupy's GC-Adam (fused kernels), jitted ``optax.adam`` and
``gcore_jax.adam`` on the GPU, plus the device's copy bandwidth measured in the same run;
and SGD with momentum: torch ``SGD(fused=True)`` against gcore_torch's GC-SGD and the Triton
GC-SGD kernel. Rounds interleave the candidates (A B C … A B C …); each step is
synchronised; the table gives medians, ratios to the torch fused step of the same
algorithm and the achieved GB/s (Adam moves ≈ 28 B/param in float32, SGD-momentum ≈ 20;
GC reads the gradient once more, ≈ 32 and 24 B/param).

    python benchmarks/bench_cuda.py --steps 50 --rounds 5
    python benchmarks/bench_cuda.py --dtype bfloat16   # the torch candidates in bfloat16

``--dtype`` applies to the torch candidates (torch, gcore_torch, Triton); CuPy and JAX
run in float32 and are left out for other dtypes. Frameworks that are missing (or see no
GPU) are reported as skipped, never faked.
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


def _torch_candidates(shapes, seed, dtype="float32"):
    import torch

    if not torch.cuda.is_available():
        return {}, "torch sees no CUDA device"
    import gcore_torch

    dt = getattr(torch, dtype)

    def tensors():
        gen = torch.Generator(device="cuda").manual_seed(seed)
        params = [torch.randn(s, device="cuda", generator=gen).to(dt) for s in shapes]
        grads = [torch.randn(s, device="cuda", generator=gen).to(dt) for s in shapes]
        return params, grads

    def make(factory):
        params, grads = tensors()
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt = factory(params)
        return opt.step, torch.cuda.synchronize

    return {
        "torch Adam fused": make(lambda ps: torch.optim.Adam(ps, lr=LR, fused=True)),
        "gcore_torch GC-Adam fused": make(
            lambda ps: gcore_torch.Adam(ps, lr=LR, fused=True, gc=True)
        ),
        "torch SGD-momentum fused": make(
            lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9, fused=True)
        ),
        "gcore_torch GC-SGD-momentum fused": make(
            lambda ps: gcore_torch.SGD(ps, lr=LR, momentum=0.9, fused=True, gc=True)
        ),
    }, None


def _triton_candidates(shapes, seed, dtype="float32", device="cuda"):
    """The Triton kernels alone, on ``(units, fan_in)`` views (GC on every ndim >= 2).

    ``device="cpu"`` runs them in Triton's interpreter (``TRITON_INTERPRET=1``): only to
    check this code on a machine without a GPU, with a few small shapes.
    """
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return {}, "torch sees no CUDA device"
    from gcore_torch import _triton

    if not _triton.available(torch.device(device)):
        return {}, f"Triton is not importable (pip install triton) or cannot run on {device}"
    dt = getattr(torch, dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    params = [torch.randn(s, device=device, generator=gen).to(dt) for s in shapes]
    grads = [torch.randn(s, device=device, generator=gen).to(dt) for s in shapes]
    rows = [p.view(p.shape[0], -1) if p.ndim >= 2 else p for p in params]
    grows = [g.view(g.shape[0], -1) if g.ndim >= 2 else g for g in grads]
    centralize = [p.ndim >= 2 for p in params]
    m = [torch.zeros_like(p) for p in rows]
    v = [torch.zeros_like(p) for p in rows]
    bufs = [torch.zeros_like(p) for p in rows]
    count = {"adam": 0, "sgd": 0}

    def adam_step():
        count["adam"] += 1
        _triton.adam_(
            rows, grows, m, v, None, centralize, step=count["adam"], lr=LR, beta1=0.9,
            beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False,
            maximize=False,
        )  # fmt: skip

    def sgd_step():
        count["sgd"] += 1
        _triton.sgd_(
            rows, grows, bufs, centralize, lr=LR, momentum=0.9, dampening=0.0,
            weight_decay=0.0, nesterov=False, maximize=False, first_step=count["sgd"] == 1,
        )  # fmt: skip

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return {
        "Triton GC-Adam kernels": (adam_step, sync),
        "Triton GC-SGD-momentum kernels": (sgd_step, sync),
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
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="dtype of the torch / gcore_torch / Triton candidates",
    )  # fmt: skip
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cuda"))
    args = parser.parse_args(argv)

    shapes = resnet50()
    n = count(shapes)
    candidates, skipped = {}, {}
    builders = [
        ("torch", lambda sh, seed: _torch_candidates(sh, seed, args.dtype)),
        ("triton", lambda sh, seed: _triton_candidates(sh, seed, args.dtype)),
    ]
    if args.dtype == "float32":
        builders += [("cupy", _cupy_candidates), ("jax", _jax_candidates)]
    else:
        skipped["cupy, jax"] = f"float32 only (--dtype {args.dtype})"
    for name, build in builders:
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
    # Each algorithm against torch's fused step of the same algorithm.
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    fallback = next(iter(medians.values()))
    base = {
        "adam": medians.get("torch Adam fused", fallback),
        "sgd": medians.get("torch SGD-momentum fused", fallback),
    }
    rows = []
    for name, ts in times.items():
        med = medians[name]
        algo = "sgd" if "SGD" in name else "adam"
        scale = 2 if args.dtype != "float32" else 4  # bytes per element
        per_elem = (5 if algo == "sgd" else 7) + (1 if "GC" in name else 0)
        bpp = per_elem * scale
        rows.append(
            {
                "name": name,
                "algorithm": algo,
                "median_ms": med * 1e3,
                "ratio": med / base[algo],
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
        "dtype": args.dtype,
    }
    lines = [
        f"GPU: {device}; ResNet-50 shapes ({len(shapes)} tensors, {n / 1e6:.1f} M params), "
        f"{args.dtype}",
        f"copy bandwidth (same run): {bandwidth:.0f} GB/s" if bandwidth else "",
        "",
        "| optimizer step | median ms | × torch fused (same algorithm) | GB/s |",
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
