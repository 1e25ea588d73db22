"""gcore_torch's Triton kernels (``gcore_torch._triton``) against gcore's core rules.

On the CPU the kernels run under Triton's interpreter, which must be switched on before
Triton's first import in a process (Triton builds its own library functions as interpreted
or compiled functions when imported). So this module runs itself twice:

* in the pytest process, :func:`test_interpreter_run` starts ``python -m pytest`` on this
  file in a subprocess with ``TRITON_INTERPRET=1`` (nothing leaks into this process), and
  fails with the subprocess's report if any test there fails; the device tests here run
  the compiled kernels on CUDA where a GPU is present and skip elsewhere;
* in that subprocess (``TRITON_INTERPRET=1`` set from the start) every test runs on the
  CPU in the interpreter. ``TRITON_INTERPRET=1 pytest tests/plugins/test_torch_triton.py``
  does the same by hand.

A kernel that fails to run is a failure; the module is skipped only where Triton is not
installed.

Tolerances: float32 updates agree with the core rule run in float32 to ``1e-6`` of the
tensor's update scale (plus an ulp of the parameter per step for its rounding when
written) and the states to ``1e-6``; float64 to ``1e-12``. float16/bfloat16: the kernels
compute in float32 and round parameter and state once when storing them, while the core
rule computes the moments in the low-precision dtype (rounding them every step) and rounds
the update before adding it; both are compared with the core rule in float64 on the same
rounded inputs, within ``(t + 2)·eps`` of the update scale after ``t`` steps (the
conformance driver's bound, justified in ``conformance.py``) plus an ulp of the parameter
per step.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# In the subprocess: before the first import of triton (here, or through gcore_torch).
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
pytest.importorskip(
    "triton",
    reason="triton is not installed (pip install triton; the nox torch session installs it)",
)

import conformance  # noqa: E402
from torch_helpers import one_thread  # noqa: E402, F401  (one intra-op thread, restored after)

import gcore  # noqa: E402
from gcore_torch import _triton  # noqa: E402

if INTERPRETER:
    DEVICES = [pytest.param("cpu", id="cpu-interpreter")]
else:
    DEVICES = [
        pytest.param(
            "cuda",
            id="cuda",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(),
                reason="no CUDA device: the compiled kernels run where one is (the CPU "
                "interpreter runs them in test_interpreter_run)",
            ),
        )
    ]

_EPS = {
    torch.float64: 2.0**-52,
    torch.float32: 2.0**-23,
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
}


@pytest.mark.skipif(INTERPRETER, reason="this is the interpreter subprocess itself")
def test_interpreter_run(tmp_path):
    """Every test of this module on the CPU under Triton's interpreter, in a subprocess."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-x"]
    cmd += ["-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t")]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    report = proc.stdout[-20000:] + proc.stderr[-5000:]
    assert proc.returncode == 0, f"interpreter run failed (exit {proc.returncode}):\n{report}"
    summary = proc.stdout.strip().splitlines()[-1]
    print("interpreter run:", summary)  # shown with pytest -s / -rP
    passed = re.search(r"(\d+) passed", summary)
    skipped = re.search(r"(\d+) skipped", summary)
    # Nothing may be skipped there but this test itself: a kernel that cannot run fails.
    assert passed and int(passed[1]) >= 100, report
    assert skipped is None or int(skipped[1]) == 1, report


@pytest.fixture(params=DEVICES)
def device(request):
    assert _triton.available(request.param), "Triton kernels unavailable on " + request.param
    return request.param


# Row lengths 1, 3, 5, 16, 2·3·2 = 12, 4100 (> MAX_BLOCK: the chunked loop), a bias, a
# 2-D tensor without GC (flat pieces), and a 4-D conv kernel.
SHAPES = [(3, 5), (4, 1), (2, 3), (6, 16), (5, 3, 2, 2), (2, 4100), (7,), (4, 6)]
CENTRALIZE = [True, True, True, True, True, True, False, False]

