"""gcore_jax on every JAX platform here: CPU and, where present, GPU. The GPU cases skip,
saying so, on a CPU-only machine."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
gcore_jax = pytest.importorskip("gcore_jax")

import reference as ref  # noqa: E402


def _has(platform: str) -> bool:
    try:
        return bool(jax.devices(platform))
    except RuntimeError:
        return False


PLATFORMS = [
    "cpu",
    pytest.param("gpu", marks=pytest.mark.skipif(not _has("gpu"), reason="JAX sees no GPU")),
]
SHAPES = {"conv": (3, 3, 4, 6), "dense": (5, 7), "bias": (7,)}  # Flax layout: output last


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_trajectory_on_platform_equals_reference(platform, name):
    x64 = jax.config.jax_enable_x64
    dtype, tol = (np.float64, 1e-10) if x64 else (np.float32, 1e-5)
    rng = np.random.default_rng(0)
    p0 = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    grads = [
        {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()} for _ in range(10)
    ]
    kw = {"sgd": {"momentum": 0.9}, "adam": {}, "adamw": {"weight_decay": 0.1}}[name]
    tx = getattr(gcore_jax, name)(0.01, **kw)
    device = jax.devices(platform)[0]
    params = jax.device_put(p0, device)
    state = tx.init(params)

    @jax.jit
    def step(ps, st, gs):
        updates, st = tx.update(gs, st, ps)
        return optax.apply_updates(ps, updates), st

    for g in grads:
        params, state = step(params, state, jax.device_put(g, device))
    for k in SHAPES:
        assert params[k].devices() == {device}
        g_k = [g[k].astype(np.float64) for g in grads]
        if name == "sgd":
            want = ref.sgd(p0[k], g_k, lr=0.01, momentum=0.9, axis=-1)[-1]
        else:
            want = ref.adam(
                p0[k],
                g_k,
                lr=0.01,
                decoupled=name == "adamw",
                weight_decay=kw.get("weight_decay", 0.0),
                axis=-1,
            )[-1]
        np.testing.assert_allclose(np.asarray(params[k]), want, rtol=tol, atol=tol)
