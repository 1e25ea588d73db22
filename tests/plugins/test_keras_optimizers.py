"""gcore_keras: GC inside Keras 3 optimizers, on the backend named by ``KERAS_BACKEND``.

``nox -s tests-keras`` runs this file once per backend (jax, torch, tensorflow). Every
test measures what training does (weights, per-unit means of each step's change), so a
hook that Keras never calls (like the Keras 2 ``get_gradients`` override) fails here.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="keras (with a working backend) is not installed")
gcore_keras = pytest.importorskip("gcore_keras")

import gcore  # noqa: E402

BACKEND = keras.backend.backend()
F32_EPS = float(np.finfo(np.float32).eps)


def _numpy(v):
    return np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)


def _weights(model):
    """``{"<index>:<layer>/<variable>": value}``, layer names without numeric suffixes:
    the same keys for two models built alike in one process, or saved and loaded
    (``sequential_3/conv2d_7/kernel`` → ``0:conv2d/kernel``)."""
    out = {}
    for i, v in enumerate(model.trainable_variables):
        tail = "/".join(v.path.split("/")[-2:])
        out[f"{i}:{re.sub(r'_[0-9]+(?=/)', '', tail)}"] = _numpy(v)
    return out


def _data(n=64, shape=(8, 8, 3), out=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype("float32")
    y = rng.standard_normal((n, out)).astype("float32")
    return x, y


def _conv_model():
    """Every layer kind whose layout matters, with Keras's default layer names."""
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="tanh"),
            keras.layers.Conv2DTranspose(5, 3, activation="tanh"),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="tanh"),
            keras.layers.SeparableConv2D(6, 3, depth_multiplier=2, activation="tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(7, activation="tanh"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(5),
        ]
    )


def _is(kind, path):
    """Does ``path`` name ``kind`` ("conv2d_transpose/kernel"), whatever the layer suffix?"""
    layer, var = kind.split("/")
    return re.search(rf"(^|[/:]){layer}(_\d+)?/{var}$", path) is not None


def _unit_reduction(path, ndim):
    """Axes of one output unit per kernel kind (channels-last Keras layouts)."""
    if _is("conv2d_transpose/kernel", path):
        return tuple(a for a in range(ndim) if a != ndim - 2)
    if _is("depthwise_conv2d/kernel", path) or path.endswith("/depthwise_kernel"):
        return tuple(range(ndim - 2))
    return tuple(range(ndim - 1))


def _kernels(weights):
    return {p: w for p, w in weights.items() if w.ndim >= 2}


class _StepRecorder(keras.callbacks.Callback):
    """Each batch's weight change, per variable path."""

    def on_train_begin(self, logs=None):
        self.before = _weights(self.model)
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        now = _weights(self.model)
        self.steps.append({p: now[p] - self.before[p] for p in now})
        self.before = now


def _fit(opt, model=None, epochs=1, batch_size=16, record=True, seed=0, jit=False):
    """``jit=True``: Keras's default compiled train step (``jax.jit`` / ``tf.function``
    with XLA where Keras chooses it); else uncompiled, which is much faster for these
    tiny models (the GC hook runs either way; both are tested)."""
    model = model or _conv_model()
    x, y = _data(seed=seed)
    model.compile(optimizer=opt, loss="mse", jit_compile="auto" if jit else False)
    rec = _StepRecorder()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=False,
              callbacks=[rec] if record else [])  # fmt: skip
    return model, rec


def _max_unit_mean(delta, path):
    """max over units of |mean of the unit's change| / max |change| of the tensor."""
    axes = _unit_reduction(path, delta.ndim)
    scale = np.abs(delta).max()
    return float(np.abs(delta.mean(axis=axes)).max() / scale) if scale > 0 else 0.0


# -- GC acts, per output unit, inside model.fit -----------------------------------------


def test_fit_gc_sgd_each_step_has_zero_mean_per_output_unit():
    _, rec = _fit(gcore_keras.SGD(0.05, momentum=0.9), jit=True)
    assert len(rec.steps) == 4
    kinds = ("conv2d/kernel", "conv2d_transpose/kernel", "depthwise_conv2d/kernel", "dense/kernel")
    for kind in kinds:
        assert any(_is(kind, p) for p in rec.steps[0]), kind
    for step in rec.steps:
        for path, delta in _kernels(step).items():
            # float32: the centralized gradient's unit means are rounding (~eps), and
            # writing w + Δ rounds by eps·|w|/2 (|w| <~ 1, |Δ| >~ 1e-3 here)
            assert _max_unit_mean(delta, path) < 2e-4, path


def test_fit_plain_sgd_steps_do_not_have_zero_unit_means():
    """The contrast that makes the test above able to fail."""
    _, rec = _fit(keras.optimizers.SGD(0.05, momentum=0.9))
    for path in _kernels(rec.steps[-1]):
        worst = max(_max_unit_mean(step[path], path) for step in rec.steps)
        assert worst > 1e-2, path  # 50x the bound the GC test uses