ALGOS = {
    "sgd": (gcore.SGD, {"lr": 0.1}),
    "sgd-momentum-l2": (gcore.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
    "sgd-dampening": (gcore.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}),
    "sgd-nesterov-max": (
        gcore.SGD,
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True},
    ),
    "adam": (gcore.Adam, {"lr": 0.01}),
    "adam-l2-amsgrad": (
        gcore.Adam,
        {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "betas": (0.8, 0.9)},
    ),
    "adam-maximize": (gcore.Adam, {"lr": 0.01, "maximize": True, "eps": 1e-6}),
    "adamw": (gcore.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    "adamw-amsgrad": (gcore.AdamW, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    "adamw-paper": (gcore.AdamW, {"lr": 0.01, "weight_decay": 0.1, "convention": "paper"}),
}


class KernelStepper:
    """Parameters held as ``(units, fan_in)`` tensors, stepped by the Triton kernels."""

    def __init__(self, rule, params2d, centralize):
        self.rule, self.params, self.centralize = rule, params2d, list(centralize)
        self.t = 0
        if isinstance(rule, gcore.SGD):
            self.bufs = [torch.empty_like(p) for p in params2d] if rule.momentum else None
        else:
            self.m = [torch.zeros_like(p) for p in params2d]
            self.v = [torch.zeros_like(p) for p in params2d]
            self.vmax = [torch.zeros_like(p) for p in params2d] if rule.amsgrad else None

    def step(self, grads2d):
        r = self.rule
        self.t += 1
        if isinstance(r, gcore.SGD):
            _triton.sgd_(
                self.params, grads2d, self.bufs, self.centralize,
                lr=r.lr, momentum=r.momentum, dampening=r.dampening,
                weight_decay=r.weight_decay, nesterov=r.nesterov, maximize=r.maximize,
                first_step=self.t == 1,
            )  # fmt: skip
        else:
            decoupled = isinstance(r, gcore.AdamW)
            _triton.adam_(
                self.params, grads2d, self.m, self.v, self.vmax, self.centralize,
                step=self.t, lr=r.lr, beta1=r.betas[0], beta2=r.betas[1], eps=r.eps,
                weight_decay=r.weight_decay, decoupled=decoupled, amsgrad=r.amsgrad,
                maximize=r.maximize,
                convention=getattr(r, "convention", "torch") if decoupled else "torch",
            )  # fmt: skip

    def states(self):
        if isinstance(self.rule, gcore.SGD):
            return [self.bufs] if self.bufs is not None else []
        return [self.m, self.v] + ([self.vmax] if self.vmax is not None else [])


def _state_fields(rule):
    if isinstance(rule, gcore.SGD):
        return ["momentum_buffer"] if rule.momentum else []
    return ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if rule.amsgrad else [])


