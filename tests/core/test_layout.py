"""Layouts: named output axes and the size of an output unit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gcore


def test_output_axis():
    assert gcore.output_axis("torch") == 0
    assert gcore.output_axis("Flax") == -1
    assert gcore.output_axis(None) is None
    with pytest.raises(ValueError, match="layout"):
        gcore.output_axis("caffe")


@settings(max_examples=50, deadline=None)
@given(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=4), st.data())
def test_unit_size_is_the_length_centralize_averages_over(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    m = gcore.unit_size(shape, axis)
    g = np.random.default_rng(0).standard_normal(shape)
    assert m == g.size // g.shape[axis]
    # M = 1 is exactly the case where GC leaves a zero gradient.
    assert (m == 1) == bool(np.all(gcore.centralize(g, axis=axis) == 0))


def test_unit_size_several_axes_and_groups():
    assert gcore.unit_size((5, 2, 3), (1, -1)) == 5  # DenseGeneral (in, 2, 3)
    assert gcore.unit_size((1, 1, 768), -1) == 1
    # torch ConvTranspose2d(6, 4, 3, groups=2): weight (6, 2, 3, 3), unit = 3 inputs x 9
    assert gcore.unit_size((6, 2, 3, 3), 1, groups=2) == 27
    assert gcore.unit_size((1, 4), 1) == 1
    with pytest.raises(ValueError, match="groups=4 does not divide the 6 weights"):
        gcore.unit_size((6, 2), 1, groups=4)
    with pytest.raises(ValueError, match="groups=0: expected a positive int"):
        gcore.unit_size((6, 2), 1, groups=0)
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        gcore.unit_size((6, 2), 2)