def test_units_follow_the_layer_layout_not_the_last_axis():
    """Conv2DTranspose kernels (…, out, in) are centralized per axis -2: their change's
    means over the *last* axis' units are not zero. (Depthwise kernels' units, taps of
    one (in, multiplier) pair, are finer than the last axis': the first test checks
    each of those means is zero, which GC along the last axis would not give.)"""
    _, rec = _fit(gcore_keras.SGD(0.05))
    step = rec.steps[-1]
    t = next(p for p in step if _is("conv2d_transpose/kernel", p))
    assert _max_unit_mean(step[t], t) < 2e-4
    wrong = np.abs(step[t].mean(axis=(0, 1, 2))).max()
    assert wrong / np.abs(step[t]).max() > 1e-2  # GC leaves these at ~1e-7


@pytest.mark.parametrize(
    ("make_plain", "make_gc"),
    [
        (lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
         lambda **k: gcore_keras.SGD(0.05, momentum=0.9, nesterov=True, **k)),
        (lambda: keras.optimizers.Adam(1e-2, amsgrad=True),
         lambda **k: gcore_keras.Adam(1e-2, amsgrad=True, **k)),
        (lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1),
         lambda **k: gcore_keras.AdamW(1e-2, weight_decay=0.1, **k)),
    ],
    ids=["sgd-nesterov", "adam-amsgrad", "adamw"],
)  # fmt: skip
def test_gc_off_is_keras_exactly_and_gc_on_changes_training(make_plain, make_gc):
    plain, _ = _fit(make_plain(), epochs=2, record=False)
    off, _ = _fit(make_gc(gc=False), epochs=2, record=False)
    on, _ = _fit(make_gc(), epochs=2, record=False)
    wp, woff, won = _weights(plain), _weights(off), _weights(on)
    for p in wp:
        np.testing.assert_array_equal(woff[p], wp[p], err_msg=p)
    diff = max(np.abs(won[p] - wp[p]).max() for p in _kernels(wp))
    assert diff > 1e-3


def test_get_gradients_recipe_is_a_no_op_but_centralized_is_not():
    """The Keras 2 recipe (override ``get_gradients``) trains exactly like RMSprop in
    Keras 3; ``centralized(RMSprop)`` does not."""
    calls = []

    class OldRecipeRMSprop(keras.optimizers.RMSprop):
        def get_gradients(self, loss, params):  # never called by Keras 3
            calls.append(1)
            grads = []
            for g in super().get_gradients(loss, params):
                if len(g.shape) > 1:
                    g = g - keras.ops.mean(g, axis=list(range(len(g.shape) - 1)), keepdims=True)
                grads.append(g)
            return grads

    class PlainRMSprop(keras.optimizers.RMSprop):
        """The same Keras code path as the recipe's class (on torch, a subclass of a
        Keras optimizer runs Keras's per-variable step, not its foreach step, which
        rounds differently: up to 7e-8 apart after 2 epochs)."""

    rms = keras.optimizers.RMSprop
    plain, _ = _fit(PlainRMSprop(1e-3), epochs=2, record=False, jit=True)
    old, _ = _fit(OldRecipeRMSprop(1e-3), epochs=2, record=False, jit=True)
    new, _ = _fit(gcore_keras.centralized(rms(1e-3)), epochs=2, record=False, jit=True)
    wp, wo, wn = _weights(plain), _weights(old), _weights(new)
    assert calls == []
    assert max(np.abs(wo[p] - wp[p]).max() for p in wp) == 0.0
    assert max(np.abs(wn[p] - wp[p]).max() for p in _kernels(wp)) > 1e-4


# -- optimizer.apply (custom loops), exact numbers ----------------------------------------


def _vars(shapes, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return [
        keras.Variable(rng.standard_normal(s).astype(dtype), name=f"p{i}")
        for i, s in enumerate(shapes)
    ]


def _grads(shapes, seed=1, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(s)).astype("float32") for s in shapes]


SHAPES = [(3, 3, 2, 4), (6, 5), (5,)]  # Conv2D kernel, Dense kernel, bias
AXES = {"^p0$": -1, "^p1$": -1, "^p2$": None}


def _apply(opt, grads_list, shapes=SHAPES):
    vs = _vars(shapes)
    w0 = [_numpy(v) for v in vs]
    out = []
    for grads in grads_list:
        opt.apply([keras.ops.convert_to_tensor(g) for g in grads], vs)
        out.append([_numpy(v) for v in vs])
    return w0, out


def _gc_np(g, axis=-1):
    return np.asarray(gcore.centralize(np.asarray(g, dtype=np.float64), axis=axis))


def test_apply_sgd_step_is_minus_lr_times_centralized_gradient():
    g = _grads(SHAPES)
    w0, (w1,) = _apply(gcore_keras.SGD(0.5, gc_axes=AXES), [g])
    for i in range(3):
        expected = -0.5 * (_gc_np(g[i]) if i < 2 else g[i])
        np.testing.assert_allclose(w1[i] - w0[i], expected, rtol=1e-5, atol=4 * F32_EPS)


