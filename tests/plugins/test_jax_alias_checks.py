"""gcore_jax.sgd/adam/adamw against the checks optax applies to its own sgd/adam/adamw.

optax's alias tests (``optax/_src/alias_test.py``) check that every optimizer: solves a
parabola and the Rosenbrock function in real and complex dtypes; keeps a state that
``optax.tree.map_params`` can walk; does not recompile on its second call; accepts
extra keyword arguments to ``update``; wraps in ``optax.inject_hyperparams``; stores
``mu`` / ``trace`` in an explicit dtype; returns updates in the gradient's dtype; keeps
its state's shapes and dtypes stable (under ``lax.cond``); and works inside
``optax.MultiSteps``. The same checks, written here for gcore_jax, each with GC off
(``gc=False``: optax's optimizer) and GC on.

With GC on the targets are matrices (Flax layout: each column is one output unit), so
that GC acts. GC constrains the problem: GC-SGD keeps each unit's weight mean, so it
converges to the optimum on the hyperplane through the starting means (for the
parabola, the projection of the optimum onto it); GC-Adam's steps do not keep the means
exactly, so it converges to the optimum on the hyperplane through its *final* means
(there the centralized gradient vanishes). Both are checked against an optimum computed
independently (in closed form, or by SciPy on each unit's reduced problem in float64).
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed")
optax = pytest.importorskip("optax", reason="optax is not installed")

import jax.numpy as jnp  # noqa: E402

import gcore_jax  # noqa: E402

#: name -> (gcore_jax factory, optax factory, keyword arguments), as optax's tests use.
OPTIMIZERS = {
    "sgd": (gcore_jax.sgd, optax.sgd, {"learning_rate": 1e-3, "momentum": 0.9}),
    "adam": (gcore_jax.adam, optax.adam, {"learning_rate": 1e-1}),
    "adamw": (gcore_jax.adamw, optax.adamw, {"learning_rate": 1e-1}),
}
GC = ["off", "on"]


def _make(name, gc, **overrides):
    factory, _, kwargs = OPTIMIZERS[name]
    return factory(**{**kwargs, **overrides}, gc=gc == "on")


@contextlib.contextmanager
def _x64(enabled):
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", bool(enabled))
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


@pytest.fixture(autouse=True)
def _float32_by_default():
    """These checks are about dtypes: run them without x64 whatever ran before."""
    with _x64(False):
        yield


class _CompileLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.compiled: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if "Finished XLA compilation" in message:
            self.compiled.append(message)


@contextlib.contextmanager
def _compilations():
    """Collect the XLA compilations done inside the block (jax.log_compiles)."""
    handler = _CompileLog()
    logger = logging.getLogger("jax")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles():
            yield handler.compiled
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _abs_sq(x):
    return jnp.real(x * jnp.conj(x))


# ---------------------------------------------------------------------------- targets


def _is_complex(dtype):
    return jnp.issubdtype(dtype, jnp.complexfloating)


def _parabola(dtype, gc):
    """Quadratic target. GC on: a (3, 2) matrix, two units (columns) of three weights."""
    if gc == "off":
        init = np.array([-1.0, 10.0, 1.0])
        final = np.array([1.0, -1.0, 1.0])
    else:
        init = np.array([[-1.0, 2.0], [10.0, 0.0], [1.0, -5.0]])
        final = np.array([[1.0, 0.5], [-1.0, 3.0], [1.0, -1.0]])
    if _is_complex(dtype):
        final = final * (1 + 1j)
        init = init + 0.5j * init[::-1]
    target = jnp.asarray(final, dtype)

    def objective(w):
        return jnp.sum(_abs_sq(w - target))

    def optimum(means):
        # On the hyperplanes {mean of unit j = means[j]}: the projection of `final`.
        return final - final.mean(axis=0) + means

    return jnp.asarray(init, dtype), final, objective, optimum


_A, _B = 1.0, 100.0


def _rosenbrock(dtype, gc):
    """Rosenbrock target. GC on: a (2, 3) matrix, rows x and y, each column (x_j, y_j)
    one unit with its own Rosenbrock term; the units start at different points."""
    a = _A * (1 + 1j) if _is_complex(dtype) else _A
    if gc == "off":
        init = np.array([0.0, 0.0])
        final = np.array([a, a**2])
    else:
        init = np.array([[0.0, 0.2, -0.3], [0.0, 0.4, 0.1]])
        if _is_complex(dtype):
            init = init + 0.1j * init[::-1]
        final = None

    def objective(w):
        return jnp.sum(_abs_sq(a - w[0]) + _B * _abs_sq(w[1] - w[0] ** 2))

    def optimum(means, start):
        return _rosenbrock_on_hyperplanes(a, means, start)

    return jnp.asarray(init, dtype), final, objective, optimum


def _rosenbrock_on_hyperplanes(a, means, start):
    """Each unit's minimum with x + y = 2 m fixed: min over x of
    |a - x|^2 + b |2m - x - x^2|^2 (x complex: over its real and imaginary parts),
    the local minimum next to ``start`` (float64 SciPy)."""
    scipy_optimize = pytest.importorskip("scipy.optimize", reason="scipy is not installed")
    out = np.zeros((2, len(means)), dtype=np.result_type(means, start))
    for j, m in enumerate(means):
        s = 2 * m

        def h(v, s=s):
            x = v[0] + 1j * v[1]
            return abs(a - x) ** 2 + _B * abs(s - x - x * x) ** 2

        x0 = start[0, j]
        res = scipy_optimize.minimize(
            h, [np.real(x0), np.imag(x0)], method="Nelder-Mead",
            options={"xatol": 1e-12, "fatol": 1e-14, "maxiter": 20000},
        )  # fmt: skip
        x = res.x[0] + 1j * res.x[1]
        out[0, j] = x if np.iscomplexobj(out) else x.real
        out[1, j] = (s - x) if np.iscomplexobj(out) else (s - x).real
    return out


def _step_fn(opt, objective):
    @jax.jit
    def step(params, state):
        grads = jax.grad(objective)(params)
        grads = jnp.conj(grads)  # complex: the descent direction is the conjugate
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


# ------------------------------------------------------------------ the optax checks


@pytest.mark.parametrize("dtype", ["float32", "complex64"])
@pytest.mark.parametrize("target", ["parabola", "rosenbrock"])
@pytest.mark.parametrize("gc", GC)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimization(name, gc, target, dtype):
    """Solves the target (GC on: the constrained problem), with a state that
    optax.tree.map_params walks and no recompilation on the second call."""
    dtype = jnp.dtype(dtype)
    opt = _make(name, gc)
    init, final, objective, optimum = (_parabola if target == "parabola" else _rosenbrock)(
        dtype, gc
    )
    step = _step_fn(opt, objective)
    params = init
    state = opt.init(params)
    state = optax.tree.map_params(opt, lambda v: v, state)  # a no-op map must work
    for it in range(10_000):
        if it == 1:
            with _compilations() as compiled:
                params, state = step(params, state)
            assert not compiled, f"recompiled on the second call: {compiled}"
        else:
            params, state = step(params, state)
    got = np.asarray(params)
    assert got.dtype == dtype
    if gc == "off":
        np.testing.assert_allclose(got, final, rtol=3e-2, atol=3e-2)
        return
    start_means = np.asarray(init).mean(axis=0)
    end_means = got.mean(axis=0)
    if name == "sgd":
        # GC-SGD keeps every unit's weight mean: the optimum on the starting hyperplanes
        np.testing.assert_allclose(end_means, start_means, atol=1e-5)
        means = start_means
    else:
        means = end_means  # GC-Adam: stationary on the hyperplanes it ended on
    want = optimum(means) if target == "parabola" else optimum(means, got)
    np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2)
    if target == "parabola" and name == "sgd":
        # GC changed the optimum: the unconstrained one is not reached
        assert np.max(np.abs(got - final)) > 0.5


def _shapes(gc):
    # GC on: matrices, so that GC acts (1-D parameters are never centralized)
    return [(2,)] if gc == "off" else [(3, 2), (2, 5, 2)]


def _params(gc, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for s in _shapes(gc):
        x = rng.standard_normal(s)
        if _is_complex(jnp.dtype(dtype)):
            x = x + 1j * rng.standard_normal(s)
        out.append(jnp.asarray(x, dtype))
    return out


def _loss(params):
    return sum(jnp.sum(_abs_sq(p - 1.0) * (1.0 + jnp.arange(p.size).reshape(p.shape)))
               for p in params)  # fmt: skip


@pytest.mark.parametrize("gc", GC)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_tree_map_params(name, gc):
    """optax.tree.map_params finds every parameter-shaped tree in the state (mu, nu,
    trace) and nothing else, also through optax's wrappers."""
    params = _params(gc)
    wrapped = {
        "plain": _make(name, gc),
        "inject": optax.inject_hyperparams(OPTIMIZERS[name][0])(
            **OPTIMIZERS[name][2], gc=gc == "on"
        ),
        "multi_steps": optax.MultiSteps(_make(name, gc), every_k_schedule=2),
        "chain": optax.chain(optax.clip_by_global_norm(1.0), _make(name, gc)),
    }
    for label, opt in wrapped.items():
        state = opt.init(params)
        state = jax.jit(opt.update)(jax.grad(_loss)(params), state, params)[1]
        same = optax.tree.map_params(opt, lambda v: v, state)
        assert jax.tree.structure(same) == jax.tree.structure(state), label
        marked = optax.tree.map_params(
            opt, lambda v: "P", state, transform_non_params=lambda _: "N"
        )
        flags = jax.tree.leaves(marked)
        # optax's own optimizer of the same name marks the same leaves
        ref_opt = {
            "plain": OPTIMIZERS[name][1](**OPTIMIZERS[name][2]),
            "inject": optax.inject_hyperparams(OPTIMIZERS[name][1])(**OPTIMIZERS[name][2]),
            "multi_steps": optax.MultiSteps(
                OPTIMIZERS[name][1](**OPTIMIZERS[name][2]), every_k_schedule=2
            ),
            "chain": optax.chain(
                optax.clip_by_global_norm(1.0), OPTIMIZERS[name][1](**OPTIMIZERS[name][2])
            ),
        }[label]
        ref = optax.tree.map_params(
            ref_opt, lambda v: "P", ref_opt.init(params), transform_non_params=lambda _: "N"
        )
        if label == "inject":  # eps_root is not a hyperparameter here (default None)
            marked, ref = marked.inner_state, ref.inner_state
            flags = jax.tree.leaves(marked)
        assert flags == jax.tree.leaves(ref), label
        n_trees = {"sgd": 1, "adam": 2, "adamw": 2}[name] + (label == "multi_steps")
        assert flags.count("P") == n_trees * len(params), label


