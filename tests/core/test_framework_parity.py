"""With GC off, the core rules are the framework's own optimizers (torch.optim, optax)."""

from __future__ import annotations

import numpy as np
import pytest

import gcore
from backends import Backend
from helpers import asarray, to_numpy

SHAPES = [(4, 3), (3, 2, 2, 2), (5,)]
STEPS = 20


def _grads(seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in SHAPES] for _ in range(STEPS)]


def _core_run(xp, rule, params, grads, dtype, jit=lambda f: f):
    update = jit(rule.update)
    ps = [asarray(xp, p, dtype) for p in params]
    states = [rule.init(p) for p in ps]
    for step in grads:
        for i, g in enumerate(step):
            u, states[i] = update(asarray(xp, g, dtype), states[i], ps[i])
            ps[i] = ps[i] + u
    return [to_numpy(p) for p in ps]


TORCH_CASES = [
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.2, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "maximize": True}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1, "betas": (0.8, 0.99)}),
    ("Adam", {"lr": 0.01, "maximize": True, "eps": 1e-4}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.3, "amsgrad": True}),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("name", "kwargs"), TORCH_CASES)
def test_matches_torch_optim(xp, backend, name, kwargs, dtype):
    if backend is not Backend.TORCH:
        pytest.skip("torch.optim parity runs in the torch session")
    import torch

    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s) for s in SHAPES]
    grads = _grads()
    tdtype = getattr(torch, dtype)
    tparams = [torch.tensor(p, dtype=tdtype, requires_grad=True) for p in params]
    opt = getattr(torch.optim, name)(tparams, foreach=False, **kwargs)
    for step in grads:
        for p, g in zip(tparams, step, strict=True):
            p.grad = torch.tensor(g, dtype=tdtype)
        opt.step()
    ours = _core_run(
        xp, getattr(gcore, name)(**kwargs, gc=None), params, grads, getattr(xp, dtype)
    )
    tol = {"float64": 1e-12, "float32": 1e-6}[dtype]
    for p, o in zip(tparams, ours, strict=True):
        np.testing.assert_allclose(o, p.detach().numpy(), rtol=tol, atol=tol)


OPTAX_CASES = [
    ("sgd", "SGD", {"learning_rate": 0.05}, {"lr": 0.05}),
    ("sgd", "SGD", {"learning_rate": 0.05, "momentum": 0.9}, {"lr": 0.05, "momentum": 0.9}),
    (
        "sgd",
        "SGD",
        {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True},
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    ),
    ("adam", "Adam", {"learning_rate": 0.01}, {"lr": 0.01}),
    (
        "adam",
        "Adam",
        {"learning_rate": 0.01, "b1": 0.8, "b2": 0.99, "eps": 1e-6},
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6},
    ),
    (
        "adamw",
        "AdamW",
        {"learning_rate": 0.01, "weight_decay": 0.1},
        {"lr": 0.01, "weight_decay": 0.1},
    ),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("oname", "gname", "okw", "gkw"), OPTAX_CASES)
def test_matches_optax(xp, backend, jit, oname, gname, okw, gkw, dtype):
    if backend is not Backend.JAX:
        pytest.skip("optax parity runs in the jax session")
    import jax
    import optax

    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s) for s in SHAPES]
    grads = _grads()
    jdtype = getattr(xp, dtype)
    tx = getattr(optax, oname)(**okw)
    jparams = [asarray(xp, p, jdtype) for p in params]
    state = tx.init(jparams)

    @jax.jit
    def step(ps, st, gs):
        updates, st = tx.update(gs, st, ps)
        return optax.apply_updates(ps, updates), st

    for gs in grads:
        jparams, state = step(jparams, state, [asarray(xp, g, jdtype) for g in gs])
    ours = _core_run(xp, getattr(gcore, gname)(**gkw, gc=None), params, grads, jdtype, jit)
    tol = {"float64": 1e-12, "float32": 1e-6}[dtype]
    for p, o in zip(jparams, ours, strict=True):
        np.testing.assert_allclose(o, np.asarray(p), rtol=tol, atol=tol)
