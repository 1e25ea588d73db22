"""gcore_numpy's in-place optimizers, step by step against gcore's pure rules."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest

import gcore
import gcore_numpy
import reference as ref

SHAPES = [(4, 3), (3, 2, 2, 2), (6,), (2, 3, 4)]
STEPS = 30

SGD_CASES = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "dampening": {"momentum": 0.9, "dampening": 0.4},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "decay_maximize": {"momentum": 0.5, "weight_decay": 0.1, "maximize": True},
    "no_gc": {"momentum": 0.9, "gc": None},
    "conv_only": {"momentum": 0.9, "gc": gcore.GC(conv_only=True)},
    "update": {"momentum": 0.9, "weight_decay": 0.05, "gc": gcore.GC(where="update")},
    "update_nesterov": {"momentum": 0.9, "nesterov": True, "gc": gcore.GC(where="update")},
    "update_plain": {"gc": gcore.GC(where="update")},
}
ADAM_CASES = {
    "plain": {},
    "amsgrad": {"amsgrad": True},
    "decay_maximize": {"weight_decay": 0.1, "maximize": True},
    "betas": {"betas": (0.3, 0.9), "eps": 1e-4},
    "no_gc": {"gc": None, "weight_decay": 0.1},
    "conv_only": {"gc": gcore.GC(conv_only=True)},
    "update": {"weight_decay": 0.05, "amsgrad": True, "gc": gcore.GC(where="update")},
}
CASES = (
    [(gcore_numpy.SGD, {"lr": 0.05, **kw}, f"SGD-{k}") for k, kw in SGD_CASES.items()]
    + [(gcore_numpy.Adam, {"lr": 0.01, **kw}, f"Adam-{k}") for k, kw in ADAM_CASES.items()]
    + [(gcore_numpy.AdamW, {"lr": 0.01, **kw}, f"AdamW-{k}") for k, kw in ADAM_CASES.items()]
)
AXES = [0, -1, None, 1]  # one per parameter in SHAPES: overrides gc.axis


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(STEPS)]
    return params, grads


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("cls", "kwargs"), [c[:2] for c in CASES], ids=[c[2] for c in CASES])
def test_in_place_step_equals_core_rule(cls, kwargs, dtype):
    params, grads = _problem(dtype)
    mine = [p.copy() for p in params]
    opt = cls(mine, axes=AXES, **kwargs)
    states = [opt.rule_for(i).init(p) for i, p in enumerate(params)]
    expected = [p.copy() for p in params]
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    for t, step in enumerate(grads):
        opt.step(step)
        for i, g in enumerate(step):
            updates, states[i] = opt.rule_for(i).update(g, states[i], expected[i])
            expected[i] = expected[i] + updates
            assert mine[i].dtype == dtype
            scale = np.abs(expected[i]).max()
            np.testing.assert_allclose(
                mine[i],
                expected[i],
                rtol=rtol,
                atol=rtol * scale,
                err_msg=f"param {i} step {t + 1}",
            )


@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_matches_float64_reference(case):
    kwargs = SGD_CASES[case]
    params, grads = _problem(np.float64, 1)
    mine = [p.copy() for p in params]
    opt = gcore_numpy.SGD(mine, lr=0.05, **kwargs)
    for step in grads:
        opt.step(step)
    gc = kwargs.get("gc", gcore.GC())
    ref_kw = {k: v for k, v in kwargs.items() if k != "gc"}
    for i, p0 in enumerate(params):
        want = ref.sgd(
            p0,
            [g[i] for g in grads],
            lr=0.05,
            gc=gc is not None,
            min_ndim=2 if gc is None else gc.min_ndim,
            where="gradient" if gc is None else gc.where,
            **ref_kw,
        )[-1]
        np.testing.assert_allclose(mine[i], want, rtol=1e-12, atol=1e-13)


def test_dict_params_none_grads_and_partial_dicts():
    params = {"w": np.ones((3, 2)), "b": np.zeros(3)}
    opt = gcore_numpy.Adam(params, lr=0.1)
    opt.step({"w": np.arange(6.0).reshape(3, 2)})  # "b" has no gradient this step
    assert np.all(params["b"] == 0.0)
    assert int(opt.state[1].step) == 0 and int(opt.state[0].step) == 1
    np.testing.assert_allclose(params["w"].mean(axis=1), 1.0)  # GC'd first Adam step
    opt.step({"w": None, "b": np.ones(3)})
    assert int(opt.state[0].step) == 1 and int(opt.state[1].step) == 1


def test_axes_dict_override_and_errors():
    w = np.random.default_rng(0).standard_normal((3, 5))
    opt = gcore_numpy.SGD({"w": w}, lr=1.0, axes={"w": -1})
    g = np.random.default_rng(1).standard_normal((3, 5))
    before = w.copy()
    opt.step({"w": g})
    np.testing.assert_allclose(w - before, -ref.centralize(g, -1), atol=1e-14)
    with pytest.raises(KeyError, match="unknown"):
        gcore_numpy.SGD({"w": w}, lr=1.0, axes={"v": 0})
    with pytest.raises(ValueError, match="axes"):
        gcore_numpy.SGD([w], lr=1.0, axes=[0, 1])
    with pytest.raises(ValueError, match="axis=2"):
        gcore_numpy.SGD([w], lr=1.0, axes=[2])


@pytest.mark.parametrize("cls", [gcore_numpy.SGD, gcore_numpy.Adam, gcore_numpy.AdamW])
def test_state_dict_round_trip_resumes_identically(cls):
    kwargs = {"lr": 0.05, "momentum": 0.9} if cls is gcore_numpy.SGD else {"amsgrad": True}
    params, grads = _problem(np.float64, 2)
    straight = [p.copy() for p in params]
    opt = cls(straight, **kwargs)
    for step in grads[:10]:
        opt.step(step)

    first = [p.copy() for p in params]
    opt1 = cls(first, **kwargs)
    for step in grads[:5]:
        opt1.step(step)
    saved = opt1.state_dict()
    resumed = [p.copy() for p in first]
    opt2 = cls(resumed, lr=123.0)  # hyperparameters come from the state dict
    opt2.load_state_dict(saved)
    assert opt2.lr == opt1.lr
    for step in grads[5:10]:
        opt2.step(step)
    for a, b in zip(resumed, straight, strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_dict_is_a_copy():
    w = np.ones((2, 2))
    opt = gcore_numpy.SGD([w], lr=0.1, momentum=0.9)
    opt.step([np.eye(2)])
    sd = opt.state_dict()
    sd["state"][0]["momentum_buffer"][...] = 99.0
    assert not np.any(opt.state[0].momentum_buffer == 99.0)


def test_load_state_dict_rejects_mismatch():
    opt = gcore_numpy.Adam([np.ones((2, 2))])
    with pytest.raises(ValueError, match="SGD"):
        opt.load_state_dict(gcore_numpy.SGD([np.ones((2, 2))], lr=0.1).state_dict())
    other = gcore_numpy.Adam([np.ones((3, 2))]).state_dict()
    with pytest.raises(ValueError, match=r"shape|expected"):
        opt.load_state_dict(other)


def test_lr_setter_validates_through_the_rule():
    opt = gcore_numpy.SGD([np.ones((2, 2))], lr=0.1)
    opt.lr = 0.01
    assert opt.rule.lr == 0.01
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: gcore_numpy.SGD([np.ones((2, 2), dtype=np.int64)], lr=0.1), TypeError, "float"),
        (lambda: gcore_numpy.SGD([[1.0, 2.0]], lr=0.1), TypeError, "ndarray"),
        (lambda: gcore_numpy.SGD(np.ones((2, 2)), lr=0.1), TypeError, "list"),
        (lambda: gcore_numpy.SGD([], lr=0.1), ValueError, "empty"),
        (lambda: gcore_numpy.SGD([np.ones(2)], lr=-0.1), ValueError, "lr"),
        (lambda: gcore_numpy.Adam([np.ones(2)], betas=(0.9, 1.5)), ValueError, "betas"),
        (lambda: gcore_numpy.AdamW([np.ones(2)], eps=0.0), ValueError, "eps"),
    ],
)
def test_construction_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_read_only_param_rejected():
    w = np.ones((2, 2))
    w.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        gcore_numpy.SGD([w], lr=0.1)


def test_step_errors():
    opt = gcore_numpy.SGD([np.ones((2, 3))], lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        opt.step([np.ones((3, 2))])
    with pytest.raises(TypeError, match="floating"):
        opt.step([np.ones((2, 3), dtype=np.int32)])
    with pytest.raises(TypeError, match="dtype float32"):
        opt.step([np.ones((2, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match="grads"):
        opt.step([np.ones((2, 3)), np.ones(1)])
    dopt = gcore_numpy.SGD({"w": np.ones((2, 3))}, lr=0.1)
    with pytest.raises(KeyError, match="unknown"):
        dopt.step({"v": np.ones((2, 3))})
    with pytest.raises(TypeError, match="dict"):
        dopt.step([np.ones((2, 3))])


def test_float16_centralizes_in_float32_and_rounds_once():
    g = (np.random.default_rng(4).standard_normal((3, 300)) * 10 + 3).astype(np.float16)
    w = np.zeros_like(g)
    gcore_numpy.SGD([w], lr=1.0).step([g])
    g32 = g.astype(np.float32)
    want = (g32 - g32.mean(axis=1, keepdims=True)).astype(np.float16)
    assert w.dtype == np.float16
    np.testing.assert_array_equal(w, -want)
    np.testing.assert_array_equal(w, -gcore.centralize(g))


@pytest.mark.parametrize("cls", [gcore_numpy.SGD, gcore_numpy.Adam])
def test_step_allocates_no_full_size_temporaries(cls):
    kwargs = (
        {"lr": 0.1, "momentum": 0.9, "nesterov": True}
        if cls is gcore_numpy.SGD
        else {"amsgrad": True, "weight_decay": 0.1}
    )
    w = np.ones((256, 1024))  # 2 MiB
    opt = cls([w], **kwargs)
    g = np.random.default_rng(0).standard_normal(w.shape)
    opt.step([g])  # first step may touch lazily created buffers
    tracemalloc.start()
    opt.step([g])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < w.nbytes / 8, f"a step allocated {peak} bytes for a {w.nbytes}-byte param"


def test_gc_sgd_keeps_unit_means_over_training():
    params, grads = _problem(np.float64, 3)
    start = [p.copy() for p in params]
    opt = gcore_numpy.SGD(params, lr=0.1, momentum=0.9, nesterov=True)
    for step in grads:
        opt.step(step)
    for p, p0 in zip(params, start, strict=True):
        if p.ndim >= 2:
            np.testing.assert_allclose(gcore.diagnostics.mean_drift(p, p0), 0.0, atol=1e-12)


def test_rule_for_uses_per_parameter_axis():
    opt = gcore_numpy.Adam([np.ones((2, 3)), np.ones((3, 2))], axes=[0, -1])
    assert opt.rule_for(0) is opt.rule
    assert opt.rule_for(1).gc == dataclasses.replace(opt.rule.gc, axis=-1)
