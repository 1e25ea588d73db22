"""The core's half of the bad-input catalogue (docs/errors.rst): what every bad input to
``gcore.centralize`` and the rules does, on the session's backend.

Each test here is cited by one or more rows of docs/errors.rst; keep the ids stable.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

import gcore
from helpers import asarray, to_numpy

RULES = {"SGD": gcore.SGD, "Adam": gcore.Adam, "AdamW": gcore.AdamW}
BAD_LR = {"negative": -1e-3, "nan": math.nan, "inf": math.inf}


def _dtype(xp, name):
    dtype = getattr(xp, name, None)
    if dtype is None:
        pytest.skip(f"this backend has no {name}")
    return dtype


# -- hyperparameters ---------------------------------------------------------------------
@pytest.mark.parametrize("value", BAD_LR.values(), ids=BAD_LR.keys())
@pytest.mark.parametrize("rule", RULES)
def test_lr_rejected(rule, value):
    with pytest.raises(ValueError, match=r"lr=.* is invalid; allowed: lr >= 0"):
        RULES[rule](lr=value)


@pytest.mark.parametrize("value", [True, "0.1", None], ids=["bool", "str", "none"])
def test_lr_not_a_number(value):
    with pytest.raises(TypeError, match=r"lr=.*expected a real number"):
        gcore.SGD(lr=value)


@pytest.mark.parametrize(
    "betas",
    [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.999), (0.9, math.nan), (0.9, 1.5)],
    ids=["b1=1", "b2=1", "b1<0", "b2=nan", "b2>1"],
)
@pytest.mark.parametrize("rule", ["Adam", "AdamW"])
def test_betas_rejected(rule, betas):
    with pytest.raises(ValueError, match=r"betas\[[01]\]=.* is invalid; allowed: 0 <= betas"):
        RULES[rule](betas=betas)


def test_betas_not_a_pair():
    with pytest.raises(ValueError, match="expected a pair"):
        gcore.Adam(betas=(0.9,))


@pytest.mark.parametrize("eps", [0.0, -1e-8, math.nan], ids=["zero", "negative", "nan"])
def test_eps_rejected(eps):
    with pytest.raises(ValueError, match=r"eps=.* is invalid; allowed: eps > 0"):
        gcore.Adam(eps=eps)


def test_momentum_negative():
    with pytest.raises(ValueError, match=r"momentum=-0.5 is invalid; allowed: momentum >= 0"):
        gcore.SGD(momentum=-0.5)


@pytest.mark.parametrize("dampening", [-0.1, 1.5, math.nan], ids=["negative", "above1", "nan"])
def test_dampening_rejected(dampening):
    with pytest.raises(ValueError, match=r"allowed: 0 <= dampening <= 1"):
        gcore.SGD(momentum=0.9, dampening=dampening)


@pytest.mark.parametrize(
    "kwargs", [{}, {"momentum": 0.9, "dampening": 0.1}], ids=["no_momentum", "dampening"]
)
def test_nesterov_needs_momentum_without_dampening(kwargs):
    with pytest.raises(ValueError, match="nesterov=True requires momentum > 0 and dampening = 0"):
        gcore.SGD(nesterov=True, **kwargs)


@pytest.mark.parametrize("rule", RULES)
def test_weight_decay_negative(rule):
    with pytest.raises(ValueError, match=r"weight_decay=-0.1 is invalid; allowed: weight_decay"):
        RULES[rule](weight_decay=-0.1)


@pytest.mark.parametrize("name", ["nesterov", "maximize"])
def test_flag_not_bool(name):
    with pytest.raises(TypeError, match=f"{name}=1: expected True or False"):
        gcore.SGD(momentum=0.9, **{name: 1})


def test_adamw_convention_unknown():
    with pytest.raises(ValueError, match="convention='keras' is invalid; allowed: 'torch'"):
        gcore.AdamW(convention="keras")


def test_mu_dtype_not_floating(xp):
    with pytest.raises(TypeError, match="mu_dtype='int32' is not a floating-point dtype"):
        gcore.Adam(mu_dtype="int32").init(xp.ones((2, 3)))
    with pytest.raises(TypeError, match="mu_dtype=3: expected None, a dtype name"):
        gcore.Adam(mu_dtype=3)


# -- GC options ----------------------------------------------------------------------------
def test_gc_where_unknown():
    with pytest.raises(ValueError, match="where='grad' is invalid; allowed: 'gradient', 'update'"):
        gcore.GC(where="grad")


@pytest.mark.parametrize("axis", [True, 1.0, "0"], ids=["bool", "float", "str"])
def test_gc_axis_not_int(axis):
    with pytest.raises(TypeError, match="expected an int output axis or None"):
        gcore.GC(axis=axis)


@pytest.mark.parametrize("gc", [True, "gc", 0], ids=["True", "str", "zero"])
def test_gc_not_a_gc_instance(gc):
    with pytest.raises(TypeError, match=r"expected a gcore\.GC instance or None"):
        gcore.SGD(gc=gc)


def test_layout_unknown():
    with pytest.raises(ValueError, match=r"layout='mxnet' is unknown; allowed: \['equinox'"):
        gcore.output_axis("mxnet")
    with pytest.raises(ValueError, match="layout=True is unknown"):
        gcore.output_axis(True)


@pytest.mark.parametrize("axis", [True, False])
def test_centralize_axis_bool(xp, axis):
    with pytest.raises(TypeError, match="not a bool"):
        gcore.centralize(xp.ones((2, 3)), axis=axis)


@pytest.mark.parametrize("axis", [2, -3])
def test_centralize_axis_out_of_range(xp, axis):
    with pytest.raises(ValueError, match=rf"axis={axis} is out of range .* -2 <= axis < 2"):
        gcore.centralize(xp.ones((2, 3)), axis=axis)


def test_rule_axis_out_of_range(xp):
    rule = gcore.SGD(lr=0.1, gc=gcore.GC(axis=3))
    w = xp.ones((2, 3))
    with pytest.raises(ValueError, match="axis=3 is out of range"):
        rule.update(xp.ones((2, 3)), rule.init(w), w)


# -- dtypes --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_integer_and_bool_rejected(xp, dtype):
    g = xp.astype(xp.ones((2, 3)), getattr(xp, dtype))
    with pytest.raises(TypeError, match="needs a floating-point array"):
        gcore.centralize(g)
    for rule in (gcore.SGD(momentum=0.9), gcore.Adam()):
        with pytest.raises(TypeError, match="param has dtype"):
            rule.init(g)
        with pytest.raises(TypeError, match="gradient has dtype"):
            rule.update(g, rule.init(xp.ones((2, 3))))


def test_complex_centralized_by_complex_mean(xp):
    g_np = np.array([[1 + 2j, 3 - 1j, -1 + 0.5j], [2j, 2j, 2j]], dtype=np.complex128)
    g = asarray(xp, g_np, dtype=xp.complex128)
    out = gcore.centralize(g)
    assert out.dtype == xp.complex128
    np.testing.assert_allclose(to_numpy(out), g_np - g_np.mean(axis=1, keepdims=True), rtol=1e-14)
    rule = gcore.Adam(lr=0.1)
    w = xp.zeros((2, 3), dtype=xp.complex128)
    updates, state = rule.update(g, rule.init(w), w)
    assert updates.dtype == xp.complex128
    assert np.isfinite(to_numpy(updates)).all()
    # Adam's second moment is |g|^2: real, non-negative.
    v = to_numpy(state.exp_avg_sq)
    assert np.allclose(v.imag, 0) and (v.real >= 0).all()


# -- shapes --------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", [gcore.SGD(weight_decay=0.1), gcore.Adam()], ids=["SGD", "Adam"])
def test_grad_shape_mismatch(xp, rule):
    w = xp.ones((4, 3))
    with pytest.raises(ValueError, match=r"shape \(4, 3\) but the gradient has shape \(1, 3\)"):
        rule.update(xp.ones((1, 3)), rule.init(w), w)


@pytest.mark.parametrize(
    "rule", [gcore.SGD(momentum=0.9), gcore.Adam(amsgrad=True)], ids=["SGD", "Adam"]
)
def test_state_of_another_parameter(xp, rule):
    state = rule.init(xp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"state\..* has shape \(2, 3\) but the gradient"):
        rule.update(xp.ones((4, 3)), state, xp.ones((4, 3)))


def test_weight_decay_needs_param(xp):
    rule = gcore.SGD(weight_decay=0.1)
    with pytest.raises(ValueError, match="param is required when weight_decay != 0"):
        rule.update(xp.ones((2, 2)), rule.init(xp.ones((2, 2))))


@pytest.mark.parametrize("shape", [(), (5,)], ids=["0d", "1d"])
def test_scalars_and_vectors_not_centralized(xp, shape):
    g_np = np.arange(1.0, 1.0 + math.prod(shape)).reshape(shape)
    g = asarray(xp, g_np)
    np.testing.assert_array_equal(to_numpy(gcore.centralize(g)), g_np)
    rule = gcore.SGD(lr=0.5)
    updates, _ = rule.update(g, rule.init(g), g)
    np.testing.assert_array_equal(to_numpy(updates), -0.5 * g_np)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (2, 0, 3, 3)])
def test_zero_size(xp, shape):
    g = xp.zeros(shape)
    assert tuple(gcore.centralize(g).shape) == shape
    for rule in (gcore.SGD(momentum=0.9), gcore.Adam(), gcore.AdamW()):
        updates, _ = rule.update(g, rule.init(g), g)
        assert tuple(updates.shape) == shape


@pytest.mark.parametrize("shape,axis", [((4, 1), 0), ((1, 4), -1), ((3, 1, 1, 1), 0)])
def test_single_weight_units_get_zero_gradient(xp, shape, axis):
    """M = 1: P = 0, the unit's gradient is zero and GC-SGD/Adam never move it."""
    g = asarray(xp, np.arange(1.0, 1.0 + math.prod(shape)).reshape(shape))
    assert not np.any(to_numpy(gcore.centralize(g, axis=axis)))
    for rule in (gcore.SGD(lr=0.1, gc=gcore.GC(axis=axis)), gcore.Adam(gc=gcore.GC(axis=axis))):
        updates, _ = rule.update(g, rule.init(g), g)
        assert not np.any(to_numpy(updates))


