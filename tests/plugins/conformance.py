"""One conformance suite for every plugin path: a table of cases and one driver.

Every optimizer path of every plugin (NumPy, CuPy, each torch path, JAX, Keras, ...)
must take, step by step, the update gcore's core rule takes. A test file registers a
*stepper factory* and parametrizes over the table::

    import conformance

    def make_stepper(case, params):            # params: float64 ndarrays, already
        ...                                    # rounded to case.dtype
        return stepper                         # stepper.step(grads) -> new params

    @pytest.mark.parametrize("case", conformance.cases(dtypes=("float64", "float32")), ids=str)
    def test_conforms(case):
        conformance.assert_matches_rule(make_stepper, case)

The contract
------------
``case.rule``
    a core rule instance (``gcore.SGD`` / ``Adam`` / ``AdamW``) with its ``gc`` (``None``
    = GC off); ``case.rule.gc.axis`` is the layout's usual output axis, but the per
    parameter axes are ``case.axes``.
``case.shapes``, ``case.axes``
    the parameters' shapes and their output axes (``None`` = no GC for that parameter).
    ``case.rule_for(i)`` is the core rule parameter ``i`` follows.
``case.dtype``
    ``"float64"``, ``"float32"``, ``"float16"`` or ``"bfloat16"``: the dtype the stepper
    stores parameters and gradients in and runs the step in.
``case.steps``, ``case.id``, ``case.seed``
    number of steps; a readable unique id (``str(case)``); the seed of its data.
``case.kwargs``
    the rule's hyperparameters without ``gc`` (what a plugin's constructor takes).
``make_stepper(case, params) -> stepper``; ``stepper.step(grads) -> new params``
    ``params`` and ``grads`` are lists of float64 NumPy arrays whose values are exactly
    representable in ``case.dtype``; the stepper converts them to its framework and
    dtype, runs ONE optimizer step in ``case.dtype`` and returns the new parameters as
    float64 NumPy arrays (any array-like convertible with ``np.asarray`` is accepted).

The reference
-------------
The core rule (``case.rule_for(i)``) run on NumPy in float64 from the same starting
values and gradients. After every step the driver checks, for every parameter:

* the returned values are finite, of the right shape, and representable in
  ``case.dtype`` (so a stepper that silently computes in float64 fails);
* the step's update ``new - old`` against the reference's update, elementwise:
  ``|Δ - Δ_ref| <= rtol·max|Δ_ref| + ulps·ulp(p_new)``; ``rtol`` is relative to the
  tensor's update scale (1e-12 float64, 1e-6 float32) and ``ulp(p_new)`` is the spacing
  of ``case.dtype`` at the larger of the old and new parameter: writing the parameter
  rounds it by at most half an ulp per write, and ``ulps = 2`` allows for paths that
  write it in two steps (torch's AdamW: ``p *= 1 - lr·λ`` then ``p += u``) with a
  decay factor that is itself rounded to the dtype;
* the parameters against the float64 reference trajectory, with the per-step update
  bounds summed over the steps so far (the roundings of the parameter accumulate; they
  feed back into the update only through weight decay, which is ≤ 0.1 here).

For float16 and bfloat16 the state (momentum buffer, Adam moments) is stored in the
low-precision dtype, so each step rounds every stored quantity once (half an ulp,
``eps/2`` relative). Over ``t`` steps the exponential averages collect at most ``t``
such roundings, relative to their own scale; an Adam update ``m̂/(√v̂ + ε)`` is about
as sensitive to a relative error in ``m`` as to one in ``v`` (halved by the square
root), and a Nesterov / L2 step reads the rounded gradient once more. So the update
error stays below ``(2·t + 4)·eps/2`` of the tensor's update scale: that is the
``rtol`` used, ``(t + 2)·eps`` (float16 ``eps = 2**-10``, bfloat16 ``2**-7``).

Adam divides by ``√v̂``, so where ``v̂`` is small its update is ill-conditioned: a
rounding of the centralized gradient (L2 decay makes it inexact) or of ``v`` (float16's
subnormals) moves it by far more than its own size. For the Adam family the driver adds
the exact worst-case change of ``lr·m̂/(√v̂ + ε)`` under those perturbations, computed
from the reference's own moments (``_Reference.adam_bound``); without L2 the data below
make the gradients exact, and the term is a few ulps.

The gradients are deterministic (seeded by the case's layout and dtype, so every
algorithm sees the same problem) and lie on the grid of multiples of 1/4 (exact in every
dtype, nonzero entries at least 1/4). In every parameter with ndim >= 2 each output unit
is a constant plus pairs ``(a, -a)`` and zeros, so its mean is exact and GC gives exact
values; the first unit is constant, so GC makes it exactly zero. Elsewhere about 10 % of
the entries are 0. An Adam step on a zero gradient must give a zero update; float16 Adam
that adds ``eps=1e-8`` in float16 (where it rounds to 0) gives ``0/0 = NaN`` instead,
and fails here (as gcore_numpy did before issue 12).
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

import gcore

__all__ = [
    "ALGORITHMS",
    "DTYPES",
    "GC_OPTIONS",
    "LAYOUTS",
    "Case",
    "CoreRuleStepper",
    "assert_matches_rule",
    "cases",
    "representable",
    "round_to",
]

DTYPES = ("float64", "float32", "float16", "bfloat16")

#: Machine epsilon (spacing at 1) and smallest normal of each dtype.
_EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
_TINY = {"float64": 2.0**-1022, "float32": 2.0**-126, "float16": 2.0**-14, "bfloat16": 2.0**-126}
#: Spacing of the subnormals is ``_EPS * _TINY``: the absolute precision floor.
_SUBNORMAL_FLOOR = _TINY


def _adamw_has_convention() -> bool:
    return "convention" in {f.name for f in dataclasses.fields(gcore.AdamW)}


def _algorithms() -> dict[str, tuple[type, dict[str, Any]]]:
    table: dict[str, tuple[type, dict[str, Any]]] = {
        "sgd": (gcore.SGD, {"lr": 0.1}),
        "sgd-momentum": (gcore.SGD, {"lr": 0.1, "momentum": 0.9}),
        "sgd-nesterov": (gcore.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
        "sgd-dampening": (gcore.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}),
        "sgd-l2": (gcore.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
        "adam": (gcore.Adam, {"lr": 0.01}),
        "adam-amsgrad": (gcore.Adam, {"lr": 0.01, "amsgrad": True, "betas": (0.8, 0.9)}),
        "adam-l2": (gcore.Adam, {"lr": 0.01, "weight_decay": 0.1}),
        "adam-maximize": (gcore.Adam, {"lr": 0.01, "maximize": True, "eps": 1e-6}),
        "adamw": (gcore.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    }
    if _adamw_has_convention():
        table["adamw-paper"] = (
            gcore.AdamW,
            {"lr": 0.01, "weight_decay": 0.1, "convention": "paper"},
        )
    return table


#: name -> (core rule class, hyperparameters). ``adamw-paper`` only where the core's
#: AdamW has the ``convention`` field.
ALGORITHMS = _algorithms()

#: Left out in float16: with L2 decay the centralized gradient ``GC(g + λp)`` takes any
#: small value, and float16 Adam's second moment ``(1 - β2)·g²`` underflows to
#: subnormals (below 6.1e-5, i.e. ``|g| < 0.25`` at ``β2 = 0.999``) or to 0. The core
#: rule's own float16 step is then off by thousands of ``lr`` on such an element, the L2
#: term carries that into the unit's mean at the next step, and no two implementations
#: can be expected to agree; see the module docstring for the bounds used elsewhere.
_ILL_CONDITIONED_FLOAT16 = ("adam-l2",)

#: GC option name -> keyword arguments of :class:`gcore.GC` (``None``: GC off).
GC_OPTIONS: dict[str, dict[str, Any] | None] = {
    "off": None,
    "on": {},
    "conv_only": {"conv_only": True},
    "update": {"where": "update"},
}

#: layout -> (default output axis, [(name, shape, output axis), ...]).
LAYOUTS: dict[str, tuple[int, list[tuple[str, tuple[int, ...], int | None]]]] = {
    "torch": (
        0,
        [
            ("linear", (6, 5), 0),  # torch Linear (out, in)
            ("conv", (4, 3, 3, 3), 0),  # torch Conv2d (out, in, kh, kw)
            ("convT", (3, 2, 3, 3), 1),  # torch ConvTranspose2d (in, out, kh, kw)
            ("bias", (6,), 0),  # 1-D: never centralized
            ("m1", (4, 1), 0),  # Linear(1, 4): units of one weight (GC zeroes them)
        ],
    ),
    "channels_last": (
        -1,
        [
            ("dense", (5, 6), -1),  # Flax/Keras Dense kernel (in, out)
            ("conv", (3, 3, 3, 4), -1),  # Flax/Keras Conv kernel (kh, kw, in, out)
            ("bias", (4,), -1),
            ("m1", (1, 4), -1),  # Dense(1 -> 4)
        ],
    ),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One conformance case; see the module docstring for the contract."""

    algorithm: str
    gc_option: str
    layout: str
    dtype: str
    steps: int
    rule: Any
    shapes: tuple[tuple[int, ...], ...]
    axes: tuple[int | None, ...]
    names: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.algorithm}-gc_{self.gc_option}-{self.layout}-{self.dtype}"

    def __str__(self) -> str:
        return self.id

    @property
    def seed(self) -> int:
        # The data depend on the layout and dtype only (not on the algorithm), so every
        # algorithm sees the same problem; crc32 is stable across processes.
        return zlib.crc32(f"{self.layout}-{self.dtype}".encode())

    @property
    def family(self) -> str:
        """``"SGD"``, ``"Adam"`` or ``"AdamW"``: the core rule's class name."""
        return type(self.rule).__name__

    @property
    def gc(self) -> gcore.GC | None:
        return self.rule.gc

    @property
    def kwargs(self) -> dict[str, Any]:
        """The rule's hyperparameters, ``gc`` excluded (a plugin constructor's kwargs)."""
        return {
            f.name: getattr(self.rule, f.name)
            for f in dataclasses.fields(self.rule)
            if f.name != "gc"
        }

    def rule_for(self, index: int) -> Any:
        """The core rule parameter ``index`` follows (its own output axis)."""
        gc = self.rule.gc
        if gc is None:
            return self.rule
        axis = self.axes[index]
        new_gc = None if axis is None else dataclasses.replace(gc, axis=axis)
        return dataclasses.replace(self.rule, gc=new_gc)

    def problem(self) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
        """Starting parameters and ``steps`` lists of gradients (float64, dtype-rounded).

        Gradients lie on the grid of multiples of 1/4 (|g| <= 6): exact in every dtype,
        with exact per-unit sums. In a parameter that GC applies to, unit ``j`` is
        ``c_j + h_j`` where ``h_j`` is made of pairs ``(a, -a)`` (``|a| >= 1/4``) and zeros,
        so its mean is exactly ``c_j`` and the centralized gradient exactly ``h_j``; unit 0
        is constant (centralized: all zeros). Elsewhere about 10 % of the elements are 0.
        Nonzero gradient entries are thus never below 1/4, which keeps float16 Adam's
        second moment ``(1 - beta2)·g²`` out of float16's subnormal range.
        """
        rng = np.random.default_rng(self.seed)
        params = [round_to(rng.standard_normal(s), self.dtype) for s in self.shapes]
        grads = []
        for _ in range(self.steps):
            grads.append(
                [
                    round_to(_gradient(rng, shape, axis), self.dtype)
                    for shape, axis in zip(self.shapes, self.axes, strict=True)
                ]
            )
        return params, grads


