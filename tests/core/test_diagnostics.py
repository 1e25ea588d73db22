from __future__ import annotations

import numpy as np
import pytest

import gcore
import reference as ref
from gcore import diagnostics
from helpers import asarray, xp_assert_close


@pytest.mark.parametrize(("shape", "axis"), [((4, 3), 0), ((3, 2, 2), 1), ((2, 5), -1)])
def test_mean_drift(xp, shape, axis):
    rng = np.random.default_rng(0)
    w0, w = rng.standard_normal(shape), rng.standard_normal(shape)
    want = (np.moveaxis(w - w0, axis, 0).reshape(shape[axis], -1)).mean(axis=1)
    got = diagnostics.mean_drift(
        asarray(xp, w, xp.float64), asarray(xp, w0, xp.float64), axis=axis
    )
    xp_assert_close(got, want, atol=1e-15)


def test_mean_drift_shape_mismatch(xp):
    with pytest.raises(ValueError, match="same shape"):
        diagnostics.mean_drift(xp.zeros((2, 3)), xp.zeros((3, 2)))


@pytest.mark.parametrize(("shape", "axis"), [((4, 3), 0), ((3, 2, 2), -1), ((6, 1), 0)])
def test_removed_fraction(xp, shape, axis):
    g = np.random.default_rng(1).standard_normal(shape) + 0.5
    want = np.linalg.norm(g - ref.centralize(g, axis)) / np.linalg.norm(g)
    got = diagnostics.removed_fraction(asarray(xp, g, xp.float64), axis=axis)
    xp_assert_close(got, np.asarray(want))


def test_removed_fraction_edge_cases(xp):
    assert float(diagnostics.removed_fraction(xp.zeros((3, 3), dtype=xp.float64))) == 0.0
    assert float(diagnostics.removed_fraction(xp.ones((3, 3), dtype=xp.float64))) == 1.0
    assert float(diagnostics.removed_fraction(xp.ones((3,), dtype=xp.float64))) == 0.0
    centered = gcore.centralize(asarray(xp, np.arange(6.0).reshape(2, 3), xp.float64))
    assert float(diagnostics.removed_fraction(centered)) < 1e-15
