"""The plugins' half of the bad-input catalogue (docs/errors.rst).

One adapter per plugin gives the same checks one vocabulary: ``build(algo, params, **hp)``
with torch-style hyperparameter names (``lr``, ``betas``, ...) translated to the plugin's
own, and ``step(opt, grads)`` returning the new parameters as NumPy arrays. Frameworks
that are missing skip; CuPy skips without a CUDA device. Keep the test ids stable: the
catalogue cites them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import gcore

ALGOS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


# -- adapters ----------------------------------------------------------------------------
class _NumpyLike:
    """gcore_numpy and gcore_cupy: in-place optimizers over lists of arrays."""

    module_name = "gcore_numpy"

    def module(self):
        return pytest.importorskip(self.module_name)

    def array(self, a, dtype=None):
        return np.array(a, dtype=dtype or np.float64)

    def to_numpy(self, x):
        return np.asarray(x)

    def build(self, algo, params, **hp):
        mod = self.module()
        axis = hp.pop("gc_axis", "default")
        if "gc_where" in hp:
            hp["gc"] = gcore.GC(where=hp.pop("gc_where"))
        if axis != "default":
            hp["axes"] = [axis] * len(params)
        return getattr(mod, ALGOS[algo])(list(params), **hp)

    def step(self, opt, grads):
        opt.step(list(grads))
        return [self.to_numpy(p) for p in opt.params]


class NumpyAdapter(_NumpyLike):
    name = "numpy"


class CupyAdapter(_NumpyLike):
    name = "cupy"
    module_name = "gcore_cupy"

    def module(self):
        cupy = pytest.importorskip("cupy", reason="cupy is not installed")
        try:
            if cupy.cuda.runtime.getDeviceCount() == 0:
                pytest.skip("CuPy is installed but no CUDA device is visible")
        except Exception as err:
            pytest.skip(f"CuPy is installed but no CUDA device is usable: {err}")
        return pytest.importorskip("gcore_cupy")

    def array(self, a, dtype=None):
        cupy = self.module() and __import__("cupy")

        return cupy.asarray(np.array(a, dtype=dtype or np.float64))

    def to_numpy(self, x):
        return x.get()


class TorchAdapter:
    name = "torch"

    def __init__(self, path=None):
        self.path = path or {}

    def module(self):
        pytest.importorskip("torch")
        return pytest.importorskip("gcore_torch")

    def array(self, a, dtype=None):
        import torch

        t = torch.tensor(np.array(a, dtype=np.float64))
        return torch.nn.Parameter(t.to(getattr(torch, dtype or "float64")))

    def to_numpy(self, x):
        import torch

        return x.detach().to(torch.float64).numpy()

    def build(self, algo, params, **hp):
        return getattr(self.module(), ALGOS[algo])(list(params), **self.path, **hp)

    def step(self, opt, grads):
        import torch

        params = opt.param_groups[0]["params"]
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                g = g.detach() if isinstance(g, torch.Tensor) else torch.as_tensor(np.asarray(g))
                g = g.to(p.dtype).clone()
            p.grad = g
        opt.step()
        return [self.to_numpy(p) for p in params]


class JaxAdapter:
    name = "jax"

    def module(self):
        pytest.importorskip("jax")
        pytest.importorskip("optax")
        return pytest.importorskip("gcore_jax")

    def array(self, a, dtype=None):
        import jax.numpy as jnp

        return jnp.asarray(np.array(a, dtype=np.float64), dtype=getattr(jnp, dtype or "float32"))

    def to_numpy(self, x):
        return np.asarray(x, dtype=np.float64)

    def build(self, algo, params, **hp):
        mod = self.module()
        if "lr" in hp:
            hp["learning_rate"] = hp.pop("lr")
        hp.setdefault("learning_rate", 1e-3)
        if "betas" in hp:
            hp["b1"], hp["b2"] = hp.pop("betas")
        if "dampening" in hp:
            pytest.skip("optax.sgd / gcore_jax.sgd have no dampening")
        if "gc_axis" in hp:
            hp["layout"] = hp.pop("gc_axis")
        else:
            hp.setdefault("layout", "torch")  # the tests' arrays are output-first
        tx = getattr(mod, algo)(**hp)
        return {"tx": tx, "params": list(params), "state": tx.init(list(params))}

    def step(self, opt, grads):
        import jax.numpy as jnp
        import optax

        grads = [None if g is None else jnp.asarray(g) for g in grads]
        updates, opt["state"] = opt["tx"].update(list(grads), opt["state"], opt["params"])
        opt["params"] = optax.apply_updates(opt["params"], updates)
        return [self.to_numpy(p) for p in opt["params"]]


TORCH_PATHS = {
    "single": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
ADAPTERS = {
    "numpy": NumpyAdapter(),
    "torch": TorchAdapter(),
    "jax": JaxAdapter(),
    "cupy": CupyAdapter(),
}
# Stepping checks run on every torch path.
STEPPERS = {
    "numpy": NumpyAdapter(),
    **{f"torch-{k}": TorchAdapter(v) for k, v in TORCH_PATHS.items()},
    "torch-default": TorchAdapter(),
    "jax": JaxAdapter(),
    "cupy": CupyAdapter(),
}


@pytest.fixture(params=list(ADAPTERS))
def plugin(request):
    adapter = ADAPTERS[request.param]
    adapter.module()  # skips, naming the missing framework, before any of its arrays
    return adapter


@pytest.fixture(params=list(STEPPERS))
def stepper(request):
    adapter = STEPPERS[request.param]
    adapter.module()
    return adapter


def _w(ad, shape=(4, 3), dtype=None, fill=1.0):
    return ad.array(np.full(shape, fill), dtype)


# -- hyperparameters -----------------------------------------------------------------------
LR_NAME = r"(lr|learning_rate)"


@pytest.mark.parametrize("value", [-1e-3, math.nan, math.inf], ids=["negative", "nan", "inf"])
@pytest.mark.parametrize("algo", ["sgd", "adam"])
def test_lr_rejected(plugin, algo, value):
    with pytest.raises(ValueError, match=rf"{LR_NAME}=.* is invalid; allowed: .*>= 0"):
        plugin.build(algo, [_w(plugin)], lr=value)


@pytest.mark.parametrize(
    "betas", [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.999)], ids=["b1=1", "b2=1", "b1<0"]
)
def test_betas_rejected(plugin, betas):
    with pytest.raises(ValueError, match=r"(betas\[[01]\]|b[12])=.* is invalid; allowed: 0 <="):
        plugin.build("adam", [_w(plugin)], lr=1e-3, betas=betas)


@pytest.mark.parametrize("eps", [0.0, -1e-8], ids=["zero", "negative"])
def test_eps_rejected(plugin, eps):
    with pytest.raises(ValueError, match=r"eps=.* is invalid; allowed: eps > 0"):
        plugin.build("adam", [_w(plugin)], lr=1e-3, eps=eps)


def test_momentum_negative(plugin):
    with pytest.raises(ValueError, match=r"momentum=-0.5 is invalid; allowed: momentum >= 0"):
        plugin.build("sgd", [_w(plugin)], lr=0.1, momentum=-0.5)


def test_dampening_out_of_range(plugin):
    with pytest.raises(ValueError, match=r"allowed: 0 <= dampening <= 1"):
        plugin.build("sgd", [_w(plugin)], lr=0.1, momentum=0.9, dampening=1.5)


def test_nesterov_without_momentum(plugin):
    with pytest.raises(ValueError, match="nesterov=True requires momentum > 0"):
        plugin.build("sgd", [_w(plugin)], lr=0.1, nesterov=True)


def test_weight_decay_negative(plugin):
    with pytest.raises(ValueError, match=r"weight_decay=-0.1 is invalid; allowed: weight_decay"):
        plugin.build("adamw", [_w(plugin)], lr=1e-3, weight_decay=-0.1)


# -- GC options ----------------------------------------------------------------------------
def test_gc_where_unknown(plugin):
    with pytest.raises(ValueError, match=r"(gc_)?where='grad'.* is invalid; allowed: 'gradient'"):
        plugin.build("sgd", [_w(plugin)], lr=0.1, gc_where="grad")


def test_gc_value_unknown(plugin):
    """numpy/cupy take a gcore.GC or None, torch True/False/'conv_only', jax a bool."""
    with pytest.raises((TypeError, ValueError), match=r"gc='yes'.*(invalid|expected)"):
        plugin.build("sgd", [_w(plugin)], lr=0.1, gc="yes")


def _build_and_step(ad, axis):
    w = _w(ad)
    opt = ad.build("sgd", [w], lr=0.1, gc_axis=axis)
    ad.step(opt, [_w(ad)])


def test_axis_out_of_range(plugin):
    with pytest.raises(ValueError, match=r"axis.*5.* out of range|output axis 5"):
        _build_and_step(plugin, 5)


def test_axis_bool(plugin):
    with pytest.raises((TypeError, ValueError), match="True"):
        _build_and_step(plugin, True)


def test_jax_layout_unknown():
    gcore_jax = JaxAdapter().module()
    with pytest.raises(ValueError, match=r"layout='mxnet' is unknown; allowed: \['equinox'"):
        gcore_jax.centralize(layout="mxnet")
    with pytest.raises(ValueError, match="layout='mxnet' is unknown"):
        gcore_jax.adam(1e-3, layout="mxnet")


# -- dtypes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_integer_and_bool_params_rejected(plugin, dtype):
    if plugin.name == "torch":
        import torch

        w = torch.ones((4, 3), dtype=getattr(torch, dtype))
    elif plugin.name == "jax":
        import jax.numpy as jnp

        w = jnp.ones((4, 3), dtype=getattr(jnp, dtype))
    else:
        plugin.module()
        w = plugin.array(np.ones((4, 3)), dtype)
    with pytest.raises(TypeError, match=f"dtype .*{dtype}.*(floating|GC needs)"):
        opt = plugin.build("sgd", [w], lr=0.1)
        plugin.step(opt, [w])


def test_complex_params(plugin):
    """Core and JAX: accepted (the unit's complex mean is subtracted); NumPy, CuPy and
    torch reject complex parameters with TypeError."""
    if plugin.name == "torch":
        import torch

        w = torch.nn.Parameter(torch.zeros((2, 3), dtype=torch.complex64))
    elif plugin.name == "jax":
        import jax.numpy as jnp

        w = jnp.zeros((2, 3), dtype=jnp.complex64)
    else:
        plugin.module()
        w = plugin.array(np.zeros((2, 3)), np.complex128)
    if plugin.name == "jax":
        opt = plugin.build("adam", [w], lr=0.1)
        g = jnp.asarray(np.array([[1 + 1j, 2, 3j], [1j, 1j, 1j]], np.complex64))
        updates, _ = opt["tx"].update([g], opt["state"], opt["params"])
        u = np.asarray(updates[0])
        assert u.dtype == np.complex64 and np.isfinite(u).all()
        np.testing.assert_allclose(u[1], 0, atol=1e-7)  # a constant unit centralizes to 0
        return
    with pytest.raises(TypeError, match="complex"):
        plugin.build("sgd", [w], lr=0.1)


def test_grad_dtype_mismatch(plugin):
    w = _w(plugin, dtype="float32")
    opt = plugin.build("sgd", [w], lr=0.1)
    if plugin.name == "torch":
        import torch

        with pytest.raises(RuntimeError, match=r"grad_dtype|dtype"):  # torch's own check
            w.grad = torch.ones((4, 3), dtype=torch.float64)
    elif plugin.name == "jax":
        import jax.numpy as jnp

        # optax's convention: the update follows the gradient's dtype, apply_updates
        # casts it back to the parameter's.
        (new,) = plugin.step(opt, [jnp.ones((4, 3), jnp.bfloat16)])
        assert opt["params"][0].dtype == jnp.float32
        np.testing.assert_array_equal(new, 1.0)  # GC of a constant gradient is 0
    else:
        with pytest.raises(TypeError, match="grads\\[0\\] has dtype float64"):
            plugin.step(opt, [plugin.array(np.ones((4, 3)), np.float64)])


def test_grad_shape_mismatch(plugin):
    w = _w(plugin)
    opt = plugin.build("adam", [w], lr=0.1)
    if plugin.name == "torch":
        import torch

        with pytest.raises(RuntimeError, match="size"):  # torch's own check
            w.grad = torch.ones((1, 3), dtype=w.dtype)
        return
    with pytest.raises(ValueError, match=r"shape \(1, 3\)"):
        plugin.step(opt, [_w(plugin, (1, 3))])


@pytest.mark.parametrize("path", TORCH_PATHS)
def test_torch_grad_shape_changed_behind_autograd(path):
    """A gradient replaced through ``.data`` escapes torch's own check; the step
    catches it before any arithmetic."""
    TorchAdapter().module()
    import_ = TorchAdapter(TORCH_PATHS[path])
    w = _w(import_)
    opt = import_.build("sgd", [w], lr=0.1)
    w.grad = w.detach().clone()
    w.grad.data = w.detach()[:1].clone()
    with pytest.raises(
        ValueError, match=r"has shape \(4, 3\) but its gradient has shape \(1, 3\)"
    ):
        opt.step()


def test_torch_grad_device_mismatch():
    torch = pytest.importorskip("torch")
    w = torch.nn.Parameter(torch.ones(4, 3))
    with pytest.raises(RuntimeError, match="device"):  # torch refuses the assignment
        w.grad = torch.ones(4, 3, device="meta")


@pytest.mark.parametrize("path", TORCH_PATHS)
def test_torch_sparse_gradient(path):
    ad = TorchAdapter(TORCH_PATHS[path])
    ad.module()
    w = _w(ad)
    opt = ad.build("sgd", [w], lr=0.1)
    w.grad = w.detach().clone().to_sparse()
    with pytest.raises(RuntimeError, match=r"sparse gradient; gcore_torch\.SGD needs dense"):
        opt.step()


# -- None gradients, duplicates ----------------------------------------------------------------
def test_none_gradient(stepper):
    """numpy/cupy/torch: the parameter is skipped (state untouched). JAX: a ``None`` leaf
    does not match the parameters' tree, as in optax."""
    w, b = _w(stepper), _w(stepper, (3,), fill=2.0)
    opt = stepper.build("adam", [w, b], lr=0.1)
    if stepper.name == "jax":
        with pytest.raises(ValueError, match=r"structure|None"):
            stepper.step(opt, [np.ones((4, 3), np.float32), None])
        return
    new_w, new_b = stepper.step(opt, [np.arange(12.0).reshape(4, 3), None])
    np.testing.assert_array_equal(new_b, 2.0)
    assert not np.array_equal(new_w, 1.0)


def test_duplicate_params(plugin):
    w = _w(plugin)
    if plugin.name == "jax":
        pytest.skip("optax transformations are functional: a pytree leaf cannot be aliased")
    if plugin.name == "torch":  # after torch.optim's own warning
        same = r"\['params'\]\[1\] is the same tensor as"
        with pytest.raises(ValueError, match=same), pytest.warns(UserWarning, match="duplicate"):
            plugin.build("sgd", [w, w], lr=0.1)
        return
    with pytest.raises(ValueError, match=r"params\[1\] is params\[0\]"):
        plugin.build("sgd", [w, w], lr=0.1)


# -- shapes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(), (5,)], ids=["0d", "1d"])
def test_scalars_and_vectors_not_centralized(stepper, shape):
    w = stepper.array(np.ones(shape), "float32")
    opt = stepper.build("sgd", [w], lr=0.5)
    g = np.arange(1.0, 1.0 + math.prod(shape), dtype=np.float32).reshape(shape)
    (new,) = stepper.step(opt, [g])
    np.testing.assert_allclose(new, 1.0 - 0.5 * g, rtol=1e-6)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
@pytest.mark.parametrize("algo", ["sgd", "adam"])
def test_zero_size(stepper, algo, shape):
    w = stepper.array(np.ones(shape), "float32")
    opt = stepper.build(algo, [w], lr=0.1)
    (new,) = stepper.step(opt, [np.ones(shape, np.float32)])
    assert new.shape == shape


@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["no_l2", "l2"])
@pytest.mark.parametrize("algo", ["sgd", "adam"])
def test_single_weight_units_do_not_train(stepper, algo, weight_decay):
    """M = 1 (e.g. ``Linear(1, n)``): the centralized gradient is 0, the weight stays,
    also with L2 decay (the gradient GC sees is ``g + l2 * p``, rounded alike for the
    mean and the subtraction: an ulp left over becomes a step of ``lr`` under Adam)."""
    if weight_decay and stepper.name == "jax":
        pytest.skip("gcore_jax has no weight_decay: L2 is optax.add_decayed_weights, chained")
    rng = np.random.default_rng(0)
    start = rng.standard_normal((256, 1)).astype(np.float32)
    w = stepper.array(start, "float32")
    # gcore_jax: an explicit (pytree) layout; a layout name or int, like gcore_torch's
    # layouts of a model, leaves units of one weight alone (see the test below)
    explicit = {"gc_axis": [0]} if stepper.name == "jax" else {}
    opt = stepper.build(
        algo, [w], lr=0.1, **explicit, **({"weight_decay": weight_decay} if weight_decay else {})
    )
    for _ in range(3):
        g = rng.standard_normal((256, 1)).astype(np.float32)
        (new,) = stepper.step(opt, [g])
    np.testing.assert_array_equal(new, start)


