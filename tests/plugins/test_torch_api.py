"""gcore_torch beyond the update math: layouts, apply_gc, centralize_, torch.optim
compatibility (state, checkpoints, closures, schedulers), errors, AMP and torch.compile."""

from __future__ import annotations

import copy
import shutil
import warnings

import pytest

torch = pytest.importorskip("torch")
gcore_torch = pytest.importorskip("gcore_torch")

from torch import nn  # noqa: E402
from torch_helpers import need_kernels, one_thread  # noqa: E402, F401


def _unit_means_axis(w, axis):
    return w.movedim(axis, 0).reshape(w.shape[axis], -1).mean(1)


# -- layouts -------------------------------------------------------------------------------
def test_param_groups_axes_per_layer():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ConvTranspose2d(8, 6, 3),
        nn.ConvTranspose2d(6, 4, 3, groups=2),
        nn.Flatten(),
        nn.Linear(4, 2),
        nn.Embedding(5, 3),
        nn.LayerNorm(3),
    )
    groups = gcore_torch.param_groups(model, lr=0.5)
    by_key = {(g["gc_axis"], g["gc_groups"]): g for g in groups}
    assert all(g["lr"] == 0.5 for g in groups)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(by_key[(0, 1)]["params"]) == ids([model[0].weight, model[5].weight])
    assert ids(by_key[(1, 1)]["params"]) == ids([model[2].weight])
    assert ids(by_key[(1, 2)]["params"]) == ids([model[3].weight])
    off = ids(by_key[(None, 1)]["params"])
    assert id(model[6].weight) in off and id(model[1].weight) in off and id(model[0].bias) in off
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    conv_only = gcore_torch.param_groups(model, conv_only=True)
    lin = [g for g in conv_only if any(p is model[5].weight for p in g["params"])]
    assert lin[0]["gc_axis"] is None


def test_param_groups_shared_parameter_once():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    groups = gcore_torch.param_groups(model)
    assert sum(len(g["params"]) for g in groups) == 2


def test_conv_transpose_needs_axis_1():
    """torch.optim-style axis-0 GC of a ConvTranspose weight leaves the output channels'
    means nonzero; param_groups' axis 1 gives every output channel zero mean."""
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(4, 6, 3)  # weight (in=4, out=6, 3, 3)
    layer(torch.randn(2, 4, 5, 5)).pow(2).sum().backward()
    g = layer.weight.grad.clone()
    naive = gcore_torch.centralize_(g.clone(), axis=0)[0]
    assert _unit_means_axis(naive, 1).abs().max() > 1e-3  # output channels not centred
    group = gcore_torch.param_groups(layer)[0]
    assert group["gc_axis"] == 1
    opt = gcore_torch.SGD([group], lr=0.1)
    w0 = layer.weight.detach().clone()
    opt.step()
    ours = layer.weight.grad
    # The step moved the weights by -lr * GC(g): per output channel zero mean.
    step = (layer.weight.detach() - w0) / -0.1
    torch.testing.assert_close(step, gcore_torch.centralize_(g.clone(), axis=1)[0])
    assert _unit_means_axis(step, 1).abs().max() < 1e-6
    assert ours is layer.weight.grad  # the optimizer does not modify .grad


def test_grouped_conv_transpose_means_per_group():
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(4, 6, 3, groups=2)  # weight (4, 3, 3, 3)
    layer(torch.randn(2, 4, 5, 5)).pow(2).sum().backward()
    g = layer.weight.grad
    ours = gcore_torch.centralize_(g.clone(), axis=1, groups=2)[0]
    per_unit = ours.unflatten(0, (2, 2)).mean(dim=(1, 3, 4))  # (group, out/group)
    assert per_unit.abs().max() < 1e-6
    # Axis 1 without groups mixes the two groups' inputs: units are not centred.
    mixed = gcore_torch.centralize_(g.clone(), axis=1)[0]
    assert mixed.unflatten(0, (2, 2)).mean(dim=(1, 3, 4)).abs().max() > 1e-4


# -- centralize_ and apply_gc -------------------------------------------------------------
def test_centralize_in_place_and_options():
    g = torch.randn(4, 3, 2, 2)
    b = torch.randn(4)
    lin = torch.randn(5, 3)
    out = gcore_torch.centralize_([g, b, lin], conv_only=True)
    assert out[0] is g and g.reshape(4, -1).mean(1).abs().max() < 1e-6
    assert lin.mean(1).abs().max() > 1e-3  # conv_only: Linear untouched
    x = torch.randn(3, 5)
    gcore_torch.centralize_(x, axis=-1)
    assert x.mean(0).abs().max() < 1e-6
    y, z = torch.randn(3, 4), torch.randn(3, 4)
    gcore_torch.centralize_([y, z], axis=[0, None])
    assert y.mean(1).abs().max() < 1e-6 and z.mean(1).abs().max() > 1e-3


def test_centralize_low_precision_accumulates_in_float32():
    g = (torch.randn(8, 300) * 4 + 100).to(torch.bfloat16)
    want = (g.float() - g.float().mean(1, keepdim=True)).to(torch.bfloat16)
    torch.testing.assert_close(gcore_torch.centralize_(g.clone())[0], want, rtol=0, atol=0)


LOW_CASES = [
    ((8, 300), (0, 1), "contiguous"),
    ((6, 4, 3, 3), (0, 1), "channels_last"),
    ((4, 6, 3), (1, 2), "contiguous"),  # grouped ConvTranspose
    ((3, 5, 7), (2, 3), "transposed"),  # (experts, in, out), a strided gradient
]


