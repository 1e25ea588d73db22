"""The cached step plan: after a group's first step has shown where its tensors go (all to
the CPU kernel, or centralized into scratch views for torch's fused or foreach kernels),
later steps reuse that routing. Whatever changes between steps (a missing gradient, a
strided or reshaped one, edited hyperparameters or state, a loaded checkpoint, the kernels
switched off) must give what the general path gives, which is checked here update by update
against the core-rule path (``foreach=False``), on each of the three planned paths.
"""

from __future__ import annotations

import contextlib
import copy

import pytest

torch = pytest.importorskip("torch")
gcore_torch = pytest.importorskip("gcore_torch")

from torch_helpers import kernels_off, one_thread, small_row_blocks  # noqa: E402, F401

from gcore_torch import _kernels  # noqa: E402

SHAPES = [(6, 4, 3, 3), (5, 7), (5,), (3, 8)]
OPTS = {
    "SGD": (gcore_torch.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    "Adam": (gcore_torch.Adam, {"lr": 0.01, "weight_decay": 0.01}),
    "AdamW": (gcore_torch.AdamW, {"lr": 0.01, "amsgrad": True}),
}
STEPS = 6


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if not gcore_torch.load_kernels():
        error = _kernels._state["error"]
        if not _kernels.enabled():
            pytest.skip("GCORE_TORCH_KERNELS=0 turns the compiled kernels off")
        if _kernels._strict():
            pytest.fail(f"GCORE_TORCH_KERNELS_STRICT is set and the build failed: {error}")
        pytest.skip(f"the compiled kernels are unavailable: {error}")


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in SHAPES]


def _grads(step):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=gen, dtype=torch.float64) + 0.3 for s in SHAPES]


def _same_event(event, opt, params, step, grads):
    """Apply ``event`` at ``step`` to one optimizer (both runs get the same)."""
    if event == "grad_missing" and step in (2, 3):
        grads[1] = None
    elif event == "grad_strided" and step == 2:
        grads[0] = grads[0].contiguous(memory_format=torch.channels_last)
        grads[3] = grads[3].t().contiguous().t()
    elif event == "lr_edit" and step == 2:
        opt.param_groups[0]["lr"] = 0.002
    elif event == "option_edit" and step == 3:
        opt.param_groups[0]["maximize"] = True
    elif event == "gc_edit" and step == 2:
        opt.param_groups[0]["gc"] = "conv_only"
    elif event == "where_edit" and step == 2:
        opt.param_groups[0]["gc_where"] = "update"
    elif event == "state_edit" and step == 2:
        for p in params:
            for key, value in opt.state[p].items():
                if key != "step":
                    opt.state[p][key] = torch.zeros_like(value)
    elif event == "checkpoint" and step == 3:
        opt.load_state_dict(copy.deepcopy(opt._saved))
    elif event == "int_step" and step == 2 and "step" in opt.state[params[0]]:
        opt.state[params[0]]["step"] = int(opt.state[params[0]]["step"].item())
    if event == "checkpoint" and step == 1:
        opt._saved = copy.deepcopy(opt.state_dict())


PATHS = {
    "kernels": ({}, contextlib.nullcontext),
    "torch_fused": ({}, kernels_off),
    "torch_fused_rows": ({}, small_row_blocks),
    "foreach": ({"foreach": True}, contextlib.nullcontext),
}


def _run(name, event, path="kernels", **kw):
    cls, opts = OPTS[name]
    params = _params()
    path_kw, context = PATHS[path]
    with context():
        return _steps(cls(params, **opts, **path_kw, **kw), params, event)


def _steps(opt, params, event):
    ups = []
    for t in range(STEPS):
        grads = _grads(t)
        _same_event(event, opt, params, t, grads)
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        if event == "kernels_off" and t >= 2:
            with kernels_off():
                opt.step()
        else:
            opt.step()
        ups.append([p.detach() - b for p, b in zip(params, before, strict=True)])
    return ups, opt


EVENTS = [
    "none",
    "grad_missing",
    "grad_strided",
    "lr_edit",
    "option_edit",
    "gc_edit",
    "where_edit",
    "state_edit",
    "checkpoint",
    "int_step",
    "kernels_off",
]


def _assert_updates_equal(got, want):
    """Every step's update of every parameter equal (float64: to 1e-12)."""
    for t, (g_step, w_step) in enumerate(zip(got, want, strict=True)):
        for k, (g, w) in enumerate(zip(g_step, w_step, strict=True)):
            torch.testing.assert_close(
                g, w, rtol=1e-12, atol=1e-14, msg=lambda m, t=t, k=k: f"step {t} param {k}: {m}"
            )


