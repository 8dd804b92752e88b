"""Dask support shared by the out-of-core paths: map a function over row blocks, combine the results.

Functions that accept Dask arrays run their ordinary in-memory kernel on each block of cells (a CSR or dense
chunk read from disk only when needed) and combine the per-block results. ``dask.compute`` runs on the
``dask.distributed`` client when the user has started one, else on the threaded scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import sparse

from ._kernels import count_matrix_problem


def is_dask(X: Any) -> bool:
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover
        return False
    return isinstance(X, da.Array)


def uses_dask(adata: Any, layer: str | None = None) -> bool:
    """Whether the matrix a function would read (``X`` or ``layers[layer]``) is a Dask array (never raises)."""
    if layer is None:
        return is_dask(adata.X)
    return layer in adata.layers and is_dask(adata.layers[layer])


def require_row_chunks(X: Any, *, func: str) -> None:
    if not is_dask(X):  # an in-memory matrix is a single block of whole cells
        return
    if X.ndim != 2 or len(X.chunks[1]) != 1:
        raise ValueError(
            f"`{func}` processes Dask arrays in blocks of whole cells, but X is chunked along genes too "
            f"({len(X.chunks[1])} gene chunks). Rechunk first: `adata.X = adata.X.rechunk((10_000, -1))`."
        )


def row_offsets(X: Any) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(X.chunks[0])])


def map_row_blocks(func: Callable[..., Any], X: Any, *args: Any, row_args: Any = None, **kwargs: Any) -> list[Any]:
    """``[func(block, *args, **kwargs) for block in row blocks of X]``, computed by Dask (in parallel).

    ``row_args``: optional per-cell arrays (length ``n_obs``, or a tuple of them); the slice of each that
    matches a block is passed right after the block.
    """
    if not is_dask(X):  # an in-memory matrix is one block: the same kernels serve both paths
        extra = (
            ()
            if row_args is None
            else tuple(np.asarray(r) for r in (row_args if isinstance(row_args, tuple) else (row_args,)))
        )
        return [func(X, *extra, *args, **kwargs)]
    import dask

    require_row_chunks(X, func=getattr(func, "__name__", "function"))
    blocks = X.to_delayed().ravel()
    off = row_offsets(X)
    if row_args is not None and not isinstance(row_args, tuple):
        row_args = (row_args,)
    tasks = []
    for i, b in enumerate(blocks):
        extra = () if row_args is None else tuple(np.asarray(r)[off[i] : off[i + 1]] for r in row_args)
        tasks.append(dask.delayed(func, pure=True)(b, *extra, *args, **kwargs))
    return list(dask.compute(*tasks))


def sample_blocks(X: Any, n_blocks: int = 3, rows: int = 2_000) -> list[Any]:
    """The first ``rows`` cells of up to ``n_blocks`` row blocks of ``X`` (first, middle, last), computed.

    A cheap look at the data (e.g. "does it hold counts?") that reads a few thousand cells, not the matrix.
    """
    import dask

    nb = X.numblocks[0]
    off = row_offsets(X)
    idx = sorted({int(i) for i in np.linspace(0, nb - 1, min(max(n_blocks, 1), nb)).round()})
    parts = [X[int(off[i]) : int(min(off[i] + rows, off[i + 1]))] for i in idx]
    blocks = dask.compute(*parts)
    return [b if sparse.issparse(b) else np.asarray(b) for b in blocks]


def count_problem_sampled(X: Any, n_blocks: int = 3) -> str | None:
    """:func:`immunomood._kernels.count_matrix_problem` on a sample of row blocks of a Dask array."""
    for b in sample_blocks(X, n_blocks):
        problem = count_matrix_problem(b)
        if problem is not None:
            return problem
    return None


def count_problem(X: Any) -> str | None:
    """Why ``X`` is not raw counts, or ``None``: on a sample of blocks for a Dask array, else on ``X`` itself."""
    return count_problem_sampled(X) if is_dask(X) else count_matrix_problem(X)


def block_value_problem(block: Any) -> str | None:
    """Negative or non-finite values in one (computed) block, else ``None`` (a full, cheap check)."""
    data = block.data if sparse.issparse(block) else np.asarray(block).ravel()
    if data.size == 0:
        return None
    if not np.isfinite(data).all():
        return "it contains NaN or infinite values"
    mn = data.min()
    if mn < 0:
        return f"it contains negative values (min {mn:.3g})"
    return None
