"""Worker for tests/plugins/test_resume.py, run in fresh interpreters.

    python resume_worker.py first  <framework> <path> <dir>
        40 uninterrupted steps -> <dir>/full.npz; a second run of 20 steps, then its
        checkpoint (parameters + optimizer state) -> <dir>/ckpt.*
    python resume_worker.py second <framework> <path> <dir>
        new optimizer, load <dir>/ckpt.*, 20 more steps -> <dir>/resumed.npz

Every array the run ends with (parameters and optimizer state) is written in float32 as
NumPy arrays under stable names, so the test compares them bit for bit.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np

SHAPES = [(8, 3, 3, 3), (16, 8), (16,)]
STEPS = 20
ALGOS = {
    "sgd": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    "adam": {"lr": 1e-2, "amsgrad": True, "weight_decay": 1e-3},
    "adamw": {"lr": 1e-2, "weight_decay": 1e-2},
}


def init_params() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def grads_at(step: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 + step)
    return [rng.standard_normal(s).astype(np.float32) * (1 + step % 3) for s in SHAPES]


# -- numpy ---------------------------------------------------------------------------------
class NumpyRun:
    def __init__(self, algo: str, path: str) -> None:
        import gcore_numpy

        self.params = init_params()
        self.opt = getattr(gcore_numpy, {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[algo])(
            self.params, **ALGOS[algo]
        )

    def step(self, t: int) -> None:
        self.opt.step(grads_at(t))

    def save(self, f: Path) -> None:
        with open(f, "wb") as fh:
            pickle.dump({"params": self.params, "opt": self.opt.state_dict()}, fh)

    def load(self, f: Path) -> None:
        with open(f, "rb") as fh:
            ck = pickle.load(fh)
        for p, saved in zip(self.params, ck["params"], strict=True):
            p[...] = saved
        self.opt.load_state_dict(ck["opt"])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"param{i}": p for i, p in enumerate(self.params)}
        for k, entry in self.opt.state_dict()["state"].items():
            for name, v in entry.items():
                out[f"state{k}.{name}"] = np.asarray(v)
        return out


# -- torch ---------------------------------------------------------------------------------
TORCH_PATHS = {
    "single": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


class TorchRun:
    def __init__(self, algo: str, path: str) -> None:
        import torch

        import gcore_torch

        self.torch = torch
        self.params = [torch.nn.Parameter(torch.from_numpy(p)) for p in init_params()]
        cls = getattr(gcore_torch, {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[algo])
        self.opt = cls(self.params, **ALGOS[algo], **TORCH_PATHS.get(path, {}))

    def step(self, t: int) -> None:
        for p, g in zip(self.params, grads_at(t), strict=True):
            p.grad = self.torch.from_numpy(g)
        self.opt.step()

    def save(self, f: Path) -> None:
        model = [p.detach().clone() for p in self.params]
        self.torch.save({"params": model, "opt": self.opt.state_dict()}, f)

    def load(self, f: Path) -> None:
        ck = self.torch.load(f, weights_only=True)
        with self.torch.no_grad():
            for p, saved in zip(self.params, ck["params"], strict=True):
                p.copy_(saved)
        self.opt.load_state_dict(ck["opt"])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"param{i}": p.detach().numpy().copy() for i, p in enumerate(self.params)}
        for i, p in enumerate(self.params):
            for name, v in self.opt.state[p].items():
                out[f"state{i}.{name}"] = v.detach().cpu().numpy().copy()
        return out


# -- jax -----------------------------------------------------------------------------------
class JaxRun:
    def __init__(self, algo: str, path: str) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        import gcore_jax

        self.jax, self.jnp, self.optax = jax, jnp, optax
        hp = dict(ALGOS[algo])
        lr = hp.pop("lr")
        if algo == "sgd":
            # gcore_jax.sgd has no weight decay argument: chain it first, the paper's order.
            wd = hp.pop("weight_decay")
            tx = optax.chain(
                optax.add_decayed_weights(wd), gcore_jax.sgd(lr, layout="torch", **hp)
            )
        elif algo == "adam":
            wd = hp.pop("weight_decay")
            hp.pop("amsgrad")
            tx = optax.chain(optax.add_decayed_weights(wd), gcore_jax.adam(lr, layout="torch"))
        else:
            tx = gcore_jax.adamw(lr, layout="torch", **hp)
        self.tx = tx
        self.params = [jnp.asarray(p) for p in init_params()]
        self.state = tx.init(self.params)
        self.update = jax.jit(tx.update)

    def step(self, t: int) -> None:
        grads = [self.jnp.asarray(g) for g in grads_at(t)]
        updates, self.state = self.update(grads, self.state, self.params)
        self.params = self.optax.apply_updates(self.params, updates)

    def save(self, f: Path) -> None:
        from flax import serialization

        np.savez(f.with_suffix(".params.npz"), *[np.asarray(p) for p in self.params])
        f.write_bytes(serialization.to_bytes(self.state))

    def load(self, f: Path) -> None:
        from flax import serialization

        with np.load(f.with_suffix(".params.npz")) as z:
            self.params = [self.jnp.asarray(z[f"arr_{i}"]) for i in range(len(SHAPES))]
        self.state = serialization.from_bytes(self.tx.init(self.params), f.read_bytes())

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"param{i}": np.asarray(p) for i, p in enumerate(self.params)}
        leaves = self.jax.tree_util.tree_leaves_with_path(self.state)
        for path, leaf in leaves:
            out["state" + self.jax.tree_util.keystr(path)] = np.asarray(leaf)
        return out


RUNS = {"numpy": NumpyRun, "torch": TorchRun, "jax": JaxRun}


def main(argv: list[str]) -> None:
    mode, framework, path, out = argv
    out_dir = Path(out)
    for algo in ALGOS:
        make = RUNS[framework]
        if mode == "first":
            full = make(algo, path)
            for t in range(2 * STEPS):
                full.step(t)
            np.savez(out_dir / f"{algo}.full.npz", **full.arrays())
            half = make(algo, path)
            for t in range(STEPS):
                half.step(t)
            half.save(out_dir / f"{algo}.ckpt")
        else:
            resumed = make(algo, path)
            resumed.load(out_dir / f"{algo}.ckpt")
            for t in range(STEPS, 2 * STEPS):
                resumed.step(t)
            np.savez(out_dir / f"{algo}.resumed.npz", **resumed.arrays())


if __name__ == "__main__":
    main(sys.argv[1:])
