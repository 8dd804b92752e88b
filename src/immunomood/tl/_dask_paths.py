"""Dask (out-of-core) paths of :func:`immunomood.tl.score_pathways` and :func:`immunomood.tl.pseudobulk`.

Both functions dispatch here when the matrix they read is a Dask array (e.g. from :func:`immunomood.io.read_lazy`).
Each row block of cells is processed by the same in-memory kernel and the small per-block results are combined,
so the results equal the in-memory ones. ``dask.compute`` runs on the ``dask.distributed`` client when the user
started one, else on Dask's threaded scheduler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._dask import is_dask, map_row_blocks, require_row_chunks, sample_blocks, uses_dask
from .._settings import logger
from .._utils import (
    check_adata,
    check_not_view,
    count_matrix_problem,
    get_matrix,
)

__all__ = ["aggregate_dask", "pseudobulk_dask", "score_pathways_dask", "uses_dask"]


# ----------------------------------------------------------------------------------------------
# score_pathways
# ----------------------------------------------------------------------------------------------
def _block_set_sums(block, union: np.ndarray, found: dict[str, np.ndarray], is_counts: bool):
    """One row block: ("fast", per-set sums, expressed flags) or ("sub", the log-normalised union columns)."""
    from ._pathways import _fast_csr_sums, _log_normalised_columns

    if not sparse.issparse(block):
        block = np.asarray(block)
    fast = _fast_csr_sums(block, union, found, is_counts)
    if fast is not None:
        return ("fast", *fast)
    return ("sub", _log_normalised_columns(block, union, is_counts=is_counts))


def score_pathways_dask(
    adata: AnnData,
    gene_sets: str | Mapping[str, Sequence[str]] = "complement",
    *,
    layer: str | None = None,
    gene_symbols: str | None = None,
    key_added: str = "pathway_scores",
    inplace: bool = True,
) -> pd.DataFrame | None:
    """:func:`immunomood.tl.score_pathways` for a Dask matrix: one pass over the row blocks, same result.

    Each block of cells goes through the in-memory kernel (per-cell sums over every set's genes, and which set
    genes are expressed); the per-cell sums are small (cells x sets) and are centred once all blocks are done.
    Whether the matrix holds raw counts is decided from a sample of blocks (first, middle, last).
    """
    from ._pathways import _looks_like_counts, _prepare_sets, _set_means, _used_genes

    check_adata(adata)
    if inplace:
        check_not_view(adata, func="score_pathways")
    X = get_matrix(adata, layer)
    require_row_chunks(X, func="score_pathways")
    sets, symbols, found, missing, union = _prepare_sets(adata, gene_sets, gene_symbols)
    is_counts = all(_looks_like_counts(b) for b in sample_blocks(X))
    if is_counts:
        logger.info("score_pathways: the matrix holds raw counts; log-normalising the set genes internally")
    parts = map_row_blocks(_block_set_sums, X, union, found, is_counts)
    fast = all(p[0] == "fast" for p in parts)
    if fast:
        sums = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, len(found)))
        expressed_mask = np.logical_or.reduce([p[2] for p in parts])
    else:
        subs = [p[1] if p[0] == "sub" else None for p in parts]
        if any(s is None for s in subs):  # mixed block types (unusual): redo the fast blocks column-wise
            raise TypeError("score_pathways: the Dask array mixes sparse and dense blocks; make them one type.")
        sub = sparse.vstack(subs, format="csr") if sparse.issparse(subs[0]) else np.vstack(subs)
        nnz = np.asarray((sub != 0).sum(axis=0)).ravel()
        expressed_mask = nnz > 0
    used = _used_genes(found, missing, union, expressed_mask, symbols, sets, stacklevel=5)
    S = _set_means(used, union, sums=sums if fast else None, sub=None if fast else sub)
    from ._pathways import _finish

    return _finish(adata, S, used, symbols, missing, gene_sets=gene_sets, layer=layer, is_counts=is_counts,
                   key_added=key_added, inplace=inplace)


# ----------------------------------------------------------------------------------------------
# pseudobulk
# ----------------------------------------------------------------------------------------------
def _block_aggregate(block, codes: np.ndarray, n_groups: int) -> sparse.csr_matrix:
    """Indicator-matrix product of one row block (the in-memory ``aggregate``, on the block's cells)."""
    keep = codes >= 0
    G = sparse.csr_matrix(
        (np.ones(int(keep.sum())), (codes[keep], np.flatnonzero(keep))), shape=(n_groups, block.shape[0])
    )
    out = G @ block
    return sparse.csr_matrix(out, dtype=np.float64) if sparse.issparse(out) else sparse.csr_matrix(
        np.asarray(out, dtype=np.float64)
    )


def aggregate_dask(X, codes: np.ndarray, n_groups: int) -> sparse.csr_matrix:
    """Rows of a Dask ``X`` summed by integer ``codes`` (codes < 0 ignored): the sum of per-block products."""
    require_row_chunks(X, func="pseudobulk")
    parts = map_row_blocks(_block_aggregate, X, n_groups, row_args=np.asarray(codes, dtype=np.int64))
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return sparse.csr_matrix(out, dtype=np.float64)


def _problem_of_sampled(M):
    """``count_matrix_problem``, on a sample of blocks for Dask arrays (no full pass over the data)."""
    if is_dask(M):
        for b in sample_blocks(M):
            p = count_matrix_problem(b)
            if p is not None:
                return p
        return None
    return count_matrix_problem(M)


def pseudobulk_dask(
    adata: AnnData,
    *,
    sample_key: str,
    groupby: str,
    layer: str | None = "counts",
    min_cells: int = 10,
) -> AnnData:
    """:func:`immunomood.tl.pseudobulk` for a Dask count matrix: the sum of per-block indicator products.

    Every row block of cells is multiplied by its slice of the (sample x group) indicator matrix and the small
    products are added up; only the pseudobulk matrix (combinations x genes) is held in memory.
    """
    from ._pseudobulk import pseudobulk

    return pseudobulk(adata, sample_key=sample_key, groupby=groupby, layer=layer, min_cells=min_cells)
