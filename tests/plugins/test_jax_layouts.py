"""gcore_jax layouts of real model libraries: the registry, embeddings, several output axes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed")
optax = pytest.importorskip("optax", reason="optax is not installed")

import jax.numpy as jnp  # noqa: E402

import gcore  # noqa: E402
import gcore_jax  # noqa: E402
import reference as ref  # noqa: E402


def _unit_means(x, axes):
    """Mean of each output unit; ``axes`` an int or a tuple of output axes."""
    x = np.asarray(x, dtype=np.complex128 if np.iscomplexobj(x) else np.float64)
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    axes = tuple(a % x.ndim for a in axes)
    rest = tuple(a for a in range(x.ndim) if a not in axes)
    return x.mean(axis=rest)


def _rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _one_update(tx, grads, params=None):
    params = grads if params is None else params
    return tx.update(grads, tx.init(params), params)[0]


# ------------------------------------------------------------------ embeddings


def test_flax_linen_embedding_is_left_alone():
    nn = pytest.importorskip("flax.linen", reason="flax is not installed")

    class LM(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(11, 6)(tokens)
            return nn.Dense(4)(x)

    tokens = jnp.asarray([[1, 2, 3], [4, 5, 10]])
    model = LM()
    params = model.init(jax.random.key(0), tokens)
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, tokens) ** 2))(params)
    axes = gcore_jax.output_axes(params)
    assert axes["params"]["Embed_0"]["embedding"] is None
    assert axes["params"]["Dense_0"]["kernel"] == -1
    ours = _one_update(gcore_jax.adam(0.1), grads, params)["params"]
    plain = _one_update(gcore_jax.adam(0.1, gc=False), grads, params)["params"]
    # the embedding gets plain Adam's update, the Dense kernel GC-Adam's
    np.testing.assert_array_equal(
        np.asarray(ours["Embed_0"]["embedding"]), np.asarray(plain["Embed_0"]["embedding"])
    )
    assert not np.allclose(np.asarray(ours["Dense_0"]["kernel"]), plain["Dense_0"]["kernel"])
    # the rows of unused tokens (0, 6..9) have zero gradient and stay put
    emb = np.asarray(grads["params"]["Embed_0"]["embedding"])
    assert np.all(emb[[0, 6, 7, 8, 9]] == 0)
    np.testing.assert_array_equal(np.asarray(ours["Embed_0"]["embedding"])[[0, 6, 7, 8, 9]], 0)


def test_flax_nnx_embedding_is_left_alone_in_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx", reason="flax is not installed")

    class LM(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(11, 6, rngs=rngs)
            self.head = nnx.Linear(6, 4, rngs=rngs)

        def __call__(self, tokens):
            return self.head(self.embed(tokens))

    tokens = jnp.asarray([[1, 2, 3], [4, 5, 10]])
    model = LM(nnx.Rngs(0))
    before = np.asarray(model.embed.embedding[...])
    unused = before[[0, 6, 7, 8, 9]]
    head_means = _unit_means(model.head.kernel[...], -1)
    opt = nnx.Optimizer(model, gcore_jax.sgd(0.02, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def train_step(m, o):
        grads = nnx.grad(lambda m: jnp.sum((m(tokens) - 1.0) ** 2))(m)
        o.update(m, grads)

    for _ in range(3):
        train_step(model, opt)
    emb = np.asarray(model.embed.embedding[...])
    # GC per feature column across the vocabulary would move the unused rows too
    np.testing.assert_array_equal(emb[[0, 6, 7, 8, 9]], unused)
    assert not np.allclose(emb[[1, 2, 3]], before[[1, 2, 3]])  # used rows trained
    np.testing.assert_allclose(_unit_means(model.head.kernel[...], -1), head_means, atol=1e-6)


def test_boxed_flax_params_get_the_axes_of_bare_ones():
    """nnx.split / nnx.state trees (each leaf in an nnx.Variable state) and linen params
    boxed by nn.with_partitioning hold the array at a trailing ``.value``: the registry
    matched none of them, so embedding tables and attention projections were centralized
    along the plain "flax" axis."""
    nnx = pytest.importorskip("flax.nnx", reason="flax is not installed")
    nn = pytest.importorskip("flax.linen", reason="flax is not installed")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.emb = nnx.Embed(20, 8, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(
                num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs
            )
            self.proj = nnx.LinearGeneral(8, (2, 3), rngs=rngs)

    _, state = nnx.split(Net(nnx.Rngs(0)), nnx.Param)
    boxed = jax.tree.leaves(gcore_jax.output_axes(state), is_leaf=lambda x: x is None)
    bare = jax.tree.leaves(
        gcore_jax.output_axes(nnx.to_pure_dict(state)), is_leaf=lambda x: x is None
    )
    assert boxed == bare
    axes = gcore_jax.output_axes(nnx.to_pure_dict(state))
    assert axes["emb"]["embedding"] is None
    assert axes["attn"]["query"]["kernel"] == (1, 2)
    assert axes["attn"]["query"]["bias"] is None
    assert axes["proj"]["bias"] is None  # (2, 3): a bias, whatever its shape
    # one update on the boxed tree: the table and the biases get plain SGD's update
    grads = jax.tree.map(lambda x: jnp.ones_like(x) + jnp.arange(x.size).reshape(x.shape), state)
    upd = gcore_jax.sgd(1.0).update(grads, gcore_jax.sgd(1.0).init(state), state)[0]
    for path in (("emb", "embedding"), ("attn", "value", "bias"), ("proj", "bias")):
        u, g = upd, grads
        for k in path:
            u, g = u[k], g[k]
        np.testing.assert_array_equal(np.asarray(u[...]), -np.asarray(g[...]))
    q = np.asarray(upd["attn"]["query"]["kernel"][...])
    np.testing.assert_allclose(q.mean(0), 0, atol=1e-5)  # one unit per (head, feature)

    class Lin(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            init = nn.with_partitioning(nn.initializers.normal(), (None, "model"))
            return nn.Embed(10, 4, embedding_init=init)(tokens).sum()

    params = Lin().init(jax.random.key(0), jnp.asarray([1, 2]))["params"]
    assert gcore_jax.output_axes(params)["Embed_0"]["embedding"].value is None

    # a field named ``value`` of anything but a Flax box is a name like any other
    @jax.tree_util.register_dataclass
    @dataclasses.dataclass
    class QKV:
        query: jax.Array
        value: jax.Array

    tree = {"attn": QKV(_rand((8, 2, 4)), _rand((8, 2, 4)))}
    entry = gcore_jax.register_layout(QKV, "value", axis=(-2, -1))
    try:
        axes = gcore_jax.output_axes(tree)["attn"]
    finally:
        gcore_jax.unregister_layout(entry)
    assert (axes.query, axes.value) == (-1, (1, 2))


def test_haiku_style_embeddings_and_conv_transpose_by_name():
    params = {
        "embed": {"embeddings": _rand((10, 4))},
        "conv2_d_transpose": {"w": _rand((3, 3, 5, 2)), "b": _rand((5,))},
        "conv2_d": {"w": _rand((3, 3, 2, 5))},
    }
    axes = gcore_jax.output_axes(params)
    assert axes["embed"]["embeddings"] is None
    assert axes["conv2_d_transpose"]["w"] == -2  # Haiku ConvTranspose: (k..., out, in)
    assert axes["conv2_d"]["w"] == -1
    out = _one_update(gcore_jax.centralize(), params)
    np.testing.assert_allclose(_unit_means(out["conv2_d_transpose"]["w"], -2), 0, atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(out["embed"]["embeddings"]), params["embed"]["embeddings"]
    )


def test_including_embeddings_per_optimizer_and_globally():
    """Two documented ways to centralize an embedding table (per token row, as
    gcore_torch with exclude=())."""
    params = {"Embed_0": {"embedding": _rand((10, 4))}, "Dense_0": {"kernel": _rand((4, 3))}}
    # 1. per optimizer: edit the resolved axes and pass them as the layout
    axes = gcore_jax.output_axes(params)
    axes["Embed_0"]["embedding"] = 0
    out = _one_update(gcore_jax.centralize(layout=axes), params)
    np.testing.assert_allclose(_unit_means(out["Embed_0"]["embedding"], 0), 0, atol=1e-6)
    np.testing.assert_allclose(_unit_means(out["Dense_0"]["kernel"], -1), 0, atol=1e-6)
    # 2. globally: a later registration wins over the built-in one
    entry = gcore_jax.register_layout("embedding", axis=0)
    try:
        out2 = _one_update(gcore_jax.centralize(), params)
    finally:
        gcore_jax.unregister_layout(entry)
    np.testing.assert_array_equal(
        np.asarray(out2["Embed_0"]["embedding"]), out["Embed_0"]["embedding"]
    )
    # and back to the default
    assert gcore_jax.output_axes(params)["Embed_0"]["embedding"] is None


def test_same_default_exclusion_as_gcore_torch():
    torch = pytest.importorskip("torch")  # first: gcore_torch's guard raises ImportError
    torch_api = pytest.importorskip("gcore_torch", reason="gcore_torch is not importable")
    assert torch.nn.Embedding in torch_api.DEFAULT_EXCLUDE
    entries = {(e.where, e.param): e.axis for e in gcore_jax.registered_layouts()}
    assert entries[("embedding", None)] is None
    assert entries[("embeddings", None)] is None
    assert entries[("equinox.nn.Embedding", "weight")] is None


# -------------------------------------------------------------------- Equinox


def test_equinox_layers_by_type_whatever_the_layout_name():
    eqx = pytest.importorskip("equinox", reason="equinox is not installed")
    keys = jax.random.split(jax.random.key(0), 4)
    model = [
        eqx.nn.Embedding(10, 4, key=keys[0]),
        eqx.nn.Linear(4, 3, key=keys[1]),
        eqx.nn.Conv2d(2, 5, 3, key=keys[2]),
        eqx.nn.ConvTranspose2d(2, 5, 3, key=keys[3]),
    ]
    params = eqx.filter(model, eqx.is_array)
    for layout in ("flax", "equinox", -1):
        axes = gcore_jax.output_axes(params, layout)
        assert axes[0].weight is None
        assert axes[1].weight == 0 and axes[2].weight == 0 and axes[3].weight == 0
        assert axes[1].bias is None
    grads = jax.tree.map(lambda x: _rand(x.shape, 1), params)
    out = _one_update(gcore_jax.sgd(1.0), grads, params)
    for layer in out[1:]:
        np.testing.assert_allclose(_unit_means(layer.weight, 0), 0, atol=1e-6)
    # the embedding: plain SGD
    np.testing.assert_allclose(np.asarray(out[0].weight), -np.asarray(grads[0].weight), rtol=1e-6)


def test_equinox_training_keeps_linear_unit_means():
    eqx = pytest.importorskip("equinox", reason="equinox is not installed")
    model = eqx.nn.MLP(3, 2, 8, 1, key=jax.random.key(1))
    params, static = eqx.partition(model, eqx.is_array)
    tx = gcore_jax.sgd(0.1, momentum=0.9)
    state = tx.init(params)
    x = _rand((16, 3), 2)
    before = [_unit_means(layer.weight, 0) for layer in model.layers]

    @jax.jit
    def step(params, state):
        def loss(p):
            m = eqx.combine(p, static)
            return jnp.mean((jax.vmap(m)(x) - 1.0) ** 2)

        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(5):
        params, state = step(params, state)
    model = eqx.combine(params, static)
    for layer, mean in zip(model.layers, before, strict=True):
        np.testing.assert_allclose(_unit_means(layer.weight, 0), mean, atol=1e-6)
    assert not np.allclose(np.asarray(model.layers[0].bias), 0)


# ----------------------------------------------------------- attention projections


def test_flax_attention_projections_have_two_output_axes():
    nn = pytest.importorskip("flax.linen", reason="flax is not installed")
    att = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
    x = _rand((2, 3, 4))
    params = att.init(jax.random.key(0), x)
    grads = jax.grad(lambda p: jnp.sum(att.apply(p, x) ** 2 * jnp.arange(4.0)))(params)
    axes = gcore_jax.output_axes(params)["params"]
    for proj in ("query", "key", "value"):
        assert axes[proj]["kernel"] == (1, 2)  # (in, heads, head_dim)
        assert axes[proj]["bias"] is None  # (heads, head_dim) is a bias
    assert axes["out"]["kernel"] == -1  # (heads, head_dim, features)
    out = _one_update(gcore_jax.centralize(), grads)["params"]
    for proj in ("query", "key", "value"):
        g, o = grads["params"][proj]["kernel"], out[proj]["kernel"]
        np.testing.assert_allclose(_unit_means(o, (1, 2)), 0, atol=1e-6)
        # = centralizing the (in, heads * head_dim) matrix per column
        flat = ref.centralize(np.asarray(g).reshape(g.shape[0], -1), -1)
        np.testing.assert_allclose(np.asarray(o).reshape(flat.shape), flat, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(out[proj]["bias"]), grads["params"][proj]["bias"])
    np.testing.assert_allclose(_unit_means(out["out"]["kernel"], -1), 0, atol=1e-6)


@pytest.mark.parametrize("axes", [(0, 2), (-1, 1), (1,)])
def test_tuple_axes_in_pytree_and_callable_layouts(axes):
    g = {"w": _rand((3, 4, 5))}
    for layout in ({"w": axes}, lambda path, leaf: axes, axes):
        out = _one_update(gcore_jax.centralize(layout=layout), g)["w"]
        np.testing.assert_allclose(_unit_means(out, axes), 0, atol=1e-6)
        moved = np.moveaxis(np.asarray(g["w"]), [a % 3 for a in axes], range(-len(axes), 0))
        want = moved - moved.reshape(-1, *moved.shape[-len(axes) :]).mean(axis=0)
        got = np.moveaxis(np.asarray(out), [a % 3 for a in axes], range(-len(axes), 0))
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_tuple_axes_errors():
    g = {"w": _rand((3, 4))}
    with pytest.raises(ValueError, match="every axis is an output axis"):
        gcore_jax.centralize(layout={"w": (0, 1)}).init(g)
    with pytest.raises(ValueError, match="repeated output axes"):
        gcore_jax.centralize(layout={"w": (1, -1)}).init(g)
    with pytest.raises(ValueError, match="output axis 2"):
        gcore_jax.centralize(layout={"w": (0, 2)}).init(g)


# ------------------------------------------------------------------- registry API


def test_register_layout_patterns_types_ndim_and_precedence():
    params = {
        "ConvTranspose_0": {"kernel": _rand((3, 3, 8, 4))},
        "Conv_0": {"kernel": _rand((3, 3, 4, 8))},
        "blocks": [{"proj": {"kernel": _rand((4, 8))}}, {"proj": {"kernel": _rand((4, 2, 8))}}],
    }
    assert gcore_jax.output_axes(params)["ConvTranspose_0"]["kernel"] == -1
    entries = [
        gcore_jax.register_layout("ConvTranspose_*/kernel", axis=-2),
        gcore_jax.register_layout("blocks/*/proj/kernel", axis=(-2, -1), ndim=3),
    ]
    try:
        axes = gcore_jax.output_axes(params)
        assert axes["ConvTranspose_0"]["kernel"] == -2
        assert axes["Conv_0"]["kernel"] == -1
        assert axes["blocks"][0]["proj"]["kernel"] == -1  # ndim 2: not matched
        assert axes["blocks"][1]["proj"]["kernel"] == (1, 2)
        # a later entry wins
        entries.append(gcore_jax.register_layout("ConvTranspose_0", "kernel", axis=None))
        assert gcore_jax.output_axes(params)["ConvTranspose_0"]["kernel"] is None
        # explicit pytree / callable layouts are taken as given
        assert gcore_jax.output_axes(params, lambda p, x: -1)["ConvTranspose_0"]["kernel"] == -1
        # the torch name and ints consult the registry too
        assert gcore_jax.output_axes(params, "torch")["ConvTranspose_0"]["kernel"] is None
        out = _one_update(gcore_jax.adam(0.1), params)
        assert out["ConvTranspose_0"]["kernel"].shape == (3, 3, 8, 4)
    finally:
        for e in entries:
            gcore_jax.unregister_layout(e)
    assert gcore_jax.output_axes(params)["ConvTranspose_0"]["kernel"] == -1


def test_register_layout_with_a_class():
    class Block:  # a custom pytree node holding an (out, in) weight
        def __init__(self, weight):
            self.weight = weight

    jax.tree_util.register_pytree_with_keys(
        Block,
        lambda b: (((jax.tree_util.GetAttrKey("weight"), b.weight),), None),
        lambda _, children: Block(*children),
    )
    params = {"a": Block(_rand((3, 5))), "b": {"weight": _rand((3, 5))}}
    entry = gcore_jax.register_layout(Block, "weight", axis=0)
    try:
        axes = gcore_jax.output_axes(params)
        assert axes["a"].weight == 0
        assert axes["b"]["weight"] == -1  # same name, not a Block
    finally:
        gcore_jax.unregister_layout(entry)


@pytest.mark.parametrize(
    ("args", "kw", "exc", "match"),
    [
        (("x",), {"axis": "last"}, TypeError, "axis='last'"),
        (("x",), {"axis": (0, 0)}, ValueError, "repeated"),
        (("",), {"axis": 0}, ValueError, "matches nothing"),
        ((3,), {"axis": 0}, TypeError, "where=3"),
        (("x", 2), {"axis": 0}, TypeError, "param=2"),
        (("x",), {"axis": 0, "ndim": 2.0}, TypeError, "ndim"),
    ],
)
def test_register_layout_errors(args, kw, exc, match):
    with pytest.raises(exc, match=match):
        gcore_jax.register_layout(*args, **kw)


def test_unregister_unknown_entry():
    entry = gcore_jax.register_layout("nothing_here", axis=0)
    gcore_jax.unregister_layout(entry)
    with pytest.raises(ValueError, match="not registered"):
        gcore_jax.unregister_layout(entry)


def test_layout_name_alone_is_unchanged_for_plain_kernels():
    """The registry only changes what it matches: a CNN's kernels keep the name's axis."""
    params = {"Conv_0": {"kernel": _rand((3, 3, 2, 4)), "bias": _rand((4,))},
              "Dense_0": {"kernel": _rand((8, 3))}}  # fmt: skip
    assert gcore_jax.output_axes(params) == {
        "Conv_0": {"bias": None, "kernel": -1},
        "Dense_0": {"kernel": -1},
    }
    assert gcore_jax.output_axes(params, conv_only=True)["Dense_0"]["kernel"] is None
    rule = gcore.GC(axis=-1)
    out = _one_update(gcore_jax.centralize(), params)
    np.testing.assert_allclose(
        np.asarray(out["Conv_0"]["kernel"]),
        np.asarray(rule(params["Conv_0"]["kernel"])),
        atol=1e-6,
    )


# ------------------------------------------------------- tokens, look-alikes, nnx.state


def test_vit_tokens_and_position_tables_are_left_alone():
    """ViT's cls token (1, 1, D) got the "flax" axis: units of one weight, so GC zeroed
    its gradient and it never trained; the position table (1, N, D) was centralized over
    positions. Both are now left alone, by name (and the cls token by its unit size)."""
    params = {
        "cls": _rand((1, 1, 8)),
        "Transformer": {"posembed_input": {"pos_embedding": _rand((1, 5, 8))}},
        "dist_token": _rand((1, 1, 8)),
        "Dense_0": {"kernel": _rand((8, 4))},
    }
    axes = gcore_jax.output_axes(params)
    assert axes["cls"] is None and axes["dist_token"] is None
    assert axes["Transformer"]["posembed_input"]["pos_embedding"] is None
    assert axes["Dense_0"]["kernel"] == -1
    grads = jax.tree.map(lambda x: x + 1.0, params)
    upd = _one_update(gcore_jax.adam(0.1), grads, params)
    assert float(jnp.abs(upd["cls"]).min()) > 0.05  # a first Adam step is ±lr: it moves


def test_attention_projection_names_on_other_layers_keep_their_own_axis():
    """``query|key|value/kernel`` of 3 axes is an attention projection (in, heads,
    head_dim) only beside an ``out`` projection (heads, head_dim, features): a 1-D
    convolution named ``query`` (k, in, out) keeps the "flax" axis (its (1, in, out)
    kernel had units of one weight and a zero gradient)."""
    nnx = pytest.importorskip("flax.nnx", reason="flax is not installed")

    class NonLocal1D(nnx.Module):
        def __init__(self, c, rngs):
            self.query = nnx.Conv(c, c // 2, kernel_size=(1,), rngs=rngs)
            self.value = nnx.Conv(c, c, kernel_size=(3,), rngs=rngs)

    class Attn(nnx.Module):
        def __init__(self, rngs):
            self.attn = nnx.MultiHeadAttention(
                num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs
            )

    conv = gcore_jax.output_axes(nnx.to_pure_dict(nnx.state(NonLocal1D(8, nnx.Rngs(0)))))
    assert conv["query"]["kernel"] == -1 and conv["value"]["kernel"] == -1
    attn = gcore_jax.output_axes(nnx.state(Attn(nnx.Rngs(0)), nnx.Param))
    assert jax.tree.leaves(attn["attn"]["query"]["kernel"], is_leaf=lambda x: x is not None) == [
        (1, 2)
    ]


def test_axes_from_nnx_state_drive_nnx_optimizer():
    """The "edit the resolved axes" recipe on an NNX model: axes built from
    ``nnx.state(model, nnx.Param)`` (boxed leaves) and given to ``nnx.Optimizer``, which
    updates bare arrays: the table matched none of them ("no entry for parameter")."""
    nnx = pytest.importorskip("flax.nnx", reason="flax is not installed")
    model = nnx.Sequential(nnx.Embed(10, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 3, rngs=nnx.Rngs(1)))
    axes = gcore_jax.output_axes(nnx.state(model, nnx.Param))
    axes["layers"][0]["embedding"] = 0  # include the table, along its rows
    opt = nnx.Optimizer(model, gcore_jax.sgd(1.0, layout=axes), wrt=nnx.Param)
    before = jax.tree.map(lambda x: np.asarray(x), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    grads = nnx.grad(lambda m: (m(jnp.array([1, 2])) * jnp.arange(3.0)).sum())(model)
    opt.update(model, grads)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    table = np.asarray(after["layers"][0]["embedding"]) - before["layers"][0]["embedding"]
    np.testing.assert_allclose(table.mean(1), 0, atol=1e-6)  # rows centralized (axis 0)
    kernel = np.asarray(after["layers"][1]["kernel"]) - before["layers"][1]["kernel"]
    np.testing.assert_allclose(kernel.mean(0), 0, atol=1e-6)  # Linear: axis -1


def test_stacked_layers_are_centralized_per_layer():
    """``nn.scan`` over layers stores each parameter with a leading layer axis: under the
    "flax" axis a Dense kernel (layers, in, out) was centralized over (layer, in), stacked
    attention projections fell back to -1 and stacked LayerNorm scales (layers, D) were
    centralized across layers. ``stacked_axes`` keeps every layer's units apart."""
    nn = pytest.importorskip("flax.linen", reason="flax is not installed")

    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            x = x + nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4)(x)
            return nn.LayerNorm()(jnp.tanh(nn.Dense(4)(x**2 + 0.5))), None

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True},
                           length=3)  # fmt: skip
            return scan()(x, None)[0]

    net, x = Net(), jax.random.normal(jax.random.key(0), (2, 5, 4))
    params = net.init(jax.random.key(1), x)["params"]
    grads = jax.grad(lambda p: (jnp.sin(net.apply({"params": p}, x)) * jnp.arange(4.0)).sum())(
        params
    )
    block = grads["ScanLayer_0"]
    axes = gcore_jax.stacked_axes(block)
    assert axes["Dense_0"]["kernel"] == (0, 2)
    assert axes["MultiHeadDotProductAttention_0"]["query"]["kernel"] == (0, 2, 3)
    assert axes["MultiHeadDotProductAttention_0"]["out"]["kernel"] == (0, 3)
    assert axes["LayerNorm_0"]["scale"] is None and axes["Dense_0"]["bias"] is None
    out, _ = gcore_jax.centralize(layout={"ScanLayer_0": axes}).update(grads, None)
    k = np.asarray(block["Dense_0"]["kernel"])
    np.testing.assert_allclose(
        np.asarray(out["ScanLayer_0"]["Dense_0"]["kernel"]), k - k.mean(1, keepdims=True),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    q = np.asarray(block["MultiHeadDotProductAttention_0"]["query"]["kernel"])
    np.testing.assert_allclose(
        np.asarray(out["ScanLayer_0"]["MultiHeadDotProductAttention_0"]["query"]["kernel"]),
        q - q.mean(1, keepdims=True), rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    np.testing.assert_array_equal(
        np.asarray(out["ScanLayer_0"]["LayerNorm_0"]["scale"]),
        np.asarray(block["LayerNorm_0"]["scale"]),
    )
    with pytest.raises(ValueError, match="axes=0"):
        gcore_jax.stacked_axes(block, axes=0)


def test_kernels_with_several_output_features_take_their_bias_axes():
    """``nnx.LinearGeneral`` / linen ``DenseGeneral`` with several output features and
    ``nnx.Einsum`` got the last axis only (units mixing the other output axis); with a
    bias of 2 or more axes that is the kernel's trailing shape, those are the output axes.
    A ConvTranspose with ``transpose_kernel=True`` whose bias length is not the last
    axis's takes the axis that has it. Without a bias nothing tells them: the last axis,
    as documented."""
    nnx = pytest.importorskip("flax.nnx", reason="flax is not installed")
    nn = pytest.importorskip("flax.linen", reason="flax is not installed")

    class M(nnx.Module):
        def __init__(self, rngs):
            self.lg = nnx.LinearGeneral(8, (2, 3), rngs=rngs)
            self.lg2 = nnx.LinearGeneral((2, 3), (4, 5), axis=(-2, -1), rngs=rngs)
            self.bare = nnx.LinearGeneral(8, (2, 3), use_bias=False, rngs=rngs)
            self.ein = nnx.Einsum("bd,dhk->bhk", (8, 2, 3), (2, 3), rngs=rngs)
            # kernel (k, k, out, in): the bias (out,) is not the last axis's length
            self.up = nnx.ConvTranspose(4, 6, (3, 3), transpose_kernel=True, rngs=rngs)

    params = nnx.to_pure_dict(nnx.state(M(nnx.Rngs(0)), nnx.Param))
    axes = gcore_jax.output_axes(params)
    assert {k: v["kernel"] for k, v in axes.items()} == {
        "lg": (1, 2), "lg2": (2, 3), "bare": -1, "ein": (1, 2), "up": -2
    }  # fmt: skip
    grads = jax.tree.map(lambda x: _rand(x.shape, seed=x.size), params)
    out, _ = gcore_jax.centralize().update(grads, None)
    for name, outs in (("lg", 2), ("lg2", 2), ("ein", 2)):
        g = np.asarray(grads[name]["kernel"])
        ins = tuple(range(g.ndim - outs))
        np.testing.assert_allclose(
            np.asarray(out[name]["kernel"]), g - g.mean(ins, keepdims=True), atol=1e-6
        )

    class D(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.DenseGeneral((2, 4))(x)

    linen = D().init(jax.random.key(0), jnp.ones((1, 5)))["params"]
    assert gcore_jax.output_axes(linen)["DenseGeneral_0"]["kernel"] == (1, 2)


def test_masked_siblings_warn_and_a_whole_tree_layout_serves_the_parts():
    """Kernels whose axes come from a sibling (a bias; attention's ``out``) were read
    without it under ``optax.masked`` / ``multi_transform``, silently: the
    ConvTranspose(transpose_kernel=True) kernel was centralized per input channel. It now
    warns, and ``layout=output_axes(params)`` of the whole tree gives the right axes, also
    to an ``nnx.Optimizer`` whose ``wrt`` filter leaves the biases out (the table's extra
    entries raised "matches no parameter")."""
    import warnings

    nnx = pytest.importorskip("flax.nnx", reason="flax is not installed")

    class M(nnx.Module):
        def __init__(self, rngs):
            self.up = nnx.ConvTranspose(4, 6, (3, 3), transpose_kernel=True, rngs=rngs)
            self.gen = nnx.LinearGeneral(4, (2, 3), rngs=rngs)
            self.lin = nnx.Linear(4, 3, rngs=rngs)
            self.conv1 = nnx.Conv(4, 5, (3, 3), rngs=rngs)  # a convolution by its name

    model = M(nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    grads = jax.tree.map(lambda x: _rand(x.shape, seed=x.size), params)
    kernels = lambda tree: {k: {"kernel": True, "bias": False} for k in tree}  # noqa: E731
    masked = optax.masked(gcore_jax.centralize(), kernels)
    with pytest.warns(UserWarning, match=r"\['up'\]\['kernel'\] \(its 'bias'\)") as caught:
        masked.update(grads, masked.init(params))
    assert not any("conv1" in str(w.message) for w in caught)
    whole = optax.masked(gcore_jax.centralize(layout=gcore_jax.output_axes(params)), kernels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out, _ = whole.update(grads, whole.init(params))
    up = np.asarray(out["up"]["kernel"])  # (k, k, out, in): units along axis -2
    np.testing.assert_allclose(_unit_means(up, -2), 0, atol=1e-6)
    np.testing.assert_allclose(_unit_means(np.asarray(out["gen"]["kernel"]), (1, 2)), 0, atol=1e-6)

    # nnx.Optimizer over the kernels only, with the whole model's layout
    axes = gcore_jax.output_axes(nnx.state(model, nnx.Param))
    only = nnx.All(nnx.Param, nnx.PathContains("kernel"))
    opt = nnx.Optimizer(model, gcore_jax.sgd(1.0, layout=axes), wrt=only)
    before = {k: np.asarray(getattr(model, k).kernel[...]) for k in ("up", "gen", "lin")}
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 2, 2, 4)), jnp.float32)

    def loss(m):
        return jnp.sin(3 * m.up(x)).sum() + jnp.sin(3 * m.gen(x)).sum() + jnp.sin(m.lin(x)).sum()

    opt.update(model, nnx.grad(loss, argnums=nnx.DiffState(0, only))(model))
    for name, unit_axes in (("up", -2), ("gen", (1, 2)), ("lin", -1)):
        step = np.asarray(getattr(model, name).kernel[...]) - before[name]
        assert np.abs(step).max() > 1e-3, name
        np.testing.assert_allclose(_unit_means(step, unit_axes), 0, atol=1e-6, err_msg=name)
