"""GC-SGD / GC-Adam / GC-AdamW: 50-step trajectories against the float64 reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import gcore
import reference as ref
from helpers import asarray, to_numpy, xp_assert_close

SHAPES = [(4, 3), (3, 2, 2, 2), (5,), (2, 3, 4)]
STEPS = 50

SGD_CASES = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "dampening": {"momentum": 0.9, "dampening": 0.3},
    "nesterov": {"momentum": 0.8, "nesterov": True},
    "weight_decay": {"weight_decay": 0.1},
    "maximize": {"maximize": True, "momentum": 0.5},
    "all": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05, "maximize": True},
    "no_gc": {"momentum": 0.9, "gc": None},
    "conv_only": {"momentum": 0.9, "gc": gcore.GC(conv_only=True)},
    "axis_last": {"momentum": 0.9, "gc": gcore.GC(axis=-1)},
    "update": {"momentum": 0.9, "weight_decay": 0.1, "gc": gcore.GC(where="update")},
    "update_nesterov": {"momentum": 0.9, "nesterov": True, "gc": gcore.GC(where="update")},
}
ADAM_CASES = {
    "plain": {},
    "amsgrad": {"amsgrad": True},
    "weight_decay": {"weight_decay": 0.1},
    "maximize": {"maximize": True},
    "betas": {"betas": (0.5, 0.9), "eps": 1e-3},
    "all": {"amsgrad": True, "weight_decay": 0.05, "maximize": True, "betas": (0.8, 0.99)},
    "no_gc": {"gc": None, "weight_decay": 0.1},
    "conv_only": {"gc": gcore.GC(conv_only=True)},
    "axis_last": {"gc": gcore.GC(axis=-1)},
    "update": {"weight_decay": 0.1, "gc": gcore.GC(where="update")},
}


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) * (1 + t % 3) for s in SHAPES] for t in range(STEPS)]
    return params, grads


def _ref_kwargs(kwargs):
    kw = dict(kwargs)
    gc = kw.pop("gc", gcore.GC())
    if gc is None:
        return {**kw, "gc": False}
    return {**kw, "gc": True, "axis": gc.axis, "min_ndim": gc.min_ndim, "where": gc.where}


def _run(xp, jit, rule, params, grads, dtype):
    """Apply ``rule`` for every step; return each parameter's trajectory (NumPy)."""

    def apply(g, state, p):
        updates, state = rule.update(g, state, p)
        return p + updates, state

    step = jit(apply)
    out = []
    for i, p0 in enumerate(params):
        p = asarray(xp, p0, dtype)
        state = rule.init(p)
        traj = []
        for step_grads in grads:
            p, state = step(asarray(xp, step_grads[i], dtype), state, p)
            traj.append(p)
        out.append(traj)
    return out