def test_conv_only_leaves_dense_kernels_alone():
    g = _grads(SHAPES)
    _, (w_conv_only,) = _apply(gcore_keras.SGD(0.5, gc="conv_only"), [g])
    _, (w_off,) = _apply(gcore_keras.SGD(0.5, gc=False), [g])
    _, (w_on,) = _apply(gcore_keras.SGD(0.5), [g])
    np.testing.assert_array_equal(w_conv_only[1], w_off[1])  # Dense kernel: no GC
    np.testing.assert_array_equal(w_conv_only[2], w_off[2])  # bias: no GC
    np.testing.assert_array_equal(w_conv_only[0], w_on[0])  # Conv2D kernel: GC
    assert np.abs(w_conv_only[0] - w_off[0]).max() > 1e-3


def test_centralized_rmsprop_is_rmsprop_on_centralized_gradients():
    g = [_grads(SHAPES, seed=s) for s in (1, 2, 3)]
    _, w_gc = _apply(gcore_keras.centralized(keras.optimizers.RMSprop(1e-2, momentum=0.5)), g)
    g_c = [[_gc_np(gi[0]).astype("float32"), _gc_np(gi[1]).astype("float32"), gi[2]] for gi in g]
    _, w_ref = _apply(keras.optimizers.RMSprop(1e-2, momentum=0.5), g_c)
    _, w_plain = _apply(keras.optimizers.RMSprop(1e-2, momentum=0.5), g)
    for a, b in zip(w_gc[-1], w_ref[-1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.abs(w_gc[-1][0] - w_plain[-1][0]).max() > 1e-3


@pytest.mark.parametrize(
    "name", ["Lion", "Nadam", "Adagrad", "Adamax", "Adadelta", "Adafactor", "Lamb", "Ftrl"]
)
def test_centralized_works_for_builtin_optimizers(name):
    cls = getattr(keras.optimizers, name, None)
    if cls is None:
        pytest.skip(f"keras.optimizers.{name} does not exist in Keras {keras.__version__}")
    opt = gcore_keras.centralized(cls())
    assert isinstance(opt, cls)
    g = _grads(SHAPES)
    _, (w_gc,) = _apply(opt, [g])
    _, (w_plain,) = _apply(cls(), [g])
    assert not np.array_equal(w_gc[0], w_plain[0])  # GC changed the conv kernel's step
    np.testing.assert_array_equal(w_gc[2], w_plain[2])  # and left the bias alone


def test_centralized_rejects_built_or_gc_optimizers():
    opt = keras.optimizers.RMSprop()
    opt.build(_vars(SHAPES))
    with pytest.raises(ValueError, match="not built"):
        gcore_keras.centralized(opt)
    with pytest.raises(ValueError, match="already"):
        gcore_keras.centralized(gcore_keras.SGD())
    with pytest.raises(TypeError):
        gcore_keras.centralized(object())


def test_centralized_of_a_user_class_keeps_the_class():
    class MyRMSprop(keras.optimizers.RMSprop):
        pass

    opt = gcore_keras.centralized(MyRMSprop(1e-3))
    assert isinstance(opt, MyRMSprop)
    assert type(opt).__name__ == "CentralizedMyRMSprop"
    assert gcore_keras.centralized(MyRMSprop) is type(opt)


@pytest.mark.parametrize(
    ("clip", "make_ref"),
    [
        ({"clipnorm": 0.5}, "norm"),
        ({"global_clipnorm": 0.5}, "global"),
        ({"clipvalue": 0.1}, "value"),
    ],
)
def test_gc_runs_after_clipping(clip, make_ref):
    g = _grads(SHAPES, scale=3.0)
    w0, (w1,) = _apply(gcore_keras.SGD(1.0, gc_axes=AXES, **clip), [g])
    g64 = [x.astype(np.float64) for x in g]
    if make_ref == "norm":
        clipped = [x * min(1.0, 0.5 / np.linalg.norm(x)) for x in g64]
    elif make_ref == "global":
        total = np.sqrt(sum(np.sum(x**2) for x in g64))
        clipped = [x * min(1.0, 0.5 / total) for x in g64]
    else:
        clipped = [np.clip(x, -0.1, 0.1) for x in g64]
    expected = [-_gc_np(clipped[0]), -_gc_np(clipped[1]), -clipped[2]]
    wrong_order = -_gc_np(g64[0])
    if make_ref == "norm":
        wrong_order = wrong_order * min(1.0, 0.5 / np.linalg.norm(_gc_np(g64[0])))
    elif make_ref == "value":
        wrong_order = -np.clip(_gc_np(g64[0]), -0.1, 0.1)
    for i in range(3):
        np.testing.assert_allclose(w1[i] - w0[i], expected[i], rtol=2e-5, atol=8 * F32_EPS)
    if make_ref != "global":  # a global scale commutes with GC; the others do not
        assert np.abs((w1[0] - w0[0]) - wrong_order).max() > 1e-3


def test_gc_runs_on_the_accumulated_gradient():
    g1, g2, g3, g4 = (_grads(SHAPES, seed=s) for s in (1, 2, 3, 4))
    opt = gcore_keras.SGD(0.5, momentum=0.5, gradient_accumulation_steps=2, gc_axes=AXES)
    w0, (w1, w2, w3, w4) = _apply(opt, [g1, g2, g3, g4])
    for a, b in zip(w1, w0, strict=True):
        np.testing.assert_array_equal(a, b)  # the first call only accumulates
    mean12 = [(a.astype(np.float64) + b) / 2 for a, b in zip(g1, g2, strict=True)]
    mean34 = [(a.astype(np.float64) + b) / 2 for a, b in zip(g3, g4, strict=True)]
    for i in range(2):
        v1 = -0.5 * _gc_np(mean12[i])
        v2 = 0.5 * v1 - 0.5 * _gc_np(mean34[i])
        np.testing.assert_allclose(w2[i] - w0[i], v1, rtol=1e-5, atol=8 * F32_EPS)
        np.testing.assert_allclose(w4[i] - w2[i], v2, rtol=1e-5, atol=8 * F32_EPS)
        np.testing.assert_array_equal(w3[i], w2[i])


def test_gc_where_update_under_adamw_leaves_the_decay_alone_as_the_core():
    """gc_where="update" centralizes Adam's step, not the decoupled decay (gcore.AdamW;
    the torch and jax plugins): each unit's weight mean shrinks by (1 - lr*wd) a step.
    The plugin centralized the decay too, so the means stayed put, unlike every other
    plugin's."""
    g = [_grads(SHAPES, seed=s) for s in range(1, 5)]
    lr, wd = 1e-2, 0.5
    w0, ws = _apply(gcore_keras.AdamW(lr, weight_decay=wd, gc_where="update"), g)
    _, ws_grad = _apply(gcore_keras.AdamW(lr, weight_decay=wd), g)
    for i in range(2):
        axes = tuple(range(w0[i].ndim - 1))
        for t, w in enumerate(ws, start=1):
            np.testing.assert_allclose(
                w[i].mean(axis=axes), (1 - lr * wd) ** t * w0[i].mean(axis=axes), atol=1e-6
            )
        expected = (1 - lr * wd) ** len(ws) * w0[i].mean(axis=axes)
        drift_grad = np.abs(ws_grad[-1][i].mean(axis=axes) - expected)
        assert drift_grad.max() > 1e-4  # GC of the gradient does not keep them under Adam


def test_adamw_paper_convention_matches_the_core_rule():
    """convention="paper": Keras's Adam step (ε outside the bias correction) with the
    decay scaled by the Adam step size — the core's AdamW(convention="paper")."""
    for where in ("gradient", "update"):
        g = [_grads(SHAPES, seed=s) for s in range(1, 4)]
        opt = gcore_keras.AdamW(
            1e-2, weight_decay=0.1, epsilon=1e-8, convention="paper", gc_where=where,
            gc_axes=AXES,
        )  # fmt: skip
        w0, ws = _apply(opt, g)
        for i, axis in enumerate((-1, -1, None)):
            rule = gcore.AdamW(
                lr=1e-2, weight_decay=0.1, eps=1e-8, convention="paper",
                gc=gcore.GC(axis=axis, where=where) if axis is not None else None,
            )  # fmt: skip
            p = w0[i].copy()
            state = rule.init(p)
            for t, gt in enumerate(g):
                upd, state = rule.update(gt[i].astype(np.float64), state, p)
                p = p + upd
                np.testing.assert_allclose(ws[t][i], p, rtol=1e-5, atol=1e-6)


def test_invalid_options():
    with pytest.raises(ValueError, match="gc="):
        gcore_keras.SGD(gc="yes")
    with pytest.raises(ValueError, match="where"):
        gcore_keras.Adam(gc_where="after")
    with pytest.raises(ValueError, match="convention"):
        gcore_keras.AdamW(convention="tf")
    with pytest.raises(TypeError, match="gc_axes"):
        gcore_keras.SGD(gc_axes=[("dense", 0)])
    opt = gcore_keras.SGD(gc_axes={"^p0$": 7})
    with pytest.raises(ValueError, match="out of range"):
        opt.build(_vars(SHAPES))


# -- layouts ---------------------------------------------------------------------------


def test_output_axes_by_default_layer_names():
    model = _conv_model()
    axes = {
        re.sub(r"_[0-9]+(?=/)", "", v.path.split("/", 1)[1] + "/"): gcore_keras.output_axes_for(
            v.path, tuple(v.shape)
        )
        for v in model.trainable_variables
    }
    assert axes["conv2d/kernel/"] == (3,)
    assert axes["conv2d_transpose/kernel/"] == (2,)
    assert axes["depthwise_conv2d/kernel/"] == (2, 3)
    assert axes["separable_conv2d/depthwise_kernel/"] == (2, 3)
    assert axes["separable_conv2d/pointwise_kernel/"] == (3,)
    assert axes["dense/kernel/"] == (1,)
    for name in ("conv2d/bias/", "batch_normalization/gamma/", "batch_normalization/beta/"):
        assert axes[name] is None


def test_layout_reads_layer_types_for_custom_names():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4, 6)),
            keras.layers.Conv1DTranspose(3, 2, name="up"),
            keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 4), name="heads"),
            keras.layers.Reshape((5, 8)),
            keras.layers.Dense(2, name="fc"),
        ]
    )
    emb = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(10, 8)])
    lay = {**gcore_keras.layout(model), **gcore_keras.layout(emb)}
    by_name = {
        re.sub(r"_[0-9]+(?=/)", "", k.removeprefix("(^|/)").removesuffix("$")): v
        for k, v in lay.items()
    }
    for v in model.trainable_variables:  # a pattern matches the path, with or without
        # the model's name (load_model drops it)
        hits = [k for k in lay if re.search(k, v.path)]
        assert len(hits) == 1
        assert re.search(hits[0], v.path.split("/", 1)[1])
    assert by_name["up/kernel"] == (1,)  # (k, out, in)
    assert by_name["heads/kernel"] == (1, 2)  # kernel "cde": d and e reach the output
    assert by_name["fc/kernel"] == (1,)
    assert by_name["embedding/embeddings"] is None
    assert by_name["up/bias"] is None
    # path rules alone cannot know "up" is transposed: that is what layout() is for
    up = next(v for v in model.trainable_variables if v.path.endswith("up/kernel"))
    assert gcore_keras.output_axes_for(up.path, tuple(up.shape)) == (2,)
    opt = gcore_keras.SGD(0.1, gc_axes=lay)
    opt.build(model.trainable_variables)
    assert opt.gc_output_axes(up) == (1,)
    with pytest.raises(ValueError, match="built"):
        gcore_keras.layout(keras.Sequential([keras.layers.Dense(2)]))


