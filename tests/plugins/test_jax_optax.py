"""gcore_jax: layout-aware GC as optax transformations, against optax and the reference."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed")
optax = pytest.importorskip("optax", reason="optax is not installed")

import jax.numpy as jnp  # noqa: E402

import gcore  # noqa: E402
import gcore_jax  # noqa: E402
import reference as ref  # noqa: E402
from helpers import xp_assert_close  # noqa: E402

TORCH_NAMES = [n for n, a in gcore.LAYOUTS.items() if a == 0]
FLAX_NAMES = [n for n, a in gcore.LAYOUTS.items() if a == -1]


# --------------------------------------------------------------------------- fixtures


def _to_torch_layout(tree):
    """The same weights stored output-first: Dense (in, out) -> (out, in), Conv
    (kh, kw, in, out) -> (out, in, kh, kw), as Equinox / PyTorch keep them."""

    def move(x):
        if x.ndim == 4:
            return jnp.transpose(x, (3, 2, 0, 1))
        if x.ndim == 2:
            return x.T
        return x

    return jax.tree.map(move, tree)


def _unit_means(x, axis):
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    return x.reshape(x.shape[0], -1).mean(axis=1)


@pytest.fixture(scope="module")
def flax_grads():
    """Gradients of a cross-entropy loss w.r.t. a real Flax (linen) CNN's parameters."""
    nn = pytest.importorskip("flax.linen", reason="flax is not installed")

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(6, (3, 3))(x))
            x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
            x = x.reshape(x.shape[0], -1)
            x = nn.relu(nn.Dense(16)(x))
            return nn.Dense(3)(x)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 8, 8, 3)), dtype=jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 8))
    model = CNN()
    params = model.init(jax.random.key(0), x)

    def loss(p):
        logits = model.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(loss)(params)
    kernels = [g for g in jax.tree.leaves(grads) if g.ndim >= 2]
    assert {k.ndim for k in kernels} == {2, 4}  # Dense and Conv kernels
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    return grads


def _grads_in(layout_name, flax_grads):
    return flax_grads if gcore.LAYOUTS[layout_name] == -1 else _to_torch_layout(flax_grads)


def _apply(tx, grads, params=None):
    updates, _ = tx.update(grads, tx.init(grads if params is None else params), params)
    return updates


# ------------------------------------------------------------------ centralize: layouts


@pytest.mark.parametrize("layout", sorted(gcore.LAYOUTS))
def test_zero_mean_per_output_unit_on_flax_kernels(layout, flax_grads):
    grads = _grads_in(layout, flax_grads)
    axis = gcore.LAYOUTS[layout]
    out = jax.jit(lambda g: _apply(gcore_jax.centralize(layout=layout), g))(grads)
    for g, o in zip(jax.tree.leaves(grads), jax.tree.leaves(out), strict=True):
        if g.ndim < 2:
            np.testing.assert_array_equal(np.asarray(o), np.asarray(g))  # biases untouched
            continue
        scale = float(jnp.max(jnp.abs(g)))
        before = np.max(np.abs(_unit_means(g, axis)))
        assert before > 1e-3 * scale, "the raw gradient's unit means should not be zero"
        np.testing.assert_allclose(_unit_means(o, axis), 0.0, atol=1e-6 * scale)
        # only the unit means were removed
        want = ref.centralize(np.asarray(g), axis)
        xp_assert_close(o, want, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("layout", ["flax", "torch"])
def test_layouts_agree_on_the_same_weights(layout, flax_grads):
    """GC is layout-equivariant: permuting the weights and naming the layout commutes."""
    flax_out = _apply(gcore_jax.centralize(layout="flax"), flax_grads)
    torch_out = _apply(gcore_jax.centralize(layout="torch"), _to_torch_layout(flax_grads))
    for a, b in zip(
        jax.tree.leaves(_to_torch_layout(flax_out)), jax.tree.leaves(torch_out), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_flax_layout_differs_from_optax_centralize(flax_grads):
    """optax.centralize() is per input row on Flax kernels: not the paper's GC."""
    ours = _apply(gcore_jax.centralize(), flax_grads)
    theirs = _apply(optax.centralize(), flax_grads)
    kernels = [
        (a, b)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True)
        if a.ndim > 1
    ]
    for a, b in kernels:
        assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-6


@pytest.mark.parametrize("jit", [False, True])
def test_torch_layout_is_optax_centralize_exactly(jit, flax_grads):
    rng = np.random.default_rng(3)
    trees = [
        _to_torch_layout(flax_grads),
        flax_grads,
        {"a": jnp.asarray(rng.standard_normal((5, 3, 2)), jnp.float32), "b": jnp.ones(4)},
    ]
    for grads in trees:
        for layout in TORCH_NAMES:
            f = lambda g, layout=layout: _apply(gcore_jax.centralize(layout=layout), g)  # noqa: E731
            g = lambda g: _apply(optax.centralize(), g)  # noqa: E731
            if jit:
                f, g = jax.jit(f), jax.jit(g)
            for a, b in zip(jax.tree.leaves(f(grads)), jax.tree.leaves(g(grads)), strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("layout", ["flax", "torch"])
def test_pytree_int_and_callable_forms_equal_the_name(layout, flax_grads):
    grads = _grads_in(layout, flax_grads)
    axis = gcore.LAYOUTS[layout]
    want = _apply(gcore_jax.centralize(layout=layout), grads)
    forms = {
        "int": axis,
        "pytree": jax.tree.map(lambda g: axis if g.ndim > 1 else None, grads),
        "pytree-all-int": jax.tree.map(lambda g: axis, grads),
        "prefix": {"params": axis},
        "callable": lambda path, leaf: axis,
        "callable-by-name": lambda path, leaf: (
            axis if jax.tree_util.keystr(path).endswith("['kernel']") else None
        ),
    }
    for name, form in forms.items():
        got = jax.jit(lambda g, form=form: _apply(gcore_jax.centralize(layout=form), g))(grads)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_mixed_layout_pytree_and_none_leaves():
    rng = np.random.default_rng(0)
    grads = {
        "enc": jnp.asarray(rng.standard_normal((4, 6)), jnp.float32),  # (in, out)
        "dec": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32),  # (out, in)
        "frozen": jnp.asarray(rng.standard_normal((3, 3)), jnp.float32),
    }
    out = _apply(gcore_jax.centralize(layout={"enc": -1, "dec": 0, "frozen": None}), grads)
    xp_assert_close(out["enc"], ref.centralize(np.asarray(grads["enc"]), -1), atol=1e-6)
    xp_assert_close(out["dec"], ref.centralize(np.asarray(grads["dec"]), 0), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["frozen"]), np.asarray(grads["frozen"]))


