"""Numerical kernels shared across features: "is it raw counts?" and log1p(counts per 10k).

Private and dependency-free within the package (imports nothing from :mod:`immunomood`), so any module can use it
without an import cycle. Each function takes an in-memory matrix (a Dask row block counts as one); the Dask-aware
wrappers (checks on a sample of blocks) are in :mod:`immunomood._dask`.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from scipy import sparse

# ----------------------------------------------------------------------------------------------
# raw counts
# ----------------------------------------------------------------------------------------------
MAX_VALUES = 2_000_000


def values_sample(X: Any, max_values: int = MAX_VALUES) -> np.ndarray:
    """Stored values of ``X`` (all of them, or an evenly spaced sample of about ``max_values`` of them).

    A Dask array is looked at through its first 10,000 rows (use :func:`immunomood._dask.count_problem` for a
    sample of blocks).
    """
    if sparse.issparse(X):
        data = X.data
    elif hasattr(X, "compute") and not isinstance(X, np.ndarray):  # dask
        block = X[: min(X.shape[0], 10_000)]
        block = block.compute()
        return values_sample(block, max_values)
    else:
        data = np.asarray(X).ravel()
    if data.size > max_values:
        step = data.size // max_values + 1
        data = data[::step]
    return np.asarray(data)


def count_matrix_problem(X: Any, *, max_values: int = MAX_VALUES) -> str | None:
    """Why ``X`` is not raw counts (non-negative integers), or ``None`` if it looks like counts.

    Decided from the stored values (a sample of ``max_values`` of them on large matrices).
    """
    vals = values_sample(X, max_values)
    if vals.size == 0:
        return None
    if not np.all(np.isfinite(vals)):
        return "it contains NaN or infinite values"
    if (vals < 0).any():
        return f"it contains negative values (min {vals.min():.3g})"
    frac = np.abs(vals - np.round(vals)) > 1e-6
    if frac.any():
        ex = vals[frac][:3]
        return f"it contains non-integer values (e.g. {', '.join(f'{v:.4g}' for v in ex)})"
    return None


def is_count_matrix(X: Any, *, max_values: int = MAX_VALUES) -> bool:
    return count_matrix_problem(X, max_values=max_values) is None


# ----------------------------------------------------------------------------------------------
# log1p(counts per target_sum)
# ----------------------------------------------------------------------------------------------
def row_totals(X: Any) -> np.ndarray:
    """Per-row sums of ``X`` (library sizes), in float64."""
    if sparse.issparse(X):
        return np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()
    return np.asarray(X).sum(axis=1, dtype=np.float64).ravel()


def size_factors(totals: np.ndarray, target_sum: float = 1e4) -> np.ndarray:
    """``target_sum / totals`` in float64, 0 for empty rows (their values are all 0 and stay 0)."""
    totals = np.asarray(totals, dtype=np.float64)
    return np.divide(float(target_sum), totals, out=np.zeros_like(totals), where=totals > 0)


@numba.njit(parallel=True, cache=True, nogil=True)
def _csr_scale_data(data, indptr, target_sum):  # pragma: no cover - compiled
    """float32 ``data * float32(target_sum / row total)`` per row, the totals summed in the same pass."""
    n = indptr.size - 1
    out = np.empty(data.size, dtype=np.float32)
    for i in numba.prange(n):
        start, end = indptr[i], indptr[i + 1]
        t = 0.0
        for k in range(start, end):
            t += data[k]
        scale = np.float32(target_sum / t) if t > 0 else np.float32(0.0)
        for k in range(start, end):
            out[k] = np.float32(data[k]) * scale
    return out


def log1p_cp10k(X: Any, *, target_sum: float = 1e4, totals: np.ndarray | None = None, dtype=np.float32):
    """``log1p(x / row total * target_sum)``: a new matrix (CSR for sparse ``X``, else ndarray); ``X`` untouched.

    ``totals``: the library sizes when ``X`` holds only some genes of each cell (default: the row sums of ``X``).
    ``dtype``: the arithmetic precision; the per-row factor ``target_sum / total`` is computed in float64 and
    rounded to ``dtype`` once, then multiplied with the values and ``log1p`` taken in ``dtype`` (numpy's
    vectorised ``log1p``), so the result does not depend on the storage of ``X``.
    """
    dtype = np.dtype(dtype)
    if sparse.issparse(X):
        Xc = X if X.format == "csr" else sparse.csr_matrix(X)
        if totals is None and dtype == np.float32 and Xc.nnz:  # fused: totals and scaling in one parallel pass
            new = _csr_scale_data(Xc.data, Xc.indptr, float(target_sum))
        else:
            scale = size_factors(row_totals(Xc) if totals is None else totals, target_sum).astype(dtype)
            new = Xc.data.astype(dtype) * np.repeat(scale, np.diff(Xc.indptr))
        np.log1p(new, out=new)
        return sparse.csr_matrix((new, Xc.indices.copy(), Xc.indptr.copy()), shape=Xc.shape)
    Xf = np.asarray(X, dtype=dtype)
    scale = size_factors(row_totals(Xf) if totals is None else totals, target_sum).astype(dtype)
    new = Xf * scale[:, None]
    np.log1p(new, out=new)
    return new