def test_model_layouts_leave_units_of_one_weight_to_train():
    """A model's layouts (gcore_torch.param_groups / layouts; gcore_jax's layout names and
    ints) give no GC to a parameter whose units have one weight: GC would zero its
    gradient and freeze it (a diffusion model's Linear(1, dim) time embedding, ViT's cls
    token (1, 1, D) under the "flax" layout)."""
    torch = pytest.importorskip("torch")
    gcore_torch = pytest.importorskip("gcore_torch")
    model = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Linear(4, 3))
    lays = gcore_torch.layouts(model)
    assert lays["0.weight"] is None and lays["1.weight"] == (0, 1)
    # grouped ConvTranspose (in, out/groups, k): a unit holds in/groups x k weights
    assert gcore_torch.layouts(torch.nn.ConvTranspose1d(2, 4, 1, groups=2))["weight"] is None
    assert gcore_torch.layouts(torch.nn.ConvTranspose1d(4, 4, 1, groups=2))["weight"] == (1, 2)
    start = model[0].weight.detach().clone()
    means = model[1].weight.detach().mean(1)
    opt = gcore_torch.SGD(gcore_torch.param_groups(model), lr=0.1)
    model(torch.randn(8, 1)).square().sum().backward()
    opt.step()
    assert not torch.equal(model[0].weight.detach(), start)  # it trains
    torch.testing.assert_close(model[1].weight.detach().mean(1), means)  # GC-SGD there

    pytest.importorskip("jax")
    gcore_jax = pytest.importorskip("gcore_jax")
    import jax.numpy as jnp

    params = {"cls": jnp.zeros((1, 1, 6)), "Dense_0": {"kernel": jnp.ones((1, 6))},
              "Dense_1": {"kernel": jnp.ones((6, 3))}}  # fmt: skip
    assert gcore_jax.output_axes(params) == {
        "cls": None, "Dense_0": {"kernel": None}, "Dense_1": {"kernel": -1}
    }  # fmt: skip
    assert gcore_jax.output_axes(params, "torch")["Dense_0"]["kernel"] == 0  # (1, 6): M = 6
    grads = {"cls": jnp.arange(6.0).reshape(1, 1, 6), "Dense_0": {"kernel": jnp.ones((1, 6))},
             "Dense_1": {"kernel": jnp.ones((6, 3))}}  # fmt: skip
    tx = gcore_jax.sgd(1.0)
    upd, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(np.asarray(upd["cls"]), -np.asarray(grads["cls"]))
    np.testing.assert_array_equal(np.asarray(upd["Dense_1"]["kernel"]), 0.0)  # centralized


