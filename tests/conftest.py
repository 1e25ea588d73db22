"""The backend under test reaches every test as the ``xp`` fixture.

``GCORE_BACKEND`` (numpy, array_api_strict, torch, jax, cupy, dask, ndonnx) picks it, so
each nox session runs the whole suite on one library.
``@pytest.mark.skip_xp_backend(Backend.X, reason=...)`` skips a test on one backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from backends import Backend, current

BACKEND = current()


def _load_namespace(backend: Backend):
    if backend is Backend.CUPY:
        cupy = pytest.importorskip("cupy", reason="cupy is not installed")
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as err:  # no driver at all
            pytest.skip(f"CuPy is installed but no CUDA device is usable: {err}")
        if count == 0:
            pytest.skip("CuPy is installed but no CUDA device is visible")
    pytest.importorskip(backend.modname, reason=f"{backend.value} is not installed")
    if backend is Backend.ARRAY_API_STRICT:
        import array_api_strict

        array_api_strict.set_array_api_strict_flags(api_version="2024.12")
        return array_api_strict
    if backend is Backend.JAX:
        return importlib.import_module("jax.numpy")
    if backend is Backend.NDONNX:
        # ndonnx implements the standard itself (array-api-compat has no wrapper for it):
        # its arrays' __array_namespace__ is the ndonnx module.
        return importlib.import_module("ndonnx")
    return importlib.import_module(f"array_api_compat.{backend.modname}")


@pytest.fixture(scope="session")
def backend() -> Backend:
    return BACKEND


@pytest.fixture(scope="session")
def xp(backend):
    """The array namespace of the session's backend (array-api-compat wrapped)."""
    return _load_namespace(backend)


@pytest.fixture(autouse=True)
def _expected_namespace(request):
    """Tests that use ``xp`` must get results in it; others (a plugin's own arrays) are
    not held to the session's backend."""
    import helpers

    helpers.EXPECTED_XP = request.getfixturevalue("xp") if "xp" in request.fixturenames else None
    yield
    helpers.EXPECTED_XP = None


@pytest.fixture(autouse=True)
def _jax_x64(request, backend):
    """JAX's x64 mode, scoped to one test: on for tests that use ``xp`` in the jax session
    (the float64 reference checks), off (JAX's default) for every other test, whatever
    ran before."""
    if backend is not Backend.JAX and "jax" not in sys.modules:
        yield
        return
    import jax

    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", backend is Backend.JAX and "xp" in request.fixturenames)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


@pytest.fixture(autouse=True)
def _skip_xp_backend(request, backend):
    for marker in request.node.iter_markers("skip_xp_backend"):
        if marker.args[0] is backend:
            pytest.skip(marker.kwargs.get("reason", f"not run on {backend.value}"))


def pytest_collection_modifyitems(config, items):
    """ndonnx (0.23) has no complex dtypes: the core's complex tests (``test_complex_*``)
    are marked to skip on ndonnx only, and run again once ndonnx has ``complex128``."""
    if BACKEND is not Backend.NDONNX or importlib.util.find_spec("ndonnx") is None:
        return
    if hasattr(importlib.import_module("ndonnx"), "complex128"):
        return
    mark = pytest.mark.skip_xp_backend(
        Backend.NDONNX,
        reason="ndonnx has no complex dtypes (no complex64/complex128 in its namespace)",
    )
    for item in items:
        if getattr(item, "originalname", item.name).startswith("test_complex_"):
            item.add_marker(mark)


def _jit_identity(f):
    return f


def _persist_each_call(f):
    """dask: compute each call's arrays, so a trajectory does not grow one lazy graph
    over every step (50 Adam steps would otherwise take seconds each to evaluate)."""
    import dask

    def persist(x):
        if isinstance(x, tuple):
            items = [persist(v) for v in x]
            return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
        return dask.persist(x)[0] if hasattr(x, "dask") else x

    def wrapped(*args):
        return persist(f(*args))

    return wrapped


@pytest.fixture(scope="session")
def jit(backend):
    """``jax.jit`` on the jax backend (the rules must trace), a per-call ``persist`` on
    dask (lazy graphs stay one step deep), identity elsewhere."""
    if backend is Backend.JAX:
        import jax

        return jax.jit
    if backend is Backend.DASK:
        return _persist_each_call
    return _jit_identity


def pytest_report_header(config):
    return f"gcore backend: {BACKEND.value} (GCORE_BACKEND)"