@pytest.mark.parametrize(
    ("shape", "spec", "layout", "chunk"),
    [(*case, chunk) for case in LOW_CASES for chunk in (None, 1 << 20, 7, 1)]
    + [((8, 300), (0, 1), "contiguous", "kernel"), ((40, 1031), (0, 1), "contiguous", "kernel")],
    ids=lambda v: str(v).replace(" ", ""),
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_centralization_in_float32_chunks_is_exact(
    shape, spec, layout, dtype, chunk, monkeypatch
):
    """float16/bfloat16 on the CPU are centralized by the compiled rows or in float32
    chunks of whole units (the direct mixed-dtype ops were ~15x slower): bit for bit the
    float32 reference rounded once, in place or into another tensor, whatever the route,
    chunking and memory layout, and the means returned are the float32 means."""
    from gcore_torch import _gc

    if chunk == "kernel":  # the compiled rows (contiguous rows; the means not wanted)
        need_kernels()
        monkeypatch.setattr(_gc, "LOW_KERNEL", 1)
    elif chunk is not None:  # else torch's direct ops, as for small tensors
        monkeypatch.setattr(_gc, "LOW_CHUNK", chunk)
        monkeypatch.setattr(_gc, "LOW_DIRECT", 1)
    gen = torch.Generator().manual_seed(0)
    g = (torch.randn(shape, generator=gen) * 4 + 100).to(dtype)
    if layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        g = g.transpose(1, 2).contiguous().transpose(1, 2)
    x, dims = _gc._grouped(g, spec)
    want_means = x.float().mean(dims, keepdim=True)
    want = (x.float() - want_means).to(dtype)
    out = torch.empty_like(g)
    ox, _ = _gc._grouped(out, spec)
    kernel = chunk == "kernel"
    means = _gc.center_into(ox, x, dims, means=not kernel)
    torch.testing.assert_close(ox, want, rtol=0, atol=0)
    if kernel:
        assert means is None  # the kernel ran (it keeps the means)
    else:
        torch.testing.assert_close(means, want_means, rtol=1e-6, atol=1e-6)
    _gc.center_into(x, x, dims, means=not kernel)  # in place
    torch.testing.assert_close(x, want, rtol=0, atol=0)


@pytest.mark.parametrize("make", [torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.SGD])
def test_apply_gc_any_optimizer(make):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    twin = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    twin.load_state_dict(model.state_dict())
    opt, ref = make(model.parameters(), lr=0.01), make(twin.parameters(), lr=0.01)
    handle = gcore_torch.apply_gc(opt)
    x = torch.randn(5, 2, 5, 5)
    for step in range(4):
        if step == 2:
            handle.remove()  # GC off from here on: both see the same updates again
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            m(x).square().mean().backward()
        if step < 2:
            gcore_torch.centralize_([p.grad for p in twin.parameters()])
        opt.step()
        ref.step()
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(a, b)


def test_apply_gc_reads_group_axes():
    layer = nn.ConvTranspose2d(3, 4, 2)
    opt = torch.optim.SGD(gcore_torch.param_groups(layer), lr=0.1)
    gcore_torch.apply_gc(opt)
    layer(torch.randn(1, 3, 4, 4)).sum().backward()
    opt.step()
    assert _unit_means_axis(layer.weight.grad, 1).abs().max() < 1e-6
    other = nn.Linear(3, 2)
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1)
    gcore_torch.apply_gc(opt2, axes={other.weight: None})
    other(torch.randn(4, 3)).sum().backward()
    g = other.weight.grad.clone()
    opt2.step()
    torch.testing.assert_close(other.weight.grad, g)


def test_apply_gc_with_grad_scaler():
    torch.manual_seed(0)
    model, twin = nn.Linear(4, 3), nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    opt, ref = (
        torch.optim.SGD(model.parameters(), lr=0.1),
        gcore_torch.SGD(twin.parameters(), lr=0.1),
    )
    gcore_torch.apply_gc(opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(8, 4)
    for _ in range(3):
        opt.zero_grad()
        ref.zero_grad()
        scaler.scale(model(x).square().mean()).backward()
        scaler.step(opt)  # unscale_ -> pre-hook GC -> step
        scaler.update()
        twin(x).square().mean().backward()
        ref.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# -- torch.optim compatibility -----------------------------------------------------------
def _pair(cls_ours, cls_torch, **kw):
    torch.manual_seed(0)
    a, b = nn.Linear(5, 4).double(), nn.Linear(5, 4).double()
    b.load_state_dict(a.state_dict())
    return a, b, cls_ours(a.parameters(), gc=False, **kw), cls_torch(b.parameters(), **kw)


def _grads(*models, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    for m in models:
        m.zero_grad()
        m(x).square().mean().backward()


@pytest.mark.parametrize(
    ("ours", "theirs", "kw"),
    [
        ("Adam", "Adam", {"amsgrad": True}),
        ("AdamW", "AdamW", {}),
        ("SGD", "SGD", {"momentum": 0.9, "lr": 0.1}),
    ],
)
def test_checkpoints_move_both_ways(ours, theirs, kw):
    a, b, opt_a, opt_b = _pair(getattr(gcore_torch, ours), getattr(torch.optim, theirs), **kw)
    for s in range(3):
        _grads(a, b, seed=s)
        opt_a.step()
        opt_b.step()
    sd_a, sd_b = opt_a.state_dict(), opt_b.state_dict()
    assert {k: sorted(v) for k, v in sd_a["state"].items()} == {
        k: sorted(v) for k, v in sd_b["state"].items()
    }
    # Swap: torch's checkpoint into ours and ours into torch's, then keep training.
    opt_a2 = getattr(gcore_torch, ours)(a.parameters(), gc=False, **kw)
    opt_b2 = getattr(torch.optim, theirs)(b.parameters(), **kw)
    opt_a2.load_state_dict(sd_b)
    opt_b2.load_state_dict(sd_a)
    for s in range(3, 6):
        _grads(a, b, seed=s)
        opt_a2.step()
        opt_b2.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    assert opt_a2.param_groups[0]["gc"] is False


def test_closure_scheduler_zero_grad_add_param_group():
    a, b, opt_a, opt_b = _pair(gcore_torch.SGD, torch.optim.SGD, lr=0.1, momentum=0.9)
    sch_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=2, gamma=0.5)
    sch_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=2, gamma=0.5)
    extra_a = nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    extra_b = nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    opt_a.add_param_group({"params": [extra_a], "lr": 0.3})
    opt_b.add_param_group({"params": [extra_b], "lr": 0.3})
    assert opt_a.param_groups[1]["gc"] is False  # defaults fill the new group
    for s in range(5):

        def closure(m=a, s=s):
            _grads(m, seed=s)
            return torch.tensor(float(s))

        assert opt_a.step(closure).item() == s
        _grads(b, seed=s)
        opt_b.step()
        sch_a.step()
        sch_b.step()
        opt_a.zero_grad()
        assert all(p.grad is None for p in a.parameters())
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"] == 0.025
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(extra_a, extra_b)  # grad None: untouched


def test_state_keys_match_torch():
    p = nn.Parameter(torch.randn(3, 2))
    opt = gcore_torch.Adam([p], amsgrad=True)
    p.grad = torch.randn(3, 2)
    opt.step()
    assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert opt.state[p]["step"].item() == 1.0 and opt.state[p]["step"].dtype == torch.float32
    q = nn.Parameter(torch.randn(3, 2))
    sgd = gcore_torch.SGD([q], momentum=0.5)
    q.grad = torch.randn(3, 2)
    sgd.step()
    assert set(sgd.state[q]) == {"momentum_buffer"}


def test_pickle_round_trip_keeps_working():
    import pickle

    p = nn.Parameter(torch.randn(4, 3))
    opt = gcore_torch.Adam([p], fused=True, gc_where="gradient")
    p.grad = torch.randn(4, 3)
    opt.step()
    clone = pickle.loads(pickle.dumps(opt))
    q = clone.param_groups[0]["params"][0]
    q.grad = torch.randn(4, 3)
    clone.step()
    assert clone.state[q]["step"].item() == 2.0
    assert clone.param_groups[0]["gc"] is True


def test_signatures_and_defaults_match_torch():
    import inspect

    for name in ("SGD", "Adam", "AdamW"):
        ours = inspect.signature(getattr(gcore_torch, name)).parameters
        theirs = inspect.signature(getattr(torch.optim, name)).parameters
        for k, v in theirs.items():
            assert k in ours, (name, k)
            assert ours[k].default == v.default, (name, k)
            assert ours[k].kind == v.kind, (name, k)
        assert {"gc", "gc_where", "gc_axis", "gc_groups"} <= set(ours)