def test_conv_only_leaves_dense_kernels_alone(flax_grads):
    out = _apply(gcore_jax.centralize(conv_only=True), flax_grads)
    for g, o in zip(jax.tree.leaves(flax_grads), jax.tree.leaves(out), strict=True):
        if g.ndim == 4:
            xp_assert_close(o, ref.centralize(np.asarray(g), -1, 4), atol=1e-7)
        else:
            np.testing.assert_array_equal(np.asarray(o), np.asarray(g))


@pytest.mark.parametrize(
    "shape", [(7, 3), (3, 3, 64, 128), (1, 1, 2048, 512), (5, 5, 3, 7), (2, 3, 4, 5, 6), (9, 1)]
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fast_trailing_axis_mean_equals_core(shape, dtype):
    """The blocked leading-axis mean (Flax layout fast path) is gcore.centralize's math."""
    rng = np.random.default_rng(sum(shape))
    g = jnp.asarray(rng.standard_normal(shape) + 0.5, getattr(jnp, dtype))
    got = _apply(gcore_jax.centralize(), {"w": g})["w"]
    want = gcore.centralize(g, axis=-1)
    assert got.dtype == g.dtype and got.shape == g.shape
    tol = {"float32": 1e-6, "bfloat16": 1e-2}[dtype]
    np.testing.assert_allclose(
        np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=tol, atol=tol
    )
    np.testing.assert_allclose(_unit_means(got.astype(jnp.float32), -1), 0, atol=tol)


def test_low_precision_gradients_keep_their_dtype():
    g = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((8, 4)), jnp.bfloat16)}
    out = _apply(gcore_jax.centralize(), g)["w"]
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(_unit_means(out.astype(jnp.float32), -1), 0, atol=2e-2)


# ------------------------------------------------------------------ centralize: errors

PARAMS = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}


@pytest.mark.parametrize(
    ("layout", "exc", "match"),
    [
        ("pytorch", ValueError, r"layout.*'pytorch'.*allowed"),
        (True, ValueError, r"layout=True"),
        (2.5, TypeError, r"layout\['dense'\]\['kernel'\]|a layout pytree holds int"),
        (jnp.asarray(-1), TypeError, r"static_args"),
    ],
)
def test_bad_layout_values(layout, exc, match):
    with pytest.raises(exc, match=match):
        gcore_jax.centralize(layout=layout).init(PARAMS)


def test_pytree_layout_errors_name_the_path():
    with pytest.raises(ValueError, match=r"no entry for parameter \['dense'\]\['bias'\]"):
        gcore_jax.centralize(layout={"dense": {"kernel": -1}}).init(PARAMS)
    with pytest.raises(TypeError, match=r"layout\['dense'\]\['kernel'\]='out'"):
        gcore_jax.centralize(layout={"dense": {"kernel": "out", "bias": None}}).init(PARAMS)


def test_axis_and_callable_errors_name_the_path():
    with pytest.raises(ValueError, match=r"output axis 2 for parameter \['dense'\]\['kernel'\]"):
        gcore_jax.centralize(layout=2).init(PARAMS)
    with pytest.raises(TypeError, match=r"returned 'last' for parameter \['dense'\]\['bias'\]"):
        gcore_jax.centralize(layout=lambda path, leaf: "last").init(PARAMS)
    with pytest.raises(TypeError, match="conv_only"):
        gcore_jax.centralize(conv_only=1)
    # the error also surfaces in update (e.g. when init was skipped)
    tx = gcore_jax.centralize(layout=2)
    with pytest.raises(ValueError, match="kernel"):
        tx.update(PARAMS, optax.EmptyState())


# ------------------------------------------------------------- optimizers: trajectories

SHAPES = {"conv": (3, 3, 2, 4), "dense": (5, 3), "bias": (3,)}
TORCH_SHAPES = {"conv": (4, 2, 3, 3), "dense": (3, 5), "bias": (3,)}


