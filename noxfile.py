"""gcore's test matrix: one session per backend, plus lint.

Run everything with ``nox``; one backend with ``nox -s tests-torch``. Sessions use plain
venv + pip so that locally provided wheels (e.g. a CPU build of torch) are found.
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = False

# Extra packages each backend session installs beside `.[test]`. The torch pin selects the
# CPU wheel (newer releases resolve to multi-GB CUDA builds); pyproject keeps a generic spec.
BACKENDS: dict[str, list[str]] = {
    "numpy": [],
    "array_api_strict": [],
    "torch": ["torch==2.13.*", "ninja"],  # ninja: tests build the optional C++ kernels
    "jax": ["jax", "optax", "flax"],
    "cupy": ["cupy-cuda12x"],
    "dask": ["dask[array]"],  # through array-api-compat; runs the core suite (CORE_ONLY)
    # ndonnx implements the standard itself (ONNX graphs, values computed eagerly);
    # onnxruntime computes them (without it ndonnx warns and uses ONNX's reference evaluator).
    "ndonnx": ["ndonnx", "onnxruntime"],
}
# Backends that have no gcore plugin: their session runs tests/core only.
CORE_ONLY = {"dask", "ndonnx"}
# Extra pytest arguments of a backend's default run. dask: every rule call pays task-graph
# overhead (~20 ms a step, even persisted each step by the `jit` fixture), so the 50-step
# trajectories run for the plain SGD/Adam/AdamW rules only; their option variants
# (namespace-independent logic) run on every eager backend. Two workers (pytest-xdist).
# ndonnx: every operation is run through onnxruntime as it is called (~1 ms an op, ~0.1 s a
# GC-Adam step), so: the plain trajectories as on dask, Adam/AdamW's in float64 only (float32
# is checked by the one-step accuracy tests and the paper-AdamW float32 trajectories); the
# paper-AdamW float64 trajectories (12 cases, ~10 min), the Adam/AdamW mean-invariance runs
# (~1.5 min; the SGD ones and the paper GC2 one run) and the two 1,000-step float32 drift
# tests (~13 min; a rounding property, measured on the eager backends) are left out.
_DASK_K = "not ((test_adam_trajectory or test_sgd_trajectory) and not plain)"
_NDONNX_K = (
    f"{_DASK_K} and not (test_adam_trajectory and float32)"
    " and not test_paper_adamw_float64_trajectory"
    " and not (test_weight_mean_is_invariant and (adam_update or adamw_update))"
    " and not test_gc_sgd_unit_means_drift_only_by_rounding"
    " and not test_reproject_keeps_drift_at_one_step_rounding"
)
PYTEST_ARGS: dict[str, list[str]] = {
    "dask": ["-n", "2", "-k", _DASK_K],
    "ndonnx": ["-n", "2", "-k", _NDONNX_K],
}
# Installed for a backend's tests only (resolved together with the backend's packages).
# triton: gcore_torch's CUDA kernels are tested on the CPU in Triton's interpreter.
# equinox, scipy: gcore_jax's Equinox layouts and the constrained optima of its alias checks.
TEST_EXTRAS: dict[str, list[str]] = {
    "torch": ["triton"],
    "jax": ["equinox", "scipy"],
    "dask": ["pytest-xdist"],
    "ndonnx": ["pytest-xdist"],
}


def _has_cuda_device() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg"))


def _tests(session: nox.Session, backend: str) -> None:
    if backend == "cupy" and not _has_cuda_device():
        session.skip(
            "tests-cupy: no CUDA device is visible on this machine "
            "(no /dev/nvidia*), so CuPy cannot run; the session runs where a GPU is"
        )
    session.install(".[test]", *BACKENDS[backend], *TEST_EXTRAS.get(backend, []))
    session.run("gcore", "info")
    env = {"GCORE_BACKEND": backend}
    if backend == "torch":
        # A failed build of gcore_torch's compiled CPU kernels fails the run (not a skip).
        env["GCORE_TORCH_KERNELS_STRICT"] = "1"
    paths = ["tests/core"] if backend in CORE_ONLY else ["tests"]
    args = session.posargs or [*paths, *PYTEST_ARGS.get(backend, [])]
    session.run("python", "-m", "pytest", *args, env=env)
    if backend == "torch" and not session.posargs:
        # The demo needs torch too: checking it here, in the venv that already has torch,
        # saves a third torch install (tests-torch, docs, demo each made their own).
        _demo_check(session)


def _define(backend: str) -> None:
    def session_fn(session: nox.Session) -> None:
        _tests(session, backend)

    suite = "core suite (tests/core)" if backend in CORE_ONLY else "whole suite"
    session_fn.__doc__ = f"The {suite} with GCORE_BACKEND={backend}."
    nox.session(name=f"tests-{backend}", tags=["tests"])(session_fn)


for _backend in BACKENDS:
    _define(_backend)


# Keras 3 runs one backend per process (KERAS_BACKEND is read at import): one venv and one
# pytest process per backend. tensorflow-cpu is a 270 MB wheel (≈3 min to install here).
KERAS_BACKENDS: dict[str, list[str]] = {
    "jax": ["jax"],
    "torch": ["torch==2.13.*"],
    "tensorflow": ["tensorflow-cpu"],
}
KERAS_TESTS = [
    "tests/plugins/test_keras_optimizers.py",
    "tests/plugins/test_keras_conformance.py",
    "tests/core/test_docs_api.py",
    "tests/core/test_plugin_import_errors.py",
]


@nox.session(name="tests-keras", tags=["tests"])
@nox.parametrize("keras_backend", list(KERAS_BACKENDS))
def tests_keras(session: nox.Session, keras_backend: str) -> None:
    """gcore_keras's tests with KERAS_BACKEND=jax, torch and tensorflow (one run each)."""
    session.install(".[test,keras]", *KERAS_BACKENDS[keras_backend])
    session.run(
        "python", "-m", "pytest", *(session.posargs or KERAS_TESTS),
        env={"KERAS_BACKEND": keras_backend},
    )  # fmt: skip