def _problem(dtype, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    grads = [
        [(torch.randn(s, generator=gen, dtype=torch.float64) + 0.5).to(dtype) for s in SHAPES]
        for _ in range(steps)
    ]
    return params, grads


def _rows(t, centralize):
    return t.reshape(t.shape[0], -1) if centralize else t


def _run_both(name, dtype, device, steps=4, ref_dtype=None):
    """Yield, step by step, (kernel params, rule params, kernel states, rule states, before)."""
    cls, hyper = ALGOS[name]
    rule = cls(**hyper)  # GC on axis 0
    plain = dataclasses.replace(rule, gc=None)
    rules = [rule if c else plain for c in CENTRALIZE]
    params, grads = _problem(dtype, steps)
    ref_dtype = ref_dtype or dtype
    ref = [p.to(ref_dtype) for p in params]
    ref_states = [r.init(p) for r, p in zip(rules, ref, strict=True)]
    mine = [_rows(p.clone(), c).to(device) for p, c in zip(params, CENTRALIZE, strict=True)]
    stepper = KernelStepper(rule, mine, CENTRALIZE)
    for gs in grads:
        before = [p.double().cpu().clone() for p in mine]
        g2 = [_rows(g, c).to(device) for g, c in zip(gs, CENTRALIZE, strict=True)]
        g_copy = [g.clone() for g in g2]
        stepper.step(g2)
        for g, c in zip(g2, g_copy, strict=True):  # the gradients are read, never written
            assert torch.equal(g, c)
        for i, (r, g) in enumerate(zip(rules, gs, strict=True)):
            upd, ref_states[i] = r.update(g.to(ref_dtype), ref_states[i], ref[i])
            ref[i] = ref[i] + upd
        yield stepper, ref, ref_states, before


def _compare_step(t, stepper, ref, ref_states, before, dtype, rtol):
    rule = stepper.rule
    for i, (p2, want, old) in enumerate(zip(stepper.params, ref, before, strict=True)):
        got = p2.double().cpu().reshape(SHAPES[i])
        want = want.double().reshape(SHAPES[i])
        old = old.reshape(SHAPES[i])
        du, du_ref = got - old, want - old
        scale = float(du_ref.abs().max())
        ulp = _EPS[dtype] * torch.maximum(got.abs(), old.abs())
        err = (du - du_ref).abs()
        bound = rtol * scale + ulp * t
        assert bool((err <= bound).all()), (
            f"step {t} tensor {i} {SHAPES[i]}: update error {float(err.max()):.3g} "
            f"(update scale {scale:.3g}, rtol {rtol})"
        )
    for field, mine in zip(_state_fields(rule), stepper.states(), strict=True):
        for i, s in enumerate(mine):
            want = getattr(ref_states[i], field).double().reshape(SHAPES[i])
            got = s.double().cpu().reshape(SHAPES[i])
            scale = max(float(want.abs().max()), 1e-30)
            torch.testing.assert_close(
                got, want, rtol=rtol, atol=rtol * scale,
                msg=lambda m, i=i, field=field: f"step {t} tensor {i} {field}: {m}",
            )  # fmt: skip


@pytest.mark.parametrize("name", list(ALGOS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_core_rule_step_by_step(name, dtype, device):
    """Updates and states equal the core rule's in the same dtype, every step."""
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    for t, (stepper, ref, ref_states, before) in enumerate(
        _run_both(name, dtype, device), start=1
    ):
        _compare_step(t, stepper, ref, ref_states, before, dtype, rtol)


@pytest.mark.parametrize("name", ["sgd-momentum-l2", "adam-l2-amsgrad", "adamw", "adamw-paper"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_follows_float64_rule(name, dtype, device):
    """float16/bfloat16: within (t + 2)·eps of the update scale of the float64 rule."""
    for t, (stepper, ref, ref_states, before) in enumerate(
        _run_both(name, dtype, device, ref_dtype=torch.float64), start=1
    ):
        rtol = (t + 2) * _EPS[dtype]
        _compare_step(t, stepper, ref, ref_states, before, dtype, rtol)
        for p in stepper.params:
            assert p.dtype == dtype


def test_float16_means_accumulate_in_float32(device, monkeypatch):
    """A 4096-long float16 row of values near 1000: its sum (4e6) overflows float16."""
    monkeypatch.setattr(_triton, "MAX_BLOCK", 1024)  # and loop over 4 chunks of the row
    g = (1000 + torch.arange(4096, dtype=torch.float64) % 7).reshape(1, -1)
    p = torch.zeros(1, 4096, dtype=torch.float16, device=device)
    g16 = g.to(torch.float16).to(device)
    _triton.sgd_(
        [p], [g16], None, [True], lr=1.0, momentum=0.0, dampening=0.0, weight_decay=0.0,
        nesterov=False, maximize=False, first_step=True,
    )  # fmt: skip
    want = -(g - g.mean()).to(torch.float16)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.cpu(), want, rtol=0, atol=0)


def test_mixed_dtypes_steps_and_first_steps_in_one_call(device):
    """Tensors of different dtypes, step counts and buffer states in one call."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(3, 7), (5, 2), (4, 9)]
    dtypes = [torch.float32, torch.bfloat16, torch.float32]
    ps = [torch.randn(s, generator=gen).to(d) for s, d in zip(shapes, dtypes, strict=True)]
    gs = [torch.randn(s, generator=gen).to(d) for s, d in zip(shapes, dtypes, strict=True)]
    rule = gcore.Adam(lr=0.01)
    steps = [1, 3, 2]
    # Each tensor at its own step count: the first t - 1 steps by the core rule (float64),
    # step t by the kernel (in the tensor's dtype) and by the rule.
    mine, m, v, ref = [], [], [], []
    for p, g, t in zip(ps, gs, steps, strict=True):
        st, q = rule.init(p.double()), p.double()
        for k in range(t):
            if k == t - 1:
                mine.append(q.to(p.dtype).to(device))
                m.append(st.exp_avg.to(p.dtype).to(device))
                v.append(st.exp_avg_sq.to(p.dtype).to(device))
            u, st = rule.update(g.double(), st, q)
            q = q + u
        ref.append(q)
    _triton.adam_(
        mine, [g.to(device) for g in gs], m, v, None, [True] * 3, step=steps, lr=0.01,
        beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False,
        amsgrad=False, maximize=False,
    )  # fmt: skip
    for got, want, p in zip(mine, ref, ps, strict=True):
        tol = 1e-6 if p.dtype == torch.float32 else 2.0**-7
        torch.testing.assert_close(got.double().cpu(), want, rtol=tol, atol=tol)

    # SGD: one buffer started this step (first), one continuing.
    bufs = [torch.full((3, 7), 5.0, device=device), torch.full((4, 9), 2.0, device=device)]
    params = [torch.zeros(3, 7, device=device), torch.zeros(4, 9, device=device)]
    grads = [gs[0].to(device), gs[2].to(device)]
    _triton.sgd_(
        params, grads, bufs, [True, False], lr=1.0, momentum=0.5, dampening=0.0,
        weight_decay=0.0, nesterov=False, maximize=False, first_step=[True, False],
    )  # fmt: skip
    g0 = gs[0] - gs[0].mean(1, keepdim=True)
    torch.testing.assert_close(bufs[0].cpu(), g0)
    torch.testing.assert_close(bufs[1].cpu(), 0.5 * 2.0 + gs[2])
    torch.testing.assert_close(params[1].cpu(), -(0.5 * 2.0 + gs[2]))


def test_empty_and_no_tensors(device):
    p = torch.zeros(0, 3, device=device)
    _triton.sgd_(
        [p], [p.clone()], None, [True], lr=0.1, momentum=0.0, dampening=0.0,
        weight_decay=0.0, nesterov=False, maximize=False, first_step=True,
    )  # fmt: skip
    _triton.adam_(
        [], [], [], [], None, [], step=1, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
        weight_decay=0.0, decoupled=False, amsgrad=False, maximize=False,
    )  # fmt: skip


def _sgd_kw(**kw):
    base = {
        "lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
        "nesterov": False, "maximize": False, "first_step": True,
    }  # fmt: skip
    return {**base, **kw}


def test_rejects_bad_arguments(device):
    p = torch.zeros(4, 3, device=device)
    with pytest.raises(ValueError, match="shape"):
        _triton.sgd_([p], [torch.zeros(3, 4, device=device)], None, [True], **_sgd_kw())
    with pytest.raises(ValueError, match="contiguous"):
        _triton.sgd_([p], [torch.zeros(3, 4, device=device).t()], None, [True], **_sgd_kw())
    with pytest.raises(ValueError, match="2-D"):
        q = torch.zeros(2, 3, 4, device=device)
        _triton.sgd_([q], [q.clone()], None, [True], **_sgd_kw())
    with pytest.raises(TypeError, match="dtype"):
        c = torch.zeros(4, 3, dtype=torch.complex64, device=device)
        _triton.sgd_([c], [c.clone()], None, [True], **_sgd_kw())
    with pytest.raises(ValueError, match="bufs2d"):
        _triton.sgd_([p], [p.clone()], None, [True], **_sgd_kw(momentum=0.9))
    with pytest.raises(ValueError, match="nesterov"):
        kw = _sgd_kw(momentum=0.9, dampening=0.1, nesterov=True)
        _triton.sgd_([p], [p.clone()], [p.clone()], [True], **kw)
    adam = {"step": 1, "lr": 0.1, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8}
    adam.update(weight_decay=0.0, amsgrad=False, maximize=False)
    z = [p.clone()]
    with pytest.raises(ValueError, match="decoupled"):
        _triton.adam_([p], z, z, z, None, [True], decoupled=False, convention="paper", **adam)
    with pytest.raises(ValueError, match="step"):
        _triton.adam_([p], z, z, z, None, [True], decoupled=False, **{**adam, "step": 0})
    with pytest.raises(ValueError, match="max_exp_avg_sqs2d"):
        _triton.adam_([p], z, z, z, None, [True], decoupled=False, **{**adam, "amsgrad": True})


def test_available(monkeypatch):
    assert _triton.available("cpu") == INTERPRETER
    assert _triton.available("cuda") == (torch.cuda.is_available() and not INTERPRETER)
    assert not _triton.available("meta")
    # Switching the interpreter on or off after Triton's import is refused, not half done.
    if INTERPRETER:
        monkeypatch.delenv("TRITON_INTERPRET")
    else:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not _triton.available("cpu")
    assert not _triton.available("cuda")
    assert _triton.GC_WHERE == ("gradient",)


# --- the shared conformance table (GC on the gradient, and GC off) ----------------------


class ConformanceStepper:
    """Adapter from the conformance contract (NumPy float64 in and out) to the kernels."""

    def __init__(self, case, params, device):
        self.case = case
        self.dtype = getattr(torch, case.dtype)
        self.units = []  # per parameter: output axis moved to the front, or None (flat)
        gc = case.rule.gc
        for shape, axis in zip(case.shapes, case.axes, strict=True):
            on = gc is not None and axis is not None and len(shape) >= gc.min_ndim
            self.units.append(axis if on else None)
        rows = [self._to_rows(p, i).to(device) for i, p in enumerate(params)]
        self.kernel = KernelStepper(case.rule, rows, [a is not None for a in self.units])
        self.device = device

    def _to_rows(self, x, i):
        t = torch.tensor(np.asarray(x), dtype=self.dtype)  # a copy: never the caller's memory
        axis = self.units[i]
        if axis is None:
            return t.contiguous()
        return t.movedim(axis, 0).reshape(t.shape[axis], -1).contiguous()

    def _from_rows(self, t, i):
        shape = self.case.shapes[i]
        axis = self.units[i]
        t = t.to("cpu", torch.float64, copy=True)  # a snapshot, not a view of the parameter
        if axis is None:
            return t.reshape(shape).numpy()
        moved = (shape[axis], *(s for k, s in enumerate(shape) if k != axis % len(shape)))
        return t.reshape(moved).movedim(0, axis).numpy()

    def step(self, grads):
        self.kernel.step([self._to_rows(g, i).to(self.device) for i, g in enumerate(grads)])
        return [self._from_rows(p, i) for i, p in enumerate(self.kernel.params)]


# The kernels see (units, fan_in) rows whatever the framework's layout (the stepper moves
# the output axis to the front), so one layout is enough; "conv_only" only changes which
# tensors are flagged, checked in float32. GC on the update is not a kernel's (GC_WHERE).
CASES = conformance.cases(
    gc=("off", "on", "conv_only"),
    layouts="torch",
    predicate=lambda c: c.gc_option != "conv_only" or c.dtype == "float32",
)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_conformance(case, device):
    conformance.assert_matches_rule(lambda c, p: ConformanceStepper(c, p, device), case)