def _problem(shapes, steps, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = [
        {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()} for _ in range(steps)
    ]
    return params, grads


def _train(tx, params, grads, *, jit=True):
    """Run ``tx`` over the gradient sequence; return the parameter trajectory."""

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(step) if jit else step
    p = jax.tree.map(jnp.asarray, params)
    s = tx.init(p)
    out = []
    for g in grads:
        p, s = step(p, s, jax.tree.map(jnp.asarray, g))
        out.append(p)
    return out, s


REF_CASES = {
    "sgd": (lambda **kw: gcore_jax.sgd(0.05, **kw), ref.sgd, {"lr": 0.05}),
    "sgd-momentum": (
        lambda **kw: gcore_jax.sgd(0.05, momentum=0.9, **kw),
        ref.sgd,
        {"lr": 0.05, "momentum": 0.9},
    ),
    "sgd-nesterov": (
        lambda **kw: gcore_jax.sgd(0.05, momentum=0.9, nesterov=True, **kw),
        ref.sgd,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    ),
    "adam": (
        lambda **kw: gcore_jax.adam(0.01, b1=0.8, b2=0.99, **kw),
        ref.adam,
        {"lr": 0.01, "betas": (0.8, 0.99)},
    ),
    "adamw": (
        lambda **kw: gcore_jax.adamw(0.01, weight_decay=0.3, **kw),
        ref.adam,
        {"lr": 0.01, "weight_decay": 0.3, "decoupled": True},
    ),
    "amsgrad-l2": (
        lambda **kw: gcore_jax.scale_by_rule(
            gcore.Adam(lr=0.01, amsgrad=True, weight_decay=0.2, gc=_rule_gc(kw)),
            layout=kw["layout"],
        ),
        ref.adam,
        {"lr": 0.01, "amsgrad": True, "weight_decay": 0.2},
    ),
    "sgd-l2-dampening": (
        lambda **kw: gcore_jax.scale_by_rule(
            gcore.SGD(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.1, gc=_rule_gc(kw)),
            layout=kw["layout"],
        ),
        ref.sgd,
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1},
    ),
}


def _rule_gc(kw):
    return gcore.GC(conv_only=kw["gc_conv_only"], where=kw["gc_where"])


GC_VARIANTS = {
    "flax": ({"layout": "flax"}, SHAPES, {"axis": -1}),
    "torch": ({"layout": "torch"}, TORCH_SHAPES, {"axis": 0}),
    "update": ({"layout": "flax", "gc_where": "update"}, SHAPES, {"axis": -1, "where": "update"}),
    "conv_only": ({"layout": "flax", "gc_conv_only": True}, SHAPES, {"axis": -1, "min_ndim": 4}),
}


@pytest.mark.parametrize("variant", sorted(GC_VARIANTS))
@pytest.mark.parametrize("case", sorted(REF_CASES))
def test_trajectory_matches_float64_reference(xp, case, variant):
    if not jax.config.jax_enable_x64:
        pytest.skip("float64 trajectories need jax_enable_x64 (set in the jax session)")
    make, ref_fn, ref_kw = REF_CASES[case]
    kw, shapes, ref_gc = GC_VARIANTS[variant]
    kw = {"gc_where": "gradient", "gc_conv_only": False, **kw}
    params, grads = _problem(shapes, 50)
    traj, _ = _train(make(**kw), params, grads)
    for name in shapes:
        want = ref_fn(params[name], [g[name] for g in grads], **ref_kw, **ref_gc)
        for t in (0, 9, 49):
            got = traj[t][name]
            assert got.dtype == jnp.float64
            xp_assert_close(got, want[t], rtol=1e-12, atol=1e-14, err_msg=f"{name} step {t}")


# ---------------------------------------------------------- optimizers: optax parity

OPTAX_CASES = {
    "sgd": ("sgd", {"learning_rate": 0.05}),
    "sgd-momentum": ("sgd", {"learning_rate": 0.05, "momentum": 0.9}),
    "sgd-nesterov": ("sgd", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}),
    "sgd-schedule": (
        "sgd",
        {"learning_rate": optax.linear_schedule(0.1, 0.01, 20), "momentum": 0.5},
    ),
    "adam": ("adam", {"learning_rate": 0.01}),
    "adam-betas": ("adam", {"learning_rate": 0.01, "b1": 0.8, "b2": 0.99, "eps": 1e-6}),
    "adam-schedule": ("adam", {"learning_rate": optax.cosine_decay_schedule(0.02, 20)}),
    "adamw": ("adamw", {"learning_rate": 0.01}),
    "adamw-decay": ("adamw", {"learning_rate": 0.01, "weight_decay": 0.3}),
    "adamw-mask": (
        "adamw",
        {
            "learning_rate": 0.01,
            "weight_decay": 0.3,
            "mask": lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
        },
    ),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_gc_off_equals_optax(case):
    name, kw = OPTAX_CASES[case]
    params, grads = _problem(SHAPES, 20, dtype=np.float32)
    ours, _ = _train(getattr(gcore_jax, name)(**kw, gc=False), params, grads)
    theirs, _ = _train(getattr(optax, name)(**kw), params, grads)
    for k in SHAPES:
        assert ours[-1][k].dtype == jnp.float32
        np.testing.assert_allclose(
            np.asarray(ours[-1][k]), np.asarray(theirs[-1][k]), rtol=2e-6, atol=2e-6
        )
    # ... while GC on does change the kernels
    gc_on, _ = _train(getattr(gcore_jax, name)(**kw), params, grads)
    assert not np.allclose(np.asarray(gc_on[-1]["dense"]), np.asarray(theirs[-1]["dense"]))


def test_gc_sgd_keeps_unit_weight_means():
    """Projected gradient descent: each output unit's weight mean is invariant."""
    params, grads = _problem(SHAPES, 30, dtype=np.float64)
    traj, _ = _train(gcore_jax.sgd(0.1, momentum=0.9), params, grads)
    tol = 1e-12 if traj[-1]["conv"].dtype == jnp.float64 else 1e-5  # float32 without x64
    for k in ("conv", "dense"):
        np.testing.assert_allclose(
            _unit_means(traj[-1][k], -1), _unit_means(params[k], -1), rtol=0, atol=tol
        )
        assert not np.allclose(np.asarray(traj[-1][k]), params[k])  # it did move


