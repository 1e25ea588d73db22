"""gcore_torch optimizers: every path step by step against the core-rule reference.

The single-tensor path runs gcore's rules; foreach and fused must follow it over 20 steps
(float64 to 1e-12, float32 to 1e-6) for every option combination torch allows, with GC
on the gradient or the update, on Linear/Conv (axis 0), ConvTranspose (axis 1) and
grouped ConvTranspose weights, with a parameter whose grad stays None. With ``gc=False``
each path must equal the matching ``torch.optim`` path.
"""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
gcore_torch = pytest.importorskip("gcore_torch")

from torch_helpers import TOL, assert_traj_close, groups_of, one_thread, run  # noqa: E402, F401

PATHS = {"foreach": {"foreach": True}, "fused": {"fused": True}, "default": {}}
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
    for name, path in PATHS.items():
        got, _, _ = run(factory(path), dtype)
        assert_traj_close(got, ref, TOL[dtype], f"{name} vs single")
    if torch_cls is not None:
        torch_opts = {k: v for k, v in opts.items() if not k.startswith("gc")}
        for name, path in TORCH_PATHS.items():
            ours, _, _ = run(factory(path), dtype)
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
    from torch_helpers import make_params

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