# -- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"lr": -1.0}, ValueError, "lr"),
        ({"betas": (1.5, 0.9)}, ValueError, r"betas\[0\]"),
        ({"eps": 0.0}, ValueError, "eps"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"gc": "yes"}, ValueError, "gc="),
        ({"gc_where": "params"}, ValueError, "gc_where"),
        ({"gc_axis": 1.5}, TypeError, "gc_axis"),
        ({"gc_axis": 5}, ValueError, "gc_axis"),
        ({"gc_groups": 0}, ValueError, "gc_groups"),
        ({"gc_groups": 2}, ValueError, "gc_groups"),
        ({"differentiable": True}, NotImplementedError, "differentiable"),
        ({"capturable": True}, NotImplementedError, "capturable"),
        ({"fused": True, "foreach": True}, RuntimeError, "fused"),
    ],
)
def test_invalid_adam_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gcore_torch.Adam([nn.Parameter(torch.randn(3, 2))], **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"momentum": -0.1}, "momentum"),
        ({"dampening": 2.0}, "dampening"),
        ({"nesterov": True}, "nesterov"),
    ],
)
def test_invalid_sgd_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gcore_torch.SGD([nn.Parameter(torch.randn(3, 2))], lr=0.1, **kwargs)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize(
    ("key", "value", "label"),
    [
        ("lr", torch.tensor(0.01), "lr"),
        ("betas", (torch.tensor(0.9), torch.tensor(0.999)), r"betas\[0\]"),
    ],
    ids=["lr", "betas"],
)
def test_tensor_hyperparameter_with_foreach_is_refused_like_torch(name, key, value, label):
    """torch.optim.Adam refuses these in its constructor (its foreach kernel cannot take
    them); gcore_torch accepted them and failed at the first step."""
    match = label + " as a Tensor is not supported for capturable=False and foreach=True"
    with pytest.raises(ValueError, match=match):
        getattr(torch.optim, name)([nn.Parameter(torch.randn(3, 2))], foreach=True, **{key: value})
    with pytest.raises(ValueError, match=match):
        getattr(gcore_torch, name)([nn.Parameter(torch.randn(3, 2))], foreach=True, **{key: value})
    w = nn.Parameter(torch.randn(3, 2))
    opt = getattr(gcore_torch, name)([w], foreach=True)
    opt.param_groups[0][key] = value  # an edit is refused at the next step, before writing
    w.grad = torch.randn(3, 2)
    before = w.detach().clone()
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert torch.equal(w.detach(), before)
    opt = getattr(gcore_torch, name)([w], **{key: value})  # other paths take them
    opt.step()
    assert not torch.equal(w.detach(), before)
    # foreach left unset where it would be chosen (a device other than CPU/CUDA, as for
    # DTensors): the single path, as torch.optim leaves its foreach kernel
    meta = nn.Parameter(torch.randn(3, 2, device="meta"))
    meta.grad = torch.randn(3, 2, device="meta")
    getattr(torch.optim, name)([meta], **{key: value}).step()
    getattr(gcore_torch, name)([meta], **{key: value}).step()


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_parameter_listed_twice_is_refused(name):
    """torch.optim warns and steps a repeated parameter twice; gcore_torch's paths kept
    its state apart differently (step counts 5, 5 and 3 after 3 steps): refused instead."""
    w, b = nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(3))
    cls = getattr(gcore_torch, name)
    same = r"\['params'\]\[2\] is the same tensor as .*\[0\]"
    with pytest.raises(ValueError, match=same), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation warning
        cls([w, b, w], lr=0.1)
    opt = cls([w, b], lr=0.1)
    opt.param_groups[0]["params"].append(b)  # an edit is refused at the next step
    w.grad, b.grad = torch.randn(3, 2), torch.randn(3)
    with pytest.raises(ValueError, match="same tensor"):
        opt.step()


def test_invalid_group_names_the_group():
    with pytest.raises(ValueError, match=r"param_groups\[1\]"):
        gcore_torch.SGD(
            [
                {"params": [nn.Parameter(torch.randn(2, 2))]},
                {"params": [nn.Parameter(torch.randn(2, 2))], "lr": -1},
            ],
            lr=0.1,
        )


def test_complex_and_integer_params_rejected():
    with pytest.raises(TypeError, match=r"\['params'\]\[0\] is complex"):
        gcore_torch.Adam([nn.Parameter(torch.randn(2, 2, dtype=torch.complex64))])
    with pytest.raises(TypeError, match="needs floating-point"):
        gcore_torch.SGD([torch.zeros(2, 2, dtype=torch.int64)])
    with pytest.raises(TypeError, match="floating-point"):
        gcore_torch.centralize_(torch.zeros(2, 2, dtype=torch.int32))


@pytest.mark.parametrize("path", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_sparse_gradient_rejected(path):
    emb = nn.Embedding(5, 3, sparse=True)
    opt = gcore_torch.Adam(emb.parameters(), **path)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"param_groups\[0\]\['params'\]\[0\] has a sparse"):
        opt.step()
    with pytest.raises(RuntimeError, match="sparse"):
        gcore_torch.centralize_(emb.weight.grad)


def test_api_argument_errors():
    with pytest.raises(TypeError, match="optimizer"):
        gcore_torch.apply_gc("adam")
    with pytest.raises(TypeError, match="model"):
        gcore_torch.param_groups([nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="gc_axis"):
        gcore_torch.param_groups(nn.Linear(2, 2), gc_axis=1)
    with pytest.raises(ValueError, match="entries"):
        gcore_torch.centralize_([torch.randn(2, 2)], axis=[0, 0])


# -- a small CNN trained with every optimizer, GC mode and path ----------------------------
class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.relu(self.up(x)).flatten(1))


