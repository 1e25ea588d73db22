"""Hypothesis: the algebraic properties of P hold for centralize on every backend."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gcore
import reference as ref
from helpers import asarray, to_numpy

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
shapes = hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=5)


@st.composite
def grad_and_axis(draw):
    shape = draw(shapes)
    g = draw(hnp.arrays(np.float64, shape, elements=finite))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return g, axis


def _units(a, axis):
    return np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)


def _c(xp, g, axis):
    return to_numpy(gcore.centralize(asarray(xp, g, xp.float64), axis=axis))


SETTINGS = settings(max_examples=40, deadline=None)


@SETTINGS
@given(grad_and_axis())
def test_zero_mean_per_unit(xp, case):
    g, axis = case
    scale = max(1.0, np.abs(g).max())
    np.testing.assert_allclose(_units(_c(xp, g, axis), axis).mean(1), 0.0, atol=1e-12 * scale)


@SETTINGS
@given(grad_and_axis())
def test_idempotent(xp, case):
    g, axis = case
    once = _c(xp, g, axis)
    np.testing.assert_allclose(_c(xp, once, axis), once, atol=1e-12 * max(1.0, np.abs(g).max()))


@SETTINGS
@given(grad_and_axis())
def test_orthogonal_to_e(xp, case):
    g, axis = case
    u = _units(_c(xp, g, axis), axis)
    e = np.full(u.shape[1], 1 / np.sqrt(u.shape[1]))
    np.testing.assert_allclose(u @ e, 0.0, atol=1e-11 * max(1.0, np.abs(g).max()))


@SETTINGS
@given(grad_and_axis())
def test_norm_does_not_increase(xp, case):
    g, axis = case
    assert np.linalg.norm(_c(xp, g, axis)) <= np.linalg.norm(g) * (1 + 1e-12) + 1e-12


@SETTINGS
@given(grad_and_axis(), finite, finite)
def test_linear(xp, case, a, b):
    g, axis = case
    h = np.random.default_rng(0).standard_normal(g.shape)
    lhs = _c(xp, a * g + b * h, axis)
    rhs = a * _c(xp, g, axis) + b * _c(xp, h, axis)
    scale = max(1.0, np.abs(a * g).max(), np.abs(b * h).max())
    np.testing.assert_allclose(lhs, rhs, atol=1e-11 * scale)


@SETTINGS
@given(grad_and_axis())
def test_equals_explicit_projection(xp, case):
    g, axis = case
    u = _units(g, axis)
    want = u @ ref.projection(u.shape[1])
    got = _units(_c(xp, g, axis), axis)
    np.testing.assert_allclose(got, want, atol=1e-11 * max(1.0, np.abs(g).max()))
