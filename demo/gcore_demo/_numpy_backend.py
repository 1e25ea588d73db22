"""NumPy backend: a 2-layer MLP with hand-written backpropagation, trained by gcore_numpy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

import gcore
import gcore_numpy
from gcore.diagnostics import mean_drift

from .arms import Arm
from .data import Dataset

HIDDEN = 128
MODEL = f"MLP: Linear({{d}}, {HIDDEN}) → ReLU → Linear({HIDDEN}, {{c}}), hand-written backprop"
# An MLP has no conv kernels: GC-conv-only would be plain SGD/Adam, so those arms are skipped.
HAS_CONV = False


def init_params(d_in: int, n_classes: int, seed: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """torch.nn.Linear's default initialisation, U(±1/√fan_in), weights as (out, in)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, (fan_in, fan_out) in {"fc1": (d_in, HIDDEN), "fc2": (HIDDEN, n_classes)}.items():
        bound = 1.0 / math.sqrt(fan_in)
        params[f"{name}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(dtype)
        params[f"{name}.bias"] = rng.uniform(-bound, bound, fan_out).astype(dtype)
    return params


def logits(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = np.maximum(x @ params["fc1.weight"].T + params["fc1.bias"], 0)
    return h @ params["fc2.weight"].T + params["fc2.bias"]


def loss_and_grads(
    params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean softmax cross-entropy of the MLP on ``(x, y)`` and its gradients."""
    w1, b1, w2, b2 = (params[k] for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))
    z1 = x @ w1.T + b1
    h = np.maximum(z1, 0)
    z2 = h @ w2.T + b2
    z2 = z2 - z2.max(axis=1, keepdims=True)  # stable log-softmax
    logp = z2 - np.log(np.exp(z2).sum(axis=1, keepdims=True))
    n = len(y)
    loss = -float(logp[np.arange(n), y].mean())
    dz2 = np.exp(logp)
    dz2[np.arange(n), y] -= 1
    dz2 /= n
    dz1 = (dz2 @ w2) * (z1 > 0)
    grads = {
        "fc1.weight": dz1.T @ x,
        "fc1.bias": dz1.sum(axis=0),
        "fc2.weight": dz2.T @ h,
        "fc2.bias": dz2.sum(axis=0),
    }
    return loss, grads


class Trainer:
    """One run: the MLP, its gcore_numpy optimizer and the data (flattened)."""

    def __init__(self, arm: Arm, data: Dataset, seed: int, hyper: dict[str, dict]) -> None:
        if arm.gc == "conv":
            raise ValueError("the NumPy MLP has no conv kernels; GC-conv-only does not apply")
        self.x_train = data.x_train.reshape(len(data.x_train), -1)
        self.y_train = data.y_train
        self.params = init_params(self.x_train.shape[1], data.n_classes, seed)
        self.initial = {k: v.copy() for k, v in self.params.items() if v.ndim >= 2}
        gc = (
            None
            if arm.gc == "none"
            else gcore.GC(where="update" if arm.gc == "update" else "gradient")
        )
        cls = {"sgd": gcore_numpy.SGD, "adam": gcore_numpy.Adam}[arm.optimizer]
        self.optimizer = cls(self.params, gc=gc, **hyper[arm.optimizer])

    def train_epoch(self, batches: Sequence[np.ndarray]) -> float:
        total = 0.0
        for idx in batches:
            loss, grads = loss_and_grads(self.params, self.x_train[idx], self.y_train[idx])
            self.optimizer.step(grads)
            total += loss
        return total / len(batches)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        pred = logits(self.params, x.reshape(len(x), -1)).argmax(axis=1)
        return float((pred == y).mean())

    def weight_mean_drift(self) -> dict[str, np.ndarray]:
        return {k: mean_drift(self.params[k], w0, axis=0) for k, w0 in self.initial.items()}


def describe(data: Dataset) -> str:
    return MODEL.format(d=int(np.prod(data.image_shape)), c=data.n_classes)
