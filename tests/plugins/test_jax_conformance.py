"""gcore_jax's optimizers, step by step, against the core rules (the shared driver).

Two steppers: :func:`gcore_jax.scale_by_rule` on the case's core rule (every case), and
the optax-style aliases ``gcore_jax.sgd/adam/adamw`` (``rule(lr=1)`` then the learning
rate) wherever a case's rule is one of them. Both run jitted, in the case's dtype, with
each parameter's output axis from the case.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed")
optax = pytest.importorskip("optax", reason="optax is not installed")

import conformance  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import gcore  # noqa: E402
import gcore_jax  # noqa: E402


@contextlib.contextmanager
def _x64(enabled):
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", bool(enabled))
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


class _Stepper:
    def __init__(self, tx, params, dtype):
        self.dtype = jnp.dtype(dtype)
        self.params = [jnp.asarray(p, self.dtype) for p in params]
        self.state = tx.init(self.params)

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        self._step = jax.jit(step)

    def step(self, grads):
        grads = [jnp.asarray(g, self.dtype) for g in grads]
        self.params, self.state = self._step(self.params, self.state, grads)
        for p in self.params:
            assert p.dtype == self.dtype
        return [np.asarray(p.astype(jnp.float32) if p.dtype == jnp.bfloat16 else p, np.float64)
                for p in self.params]  # fmt: skip


def _layout(case):
    return list(case.axes)


def rule_stepper(case, params):
    return _Stepper(gcore_jax.scale_by_rule(case.rule, layout=_layout(case)), params, case.dtype)


def _alias(case):
    """The gcore_jax alias equal to ``case.rule``, or None."""
    r = case.rule
    gc = r.gc
    common = {"gc": gc is not None, "layout": _layout(case)}
    if gc is not None:
        common.update(gc_where=gc.where, gc_conv_only=gc.conv_only)
    if getattr(r, "maximize", False) or getattr(r, "amsgrad", False):
        return None
    if isinstance(r, gcore.SGD):
        if r.dampening or r.weight_decay:
            return None
        return gcore_jax.sgd(r.lr, momentum=r.momentum or None, nesterov=r.nesterov, **common)
    b1, b2 = r.betas
    kw = {"b1": b1, "b2": b2, "eps": r.eps, "nesterov": r.nesterov, **common}
    if isinstance(r, gcore.AdamW):
        return gcore_jax.adamw(r.lr, weight_decay=r.weight_decay, convention=r.convention, **kw)
    if r.weight_decay:
        return None
    return gcore_jax.adam(r.lr, **kw)


def alias_stepper(case, params):
    return _Stepper(_alias(case), params, case.dtype)


@pytest.mark.parametrize("case", conformance.cases(), ids=str)
def test_scale_by_rule_conforms(case):
    with _x64(case.dtype == "float64"):
        conformance.assert_matches_rule(rule_stepper, case)


@pytest.mark.parametrize(
    "case", conformance.cases(predicate=lambda c: _alias(c) is not None), ids=str
)
def test_aliases_conform(case):
    with _x64(case.dtype == "float64"):
        conformance.assert_matches_rule(alias_stepper, case)
