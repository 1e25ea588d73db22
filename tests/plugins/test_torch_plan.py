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
import gc
import weakref

import pytest

torch = pytest.importorskip("torch")
gcore_torch = pytest.importorskip("gcore_torch")

from torch_helpers import (  # noqa: E402, F401
    kernels_off,
    need_kernels,
    one_thread,
    small_row_blocks,
)

from gcore_torch import _base, _kernels  # noqa: E402
from gcore_torch._base import RowBlocks  # noqa: E402

SHAPES = [(6, 4, 3, 3), (5, 7), (5,), (3, 8)]
OPTS = {
    "SGD": (gcore_torch.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    "Adam": (gcore_torch.Adam, {"lr": 0.01, "weight_decay": 0.01}),
    "AdamW": (gcore_torch.AdamW, {"lr": 0.01, "amsgrad": True}),
}
STEPS = 6


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
    elif event == "frozen" and step < 4:  # frozen from the start, then unfrozen
        grads[2] = None
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


def _route(path):
    """A path's optimizer options and context (the kernel path only where it is built)."""
    if path == "kernels":
        need_kernels()
    return PATHS[path]


def _run(name, event, path=None, **kw):
    """Updates of every step; ``path=None``: the constructor's options alone."""
    cls, opts = OPTS[name]
    params = _params()
    path_kw, context = _route(path) if path else ({}, contextlib.nullcontext)
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
    "frozen",
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


def _counting_gathers(name, path, monkeypatch):
    """An optimizer on ``path`` whose general path's gatherings are counted in a list."""
    cls, opts = OPTS[name]
    params = _params()
    path_kw, context = _route(path)
    opt = cls(params, **opts, **path_kw)
    gathered = []
    general = opt._gather
    monkeypatch.setattr(opt, "_gather", lambda *a: gathered.append(1) or general(*a))
    return opt, params, gathered, context


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(OPTS))
def test_later_steps_skip_the_general_path(name, path, monkeypatch):
    """The plan is used: after the first step the general path's gathering is not run,
    until something the plan depends on changes."""
    opt, params, gathered, context = _counting_gathers(name, path, monkeypatch)
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
def test_a_frozen_member_keeps_the_plan_until_it_has_a_gradient(name, path, monkeypatch):
    """A member without a gradient (a frozen layer left in the group, as param_groups(model)
    leaves it) does not keep the group off its plan; once it has a gradient, the general
    path runs again and takes it in."""
    opt, params, gathered, context = _counting_gathers(name, path, monkeypatch)
    with context():
        for t in range(4):
            for k, (p, g) in enumerate(zip(params, _grads(t), strict=True)):
                p.grad = None if k == 0 else g
            opt.step()
        assert len(gathered) == 1
        assert opt.state[params[0]] == {}
        params[0].grad = _grads(4)[0]
        before = params[0].detach().clone()
        opt.step()
        assert len(gathered) == 2
        assert not torch.equal(params[0].detach(), before)
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

    path_kw, context = _route(path)
    got, gathered = run(path_kw, context, spy=True)
    assert len(gathered) == 1
    want, _ = run({"foreach": False}, contextlib.nullcontext)
    _assert_updates_equal(got, want)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(OPTS))
def test_bad_gradient_after_planned_steps_raises_and_writes_nothing(name, path):
    cls, opts = OPTS[name]
    params = _params()
    path_kw, context = _route(path)
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
    need_kernels()
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


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_group_the_kernels_do_not_take_is_planned_with_them_loaded(name, monkeypatch):
    """A bfloat16 group (no tensor the CPU kernels take) is planned on torch's kernels
    whether or not the kernels are built (it took the general path at every step once
    they were), and follows the core rule; cast to float32 behind the plan, it goes back
    to the general path, which sends it to the kernels."""
    need_kernels()
    cls, opts = OPTS[name]
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).bfloat16()) for s in SHAPES]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt, single = cls(params, **opts), cls(ref, **opts, foreach=False)
    gathered = []
    general = opt._gather
    monkeypatch.setattr(opt, "_gather", lambda *a: gathered.append(1) or general(*a))
    for t in range(4):
        for p, q, g in zip(params, ref, _grads(t), strict=True):
            p.grad, q.grad = g.bfloat16(), g.bfloat16()
        opt.step()
        single.step()
        for p, q in zip(params, ref, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-2)
    assert len(gathered) == 1 and _kernels.loaded()
    plan = opt._plans[0]
    assert isinstance(plan, _base.TorchPlan) and plan.kernel_free
    # the model cast to float32 behind the plan (p.data, the state by hand): tensors the
    # kernels take; the plan's bfloat16 buffers would fail half-way (the counts advanced)
    for p in params:
        p.data = p.data.float()
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in opt.state[p]:
                opt.state[p][key] = opt.state[p][key].float()
    for p, g in zip(params, _grads(5), strict=True):
        p.grad = g.float()
    opt.step()
    assert len(gathered) == 2 and isinstance(opt._plans[0], _base.KernelPlan)
    assert all(int(opt.state[p]["step"]) == 5 for p in params)