# -- checkpoints -------------------------------------------------------------------------------
def test_state_dict_of_another_model(plugin):
    a = plugin.build("adam", [_w(plugin)], lr=0.1)
    b = plugin.build("adam", [_w(plugin, (2, 3))], lr=0.1)
    plugin.step(b, [np.ones((2, 3))])
    if plugin.name == "jax":
        with pytest.raises(ValueError, match=r"state\.exp_avg has shape \(2, 3\)"):
            a["tx"].update([a["params"][0]], b["state"], a["params"])
        return
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        a.load_state_dict(b.state_dict())


def test_state_dict_of_another_algorithm(plugin):
    sgd = plugin.build("sgd", [_w(plugin)], lr=0.1, momentum=0.9)
    plugin.step(sgd, [np.ones((4, 3))])
    adam = plugin.build("adam", [_w(plugin)], lr=0.1)
    if plugin.name == "jax":
        with pytest.raises(TypeError, match="state is a TraceState"):
            adam["tx"].update([adam["params"][0]], sgd["state"], adam["params"])
        return
    with pytest.raises(ValueError, match=r"SGD|momentum_buffer|exp_avg|state"):
        adam.load_state_dict(sgd.state_dict())


# -- low precision, NaN/Inf --------------------------------------------------------------------
LOW = ["float16", "bfloat16"]


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_adam_never_nan(stepper, dtype):
    """The issue's example: eps=1e-8 is 0 in float16; the denominator is float32."""
    if dtype == "bfloat16" and stepper.name in ("numpy", "cupy"):
        pytest.skip(f"{stepper.name} has no bfloat16")
    w = stepper.array(np.zeros((2, 3)), dtype)
    opt = stepper.build("adam", [w], lr=1e-2)
    for g in ([[1, 1, 1], [1, 2, 3]], [[0, 0, 0], [0, 0, 0]], [[5, 5, 5], [1e-7, -1e-7, 0]]):
        (new,) = stepper.step(opt, [stepper.array(g, dtype)])
        assert np.isfinite(new).all(), (g, new)
    np.testing.assert_array_equal(new[0], 0.0)  # row 0 always centralizes to 0


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_nonfinite_gradient_spreads_to_its_unit(stepper, bad):
    w = stepper.array(np.ones((3, 4)), "float32")
    opt = stepper.build("sgd", [w], lr=0.1, momentum=0.9)
    g = np.ones((3, 4), np.float32)
    g[1, 2] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        (new,) = stepper.step(opt, [g])
    assert not np.isfinite(new[1]).any()
    np.testing.assert_array_equal(new[[0, 2]], 1.0)