# -- low precision -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "rule",
    [
        gcore.Adam(lr=1e-2),
        gcore.Adam(lr=1e-2, amsgrad=True),
        gcore.Adam(lr=1e-2, nesterov=True),
        gcore.AdamW(lr=1e-2),
        gcore.AdamW(lr=1e-2, convention="paper"),
    ],
    ids=["Adam", "amsgrad", "nesterov", "AdamW", "AdamW-paper"],
)
def test_low_precision_adam_never_nan(xp, rule, dtype_name):
    """eps=1e-8 rounds to 0 in float16: the denominator is formed in float32."""
    dtype = _dtype(xp, dtype_name)
    info = np.finfo(np.float16)
    grads = [
        [[1, 1, 1], [1, 2, 3]],  # row 0 centralizes to exact zeros
        [[0, 0, 0], [0, 0, 0]],
        [[float(info.tiny), 0, -float(info.tiny)], [1e-7, -1e-7, 0]],
        [[6e4, -6e4, 0], [3e4, 3e4, 3e4]],
    ]
    w = xp.astype(xp.zeros((2, 3)), dtype)
    state = rule.init(w)
    for g in grads:
        updates, state = rule.update(asarray(xp, g, dtype=dtype), state, w)
        assert updates.dtype == dtype
        assert np.isfinite(to_numpy(xp.astype(updates, xp.float32))).all(), g
        w = w + updates
    assert state.exp_avg.dtype == dtype and state.exp_avg_sq.dtype == dtype


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_low_precision_centralize_keeps_dtype(xp, dtype_name):
    dtype = _dtype(xp, dtype_name)
    g = asarray(xp, [[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]], dtype=dtype)
    out = gcore.centralize(g)
    assert out.dtype == dtype
    got = to_numpy(xp.astype(out, xp.float32))
    np.testing.assert_array_equal(got[1], 0.0)
    np.testing.assert_allclose(got[0], [-4 / 3, -1 / 3, 5 / 3], rtol=1e-2)