def _train(make_opt, steps=10):
    torch.manual_seed(0)
    model = SmallCNN().double()
    opt = make_opt(gcore_torch.param_groups(model))
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(6, 3, 4, 4, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 5, (6,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


OPT_KW = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
    "Adam": {"lr": 1e-2},
    "AdamW": {"lr": 1e-2},
}


# Training feeds each step's rounding back into the next gradients, and Adam divides by
# sqrt(v) of tiny (BatchNorm, bias) gradients, so float64 paths drift apart by ~1e-10
# over 10 steps (the fixed-gradient tests above hold them to 1e-12).
TRAIN_TOL = 1e-8


@pytest.mark.parametrize("gc", [False, True, "conv_only"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_train_small_cnn(name, gc):
    cls, kw = getattr(gcore_torch, name), OPT_KW[name]
    ref = _train(lambda groups: cls(groups, gc=gc, foreach=False, **kw))
    for path in ({"foreach": True}, {"fused": True}):
        got = _train(lambda groups, path=path: cls(groups, gc=gc, **path, **kw))
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=TRAIN_TOL, atol=TRAIN_TOL)
    if gc is False:
        theirs = _train(lambda groups: getattr(torch.optim, name)(groups, **kw))
        for a, b in zip(ref, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=TRAIN_TOL, atol=TRAIN_TOL)
    else:
        plain = _train(lambda groups: cls(groups, gc=False, foreach=False, **kw))
        assert any(not torch.allclose(a, b) for a, b in zip(ref, plain, strict=True))


# -- AMP and torch.compile -----------------------------------------------------------------
def test_grad_scaler_unscales_before_gc():
    torch.manual_seed(0)
    model, twin = SmallCNN(), SmallCNN()
    twin.load_state_dict(model.state_dict())
    opt = gcore_torch.Adam(gcore_torch.param_groups(model), lr=1e-3)
    ref = gcore_torch.Adam(gcore_torch.param_groups(twin), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    x, y = torch.randn(4, 3, 4, 4), torch.randint(0, 5, (4,))
    for _ in range(3):
        opt.zero_grad()
        ref.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        scaler.step(opt)
        scaler.update()
        nn.functional.cross_entropy(twin(x), y).backward()
        ref.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile's CPU backend (inductor) needs a C++ compiler; none found",
)
def test_compiled_step_matches_eager():
    torch.manual_seed(0)
    w_eager = nn.Parameter(torch.randn(6, 5))
    w_comp = nn.Parameter(w_eager.detach().clone())
    # Under torch.compile every path runs the core rules (the single path): compare with
    # that path run eagerly.
    opts = {
        "eager": gcore_torch.Adam([w_eager], lr=0.1, foreach=False),
        "compiled": gcore_torch.Adam([w_comp], lr=0.1),
    }
    compiled_step = torch.compile(opts["compiled"].step)
    for _ in range(2):
        g = torch.randn(6, 5)
        w_eager.grad, w_comp.grad = g.clone(), g.clone()
        opts["eager"].step()
        compiled_step()
    torch.testing.assert_close(w_comp, w_eager, rtol=1e-6, atol=1e-6)
    assert w_comp.detach().mean(1).sub(w_eager.detach().mean(1)).abs().max() < 1e-6


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile's CPU backend (inductor) needs a C++ compiler; none found",
)
def test_inductor_bug_the_guide_names_is_still_there():
    """The PyTorch guide says torch's CPU Inductor backend fails to build a momentum
    step of a conv weight (pytorch/pytorch#196570: a reduction feeding two in-place
    writes). This fails once torch fixes it: then drop the caveat from the guide."""
    from torch._inductor.exc import InductorError

    torch._dynamo.reset()
    w = nn.Parameter(torch.randn(6, 4, 3, 3))
    opt = gcore_torch.SGD([w], lr=0.01, momentum=0.9)
    step = torch.compile(opt.step)
    with pytest.raises(InductorError, match="KeyError"):
        for _ in range(2):
            w.grad = torch.randn_like(w)
            step()


@pytest.mark.parametrize("scheduled", [False, True], ids=["fixed_lr", "scheduled_lr"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_compiled_step_traces_into_one_graph(name, scheduled):
    """``torch.compile(step, fullgraph=True)`` of a group of several tensors traces and
    follows the eager core-rule path step by step (the eager backend: no compiler).

    With ``scheduled``, the learning rate changes at every step, as a scheduler changes it:
    torch.compile then recompiles with it as a symbolic float, whose validation must not
    break the graph (it did, on ``math.isnan``, and the step fell back to eager); a
    negative one still stops the step before anything is written."""
    # Each test traces afresh: the code objects' earlier recompiles would make the
    # hyperparameters dynamic (automatic dynamic) from the first step.
    torch._dynamo.reset()
    torch.manual_seed(0)
    shapes = [(6, 4, 3, 3), (5, 7), (5,), (3, 8)]
    ours = [nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    kw = {"lr": 0.05, "momentum": 0.9} if name == "SGD" else {"lr": 0.05}
    opt = getattr(gcore_torch, name)(ours, **kw)
    eager = getattr(gcore_torch, name)(ref, foreach=False, **kw)
    step = torch.compile(opt.step, backend="eager", fullgraph=True)
    for i in range(6 if scheduled else 3):
        if scheduled:
            for o in (opt, eager):
                o.param_groups[0]["lr"] = 0.05 * 0.9**i
        for p, q in zip(ours, ref, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        step()
        eager.step()
        for p, q in zip(ours, ref, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    if scheduled:
        opt.param_groups[0]["lr"] = -0.1
        before = [p.detach().clone() for p in ours]
        lenient = torch.compile(opt.step, backend="eager")  # may break the graph to raise
        with pytest.raises(ValueError, match=r"lr=-0\.1 is invalid"):
            lenient()
        assert all(torch.equal(a, b) for a, b in zip(before, ours, strict=True))


@pytest.mark.parametrize(
    "path", [{}, {"fused": True}, {"foreach": True}, {"foreach": False}], ids=str
)
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_parameter_whose_first_gradient_comes_late(name, path):
    """A bias, a ConvTranspose weight and a Linear weight get gradients from step 2 on."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ConvTranspose1d(3, 2, 2))
    twin = copy.deepcopy(model)
    kw = {"lr": 0.1, "momentum": 0.9} if name == "SGD" else {"lr": 0.1}
    ours = getattr(gcore_torch, name)(gcore_torch.param_groups(model), gc=False, **path, **kw)
    theirs = getattr(torch.optim, name)(twin.parameters(), **kw)
    params, tparams = list(model.parameters()), list(twin.parameters())
    for step in range(3):
        for i, (p, q) in enumerate(zip(params, tparams, strict=True)):
            g = torch.randn_like(p) if step > 0 or i < 2 else None  # Linear first
            p.grad, q.grad = g, None if g is None else g.clone()
        ours.step()
        theirs.step()
    for p, q in zip(params, tparams, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_invalid_param_group_is_not_kept():
    opt = gcore_torch.Adam([nn.Parameter(torch.randn(3, 2))], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [nn.Parameter(torch.randn(2, 2))], "lr": -1.0})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_checkpoint_of_an_older_torch_without_newer_group_keys(name):
    w = nn.Parameter(torch.randn(3, 4))
    opt = getattr(gcore_torch, name)([w], lr=0.1)
    w.grad = torch.randn(3, 4)
    opt.step()
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        for key in ("fused", "foreach", "decoupled_weight_decay", "differentiable"):
            g.pop(key, None)
    fresh = getattr(gcore_torch, name)([w], lr=0.1)
    fresh.load_state_dict(sd)
    fresh.step()  # used to raise KeyError('fused') / ('decoupled_weight_decay')
    assert fresh.param_groups[0]["fused"] == fresh.defaults["fused"]


# -- the layout registry, centralize_grads_, apply_gc(model=...), no_decay ------------------
class FakeConv1D(nn.Module):
    """Stands in for transformers' Conv1D (x @ W + b, W stored (in, out)) where
    transformers is not installed: the registry matches it by qualified name."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


FakeConv1D.__module__ = "transformers.pytorch_utils"
FakeConv1D.__qualname__ = FakeConv1D.__name__ = "Conv1D"


class TinyGPT(nn.Module):
    """GPT-2's layout: Conv1D attention / MLP, a LayerNorm, and lm_head tied to wte."""

    def __init__(self, vocab=11, d=6, tie_first="wte"):
        super().__init__()
        wte, head = nn.Embedding(vocab, d), nn.Linear(d, vocab, bias=False)
        # The order in which modules are registered decides the iteration order.
        if tie_first == "wte":
            self.wte, self.c_attn, self.ln, self.lm_head = (
                wte,
                FakeConv1D(3 * d, d),
                nn.LayerNorm(d),
                head,
            )
        else:
            self.lm_head, self.ln, self.c_attn, self.wte = (
                head,
                nn.LayerNorm(d),
                FakeConv1D(3 * d, d),
                wte,
            )
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        h = self.wte(idx)
        q, k, v = self.c_attn(h).chunk(3, dim=-1)
        return self.lm_head(self.ln(h + (q * k).softmax(-1) * v))


def _gpt_grads(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 11, (4, 5), generator=gen)
    model.zero_grad()
    nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()


@pytest.mark.parametrize("tie_first", ["wte", "lm_head"])
def test_conv1d_and_tied_head_in_every_entry_point(tie_first):
    """Conv1D weights (in, out) are centralized per output column (axis 1); the head tied
    to the embedding is left alone whichever module comes first (excluded wins)."""
    torch.manual_seed(0)
    model = TinyGPT(tie_first=tie_first)
    w, head = model.c_attn.weight, model.lm_head.weight
    lay = gcore_torch.layouts(model)
    assert lay["c_attn.weight"] == gcore_torch.Layout(1, 1)
    assert [n for n in lay if lay[n] is None and n.endswith("weight")] and (
        lay.get("wte.weight", lay.get("lm_head.weight")) is None
    )
    groups = gcore_torch.param_groups(model)
    axis_of = {id(p): g["gc_axis"] for g in groups for p in g["params"]}
    assert axis_of[id(w)] == 1 and axis_of[id(head)] is None
    assert sum(len(g["params"]) for g in groups) == 5  # wte/lm_head once, c_attn w+b, ln w+b

    _gpt_grads(model)
    g0, h0 = w.grad.clone(), head.grad.clone()
    gcore_torch.centralize_grads_(model)
    torch.testing.assert_close(w.grad, g0 - g0.mean(0, keepdim=True))  # per column
    assert w.grad.mean(0).abs().max() < 1e-6 and w.grad.mean(1).abs().max() > 1e-4
    torch.testing.assert_close(head.grad, h0, rtol=0, atol=0)

    _gpt_grads(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gcore_torch.apply_gc(opt, model=model)
    g0, h0 = w.grad.clone(), head.grad.clone()
    w0 = w.detach().clone()
    opt.step()
    step = (w.detach() - w0) / -0.1
    torch.testing.assert_close(step, g0 - g0.mean(0, keepdim=True))
    torch.testing.assert_close(head.grad, h0, rtol=0, atol=0)


def test_gcore_optimizer_on_conv1d_groups_moves_columns_only():
    torch.manual_seed(0)
    model = TinyGPT()
    opt = gcore_torch.SGD(gcore_torch.param_groups(model), lr=0.5)
    w0 = model.c_attn.weight.detach().clone()
    _gpt_grads(model)
    opt.step()
    delta = model.c_attn.weight.detach() - w0
    assert delta.mean(0).abs().max() < 1e-7  # each output column keeps its mean
    assert delta.abs().max() > 1e-4


def test_tied_weights_with_conflicting_layouts_raise_in_both_orders():
    for first in (0, 1):
        lin, c1d = nn.Linear(4, 4, bias=False), FakeConv1D(4, 4)
        mods = [lin, c1d] if first == 0 else [c1d, lin]
        model = nn.Sequential(*mods)
        c1d.weight = lin.weight
        with pytest.raises(ValueError, match="different GC layouts"):
            gcore_torch.param_groups(model)
    # A holder with no registered layout (it would fall back to axis 0) defers to one
    # with a registered layout, in both orders.
    for first in (0, 1):
        c1d, holder = FakeConv1D(4, 3), nn.Module()
        holder.w = c1d.weight
        model = nn.Sequential(*([holder, c1d] if first == 0 else [c1d, holder]))
        assert set(gcore_torch.layouts(model).values()) == {gcore_torch.Layout(1, 1), None}
    # Tied within one layout is fine: two Linears sharing a weight.
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    assert gcore_torch.layouts(nn.Sequential(a, b))["0.weight"] == gcore_torch.Layout(0, 1)


def test_builtin_layouts_attention_rnn_conv_transpose():
    model = nn.ModuleDict(
        {
            "mha": nn.MultiheadAttention(8, 2, add_bias_kv=True),
            "mha_kdim": nn.MultiheadAttention(8, 2, kdim=5, vdim=3),
            "lstm": nn.LSTM(4, 6, proj_size=3, bidirectional=True),
            "gru": nn.GRUCell(4, 5),
            "up": nn.ConvTranspose3d(4, 6, 2, groups=2),
            "bil": nn.Bilinear(3, 4, 5),
        }
    )
    lay = gcore_torch.layouts(model)
    for name in ("mha.in_proj_weight", "mha.out_proj.weight", "mha_kdim.k_proj_weight",
                 "mha_kdim.v_proj_weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0_reverse",
                 "lstm.weight_hr_l0", "gru.weight_ih", "bil.weight"):  # fmt: skip
        assert lay[name] == gcore_torch.Layout(0, 1), name
    assert lay["mha.bias_k"] is None and lay["mha.bias_v"] is None  # (1, 1, E): not weights
    assert lay["up.weight"] == gcore_torch.Layout(1, 2)
    assert all(lay[n] is None for n in lay if "bias" in n)
    # The packed (3E, E) in_proj: GC per row == GC of q, k and v projections separately.
    mha = model["mha"]
    x = torch.randn(3, 2, 8)
    mha(x, x, x)[0].square().sum().backward()
    g = mha.in_proj_weight.grad.clone()
    gcore_torch.centralize_grads_(mha)
    parts = [p - p.mean(1, keepdim=True) for p in g.chunk(3)]
    torch.testing.assert_close(mha.in_proj_weight.grad, torch.cat(parts))


def test_weight_and_spectral_norm_take_their_modules_layout():
    """A reparametrized weight (torch.nn.utils.parametrizations, or the legacy hooks) is
    stored as a direction v (or spectral norm's original) and a magnitude g: v gets the
    module's layout (a ConvTranspose's axis 1, per group), g, one element a unit, none;
    both got axis 0, which froze every magnitude (its centralized gradient is 0)."""
    from torch.nn.utils import parametrizations as P

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the legacy weight_norm
        model = nn.Sequential(
            P.weight_norm(nn.Conv1d(3, 4, 5)),
            P.spectral_norm(nn.ConvTranspose1d(4, 2, 3)),
            nn.utils.weight_norm(nn.Conv1d(2, 2, 3), dim=2),
            nn.utils.spectral_norm(nn.Linear(3, 3)),
            P.weight_norm(nn.ConvTranspose1d(2, 6, 3, groups=2)),
        )
    u = model[1].parametrizations.weight[0]._u.clone()
    lay = gcore_torch.layouts(model)
    # found without evaluating the weight, whose power iteration would advance
    assert torch.equal(model[1].parametrizations.weight[0]._u, u)
    expected = {
        "0.parametrizations.weight.original0": None,
        "0.parametrizations.weight.original1": gcore_torch.Layout(0, 1),
        "1.parametrizations.weight.original": gcore_torch.Layout(1, 1),
        "2.weight_g": None,
        "2.weight_v": gcore_torch.Layout(0, 1),
        "3.weight_orig": gcore_torch.Layout(0, 1),
        "4.parametrizations.weight.original0": None,
        "4.parametrizations.weight.original1": gcore_torch.Layout(1, 2),
    }
    assert {k: lay[k] for k in expected} == expected
    opt = gcore_torch.SGD(gcore_torch.param_groups(model), lr=0.1)
    g0 = model[0].parametrizations.weight.original0.detach().clone()
    v4 = model[4].parametrizations.weight.original1.detach().clone()
    inputs = [(2, 3, 9), (2, 4, 5), (2, 2, 5), (2, 3), (2, 2, 5)]
    sum(m(torch.randn(s)).square().sum() for m, s in zip(model, inputs, strict=True)).backward()
    opt.step()
    assert not torch.equal(model[0].parametrizations.weight.original0, g0)  # g trains
    v4_new = model[4].parametrizations.weight.original1.detach()
    means = [w.view(2, 1, 3, -1).mean((0, 3)) for w in (v4, v4_new)]  # per group and unit
    torch.testing.assert_close(means[1], means[0], atol=1e-6, rtol=0)


class _Experts(nn.Module):
    """A transformers 5 mixture-of-experts block as ``@use_experts_implementation``
    leaves it: every expert in one 3-D tensor, ``(experts, out, in)`` used through
    ``F.linear``, or ``(experts, in, out)`` with ``is_transposed`` (``x @ W[e]``)."""

    def __init__(self, transposed, experts=3, hidden=4, inner=5):
        super().__init__()
        self.num_experts, self.is_transposed = experts, transposed

        def shape(n_out, n_in):
            return (experts, n_in, n_out) if transposed else (experts, n_out, n_in)

        self.gate_up_proj = nn.Parameter(torch.randn(shape(2 * inner, hidden)))
        self.gate_up_proj_bias = nn.Parameter(torch.randn(experts, 2 * inner))
        self.down_proj = nn.Parameter(torch.randn(shape(hidden, inner)))

    def forward(self, x):  # every token through every expert
        outs = []
        for e in range(self.num_experts):
            w1, w2 = self.gate_up_proj[e], self.down_proj[e]
            if self.is_transposed:
                w1, w2 = w1.t(), w2.t()
            h = nn.functional.linear(x, w1, self.gate_up_proj_bias[e])
            gate, up = h.chunk(2, dim=-1)
            outs.append(nn.functional.linear(nn.functional.silu(gate) * up, w2))
        return torch.stack(outs).sum(0)


def _in_transformers(cls, name, model="x"):
    """``cls`` renamed as if transformers' ``modeling_<model>`` defined it (no import of
    transformers)."""
    return type(name, (cls,), {"__module__": f"transformers.models.{model}.modeling_{model}"})


@pytest.mark.parametrize("transposed", [False, True])
def test_transformers_experts_are_centralized_per_expert_and_output_unit(transposed):
    """One 3-D tensor of experts got the default axis 0, one unit a whole expert (its mean
    over every output and input). Each (expert, output) row must be centralized alone,
    whichever way the block stores it, and the 2-D expert biases not at all."""
    torch.manual_seed(0)
    model = nn.Sequential(_Experts(transposed))
    axis = 2 if transposed else 1
    lay = gcore_torch.layouts(model)
    assert lay["0.gate_up_proj"] == lay["0.down_proj"] == gcore_torch.Layout(axis, 3)
    assert lay["0.gate_up_proj_bias"] is None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(6, 4)).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt = gcore_torch.SGD(gcore_torch.param_groups(model), lr=1.0)
    opt.step()
    over_inputs = 1 if transposed else 2  # the axis each output unit's weights lie on
    for name in ("0.gate_up_proj", "0.down_proj"):
        g = grads[name]
        want = g - g.mean(over_inputs, keepdim=True)
        update = before[name] - dict(model.named_parameters())[name].detach()
        torch.testing.assert_close(update, want, msg=name)
    bias = model[0].gate_up_proj_bias.detach()
    torch.testing.assert_close(before["0.gate_up_proj_bias"] - bias, grads["0.gate_up_proj_bias"])


def test_registered_experts_take_their_count_from_the_tensor():
    """transformers' expert parallelism sets ``num_experts`` to one rank's count while the
    parameter (a DTensor) keeps its global shape: the groups must still be one per expert
    of the tensor, not pairs of experts."""

    # stands in for transformers' class, registered by name
    block = _in_transformers(_Experts, "GptOssExperts", "gpt_oss")(transposed=True, experts=4)
    del block.is_transposed  # transformers 4's gpt-oss: no marker, only the registration
    block.num_experts = 2  # as expert_parallel.py leaves it on each of 2 ranks
    lay = gcore_torch.layouts(block)
    assert lay["gate_up_proj"] == lay["down_proj"] == gcore_torch.Layout(2, 4)


def test_biases_and_transformers_embedding_tokens_get_no_gc_or_decay():
    """Tensors held directly rather than in a layer: biases by name whatever their shape
    (XLNet's r_w_bias (heads, dim), Swin's relative_position_bias_table), and the tokens
    and position tables of transformers' ...Embeddings modules (ViT's cls_token (1, 1, D))
    got the default axis 0, and weight decay with no_decay=True."""

    class Embeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.randn(1, 1, 6))
            self.position_embeddings = nn.Parameter(torch.randn(1, 5, 6))
            self.patch = nn.Conv2d(3, 6, 2)  # a layer of its own: its layout

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.r_w_bias = nn.Parameter(torch.randn(2, 3))
            self.relative_position_bias_table = nn.Parameter(torch.randn(9, 2))
            self.unbiased_weight = nn.Parameter(torch.randn(4, 3))  # not a bias
            self.bias_proj = nn.Parameter(torch.randn(4, 3))  # nor is a bias' projection

    vit_embeddings = _in_transformers(Embeddings, "ViTEmbeddings")
    # A subclass (a user's, or FSDP2's FSDPViTEmbeddings) is still transformers' module.
    renamed = type("FSDPViTEmbeddings", (vit_embeddings,), {"__module__": __name__})
    model = nn.ModuleDict(
        {"emb": vit_embeddings(), "sub": renamed(), "local": Embeddings(), "att": Attention()}
    )
    lay = gcore_torch.layouts(model)
    for name in ("emb.cls_token", "emb.position_embeddings", "sub.cls_token", "att.r_w_bias",
                 "att.relative_position_bias_table"):  # fmt: skip
        assert lay[name] is None, name
    for name in ("emb.patch.weight", "att.unbiased_weight", "att.bias_proj"):
        assert lay[name] == gcore_torch.Layout(0, 1), name
    # Only transformers' embedding modules: a module of one's own keeps the default.
    assert lay["local.cls_token"] == gcore_torch.Layout(0, 1)
    groups = gcore_torch.param_groups(model, no_decay=True, weight_decay=0.1)
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"] if "weight_decay" in g}
    free = {n for n, p in model.named_parameters() if wd.get(id(p)) == 0.0}
    assert free == {
        "emb.cls_token", "emb.position_embeddings", "emb.patch.bias", "sub.cls_token",
        "sub.position_embeddings", "sub.patch.bias", "local.patch.bias", "att.r_w_bias",
        "att.relative_position_bias_table",
    }  # fmt: skip
    # A registration wins over these rules.
    handle = gcore_torch.register_layout(Attention, "r_w_bias", axis=0)
    try:
        assert gcore_torch.layouts(model)["att.r_w_bias"] == gcore_torch.Layout(0, 1)
    finally:
        handle.remove()


def test_register_layout_overrides_and_removes():
    class MyLinear(nn.Linear):
        pass

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w_a = nn.Parameter(torch.randn(2, 3, 4))
            self.w_b = nn.Parameter(torch.randn(2, 3))

    model = nn.Sequential(MyLinear(3, 4), Packed())
    assert gcore_torch.layouts(model)["0.weight"] == gcore_torch.Layout(0, 1)  # Linear's
    h1 = gcore_torch.register_layout(MyLinear, "weight", axis=None)
    h2 = gcore_torch.register_layout(Packed, "w_*", axis=lambda m: -1)
    h3 = gcore_torch.register_layout(f"{__name__}.{Packed.__qualname__}", "w_b", axis=0)
    try:
        lay = gcore_torch.layouts(model)
        assert lay["0.weight"] is None
        assert lay["1.w_a"] == gcore_torch.Layout(2, 1)
        assert lay["1.w_b"] == gcore_torch.Layout(0, 1)  # latest registration wins
    finally:
        for h in (h1, h2, h3):
            h.remove()
    assert gcore_torch.layouts(model)["0.weight"] == gcore_torch.Layout(0, 1)
    with pytest.raises(TypeError, match="Module subclass"):
        gcore_torch.register_layout(int, axis=0)
    with pytest.raises(TypeError, match="axis"):
        gcore_torch.register_layout(MyLinear, axis="0")
    with pytest.raises(ValueError, match="groups"):
        gcore_torch.register_layout(MyLinear, axis=1, groups=0)
    bad = gcore_torch.register_layout(MyLinear, "weight", axis=5)
    try:
        with pytest.raises(ValueError, match="axis=5"):
            gcore_torch.param_groups(model)
    finally:
        bad.remove()


def test_centralize_grads_matches_per_tensor_gc_and_reports_removed_fraction():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ConvTranspose2d(4, 6, 2, groups=2),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 3),
    )  # fmt: skip
    model(torch.randn(3, 2, 5, 5)).square().sum().backward()
    model[0].weight.grad.add_(1.0)  # something for GC to remove
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    removed = gcore_torch.centralize_grads_(model)
    want = {n: g.clone() for n, g in before.items()}
    gcore_torch.centralize_(want["0.weight"], axis=0)
    gcore_torch.centralize_(want["2.weight"], axis=1, groups=2)
    gcore_torch.centralize_(want["4.weight"], axis=0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=0, atol=1e-6)
    flat = lambda d: torch.cat([t.double().flatten() for t in d.values()])  # noqa: E731
    ref = (flat(before) - flat(want)).norm() / flat(before).norm()
    assert removed.dtype == torch.float32 and removed.ndim == 0
    assert 0.05 < float(ref) < 1
    torch.testing.assert_close(removed.double(), ref, rtol=1e-5, atol=0)
    # Already centred: nothing left to remove.
    assert float(gcore_torch.centralize_grads_(model)) < 1e-6
    # measure=False: the same GC, no figure.
    model.zero_grad()
    model(torch.randn(3, 2, 5, 5)).square().sum().backward()
    model[0].weight.grad.add_(1.0)
    assert gcore_torch.centralize_grads_(model, measure=False) is None
    assert _unit_means_axis(model[0].weight.grad, 0).abs().max() < 1e-6
    assert _unit_means_axis(model[2].weight.grad, 1).abs().max() < 1e-6


def test_centralize_grads_of_float64_and_mixed_dtypes_reports_the_fraction():
    """float64 gradients (alone and beside float32/bfloat16 ones): a float32 figure, as
    for the others; it raised (a float32 norm of float64 gradients narrows)."""
    torch.manual_seed(0)
    wide = nn.Parameter(torch.zeros(4, 3, dtype=torch.float64))
    narrow = nn.Parameter(torch.zeros(5, 2))
    low = nn.Parameter(torch.zeros(3, 6, dtype=torch.bfloat16))
    grads = [torch.randn(4, 3, dtype=torch.float64) + 1, torch.randn(5, 2) + 1,
             (torch.randn(3, 6) + 1).bfloat16()]  # fmt: skip
    for params in ([wide], [wide, narrow, low]):
        for p, g in zip(params, grads, strict=False):
            p.grad = g.clone()
        removed = gcore_torch.centralize_grads_(params)
        before = torch.cat([g.double().flatten() for g in grads[: len(params)]])
        after = torch.cat([p.grad.double().flatten() for p in params])
        assert removed.dtype == torch.float32
        want = (before - after).norm() / before.norm()
        # (the bfloat16 gradient's centralized values are rounded; the figure is not)
        rtol = 1e-5 if len(params) == 1 else 2e-3
        torch.testing.assert_close(removed.double(), want, rtol=rtol, atol=0)
        assert wide.grad.mean(1).abs().max() < 1e-12


def test_centralize_grads_plain_params_skip_missing_and_low_precision():
    a = nn.Parameter(torch.zeros(4, 3, 2))
    b = nn.Parameter(torch.zeros(5))
    c = nn.Parameter(torch.zeros(3, 3))  # no gradient
    d = nn.Parameter(torch.zeros(6, 300, dtype=torch.bfloat16))
    a.grad, b.grad = torch.randn(4, 3, 2) + 1, torch.randn(5)
    d.grad = (torch.randn(6, 300) * 4 + 100).bfloat16()
    b0, d0 = b.grad.clone(), d.grad.clone()
    removed = gcore_torch.centralize_grads_([a, b, c, d])
    assert c.grad is None
    assert a.grad.reshape(4, -1).mean(1).abs().max() < 1e-6  # plain tensors: axis 0
    torch.testing.assert_close(b.grad, b0, rtol=0, atol=0)
    want = (d0.float() - d0.float().mean(1, keepdim=True)).bfloat16()
    torch.testing.assert_close(d.grad, want, rtol=0, atol=0)
    assert 0 < float(removed) < 1
    assert float(gcore_torch.centralize_grads_([c])) == 0.0  # nothing to do
    assert float(gcore_torch.centralize_grads_(a, conv_only=True)) < 1e-6  # ndim 3 < 4
    zero = nn.Parameter(torch.zeros(2, 2))
    zero.grad = torch.zeros(2, 2)
    assert float(gcore_torch.centralize_grads_(zero)) == 0.0


def test_centralize_grads_excludes_embeddings_and_norms_unless_asked():
    model = nn.Sequential(nn.Embedding(5, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model(torch.tensor([[1, 2, 3]])).square().sum().backward()
    e0 = model[0].weight.grad.clone()
    gcore_torch.centralize_grads_(model)
    torch.testing.assert_close(model[0].weight.grad, e0, rtol=0, atol=0)
    gcore_torch.centralize_grads_(model, exclude=())
    assert model[0].weight.grad.mean(1).abs().max() < 1e-6
    with pytest.raises(TypeError, match="exclude"):
        gcore_torch.centralize_grads_(model, exclude=[nn.Embedding])


def test_complex_gradients_rejected_everywhere():
    p = nn.Parameter(torch.randn(3, 4, dtype=torch.complex64))
    p.grad = torch.randn(3, 4, dtype=torch.complex64)
    opt = torch.optim.SGD([p], lr=0.1)
    gcore_torch.apply_gc(opt)
    g0 = p.grad.clone()
    with pytest.raises(TypeError, match="complex64"):
        opt.step()
    torch.testing.assert_close(p.grad, g0, rtol=0, atol=0)  # nothing written
    with pytest.raises(TypeError, match="complex64"):
        gcore_torch.centralize_grads_([p])
    with pytest.raises(TypeError, match="complex64"):
        gcore_torch.centralize_(p.grad)


def test_apply_gc_centralizes_after_the_closure():
    """With a closure (LBFGS, Lightning) the gradients exist only once it has run."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = torch.randn(6, 4)
    for make in (
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        lambda ps: torch.optim.LBFGS(ps, lr=0.1, max_iter=3),
    ):
        opt = make(model.parameters())
        gcore_torch.apply_gc(opt, model=model)

        def closure(opt=opt):
            opt.zero_grad()
            loss = model(x).square().mean() + model.weight.sum()  # non-centred gradient
            loss.backward()
            return loss

        opt.zero_grad(set_to_none=True)
        w0 = model.weight.detach().clone()
        opt.step(closure)
        assert model.weight.grad.mean(1).abs().max() < 1e-6
        if isinstance(opt, torch.optim.SGD):
            torch.testing.assert_close((model.weight.detach() - w0).mean(1), torch.zeros(3))
    # Positional and keyword closures alike.
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gcore_torch.apply_gc(opt)
    opt.step(closure=lambda: (model.zero_grad(), model(x).sum().backward())[0])
    assert model.weight.grad.mean(1).abs().max() < 1e-6


def test_apply_gc_precedence_axes_model_group():
    model = nn.Sequential(nn.ConvTranspose1d(3, 4, 2), nn.Linear(4, 4), nn.Embedding(4, 4))
    extra = nn.Parameter(torch.zeros(3, 5))
    opt = torch.optim.SGD(
        [{"params": list(model.parameters())}, {"params": [extra], "gc_axis": 1}], lr=0.1
    )
    gcore_torch.apply_gc(opt, model=model, axes={model[1].weight: None})
    for p in [*model.parameters(), extra]:
        p.grad = torch.randn_like(p) + 1
    g = {id(p): p.grad.clone() for p in [*model.parameters(), extra]}
    opt.step()
    assert _unit_means_axis(model[0].weight.grad, 1).abs().max() < 1e-6  # from the model
    torch.testing.assert_close(model[1].weight.grad, g[id(model[1].weight)])  # axes: None
    torch.testing.assert_close(model[2].weight.grad, g[id(model[2].weight)])  # embedding
    assert extra.grad.mean(0).abs().max() < 1e-6  # the group's gc_axis=1


def test_param_groups_no_decay():
    torch.manual_seed(0)
    model = TinyGPT()
    groups = gcore_torch.param_groups(model, no_decay=True, weight_decay=0.1, lr=1.0)
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    axis_of = {id(p): g["gc_axis"] for g in groups for p in g["params"]}
    assert wd_of[id(model.c_attn.weight)] == 0.1 and axis_of[id(model.c_attn.weight)] == 1
    for p in (model.c_attn.bias, model.ln.weight, model.ln.bias, model.wte.weight):
        assert wd_of[id(p)] == 0.0 and axis_of[id(p)] is None
    assert len(wd_of) == 5  # the tied head: once, with its embedding (no decay)
    # In training: zero gradients, so only decay moves the weights.
    opt = gcore_torch.AdamW(groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        scale = 0.9 if n == "c_attn.weight" else 1.0
        torch.testing.assert_close(p.detach(), before[n] * scale, msg=n)
    # A tuple names the no-decay modules; ndim < 2 parameters never decay.
    model2 = nn.Sequential(nn.Linear(3, 3), nn.Embedding(4, 3), nn.LayerNorm(3))
    groups = gcore_torch.param_groups(model2, no_decay=(nn.LayerNorm,))
    wd = {id(p): g.get("weight_decay") for g in groups for p in g["params"]}
    assert wd[id(model2[1].weight)] is None and wd[id(model2[0].weight)] is None
    assert wd[id(model2[0].bias)] == 0.0 and wd[id(model2[2].weight)] == 0.0
    # Without no_decay nothing changes: no weight_decay key is written.
    assert all("weight_decay" not in g for g in gcore_torch.param_groups(model2))
    with pytest.raises(TypeError, match="no_decay"):
        gcore_torch.param_groups(model2, no_decay=[nn.LayerNorm])


def test_centralize_grads_on_dtensor_gradients():
    """FSDP2 / DTensor gradients (a one-rank mesh here; two ranks in
    test_torch_distributed): the same GC and the same figure as plain tensors."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    started = not dist.is_initialized()
    if started:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
        )
    try:
        mesh = init_device_mesh("cpu", (1,))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.ConvTranspose1d(6, 3, 2))
        twin = copy.deepcopy(model)
        grads = [torch.randn_like(p) + 0.5 for p in model.parameters()]
        for p, q, g in zip(model.parameters(), twin.parameters(), grads, strict=True):
            p.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            q.grad = g.clone()
        got = gcore_torch.centralize_grads_(model)
        want = gcore_torch.centralize_grads_(twin)
        torch.testing.assert_close(got, want)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p.grad.full_tensor(), q.grad)
    finally:
        if started:
            dist.destroy_process_group()
