"""The core rules' newer options and input checks, on every backend.

Adam's ``nesterov`` and ``mu_dtype``, SGD's ``accumulator_dtype``, the float32 eps policy
of float16/bfloat16 Adam, complex parameters, and the errors for mismatched shapes and a
bool ``axis``. Expected values come from float64 NumPy written out from the equations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gcore
from backends import Backend
from helpers import asarray, to_numpy, xp_assert_close

STEPS = 20


def _nadam_reference(params, grads, lr, b1, b2, eps, axis):
    """optax's ``adam(nesterov=True)`` written out, with GC on the gradient."""
    w = params.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    updates = []
    for t, g in enumerate(grads, start=1):
        if axis is not None:
            g = g - g.mean(
                axis=tuple(a for a in range(g.ndim) if a != axis % g.ndim), keepdims=True
            )
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        u = -lr * m_hat / (np.sqrt(v_hat) + eps)
        updates.append(u)
        w = w + u
    return updates


@pytest.mark.parametrize("axis", [0, -1, None])
def test_adam_nesterov_matches_the_written_out_rule(xp, jit, axis):
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((4, 3, 2))
    grads = [rng.standard_normal(w0.shape) for _ in range(STEPS)]
    gc = None if axis is None else gcore.GC(axis=axis)
    rule = gcore.Adam(lr=0.01, betas=(0.8, 0.95), eps=1e-6, nesterov=True, gc=gc)
    want = _nadam_reference(w0, grads, 0.01, 0.8, 0.95, 1e-6, axis)
    w = asarray(xp, w0)
    state = rule.init(w)
    update = jit(rule.update)
    for t, g in enumerate(grads):
        u, state = update(asarray(xp, g), state, w)
        xp_assert_close(u, want[t], dtype=w.dtype, rtol=1e-11, err_msg=f"step {t}")
        w = w + u


def test_adam_nesterov_false_is_unchanged(xp):
    rng = np.random.default_rng(0)
    w = asarray(xp, rng.standard_normal((3, 4)))
    g = asarray(xp, rng.standard_normal((3, 4)))
    a, b = gcore.Adam(lr=0.1), gcore.Adam(lr=0.1, nesterov=False)
    ua, _ = a.update(g, a.init(w), w)
    ub, _ = b.update(g, b.init(w), w)
    np.testing.assert_array_equal(to_numpy(ua), to_numpy(ub))


@pytest.mark.parametrize(
    ("rule_type", "option", "kwargs"),
    [
        (gcore.Adam, "mu_dtype", {}),
        (gcore.AdamW, "mu_dtype", {"weight_decay": 0.1}),
        (gcore.SGD, "accumulator_dtype", {"momentum": 0.9}),
    ],
)
def test_moment_dtype_stores_state_in_that_dtype(xp, rule_type, option, kwargs):
    """float32 params, float64 moments: state stored in float64, updates in float32,
    and the steps equal those of a float64 run rounded once per step."""
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((5, 3)).astype(np.float32)
    rule = rule_type(lr=0.05, **kwargs, **{option: "float64"})
    plain64 = rule_type(lr=0.05, **kwargs)
    w = asarray(xp, w0)
    state = rule.init(w)
    first = state.exp_avg if rule_type is not gcore.SGD else state.momentum_buffer
    assert first.dtype == xp.float64
    w64 = asarray(xp, w0.astype(np.float64))
    state64 = plain64.init(w64)
    for t in range(5):
        g0 = rng.standard_normal(w0.shape).astype(np.float32)
        u, state = rule.update(asarray(xp, g0), state, w)
        assert u.dtype == xp.float32
        first = state.exp_avg if rule_type is not gcore.SGD else state.momentum_buffer
        assert first.dtype == xp.float64
        # Same inputs to a float64 rule give the same step up to float32 rounding (of the
        # result, and of Adam's second moment, which stays in the parameter's dtype);
        # atol (3 float32 ulps of 0.05): AdamW's decay can cancel the Adam step.
        u64, state64 = plain64.update(asarray(xp, g0.astype(np.float64)), state64, w64)
        xp_assert_close(u, to_numpy(u64), rtol=1e-6, atol=1e-8, err_msg=f"step {t}")
        w = w + u
        w64 = xp.astype(w, xp.float64)


def test_moment_dtype_accepts_a_dtype_object(xp):
    rule = gcore.Adam(mu_dtype=xp.float32)
    state = rule.init(asarray(xp, np.zeros((2, 2))))
    assert state.exp_avg.dtype == xp.float32
    assert state.exp_avg_sq.dtype == xp.float64


@pytest.mark.parametrize("bad", ["int32", "not_a_dtype"])
def test_moment_dtype_rejects_non_float_names(xp, bad):
    rule = gcore.Adam(mu_dtype=bad)
    with pytest.raises(TypeError, match="mu_dtype"):
        rule.init(asarray(xp, np.zeros((2, 2))))


@pytest.mark.parametrize("bad", [1.5, True])
def test_moment_dtype_rejects_numbers(bad):
    with pytest.raises(TypeError, match="accumulator_dtype"):
        gcore.SGD(momentum=0.9, accumulator_dtype=bad)


def _low_dtypes(xp, backend):
    names = ["float16"]
    if backend in (Backend.TORCH, Backend.JAX):
        names.append("bfloat16")
    return [getattr(xp, n) for n in names if hasattr(xp, n)]