def test_row_blocks_cover_every_row_once_within_the_block_size():
    """Each block holds at most the block size (or one row, when a row is longer): whole
    parameters, or one piece of a parameter cut into pieces, alone; the blocks together
    hold every row of every member exactly once, in order; the views they hand out are
    those rows, inside the buffer and not overlapping within a block, for any number of
    threads."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None)
    @given(
        shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 13)), min_size=1, max_size=5),
        block=st.integers(1, 400),
        threads=st.integers(1, 5),
    )
    def check(shapes, block, threads):
        params = [torch.arange(s[0] * s[1], dtype=torch.float32).view(s) for s in shapes]
        rb = RowBlocks(params, list(range(len(params))), block)
        rb._place(threads)
        cap = max(1, block // 4)
        rows = {i: [] for i in range(len(params))}
        count = dict.fromkeys(rows, 0)
        pieces = rb.take(params)
        start, end = rb.buffer.data_ptr(), rb.buffer.data_ptr() + rb.buffer.numel() * 4
        for b, (block_pieces, outs) in enumerate(zip(rb.blocks, rb.outs, strict=True)):
            size = sum(n * w for _, _, n, w in block_pieces)
            assert size <= cap or (len(block_pieces) == 1 and block_pieces[0][2] == 1)
            split = [i for i, _, _, _ in block_pieces if i in rb.splits]
            assert not split or len(block_pieces) == 1
            assert rb.idx[b] == [i for i, _, _, _ in block_pieces]
            at = outs[0].data_ptr()
            for (i, k, n, w), out, piece in zip(block_pieces, outs, pieces[b], strict=True):
                assert w == shapes[i][1] and out.numel() == n * w
                assert out.data_ptr() == at and start <= at and at + 4 * n * w <= end
                at += 4 * n * w
                assert k == count[i]  # piece numbers in order
                count[i] += 1
                first = len(rows[i])
                assert torch.equal(piece.reshape(n, w), params[i][first : first + n])
                rows[i].extend(range(first, first + n))
        for i, s in enumerate(shapes):
            assert rows[i] == list(range(s[0]))

    check()


def test_row_block_offset_keeps_each_thread_on_its_part_of_the_buffer():
    """torch gives each thread an equal run of whole 64-byte lines; a block of one piece
    starts where the runs' ends fall as near the buffer parts' ends as they can: for two
    threads exactly on the middle, for more within (threads - 2) / 2 times the slack; on
    64-byte lines, inside the buffer."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200, deadline=None)
    @given(
        numel=st.integers(1, 1 << 14),
        threads=st.integers(1, 9),
        unit=st.sampled_from([8, 16, 32]),
    )
    def check(numel, threads, unit):
        rb = RowBlocks([torch.zeros(1 << 14)], [0], 4 << 14)  # one block of 1 << 14 floats
        rb.unit = unit
        off = rb.offset(numel, threads)
        assert off >= 0 and off % unit == 0 and off + numel <= rb.buffer.numel()
        part = rb.cap // threads // unit * unit
        run = ((numel + unit - 1) // unit + threads - 1) // threads * unit
        if threads == 1 or run >= part:
            assert off == 0
            return
        gaps = [abs(off + t * run - t * part) for t in range(1, threads)]
        assert max(gaps) <= (threads - 2) * (part - run) // 2 + unit
        if threads == 2:
            assert off + run == part

    check()


ROW_OPTS = {
    "SGD": (
        gcore_torch.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    ),
    "Adam": (gcore_torch.Adam, {"lr": 0.01, "weight_decay": 0.01, "amsgrad": True}),
    "AdamW": (gcore_torch.AdamW, {"lr": 0.01, "weight_decay": 0.1, "maximize": True}),
}


def _placed_run(name, dtype, threads, at_start):
    """Steps of the pure-PyTorch fused path on ``threads`` threads, every block written
    from the buffer's start with ``at_start``; parameters, state and the row blocks."""
    cls, opts = ROW_OPTS[name]
    params = [torch.nn.Parameter(p.detach().to(dtype)) for p in _params()]
    opt = cls(params, **opts)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # 400 elements a block, and torch's grain size taken as 64 elements: the first
        # shape is a block of its own, placed; the small ones share one
        with small_row_blocks(400 * params[0].element_size()), pytest.MonkeyPatch.context() as mp:
            mp.setattr(_base, "_SERIAL", 64)
            if at_start:
                mp.setattr(RowBlocks, "offset", lambda self, numel, threads: 0)
            for t in range(STEPS):
                for p, g in zip(params, _grads(t), strict=True):
                    p.grad = g.to(dtype)
                opt.step()
    finally:
        torch.set_num_threads(before)
    return params, opt.state_dict()["state"], opt._plans[0].rows


@pytest.mark.parametrize(
    ("name", "dtype"),
    # bfloat16 SGD never reaches torch's fused CPU kernel (it would skip the dtype)
    [(n, d) for n in ROW_OPTS for d in (torch.float32, torch.bfloat16)
     if not (n == "SGD" and d == torch.bfloat16)],
)  # fmt: skip
def test_row_block_placement_changes_no_bit(name, dtype):
    """Where a block's centralized rows are written changes no result bit: blocks placed
    for two threads equal blocks all written from the buffer's start."""
    p_a, s_a, rows = _placed_run(name, dtype, 2, at_start=False)
    p_b, s_b, _ = _placed_run(name, dtype, 2, at_start=True)
    assert len(rows.blocks) >= 2
    base = rows.buffer.data_ptr()
    assert rows.threads == 2 and any(o[0].data_ptr() != base for o in rows.outs)
    for a, b in zip(p_a, p_b, strict=True):
        assert torch.equal(a, b)
    for k, entries in s_a.items():
        for key, value in entries.items():
            assert torch.equal(value, s_b[k][key]), (k, key)


def test_row_blocks_follow_the_thread_count():
    """A change of ``torch.get_num_threads()`` between steps places the blocks anew."""
    params = _params()
    opt = gcore_torch.Adam(params, lr=0.01)
    before = torch.get_num_threads()
    seen = []
    try:
        # 100 elements a block and a grain size of 64: the first shape in three placed pieces
        with small_row_blocks(800), pytest.MonkeyPatch.context() as mp:
            mp.setattr(_base, "_SERIAL", 64)
            for t, threads in enumerate((2, 2, 1, 3)):
                torch.set_num_threads(threads)
                for p, g in zip(params, _grads(t), strict=True):
                    p.grad = g
                opt.step()
                rows = opt._plans[0].rows
                if rows is not None and rows.threads:
                    base, size = rows.buffer.data_ptr(), rows.buffer.element_size()
                    want = [
                        base
                        + size * (rows.offset(b[0][2] * b[0][3], threads) if len(b) == 1 else 0)
                        for b in rows.blocks
                    ]
                    assert [o[0].data_ptr() for o in rows.outs] == want
                    seen.append((rows.threads, want))
    finally:
        torch.set_num_threads(before)
    assert [t for t, _ in seen] == [2, 1, 3]
    assert seen[0][1] != seen[1][1]  # placed for two threads, all at the start for one


@pytest.mark.parametrize("name", list(ROW_OPTS))
def test_row_blocks_beside_other_layouts_and_plain_tensors_follow_the_core_rule(name):
    """One group with row-block tensors, a channels_last weight (centralized into its own
    buffer view) and a bias, with weight decay: every planned step of the pure-PyTorch
    fused path equals the core rule's (the calls outside the row blocks apply their own
    decay, once)."""
    cls, opts = ROW_OPTS[name]
    shapes = [(8, 3, 3, 3), (8, 3, 3, 3), (16, 5), (8,)]
    runs = []
    blocks_run = _base.RowBlocks.run

    def counted(*args, **kw):
        runs.append(1)
        return blocks_run(*args, **kw)

    def run(**kw):
        gen = torch.Generator().manual_seed(0)
        params = [
            torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes
        ]
        params[1].data = params[1].data.contiguous(memory_format=torch.channels_last)
        opt = cls(params, **opts, **kw)
        ups = []
        with small_row_blocks(2048), pytest.MonkeyPatch.context() as mp:
            mp.setattr(_base.RowBlocks, "run", counted)
            for t in range(STEPS):
                g = torch.Generator().manual_seed(10 + t)
                before = [p.detach().clone() for p in params]
                for p in params:
                    grad = torch.randn(p.shape, generator=g, dtype=torch.float64) + 0.3
                    p.grad = torch.empty_like(p).copy_(grad)  # laid out like its parameter
                opt.step()
                ups.append([p.detach() - b for p, b in zip(params, before, strict=True)])
        return ups, opt

    got, opt = run()
    plan = opt._plans[0]
    assert plan.rows is not None and plan.cent == [1] and plan.plain == [3]
    assert len(runs) == STEPS - 1  # every step but the first (which plans) ran the plan
    want, _ = run(foreach=False, fused=False)
    _assert_updates_equal(got, want)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_step_counts_advance_once_each_with_one_add(name, monkeypatch):
    """Fresh step counts are the elements of one tensor, which a planned step of the
    pure-PyTorch path advances with one add (no per-tensor ``_foreach_add_``); counts
    loaded from a checkpoint, or one replaced by hand, are packed again by the next step;
    every count is advanced once a step throughout."""
    cls, opts = OPTS[name]
    params = _params()
    opt = cls(params, **opts)
    calls = []
    foreach_add = torch._foreach_add_

    def spy(*args, **kw):
        calls.append(len(args[0]))
        return foreach_add(*args, **kw)

    def steps_of():
        return [opt.state[p]["step"] for p in params]

    def step(t):
        for p, g in zip(params, _grads(t), strict=True):
            p.grad = g
        opt.step()

    with kernels_off(), monkeypatch.context() as mp:
        mp.setattr(torch, "_foreach_add_", spy)
        step(0)  # the general path: packs the fresh counts
        base = steps_of()[0]._base
        assert base is not None and all(s._base is base for s in steps_of())
        calls.clear()
        step(1)  # planned
        assert opt._plans[0] is not None and opt._plans[0].rows is not None
        assert calls == [] and [float(s) for s in steps_of()] == [2.0] * len(params)
        # a checkpoint's counts share a storage but are no views of one tensor
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        assert _base.counts_base(steps_of()) is None
        step(2)
        step(3)
        assert _base.counts_base(steps_of()) is not None
        opt.state[params[1]]["step"] = torch.tensor(4.0)  # replaced by hand
        calls.clear()
        step(4)  # planned: packs them again
        assert opt._plans[0] is not None and _base.counts_base(steps_of()) is not None
        assert [float(s) for s in steps_of()] == [5.0] * len(params)
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # the plan is kept this time
        step(5)
        assert opt._plans[0] is not None and _base.counts_base(steps_of()) is not None
        assert [float(s) for s in steps_of()] == [6.0] * len(params)
        assert calls == []


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_row_blocks_keep_no_views_of_replaced_state(name):
    """The row blocks' cached views are those of the tensors the last step used: after
    checkpoint loads and state replaced by hand, none holds an old tensor's storage."""
    cls, opts = ROW_OPTS[name]
    params = _params()
    opt = cls(params, **opts)
    old = []

    def replace_by_hand():
        for p in params:
            state = opt.state[p]
            for key in [k for k in state if k != "step"]:
                state[key] = state[key].clone()

    with small_row_blocks(400):
        for t in range(6):
            if t in (2, 3):
                opt.load_state_dict(copy.deepcopy(opt.state_dict()))
            if t == 4:
                replace_by_hand()
            for p in params:
                old += [weakref.ref(v) for k, v in opt.state[p].items() if k != "step"]
            for p, g in zip(params, _grads(t), strict=True):
                p.grad = g
            opt.step()
        rows = opt._plans[0].rows
        assert rows is not None
        live = {
            v.untyped_storage().data_ptr()
            for p in params for k, v in (*opt.state[p].items(), ("p", p)) if k != "step"
        }  # fmt: skip
        for views in rows._cache.values():
            for block in views:
                for view in block:
                    assert view.untyped_storage().data_ptr() in live
    current = {id(v) for p in params for k, v in opt.state[p].items() if k != "step"}
    del views, block, view, rows
    gc.collect()
    assert all(r() is None or id(r()) in current for r in old)