@pytest.mark.parametrize(
    ("event", "path"),
    # switching the kernels off changes only the kernel path
    [(e, p) for e in EVENTS for p in PATHS if e != "kernels_off" or p == "kernels"],
)
@pytest.mark.parametrize("name", list(OPTS))
def test_planned_steps_follow_the_core_rule(name, event, path):
    got, _ = _run(name, event, path)
    want, _ = _run(name, event, foreach=False)
    _assert_updates_equal(got, want)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(OPTS))
def test_later_steps_skip_the_general_path(name, path, monkeypatch):
    """The plan is used: after the first step the general path's gathering is not run,
    until something the plan depends on changes."""
    cls, opts = OPTS[name]
    params = _params()
    path_kw, context = PATHS[path]
    opt = cls(params, **opts, **path_kw)
    gathered = []
    general = opt._gather
    monkeypatch.setattr(opt, "_gather", lambda *a: gathered.append(1) or general(*a))
    with context():
        for t in range(4):
            for p, g in zip(params, _grads(t), strict=True):
                p.grad = g
            opt.step()
        assert len(gathered) == 1
        opt.param_groups[0]["lr"] = 0.001  # read at every step: the plan stays
        opt.step()
        assert len(gathered) == 1
        opt.param_groups[0]["gc"] = "conv_only"  # routing: the general path once more
        opt.step()
        opt.step()
    assert len(gathered) == 2


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(OPTS))
def test_lr_scheduler_keeps_the_plan_and_follows_the_core_rule(name, path, monkeypatch):
    """A scheduler that sets lr at every step (OneCycle: lr and, for Adam, beta1 move)
    keeps the planned routing, and every update equals the core-rule path's."""

    def run(path_kw, context, spy=False):
        cls, opts = OPTS[name]
        params = _params()
        opt = cls(params, **opts, **path_kw)
        gathered = []
        if spy:
            general = opt._gather
            monkeypatch.setattr(opt, "_gather", lambda *a: gathered.append(1) or general(*a))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS + 1)
        ups = []
        with context():
            for t in range(STEPS):
                before = [p.detach().clone() for p in params]
                for p, g in zip(params, _grads(t), strict=True):
                    p.grad = g
                opt.step()
                sched.step()
                ups.append([p.detach() - b for p, b in zip(params, before, strict=True)])
        return ups, gathered

    path_kw, context = PATHS[path]
    got, gathered = run(path_kw, context, spy=True)
    assert len(gathered) == 1
    want, _ = run({"foreach": False}, contextlib.nullcontext)
    _assert_updates_equal(got, want)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(OPTS))
def test_bad_gradient_after_planned_steps_raises_and_writes_nothing(name, path):
    cls, opts = OPTS[name]
    params = _params()
    path_kw, context = PATHS[path]
    with context():
        _bad_gradients(cls(params, **opts, **path_kw), params)


def _bad_gradients(opt, params):
    for t in range(3):
        for p, g in zip(params, _grads(t), strict=True):
            p.grad = g
        opt.step()
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict()["state"])
    params[1].grad.data = torch.ones(1, 7, dtype=torch.float64)  # behind autograd's check
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\].*\(1, 7\)"):
        opt.step()
    params[1].grad = torch.ones(5, 7, dtype=torch.float64).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradient"):
        opt.step()
    for p, b in zip(params, before, strict=True):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=0)
    for k, entries in opt.state_dict()["state"].items():
        for key, value in entries.items():
            torch.testing.assert_close(value, state[k][key], rtol=0, atol=0)


def test_switching_the_kernels_off_after_planned_steps_is_obeyed(monkeypatch):
    params = _params()
    opt = gcore_torch.SGD(params, lr=0.1, momentum=0.9)
    for t in range(2):
        for p, g in zip(params, _grads(t), strict=True):
            p.grad = g
        opt.step()
    module = _kernels.get()
    seen = []

    class Spy:
        def __getattr__(self, name):
            return lambda *a: seen.append(name) or getattr(module, name)(*a)

    monkeypatch.setitem(_kernels._state, "module", Spy())
    opt.step()
    assert seen == ["gc_sgd_"]
    with kernels_off():
        opt.step()
    assert seen == ["gc_sgd_"]