def test_multi_axis_units_against_numpy():
    """A depthwise kernel's units are (in, multiplier) pairs: mean over the taps only."""
    shapes = [(3, 3, 4, 2)]
    g = _grads(shapes)
    w0, (w1,) = _apply(gcore_keras.SGD(1.0, gc_axes={"^p0$": (2, 3)}), [g], shapes=shapes)
    g64 = g[0].astype(np.float64)
    expected = -(g64 - g64.mean(axis=(0, 1), keepdims=True))
    np.testing.assert_allclose(w1[0] - w0[0], expected, rtol=1e-5, atol=8 * F32_EPS)
    w0, (w1,) = _apply(gcore_keras.SGD(1.0, gc_axes={"^p0$": (0, 3)}), [g], shapes=shapes)
    expected = -(g64 - g64.mean(axis=(1, 2), keepdims=True))  # non-trailing axes too
    np.testing.assert_allclose(w1[0] - w0[0], expected, rtol=1e-5, atol=8 * F32_EPS)


# -- serialization -----------------------------------------------------------------------


def test_layout_of_a_nested_model_survives_load_model(tmp_path):
    """load_model names a nested model's variables without the outer names
    ("decoder/up/kernel" becomes "up/kernel"): layout()'s patterns matched no more, and a
    Conv2DTranspose kernel fell back to the name rule (its input axis)."""
    inner = keras.Sequential(
        [keras.Input((5, 5, 2)), keras.layers.Conv2DTranspose(3, 3, name="up")], name="decoder"
    )
    inp = keras.Input((5, 5, 2))
    out = keras.layers.Dense(1, name="head")(keras.layers.Flatten()(inner(inp)))
    model = keras.Model(inp, out, name="outer")
    opt = gcore_keras.SGD(0.05, gc_axes=gcore_keras.layout(model))
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.ones((4, 5, 5, 2), "float32"), np.ones((4, 1), "float32"), verbose=0)
    before = {"/".join(v.path.split("/")[-2:]): opt.gc_output_axes(v)
              for v in model.trainable_variables}  # fmt: skip
    assert before["up/kernel"] == (2,)  # (k, k, out, in)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    after = {"/".join(v.path.split("/")[-2:]): loaded.optimizer.gc_output_axes(v)
             for v in loaded.trainable_variables}  # fmt: skip
    assert after == before
    # two variables of different axes under one "layer/variable" name keep whole paths,
    # the longer pattern first (the shorter one matches both paths)
    top = keras.layers.Conv2D(3, 3, name="up")
    both = keras.Model(inp, [top(inp), inner(inp)], name="both")
    opt = gcore_keras.SGD(0.1, gc_axes=gcore_keras.layout(both))
    opt.build(both.trainable_variables)
    assert opt.gc_output_axes(inner.get_layer("up").kernel) == (2,)
    assert opt.gc_output_axes(top.kernel) == (3,)


