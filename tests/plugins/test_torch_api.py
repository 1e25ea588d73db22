"""gcore_torch beyond the update math: layouts, apply_gc, centralize_, torch.optim
compatibility (state, checkpoints, closures, schedulers), errors, AMP and torch.compile."""

from __future__ import annotations

import copy
import shutil

import pytest

torch = pytest.importorskip("torch")
gcore_torch = pytest.importorskip("gcore_torch")

from torch import nn  # noqa: E402
from torch_helpers import one_thread  # noqa: E402, F401


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