def _grid(rng: np.random.Generator, size: int) -> np.ndarray:
    """Nonzero multiples of 1/4 in [-4, 4]."""
    return rng.integers(1, 17, size) * rng.choice((-0.25, 0.25), size)


def _gradient(rng: np.random.Generator, shape: tuple[int, ...], axis: int | None) -> np.ndarray:
    if len(shape) < 2 or axis is None:
        g = _grid(rng, int(np.prod(shape))).reshape(shape)
        g[rng.random(shape) < 0.1] = 0.0
        return g
    moved = np.moveaxis(np.empty(shape), axis, 0)
    units, m = moved.shape[0], int(np.prod(moved.shape[1:]))
    rows = np.zeros((units, m))
    for j in range(units):
        c = rng.integers(-8, 9) * 0.25
        if j == 0:
            rows[j] = c  # a constant unit: GC makes it exactly zero
            continue
        half = _grid(rng, m // 2)
        half[rng.random(m // 2) < 0.1] = 0.0
        h = np.concatenate([half, -half, np.zeros(m % 2)])
        rows[j] = c + rng.permutation(h)
    return np.moveaxis(rows.reshape(moved.shape), 0, axis).copy()


def _build(algorithm: str, gc_option: str, layout: str, dtype: str, steps: int) -> Case:
    cls, hyper = ALGORITHMS[algorithm]
    default_axis, entries = LAYOUTS[layout]
    gc_kw = GC_OPTIONS[gc_option]
    gc = None if gc_kw is None else gcore.GC(axis=default_axis, **gc_kw)
    return Case(
        algorithm=algorithm,
        gc_option=gc_option,
        layout=layout,
        dtype=dtype,
        steps=steps,
        rule=cls(**hyper, gc=gc),
        shapes=tuple(s for _, s, _ in entries),
        axes=tuple(a for _, _, a in entries),
        names=tuple(n for n, _, _ in entries),
    )


def _selected(name: str, wanted: Iterable[str] | str | None) -> bool:
    if wanted is None:
        return True
    if isinstance(wanted, str):
        wanted = (wanted,)
    return any(name == w or name.split("-")[0] == w for w in wanted)


def cases(
    *,
    algorithms: Iterable[str] | str | None = None,
    gc: Iterable[str] | str | None = None,
    where: str | None = None,
    layouts: Iterable[str] | str | None = None,
    dtypes: Iterable[str] | str | None = None,
    families: Iterable[str] | str | None = None,
    predicate: Callable[[Case], bool] | None = None,
    full: bool = False,
) -> list[Case]:
    """The case table, filtered.

    Parameters
    ----------
    algorithms
        Names from :data:`ALGORITHMS` (``"sgd-nesterov"``) or their prefix family
        (``"sgd"``, ``"adam"``, ``"adamw"`` select every variant of that name).
    gc
        GC option names from :data:`GC_OPTIONS` (``"off"``, ``"on"``, ``"conv_only"``,
        ``"update"``).
    where
        ``"gradient"`` (GC on the gradient: ``on``, ``conv_only``) or ``"update"``.
    layouts, dtypes
        Subsets of :data:`LAYOUTS` and :data:`DTYPES`.
    families
        Core rule class names: ``"SGD"``, ``"Adam"``, ``"AdamW"``.
    predicate
        Any further filter on a :class:`Case`.
    full
        ``False`` (default): 3 steps, GC off only on the torch layout (the layout does
        not matter without GC) — about 300 cases over all dtypes. ``True``: 8 steps,
        every combination. ``adam-l2`` is never run in float16 (see
        ``_ILL_CONDITIONED_FLOAT16``).
    """
    steps = 8 if full else 3
    gc_options = GC_OPTIONS
    if where is not None:
        if where not in ("gradient", "update"):
            raise ValueError(f"where={where!r}; allowed: 'gradient', 'update'")
        keep = ("on", "conv_only") if where == "gradient" else ("update",)
        gc_options = {k: v for k, v in GC_OPTIONS.items() if k in keep}
    if isinstance(families, str):
        families = (families,)
    out = []
    for algorithm, gc_option, layout, dtype in itertools.product(
        ALGORITHMS, gc_options, LAYOUTS, DTYPES
    ):
        if not (
            _selected(algorithm, algorithms)
            and _selected(gc_option, gc)
            and _selected(layout, layouts)
            and _selected(dtype, dtypes)
        ):
            continue
        if not full and gc_option == "off" and layout != "torch":
            continue
        if dtype == "float16" and algorithm in _ILL_CONDITIONED_FLOAT16:
            continue
        case = _build(algorithm, gc_option, layout, dtype, steps)
        if families is not None and case.family not in families:
            continue
        if predicate is not None and not predicate(case):
            continue
        out.append(case)
    if not out:
        raise ValueError("no conformance case matches these filters")
    return out


# -- dtype helpers ---------------------------------------------------------------------


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded (to nearest, ties to even) to ``dtype``, returned as float64."""
    x = np.asarray(x, dtype=np.float64)
    if dtype == "float64":
        return x.copy()
    if dtype in ("float32", "float16"):
        return x.astype(dtype).astype(np.float64)
    if dtype == "bfloat16":
        bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.astype(np.uint32).view(np.float32).astype(np.float64)
    raise ValueError(f"dtype={dtype!r}; allowed: {', '.join(DTYPES)}")


def representable(x: np.ndarray, dtype: str) -> np.ndarray:
    """Elementwise: is the float64 value exactly a ``dtype`` value?"""
    x = np.asarray(x, dtype=np.float64)
    return round_to(x, dtype) == x


def ulp(x: np.ndarray, dtype: str) -> np.ndarray:
    """Spacing of ``dtype``'s values at ``|x|`` (its subnormal spacing below the normals)."""
    a = np.maximum(np.abs(np.asarray(x, dtype=np.float64)), _TINY[dtype])
    return _EPS[dtype] * np.exp2(np.floor(np.log2(a)))


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """``|Δ - Δ_ref| <= rtol·max|Δ_ref| + ulps·ulp(p_new)`` per step (see module doc)."""

    rtol: float
    ulps: float = 2.0


def tolerance(case: Case) -> Tolerance:
    """The per-step update tolerance of ``case`` (justified in the module docstring)."""
    if case.dtype == "float64":
        return Tolerance(1e-12)
    if case.dtype == "float32":
        return Tolerance(1e-6)
    return Tolerance((case.steps + 2) * _EPS[case.dtype])


# -- the driver --------------------------------------------------------------------------


class _Reference:
    """The core rules in float64 NumPy: the trajectory every stepper must follow."""

    def __init__(self, case: Case, params: Sequence[np.ndarray]) -> None:
        self.case = case
        self.rules = [case.rule_for(i) for i in range(len(params))]
        self.params = [np.array(p, dtype=np.float64) for p in params]
        self.states = [r.init(p) for r, p in zip(self.rules, self.params, strict=True)]
        # Adam: running max of the effective gradient's rounding error (see _adam_bound).
        self.grad_err = [np.zeros_like(p) for p in self.params]

    def step(self, grads: Sequence[np.ndarray]) -> list[np.ndarray]:
        updates = []
        for i, g in enumerate(grads):
            rule = self.rules[i]
            if isinstance(rule, gcore.Adam):
                self.grad_err[i] = np.maximum(self.grad_err[i], self._grad_error(i, g))
            u, self.states[i] = rule.update(g, self.states[i], self.params[i])
            u = np.asarray(u, dtype=np.float64)
            self.params[i] = self.params[i] + u
            updates.append(u)
        return updates

    def _grad_error(self, i: int, g: np.ndarray) -> np.ndarray | float:
        """Bound on the stepper's rounding error in Adam's centralized gradient.

        Zero without L2 decay: the gradients are exact in every dtype and so are their
        unit means (see :meth:`Case.problem`). With L2 (``g + λp``, then GC) the
        stepper rounds ``λp``, the sum and the unit mean in ``case.dtype`` (the mean in at
        least float32): each error is below ``eps`` times the magnitudes involved.
        """
        rule = self.rules[i]
        if rule._decoupled or rule.weight_decay == 0:
            return 0.0
        mag = np.abs(g) + rule.weight_decay * np.abs(self.params[i])
        gc = rule.gc
        p = self.params[i]
        if gc is not None and gc.where == "gradient" and p.ndim >= gc.min_ndim:
            axes = gcore.reduction_axes(p.ndim, gc.axis)
            mag = mag + mag.mean(axis=axes, keepdims=True)
        return 2.0 * _EPS[self.case.dtype] * mag

    def adam_bound(self, i: int, t: int) -> np.ndarray | float:
        """How far an Adam update may move when its inputs carry the stepper's roundings.

        The stepper's centralized gradients differ from the reference's by at most
        ``E`` (:meth:`_grad_error`, running max over the steps); the bias-corrected
        moments are weighted averages (weights summing to 1), so ``m̂`` moves by at most
        ``E`` and ``√v̂`` (a weighted RMS) by at most ``E`` too. A second moment stored in
        a low-precision dtype is also rounded once per step to an absolute spacing of
        that dtype — in float16's subnormal range that is all of ``v``'s precision. The
        bound is the largest change of ``lr·|m̂|/(√v̂ + ε)`` over those perturbations
        (``ε/√(1-β2^t)`` for ``convention="paper"``, which adds ``ε`` to ``√v``).
        """
        rule, state = self.rules[i], self.states[i]
        beta1, beta2 = rule.betas
        bc1, bc2 = 1.0 - beta1**t, 1.0 - beta2**t
        v = state.max_exp_avg_sq if rule.amsgrad else state.exp_avg_sq
        m_hat = np.abs(state.exp_avg) / bc1
        eps = rule.eps
        if getattr(rule, "convention", "torch") == "paper":
            eps = eps / np.sqrt(bc2)
        err = self.grad_err[i]
        dv = t * 0.5 * _EPS[self.case.dtype] * _SUBNORMAL_FLOOR[self.case.dtype]
        sqrt_v = np.sqrt(v / bc2)
        sqrt_lo = np.maximum(np.sqrt(np.maximum(v - dv, 0.0) / bc2) - err, 0.0)
        bound = rule.lr * ((m_hat + err) / (sqrt_lo + eps) - m_hat / (sqrt_v + eps))
        gc, p = rule.gc, self.params[i]
        if gc is not None and gc.where == "update" and p.ndim >= gc.min_ndim:
            # P·δu: an element moves by its own error plus the unit mean's.
            bound = bound + bound.mean(axis=gcore.reduction_axes(p.ndim, gc.axis), keepdims=True)
        return bound


def _where(bad: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(bad)[0])


def assert_matches_rule(make_stepper: Callable[[Case, list[np.ndarray]], Any], case: Case) -> None:
    """Run ``case`` through the stepper and the float64 core rule; fail on any mismatch."""
    params0, grad_steps = case.problem()
    stepper = make_stepper(case, [p.copy() for p in params0])
    ref = _Reference(case, params0)
    tol = tolerance(case)
    prev = [p.copy() for p in params0]
    bounds = [np.zeros_like(p) for p in params0]
    for t, grads in enumerate(grad_steps, start=1):
        got = stepper.step([g.copy() for g in grads])
        got = [np.asarray(x, dtype=np.float64) for x in got]
        assert len(got) == len(params0), (
            f"{case}: step {t} returned {len(got)} parameters, expected {len(params0)}"
        )
        want_updates = ref.step(grads)
        for i, (new, old, du_ref) in enumerate(zip(got, prev, want_updates, strict=True)):
            where = f"{case}: step {t}, parameter {i} ({case.names[i]} {case.shapes[i]})"
            assert new.shape == case.shapes[i], f"{where}: shape {new.shape}"
            nonfinite = ~np.isfinite(new)
            assert not nonfinite.any(), f"{where}: non-finite value at {_where(nonfinite)}"
            off = ~representable(new, case.dtype)
            assert not off.any(), (
                f"{where}: value {new[_where(off)]!r} at {_where(off)} is not a "
                f"{case.dtype} number (the step did not run in {case.dtype})"
            )
            du = new - old
            scale = float(np.abs(du_ref).max()) if du_ref.size else 0.0
            bound = tol.rtol * scale + tol.ulps * ulp(np.maximum(abs(new), abs(old)), case.dtype)
            if isinstance(ref.rules[i], gcore.Adam):
                bound = bound + ref.adam_bound(i, t)
            err = np.abs(du - du_ref)
            bad = err > bound
            if bad.any():
                k = _where(bad)
                raise AssertionError(
                    f"{where}: update {du[k]!r} at {k}, the core rule's is {du_ref[k]!r} "
                    f"(error {err[k]:.3g} > bound {bound[k]:.3g}; max error "
                    f"{err.max():.3g}, update scale {scale:.3g})"
                )
            bounds[i] = bounds[i] + bound
            perr = np.abs(new - ref.params[i])
            bad = perr > bounds[i]
            if bad.any():
                k = _where(bad)
                raise AssertionError(
                    f"{where}: parameter {new[k]!r} at {k}, the core rule's trajectory has "
                    f"{ref.params[i][k]!r} (error {perr[k]:.3g} > accumulated bound "
                    f"{bounds[i][k]:.3g})"
                )
        prev = got


# -- a stepper for the core rule itself --------------------------------------------------


def _numpy_dtype(dtype: str) -> Any:
    if dtype == "bfloat16":
        import ml_dtypes  # only where bfloat16 cases are asked for on NumPy

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


class CoreRuleStepper:
    """The core rules run on NumPy in ``case.dtype``: the driver's own baseline."""

    def __init__(self, case: Case, params: list[np.ndarray]) -> None:
        dt = _numpy_dtype(case.dtype)
        self.dtype = dt
        self.rules = [case.rule_for(i) for i in range(len(params))]
        self.params = [p.astype(dt) for p in params]
        self.states = [r.init(p) for r, p in zip(self.rules, self.params, strict=True)]

    def step(self, grads: list[np.ndarray]) -> list[np.ndarray]:
        for i, g in enumerate(grads):
            u, self.states[i] = self.rules[i].update(
                g.astype(self.dtype), self.states[i], self.params[i]
            )
            self.params[i] = self.params[i] + u
        return [p.astype(np.float64) for p in self.params]
