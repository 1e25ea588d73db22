"""The demo's datasets: both are made on this machine, nothing is downloaded.

* ``"digits"`` — scikit-learn's 8×8 handwritten digits (1797 images, shipped inside
  scikit-learn), split 80/20 with a fixed, stratified split.
* ``"mnist1d"`` — MNIST-1D (Greydanus 2020): 10 one-dimensional templates, padded,
  scaled, translated, sheared and noised into 40-sample signals by the ``mnist1d``
  package's own generator (``make_dataset``, seed 42, 4000 train / 1000 test). The
  package's ``get_dataset`` would fetch a pickle from GitHub; the demo calls the
  generator directly, so the data are built offline (about 3 s).

Both are standardised with the training set's mean and standard deviation (one scalar
each, so a convolution still sees images) and stored as ``(n, 1, H, W)`` float32 arrays:
digits as 1×8×8 images, MNIST-1D as 1×1×40 "images" so that the same 2-D convolutions
(4-D kernels, which the paper's GC-conv-only variant centralizes) serve both.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

__all__ = ["DATASETS", "Dataset", "load_data"]

DATASETS = ("digits", "mnist1d")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A fixed train/test split, standardised, images as ``(n, 1, H, W)`` float32.

    Attributes
    ----------
    name : str
        ``"digits"`` or ``"mnist1d"``.
    x_train, x_test : ndarray of float32, shape (n, 1, H, W)
        Inputs, standardised with the training set's scalar mean and std.
    y_train, y_test : ndarray of int64, shape (n,)
        Class labels ``0 … n_classes - 1``.
    n_classes : int
        Number of classes (10 for both datasets).
    target_accuracy : float
        Test accuracy whose first crossing the demo reports ("epochs to target").
    description : str
        One line saying where the data come from.

    Examples
    --------
    >>> from gcore_demo import load_data
    >>> d = load_data("digits")
    >>> d.x_train.shape, d.x_test.shape, d.n_classes
    ((1437, 1, 8, 8), (360, 1, 8, 8), 10)
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    target_accuracy: float
    description: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one input."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = float(x_train.mean()), float(x_train.std())
    return (
        ((x_train - mean) / std).astype(np.float32),
        ((x_test - mean) / std).astype(np.float32),
    )


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    x_tr, x_te = _standardise(x_tr, x_te)
    return Dataset(
        name="digits",
        x_train=x_tr.reshape(-1, 1, 8, 8),
        y_train=y_tr.astype(np.int64),
        x_test=x_te.reshape(-1, 1, 8, 8),
        y_test=y_te.astype(np.int64),
        n_classes=10,
        target_accuracy=0.97,
        description="scikit-learn digits, 8x8 images, 1437 train / 360 test (stratified)",
    )


def _mnist1d() -> Dataset:
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset seeds the global NumPy and `random` generators; leave them as found.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x_tr, x_te = _standardise(raw["x"], raw["x_test"])
    return Dataset(
        name="mnist1d",
        x_train=x_tr.reshape(len(x_tr), 1, 1, -1),
        y_train=np.asarray(raw["y"], dtype=np.int64),
        x_test=x_te.reshape(len(x_te), 1, 1, -1),
        y_test=np.asarray(raw["y_test"], dtype=np.int64),
        n_classes=10,
        target_accuracy=0.90,
        description=(
            "MNIST-1D generated offline by the mnist1d package (seed 42), "
            "40-sample signals, 4000 train / 1000 test"
        ),
    )


def load_data(name: str = "digits") -> Dataset:
    """Build one of :data:`DATASETS` (offline, deterministic).

    Parameters
    ----------
    name : {"digits", "mnist1d"}
        Which dataset; see the module docstring for what each is.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`DATASETS`.
    ImportError
        If scikit-learn (digits) or mnist1d is not installed; the message names the extra.

    Examples
    --------
    >>> import numpy as np
    >>> from gcore_demo import load_data
    >>> d = load_data("digits")
    >>> abs(float(d.x_train.mean())) < 1e-6, round(float(d.x_train.std()), 4)
    (True, 1.0)
    >>> np.bincount(d.y_test).tolist()  # stratified: 35 to 37 test images per digit
    [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    """
    if name not in DATASETS:
        raise ValueError(f"data={name!r} is unknown; allowed: {', '.join(DATASETS)}")
    try:
        return _digits() if name == "digits" else _mnist1d()
    except ImportError as err:
        raise ImportError(
            f"the {name!r} dataset needs {err.name or 'a missing package'}: "
            "pip install 'gradient-centralization[demo]'"
        ) from err
