"""gcore.centralize against the float64 loop reference, on every backend."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import gcore
import reference as ref
from backends import Backend
from helpers import asarray, to_numpy, xp_assert_close

SHAPES = [(3, 4), (5, 2, 3), (4, 3, 2, 2), (2, 3, 2, 2, 2)]
CASES = [(s, a) for s in SHAPES for a in range(-len(s), len(s))]


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape) * 3 + 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("shape", "axis"), CASES, ids=[f"{s}-axis{a}" for s, a in CASES])
def test_matches_reference(xp, shape, axis, dtype):
    g = _rand(shape)
    out = gcore.centralize(asarray(xp, g, getattr(xp, dtype)), axis=axis)
    xp_assert_close(
        out,
        ref.centralize(g, axis),
        dtype=getattr(xp, dtype),
        atol=1e-6 if dtype == "float32" else 1e-13,
    )


@pytest.mark.parametrize(("shape", "axis"), CASES, ids=[f"{s}-axis{a}" for s, a in CASES])
def test_every_unit_has_zero_mean(xp, shape, axis):
    out = to_numpy(gcore.centralize(asarray(xp, _rand(shape, 1), xp.float64), axis=axis))
    means = np.moveaxis(out, axis, 0).reshape(shape[axis], -1).mean(axis=1)
    np.testing.assert_allclose(means, 0.0, atol=1e-13)


@pytest.mark.parametrize("min_ndim", [1, 2, 3, 4, 5])
def test_min_ndim(xp, min_ndim):
    g = _rand((3, 4, 5))
    out = gcore.centralize(asarray(xp, g, xp.float64), min_ndim=min_ndim)
    want = ref.centralize(g) if g.ndim >= min_ndim else g
    xp_assert_close(out, want)


@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4), (2, 3, 3, 3), (2, 1, 2, 2, 2)])
def test_conv_only_gc(xp, shape):
    g = _rand(shape)
    out = gcore.GC(conv_only=True)(asarray(xp, g, xp.float64))
    xp_assert_close(out, ref.centralize(g) if len(shape) >= 4 else g)


def test_vectors_and_scalars_are_untouched(xp):
    for g in (_rand((5,)), np.asarray(2.5)):
        x = asarray(xp, g, xp.float64)
        assert gcore.centralize(x) is x


def test_axis_none_returns_input(xp):
    x = asarray(xp, _rand((3, 4)), xp.float64)
    assert gcore.centralize(x, axis=None) is x


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (2, 0, 3), (0, 0)])
def test_zero_size(xp, shape):
    x = xp.zeros(shape, dtype=xp.float64)
    out = gcore.centralize(x)
    assert out.shape == shape
    assert not np.isnan(to_numpy(out)).any()


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (5, 1), (1, 1, 1, 1)])
def test_single_element_units(xp, shape):
    # M = 1 means P = 0: a unit with a single weight gets a zero gradient.
    g = _rand(shape)
    xp_assert_close(gcore.centralize(asarray(xp, g, xp.float64)), ref.centralize(g), atol=1e-15)


def test_input_is_not_modified(xp):
    g = _rand((4, 3, 2))
    x = asarray(xp, g, xp.float64)
    gcore.centralize(x)
    np.testing.assert_array_equal(to_numpy(x), g)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_low_precision_keeps_dtype_and_rounds_once_from_float32(xp, name):
    dtype = getattr(xp, name, None)
    if dtype is None:
        pytest.skip(f"this backend has no {name}")
    g = np.random.default_rng(5).standard_normal((4, 300)) * 10 + 3
    x = asarray(xp, g, dtype)
    out = gcore.centralize(x)
    assert out.dtype == dtype
    # Expected: the float32 mean subtracted in float32, rounded to `name` once.
    g32 = to_numpy(xp.astype(x, xp.float32))
    want32 = g32 - g32.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    want = to_numpy(xp.astype(xp.astype(asarray(xp, want32, xp.float32), dtype), xp.float32))
    got = to_numpy(xp.astype(out, xp.float32))
    # One ulp (two at a binade edge, where the float32 mean's own rounding may tip the
    # result); rounding the mean to `name` first misses small results by far more.
    ulp = 2 * float(xp.finfo(dtype).eps) * np.maximum(np.abs(want), 2.0**-10)
    assert np.all(np.abs(got - want) <= ulp), np.abs(got - want).max()
    np.testing.assert_allclose(got.mean(axis=1), 0.0, atol=float(xp.finfo(dtype).eps) * 40)


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_integer_and_bool_raise_type_error(xp, dtype):
    x = xp.zeros((3, 3), dtype=getattr(xp, dtype))
    with pytest.raises(TypeError, match="floating"):
        gcore.centralize(x)


@pytest.mark.parametrize("axis", [2, -3, 10])
def test_axis_out_of_range(xp, axis):
    with pytest.raises(ValueError, match="axis"):
        gcore.centralize(xp.zeros((3, 3), dtype=xp.float64), axis=axis)


@pytest.mark.parametrize(("shape", "axis"), [((4, 3, 2), 0), ((3, 5), -1), ((2, 3, 3, 4), 1)])
def test_traces_under_jit(xp, backend, jit, shape, axis):
    if backend is not Backend.JAX:
        pytest.skip("jit tracing applies to the jax backend")
    g = _rand(shape)
    f = jit(functools.partial(gcore.centralize, axis=axis))
    xp_assert_close(f(asarray(xp, g, xp.float64)), ref.centralize(g, axis))


def test_reduction_axes_and_normalize_axis():
    assert gcore.reduction_axes(4, 1) == (0, 2, 3)
    assert gcore.reduction_axes(3, -1) == (0, 1)
    assert gcore.normalize_axis(-1, 5) == 4
    with pytest.raises(ValueError, match=r"-2 <= axis < 2"):
        gcore.normalize_axis(2, 2)