@pytest.mark.parametrize(
    ("rule_type", "convention"),
    [(gcore.Adam, None), (gcore.AdamW, "torch"), (gcore.AdamW, "paper")],
    ids=["adam", "adamw", "adamw_paper"],
)
def test_low_precision_adam_never_gives_nan_on_zero_gradients(xp, backend, rule_type, convention):
    """eps=1e-8 rounds to 0 in float16; the denominator is formed in float32 instead.
    GC makes exact zeros common: a constant row centralizes to all zeros."""
    kwargs = {} if convention is None else {"convention": convention}
    g0 = np.array([[1, 1, 1], [1, 2, 3]], dtype=np.float64)
    for dtype in _low_dtypes(xp, backend):
        rule = rule_type(lr=1e-2, **kwargs)
        w = xp.astype(asarray(xp, np.zeros((2, 3))), dtype)
        state = rule.init(w)
        for _ in range(3):
            u, state = rule.update(xp.astype(asarray(xp, g0), dtype), state, w)
            assert u.dtype == dtype
            w = w + u
            assert np.all(np.isfinite(to_numpy(xp.astype(w, xp.float32)))), dtype
        # Row 0 is constant: its centralized gradient is exactly zero, so it stays put.
        np.testing.assert_array_equal(to_numpy(xp.astype(w, xp.float32))[0], 0.0)
        # Row 1 moves like the float32 rule (rounded to the low dtype).
        rule32 = rule_type(lr=1e-2, **kwargs)
        w32 = asarray(xp, np.zeros((2, 3)), dtype=xp.float32)
        s32 = rule32.init(w32)
        for _ in range(3):
            u32, s32 = rule32.update(asarray(xp, g0, dtype=xp.float32), s32, w32)
            w32 = w32 + u32
        got = to_numpy(xp.astype(w, xp.float32))
        np.testing.assert_allclose(got, to_numpy(w32), rtol=2e-2, atol=1e-3)


def test_complex_centralize_subtracts_the_complex_mean(xp, backend):
    g = np.array([[1 + 2j, 3 - 1j, 2 + 2j], [0j, 1j, -1j]])
    want = g - g.mean(axis=1, keepdims=True)
    got = gcore.centralize(xp.asarray(g))
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-14)


@pytest.mark.parametrize("rule_type", [gcore.SGD, gcore.Adam])
def test_complex_rules_with_gc_off_match_the_real_view(xp, backend, rule_type):
    """GC off on a complex parameter: SGD is the plain step; Adam's second moment is
    |g|², as in optax (not torch's view_as_real, which keeps separate moments)."""
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4)) for _ in range(4)]
    rule = rule_type(lr=0.1, gc=None)
    w = xp.asarray(w0)
    state = rule.init(w)
    m = np.zeros_like(w0)
    v = np.zeros(w0.shape)
    for t, g in enumerate(grads, start=1):
        u, state = rule.update(xp.asarray(g), state, w)
        if rule_type is gcore.SGD:
            want = -0.1 * g
        else:
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * np.abs(g) ** 2
            want = -0.1 / (1 - 0.9**t) * m / (np.sqrt(v) / math.sqrt(1 - 0.999**t) + 1e-8)
        np.testing.assert_allclose(to_numpy(u), want, rtol=1e-12)
        w = w + u


def test_complex_gc_keeps_the_unit_mean(xp, backend):
    rng = np.random.default_rng(6)
    w0 = rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))
    rule = gcore.SGD(lr=0.1, momentum=0.9)
    w = xp.asarray(w0)
    state = rule.init(w)
    for _ in range(5):
        g = rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))
        u, state = rule.update(xp.asarray(g), state, w)
        w = w + u
    np.testing.assert_allclose(to_numpy(w).mean(axis=1), w0.mean(axis=1), atol=1e-13)


@pytest.mark.parametrize(
    "rule",
    [gcore.SGD(lr=0.1), gcore.SGD(lr=0.1, weight_decay=0.1), gcore.Adam(), gcore.AdamW()],
    ids=["sgd", "sgd_l2", "adam", "adamw"],
)
def test_grad_shape_must_match_param(xp, rule):
    w = asarray(xp, np.zeros((4, 3)))
    state = rule.init(w)
    with pytest.raises(ValueError, match=r"shape \(4, 3\).*\(1, 3\)"):
        rule.update(asarray(xp, np.ones((1, 3))), state, w)


@pytest.mark.parametrize(
    "rule", [gcore.SGD(lr=0.1, momentum=0.9), gcore.Adam()], ids=["sgd_momentum", "adam"]
)
def test_state_shape_must_match_grad(xp, rule):
    state = rule.init(asarray(xp, np.zeros((2, 3))))
    with pytest.raises(ValueError, match="state"):
        rule.update(asarray(xp, np.ones((4, 3))), state)


@pytest.mark.parametrize("axis", [True, False])
def test_centralize_rejects_a_bool_axis(xp, axis):
    with pytest.raises(TypeError, match="bool"):
        gcore.centralize(asarray(xp, np.ones((2, 3))), axis=axis)


def test_paper_convention_rejects_nesterov():
    with pytest.raises(ValueError, match="nesterov"):
        gcore.AdamW(convention="paper", nesterov=True)


def test_unknown_convention_is_rejected():
    with pytest.raises(ValueError, match=r"convention='keras'.*'torch'.*'paper'"):
        gcore.AdamW(convention="keras")