# -- NaN / Inf -----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("axis", [0, -1])
def test_nonfinite_spreads_to_its_unit_only(xp, bad, axis):
    """GC spreads one NaN/Inf to every element of its output unit, never to others."""
    g_np = np.arange(12.0).reshape(3, 4)
    g_np[1, 2] = bad
    out = to_numpy(gcore.centralize(asarray(xp, g_np), axis=axis))
    unit = (slice(1, 2), slice(None)) if axis == 0 else (slice(None), slice(2, 3))
    assert not np.isfinite(out[unit]).any()
    rest = np.ones_like(out, dtype=bool)
    rest[unit] = False
    assert np.isfinite(out[rest]).all()
    ref = np.arange(12.0).reshape(3, 4)
    ref = ref - ref.mean(axis=1 if axis == 0 else 0, keepdims=True)
    np.testing.assert_allclose(out[rest], ref[rest], rtol=1e-12)


def test_nan_gradient_poisons_only_its_unit_under_gc_sgd(xp):
    rule = gcore.SGD(lr=0.1, momentum=0.9)
    w = xp.ones((3, 4))
    g_np = np.ones((3, 4))
    g_np[0, 0] = math.nan
    updates, _ = rule.update(asarray(xp, g_np), rule.init(w), w)
    u = to_numpy(updates)
    assert np.isnan(u[0]).all() and np.isfinite(u[1:]).all()


# -- the catalogue itself ------------------------------------------------------------------
def test_catalogue_rows_cite_existing_tests():
    """docs/errors.rst has >= 45 rows and every test it cites exists (file and function;
    the parametrized ids are checked by collecting them, see the module docstring)."""
    root = Path(__file__).parents[2]
    page = (root / "docs" / "errors.rst").read_text(encoding="utf-8")
    table = page.split(".. list-table::", 1)[1]
    rows = [r for r in re.split(r"\n   \* - ", table)[2:] if "tests/" in r]
    assert len(rows) >= 45, len(rows)
    for row in rows:
        ids = re.findall(r"``(tests/[\w/]+\.py)::(\w+)(\[[^`]*\])?``", row)
        assert ids, f"row without a test id: {row[:80]!r}"
        for path, name, _ in ids:
            source = (root / path).read_text(encoding="utf-8")
            assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} not found"