def test_row_blocks_cover_every_row_once_within_the_block_size():
    """Each block holds at most the block size (or one row, when a row is longer): whole
    parameters, or one piece of a parameter cut into pieces, alone; the blocks together
    hold every row of every member exactly once, in order; the views they hand out are
    those rows, and every block's rows start at the buffer's start."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gcore_torch._base import RowBlocks

    @settings(max_examples=60, deadline=None)
    @given(
        shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 13)), min_size=1, max_size=5),
        block=st.integers(1, 400),
    )
    def check(shapes, block):
        params = [torch.arange(s[0] * s[1], dtype=torch.float32).view(s) for s in shapes]
        rb = RowBlocks(
            params, list(range(len(params))), block, [torch.empty_like(p) for p in params]
        )
        cap = max(1, block // 4)
        rows = {i: [] for i in range(len(params))}
        count = dict.fromkeys(rows, 0)
        pieces = rb.take(params)
        assert len({outs[0].data_ptr() for outs in rb.outs}) == 1
        for b, (block_pieces, outs) in enumerate(zip(rb.blocks, rb.outs, strict=True)):
            size = sum(n * w for _, _, n, w in block_pieces)
            assert size <= cap or (len(block_pieces) == 1 and block_pieces[0][2] == 1)
            split = [i for i, _, _, _ in block_pieces if i in rb.splits]
            assert not split or len(block_pieces) == 1
            for (i, k, n, w), out, piece in zip(block_pieces, outs, pieces[b], strict=True):
                assert w == shapes[i][1] and out.numel() == n * w
                assert k == count[i]  # piece numbers in order
                count[i] += 1
                first = len(rows[i])
                assert torch.equal(piece.reshape(n, w), params[i][first : first + n])
                rows[i].extend(range(first, first + n))
        for i, s in enumerate(shapes):
            assert rows[i] == list(range(s[0]))

    check()


ORDER_OPTS = {
    "SGD": (
        gcore_torch.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    ),
    "Adam": (gcore_torch.Adam, {"lr": 0.01, "weight_decay": 0.01, "amsgrad": True}),
    "AdamW": (gcore_torch.AdamW, {"lr": 0.01, "weight_decay": 0.1, "maximize": True}),
}


def _ordered_run(name, order, dtype):
    """Steps of the pure-PyTorch fused path with the row-block order fixed to ``order``
    (after the first step, which plans); parameters and state at the end."""
    cls, opts = ORDER_OPTS[name]
    params = [torch.nn.Parameter(p.detach().to(dtype)) for p in _params()]
    opt = cls(params, **opts)
    with small_row_blocks():
        for t in range(STEPS):
            for p, g in zip(params, _grads(t), strict=True):
                p.grad = g.to(dtype)
            opt.step()
            rows = opt._plans[0].rows
            rows.order = order
    return params, opt.state_dict()["state"], rows


@pytest.mark.parametrize(
    ("name", "dtype"),
    # bfloat16 SGD never reaches torch's fused CPU kernel (it would skip the dtype)
    [(n, d) for n in ORDER_OPTS for d in (torch.float32, torch.bfloat16)
     if not (n == "SGD" and d == torch.bfloat16)],
)  # fmt: skip
def test_row_block_orders_agree_to_the_bit(name, dtype):
    """The two orders (one is chosen by timing) give bit-identical results."""
    p_a, s_a, rows = _ordered_run(name, "shared", dtype)
    p_b, s_b, _ = _ordered_run(name, "separate", dtype)
    assert len(rows.blocks) > 3  # the shapes are cut into several blocks
    for a, b in zip(p_a, p_b, strict=True):
        assert torch.equal(a, b)
    for k, entries in s_a.items():
        for key, value in entries.items():
            assert torch.equal(value, s_b[k][key]), (k, key)


def test_row_block_order_is_kept_after_timing_both_and_timed_again():
    """Both orders are timed TRIALS steps each, alternating; the faster is kept; it is
    timed again after RETIME steps, and at once after three steps SLOWER than when it was
    chosen."""
    params = _params()
    opt = gcore_torch.Adam(params, lr=0.01)
    t = 0

    def steps(n):
        nonlocal t
        with small_row_blocks():
            for _ in range(n):
                for p, g in zip(params, _grads(t), strict=True):
                    p.grad = g
                opt.step()
                t += 1

    RowBlocks = gcore_torch._base.RowBlocks
    steps(1)  # the general path plans
    rows = opt._plans[0].rows
    seen = []
    steps(2 * RowBlocks.TRIALS - 1)
    assert rows.order is None
    assert [len(rows._times[o]) for o in RowBlocks.ORDERS] == [RowBlocks.TRIALS, 2]
    steps(1)
    assert rows.order in RowBlocks.ORDERS and rows._chosen > 0
    rows.SLOWER = float("inf")  # a slow step on a shared machine must not start it here
    for _ in range(RowBlocks.RETIME - 1):
        steps(1)
        seen.append(rows.order)
    assert None not in seen
    steps(1)
    assert rows.order is None  # due again
    steps(2 * RowBlocks.TRIALS)
    assert rows.order is not None
    del rows.SLOWER
    rows._chosen = 1e-9  # every step now looks slower than when the order was chosen
    steps(2)
    assert rows.order is not None
    steps(1)
    assert rows.order is None
