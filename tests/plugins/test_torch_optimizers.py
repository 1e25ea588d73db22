"""gcore_torch optimizers: every path step by step against the core rule.

Every path (single, foreach, fused with the compiled kernels, fused with
``GCORE_TORCH_KERNELS=0``, the default, and the fused path on channels_last weights with
contiguous gradients) runs the shared conformance table (tests/plugins/conformance.py) in
float64, float32, float16 and bfloat16, update by update against gcore's core rule.
Then, over 20 steps, foreach and fused must follow the single path (float64 to 1e-12,
float32 to 1e-6) for every option combination torch allows, on Linear/Conv (axis 0),
ConvTranspose (axis 1) and grouped ConvTranspose weights, with a parameter whose grad
stays None; with ``gc=False`` each path must equal the matching ``torch.optim`` path.
The last section holds one test per bug of issue 11 (each failed before its fix).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import shutil

import conformance
import pytest

torch = pytest.importorskip("torch")
gcore_torch = pytest.importorskip("gcore_torch")

from torch_helpers import (  # noqa: E402
    TOL,
    assert_traj_close,
    clone_state,
    groups_of,
    kernels_off,
    make_params,
    one_thread,  # noqa: F401
    run,
    small_row_blocks,
    updates,
)

from gcore_torch import _kernels  # noqa: E402

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
HAVE_COMPILER = shutil.which("c++") is not None or shutil.which("g++") is not None


# -- every path against the core rule, through the shared conformance driver ------------
class TorchStepper:
    """A gcore_torch optimizer on a conformance case, on one path.

    ``path``: constructor flags; ``kernels``: compiled kernels allowed (``"rows"``: off,
    and the pure-PyTorch path's row blocks a few rows long); ``channels_last``: 4-D weights
    in channels_last memory format with contiguous gradients.
    """

    def __init__(self, case, params, *, path, kernels=True, channels_last=False):
        self.dtype = TORCH_DTYPES[case.dtype]
        self.kernels = kernels
        self.params = []
        for x in params:
            t = torch.tensor(x, dtype=torch.float64).to(self.dtype)
            if channels_last and t.ndim == 4:
                t = t.to(memory_format=torch.channels_last)
            self.params.append(torch.nn.Parameter(t))
        gc_opts = {
            "off": {"gc": False},
            "on": {},
            "conv_only": {"gc": "conv_only"},
            "update": {"gc_where": "update"},
        }[case.gc_option]
        by_axis = {}
        for p, axis in zip(self.params, case.axes, strict=True):
            by_axis.setdefault(axis, []).append(p)
        groups = [{"params": ps, "gc_axis": axis} for axis, ps in by_axis.items()]
        kw = {k: v for k, v in case.kwargs.items() if not _default_option(k, v)}
        cls = getattr(gcore_torch, case.family)
        self.opt = cls(groups, **kw, **gc_opts, **path)

    def step(self, grads):
        for p, g in zip(self.params, grads, strict=True):
            p.grad = torch.tensor(g, dtype=torch.float64).to(self.dtype)
        context = {True: contextlib.nullcontext, False: kernels_off, "rows": small_row_blocks}
        with context[self.kernels]():
            self.opt.step()
        return [p.detach().to(torch.float64).clone().numpy() for p in self.params]


def assert_updates_close(actual, desired, start, rtol, msg):
    """Each step's update (``p_t - p_{t-1}``) against the reference's: to ``rtol`` of the
    update's scale, plus the two roundings of writing the weight (an ulp of the weight)."""
    ups_a, ups_d = updates(actual, start), updates(desired, start)
    for t, (a_step, d_step) in enumerate(zip(ups_a, ups_d, strict=True)):
        for k, (a, d) in enumerate(zip(a_step, d_step, strict=True)):
            scale = float(d.abs().max())
            ulp = torch.finfo(d.dtype).eps * float(desired[t][k].abs().max())
            torch.testing.assert_close(
                a, d, rtol=0, atol=rtol * scale + 2 * ulp,
                msg=lambda m, t=t, k=k: f"{msg}: update of step {t} param {k}: {m}",
            )  # fmt: skip


def _default_option(key, value):
    # Core options gcore_torch does not take (optax's); the table leaves them at default.
    return (key in ("nesterov", "mu_dtype", "accumulator_dtype") and value in (False, None)) or (
        key == "convention" and value == "torch"
    )


CONFORMANCE_PATHS = {
    "single": ({"foreach": False}, {}),
    "foreach": ({"foreach": True}, {}),
    "fused-kernels": ({"fused": True}, {}),
    "fused-torch": ({"fused": True}, {"kernels": False}),
    "fused-torch-rows": ({"fused": True}, {"kernels": "rows"}),
    "default": ({}, {}),
    "default-channels_last": ({}, {"channels_last": True}),
    "default-channels_last-torch": ({}, {"channels_last": True, "kernels": False}),
}


def _conformance_params():
    # gc_where="update" takes the core rule on every path: run it on two paths only.
    out = []
    for case in conformance.cases():
        for path in CONFORMANCE_PATHS:
            if case.gc_option == "update" and path not in ("default", "foreach"):
                continue
            out.append(pytest.param(case, path, id=f"{case}-{path}"))
    return out


@pytest.mark.parametrize(("case", "path"), _conformance_params())
def test_conforms_to_core_rule(case, path):
    flags, opts = CONFORMANCE_PATHS[path]
    conformance.assert_matches_rule(lambda c, ps: TorchStepper(c, ps, path=flags, **opts), case)
    if (
        path in ("fused-kernels", "default")
        and case.gc_option != "off"  # gc=False runs torch's own kernels
        and case.dtype in ("float32", "float64")
        and HAVE_COMPILER
        and _kernels.enabled()
    ):
        assert _kernels.get() is not None, "the compiled kernels were not built"


PATHS = {
    "foreach": ({"foreach": True}, True),
    "fused": ({"fused": True}, True),
    "fused-no-kernels": ({"fused": True}, False),
    "default": ({}, True),
}
TORCH_PATHS = {
    "single": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
GC_WHERE = [
    (True, "gradient"),
    (True, "update"),
    ("conv_only", "gradient"),
    ("conv_only", "update"),
    (False, "gradient"),
]
DTYPES = [torch.float64, torch.float32]


def _id(v):
    return str(v).replace("torch.", "")


def _lr(dtype):
    # float32: the core rule rounds its bias corrections in float32, torch's in float64;
    # a small lr keeps that rounding (6e-6 of one update) well below 1e-6 of the weights.
    return 0.01 if dtype == torch.float64 else 1e-3


def _check_paths(cls, dtype, torch_cls=None, **opts):
    def factory(path, klass=cls, extra=None):
        def make(params, idle):
            return klass(groups_of(params, idle), **opts, **path, **(extra or {}))

        return make

    ref, _, _ = run(factory({"foreach": False}), dtype)
    start = [p.detach().clone() for p in make_params(dtype)[0]]
    for name, (path, kernels) in PATHS.items():
        with contextlib.nullcontext() if kernels else kernels_off():
            got, _, _ = run(factory(path), dtype)
        assert_traj_close(got, ref, TOL[dtype], f"{name} vs single")
        assert_updates_close(got, ref, start, TOL[dtype], name)
    if torch_cls is not None:
        torch_opts = {k: v for k, v in opts.items() if not k.startswith("gc")}
        for name, path in TORCH_PATHS.items():
            ours, _, _ = run(factory(path), dtype)
            with kernels_off():
                ours_nk, _, _ = run(factory(path), dtype)
            assert_traj_close(ours_nk, ours, TOL[dtype], f"gc=False {name} kernels off vs on")
            theirs, _, _ = run(
                lambda ps, idle, path=path: torch_cls(groups_of(ps, idle), **torch_opts, **path),
                dtype,
            )
            assert_traj_close(ours, theirs, TOL[dtype], f"gc=False {name} vs torch.optim")


ADAM_CASES = list(itertools.product(["Adam", "AdamW"], [False, True], [False, True], [0.0, 0.1]))


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize(("gc", "where"), GC_WHERE, ids=_id)
@pytest.mark.parametrize(("name", "amsgrad", "maximize", "weight_decay"), ADAM_CASES, ids=_id)
def test_adam_paths_match_reference(name, amsgrad, maximize, weight_decay, gc, where, dtype):
    _check_paths(
        getattr(gcore_torch, name),
        dtype,
        torch_cls=getattr(torch.optim, name) if gc is False else None,
        lr=_lr(dtype),
        amsgrad=amsgrad,
        maximize=maximize,
        weight_decay=weight_decay,
        gc=gc,
        gc_where=where,
    )


SGD_MOMENTUM = [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.5, False), (0.9, 0.0, True)]
SGD_CASES = list(itertools.product(SGD_MOMENTUM, [False, True], [0.0, 0.1]))


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize(("gc", "where"), GC_WHERE, ids=_id)
@pytest.mark.parametrize(("mdn", "maximize", "weight_decay"), SGD_CASES, ids=_id)
def test_sgd_paths_match_reference(mdn, maximize, weight_decay, gc, where, dtype):
    momentum, dampening, nesterov = mdn
    _check_paths(
        gcore_torch.SGD,
        dtype,
        torch_cls=torch.optim.SGD if gc is False else None,
        lr=0.05,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        maximize=maximize,
        weight_decay=weight_decay,
        gc=gc,
        gc_where=where,
    )


def test_reference_path_is_the_core_rule():
    """The single path equals gcore.Adam.update applied by hand (axis 0 tensor)."""
    import gcore

    w0 = torch.randn(4, 6, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    opt = gcore_torch.Adam([p], lr=0.1, weight_decay=0.2, foreach=False)
    rule = gcore.Adam(lr=0.1, weight_decay=0.2)
    w, state = w0.clone(), rule.init(w0)
    for _ in range(3):
        g = torch.randn(4, 6, dtype=torch.float64)
        p.grad = g
        opt.step()
        upd, state = rule.update(g, state, w)
        w = w + upd
        torch.testing.assert_close(p.detach(), w, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("path", ["single", "foreach", "fused"])
@pytest.mark.parametrize("cls", ["SGD", "Adam"])
def test_gc_sgd_keeps_unit_means_in_every_layout(cls, path):
    """GC on the update keeps each output unit's weight mean (axis 0, 1 and grouped)."""
    flags = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    where = "gradient" if cls == "SGD" else "update"
    params, idle = _fresh()
    before = [_unit_means(p, gi) for p, gi in zip(params, _GROUP_IDX, strict=True)]
    opt = getattr(gcore_torch, cls)(groups_of(params, idle), lr=0.1, gc_where=where, **flags[path])
    for _ in range(5):
        for p in params:
            p.grad = torch.randn_like(p) + 1.0
        opt.step()
    for p, gi, b in zip(params, _GROUP_IDX, before, strict=True):
        if p.ndim >= 2:
            torch.testing.assert_close(_unit_means(p, gi), b, rtol=1e-12, atol=1e-12)
        else:
            assert not torch.allclose(_unit_means(p, gi), b)


_GROUP_IDX = [0, 0, 0, 1, 2]


def _fresh():
    return make_params(torch.float64)


def _unit_means(p, group_index):
    x = p.detach()
    if x.ndim < 2:
        return x.clone()
    if group_index == 0:
        return x.reshape(x.shape[0], -1).mean(1)
    if group_index == 1:
        return x.movedim(1, 0).reshape(x.shape[1], -1).mean(1)
    g = x.unflatten(0, (2, -1))  # (groups, in/g, out/g, k)
    return g.mean(dim=(1, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_paths_agree(dtype):
    """bf16/fp16 parameters: every path runs and agrees with the reference loosely."""
    # eps=1e-8 underflows in float16 arithmetic (the core rule computes in the
    # parameter's dtype; torch's kernels in float32), so float16 uses a larger eps.
    eps = 1e-8 if dtype == torch.bfloat16 else 1e-3

    def make(**path):
        return lambda ps, idle: gcore_torch.Adam(groups_of(ps, idle), eps=eps, **path)

    ref, _, _ = run(make(foreach=False), dtype)
    for path in ({"foreach": True}, {"fused": True}):
        got, _, _ = run(make(**path), dtype)
        assert_traj_close(
            [[t.float() for t in s] for s in got], [[t.float() for t in s] for s in ref], 2e-2
        )


def test_default_path_without_kernels_is_torch_fused(monkeypatch):
    """GCORE_TORCH_KERNELS=0: the default CPU path centralizes, then torch's fused Adam."""
    monkeypatch.setenv("GCORE_TORCH_KERNELS", "0")
    calls = []
    real = torch._fused_adam_
    monkeypatch.setattr(torch, "_fused_adam_", lambda *a, **k: calls.append(1) or real(*a, **k))
    p = torch.nn.Parameter(torch.randn(8, 4))
    opt = gcore_torch.Adam([p])
    p.grad = torch.randn(8, 4)
    opt.step()
    assert calls


# -- issue 11: one test per bug (each failed before its fix) ----------------------------
ALL_PATHS = {
    "single": ({"foreach": False}, True),
    "foreach": ({"foreach": True}, True),
    "fused": ({"fused": True}, True),
    "fused-no-kernels": ({"fused": True}, False),
    "default": ({}, True),
    "default-no-kernels": ({}, False),
}
CLASSES = [
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("Adam", {"lr": 0.1}),
    ("AdamW", {"lr": 0.1, "amsgrad": True}),
]


def _mode(kernels):
    return contextlib.nullcontext() if kernels else kernels_off()


@pytest.mark.parametrize("gc", [True, False])
@pytest.mark.parametrize("path", list(ALL_PATHS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=_id)
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_low_precision_weights_move_like_torch_default(name, dtype, path, gc):
    """bf16/fp16 weights step on every path (torch's fused CPU SGD kernel skips them and
    used to be the default: the weights stayed at zero), as torch.optim's default does."""
    flags, kernels = ALL_PATHS[path]
    kw = {"lr": 1.0, "momentum": 0.9} if name == "SGD" else {"lr": 0.5}
    base = torch.ones(4, 16) + torch.arange(16.0)
    grads = [base, base.flip(1) * 0.5]
    w = torch.zeros(4, 16, dtype=dtype, requires_grad=True)
    opt = getattr(gcore_torch, name)([w], gc=gc, **kw, **flags)
    ref_w = torch.zeros(4, 16, dtype=dtype, requires_grad=True)
    ref = getattr(torch.optim, name)([ref_w], **kw)  # torch's default: the for-loop
    for g in grads:
        w.grad = g.to(dtype)
        # GC: torch's step on the centralized gradient (mean in float32, as gcore does).
        ref_w.grad = (g - g.mean(1, keepdim=True)).to(dtype) if gc else g.to(dtype)
        with _mode(kernels):
            opt.step()
        ref.step()
    assert w.detach().abs().sum() > 0
    # float16 Adam: gcore's rule (single; foreach) evaluates sqrt(v) + eps and the
    # division in float32, torch's for-loop in float16: a rounding or two apart.
    tol = {"rtol": 2e-3, "atol": 2e-3} if (name, dtype) == ("Adam", torch.float16) else {}
    torch.testing.assert_close(w.detach(), ref_w.detach(), **tol)


@pytest.mark.parametrize("path", list(ALL_PATHS))
@pytest.mark.parametrize(("name", "kw"), CLASSES, ids=[c[0] for c in CLASSES])
def test_checkpoint_of_other_shapes_raises_before_writing(name, kw, path):
    """A state_dict whose state shapes do not match the parameters raises ValueError
    naming the parameter, and leaves this optimizer as it was (it used to write past the
    end of the buffers: heap corruption, SIGABRT)."""
    flags, kernels = ALL_PATHS[path]
    cls = getattr(gcore_torch, name)
    small = torch.nn.Parameter(torch.randn(2, 3))
    opt_small = cls([small], **kw, **flags)
    small.grad = torch.randn(2, 3)
    with _mode(kernels):
        opt_small.step()
    big = torch.nn.Parameter(torch.randn(4, 3))
    opt = cls([big], **kw, **flags)
    big.grad = torch.randn(4, 3)
    with _mode(kernels):
        opt.step()
    before = clone_state(opt)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\].*shape \(2, 3\)"):
        opt.load_state_dict(opt_small.state_dict())
    after = opt.state_dict()
    for key, value in before["state"][0].items():
        torch.testing.assert_close(after["state"][0][key], value, rtol=0, atol=0)
    with _mode(kernels):
        opt.step()  # still usable


@pytest.mark.parametrize("path", list(ALL_PATHS))
@pytest.mark.parametrize(("name", "kw"), CLASSES, ids=[c[0] for c in CLASSES])
@pytest.mark.parametrize("grad_format", ["contiguous", "channels_last"])
def test_channels_last_and_strided_weights_equal_contiguous(name, kw, path, grad_format):
    """channels_last weights (grads contiguous or channels_last) and non-contiguous
    weights and grads give the contiguous result on every path (channels_last weights
    with contiguous grads used to crash the fused path)."""
    flags, kernels = ALL_PATHS[path]
    cls = getattr(gcore_torch, name)
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(8, 3, 3, 3, generator=gen)
    t0 = torch.randn(5, 7, generator=gen)
    grads = [(torch.randn(8, 3, 3, 3, generator=gen), torch.randn(5, 7, generator=gen))
             for _ in range(3)]  # fmt: skip

    def trajectory(strided):
        w = w0.clone()
        t = t0.clone()
        if strided:
            w = w.to(memory_format=torch.channels_last)
            t = t0.t().contiguous().t()  # a transposed (non-contiguous) leaf
        w, t = torch.nn.Parameter(w), torch.nn.Parameter(t)
        opt = cls([w, t], weight_decay=0.1, **kw, **flags)
        for gw, gt in grads:
            if strided:
                gw = (
                    gw.to(memory_format=torch.channels_last) if grad_format != "contiguous" else gw
                )
                gt = torch.cat([gt, gt]).view(2, 5, 7)[1]  # a view with an offset
            w.grad, t.grad = gw.clone() if not strided else gw, gt
            with _mode(kernels):
                opt.step()
        return [w.detach().contiguous(), t.detach().contiguous()], opt, w

    want, _, _ = trajectory(False)
    got, _, w = trajectory(True)
    assert w.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("path", list(ALL_PATHS))
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_checkpoint_with_int_step_loads_like_torch(name, path):
    """An old checkpoint whose ``step`` is a Python int loads and steps like torch.optim
    (it used to fail at step(): 'int' object has no attribute 'device')."""
    flags, kernels = ALL_PATHS[path]
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    opt = getattr(gcore_torch, name)([w], lr=0.1, gc=False, **flags)
    w.grad = torch.randn(3, 4, dtype=torch.float64)
    opt.step()
    sd = opt.state_dict()
    for st in sd["state"].values():
        st["step"] = int(st["step"].item())
    ours_w = torch.nn.Parameter(w.detach().clone())
    theirs_w = torch.nn.Parameter(w.detach().clone())
    ours = getattr(gcore_torch, name)([ours_w], lr=0.1, gc=False, **flags)
    theirs = getattr(torch.optim, name)([theirs_w], lr=0.1)
    # Each gets its own copy: load_state_dict keeps tensors that need no cast.
    ours.load_state_dict(copy.deepcopy(sd))
    theirs.load_state_dict(copy.deepcopy(sd))
    g = torch.randn(3, 4, dtype=torch.float64)
    ours_w.grad, theirs_w.grad = g, g.clone()
    with _mode(kernels):
        ours.step()
    theirs.step()
    torch.testing.assert_close(ours_w, theirs_w, rtol=1e-12, atol=1e-12)
    assert float(ours.state[ours_w]["step"]) == 2.0


@pytest.mark.parametrize("planned", [False, True], ids=["fresh", "planned"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_id)
@pytest.mark.parametrize("path", list(ALL_PATHS))
def test_checkpoint_with_int64_step_tensor_loads_like_torch(path, dtype, planned):
    """torch.optim.Adam's default keeps an int64 ``step`` tensor of a checkpoint as it is
    and steps on; gcore_torch handed it to torch's fused kernel (bfloat16 weights, or the
    kernels off), which raised. Also into an optimizer that has stepped (a cached plan)."""
    flags, kernels = ALL_PATHS[path]
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=dtype))
    theirs_w = torch.nn.Parameter(w.detach().clone())
    ours = gcore_torch.Adam([w], lr=0.01, gc=False, **flags)
    theirs = torch.optim.Adam([theirs_w], lr=0.01)
    with _mode(kernels):
        for opt, p in ((ours, w), (theirs, theirs_w)):
            for _ in range(2 if planned else 1):
                p.grad = torch.ones(3, 4, dtype=dtype)
                opt.step()
        sd = theirs.state_dict()
        sd["state"][0]["step"] = torch.tensor(int(sd["state"][0]["step"]))  # int64
        ours.load_state_dict(copy.deepcopy(sd))
        theirs.load_state_dict(copy.deepcopy(sd))
        g = torch.randn(3, 4, dtype=dtype)
        w.grad, theirs_w.grad = g, g.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(w, theirs_w, rtol=tol, atol=tol)
    assert float(ours.state[w]["step"]) == float(theirs.state[theirs_w]["step"])


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_fused_false_is_not_the_fused_path(name):
    """``fused=False`` (foreach unset) steps one tensor at a time on the CPU, as
    torch.optim does, instead of taking the fused default."""
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = getattr(gcore_torch, name)([w], lr=0.1, fused=False)
    assert opt._path(opt.param_groups[0], [w]) == "single"
    default = getattr(gcore_torch, name)([w], lr=0.1)
    assert default._path(default.param_groups[0], [w]) == "fused"


EXACT_CASES = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "maximize": True}),
    ("Adam", {"lr": 1e-2, "weight_decay": 0.1}),
    ("Adam", {"lr": 1e-2, "amsgrad": True, "maximize": True}),
    ("AdamW", {"lr": 1e-2}),
]
TORCH_FLAGS = {"default": {}, "single": {"foreach": False}, "foreach": {"foreach": True},
               "fused": {"fused": True}}  # fmt: skip


@pytest.mark.parametrize("off", [{"gc": False}, {"gc_axis": None}], ids=["gc_off", "axis_none"])
@pytest.mark.parametrize("path", list(TORCH_FLAGS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=_id)
@pytest.mark.parametrize(("name", "kw"), EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_gc_false_is_torch_optim_bit_for_bit(name, kw, dtype, path, off):
    """``gc=False`` runs torch.optim's own kernels with the same flags (the default path:
    torch's fused kernel, where torch.optim's default on the CPU is its slower for-loop),
    so weights and state equal torch.optim's bit for bit, and an A/B of GC against no GC
    differs by GC alone (the compiled kernels and the core rule are a rounding or so
    apart). The exception: float16/bfloat16 SGD on the fused path, where torch's CPU
    kernel leaves the weights (see the test above); gcore takes torch's foreach kernel."""
    fused_skips = name == "SGD" and dtype == torch.bfloat16
    if path == "fused" and fused_skips:
        pytest.skip("torch's fused CPU SGD skips bfloat16 weights; gcore steps them")
    shapes = [(8, 4, 3, 3), (16, 8), (5,), (6, 4, 1, 1)]
    gen = torch.Generator().manual_seed(0)

    def params():
        ps = [torch.randn(s, generator=torch.Generator().manual_seed(i), dtype=dtype)
              for i, s in enumerate(shapes)]  # fmt: skip
        ps[3] = ps[3].to(memory_format=torch.channels_last)
        return [torch.nn.Parameter(p) for p in ps]

    ours_p, theirs_p = params(), params()
    flags = TORCH_FLAGS[path]
    ours = getattr(gcore_torch, name)(ours_p, **off, **kw, **flags)
    if path == "default":
        flags = {"foreach": True} if fused_skips else {"fused": True}
    theirs = getattr(torch.optim, name)(theirs_p, **kw, **flags)
    for _ in range(4):
        for a, b in zip(ours_p, theirs_p, strict=True):
            a.grad = torch.randn(a.shape, generator=gen, dtype=dtype)
            b.grad = a.grad.clone()
        ours.step()
        theirs.step()
        for a, b in zip(ours_p, theirs_p, strict=True):
            assert torch.equal(a, b), f"{name} {path}: weights differ"
            for key, value in theirs.state[b].items():
                assert torch.equal(ours.state[a][key].to(value.device), value), key


def test_gc_false_float32_beside_float16_is_torch_optim_bit_for_bit():
    """float16 keeps the core rule on the single path (torch adds eps in float16); the
    float32 tensors of the same group are still torch's, bit for bit (the whole group
    went to the core rule)."""
    torch.manual_seed(0)
    w32, w16 = torch.randn(6, 5), torch.randn(4, 3).half()
    ours = [torch.nn.Parameter(w32.clone()), torch.nn.Parameter(w16.clone())]
    theirs = [torch.nn.Parameter(w32.clone())]
    opt = gcore_torch.Adam(ours, lr=1e-2, gc=False, foreach=False)
    ref = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for _ in range(4):
        g = torch.randn(6, 5)
        ours[0].grad, ours[1].grad, theirs[0].grad = g.clone(), torch.randn(4, 3).half(), g
        opt.step()
        ref.step()
        assert torch.equal(ours[0], theirs[0])
    assert torch.isfinite(ours[1]).all() and not torch.equal(ours[1].detach(), w16)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_checkpoint_without_gc_keys_or_newer_torch_keys_loads(name):
    w = torch.nn.Parameter(torch.randn(3, 4))
    opt = getattr(gcore_torch, name)([w], lr=0.1, gc="conv_only")
    w.grad = torch.randn(3, 4)
    opt.step()
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        for key in ("gc", "gc_where", "gc_axis", "gc_groups", "fused", "foreach", "maximize"):
            g.pop(key, None)
    fresh = getattr(gcore_torch, name)([w], lr=0.1, gc="conv_only")
    fresh.load_state_dict(sd)
    fresh.step()
    assert fresh.param_groups[0]["gc"] == "conv_only"
    assert fresh.param_groups[0]["maximize"] is False


@pytest.mark.parametrize("bad", [None, 0, 1, "conv-only", "yes"])
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_gc_values_other_than_true_false_conv_only_raise_after_load_and_edit(name, bad):
    """``gc=None``, ``0`` or ``"conv-only"`` in a loaded or edited group used to mean
    "GC on"; they raise (on load before anything is written, on an edit at step())."""
    w = torch.nn.Parameter(torch.randn(3, 4))
    opt = getattr(gcore_torch, name)([w], lr=0.1)
    w.grad = torch.randn(3, 4)
    opt.step()
    sd = opt.state_dict()
    sd["param_groups"][0]["gc"] = bad
    fresh = getattr(gcore_torch, name)([w], lr=0.1)
    with pytest.raises(ValueError, match="gc="):
        fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["gc"] is True and len(fresh.state) == 0
    opt.param_groups[0]["gc"] = bad
    before = w.detach().clone()
    with pytest.raises(ValueError, match=r"gc=.*param_groups\[0\]"):
        opt.step()
    torch.testing.assert_close(w.detach(), before, rtol=0, atol=0)


def test_checkpoint_with_invalid_gc_where_raises():
    """A checkpoint with gc_where='gradients' used to run the update variant silently."""
    w = torch.nn.Parameter(torch.randn(3, 4))
    opt = gcore_torch.Adam([w], lr=0.1)
    sd = opt.state_dict()
    sd["param_groups"][0]["gc_where"] = "gradients"
    with pytest.raises(ValueError, match="gc_where"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["gc_where"] == "gradient"


@pytest.mark.parametrize("path", list(ALL_PATHS))
@pytest.mark.parametrize(("name", "kw"), CLASSES, ids=[c[0] for c in CLASSES])
def test_negative_lr_set_on_param_groups_raises_on_every_path(name, kw, path):
    """``param_groups[0]['lr'] = -0.1`` raised on one path and silently climbed on three."""
    flags, kernels = ALL_PATHS[path]
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = getattr(gcore_torch, name)([w], **kw, **flags)
    w.grad = torch.randn(4, 3)
    with _mode(kernels):
        opt.step()
    opt.param_groups[0]["lr"] = -0.1
    before = w.detach().clone()
    with pytest.raises(ValueError, match="lr"), _mode(kernels):
        opt.step()
    torch.testing.assert_close(w.detach(), before, rtol=0, atol=0)
    opt.param_groups[0]["lr"] = 0.05  # a valid edit is taken
    with _mode(kernels):
        opt.step()
    assert not torch.equal(w.detach(), before)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_classes_are_torch_optim_subclasses(name):
    """isinstance holds, so torch's helpers and training frameworks recognise them."""
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = getattr(gcore_torch, name)([w], lr=0.1)
    assert isinstance(opt, getattr(torch.optim, name))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=4)
    w.grad = torch.randn(4, 3)
    opt.step()
    sched.step()


@pytest.mark.parametrize("gc", ["on", "off"])
@pytest.mark.parametrize("path", list(ALL_PATHS))
def test_adamw_paper_convention_on_every_path(path, gc):
    """``convention="paper"`` (a param-group key) follows gcore.AdamW(convention="paper")."""
    import gcore

    flags, kernels = ALL_PATHS[path]
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(6, 2, 2, 2, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(w0.clone())
    opt = gcore_torch.AdamW([w], lr=0.05, weight_decay=0.2, convention="paper",
                            gc=gc == "on", **flags)  # fmt: skip
    rule = gcore.AdamW(lr=0.05, weight_decay=0.2, convention="paper",
                       gc=gcore.GC() if gc == "on" else None)  # fmt: skip
    ref, state = w0.clone(), rule.init(w0)
    for _ in range(4):
        g = torch.randn(6, 2, 2, 2, generator=gen, dtype=torch.float64)
        w.grad = g
        with _mode(kernels):
            opt.step()
        upd, state = rule.update(g, state, ref)
        ref = ref + upd
        torch.testing.assert_close(w.detach(), ref, rtol=1e-12, atol=1e-12)