@pytest.mark.parametrize(
    "make",
    [
        lambda: gcore_keras.SGD(0.05, momentum=0.9, gc="conv_only"),
        lambda: gcore_keras.Adam(1e-2, gc_where="update", gc_axes={"dense_1": None}),
        lambda: gcore_keras.AdamW(1e-2, weight_decay=0.05, convention="paper", clipnorm=1.0),
        lambda: gcore_keras.centralized(keras.optimizers.RMSprop(1e-3, momentum=0.5)),
    ],
    ids=["sgd", "adam", "adamw", "centralized-rmsprop"],
)
def test_save_load_restores_options_and_state_and_training_continues(make, tmp_path):
    model, _ = _fit(make(), record=False)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    a, b = model.optimizer, loaded.optimizer
    assert type(b) is type(a)
    ca, cb = a.get_config(), b.get_config()
    assert ca == cb
    for key in ("gc", "gc_where", "gc_axes"):
        assert key in cb
    assert int(_numpy(b.iterations)) == int(_numpy(a.iterations)) == 4
    assert len(a.variables) == len(b.variables)
    for va, vb in zip(a.variables, b.variables, strict=True):
        np.testing.assert_array_equal(_numpy(va), _numpy(vb))
    x, y = _data(seed=5)
    for m in (model, loaded):
        m.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    wa, wb = _weights(model), _weights(loaded)
    for p in wa:
        np.testing.assert_allclose(wb[p], wa[p], rtol=1e-6, atol=1e-7, err_msg=p)