# -- Keras 3 (gcore_keras) -------------------------------------------------------------------
def _keras():
    import os

    # Keras picks its backend at import; jax is the one the test environment installs.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    pytest.importorskip("keras")
    return pytest.importorskip("gcore_keras")


def _keras_step(opt, w, g):
    import keras

    v = keras.Variable(w)
    opt.build([v])
    opt.apply_gradients([(keras.ops.convert_to_tensor(g), v)])
    return np.asarray(keras.ops.convert_to_numpy(v.value), dtype=np.float64)


@pytest.mark.parametrize("value", [-1e-3, math.nan, math.inf], ids=["negative", "nan", "inf"])
@pytest.mark.parametrize("algo", ["SGD", "Adam"])
def test_keras_lr_rejected(algo, value):
    gcore_keras = _keras()
    with pytest.raises(ValueError, match=r"learning_rate=.* is invalid"):
        getattr(gcore_keras, algo)(value)


def test_keras_gc_options_unknown():
    gcore_keras = _keras()
    with pytest.raises(ValueError, match=r"gc='yes' is invalid; allowed: True, False"):
        gcore_keras.SGD(0.1, gc="yes")
    with pytest.raises(ValueError, match="where='grad' is invalid; allowed: 'gradient', 'update'"):
        gcore_keras.SGD(0.1, gc_where="grad")