def _check(xp, jit, rule, ref_fn, ref_kw, dtype_name):
    params, grads = _problem()
    dtype = getattr(xp, dtype_name)
    got = _run(xp, jit, rule, params, grads, dtype)
    for i, p0 in enumerate(params):
        want = ref_fn(p0, [g[i] for g in grads], **ref_kw)
        for t in (0, 1, 9, STEPS - 1):
            atol = 1e-6 * np.abs(want[t]).max() if dtype_name == "float32" else 1e-13
            xp_assert_close(
                got[i][t], want[t], dtype=dtype, atol=atol,
                err_msg=f"param {i} {SHAPES[i]} step {t + 1}",
            )  # fmt: skip


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", SGD_CASES)
def test_sgd_trajectory(xp, jit, case, dtype):
    kwargs = SGD_CASES[case]
    rule = gcore.SGD(lr=0.05, **kwargs)
    _check(xp, jit, rule, ref.sgd, {"lr": 0.05, **_ref_kwargs(kwargs)}, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", ADAM_CASES)
@pytest.mark.parametrize("cls", [gcore.Adam, gcore.AdamW])
def test_adam_trajectory(xp, jit, cls, case, dtype):
    kwargs = ADAM_CASES[case]
    rule = cls(lr=0.01, **kwargs)
    ref_kw = {
        "lr": 0.01,
        "decoupled": cls is gcore.AdamW,
        "weight_decay": rule.weight_decay,
        **_ref_kwargs(kwargs),
    }
    _check(xp, jit, rule, ref.adam, ref_kw, dtype)


@pytest.mark.parametrize("t", [1, 2, 10, 1000])
@pytest.mark.parametrize("cls", [gcore.Adam, gcore.AdamW])
def test_adam_float32_update_is_accurate(xp, jit, cls, t):
    """The update itself to 1e-6 in float32, bias corrections included.

    Trajectories compare parameters, whose own rounding (~6e-8 absolute) hides a relative
    error of the update (~1e-2) below 1e-5; this compares the update directly.
    """
    rng = np.random.default_rng(t)
    shape = (8, 16)
    p, g, m = (rng.standard_normal(shape) for _ in range(3))
    v = rng.random(shape) * 0.1 + 0.01
    rule = cls(lr=0.01, weight_decay=0.1, gc=None)
    f32 = [asarray(xp, a, xp.float32) for a in (p, g, m, v)]
    state = gcore.AdamState(asarray(xp, np.asarray(t - 1, dtype=np.int32)), f32[2], f32[3], None)
    updates, _ = jit(rule.update)(f32[1], state, f32[0])
    p64, g64, m64, v64 = (a.astype(np.float32).astype(np.float64) for a in (p, g, m, v))
    b1, b2 = rule.betas
    decoupled = cls is gcore.AdamW
    gg = g64 if decoupled else g64 + 0.1 * p64
    m1, v1 = b1 * m64 + (1 - b1) * gg, b2 * v64 + (1 - b2) * gg * gg
    want = -0.01 / (1 - b1**t) * m1 / (np.sqrt(v1) / np.sqrt(1 - b2**t) + 1e-8)
    if decoupled:
        want = want - 0.01 * 0.1 * p64
    xp_assert_close(updates, want, dtype=xp.float32, rtol=1e-6, atol=1e-7 * np.abs(want).max())


def _unit_means(w):
    w = to_numpy(w)
    return w.reshape(w.shape[0], -1).mean(axis=1)


@pytest.mark.parametrize(
    "rule",
    [
        gcore.SGD(lr=0.1),
        gcore.SGD(lr=0.1, momentum=0.9),
        gcore.SGD(lr=0.1, momentum=0.9, nesterov=True),
        gcore.SGD(lr=0.1, momentum=0.9, dampening=0.5, maximize=True),
        gcore.Adam(lr=0.1, gc=gcore.GC(where="update")),
        gcore.AdamW(lr=0.1, weight_decay=0.0, amsgrad=True, gc=gcore.GC(where="update")),
    ],
    ids=["sgd", "momentum", "nesterov", "dampening_maximize", "adam_update", "adamw_update"],
)
def test_weight_mean_is_invariant(xp, jit, rule):
    """Projected descent on eᵀw = const: each unit's weight mean never moves."""
    params, grads = _problem(1)
    for i, p0 in enumerate(params):
        if p0.ndim < 2:
            continue
        traj = _run(xp, jit, rule, [p0], [[g[i]] for g in grads], xp.float64)[0]
        np.testing.assert_allclose(_unit_means(traj[-1]), _unit_means(p0), atol=1e-12)
        # The invariant is GC's doing: the same run without GC drifts.
        plain = dataclasses.replace(rule, gc=None)
        drift = _run(xp, jit, plain, [p0], [[g[i]] for g in grads], xp.float64)[0]
        assert np.abs(_unit_means(drift[-1]) - _unit_means(p0)).max() > 1e-3


def test_gc_adam_on_gradient_moves_the_mean(xp):
    """GC on the gradient does not make Adam's per-element scaling mean-preserving."""
    params, grads = _problem(2)
    rule = gcore.Adam(lr=0.1)
    traj = _run(xp, lambda f: f, rule, params[:1], [[g[0]] for g in grads], xp.float64)[0]
    assert np.abs(_unit_means(traj[-1]) - _unit_means(params[0])).max() > 1e-4


@pytest.mark.parametrize(
    "rule", [gcore.SGD(lr=0.1, momentum=0.9), gcore.Adam(amsgrad=True), gcore.AdamW()]
)
def test_state_and_purity(xp, rule):
    p_np = np.random.default_rng(0).standard_normal((3, 4))
    g_np = np.random.default_rng(1).standard_normal((3, 4))
    p, g = asarray(xp, p_np, xp.float64), asarray(xp, g_np, xp.float64)
    state = rule.init(p)
    assert isinstance(state, tuple) and hasattr(state, "_fields")
    assert int(state.step) == 0
    for field in state[1:]:
        if field is not None:
            assert field.shape == p.shape and field.dtype == p.dtype
            assert float(xp.max(xp.abs(field))) == 0.0
    updates, new_state = rule.update(g, state, p)
    assert updates.dtype == p.dtype and updates.shape == p.shape
    assert int(new_state.step) == 1 and int(state.step) == 0
    np.testing.assert_array_equal(to_numpy(p), p_np)
    np.testing.assert_array_equal(to_numpy(g), g_np)


def test_sgd_without_momentum_has_no_buffer(xp):
    assert gcore.SGD(lr=1.0).init(xp.zeros((2, 2))).momentum_buffer is None
    assert gcore.Adam().init(xp.zeros((2, 2))).max_exp_avg_sq is None


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (gcore.SGD, {"lr": -0.1}, "lr"),
        (gcore.SGD, {"lr": float("nan")}, "lr"),
        (gcore.SGD, {"lr": 0.1, "momentum": -0.5}, "momentum"),
        (gcore.SGD, {"lr": 0.1, "dampening": 1.5}, "dampening"),
        (gcore.SGD, {"lr": 0.1, "weight_decay": -1e-4}, "weight_decay"),
        (gcore.SGD, {"lr": 0.1, "nesterov": True}, "nesterov"),
        (gcore.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}, "nesterov"),
        (gcore.Adam, {"lr": -1.0}, "lr"),
        (gcore.Adam, {"betas": (1.0, 0.999)}, r"betas\[0\]"),
        (gcore.Adam, {"betas": (0.9, -0.1)}, r"betas\[1\]"),
        (gcore.Adam, {"betas": (0.9,)}, "betas"),
        (gcore.Adam, {"eps": 0.0}, "eps"),
        (gcore.Adam, {"eps": -1e-8}, "eps"),
        (gcore.Adam, {"weight_decay": -0.1}, "weight_decay"),
        (gcore.AdamW, {"weight_decay": -0.1}, "weight_decay"),
        (gcore.AdamW, {"betas": (0.9, 1.0)}, r"betas\[1\]"),
        (gcore.GC, {"where": "momentum"}, "where"),
    ],
)
def test_invalid_hyperparameters_raise_value_error(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (gcore.SGD, {"lr": "0.1"}, "lr"),
        (gcore.SGD, {"lr": 0.1, "nesterov": 1}, "nesterov"),
        (gcore.Adam, {"amsgrad": "yes"}, "amsgrad"),
        (gcore.Adam, {"gc": True}, "gc"),
        (gcore.GC, {"axis": 1.5}, "axis"),
        (gcore.GC, {"conv_only": None}, "conv_only"),
    ],
)
def test_wrong_types_raise_type_error(cls, kwargs, match):
    with pytest.raises(TypeError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("rule", [gcore.SGD(lr=0.1), gcore.Adam(), gcore.AdamW()])
def test_integer_gradient_raises(xp, rule):
    p = xp.zeros((2, 3), dtype=xp.float64)
    with pytest.raises(TypeError, match="floating"):
        rule.update(xp.ones((2, 3), dtype=xp.int64), rule.init(p), p)
    with pytest.raises(TypeError, match="floating"):
        rule.init(xp.zeros((2, 3), dtype=xp.int32))


def test_weight_decay_needs_param(xp):
    p = xp.zeros((2, 3), dtype=xp.float64)
    for rule in (gcore.SGD(lr=0.1, weight_decay=0.1), gcore.Adam(weight_decay=0.1), gcore.AdamW()):
        with pytest.raises(ValueError, match="param is required"):
            rule.update(p, rule.init(p))


def test_rules_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        gcore.SGD(lr=0.1).lr = 0.2  # type: ignore[misc]
    assert gcore.AdamW().weight_decay == 1e-2 and gcore.Adam().weight_decay == 0.0
