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
    "torch": ["torch==2.13.*"],
    "jax": ["jax", "optax"],
    "cupy": ["cupy-cuda12x"],
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
    session.install(".[test]", *BACKENDS[backend])
    session.run("gcore", "info")
    session.run(
        "python", "-m", "pytest", *(session.posargs or ["tests"]), env={"GCORE_BACKEND": backend}
    )


def _define(backend: str) -> None:
    def session_fn(session: nox.Session) -> None:
        _tests(session, backend)

    session_fn.__doc__ = f"The whole suite with GCORE_BACKEND={backend}."
    nox.session(name=f"tests-{backend}", tags=["tests"])(session_fn)


for _backend in BACKENDS:
    _define(_backend)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
