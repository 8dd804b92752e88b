"""Library-size normalisation and log1p, keeping the raw counts in a layer."""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from scipy import sparse

from .._dask import count_problem, is_dask, require_row_chunks
from .._docs import doc_adata, doc_copy, doc_params
from .._kernels import log1p_cp10k
from .._settings import logger
from .._utils import check_adata, check_bool, check_not_view, check_number, check_str
from ._qc import check_unique_var_names


def _normalize_block(block, target_sum: float):
    """One row block of a Dask array: the same arithmetic as the in-memory path, row by row."""
    return log1p_cp10k(block, target_sum=target_sum, dtype=np.float32)


def _normalize_lazy(X, target_sum: float):
    """A lazy Dask array of log1p-normalised row blocks (nothing is computed here)."""
    meta = X._meta
    if sparse.issparse(meta):
        meta = sparse.csr_matrix((0, 0), dtype=np.float32)
    else:
        meta = np.empty((0, 0), dtype=np.float32)
    return X.map_blocks(_normalize_block, float(target_sum), dtype=np.float32, meta=meta)


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
    target_sum = check_number(
        "target_sum",
        target_sum,
        min=0,
        min_inclusive=False,
        fix="It is the number of counts per cell after scaling, e.g. 1e4.",
    )
    if not copy:
        check_not_view(adata, func="normalize")
    check_unique_var_names(adata)
    if is_dask(adata.X):
        require_row_chunks(adata.X, func="normalize")
    problem = count_problem(adata.X)
    if problem is not None:
        layers = list(adata.layers.keys())
        if counts_layer in adata.layers and count_problem(adata.layers[counts_layer]) is None:
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
    else:
        # the original matrix object becomes the counts layer (never modified); X gets new arrays (CSR if sparse)
        counts = X
        new = log1p_cp10k(X, target_sum=float(target_sum), dtype=np.float32)
    adata.layers[counts_layer] = counts
    adata.X = new
    adata.uns["log1p"] = {"base": None}
    adata.uns["normalize"] = {"params": {"target_sum": float(target_sum), "counts_layer": counts_layer}}
    logger.info("normalize: counts in layers[%r], log1p(CP%g) in X", counts_layer, target_sum)
    return adata if copy else None