@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_get_config_from_config_round_trip(cls):
    kw = {"gc": "conv_only", "gc_where": "update", "gc_axes": {"^a/kernel$": (0, 1)}}
    if cls == "AdamW":
        kw["convention"] = "paper"
    opt = getattr(gcore_keras, cls)(learning_rate=0.123, **kw)
    config = opt.get_config()
    again = type(opt).from_config(config)
    assert again.get_config() == config
    assert config["gc_axes"] == {"^a/kernel$": [0, 1]}
    ser = keras.saving.serialize_keras_object(opt)
    assert ser["registered_name"] == f"gcore_keras>{cls}"
    back = keras.saving.deserialize_keras_object(ser)
    assert type(back) is type(opt)
    assert back.get_config() == config


def test_readme_keras_block_runs_and_keeps_filter_means(capsys):
    """README's 30-second Keras block, as written there, on this backend."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
              if "import numpy as np, keras, gcore_keras" in b]  # fmt: skip
    assert len(blocks) == 1
    exec(compile(blocks[0], "README.md (Keras block)", "exec"), {"__name__": "readme"})
    printed = float(capsys.readouterr().out.split()[0])
    assert 0 <= printed < 1e-6  # each filter's mean change, float32 rounding


def test_mixed_precision_inner_optimizer_runs_gc():
    """mixed_float16 wraps the optimizer in LossScaleOptimizer; its inner step is ours."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        layers = [keras.layers.Conv2D(8, 3), keras.layers.Flatten()]
        head = keras.layers.Dense(5, dtype="float32")
        model = keras.Sequential([keras.Input((8, 8, 3)), *layers, head])
        w0 = _numpy(model.layers[0].kernel)
        model, _ = _fit(gcore_keras.Adam(1e-3, gc_where="update"), model=model, record=False)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer, gcore_keras.Adam)
    kernel = model.layers[0].kernel
    assert kernel.dtype == "float32"
    moved = _numpy(kernel) - w0
    # gc_where="update": each filter's total change has mean ~0, even under Adam
    assert np.abs(moved.mean(axis=(0, 1, 2))).max() < 1e-4 * np.abs(moved).max()


# -- review findings: each failed before its fix ----------------------------------------


def _attention_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 6))
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)
    return keras.Model(inp, keras.layers.Flatten()(mha(inp, inp))), mha


def test_attention_query_key_value_units_are_head_feature_pairs_by_default():
    """MultiHeadAttention's query/key/value kernels (in, heads, head_dim): a unit is one
    (head, feature) pair, its weights along axis 0. The name rule gave the last axis,
    a mean over (in, heads) that mixes heads (0.1-0.27 of the step after one step)."""
    model, mha = _attention_model()
    before = {k: _numpy(getattr(mha, f"_{k}_dense").kernel) for k in ("query", "key", "value")}
    x = np.random.default_rng(0).standard_normal((16, 5, 6)).astype("float32")
    y = np.random.default_rng(1).standard_normal((16, 30)).astype("float32")
    model.compile(optimizer=gcore_keras.SGD(0.1), loss="mse", jit_compile=False)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for k, w0 in before.items():
        delta = _numpy(getattr(mha, f"_{k}_dense").kernel) - w0
        scale = np.abs(delta).max()
        assert scale > 0, k
        assert np.abs(delta.mean(axis=0)).max() < 1e-5 * scale, k  # per (head, feature)


def test_kernels_whose_axes_are_guessed_warn_and_layout_silences_it():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 6))
    out = keras.layers.EinsumDense("abc,cde->abde", output_shape=(4, 2, 3))(inp)
    model = keras.Model(inp, out)
    opt = gcore_keras.SGD(0.1)
    with pytest.warns(UserWarning, match="guessed"):
        opt.build(model.trainable_variables)
    opt = gcore_keras.SGD(0.1, gc_axes=gcore_keras.layout(model))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        opt.build(model.trainable_variables)


def test_centralized_loss_scale_optimizer_centralizes_its_inner_optimizer():
    """The wrapper hands the step to its inner optimizer: centralizing the wrapper ran
    no GC at all (training equal to plain SGD)."""
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05), initial_scale=64.0)
    opt = gcore_keras.centralized(scaled)
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    assert isinstance(opt.inner_optimizer, gcore_keras.centralized(keras.optimizers.SGD))
    assert float(keras.ops.convert_to_numpy(opt.get_config()["initial_scale"])) == 64.0
    _, rec = _fit(opt)
    for step in rec.steps:
        for path, delta in _kernels(step).items():
            assert _max_unit_mean(delta, path) < 2e-4, path
    with pytest.raises(TypeError, match="inner"):
        gcore_keras.centralized(keras.optimizers.LossScaleOptimizer)


