"""Dask support shared by the out-of-core paths: map a function over row blocks, combine the results.

Functions that accept Dask arrays run their ordinary in-memory kernel on each block of cells (a CSR or dense
chunk read from disk only when needed) and combine the per-block results. ``dask.compute`` runs on the
``dask.distributed`` client when the user has started one, else on the threaded scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def is_dask(X: Any) -> bool:
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover
        return False
    return isinstance(X, da.Array)


def require_row_chunks(X: Any, *, func: str) -> None:
    if len(X.chunks[1]) != 1:
        raise ValueError(
            f"`{func}` processes Dask arrays in blocks of whole cells, but X is chunked along genes too "
            f"({len(X.chunks[1])} gene chunks). Rechunk first: `adata.X = adata.X.rechunk((10_000, -1))`."
        )


def row_offsets(X: Any) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(X.chunks[0])])


def map_row_blocks(func: Callable[..., Any], X: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """``[func(block, *args, **kwargs) for block in row blocks of X]``, computed by Dask (in parallel)."""
    import dask

    require_row_chunks(X, func=getattr(func, "__name__", "function"))
    blocks = X.to_delayed().ravel()
    tasks = [dask.delayed(func)(b, *args, **kwargs) for b in blocks]
    return list(dask.compute(*tasks))
