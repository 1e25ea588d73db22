"""Flax NNX with gcore_jax: ``nnx.Optimizer(model, gcore_jax.adamw(...), wrt=nnx.Param)``.

Flax kernels are stored ``(in, out)`` / ``(kh, kw, in, out)``: the output axis is the last
one (``optax.centralize`` would centralize along axis 0, per input row). Each check
looks at the per-output-unit means, over every axis but -1."""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
gcore_jax = pytest.importorskip("gcore_jax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

LR, STEPS = 1e-2, 3


class CNN(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(10, 4, rngs=rngs)
        # A LayerNorm right after the conv would make its kernel's gradient zero-mean along
        # the output axis already (the norm removes the mean over channels): it comes first.
        self.norm = nnx.LayerNorm(4, rngs=rngs)
        self.conv = nnx.Conv(4, 6, kernel_size=(3,), rngs=rngs)  # kernel (3, 4, 6)
        self.dense = nnx.Linear(6 * 5, 3, rngs=rngs)  # kernel (30, 3)

    def __call__(self, tokens):
        x = self.norm(self.embed(tokens))  # (batch, 5, 4)
        x = nnx.relu(self.conv(x))
        return self.dense(x.reshape(x.shape[0], -1))


def _unit_means(k):
    """One mean per output unit (axis -1) of a kernel."""
    k = np.asarray(k, dtype=np.float64)
    return k.reshape(-1, k.shape[-1]).mean(0)


def _input_means(k):
    """One mean per input row, over the output axis: what ``optax.centralize`` zeroes.

    Not zero for the conv kernel; zero anyway for the last dense layer, whose gradient
    is ``x^T (softmax - onehot)`` and the softmax error sums to zero over the classes."""
    k = np.asarray(k, dtype=np.float64)
    return k.reshape(-1, k.shape[-1]).mean(1)


def _data():
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.integers(0, 10, (8, 5))), jnp.asarray(rng.integers(0, 3, 8))


@nnx.jit
def _train_step(model, optimizer, tokens, labels):
    def loss_fn(model):
        logits = model(tokens)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def _kernels(model):
    return {"conv": model.conv.kernel[...], "dense": model.dense.kernel[...]}


@pytest.mark.parametrize("gc_where", ["gradient", "update"])
def test_nnx_optimizer_with_gcore_adamw(gc_where):
    """``gc_where="update"``: the kernels' step (decay off) has zero mean per output unit.
    ``"gradient"`` (default): Adam's first moment, a sum of centralized gradients, does."""
    model = CNN(nnx.Rngs(0))
    optimizer = nnx.Optimizer(
        model, gcore_jax.adamw(LR, weight_decay=0.0, gc_where=gc_where), wrt=nnx.Param
    )
    tokens, labels = _data()
    for _ in range(STEPS):
        before = _kernels(model)
        loss = _train_step(model, optimizer, tokens, labels)
        assert np.isfinite(float(loss))
        after = _kernels(model)
        for name in before:
            step = np.asarray(after[name] - before[name], dtype=np.float64)
            scale = np.abs(step).max()
            assert scale > 0, name
            if gc_where == "update":
                assert np.abs(_unit_means(step)).max() < 1e-5 * scale, name
                if name == "conv":  # see _input_means
                    assert np.abs(_input_means(step)).max() > 1e-3 * scale, name
    if gc_where == "gradient":
        mus = [
            leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(optimizer))
            if any(getattr(k, "key", getattr(k, "name", None)) == "mu" for k in path)
            and any(getattr(k, "key", None) == "kernel" for k in path)
        ]
        assert len(mus) == 2  # conv and dense kernels
        for mu in mus:
            mu = np.asarray(mu[...] if hasattr(mu, "value") else mu, dtype=np.float64)
            scale = np.abs(mu).max()
            assert scale > 0
            assert np.abs(_unit_means(mu)).max() < 1e-5 * scale
            if mu.ndim == 3:  # the conv kernel
                assert np.abs(_input_means(mu)).max() > 1e-3 * scale
