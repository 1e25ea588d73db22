"""PyTorch backend: the CNN with BatchNorm, trained by gcore_torch's optimizers on the CPU."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import gcore_torch
from gcore.diagnostics import mean_drift

from ._cnn import CNNSpec, cnn_spec
from .arms import Arm
from .data import Dataset

HAS_CONV = True


def build_model(spec: CNNSpec) -> nn.Sequential:
    layers: dict[str, nn.Module] = {}
    c_in = spec.in_channels
    for i, (width, stride) in enumerate(zip(spec.widths, spec.strides, strict=True), 1):
        # No conv bias: BatchNorm's shift replaces it.
        layers[f"conv{i}"] = nn.Conv2d(c_in, width, spec.kernel, stride, spec.padding, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(width)
        layers[f"relu{i}"] = nn.ReLU()
        c_in = width
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(spec.features, spec.n_classes)
    return nn.Sequential(OrderedDict(layers))


class Trainer:
    """One run: the CNN, its gcore_torch optimizer and the data as tensors."""

    def __init__(self, arm: Arm, data: Dataset, seed: int, hyper: dict[str, dict]) -> None:
        # A model this small gains nothing from intra-op threads, and on a shared CPU their
        # spin-waits stall whole runs (measured: 0.3 s runs taking 7-13 s with 2 threads).
        torch.set_num_threads(1)
        torch.manual_seed(seed)  # same initial weights in every arm of a seed
        self.model = build_model(cnn_spec(data.image_shape, data.n_classes))
        self.x_train = torch.from_numpy(data.x_train)
        self.y_train = torch.from_numpy(data.y_train)
        self.weights = {n: p for n, p in self.model.named_parameters() if p.ndim >= 2}
        self.initial = {n: p.detach().clone() for n, p in self.weights.items()}
        gc = {"none": False, "all": True, "conv": "conv_only", "update": True}[arm.gc]
        where = "update" if arm.gc == "update" else "gradient"
        cls = {"sgd": gcore_torch.SGD, "adam": gcore_torch.Adam}[arm.optimizer]
        self.optimizer = cls(
            self.model.parameters(), gc=gc, gc_where=where, **hyper[arm.optimizer]
        )

    def train_epoch(self, batches: Sequence[np.ndarray]) -> float:
        self.model.train()
        total = torch.zeros(())
        for idx in batches:
            i = torch.from_numpy(idx)
            loss = F.cross_entropy(self.model(self.x_train[i]), self.y_train[i])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
        return float(total) / len(batches)

    @torch.no_grad()
    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        self.model.eval()
        pred = self.model(torch.from_numpy(x)).argmax(dim=1)
        return float((pred == torch.from_numpy(y)).float().mean())

    @torch.no_grad()
    def weight_mean_drift(self) -> dict[str, np.ndarray]:
        return {
            n: mean_drift(p.detach(), self.initial[n], axis=0).numpy()
            for n, p in self.weights.items()
        }


def describe(data: Dataset) -> str:
    return cnn_spec(data.image_shape, data.n_classes).describe() + " (PyTorch, CPU)"
