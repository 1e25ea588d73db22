"""JAX backend: the same CNN in Flax (linen), trained by gcore_jax's optax optimizers."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gcore_jax
from gcore.diagnostics import mean_drift

from ._cnn import CNNSpec, cnn_spec
from .arms import Arm
from .data import Dataset

HAS_CONV = True


class CNN(nn.Module):
    """3 × (Conv → BatchNorm → ReLU) + Dense, NHWC, kernels (kh, kw, in, out)."""

    spec: CNNSpec

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = self.spec
        pad = tuple((p, p) for p in s.padding)  # explicit, as torch pads
        for i, (width, stride) in enumerate(zip(s.widths, s.strides, strict=True), 1):
            x = nn.Conv(width, s.kernel, stride, pad, use_bias=False, name=f"conv{i}")(x)
            # torch's BatchNorm2d defaults: momentum 0.1 (= flax 0.9), eps 1e-5.
            x = nn.BatchNorm(
                use_running_average=not train, momentum=0.9, epsilon=1e-5, name=f"bn{i}"
            )(x)
            x = nn.relu(x)
        return nn.Dense(s.n_classes, name="fc")(x.reshape((x.shape[0], -1)))


def _optimizer(arm: Arm, hyper: dict[str, dict]) -> optax.GradientTransformation:
    """The arm's gcore_jax optimizer, translating the torch-style hyperparameter names."""
    h = dict(hyper[arm.optimizer])
    lr = h.pop("lr")
    weight_decay = h.pop("weight_decay", 0.0)
    gc = {
        "gc": arm.gc != "none",
        "gc_conv_only": arm.gc == "conv",
        "gc_where": "update" if arm.gc == "update" else "gradient",
        "layout": "flax",
    }
    if arm.optimizer == "sgd":
        kw = {"momentum": h.pop("momentum", None), "nesterov": h.pop("nesterov", False)}
        factory = gcore_jax.sgd
    else:
        b1, b2 = h.pop("betas", (0.9, 0.999))
        kw = {"b1": b1, "b2": b2, "eps": h.pop("eps", 1e-8)}
        factory = gcore_jax.adam
    if h:  # never drop a hyperparameter silently
        raise ValueError(
            f"the jax backend does not support {arm.optimizer} hyperparameters {sorted(h)}"
        )
    tx = factory(lr, **kw, **gc)
    # L2 decay is added to the gradient before GC, as in the paper (and the torch backend).
    return optax.chain(optax.add_decayed_weights(weight_decay), tx) if weight_decay else tx


@functools.cache
def _compiled(spec: CNNSpec, arm: Arm, hyper_items: tuple):
    """Jitted train step and evaluation, built once per arm and reused across seeds."""
    model = CNN(spec)
    tx = _optimizer(arm, {k: dict(v) for k, v in hyper_items})

    def loss_fn(params, batch_stats, x, y):
        logits, new_state = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, new_state["batch_stats"]

    @jax.jit
    def step(params, batch_stats, opt_state, x_all, y_all, idx):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x_all[idx], y_all[idx]
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    @jax.jit
    def predict(params, batch_stats, x):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        return jnp.argmax(logits, axis=-1)

    return model, tx, step, predict


def _nhwc(x: np.ndarray) -> jax.Array:
    return jnp.asarray(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))


def _weights(params) -> dict[str, jax.Array]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in flat
        if leaf.ndim >= 2
    }


class Trainer:
    """One run: Flax parameters, batch statistics, optax state and the data on device."""

    def __init__(self, arm: Arm, data: Dataset, seed: int, hyper: dict[str, dict]) -> None:
        spec = cnn_spec(data.image_shape, data.n_classes)
        hyper_items = tuple((k, tuple(sorted(v.items()))) for k, v in sorted(hyper.items()))
        model, tx, self._step, self._predict = _compiled(spec, arm, hyper_items)
        self.x_train = _nhwc(data.x_train)
        self.y_train = jnp.asarray(data.y_train.astype(np.int32))
        variables = model.init(jax.random.key(seed), self.x_train[:2], train=False)
        self.params, self.batch_stats = variables["params"], variables["batch_stats"]
        self.opt_state = tx.init(self.params)
        self.initial = _weights(self.params)

    def train_epoch(self, batches: Sequence[np.ndarray]) -> float:
        losses = []
        for idx in batches:
            self.params, self.batch_stats, self.opt_state, loss = self._step(
                self.params,
                self.batch_stats,
                self.opt_state,
                self.x_train,
                self.y_train,
                jnp.asarray(idx.astype(np.int32)),
            )
            losses.append(loss)
        return float(jnp.mean(jnp.stack(losses)))

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        pred = np.asarray(self._predict(self.params, self.batch_stats, _nhwc(x)))
        return float((pred == y).mean())

    def weight_mean_drift(self) -> dict[str, np.ndarray]:
        # Flax kernels keep the output axis last.
        return {
            n: np.asarray(mean_drift(w, self.initial[n], axis=-1))
            for n, w in _weights(self.params).items()
        }


def describe(data: Dataset) -> str:
    return cnn_spec(data.image_shape, data.n_classes).describe() + " (Flax linen, JAX CPU)"
