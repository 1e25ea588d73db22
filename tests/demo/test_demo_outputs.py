"""What `gcore demo` writes: both PNGs and a results.json with every arm × seed.

`nox -s demo` runs `gcore demo --quick --out DIR` (torch backend) and points
GCORE_DEMO_RESULTS at DIR; without it, these tests run a quick NumPy-backend demo
in-process (needs scikit-learn, matplotlib and tqdm, else they are skipped).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

RESULTS_ENV = "GCORE_DEMO_RESULTS"


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    given = os.environ.get(RESULTS_ENV)
    if given:
        return Path(given)
    gcore_demo = pytest.importorskip("gcore_demo", reason="gcore_demo needs numpy")
    for module, dist in (
        ("sklearn", "scikit-learn"),
        ("matplotlib", "matplotlib"),
        ("tqdm", "tqdm"),
    ):
        pytest.importorskip(module, reason=f"the demo needs {dist} (the 'demo' extra)")
    out = tmp_path_factory.mktemp("demo-results")
    argv = ["--backend", "numpy", "--quick", "--no-progress", "--out", str(out)]
    assert gcore_demo.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def results(results_dir) -> dict:
    return json.loads((results_dir / "results.json").read_text())


@pytest.mark.parametrize("name", ["curves.png", "weight_mean.png"])
def test_pngs_are_written(results_dir, name):
    data = (results_dir / name).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000  # two or three panels of lines, not an empty canvas


def test_every_arm_and_seed_ran_once(results):
    cfg = results["config"]
    keys = [a["key"] for a in results["arms"]]
    expected = {"sgd", "sgd_gc", "adam", "adam_gc", "adam_gcu"}
    if cfg["backend"] != "numpy":  # the NumPy MLP has no conv kernels
        expected |= {"sgd_gcc", "adam_gcc"}
    assert set(keys) == expected and len(keys) == len(expected)
    ran = sorted((r["arm"], r["seed"]) for r in results["runs"])
    assert ran == sorted((k, s) for k in keys for s in cfg["seeds"])
    assert len(cfg["seeds"]) >= 2
    for r in results["runs"]:
        assert len(r["train_loss"]) == len(r["test_accuracy"]) == cfg["epochs"]
        assert len(r["first_layer_unit_drift"]) == cfg["epochs"] + 1


def test_accuracies_are_fractions_above_chance(results):
    chance = 1 / 10
    for r in results["runs"]:
        assert all(0.0 <= a <= 1.0 for a in r["test_accuracy"]), r["arm"]
        assert r["test_accuracy"][-1] > 3 * chance, (r["arm"], r["seed"])
        assert all(loss > 0 for loss in r["train_loss"])


def test_gc_sgd_keeps_each_unit_weight_mean_plain_sgd_does_not(results):
    assert results["config"]["weight_decay"] == {"sgd": 0.0, "adam": 0.0}

    def worst(arm):
        return max(
            max(v)
            for r in results["runs"]
            if r["arm"] == arm
            for v in r["max_abs_weight_mean_drift"].values()
        )

    assert worst("sgd_gc") < 1e-5  # float32 rounding only
    assert worst("sgd") > 1e-3
    assert results["summary"]["sgd_gc"]["max_abs_weight_mean_drift"] == worst("sgd_gc")


def test_gc_of_adams_update_keeps_each_unit_weight_mean_gc_of_its_gradient_does_not(results):
    """GC zeroes the gradient's unit mean, not that of Adam's update m/(sqrt(v)+eps)."""
    s = results["summary"]
    assert s["adam_gcu"]["max_abs_weight_mean_drift"] < 1e-5
    assert (
        s["adam_gc"]["max_abs_weight_mean_drift"]
        > 100 * s["adam_gcu"]["max_abs_weight_mean_drift"]
    )


def test_table_md_is_written(results_dir, results):
    text = (results_dir / "table.md").read_text(encoding="utf-8")
    assert text.count("\n|") >= 2 + len(results["arms"])
    assert all(a["name"] in text for a in results["arms"])


def test_summary_matches_the_runs(results):
    for arm in results["arms"]:
        finals = [r["test_accuracy"][-1] for r in results["runs"] if r["arm"] == arm["key"]]
        s = results["summary"][arm["key"]]
        assert s["test_accuracy"]["mean"] == pytest.approx(sum(finals) / len(finals))
        assert ("delta_test_accuracy" in s) == (arm["gc"] != "none")
    assert len(results["verdicts"]) == sum(a["gc"] != "none" for a in results["arms"])
    env = results["environment"]
    assert env["cpu_count"] >= 1 and "numpy" in env["versions"]