# Libraries whose training loops the integration tests drive (tests/integrations). torch is
# pinned as in BACKENDS so that lightning / transformers do not pull a CUDA build.
INTEGRATIONS = ["torch==2.13.*", "lightning", "transformers", "accelerate", "jax", "optax", "flax"]


@nox.session(name="tests-integrations", tags=["tests"])
def tests_integrations(session: nox.Session) -> None:
    """GC inside other libraries' training loops, a few CPU steps each, checking the axis:
    PyTorch Lightning, Hugging Face Trainer (a tiny GPT-2 from a config, no download) and
    Flax NNX (tests/integrations). The torch kernels are not built here (tests-torch
    covers them): GCORE_TORCH_KERNELS=0 keeps this session to its integrations."""
    session.install(".[test]", *INTEGRATIONS)
    session.run(
        "python", "-m", "pytest", *(session.posargs or ["tests/integrations"]),
        env={"GCORE_BACKEND": "torch", "GCORE_TORCH_KERNELS": "0", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff==0.17.6")  # pinned: formatting must not change under CI
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def docs(session: nox.Session) -> None:
    """Run every docstring and page example on NumPy, then build the HTML site (-W).

    torch, jax, optax and flax are installed (≈40 s from wheels) so that autodoc documents
    the plugins with their real signatures; docs/conf.py mocks whichever is missing.
    """
    session.install(".[docs,numpy,keras]", "pytest", *BACKENDS["torch"], *BACKENDS["jax"])
    # Doctests with pytest: the core's and the NumPy plugin's modules, and the pages'
    # `>>>` examples (other frameworks' examples are code-blocks, shown but not run).
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "--doctest-modules", "--doctest-glob=*.rst",
        "gcore", "plugins/gcore_numpy", "docs",
        "--ignore=gcore/__main__.py", "--ignore=docs/_build", "--ignore=docs/_ext",
        "--ignore=docs/conf.py", "--ignore=docs/make_figures.py",
    )  # fmt: skip
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", *session.posargs,
        "docs", "docs/_build/html",
    )  # fmt: skip


def _demo_check(session: nox.Session) -> None:
    """`gcore demo --quick` as a user runs it, then check what it wrote (tests/demo).

    The check: both PNGs exist, results.json has every arm × seed, accuracies are
    fractions above chance, GC-SGD's per-unit weight means do not move (no weight decay)
    while plain SGD's do. The demo's docstring examples run too.
    """
    # The demo extra beside the session's torch (its cap, <2.14, keeps the 2.13 wheel).
    session.install(".[demo]", "pytest", *BACKENDS["torch"])
    out = os.path.join(session.create_tmp(), "demo-results")
    session.run("gcore", "demo", "--quick", "--out", out)
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/demo",
        env={"GCORE_DEMO_RESULTS": out},
    )  # fmt: skip
    # Separately: collecting the source tree beside tests/demo (which imports the installed
    # copy) is an "import file mismatch". flax is not installed here, hence the ignore.
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "--doctest-modules", "demo/gcore_demo",
        "--ignore=demo/gcore_demo/__main__.py", "--ignore=demo/gcore_demo/_jax_backend.py",
    )  # fmt: skip


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """The demo check alone (the default run does it inside tests-torch, whose venv
    already has torch)."""
    _demo_check(session)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Step-time benchmarks on ResNet-50 shapes (not in the default run: takes minutes and
    wants a quiet machine). Writes benchmarks/results/<name>.md and .json."""
    session.install(".[numpy,jax]", *BACKENDS["torch"], "pytorch_optimizer")
    session.run("python", "benchmarks/bench_torch.py", *session.posargs)
    session.run("python", "benchmarks/bench_jax.py")
    if _has_cuda_device():
        session.install(".[cupy]")
        session.run("python", "benchmarks/bench_cuda.py")
    else:
        session.log("bench_cuda.py skipped: no CUDA device is visible on this machine")
