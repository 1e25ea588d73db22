"""Assertions and conversions that know the backend's namespace.

``xp_assert_close`` checks namespace, dtype and shape (through array-api-extra's
``assert_close``), with the desired values given as float64 NumPy reference arrays.
ndonnx arrays are neither buffers nor DLPack exporters: ``to_numpy`` reads their
propagated values (``unwrap_numpy()``) and ``xp_assert_close`` compares NumPy copies,
after checking namespace, dtype and shape on the ndonnx arrays themselves.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import (
    array_namespace,
    device,
    is_cupy_array,
    is_ndonnx_array,
    is_torch_array,
)
from array_api_extra.testing import assert_close


def to_numpy(x) -> np.ndarray:
    """Copy any backend array to a NumPy array (host memory)."""
    if is_cupy_array(x):
        return x.get()
    if is_torch_array(x):
        return x.detach().cpu().numpy()
    if is_ndonnx_array(x):
        # np.asarray would wrap the ndonnx array in a 0-d object array, and ndonnx
        # exports no DLPack: read the eagerly propagated value (ValueError if the array
        # is a lazy graph input with no value); a copy, not ndonnx's own buffer.
        return np.array(x.unwrap_numpy())
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        return np.from_dlpack(x)


def asarray(xp, a, dtype=None, like=None):
    """A copy of ``a`` (NumPy array or nested lists) in namespace ``xp``, cast to ``dtype``."""
    a = np.array(a)
    kwargs = {} if like is None else {"device": device(like)}
    x = xp.asarray(a, **kwargs)
    return x if dtype is None else xp.astype(x, dtype)


def rtol_for(dtype_name: str) -> float:
    return {"float64": 1e-12, "float32": 1e-6, "float16": 2e-3, "bfloat16": 2e-2}[dtype_name]


#: The session's namespace; the ``xp`` fixture sets it so every result is checked to
#: come back in it (a NumPy array for a torch input is a bug, not a pass).
EXPECTED_XP = None


def xp_assert_close(actual, desired: np.ndarray, *, dtype=None, rtol=None, atol=0.0, err_msg=""):
    """``actual`` (any backend) equals the NumPy ``desired`` to ``rtol`` (dtype-based default).

    ``actual`` must be an array of the session's namespace and, when given, of ``dtype``
    (the input's: a silent float32 → float64 promotion fails here).
    """
    xp = array_namespace(actual)
    if EXPECTED_XP is not None:
        assert xp is EXPECTED_XP, (
            f"result is in namespace {xp.__name__}, expected {EXPECTED_XP.__name__}"
        )
    if dtype is not None:
        assert actual.dtype == dtype, f"result dtype {actual.dtype}, expected {dtype}"
    dtype_name = str(actual.dtype).rsplit(".", 1)[-1]
    if rtol is None:
        rtol = rtol_for(dtype_name)
    want = asarray(xp, np.asarray(desired, dtype=np.float64), dtype=actual.dtype, like=actual)
    if is_ndonnx_array(actual):
        # array-api-extra converts with np.asarray / DLPack, neither of which reads an
        # ndonnx array: check shape and dtype here, in ndonnx, then compare NumPy copies
        # (assert_close re-checks their NumPy dtype and shape).
        assert actual.shape == want.shape, f"shapes do not match: {actual.shape} != {want.shape}"
        assert actual.dtype == want.dtype, f"dtypes do not match: {actual.dtype} != {want.dtype}"
        actual, want = to_numpy(actual), to_numpy(want)
    assert_close(actual, want, rtol=rtol, atol=atol, err_msg=err_msg)