def test_eager_and_jit_agree():
    params, grads = _problem(SHAPES, 5, dtype=np.float32)
    a, _ = _train(gcore_jax.adamw(0.01, weight_decay=0.1), params, grads, jit=False)
    b, _ = _train(gcore_jax.adamw(0.01, weight_decay=0.1), params, grads, jit=True)
    for k in SHAPES:
        np.testing.assert_allclose(
            np.asarray(a[-1][k]), np.asarray(b[-1][k]), rtol=1e-6, atol=1e-7
        )


# ------------------------------------------------------------- optimizers: optax wrappers


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("sgd", {"learning_rate": 0.05, "momentum": 0.9}),
        ("adam", {"learning_rate": 0.01, "b1": 0.8}),
        ("adamw", {"learning_rate": 0.01, "weight_decay": 0.2}),
    ],
)
def test_inject_hyperparams(name, kw):
    """Every numeric hyperparameter becomes a traced array; results are unchanged, and
    changing the injected learning rate mid-run acts like a schedule."""
    params, grads = _problem(SHAPES, 10, dtype=np.float32)
    factory = getattr(gcore_jax, name)
    want, _ = _train(factory(**kw), params, grads)
    injected = optax.inject_hyperparams(factory)(**kw)
    got, state = _train(injected, params, grads)
    assert isinstance(state.hyperparams["learning_rate"], jax.Array)
    # injected hyperparameters are float32 arrays (1 - b2 loses digits): loose here...
    for k in SHAPES:
        np.testing.assert_allclose(
            np.asarray(got[-1][k]), np.asarray(want[-1][k]), rtol=1e-4, atol=1e-5
        )
    # ... and to float32 rounding against optax's own optimizer injected the same way
    ours, _ = _train(optax.inject_hyperparams(factory)(**kw, gc=False), params, grads)
    theirs, _ = _train(optax.inject_hyperparams(getattr(optax, name))(**kw), params, grads)
    for k in SHAPES:
        np.testing.assert_allclose(
            np.asarray(ours[-1][k]), np.asarray(theirs[-1][k]), rtol=2e-6, atol=2e-6
        )

    lr = kw["learning_rate"]
    sched = optax.piecewise_constant_schedule(lr, {5: 0.1})
    want, _ = _train(
        optax.inject_hyperparams(factory)(**{**kw, "learning_rate": sched}), params, grads
    )

    @jax.jit
    def step(p, s, g):
        u, s = injected.update(g, s, p)
        return optax.apply_updates(p, u), s

    p = jax.tree.map(jnp.asarray, params)
    s = injected.init(p)
    for t, g in enumerate(grads):
        if t == 5:
            s.hyperparams["learning_rate"] = jnp.asarray(lr * 0.1, jnp.float32)
        p, s = step(p, s, jax.tree.map(jnp.asarray, g))
    for k in SHAPES:
        np.testing.assert_allclose(np.asarray(p[k]), np.asarray(want[-1][k]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("layout", ["flax", "pytree"])
def test_masked(layout):
    params, grads = _problem(SHAPES, 8, dtype=np.float32)
    mask = {"conv": True, "dense": False, "bias": True}
    lay = "flax" if layout == "flax" else {"conv": -1, "dense": 0, "bias": None}
    traj, _ = _train(optax.masked(gcore_jax.adam(0.01, layout=lay), mask), params, grads)
    sub = {k: params[k] for k in ("conv", "bias")}
    want, _ = _train(gcore_jax.adam(0.01), sub, [{k: g[k] for k in sub} for g in grads])
    for k in sub:
        np.testing.assert_allclose(
            np.asarray(traj[-1][k]), np.asarray(want[-1][k]), rtol=1e-6, atol=1e-7
        )
    # masked-out leaves pass their raw gradients through
    np.testing.assert_allclose(
        np.asarray(traj[-1]["dense"]), params["dense"] + sum(g["dense"] for g in grads), rtol=1e-6
    )


def test_multi_transform():
    params, grads = _problem(SHAPES, 8, dtype=np.float32)
    labels = {"conv": "gc", "dense": "gc", "bias": "plain"}
    tx = optax.multi_transform(
        {"gc": gcore_jax.sgd(0.05, momentum=0.9), "plain": optax.sgd(0.05, momentum=0.9)}, labels
    )
    traj, _ = _train(tx, params, grads)
    gc_part, _ = _train(gcore_jax.sgd(0.05, momentum=0.9), params, grads)
    plain, _ = _train(optax.sgd(0.05, momentum=0.9), params, grads)
    for k, label in labels.items():
        want = (gc_part if label == "gc" else plain)[-1][k]
        np.testing.assert_allclose(np.asarray(traj[-1][k]), np.asarray(want), rtol=1e-6, atol=1e-7)


def test_multi_steps_accumulates_before_gc():
    params, grads = _problem(SHAPES, 8, dtype=np.float32)
    traj, _ = _train(optax.MultiSteps(gcore_jax.adam(0.01), every_k_schedule=2), params, grads)
    means = [
        jax.tree.map(lambda a, b: (a + b) / 2, grads[i], grads[i + 1]) for i in range(0, 8, 2)
    ]
    want, _ = _train(gcore_jax.adam(0.01), params, means)
    for k in SHAPES:
        np.testing.assert_allclose(
            np.asarray(traj[-1][k]), np.asarray(want[-1][k]), rtol=1e-5, atol=1e-6
        )
        # in between accumulation steps the parameters do not move
        np.testing.assert_array_equal(np.asarray(traj[0][k]), params[k])


def test_chain_with_add_decayed_weights_is_l2_before_gc(xp):
    if not jax.config.jax_enable_x64:
        pytest.skip("float64 trajectories need jax_enable_x64 (set in the jax session)")
    params, grads = _problem(SHAPES, 20)
    tx = optax.chain(optax.add_decayed_weights(0.1), gcore_jax.sgd(0.05, momentum=0.9))
    traj, _ = _train(tx, params, grads)
    for k in SHAPES:
        want = ref.sgd(
            params[k], [g[k] for g in grads], lr=0.05, momentum=0.9, weight_decay=0.1, axis=-1
        )
        xp_assert_close(traj[-1][k], want[-1], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- optimizer state


@pytest.mark.parametrize(
    "make",
    [
        lambda: gcore_jax.sgd(0.05, momentum=0.9),
        lambda: gcore_jax.adam(optax.exponential_decay(0.01, 5, 0.5)),
        lambda: gcore_jax.adamw(0.01, weight_decay=0.1),
    ],
    ids=["sgd", "adam-schedule", "adamw"],
)
def test_state_round_trip_resumes_identically(make):
    params, grads = _problem(SHAPES, 12, dtype=np.float32)
    tx = make()
    full, _ = _train(tx, params, grads)
    half, state = _train(tx, params, grads[:6])
    # every node of the state is a NamedTuple (or a container of arrays)
    assert isinstance(state, tuple)
    assert all(hasattr(s, "_fields") for s in state)
    if "count" in state[0]._fields:
        assert state[0].count.dtype == jnp.int32 and int(state[0].count) == 6
    leaves, treedef = jax.tree.flatten(state)
    saved = [np.array(x) for x in leaves]  # e.g. written to disk
    restored = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in saved])

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p, s = half[-1], restored
    for g in grads[6:]:
        p, s = step(p, s, jax.tree.map(jnp.asarray, g))
    for k in SHAPES:
        np.testing.assert_array_equal(np.asarray(p[k]), np.asarray(full[-1][k]))


def test_state_has_optax_structure():
    """The states are optax's own NamedTuples, structured as optax.adam/sgd's."""
    params = {"a": jnp.ones((3, 2)), "b": [jnp.zeros(2), jnp.ones((2, 2, 2, 2))]}
    state = gcore_jax.adam(0.1).init(params)[0]
    assert isinstance(state, optax.ScaleByAdamState)
    assert jax.tree.structure(state.mu) == jax.tree.structure(params)
    for ours, theirs in [
        (gcore_jax.adam(0.1), optax.adam(0.1)),
        (gcore_jax.adamw(0.1), optax.adamw(0.1)),
        (gcore_jax.sgd(0.1), optax.sgd(0.1)),
        (gcore_jax.sgd(0.1, momentum=0.9), optax.sgd(0.1, momentum=0.9)),
    ]:
        a, b = ours.init(params), theirs.init(params)
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape
    rule = gcore.Adam(lr=1.0, amsgrad=True)
    assert isinstance(gcore_jax.scale_by_rule(rule).init(params), gcore_jax.AmsgradState)
    damped = gcore.SGD(lr=1.0, momentum=0.9, dampening=0.5)
    state = gcore_jax.scale_by_rule(damped).init(params)
    assert isinstance(state, gcore_jax.DampedTraceState) and int(state.count) == 0


def test_optax_adam_checkpoint_resumes_with_gcore_jax():
    """Same state structure: a run started with optax.adam continues under gcore_jax.adam
    (gc=False: identically to optax.adam itself)."""
    params, grads = _problem(SHAPES, 8, dtype=np.float32)
    first, state = _train(optax.adam(0.01), params, grads[:4])
    want, _ = _train(optax.adam(0.01), params, grads)
    tx = gcore_jax.adam(0.01, gc=False)
    p, s = first[-1], state
    for g in grads[4:]:
        u, s = tx.update(jax.tree.map(jnp.asarray, g), s, p)
        p = optax.apply_updates(p, u)
    for k in SHAPES:  # gcore's bias corrections are the more accurate (expm1)
        np.testing.assert_allclose(np.asarray(p[k]), np.asarray(want[-1][k]), rtol=2e-5, atol=2e-6)


# ------------------------------------------------------------------------ Flax training


def test_flax_nnx_cnn_loss_decreases():
    nnx = pytest.importorskip("flax.nnx", reason="flax is not installed")

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
            self.conv2 = nnx.Conv(8, 8, (3, 3), strides=2, rngs=rngs)
            self.head = nnx.Linear(8 * 4 * 4, 4, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.conv1(x))
            x = nnx.relu(self.conv2(x))
            return self.head(x.reshape(x.shape[0], -1))

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, 16))
    model = CNN(nnx.Rngs(0))
    opt = nnx.Optimizer(model, gcore_jax.adam(1e-2), wrt=nnx.Param)

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @nnx.jit
    def train_step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads)
        return loss

    losses = [float(train_step(model, opt)) for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_flax_nnx_gc_sgd_keeps_kernel_unit_means():
    nnx = pytest.importorskip("flax.nnx", reason="flax is not installed")
    model = nnx.Linear(6, 3, rngs=nnx.Rngs(1))
    before = _unit_means(model.kernel[...], -1)
    opt = nnx.Optimizer(model, gcore_jax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((10, 6)), jnp.float32)

    @nnx.jit
    def train_step(m, o):
        grads = nnx.grad(lambda m: ((m(x) - 1.0) ** 2).mean())(m)
        o.update(m, grads)

    for _ in range(5):
        train_step(model, opt)
    after = _unit_means(model.kernel[...], -1)
    np.testing.assert_allclose(after, before, atol=1e-6)
    assert not np.allclose(np.asarray(model.bias[...]), 0)  # it did train


# ------------------------------------------------------------------- validation, plugin


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: gcore_jax.adam("fast"), TypeError, "learning_rate"),
        (lambda: gcore_jax.adam(-0.1), ValueError, "learning_rate"),
        (lambda: gcore_jax.adam(0.1, b1=1.0), ValueError, r"b1=1\.0.*0 <= b1 < 1"),
        (lambda: gcore_jax.adam(0.1, eps=0.0), ValueError, "eps"),
        (lambda: gcore_jax.adam(0.1, eps_root=1e-8), ValueError, "eps_root"),
        (lambda: gcore_jax.adam(0.1, eps_root=jnp.asarray(0.0)), TypeError, "static_args"),
        (lambda: gcore_jax.adam(0.1, mu_dtype=jnp.int32), TypeError, "mu_dtype"),
        (lambda: gcore_jax.adam(0.1, mu_dtype="float7"), TypeError, "mu_dtype"),
        (lambda: gcore_jax.adam(0.1, nesterov=1), TypeError, "nesterov"),
        (lambda: gcore_jax.adamw(0.1, convention="keras"), ValueError, "convention"),
        (lambda: gcore_jax.adamw(0.1, weight_decay=-1.0), ValueError, "weight_decay"),
        (lambda: gcore_jax.adamw(0.1, weight_decay=lambda t: 0.1), TypeError, "weight_decay"),
        (lambda: gcore_jax.sgd(0.1, momentum=-0.5), ValueError, "momentum"),
        (lambda: gcore_jax.sgd(0.1, nesterov=True), ValueError, "nesterov"),
        (lambda: gcore_jax.sgd(0.1, accumulator_dtype=3), TypeError, "accumulator_dtype"),
        (lambda: gcore_jax.sgd(0.1, gc="yes"), TypeError, "gc="),
        (lambda: gcore_jax.sgd(0.1, gc_where="moments"), ValueError, "where"),
        (lambda: gcore_jax.sgd(0.1, layout="torchvision"), ValueError, "layout"),
        (lambda: gcore_jax.scale_by_rule("adam"), TypeError, "rule"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_mask_must_match():
    params = {k: jnp.ones(s) for k, s in SHAPES.items()}
    tx = gcore_jax.adamw(0.1, mask={"conv": True})
    with pytest.raises(ValueError, match=r"^mask does not match"):
        tx.update(params, tx.init(params), params)
    tx = gcore_jax.adamw(0.1, mask={"conv": "yes", "dense": True, "bias": False})
    with pytest.raises(TypeError, match=r"^mask\['conv'\]='yes'"):
        tx.update(params, tx.init(params), params)
    rule = gcore.AdamW(lr=1.0, weight_decay=0.1)
    tx = gcore_jax.scale_by_rule(rule, weight_decay_mask={"conv": True})
    with pytest.raises(ValueError, match=r"^weight_decay_mask does not match"):
        tx.update(params, tx.init(params), params)


def test_registered_plugin():
    assert gcore.plugin("jax") is gcore_jax
    assert gcore_jax.FRAMEWORK == "jax"
    assert gcore_jax.devices() and all(":" in d for d in gcore_jax.devices())
    info = gcore.plugins.describe("jax")
    assert info.importable and info.framework_version == jax.__version__


def test_options_are_validated_even_with_gc_off():
    with pytest.raises(ValueError, match="layout"):
        gcore_jax.adam(0.1, gc=False, layout="bogus")
    with pytest.raises(ValueError, match="gc_where"):
        gcore_jax.sgd(0.1, gc=False, gc_where="bogus")
    with pytest.raises(TypeError, match="gc_conv_only"):
        gcore_jax.adam(0.1, gc_conv_only=1)


def test_numpy_scalar_learning_rate_is_accepted():
    params = {"w": jnp.ones((2, 3))}
    for lr in (np.asarray(0.1), np.float32(0.1)):
        tx = gcore_jax.adam(lr)
        tx.update(params, tx.init(params), params)


# ------------------------------------------------- optax options, complex, x64 scoping

OPTION_CASES = {
    "adam-nesterov": ("adam", {"learning_rate": 0.01, "nesterov": True}),
    "adam-mu-bf16": ("adam", {"learning_rate": 0.01, "mu_dtype": jnp.bfloat16}),
    "adamw-nesterov-mu-bf16": (
        "adamw",
        {"learning_rate": 0.01, "weight_decay": 0.1, "nesterov": True, "mu_dtype": "bfloat16"},
    ),
    "sgd-acc-bf16": (
        "sgd",
        {"learning_rate": 0.05, "momentum": 0.9, "accumulator_dtype": "bfloat16"},
    ),
    "sgd-nesterov-acc-bf16": (
        "sgd",
        {
            "learning_rate": 0.05,
            "momentum": 0.9,
            "nesterov": True,
            "accumulator_dtype": jnp.bfloat16,
        },
    ),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_optax_options_gc_off_equal_optax(case):
    """nesterov / mu_dtype / accumulator_dtype: with GC off, optax's own arithmetic."""
    name, kw = OPTION_CASES[case]
    params, grads = _problem(SHAPES, 15, dtype=np.float32)
    ours, s_ours = _train(getattr(gcore_jax, name)(**kw, gc=False), params, grads)
    theirs, s_theirs = _train(getattr(optax, name)(**kw), params, grads)
    assert jax.tree.structure(s_ours) == jax.tree.structure(s_theirs)
    for a, b in zip(jax.tree.leaves(s_ours), jax.tree.leaves(s_theirs), strict=True):
        assert a.dtype == b.dtype
    # bfloat16 moments: optax rounds b1 * mu in bfloat16 before adding (1 - b1) g in
    # float32, the core updates the moment in float32: equal to bfloat16 rounding
    tol = 2e-3 if "mu-bf16" in case else 1e-5
    for k in SHAPES:
        np.testing.assert_allclose(
            np.asarray(ours[-1][k]), np.asarray(theirs[-1][k]), rtol=tol, atol=tol
        )
    gc_on, _ = _train(getattr(gcore_jax, name)(**kw), params, grads)
    assert not np.allclose(np.asarray(gc_on[-1]["dense"]), np.asarray(theirs[-1]["dense"]))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_complex_params_gc_off_equal_optax(name):
    kw = {"learning_rate": 0.05}
    if name == "sgd":
        kw["momentum"] = 0.9
    params, grads = _problem(SHAPES, 10, dtype=np.float32)
    imag, gimag = _problem(SHAPES, 10, seed=1, dtype=np.float32)
    params = {k: (v + 1j * imag[k]).astype(np.complex64) for k, v in params.items()}
    grads = [
        {k: (g[k] + 1j * h[k]).astype(np.complex64) for k in g}
        for g, h in zip(grads, gimag, strict=True)
    ]
    ours, _ = _train(getattr(gcore_jax, name)(**kw, gc=False), params, grads)
    theirs, _ = _train(getattr(optax, name)(**kw), params, grads)
    for k in SHAPES:
        assert ours[-1][k].dtype == jnp.complex64
        np.testing.assert_allclose(
            np.asarray(ours[-1][k]), np.asarray(theirs[-1][k]), rtol=1e-5, atol=1e-5
        )


def test_complex_gc_subtracts_the_complex_mean():
    """GC of a complex unit subtracts its complex mean (real and imaginary parts alike);
    GC-SGD keeps each unit's complex weight mean; Adam's second moment is |g|^2."""
    rng = np.random.default_rng(0)
    g = (rng.standard_normal((4, 3)) + 1j * rng.standard_normal((4, 3))).astype(np.complex64)
    out = _apply(gcore_jax.centralize(), {"w": jnp.asarray(g)})["w"]
    np.testing.assert_allclose(np.asarray(out), g - g.mean(axis=0), rtol=1e-6, atol=1e-6)
    params, grads = _problem(SHAPES, 10, dtype=np.float32)
    params = {k: (v * (1 + 0.5j)).astype(np.complex64) for k, v in params.items()}
    grads = [{k: (v * (0.3 - 1j)).astype(np.complex64) for k, v in g.items()} for g in grads]
    traj, _ = _train(gcore_jax.sgd(0.1, momentum=0.9), params, grads)
    for k in ("conv", "dense"):
        np.testing.assert_allclose(
            _unit_means(traj[-1][k].real, -1) + 1j * _unit_means(traj[-1][k].imag, -1),
            _unit_means(params[k].real, -1) + 1j * _unit_means(params[k].imag, -1),
            atol=1e-5,
        )
    tx = gcore_jax.adam(0.1)
    _, state = tx.update(
        jax.tree.map(jnp.asarray, grads[0]), tx.init(params), jax.tree.map(jnp.asarray, params)
    )
    nu = np.asarray(state[0].nu["dense"])
    g0 = np.asarray(grads[0]["dense"])
    centred = g0 - g0.mean(axis=0)
    np.testing.assert_allclose(nu.imag, 0, atol=1e-7)
    np.testing.assert_allclose(nu.real, 0.001 * np.abs(centred) ** 2, rtol=1e-5, atol=1e-9)


def test_adamw_convention_is_passed_to_the_core():
    params, grads = _problem({"w": (4, 3)}, 3, dtype=np.float32)
    for convention in ("torch", "paper"):
        tx = gcore_jax.adamw(0.01, weight_decay=0.3, convention=convention)
        traj, _ = _train(tx, params, grads)
        rule = gcore.AdamW(lr=0.01, weight_decay=0.3, convention=convention, gc=gcore.GC(axis=-1))
        p, s = params["w"], rule.init(params["w"])
        for g in grads:
            u, s = rule.update(g["w"], s, p)
            p = p + u
        np.testing.assert_allclose(np.asarray(traj[-1]["w"]), p, rtol=1e-5, atol=1e-6)
    a = _train(gcore_jax.adamw(0.01, weight_decay=0.3), params, grads)[0][-1]["w"]
    b = _train(gcore_jax.adamw(0.01, weight_decay=0.3, convention="paper"), params, grads)[0]
    assert not np.allclose(np.asarray(a), np.asarray(b[-1]["w"]))


@pytest.mark.parametrize(
    "mask",
    [
        {"conv": True, "dense": 0, "bias": 1},
        {"conv": True, "dense": False, "bias": np.bool_(True)},
        lambda p: {"conv": True, "dense": False, "bias": True},
    ],
    ids=["ints", "bools", "callable"],
)
def test_adamw_masks_as_optax(mask):
    params, grads = _problem(SHAPES, 5, dtype=np.float32)
    ours, _ = _train(gcore_jax.adamw(0.01, weight_decay=0.3, mask=mask, gc=False), params, grads)
    theirs, _ = _train(optax.adamw(0.01, weight_decay=0.3, mask=mask), params, grads)
    for k in SHAPES:
        np.testing.assert_allclose(
            np.asarray(ours[-1][k]), np.asarray(theirs[-1][k]), rtol=2e-6, atol=2e-6
        )


def test_adamw_prefix_mask():
    params, grads = _problem(SHAPES, 5, dtype=np.float32)
    nested = {"a": params, "b": {"w": params["dense"]}}
    ngrads = [{"a": g, "b": {"w": g["dense"]}} for g in grads]
    mask = {"a": False, "b": True}  # a prefix of the parameters' structure
    ours, _ = _train(gcore_jax.adamw(0.01, weight_decay=0.3, mask=mask, gc=False), nested, ngrads)
    theirs, _ = _train(optax.adamw(0.01, weight_decay=0.3, mask=mask), nested, ngrads)
    for a, b in zip(jax.tree.leaves(ours[-1]), jax.tree.leaves(theirs[-1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=2e-6)


def test_eps_root_under_inject_hyperparams():
    """eps_root is None by default (not injected); an injected eps_root is rejected with
    a message naming the way out, at init."""
    params = {"w": jnp.ones((3, 2))}
    tx = optax.inject_hyperparams(gcore_jax.adam)(learning_rate=0.1)
    state = tx.init(params)
    assert "eps_root" not in state.hyperparams
    tx.update(params, state, params)
    bad = optax.inject_hyperparams(gcore_jax.adam)(learning_rate=0.1, eps_root=0.0)
    with pytest.raises(TypeError, match=r"eps_root.*static_args"):
        bad.init(params)
    with pytest.raises(TypeError, match=r"eps_root.*static_args"):
        jax.jit(bad.init)(params)
    ok = optax.inject_hyperparams(gcore_jax.adam, static_args=("eps_root",))(0.1, eps_root=0.0)
    ok.update(params, ok.init(params), params)


def test_x64_is_off_outside_xp_tests():
    """conftest scopes x64 per test: off here whatever ran before (in every session)."""
    assert not jax.config.jax_enable_x64
    assert jnp.asarray(1.0).dtype == jnp.float32


def test_x64_is_on_in_xp_tests_of_the_jax_session(xp, backend):
    from backends import Backend

    assert jax.config.jax_enable_x64 == (backend is Backend.JAX)


def test_amsgrad_state_does_not_pass_for_optax_amsgrad():
    """gcore's AMSGrad keeps the maximum of the raw second moment (torch's), optax's the
    maximum of the bias-corrected one: the state was optax.ScaleByAmsgradState, so an
    optax.amsgrad checkpoint restored into it without an error and stepped ~15x too
    small. The field has its own name now, and such a restore raises."""
    serialization = pytest.importorskip("flax.serialization", reason="flax is not installed")
    params = {"w": jnp.ones((3, 2))}
    ours = gcore_jax.scale_by_rule(gcore.Adam(lr=1.0, amsgrad=True))
    theirs = optax.scale_by_amsgrad()
    state, other = ours.init(params), theirs.init(params)
    grads = {"w": jnp.full((3, 2), 0.5)}
    for _ in range(2):
        _, state = ours.update(grads, state, params)
        _, other = theirs.update(grads, other, params)
    assert isinstance(state, gcore_jax.AmsgradState)
    # constant gradients: nu grows, so its running maximum is nu itself (not bias-corrected)
    np.testing.assert_allclose(np.asarray(state.max_nu["w"]), np.asarray(state.nu["w"]))
    assert not np.allclose(np.asarray(other.nu_max["w"]), np.asarray(state.max_nu["w"]))
    with pytest.raises(ValueError):
        serialization.from_state_dict(state, serialization.to_state_dict(other))


def test_integer_leaf_errors_name_the_parameter():
    params = {"dense": {"kernel": jnp.ones((3, 2))}, "step": jnp.zeros((), jnp.int32)}
    for tx in (gcore_jax.adam(1e-3), gcore_jax.sgd(0.1, gc=False)):
        with pytest.raises(TypeError, match=r"parameter \['step'\]: .*int32"):
            tx.init(params)


def test_scale_by_rule_with_gc_axis_none_is_gc_off():
    params = {"kernel": jnp.ones((3, 2))}
    grads = {"kernel": jnp.array([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]])}
    off = gcore_jax.scale_by_rule(gcore.SGD(lr=1.0, gc=gcore.GC(axis=None)))
    updates, _ = off.update(grads, off.init(params), params)
    np.testing.assert_array_equal(np.asarray(updates["kernel"]), -np.asarray(grads["kernel"]))


def test_tracer_errors_of_a_rule_pass_through_unchanged():
    """Errors named with the parameter are plain TypeError/ValueError; jax's own (a
    Python ``if`` on a traced value in a user's rule) pass as raised (rebuilding them
    from a message gave an AttributeError)."""

    class Clipping(gcore.SGD):
        def update(self, grad, state, param=None):
            if jnp.abs(grad).max() > 1e3:  # not traceable: a concrete bool of a tracer
                grad = grad * 0
            return super().update(grad, state, param)

    tx = gcore_jax.scale_by_rule(Clipping(lr=1.0))
    params = {"w": jnp.ones((3, 2))}
    step = jax.jit(lambda g, s: tx.update(g, s, params))
    with pytest.raises(jax.errors.TracerBoolConversionError):
        step(params, tx.init(params))
