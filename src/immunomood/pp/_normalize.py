"""Library-size normalisation and log1p, keeping the raw counts in a layer."""

from __future__ import annotations

import numba
import numpy as np
from anndata import AnnData
from scipy import sparse

from .._dask import count_problem_sampled, is_dask, require_row_chunks
from .._docs import doc_adata, doc_copy, doc_params
from .._settings import logger
from .._utils import check_adata, check_bool, check_not_view, check_number, check_str, count_matrix_problem
from ._qc import _check_unique_var_names


@numba.njit(parallel=True, cache=True, nogil=True)
def _csr_scale_data(data, indptr, target_sum):  # pragma: no cover - compiled
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


def _csr_normalize_log1p(X: sparse.csr_matrix, target_sum: float) -> sparse.csr_matrix:
    new = _csr_scale_data(X.data, X.indptr, float(target_sum))
    np.log1p(new, out=new)  # numpy's vectorised float32 log1p
    return sparse.csr_matrix((new, X.indices.copy(), X.indptr.copy()), shape=X.shape)


def _dense_normalize_log1p(X, target_sum: float) -> np.ndarray:
    Xf = np.asarray(X, dtype=np.float32)
    totals = Xf.sum(1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        scale = np.where(totals > 0, target_sum / totals, 0.0).astype(np.float32)
    new = Xf * scale[:, None]
    np.log1p(new, out=new)
    return new


def _normalize_block(block, target_sum: float):
    """One row block of a Dask array: the same arithmetic as the in-memory path, row by row."""
    if sparse.issparse(block):
        Xc = block if block.format == "csr" else sparse.csr_matrix(block)
        return _csr_normalize_log1p(Xc, target_sum)
    return _dense_normalize_log1p(block, target_sum)


def _normalize_lazy(X, target_sum: float):
    """A lazy Dask array of log1p-normalised row blocks (nothing is computed here)."""
    meta = X._meta
    if sparse.issparse(meta):
        meta = sparse.csr_matrix((0, 0), dtype=np.float32)
    else:
        meta = np.empty((0, 0), dtype=np.float32)
    return X.map_blocks(_normalize_block, float(target_sum), dtype=np.float32, meta=meta)


def _count_problem(X) -> str | None:
    return count_problem_sampled(X) if is_dask(X) else count_matrix_problem(X)


@doc_params(adata=doc_adata, copy=doc_copy)
def normalize(
    adata: AnnData,
    *,
    target_sum: float = 1e4,
    counts_layer: str = "counts",
    copy: bool = False,
) -> AnnData | None:
    """Store the raw counts in a layer, then put ``log1p(counts / total * target_sum)`` in ``X``.

    Equivalent to ``adata.layers[counts_layer] = adata.X.copy()``, :func:`scanpy.pp.normalize_total`
    (``target_sum``) and :func:`scanpy.pp.log1p`, in one pass and with a check that ``X`` holds counts.

    Parameters
    ----------
    {adata}
        ``adata.X`` must hold raw counts (non-negative integers).
    target_sum
        Counts per cell after scaling (1e4: "log-normalised counts per 10k").
    counts_layer
        Layer that receives a copy of the raw counts.
    {copy}

    Returns
    -------
    With ``copy=False``, ``None`` and ``adata`` is changed in place; with ``copy=True``, the normalised copy.
    Writes ``layers[counts_layer]`` (raw counts), ``X`` (float32 log-normalised values), ``uns["log1p"]``
    (``{{"base": None}}``, as scanpy records it so that downstream scanpy functions know ``X`` is logged) and
    ``uns["normalize"]["params"]`` (``target_sum``, ``counts_layer``). Cells with no counts stay all zero.

    Notes
    -----
    With a Dask ``X`` (e.g. from :func:`immunomood.io.read_lazy`) nothing is computed: ``X`` becomes a lazy Dask
    array of log-normalised row blocks (the same values as in memory) and ``layers[counts_layer]`` the lazy counts.
    The counts check runs on a sample of blocks (first, middle, last) before that. ``X`` must be chunked in whole
    cells (one chunk along genes).
    """
    check_adata(adata)
    copy = check_bool("copy", copy)
    check_str("counts_layer", counts_layer, fix="Name the layer that receives the raw counts, e.g. 'counts'.")
    target_sum = check_number("target_sum", target_sum, min=0, min_inclusive=False,
                              fix="It is the number of counts per cell after scaling, e.g. 1e4.")
    if not copy:
        check_not_view(adata, func="normalize")
    _check_unique_var_names(adata)
    if is_dask(adata.X):
        require_row_chunks(adata.X, func="normalize")
    problem = _count_problem(adata.X)
    if problem is not None:
        layers = list(adata.layers.keys())
        if counts_layer in adata.layers and _count_problem(adata.layers[counts_layer]) is None:
            raise ValueError(
                f"`normalize` needs raw counts in adata.X, but adata.X {problem.replace('it ', '', 1)}: it looks "
                f"already normalised, and adata.layers[{counts_layer!r}] holds counts. Nothing to do if X is what "
                f"you want; to normalise again from the counts, first run "
                f"`adata.X = adata.layers[{counts_layer!r}].copy()`."
            )
        raise ValueError(
            f"`normalize` needs raw counts (non-negative integers) in adata.X, but adata.X "
            f"{problem.replace('it ', '', 1)}. Put the raw counts in X first, e.g. "
            f"`adata.X = adata.layers['<layer with counts>'].copy()` (layers present: {layers}); "
            "for ambient-corrected or otherwise non-integer data, round them or normalise with scanpy directly."
        )
    if copy:
        adata = adata.copy()
    X = adata.X
    if is_dask(X):
        counts = X  # the original lazy array becomes the counts layer
        new = _normalize_lazy(X, target_sum)
    elif sparse.issparse(X):
        Xc = X if X.format == "csr" else sparse.csr_matrix(X)
        # the original matrix object becomes the counts layer (never modified); X gets new arrays
        counts = X
        new = _csr_normalize_log1p(Xc, float(target_sum))
    else:
        counts = X  # the original array becomes the counts layer (never modified)
        new = _dense_normalize_log1p(X, target_sum)
    adata.layers[counts_layer] = counts
    adata.X = new
    adata.uns["log1p"] = {"base": None}
    adata.uns["normalize"] = {"params": {"target_sum": float(target_sum), "counts_layer": counts_layer}}
    logger.info("normalize: counts in layers[%r], log1p(CP%g) in X", counts_layer, target_sum)
    return adata if copy else None
