"""The explicit operator: e, P = I - eeᵀ and project()."""

from __future__ import annotations

import numpy as np
import pytest

import gcore
import reference as ref
from helpers import asarray, to_numpy, xp_assert_close

SIZES = [1, 2, 3, 7, 16, 27]
SHAPES = [(3, 4), (5, 2, 3), (4, 3, 2, 2), (2, 3, 2, 2, 2)]
CASES = [(s, a) for s in SHAPES for a in range(-len(s), len(s))]


@pytest.mark.parametrize("m", SIZES)
def test_unit_vector(xp, m):
    e = gcore.unit_vector(m, xp=xp, dtype=xp.float64)
    xp_assert_close(e, np.full(m, 1 / np.sqrt(m)))
    assert abs(float(xp.sum(e * e)) - 1.0) < 1e-14


@pytest.mark.parametrize("m", SIZES)
def test_projection_matches_definition(xp, m):
    xp_assert_close(
        gcore.projection_matrix(m, xp=xp, dtype=xp.float64), ref.projection(m), atol=1e-15
    )


@pytest.mark.parametrize("m", SIZES)
def test_projection_is_symmetric_and_idempotent(xp, m):
    P = gcore.projection_matrix(m, xp=xp, dtype=xp.float64)
    xp_assert_close(P, to_numpy(P.T))
    xp_assert_close(P @ P, to_numpy(P), atol=1e-15)


@pytest.mark.parametrize("m", SIZES)
def test_projection_eigenvalues_are_zero_once_and_one(m):
    P = gcore.projection_matrix(m, xp=np)
    eig = np.sort(np.linalg.eigvalsh(P))
    np.testing.assert_allclose(eig, [0.0] + [1.0] * (m - 1), atol=1e-12)


@pytest.mark.parametrize("m", SIZES)
def test_projection_annihilates_e(xp, m):
    P = gcore.projection_matrix(m, xp=xp, dtype=xp.float64)
    e = gcore.unit_vector(m, xp=xp, dtype=xp.float64)
    xp_assert_close(P @ e, np.zeros(m), atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_projection_dtype(xp, dtype):
    P = gcore.projection_matrix(5, xp=xp, dtype=getattr(xp, dtype))
    assert P.dtype == getattr(xp, dtype)


@pytest.mark.parametrize("m", [0, -3])
def test_bad_length_raises(xp, m):
    with pytest.raises(ValueError, match="positive"):
        gcore.unit_vector(m, xp=xp)
    with pytest.raises(ValueError, match="positive"):
        gcore.projection_matrix(m, xp=xp)


@pytest.mark.parametrize(("shape", "axis"), CASES, ids=[f"{s}-axis{a}" for s, a in CASES])
def test_project_equals_centralize(xp, shape, axis):
    g = np.random.default_rng(3).standard_normal(shape)
    x = asarray(xp, g, xp.float64)
    xp_assert_close(
        gcore.project(x, axis=axis), to_numpy(gcore.centralize(x, axis=axis)), atol=1e-14
    )
    xp_assert_close(gcore.project(x, axis=axis), ref.centralize(g, axis), atol=1e-14)


def test_project_leaves_vectors_and_axis_none(xp):
    v = asarray(xp, np.arange(4.0), xp.float64)
    assert gcore.project(v) is v
    m = asarray(xp, np.ones((2, 2)), xp.float64)
    assert gcore.project(m, axis=None) is m


def test_project_float32_keeps_dtype(xp):
    x = asarray(xp, np.random.default_rng(0).standard_normal((4, 6)), xp.float32)
    assert gcore.project(x).dtype == xp.float32