def test_user_classes_named_like_keras_optimizers_keep_their_own_saved_names():
    """A user class named Adam took over the built-in CentralizedAdam's registered name:
    a model saved with centralized(keras Adam) then loaded as the user's class."""

    class Adam(keras.optimizers.Adam):
        pass

    mine = gcore_keras.centralized(Adam)
    builtin = gcore_keras.centralized(keras.optimizers.Adam(0.01))
    again = keras.optimizers.deserialize(keras.optimizers.serialize(builtin))
    assert not isinstance(again, Adam)
    assert isinstance(again, gcore_keras.centralized(keras.optimizers.Adam))
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(mine(0.01)))
    assert type(restored) is mine


def test_centralized_keeps_learning_rate_callables_and_weight_decay_exclusions():
    def lr_fn():
        return 0.01

    opt = gcore_keras.centralized(keras.optimizers.SGD(lr_fn))
    assert opt._learning_rate is lr_fn
    plain = keras.optimizers.AdamW(0.01, weight_decay=0.5)
    plain.exclude_from_weight_decay(var_names=["kernel"])
    opt = gcore_keras.centralized(plain)
    kernel = keras.Variable(np.ones((3, 2), "float32"), name="kernel")
    other = keras.Variable(np.ones((3, 2), "float32"), name="other")
    assert not opt._use_weight_decay(kernel)
    assert opt._use_weight_decay(other)


def test_gc_options_are_read_only():
    """opt.gc = False was accepted, ignored by the step and reported by get_config."""
    opt = gcore_keras.SGD(0.1)
    with pytest.raises(AttributeError, match="fixed"):
        opt.gc = False
    with pytest.raises(AttributeError, match="fixed"):
        opt.gc_where = "update"
    assert opt.get_config()["gc"] is True and opt.get_config()["gc_where"] == "gradient"


def test_embedding_lora_tables_and_prelu_slopes_are_left_alone():
    keras.utils.set_random_seed(0)
    inp = keras.Input((3,), dtype="int32")
    emb = keras.layers.Embedding(50, 4)
    h = emb(inp)
    prelu = keras.layers.PReLU()
    model = keras.Model(inp, prelu(h))
    emb.enable_lora(2)
    opt = gcore_keras.SGD(0.1)
    opt.build(model.trainable_variables)
    paths = {v.path.split("/")[-1]: opt.gc_output_axes(v) for v in model.trainable_variables}
    assert paths["lora_embeddings_a"] is None and paths["lora_embeddings_b"] is None
    assert paths["alpha"] is None
    assert all(v is None for v in gcore_keras.layout(model).values())


def test_gc_axes_values_and_patterns_are_checked_at_construction():
    with pytest.raises(TypeError, match=r"gc_axes\['k'\]"):
        gcore_keras.SGD(gc_axes={"k": "last"})
    with pytest.raises(TypeError, match=r"gc_axes\['k'\]"):
        gcore_keras.SGD(gc_axes={"k": 1.0})
    with pytest.raises(ValueError, match="not a valid regex"):
        gcore_keras.SGD(gc_axes={"[": 1})
    rmsprop = gcore_keras.centralized(keras.optimizers.RMSprop)
    with pytest.raises(ValueError, match="learning_rate"):
        rmsprop(-1.0)  # positional
    with pytest.raises(ValueError, match="learning_rate"):
        rmsprop(float("nan"))


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: gcore_keras.Adam(beta_1=1.5), "beta_1"),
        (lambda: gcore_keras.AdamW(beta_2=1.0), "beta_2"),
        (lambda: gcore_keras.Adam(epsilon=-1e-7), "epsilon"),
        (lambda: gcore_keras.AdamW(weight_decay=-1.0), "weight_decay"),
        (lambda: gcore_keras.SGD(weight_decay=float("nan")), "weight_decay"),
        (lambda: gcore_keras.centralized(keras.optimizers.RMSprop)(epsilon=-1.0), "epsilon"),
    ],
)
def test_hyperparameters_out_of_range_raise_naming_the_parameter(make, name):
    """Keras takes betas >= 1, a negative epsilon or weight decay, and NaN, and trains to
    NaN or diverges without a word; the plugin's optimizers refuse them."""
    with pytest.raises(ValueError, match=rf"{name}=.* is invalid; allowed"):
        make()
    # Lion's beta_1 may be 1 (Keras checks it itself): centralized() leaves betas to it.
    gcore_keras.centralized(keras.optimizers.Lion)(beta_1=1.0)


