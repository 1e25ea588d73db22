"""gcore_numpy's in-place optimizers.

Both paths (the in-place fast path and the core rule written back in place) run the shared
conformance table (tests/plugins/conformance.py) in float64, float32 and float16; the rest
is what only gcore_numpy has: containers, axes, checkpoints, errors, allocations.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import tracemalloc

import conformance
import numpy as np
import pytest

import gcore
import gcore_numpy
import reference as ref

SHAPES = [(4, 3), (3, 2, 2, 2), (6,), (2, 3, 4)]
STEPS = 30
CLASSES = {"SGD": gcore_numpy.SGD, "Adam": gcore_numpy.Adam, "AdamW": gcore_numpy.AdamW}
#: NumPy has no bfloat16 dtype: those cases are for the other plugins.
NUMPY_DTYPES = ("float64", "float32", "float16")


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(STEPS)]
    return params, grads


class NumpyStepper:
    """gcore_numpy on a conformance case (``fast`` picks the in-place path or the rule)."""

    def __init__(self, case, params, *, fast=True):
        self.params = [p.astype(case.dtype) for p in params]
        self.opt = CLASSES[case.family](
            self.params, **case.kwargs, gc=case.gc, axes=list(case.axes), fast=fast
        )
        self.dtype = case.dtype

    def step(self, grads):
        self.opt.step([g.astype(self.dtype) for g in grads])
        return [p.astype(np.float64) for p in self.params]


@pytest.mark.parametrize("case", conformance.cases(dtypes=NUMPY_DTYPES), ids=str)
def test_conforms_to_core_rule(case):
    conformance.assert_matches_rule(NumpyStepper, case)


@pytest.mark.parametrize(
    "case", conformance.cases(dtypes=("float64", "float32"), layouts="torch"), ids=str
)
def test_rule_path_conforms_to_core_rule(case):
    conformance.assert_matches_rule(functools.partial(NumpyStepper, fast=False), case)


@pytest.mark.parametrize(
    "case",
    conformance.cases(dtypes=("float64", "float32"), gc=("on", "update", "off")),
    ids=str,
)
def test_blocked_fast_path_conforms(case, monkeypatch):
    # Tiny blocks: every tensor is walked in several blocks (one output unit each on the
    # torch layout, rows across the units on channels-last), with the shared block scratch
    # and, for GC of the update along the last axis, the whole-tensor scratch.
    monkeypatch.setattr(gcore_numpy._optimizers, "BLOCK", 8)
    conformance.assert_matches_rule(NumpyStepper, case)


# -- the driver itself: it passes the core rule and catches broken steppers ----------------


@pytest.mark.parametrize(
    "case", conformance.cases(dtypes=NUMPY_DTYPES, gc=("on", "update")), ids=str
)
def test_driver_accepts_the_core_rule_in_each_dtype(case):
    conformance.assert_matches_rule(conformance.CoreRuleStepper, case)


class _Broken(conformance.CoreRuleStepper):
    """The core rule with one defect, given as a function of (rule, grad, state, param)."""

    defect = None

    def step(self, grads):
        for i, g in enumerate(grads):
            g = g.astype(self.dtype)
            u, self.states[i] = self.rules[i].update(g, self.states[i], self.params[i])
            self.params[i] = self.params[i] + type(self).defect(self.rules[i], u, g)
        return [p.astype(np.float64) for p in self.params]


def _broken(defect):
    return type("Broken", (_Broken,), {"defect": staticmethod(defect)})


def _float16_eps_in_float16(rule, u, g):
    # What gcore_numpy did before: eps added in float16, where 1e-8 rounds to 0.
    return np.where(g == 0, np.float16(np.nan), u) if rule.gc is None else u


BROKEN = {
    "update_in_float64": (
        lambda rule, u, g: u.astype(np.float64) * (1 + 1e-9),
        conformance.cases(algorithms="sgd", gc="on", dtypes="float32")[0],
        "not a float32 number",
    ),
    "update_off_by_1e-5": (
        lambda rule, u, g: u * (1 + 1e-5),
        conformance.cases(algorithms="adam", gc="on", dtypes="float32")[0],
        "update",
    ),
    "float16_nan_on_zero_gradient": (
        _float16_eps_in_float16,
        conformance.cases(algorithms="adam", gc="off", dtypes="float16")[0],
        "non-finite",
    ),
    "gc_on_the_wrong_axis": (
        lambda rule, u, g: (
            gcore.centralize(u, axis=(rule.gc.axis + 1) % u.ndim) if u.ndim == 2 else u
        ),
        conformance.cases(algorithms="sgd", gc="on", dtypes="float64", layouts="torch")[0],
        "update",
    ),
    "missing_bias_correction": (
        lambda rule, u, g: u * (1 - rule.betas[0]),
        conformance.cases(algorithms="adamw", gc="on", dtypes="float64")[0],
        "update",
    ),
}


@pytest.mark.parametrize("name", BROKEN)
def test_driver_catches_a_broken_stepper(name):
    defect, case, match = BROKEN[name]
    with pytest.raises(AssertionError, match=match):
        conformance.assert_matches_rule(_broken(defect), case)


# -- what is specific to gcore_numpy ---------------------------------------------------------


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


@pytest.mark.parametrize("cls", [gcore_numpy.SGD, gcore_numpy.Adam, gcore_numpy.AdamW])
def test_duplicate_or_overlapping_params_raise(cls):
    w = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"params\[1\] is params\[0\]"):
        cls([w, w])
    with pytest.raises(ValueError, match=r"params\['b'\] overlaps in memory with params\['a'\]"):
        cls({"a": w, "b": w[1:]})
    cls([w[:2], w[2:]])  # disjoint views of one array are fine


def test_float16_adam_zero_gradient_gives_no_nan():
    # The example: eps=1e-8 rounds to 0 in float16, so 0/0 where g == 0.
    w = np.zeros((2, 3), np.float16)
    gcore_numpy.Adam([w], lr=1e-2).step([np.array([[1, 1, 1], [1, 2, 3]], np.float16)])
    assert np.isfinite(w).all()
    np.testing.assert_array_equal(w[0], 0.0)  # a constant row: GC gives a zero gradient
    np.testing.assert_allclose(w[1], [0.01, 0.0, -0.01], rtol=1e-3)


def test_adamw_convention_reaches_the_core_rule():
    w, v = np.ones((2, 2)), np.ones((2, 2))
    paper = gcore_numpy.AdamW([w], lr=0.1, weight_decay=0.5, convention="paper", gc=None)
    torch_like = gcore_numpy.AdamW([v], lr=0.1, weight_decay=0.5, gc=None)
    assert paper.rule.convention == "paper"
    paper.step([np.zeros((2, 2))])
    torch_like.step([np.zeros((2, 2))])
    # paper: lr·sqrt(1-β2)/(1-β1)·λ·w = 0.1·sqrt(0.001)/0.1·0.5; torch: lr·λ·w = 0.05
    np.testing.assert_allclose(w, 1 - 0.5 * np.sqrt(0.001), rtol=1e-12)
    np.testing.assert_allclose(v, 0.95, rtol=1e-12)
    with pytest.raises(ValueError, match="convention"):
        gcore_numpy.AdamW([np.ones(2)], convention="keras")


def test_new_options_state_dict_round_trip():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    opt = gcore_numpy.Adam([w], lr=0.01, nesterov=True, mu_dtype="float64")
    g = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(4)]
    opt.step([g[0]])
    assert opt.state[0].exp_avg.dtype == np.float64
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    w2 = w.copy()
    opt2 = gcore_numpy.Adam([w2])
    opt2.load_state_dict(saved)
    assert opt2.rule == opt.rule
    for gi in g[1:]:
        opt.step([gi])
        opt2.step([gi])
    np.testing.assert_array_equal(w, w2)


def test_checkpoint_from_before_the_new_options_loads():
    # The format written before nesterov / mu_dtype / convention existed.
    w = np.ones((2, 3))
    old = {
        "rule": "AdamW",
        "hyperparameters": {
            "lr": 0.01,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.01,
            "amsgrad": False,
            "maximize": False,
            "gc": {"conv_only": False, "axis": 0, "where": "gradient"},
        },
        "axes": {0: 0},
        "state": {0: {"step": 3, "exp_avg": np.full((2, 3), 0.5), "exp_avg_sq": np.ones((2, 3))}},
    }
    opt = gcore_numpy.AdamW([w])
    opt.load_state_dict(old)
    assert opt.rule.lr == 0.01 and opt.rule.convention == "torch" and not opt.rule.nesterov
    assert opt._steps == [3] and int(opt.state[0].step) == 3
    np.testing.assert_array_equal(opt.state[0].exp_avg, 0.5)


def test_a_bad_gradient_leaves_every_parameter_unchanged():
    a, b = np.ones((2, 3)), np.ones((3, 2))
    opt = gcore_numpy.SGD([a, b], lr=0.1)
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        opt.step([np.arange(6.0).reshape(2, 3), np.ones((2, 3))])
    np.testing.assert_array_equal(a, 1.0)
    assert opt._steps == [0, 0]


@pytest.mark.parametrize("cls", [gcore_numpy.SGD, gcore_numpy.Adam, gcore_numpy.AdamW])
def test_fast_flag(cls):
    with pytest.raises(TypeError, match="fast"):
        cls([np.ones((2, 2))], fast=None)
    assert cls([np.ones((2, 2))], fast=False).fast is False


@pytest.mark.parametrize("cls", [gcore_numpy.SGD, gcore_numpy.Adam, gcore_numpy.AdamW])
@pytest.mark.parametrize("where", ["gradient", "update"])
def test_strided_and_0d_params_fast_equals_rule_path(cls, where, monkeypatch):
    monkeypatch.setattr(gcore_numpy._optimizers, "BLOCK", 16)
    rng = np.random.default_rng(7)
    base = rng.standard_normal((6, 10, 3))
    kw = {"lr": 0.05, "weight_decay": 0.1, "gc": gcore.GC(where=where)}
    if cls is gcore_numpy.SGD:
        kw.update(momentum=0.9, nesterov=True)

    def make(fast):
        big, other = base.copy(), base.copy()
        params = [big[:, ::2, 1], other[::2, 1::3, :], np.array(0.5), np.ones((4, 1)).T]
        return params, cls(params, axes=[0, -1, None, 0], fast=fast, **kw)

    (a, fast), (b, slow) = make(True), make(False)
    for _ in range(4):
        grads = [rng.standard_normal(p.shape) for p in a]
        fast.step(grads)
        slow.step(grads)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)