@pytest.mark.parametrize("dtype", ["float32", "complex64"])
@pytest.mark.parametrize("gc", GC)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_no_recompilation_on_second_call(name, gc, dtype):
    opt = _make(name, gc)
    params = _params(gc, dtype)

    @jax.jit
    def step(params, state):
        grads = jax.tree.map(jnp.conj, jax.grad(_loss)(params))
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params, state = step(params, opt.init(params))
    with _compilations() as compiled:
        params, state = step(params, state)
        params, state = step(params, state)
    assert not compiled, compiled


@pytest.mark.parametrize("gc", GC)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_accepts_extra_args(name, gc):
    """update(..., some_unexpected_kwarg=1) is accepted (GradientTransformationExtraArgs),
    with no need for optax.with_extra_args_support."""
    opt = _make(name, gc)
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    params = _params(gc)

    @jax.jit
    def step(params, state):
        grads = jax.grad(_loss)(params)
        updates, state = opt.update(grads, state, params, unexpected_extra_arg=1, value=0.0)
        return optax.apply_updates(params, updates), state

    want = params
    state = opt.init(params)
    plain_state = opt.init(params)
    for _ in range(2):
        params, state = step(params, state)
        u, plain_state = opt.update(jax.grad(_loss)(want), plain_state, want)
        want = optax.apply_updates(want, u)
    for a, b in zip(params, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    for tx in (gcore_jax.centralize(), gcore_jax.scale_by_rule(gcore_jax_rule(name))):
        s = tx.init(params)
        tx.update(params, s, params, unexpected_extra_arg=1)


def gcore_jax_rule(name):
    import gcore

    return {"sgd": gcore.SGD(lr=1.0), "adam": gcore.Adam(lr=1.0), "adamw": gcore.AdamW()}[name]


@pytest.mark.parametrize("gc", GC)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_inject_hyperparams(name, gc):
    """Wrapped in optax.inject_hyperparams (init and update jitted): the same updates
    and the same inner state as the plain optimizer."""
    factory, _, kwargs = OPTIMIZERS[name]
    opt = factory(**kwargs, gc=gc == "on")
    injected = optax.inject_hyperparams(factory)(**kwargs, gc=gc == "on")
    params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
    grads = [jnp.asarray(np.arange(6.0).reshape(2, 3), jnp.float32), -jnp.ones((2, 5, 2))]
    state = jax.jit(opt.init)(params)
    updates, new_state = jax.jit(opt.update)(grads, state, params)
    state_i = jax.jit(injected.init)(params)
    updates_i, new_state_i = jax.jit(injected.update)(grads, state_i, params)
    for a, b in zip(jax.tree.leaves(updates_i), jax.tree.leaves(updates), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3)
    assert jax.tree.structure(new_state_i.inner_state) == jax.tree.structure(new_state)
    for a, b in zip(
        jax.tree.leaves(new_state_i.inner_state), jax.tree.leaves(new_state), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4)
    if gc == "on":  # GC acted: the first kernel's update has zero column means
        u = np.asarray(updates_i[0])
        if name == "adamw":  # ... but for the decoupled decay, which is not centralized
            u = u + 0.1 * 1e-4 * np.asarray(params[0])
        np.testing.assert_allclose(u.mean(axis=0), 0, atol=1e-6)


_DTYPES = ["bfloat16", "float32", "complex64", None]


@pytest.mark.parametrize("state_dtype", _DTYPES, ids=str)
@pytest.mark.parametrize("params_dtype", _DTYPES, ids=str)
@pytest.mark.parametrize("gc", GC)
@pytest.mark.parametrize("name", ["sgd_mom", "adam", "adamw"])
def test_explicit_dtype(name, gc, params_dtype, state_dtype):
    """accumulator_dtype (sgd) / mu_dtype (adam, adamw) set the stored ``trace`` /
    ``mu`` dtype, found by optax.tree.get; it stays so after an update."""
    if name == "sgd_mom":
        opt = gcore_jax.sgd(0.1, momentum=0.9, accumulator_dtype=state_dtype, gc=gc == "on")
        attribute = "trace"
    else:
        opt = getattr(gcore_jax, name)(0.1, mu_dtype=state_dtype, gc=gc == "on")
        attribute = "mu"
    pdtype = jax.dtypes.canonicalize_dtype(params_dtype)
    shape = (2,) if gc == "off" else (3, 2)
    params = jnp.zeros(shape, pdtype)
    state = opt.init(params)
    want = pdtype if state_dtype is None else jax.dtypes.canonicalize_dtype(state_dtype)
    assert optax.tree.get(state, attribute).dtype == want
    if _is_complex(pdtype) != _is_complex(want):
        return  # a complex moment for real parameters (or back): only init is defined
    grads = jnp.asarray(np.arange(np.prod(shape)).reshape(shape) - 2.0, pdtype)
    updates, state = jax.jit(opt.update)(grads, state, params)
    assert optax.tree.get(state, attribute).dtype == want
    assert updates.dtype == pdtype
    assert bool(jnp.all(jnp.isfinite(updates)))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("gc", GC)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_preserve_dtype(name, gc, dtype):
    """Updates come back in the gradients' dtype."""
    opt = _make(name, gc)
    shape = (2,) if gc == "off" else (3, 2)
    params = jnp.asarray(np.arange(1.0, 1.0 + np.prod(shape)).reshape(shape), dtype)
    grads = jax.grad(lambda x: jnp.sum(x**2))(params)
    state = jax.jit(opt.init)(params)
    updates, _ = jax.jit(opt.update)(grads, state, params)
    assert updates.dtype == grads.dtype


@pytest.mark.parametrize(
    "dtype", ["float16", "bfloat16", "float32", "float64", "complex64", "complex128"]
)
@pytest.mark.parametrize("gc", GC)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_shape_dtype_shard_stability(name, gc, dtype):
    """The new state has the old state's shapes, dtypes (weak types included) and
    shardings: lax.cond between them traces."""
    with _x64(dtype in ("float64", "complex128")):
        dtype = jnp.dtype(dtype)
        opt = _make(name, gc)
        init, _, objective, _ = _parabola(dtype, gc)

        @jax.jit
        def step(params, state):
            grads = jnp.conj(jax.grad(objective)(params))
            cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
            updates, state = jax.lax.cond(
                cond, lambda: opt.update(grads, state, params), lambda: (params, state)
            )
            return optax.apply_updates(params, updates), state

        params = init
        state = opt.init(params)
        for _ in range(2):
            params, new_state = step(params, state)
            assert params.dtype == dtype
            old = jax.tree.leaves(state)
            new = jax.tree.leaves(new_state)
            assert [(x.shape, x.dtype) for x in new] == [(x.shape, x.dtype) for x in old]
            assert [x.sharding for x in new] == [x.sharding for x in old]
            cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
            state = jax.lax.cond(cond, lambda s=state: s, lambda n=new_state: n)
        assert bool(jnp.all(jnp.isfinite(params)))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("gc", GC)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_gradient_accumulation(name, gc, dtype):
    """Inside optax.MultiSteps: zero updates until the k-th step, then one step on the
    mean gradient."""
    opt = optax.MultiSteps(_make(name, gc), every_k_schedule=4)
    # values whose centralized gradient has no (near-)zero entry: there Adam's update
    # m/(sqrt(v) + eps) is +-lr for any rounding residue, in either path
    values = [1.0, -2.0] if gc == "off" else [[1.0, -2.0], [3.0, 0.5], [-4.0, 6.0]]
    params = jnp.asarray(values, dtype)
    shape = params.shape
    grads = jax.grad(lambda x: jnp.sum(x**2))(params)
    state = jax.jit(opt.init)(params)
    updates, state = jax.jit(opt.update)(grads, state, params)
    np.testing.assert_array_equal(np.asarray(updates), np.zeros(shape))
    assert updates.dtype == grads.dtype
    for _ in range(3):
        updates, state = jax.jit(opt.update)(grads, state, params)
    want, _ = _make(name, gc).update(grads, _make(name, gc).init(params), params)
    tol = 1e-2 if dtype == "bfloat16" else 1e-6
    np.testing.assert_allclose(
        np.asarray(updates, np.float32), np.asarray(want, np.float32), rtol=tol, atol=tol
    )
    assert np.any(np.asarray(updates, np.float32) != 0)
