"""Run by test_jax_sharding.py in its own process, on 4 host CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before JAX starts,
which a pytest process that already imported JAX cannot do. Exits non-zero (with the
reason on stderr) when a jitted gcore_jax update loses the parameters' sharding or
differs from the unsharded result beyond float32 rounding, or when the optimizer state
does not keep the parameters' shardings (found with ``optax.tree.map_params``).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import gcore_jax

SHAPES = {"conv": (3, 3, 8, 16), "dense": (32, 16), "bias": (16,)}
# Flax layout: the output axis is last. "output": shard it; "input": shard a fan-in axis
# (GC's per-unit mean then needs a cross-device reduction).
SPECS = {
    "output": {"conv": P(None, None, None, "x"), "dense": P(None, "x"), "bias": P("x")},
    "input": {"conv": P(None, None, "x", None), "dense": P("x", None), "bias": P()},
}
OPTIMIZERS = {
    "adam": lambda: gcore_jax.adam(1e-2),
    "adamw": lambda: gcore_jax.adamw(1e-2, weight_decay=0.1),
    "sgd": lambda: gcore_jax.sgd(0.1, momentum=0.9),
    "centralize+optax.adam": lambda: optax.chain(gcore_jax.centralize(), optax.adam(1e-2)),
}
STEPS = 3


def run(tx, params, grads):
    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = jax.jit(tx.init)(params)
    for g in grads:
        params, state = step(params, state, g)
    return params, state


def _is_spec(x):
    return x is None or isinstance(x, NamedSharding)


def check_state(tx, state, params, shard, mesh, where):
    """The state's parameter-shaped trees (found by optax.tree.map_params, as sharding
    code does) keep the parameters' shardings; an init jitted with out_shardings built
    the same way gives them too."""
    failures = []
    specs = optax.tree.map_params(
        tx, lambda _, s: s, state, shard, transform_non_params=lambda _: None
    )
    spec_leaves = jax.tree.leaves(specs, is_leaf=_is_spec)
    state_leaves = jax.tree.leaves(state)
    if len(spec_leaves) != len(state_leaves):
        return [f"{where}: map_params found {len(spec_leaves)} leaves, state has "
                f"{len(state_leaves)}"]  # fmt: skip
    if not any(isinstance(s, NamedSharding) for s in spec_leaves):
        failures.append(f"{where}: map_params found no parameter tree in the state")
    for spec, leaf in zip(spec_leaves, state_leaves, strict=True):
        if isinstance(spec, NamedSharding) and not leaf.sharding.is_equivalent_to(spec, leaf.ndim):
            failures.append(f"{where}: state leaf sharding {leaf.sharding} != {spec}")
    shapes = jax.eval_shape(tx.init, params)
    replicated = NamedSharding(mesh, P())
    out = optax.tree.map_params(
        tx, lambda _, s: s, shapes, shard, transform_non_params=lambda _: replicated
    )
    init = jax.jit(tx.init, out_shardings=out)(params)
    for spec, leaf in zip(
        jax.tree.leaves(out, is_leaf=_is_spec), jax.tree.leaves(init), strict=True
    ):
        if not leaf.sharding.is_equivalent_to(spec, leaf.ndim):
            failures.append(f"{where}: sharded init gave {leaf.sharding} != {spec}")
    return failures


def main() -> int:
    if jax.device_count() < 4:
        print(f"need 4 devices, found {jax.devices()}", file=sys.stderr)
        return 2
    mesh = Mesh(np.array(jax.devices()[:4]), ("x",))
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [
        {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
        for _ in range(STEPS)
    ]
    failures = []
    for opt_name, make in OPTIMIZERS.items():
        want, _ = run(
            make(),
            jax.tree.map(jnp.asarray, params),
            [jax.tree.map(jnp.asarray, g) for g in grads],
        )
        for spec_name, specs in SPECS.items():
            shard = {k: NamedSharding(mesh, specs[k]) for k in SHAPES}
            sp = {k: jax.device_put(params[k], shard[k]) for k in SHAPES}
            sg = [{k: jax.device_put(g[k], shard[k]) for k in SHAPES} for g in grads]
            tx = make()
            got, state = run(tx, sp, sg)
            failures += check_state(tx, state, sp, shard, mesh, f"{opt_name}/{spec_name}")
            for k in SHAPES:
                where = f"{opt_name}/{spec_name}/{k}"
                if not got[k].sharding.is_equivalent_to(shard[k], got[k].ndim):
                    failures.append(f"{where}: sharding {got[k].sharding} != {shard[k]}")
                if len(got[k].sharding.device_set) != 4:
                    failures.append(f"{where}: lives on {got[k].sharding.device_set}")
                try:
                    np.testing.assert_allclose(
                        np.asarray(got[k]), np.asarray(want[k]), rtol=1e-6, atol=1e-6
                    )
                except AssertionError as err:
                    failures.append(f"{where}: differs from unsharded: {err}")
            print(f"{opt_name} sharded along {spec_name} axis: checked")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    print("sharding checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
