"""``gcore.AdamW(convention="paper")``: the GC authors' AdamW, against its own formula.

The authors' ``AdamW`` / ``AdamW_GC`` / ``AdamW_GCC`` / ``AdamW_GC2`` / ``AdamW_GCC2``
(``GC_code/*/algorithm/Adam.py`` of Yonghongwei/Gradient-Centralization) are not
``torch.optim.AdamW``: with :math:`m_t, v_t` the uncorrected moments (of the centralized
gradient for ``_GC`` / ``_GCC``) and ``v_t`` replaced by its running maximum under AMSGrad,

    u_t = wd · w_{t-1} + m_t / (sqrt(v_t) + eps)
    w_t = w_{t-1} - lr · sqrt(1 - b2^t) / (1 - b1^t) · u_t

and ``_GC2`` / ``_GCC2`` centralize ``u_t`` itself, decay included (so each unit's weight
mean never moves). The float64 reference below is written from those lines, one step at a
time, in the authors' order of operations; every backend must follow it to 1e-12 over 50
steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gcore
import reference as ref
from helpers import asarray, to_numpy, xp_assert_close

SHAPES = [(4, 3), (3, 2, 2, 2), (5,), (2, 3, 4)]
STEPS = 50
LR = 0.01


def paper_adamw(
    w0,
    grads,
    *,
    lr,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=1e-2,
    amsgrad=False,
    maximize=False,
    gc=True,
    where="gradient",
    axis=0,
    min_ndim=2,
):
    """Trajectory (list of iterates) of the authors' AdamW, float64."""
    b1, b2 = betas
    w = np.array(w0, dtype=np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    vmax = np.zeros_like(w)
    out = []
    for t, grad in enumerate(grads, start=1):
        g = -np.asarray(grad, dtype=np.float64) if maximize else np.array(grad, np.float64)
        if gc and where == "gradient":  # AdamW_GC / AdamW_GCC
            g = ref.centralize(g, axis, min_ndim)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax if amsgrad else v) + eps  # eps on the *uncorrected* sqrt(v)
        step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        u = weight_decay * w + m / denom  # the decay rides on the corrected step
        delta = step_size * u
        if gc and where == "update":  # AdamW_GC2 / AdamW_GCC2: decay centralized too
            delta = ref.centralize(delta, axis, min_ndim)
        w = w - delta
        out.append(w)
    return out


# name -> (gcore.AdamW kwargs beyond lr/convention, reference kwargs)
CASES = {
    # the authors' plain ``AdamW`` class (no GC)
    "AdamW": ({"gc": None, "weight_decay": 0.1}, {"gc": False, "weight_decay": 0.1}),
    "AdamW_GC": ({"weight_decay": 0.1}, {"weight_decay": 0.1}),
    "AdamW_GCC": (
        {"weight_decay": 0.1, "gc": gcore.GC(conv_only=True)},
        {"weight_decay": 0.1, "min_ndim": 4},
    ),
    "AdamW_GC2": (
        {"weight_decay": 0.1, "gc": gcore.GC(where="update")},
        {"weight_decay": 0.1, "where": "update"},
    ),
    "AdamW_GCC2": (
        {"weight_decay": 0.1, "gc": gcore.GC(conv_only=True, where="update")},
        {"weight_decay": 0.1, "min_ndim": 4, "where": "update"},
    ),
    "AdamW_GC-amsgrad": (
        {"weight_decay": 0.1, "amsgrad": True},
        {"weight_decay": 0.1, "amsgrad": True},
    ),
    "AdamW_GC2-amsgrad": (
        {"weight_decay": 0.1, "amsgrad": True, "gc": gcore.GC(where="update")},
        {"weight_decay": 0.1, "amsgrad": True, "where": "update"},
    ),
    "default-decay": ({}, {}),  # weight_decay=1e-2, AdamW's default
    "no-decay": ({"weight_decay": 0.0}, {"weight_decay": 0.0}),
    "betas-eps": (
        {"weight_decay": 0.05, "betas": (0.5, 0.9), "eps": 1e-3},
        {"weight_decay": 0.05, "betas": (0.5, 0.9), "eps": 1e-3},
    ),
    "maximize": ({"weight_decay": 0.1, "maximize": True}, {"weight_decay": 0.1, "maximize": True}),
    "axis-last-GC2": (
        {"weight_decay": 0.1, "gc": gcore.GC(axis=-1, where="update")},
        {"weight_decay": 0.1, "axis": -1, "where": "update"},
    ),
}


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) for s in SHAPES]
    # Gradients of changing scale, so that v_t (and the AMSGrad maximum) vary.
    grads = [[rng.standard_normal(s) * (1 + t % 3) for s in SHAPES] for t in range(STEPS)]
    return params, grads


