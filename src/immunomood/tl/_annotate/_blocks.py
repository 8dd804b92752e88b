"""Row blocks of the expression matrix: the out-of-core part of :func:`~immunomood.tl.annotate`.

A Dask matrix (e.g. from :func:`immunomood.io.read_lazy`) is read through :func:`immunomood._dask.map_row_blocks`;
an in-memory matrix through slices of ``_BLOCK_CELLS`` cells, so that neither path builds a log-normalised copy of
the whole matrix: only the cells annotated in full are materialised, every other cell contributes its marker
genes and its projection on the sketch's PCA.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from ..._dask import block_value_problem, is_dask, map_row_blocks
from ..._settings import resolve_n_jobs, settings
from ._graph import _pca_project
from ._scoring import _dense_cols, _log_normalised

#: Cells per row block when an in-memory matrix is read block by block (a Dask array keeps its own chunks).
_BLOCK_CELLS = 20_000


def _row_blocks(func, X, row_args: tuple[np.ndarray, ...], *args) -> list:
    """``func(block, *row_args of the block, *args)`` for each row block of ``X``, in order.

    Dask: :func:`immunomood._dask.map_row_blocks` (the threaded scheduler with ``settings.n_jobs`` workers unless
    a ``dask.distributed`` client is active). In memory: slices of ``_BLOCK_CELLS`` cells, one after the other.
    """
    if is_dask(X):
        import dask

        with dask.config.set(num_workers=resolve_n_jobs(settings.n_jobs)):
            return map_row_blocks(func, X, *args, row_args=row_args)
    return [
        func(X[s : s + _BLOCK_CELLS], *(r[s : s + _BLOCK_CELLS] for r in row_args), *args)
        for s in range(0, X.shape[0], _BLOCK_CELLS)
    ]


def _take_rows(block, keep: np.ndarray):
    """(negative / non-finite values of the block or None, its cells ``keep`` (boolean), CSR when sparse)."""
    sub = sparse.csr_matrix(block)[keep] if sparse.issparse(block) else np.asarray(block)[keep]
    return block_value_problem(block), sub


def _rows(X, keep: np.ndarray):
    """The cells ``keep`` (boolean, in order) of ``X`` in memory; every block's values checked on the way."""
    parts = _row_blocks(_take_rows, X, (keep,))
    problem = next((p for p, _ in parts if p is not None), None)
    if problem is not None:
        raise ValueError(
            f"The expression matrix cannot be used for annotation: {problem}. Pass raw counts or log-normalised "
            "data (e.g. `layer='counts'`)."
        )
    parts = [m for _, m in parts]
    return sparse.vstack(parts, format="csr") if sparse.issparse(parts[0]) else np.vstack(parts)


def _block_expression(block, rest: np.ndarray, idx: np.ndarray, kind: tuple[bool, bool], pca: list | None):
    """One row block: marker genes of its cells, PCA projection of its cells ``rest``."""
    E = _dense_cols(block, idx, kind)
    proj = None
    if pca:
        hvg, pcs, mu = pca
        keep = sparse.csr_matrix(block)[rest] if sparse.issparse(block) else np.asarray(block)[rest]
        proj = _pca_project(_log_normalised(keep, kind, cols=hvg), pcs, mu)
    return E, proj


def _expression_blocks(
    X, rest: np.ndarray, idx: np.ndarray, kind: tuple[bool, bool], pca: list | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Marker genes of every cell (dense float32) and the projection of the cells ``rest``, block by block."""
    parts = _row_blocks(_block_expression, X, (rest,), idx, kind, pca)
    E = np.vstack([e for e, _ in parts])
    proj = np.vstack([p for _, p in parts]) if pca else None
    return E, proj
