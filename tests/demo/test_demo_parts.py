"""gcore demo's pieces: arms, data plan, the NumPy MLP's backprop, each backend's trainer,
the summary and the command line. Backends whose framework is missing are skipped."""

from __future__ import annotations

import re
from pathlib import Path

import gcore_demo
import numpy as np
import pytest
from gcore_demo import ARMS, Arm, Dataset, summarize
from gcore_demo import _numpy_backend as npb
from gcore_demo.experiment import batch_plan, verdicts

from gcore import cli


@pytest.fixture
def demo_extra():
    """The demo's own dependencies (``.[demo]``): without them the CLI stops early with a
    message naming the extra (tested elsewhere), so these tests cannot reach their point."""
    for name in ("matplotlib", "tqdm"):
        pytest.importorskip(name, reason=f"{name} is not installed (pip install '.[demo]')")


def _synthetic(shape=(1, 8, 8), n=96, n_classes=4, seed=0) -> Dataset:
    """A small separable problem; needs no scikit-learn or mnist1d."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    centres = rng.standard_normal((n_classes, *shape)).astype(np.float32)
    x = centres[y] + 0.3 * rng.standard_normal((n, *shape)).astype(np.float32)
    return Dataset(
        "synthetic",
        x[:64],
        y[:64].astype(np.int64),
        x[64:],
        y[64:].astype(np.int64),
        n_classes,
        0.9,
        "test data",
    )


HYPER = {"sgd": {"lr": 0.05, "momentum": 0.9}, "adam": {"lr": 1e-3}}


def test_arms_are_six_plus_adam_with_gc_of_the_update():
    assert [(a.optimizer, a.gc) for a in ARMS] == [
        *(("sgd", g) for g in ("none", "all", "conv")),
        *(("adam", g) for g in ("none", "all", "conv", "update")),
    ]
    assert len({a.key for a in ARMS}) == len({a.name for a in ARMS}) == 7
    assert Arm("adam", "all").baseline == Arm("adam", "none")
    assert Arm("adam", "update").baseline == Arm("adam", "none")
    assert [Arm("sgd", g).min_ndim for g in ("none", "all", "conv", "update")] == [None, 2, 4, 2]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"optimizer": "rmsprop", "gc": "all"}, "optimizer"),
        ({"optimizer": "sgd", "gc": "yes"}, "gc"),
    ],
)
def test_arm_rejects_unknown_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Arm(**kwargs)


def test_batch_plan_is_fixed_by_seed_and_covers_each_epoch():
    a, b = batch_plan(100, 32, 3, seed=1), batch_plan(100, 32, 3, seed=1)
    for ea, eb in zip(a, b, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(ea, eb, strict=True))
    assert len(a) == 3 and all(len(e) == 3 and all(len(i) == 32 for i in e) for e in a)
    for epoch in a:  # no repeats within an epoch (the last partial batch is dropped)
        assert len(np.unique(np.concatenate(epoch))) == 96
    other = batch_plan(100, 32, 3, seed=2)
    assert not np.array_equal(a[0][0], other[0][0])


def test_mlp_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    params = npb.init_params(5, 3, seed=0, dtype=np.float64)
    x, y = rng.standard_normal((7, 5)), rng.integers(0, 3, 7)
    _, grads = npb.loss_and_grads(params, x, y)
    eps = 1e-6
    for name, p in params.items():
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            up = npb.loss_and_grads(params, x, y)[0]
            p[idx] = old - eps
            down = npb.loss_and_grads(params, x, y)[0]
            p[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-8, err_msg=name)


def _trainer_module(backend: str):
    if backend == "torch":
        pytest.importorskip("torch", reason="torch is not installed")
        pytest.importorskip("gcore_torch", reason="gcore_torch is not importable")
    if backend == "jax":
        pytest.importorskip("flax", reason="flax is not installed (pip install '.[demo-jax]')")
        pytest.importorskip("gcore_jax", reason="gcore_jax is not importable")
    from gcore_demo.experiment import _backend

    return _backend(backend)


BACKENDS = ["numpy", "torch", "jax"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_arms_of_a_seed_start_from_the_same_weights(backend):
    mod = _trainer_module(backend)
    data = _synthetic()
    arms = [a for a in ARMS if mod.HAS_CONV or a.gc != "conv"]
    start = [mod.Trainer(a, data, 3, HYPER).initial for a in arms]
    for other in start[1:]:
        assert other.keys() == start[0].keys()
        for k in start[0]:
            np.testing.assert_array_equal(np.asarray(other[k]), np.asarray(start[0][k]))
    different = mod.Trainer(arms[0], data, 4, HYPER).initial
    assert any(
        not np.array_equal(np.asarray(different[k]), np.asarray(start[0][k])) for k in start[0]
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_trainer_learns_and_keeps_the_gc_sgd_invariant(backend):
    mod = _trainer_module(backend)
    data = _synthetic()
    plan = batch_plan(len(data.y_train), 16, 6, seed=0)
    drift = {}
    for arm in (Arm("sgd", "none"), Arm("sgd", "all")):
        t = mod.Trainer(arm, data, 0, HYPER)
        losses = [t.train_epoch(batches) for batches in plan]
        assert losses[-1] < losses[0]
        assert t.accuracy(data.x_test, data.y_test) > 0.5  # 4 classes: chance is 0.25
        drift[arm.gc] = max(float(np.abs(d).max()) for d in t.weight_mean_drift().values())
    assert drift["all"] < 1e-5  # projected descent on e^T w = const (float32 rounding)
    assert drift["none"] > 1e-3


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_gc_conv_only_leaves_the_linear_layer_alone(backend):
    mod = _trainer_module(backend)
    data = _synthetic()
    t = mod.Trainer(Arm("sgd", "conv"), data, 0, HYPER)
    for batches in batch_plan(len(data.y_train), 16, 3, seed=0):
        t.train_epoch(batches)
    drift = {k: float(np.abs(d).max()) for k, d in t.weight_mean_drift().items()}
    conv = [v for k, v in drift.items() if np.asarray(t.initial[k]).ndim == 4]
    linear = [v for k, v in drift.items() if np.asarray(t.initial[k]).ndim == 2]
    assert len(conv) == 3 and len(linear) == 1
    assert max(conv) < 1e-5 and linear[0] > 1e-4


def test_numpy_backend_refuses_conv_only():
    with pytest.raises(ValueError, match="conv"):
        npb.Trainer(Arm("sgd", "conv"), _synthetic(), 0, HYPER)


def _run(arm, seed, accs, drift=0.01, fc_drift=None):
    run = {
        "arm": arm,
        "seed": seed,
        "test_accuracy": accs,
        "train_loss": [1.0, 0.5],
        "epochs_to_target": 2 if accs[-1] >= 0.9 else None,
        "seconds": 1.0,
        "max_abs_weight_mean_drift": {"w": [0.0, drift]},
    }
    if fc_drift is not None:  # a conv kernel "w" and a linear layer "fc"
        run["max_abs_weight_mean_drift"]["fc"] = [0.0, fc_drift]
        run["weight_ndims"] = {"w": 4, "fc": 2}
    return run


def test_summarize_pairs_gc_with_its_baseline_by_seed():
    arms = [Arm("sgd", "none"), Arm("sgd", "all")]
    runs = [
        _run("sgd", 0, [0.5, 0.80]),
        _run("sgd", 1, [0.5, 0.90]),
        _run("sgd_gc", 0, [0.5, 0.85], 0.0),
        _run("sgd_gc", 1, [0.5, 0.97], 0.0),
    ]
    s = summarize(runs, arms)
    assert s["sgd"]["test_accuracy"]["mean"] == pytest.approx(0.85)
    assert s["sgd"]["test_accuracy"]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert s["sgd_gc"]["delta_test_accuracy"]["per_seed"] == pytest.approx([0.05, 0.07])
    assert "delta_test_accuracy" not in s["sgd"]
    # one of two runs reached the target: the median over both runs is "later than 2"
    assert s["sgd"]["epochs_to_target"] == {"median": None, "reached": 1, "runs": 2}
    assert s["sgd_gc"]["max_abs_weight_mean_drift"] == 0.0
    # Two seeds only: no verdict either way.
    assert "inconclusive" in verdicts(s, arms)[0]
    with pytest.raises(ValueError, match="adam"):
        summarize(runs, [Arm("adam", "none")])


@pytest.mark.parametrize(
    ("reached", "median"),
    [
        ([3, None, 5], 5.0),
        ([3, None, None], None),
        ([4, 2, 6, 8], 5.0),
        ([1, 2, None, None], None),
    ],
)
def test_epochs_to_target_is_a_median_over_all_runs(reached, median):
    from gcore_demo.experiment import _epochs_to_target

    got = _epochs_to_target(reached)
    assert got == {"median": median, "reached": sum(e is not None for e in reached),
                   "runs": len(reached)}  # fmt: skip


def test_weight_mean_drift_counts_only_the_tensors_the_arm_centralizes():
    arms = [Arm("adam", "none"), Arm("adam", "conv"), Arm("adam", "all")]
    runs = [
        _run("adam", 0, [0.5, 0.8], drift=0.02, fc_drift=0.05),
        _run("adam_gcc", 0, [0.5, 0.8], drift=1e-8, fc_drift=0.04),  # fc left alone
        _run("adam_gc", 0, [0.5, 0.8], drift=1e-8, fc_drift=2e-8),
    ]
    s = summarize(runs, arms)
    assert s["adam"]["max_abs_weight_mean_drift"] == 0.05  # GC would centralize both
    assert s["adam_gcc"]["max_abs_weight_mean_drift"] == 1e-8  # conv kernel only
    assert s["adam_gcc"]["max_abs_weight_mean_drift_all"] == 0.04
    assert s["adam_gc"]["max_abs_weight_mean_drift"] == 2e-8


def test_verdict_says_helped_when_the_gain_beats_the_spread():
    arms = [Arm("adam", "none"), Arm("adam", "all")]
    runs = [_run("adam", s, [0.5, a]) for s, a in enumerate([0.80, 0.81, 0.80])]
    runs += [_run("adam_gc", s, [0.5, a]) for s, a in enumerate([0.90, 0.90, 0.91])]
    assert verdicts(summarize(runs, arms), arms)[0].startswith("Adam + GC: helped")


def test_verdict_weighs_the_gain_against_the_seed_spread():
    arms = [Arm("sgd", "none"), Arm("sgd", "all")]
    # +6 pp on every seed, but plain SGD's seeds spread by 10 pp: not a clear difference.
    runs = [_run("sgd", s, [0.5, a]) for s, a in enumerate([0.80, 0.90, 0.70])]
    runs += [_run("sgd_gc", s, [0.5, a + 0.06]) for s, a in enumerate([0.80, 0.90, 0.70])]
    assert "no clear difference" in verdicts(summarize(runs, arms), arms)[0]


def test_verdict_needs_three_seeds_and_more_than_two_test_examples():
    arms = [Arm("adam", "none"), Arm("adam", "all")]
    # One test example of 360 better on every seed: both spreads are 0, still no verdict.
    runs = [_run("adam", s, [0.5, 0.80]) for s in range(3)]
    runs += [_run("adam_gc", s, [0.5, 0.80 + 1 / 360]) for s in range(3)]
    assert "no clear difference" in verdicts(summarize(runs, arms), arms, resolution=1 / 360)[0]
    two = [r for r in runs if r["seed"] < 2]
    assert "inconclusive" in verdicts(summarize(two, arms), arms)[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "mxnet"}, "backend"),
        ({"seeds": 0}, "seeds"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 1000}, "batch_size"),
        ({"data": "cifar"}, "data"),
    ],
)
def test_run_demo_rejects_bad_arguments(kwargs, match):
    kwargs.setdefault("data", _synthetic())
    kwargs.setdefault("backend", "numpy")
    with pytest.raises(ValueError, match=match):
        gcore_demo.run_demo(progress=False, **kwargs)


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--backend", "mxnet"], ["--data", "x"]])
def test_cli_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", *argv])
    assert exc.value.code == 2
    assert "gcore demo" in capsys.readouterr().err


def test_cli_delegates_help_to_the_demo(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--backend" in out


def test_digits_split_is_fixed_and_standardised():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (the 'demo' extra)")
    a, b = gcore_demo.load_data("digits"), gcore_demo.load_data("digits")
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert abs(float(a.x_train.mean())) < 1e-5 and abs(float(a.x_train.std()) - 1) < 1e-4


def test_mnist1d_is_generated_offline(monkeypatch):
    pytest.importorskip("mnist1d", reason="mnist1d is not installed (the 'demo' extra)")
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("load_data('mnist1d') tried to download")

    monkeypatch.setattr(requests, "get", no_network)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    d = gcore_demo.load_data("mnist1d")
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # global RNG untouched
    assert d.x_train.shape == (4000, 1, 1, 40) and d.x_test.shape == (1000, 1, 1, 40)
    assert sorted(np.unique(d.y_train)) == list(range(10))


def test_cli_names_the_extra_when_a_framework_is_missing(monkeypatch, capsys, demo_extra):
    import sys

    monkeypatch.delitem(sys.modules, "gcore_demo._jax_backend", raising=False)
    monkeypatch.setitem(sys.modules, "flax", None)
    monkeypatch.setitem(sys.modules, "flax.linen", None)
    assert cli.main(["demo", "--backend", "jax", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "flax" in err and "gradient-centralization[demo-jax]" in err


def test_jax_backend_uses_or_rejects_every_hyperparameter():
    pytest.importorskip("flax", reason="flax is not installed (pip install '.[demo-jax]')")
    import jax.numpy as jnp
    from gcore_demo._jax_backend import _optimizer

    import gcore_jax

    params = {"k": jnp.ones((3, 2))}
    grads = {"k": jnp.arange(6.0).reshape(3, 2)}
    tx = _optimizer(Arm("adam", "all"), {"adam": {"lr": 0.1, "betas": (0.5, 0.9), "eps": 1e-3}})
    want = gcore_jax.adam(0.1, b1=0.5, b2=0.9, eps=1e-3, layout="flax")
    got, _ = tx.update(grads, tx.init(params), params)
    ref, _ = want.update(grads, want.init(params), params)
    assert jnp.allclose(got["k"], ref["k"])
    with pytest.raises(ValueError, match="amsgrad"):
        _optimizer(Arm("adam", "all"), {"adam": {"lr": 0.1, "amsgrad": True}})


def test_cli_reports_an_out_of_range_batch_size_as_a_usage_error(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (the 'demo' extra)")
    from gcore_demo import main

    argv = ["--backend", "numpy", "--no-progress", "--out", str(tmp_path), "--batch-size"]
    assert main([*argv, "100000"]) == 2
    assert "batch_size=100000" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("kind", ["file", "unwritable", "under_a_file"])
def test_cli_rejects_a_bad_out_before_training(tmp_path, capsys, monkeypatch, kind):
    """Exit 2 with one line, before any data is loaded or any arm trains."""
    import os

    from gcore_demo import _cli, main

    def no_training(**kwargs):
        raise AssertionError("trained although --out is unusable")

    monkeypatch.setattr(_cli, "run_demo", no_training)
    if kind == "file":
        out = tmp_path / "results.txt"
        out.write_text("keep me")
    elif kind == "under_a_file":
        (tmp_path / "f").write_text("")
        out = tmp_path / "f" / "sub"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "sub"
        if os.geteuid() == 0:  # root writes into read-only folders; not into /proc
            if not os.path.isdir("/proc/self"):
                pytest.skip("running as root without /proc: no unwritable folder to try")
            out = Path("/proc/gcore-demo-results")
    try:
        assert main(["--backend", "numpy", "--no-progress", "--out", str(out)]) == 2
    finally:
        if kind == "unwritable":
            locked.chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert err.startswith("gcore demo: error:") and str(out) in err
    assert len(err.splitlines()) == 1
    if kind == "file":
        assert out.read_text() == "keep me"


@pytest.mark.parametrize(
    ("argv", "sgd", "adam"),
    [
        ([], {"lr": 0.05, "momentum": 0.9}, {"lr": 1e-3}),
        (["--lr", "0.1"], {"lr": 0.1, "momentum": 0.9}, {"lr": 0.1}),
        (["--lr", "adam=3e-3"], {"lr": 0.05, "momentum": 0.9}, {"lr": 3e-3}),
        (
            ["--lr", "sgd=0.1,adam=2e-3", "--weight-decay", "5e-4"],
            {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
            {"lr": 2e-3, "weight_decay": 5e-4},
        ),
        (
            ["--weight-decay", "sgd=1e-4"],
            {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
            {"lr": 1e-3},
        ),
    ],
)
def test_cli_lr_and_weight_decay_reach_the_optimizers(
    tmp_path, monkeypatch, argv, sgd, adam, demo_extra
):
    from gcore_demo import _cli, main

    seen = {}

    class Stop(Exception):
        pass

    def capture(**kwargs):
        seen.update(kwargs["hyperparameters"])
        raise Stop

    monkeypatch.setattr(_cli, "run_demo", capture)
    with pytest.raises(Stop):
        main(["--backend", "numpy", "--no-progress", "--out", str(tmp_path), *argv])
    assert seen == {"sgd": sgd, "adam": adam}


@pytest.mark.parametrize("value", ["fast", "rmsprop=0.1", "-1", "nan"])
@pytest.mark.parametrize("option", ["--lr", "--weight-decay"])
def test_cli_rejects_bad_lr_and_weight_decay(option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", option, value])
    assert exc.value.code == 2
    assert option in capsys.readouterr().err


def test_weight_decay_keeps_the_gc_sgd_invariant_and_reaches_results(demo_extra):
    """L2 decay is added before GC, so GC-SGD's unit means still hold; plain SGD's move."""
    res = gcore_demo.run_demo(
        backend="numpy",
        data=_synthetic(),
        epochs=2,
        seeds=1,
        batch_size=16,
        hyperparameters={"sgd": {**HYPER["sgd"], "weight_decay": 0.05}, "adam": HYPER["adam"]},
        arms=[Arm("sgd", "none"), Arm("sgd", "all")],
        progress=False,
    )
    assert res["config"]["weight_decay"] == {"sgd": 0.05, "adam": 0.0}
    assert res["summary"]["sgd_gc"]["max_abs_weight_mean_drift"] < 1e-6
    assert res["summary"]["sgd"]["max_abs_weight_mean_drift"] > 1e-4


def test_table_rows_align_and_notes_fit_the_backend(demo_extra):
    from gcore_demo.report import _width, format_table, table_notes

    res = gcore_demo.run_demo(
        backend="numpy", data=_synthetic(), epochs=1, seeds=1, batch_size=16, progress=False
    )
    lines = format_table(res).splitlines()

    def starts(line):  # display column where each cell begins (cells hold no double space)
        return [_width(line[: m.start()]) for m in re.finditer(r"\S+(?: \S+)*", line)]

    assert len(lines) == 2 + len(res["arms"])
    for line in lines[2:]:
        assert starts(line) == starts(lines[1]) == starts(lines[0]), line
    notes = " ".join(table_notes(res))
    assert "jax" not in notes and "over all 1 run " in notes
    res["config"]["backend"] = "jax"
    assert "jax" in " ".join(table_notes(res))