def _default_and_layout_axes(model):
    """Each trainable variable's output axes by the name rules (with a warning record)
    and by ``layout(model)``, which reads the layer types."""
    import warnings

    by_name = gcore_keras.SGD(0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        by_name.build(model.trainable_variables)
    by_type = gcore_keras.SGD(0.1, gc_axes=gcore_keras.layout(model))
    by_type.build(model.trainable_variables)
    pairs = {
        v.path: (by_name.gc_output_axes(v), by_type.gc_output_axes(v))
        for v in model.trainable_variables
    }
    return pairs, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_keras_applications_depthwise_names_get_depthwise_axes():
    """keras.applications name depthwise convolutions "conv_dw_1" (MobileNet),
    "block1a_dwconv" (EfficientNet), "expanded_conv_depthwise" (MobileNetV2/V3): the name
    rules gave their kernels (k, k, C, 1) the last axis, one unit of all channels' taps,
    without a warning."""
    model = keras.applications.MobileNet(weights=None, input_shape=(32, 32, 3), alpha=0.25)
    pairs, warned = _default_and_layout_axes(model)
    depthwise = [p for p in pairs if "conv_dw" in p and p.endswith("kernel")]
    assert len(depthwise) == 13
    assert all(pairs[p][0] == (2, 3) for p in depthwise)
    assert {p: a for p, (a, b) in pairs.items() if a != b} == {}
    assert warned == []
    for path in ("efficientnet/block1a_dwconv/kernel", "mnv3/expanded_conv_depthwise/kernel"):
        assert gcore_keras.output_axes_for(path, (3, 3, 8, 1)) == (2, 3)
    # their 1x1 convolutions named without "conv" are convolutions by name (no warning)
    from gcore_keras._layout import guessed

    for path in ("efficientnet/block1a_se_reduce/kernel", "mnv3/logits/kernel"):
        assert gcore_keras.output_axes_for(path, (1, 1, 8, 4)) == (3,)
        assert not guessed(path, (1, 1, 8, 4))
    assert guessed("m/my_block/kernel", (1, 1, 8, 4))
    # a 2-d kernel of a layer so named is a Dense: its last axis
    assert gcore_keras.output_axes_for("m/depthwise_proj/kernel", (8, 4)) == (1,)


def test_attention_output_with_an_output_shape_of_several_axes():
    """MultiHeadAttention(output_shape=(2, 5)): the output kernel (heads, head_dim, 2, 5)
    has output axes (2, 3); the name rule gave (3,), mixing the first output axis."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 6))
    out = keras.layers.MultiHeadAttention(2, 3, output_shape=(2, 5))(inp, inp)
    model = keras.Model(inp, out)
    pairs, warned = _default_and_layout_axes(model)
    (path,) = [p for p in pairs if p.endswith("attention_output/kernel")]
    assert pairs[path] == ((2, 3), (2, 3))
    assert {p: a for p, (a, b) in pairs.items() if a != b} == {}
    assert warned == []


def test_layers_named_like_attention_projections_or_up_convolutions_warn():
    """A Conv1D named "query" (kernel (k, in, out)) gets MultiHeadAttention's (in, heads,
    head_dim) axes (1, 2) by name: with no attention_output kernel beside it, that is now
    a guess that warns (it was silent), as are a Conv2DTranspose named "upconv1" and a
    2-d EinsumDense (whose equation the path does not hold); a Conv2D named "group_conv"
    is a convolution by its name and does not warn."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 8))
    x = keras.layers.Conv1D(8, 3, name="query", padding="same")(inp)
    x = keras.layers.Reshape((6, 8, 1))(x)
    x = keras.layers.Conv2DTranspose(4, 3, name="upconv1")(x)
    x = keras.layers.Conv2D(4, 1, name="group_conv")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.EinsumDense("ab,cb->ac", output_shape=(4,))(x)
    model = keras.Model(inp, x)
    pairs, warned = _default_and_layout_axes(model)
    by_layer = {
        re.sub(r"_[0-9]+$", "", p.split("/")[-2]): a
        for p, a in pairs.items()
        if p.endswith("kernel")
    }
    assert by_layer["query"] == ((1, 2), (2,))  # the guess, and the layer's own axes
    assert by_layer["group_conv"] == ((3,), (3,))
    assert by_layer["upconv1"] == ((3,), (2,))  # the guess, and the layer's own axes
    assert by_layer["einsum_dense"] == ((1,), (0,))
    (message,) = warned
    for name in ("query/kernel", "upconv1/kernel", "einsum_dense"):
        assert name in message
    assert "group_conv" not in message


def test_a_user_update_step_runs_on_every_backend():
    """On the torch backend a subclass's own update_step was skipped: the step went to
    Keras's foreach step of the built-in class (plain SGD), with GC on or off."""

    class SignSGD(keras.optimizers.SGD):
        def update_step(self, gradient, variable, learning_rate):
            lr = keras.ops.cast(learning_rate, variable.dtype)
            self.assign_sub(variable, lr * keras.ops.sign(gradient))

    class GCSignSGD(gcore_keras.SGD):
        update_step = SignSGD.update_step

    g = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]], "float32")
    for make in (
        lambda: gcore_keras.centralized(SignSGD(0.1), gc=False),
        lambda: GCSignSGD(0.1, gc=False),
        lambda: gcore_keras.centralized(SignSGD(0.1)),
    ):
        v = keras.Variable(np.zeros((3, 2), "float32"), name="kernel")
        opt = make()
        opt.apply([keras.ops.convert_to_tensor(g)], [v])
        gc = opt.gc is not False
        # GC (axis -1) of g is +-0.5 / +-2, nonzero, so the sign step is -0.1 * sign of it
        expected = -0.1 * np.sign(g - g.mean(axis=0) if gc else g)
        np.testing.assert_allclose(_numpy(v), expected, atol=1e-7)
