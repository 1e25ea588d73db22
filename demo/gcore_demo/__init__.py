"""gcore_demo: see Gradient Centralization's effect on real training, offline, in minutes.

``gcore demo`` (or ``python -m gcore demo``) trains a small BatchNorm CNN (PyTorch by
default; Flax with ``--backend jax``; a NumPy MLP with ``--backend numpy``) on data that
need no download, with SGD-momentum and Adam, each without GC, with GC and with GC on
conv kernels only, and Adam with GC of its update, over several seeds. It prints a table
and writes ``curves.png``, ``weight_mean.png``, ``table.md`` and ``results.json``.

>>> from gcore_demo import ARMS
>>> [arm.name for arm in ARMS]  # doctest: +NORMALIZE_WHITESPACE
['SGD', 'SGD + GC', 'SGD + GC-conv', 'Adam', 'Adam + GC', 'Adam + GC-conv',
 'Adam + GC (update)']
"""

from ._cli import main
from .arms import ARMS, DEFAULT_HYPERPARAMETERS, Arm
from .data import DATASETS, Dataset, load_data
from .experiment import BACKENDS, DEFAULT_EPOCHS, run_demo, summarize
from .report import format_table, plot_curves, plot_weight_mean, write_json

__all__ = [
    "ARMS",
    "BACKENDS",
    "DATASETS",
    "DEFAULT_EPOCHS",
    "DEFAULT_HYPERPARAMETERS",
    "Arm",
    "Dataset",
    "format_table",
    "load_data",
    "main",
    "plot_curves",
    "plot_weight_mean",
    "run_demo",
    "summarize",
    "write_json",
]