def _trajectory(xp, jit, rule, p0, grads, dtype):
    update = jit(rule.update)
    p = asarray(xp, p0, dtype)
    state = rule.init(p)
    out = []
    for g in grads:
        updates, state = update(asarray(xp, g, dtype), state, p)
        p = p + updates
        out.append(p)
    return out


@pytest.mark.parametrize("case", CASES)
def test_paper_adamw_float64_trajectory(xp, jit, case):
    """Every one of 50 float64 iterates equals the formula's to 1e-12."""
    kwargs, ref_kw = CASES[case]
    rule = gcore.AdamW(lr=LR, convention="paper", **kwargs)
    params, grads = _problem()
    for i, p0 in enumerate(params):
        got = _trajectory(xp, jit, rule, p0, [g[i] for g in grads], xp.float64)
        want = paper_adamw(p0, [g[i] for g in grads], lr=LR, **ref_kw)
        for t in range(STEPS):
            xp_assert_close(
                got[t], want[t], dtype=xp.float64, rtol=1e-12, atol=1e-12,
                err_msg=f"{case}: param {i} {SHAPES[i]} step {t + 1}",
            )  # fmt: skip


@pytest.mark.parametrize("case", ["AdamW_GC", "AdamW_GC2-amsgrad"])
def test_paper_adamw_float32_trajectory(xp, jit, case):
    """float32 follows the float64 formula to float32 rounding."""
    kwargs, ref_kw = CASES[case]
    rule = gcore.AdamW(lr=LR, convention="paper", **kwargs)
    params, grads = _problem(1)
    for i, p0 in enumerate(params):
        p32 = p0.astype(np.float32).astype(np.float64)
        g32 = [g[i].astype(np.float32).astype(np.float64) for g in grads]
        got = _trajectory(xp, jit, rule, p32, g32, xp.float32)
        want = paper_adamw(p32, g32, lr=LR, **ref_kw)
        for t in (0, 1, 9, STEPS - 1):
            xp_assert_close(
                got[t], want[t], dtype=xp.float32, rtol=1e-5, atol=1e-6,
                err_msg=f"{case}: param {i} step {t + 1}",
            )  # fmt: skip


def test_paper_differs_from_torch_convention(xp, jit):
    """The two conventions are different algorithms (so the cases above test something).

    Over 50 steps with lr=1e-2, wd=0.1 the iterates part by ~1e-3 (the decay scaled by
    sqrt(1-b2^t)/(1-b1^t) instead of 1, eps outside the correction) — the gap that made
    gcore's torch-convention AdamW miss the authors' AdamW_GC.
    """
    params, grads = _problem()
    p0, gs = params[0], [g[0] for g in grads]
    paper = _trajectory(
        xp, jit, gcore.AdamW(lr=LR, weight_decay=0.1, convention="paper"), p0, gs, xp.float64
    )
    torch_like = _trajectory(xp, jit, gcore.AdamW(lr=LR, weight_decay=0.1), p0, gs, xp.float64)
    gap = np.abs(to_numpy(paper[-1]) - to_numpy(torch_like[-1])).max()
    assert gap > 1e-5, f"paper and torch conventions agree to {gap:.1e}"
    # and the default is torch's
    assert gcore.AdamW().convention == "torch"


def test_paper_gc2_keeps_every_unit_mean(xp, jit):
    """AdamW_GC2 centralizes the decay with the update: unit means never move."""
    rule = gcore.AdamW(lr=0.05, weight_decay=0.3, convention="paper", gc=gcore.GC(where="update"))
    params, grads = _problem(2)
    p0 = params[1]  # (3, 2, 2, 2)
    got = _trajectory(xp, jit, rule, p0, [g[1] for g in grads], xp.float64)
    drift = np.abs(to_numpy(got[-1]).reshape(3, -1).mean(1) - p0.reshape(3, -1).mean(1)).max()
    assert drift < 1e-13
    # whereas GC on the gradient lets the decay shrink the means
    rule_gc = gcore.AdamW(lr=0.05, weight_decay=0.3, convention="paper")
    got_gc = _trajectory(xp, jit, rule_gc, p0, [g[1] for g in grads], xp.float64)
    drift_gc = np.abs(to_numpy(got_gc[-1]).reshape(3, -1).mean(1) - p0.reshape(3, -1).mean(1))
    assert drift_gc.max() > 1e-3


def test_paper_convention_is_validated():
    with pytest.raises(ValueError, match="convention"):
        gcore.AdamW(convention="optax")
    with pytest.raises(ValueError, match="nesterov"):
        gcore.AdamW(convention="paper", nesterov=True)