def test_keras_grad_shape_mismatch():
    gcore_keras = _keras()
    w = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"shape"):
        _keras_step(gcore_keras.SGD(0.1), w, np.ones((1, 3), np.float32))


def test_keras_low_precision_adam_never_nan():
    gcore_keras = _keras()
    w = np.zeros((3, 2), np.float16)  # Dense kernel (in, out): units are columns
    new = _keras_step(gcore_keras.Adam(1e-2), w, np.array([[1, 1], [1, 2], [1, 3]], np.float16))
    assert np.isfinite(new).all()
    np.testing.assert_array_equal(new[:, 0], 0.0)  # the constant column does not move


def test_keras_nonfinite_gradient_spreads_to_its_unit():
    gcore_keras = _keras()
    g = np.ones((4, 3), np.float32)
    g[2, 1] = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        new = _keras_step(gcore_keras.SGD(0.1), np.ones((4, 3), np.float32), g)
    assert np.isnan(new[:, 1]).all()
    np.testing.assert_array_equal(new[:, [0, 2]], 1.0)


def test_keras_single_weight_units_do_not_train():
    """Dense(1 -> 4), M = 1: under the name rules the kernel is left alone and trains;
    with ``gc_axes`` given, the paper's definition (zero gradient) holds."""
    gcore_keras = _keras()
    g = np.arange(1.0, 5.0, dtype=np.float32).reshape(1, 4)
    w = np.full((1, 4), 0.5, np.float32)
    new = _keras_step(gcore_keras.SGD(0.1, momentum=0.9, gc_axes={".*": -1}), w, g)
    np.testing.assert_array_equal(new, 0.5)
    new = _keras_step(gcore_keras.SGD(0.1), w, g)
    np.testing.assert_allclose(new, 0.5 - 0.1 * g, rtol=1e-6)
