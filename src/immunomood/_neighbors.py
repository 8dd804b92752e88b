"""Shared, private: the k-nearest-neighbour graph used by every graph-based step.

Why our own kNN transformer instead of scanpy's default: above 4,096 cells scanpy builds the graph
with ``pynndescent.PyNNDescentTransformer``. With pynndescent 0.7 and scipy >= 1.15 that transformer
returns a ``csr_array``, which scanpy 1.11 cannot read (``'csr_array' object has no attribute
'getnnz'``), and its ``fit_transform`` runs an index *query* after the build (90 s for 12,000 cells
here, against 1.5 s for the build alone and 0.5 s for the exact lists). This module computes the same k-nearest-neighbour lists
itself (exact with scikit-learn up to :data:`EXACT_MAX_CELLS` cells, pynndescent's ``NNDescent``
build graph above, as umap does) and hands scanpy a ``csr_matrix`` with exactly ``k`` entries per
row, the cell itself first. It works with every pynndescent and scipy release we know of.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

#: Below this many cells scanpy's own default (exact, scikit-learn) is used unchanged.
SCANPY_DEFAULT_MAX_CELLS = 4096
#: Up to this many cells the kNN lists are exact (scikit-learn brute force, 8 s for 50,000 cells x 30
#: dimensions on 2 cores); above, NN-descent (whose numba compilation alone takes ~25 s per process).
EXACT_MAX_CELLS = 50_000


def knn_lists(
    X: np.ndarray, k: int, *, random_state: int = 0, n_jobs: int | None = None, exact: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances (``n x k``, Euclidean) of each row's ``k`` nearest rows, itself first.

    ``exact=None`` chooses by size (:data:`EXACT_MAX_CELLS`); ``True``/``False`` forces a method.
    """
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    n = X.shape[0]
    k = int(min(k, n))
    if exact is None:
        exact = n <= EXACT_MAX_CELLS
    if exact:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k, algorithm="brute", n_jobs=n_jobs).fit(X)
        dist, idx = nn.kneighbors(X, return_distance=True)
    else:
        from pynndescent import NNDescent

        index = NNDescent(
            X,
            n_neighbors=k,
            metric="euclidean",
            random_state=random_state,
            n_trees=min(64, 5 + round(n**0.5 / 20.0)),
            n_iters=max(5, round(np.log2(n))),
            n_jobs=n_jobs,
            low_memory=True,
            compressed=False,
            verbose=False,
        )
        idx, dist = index.neighbor_graph
    return _self_first(np.asarray(idx, dtype=np.int64), np.asarray(dist, dtype=np.float32))


def _self_first(idx: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put each row's own index in column 0 (distance 0); identical cells may list a twin first."""
    n = idx.shape[0]
    own = np.arange(n)
    bad = np.flatnonzero(idx[:, 0] != own)
    for i in bad:
        row, d = idx[i], dist[i]
        hit = np.flatnonzero(row == i)
        if hit.size:  # swap it to the front
            j = hit[0]
            row[[0, j]], d[[0, j]] = row[[j, 0]], d[[j, 0]]
        else:  # missing (approximate search): prepend, drop the farthest
            row[1:], d[1:] = row[:-1].copy(), d[:-1].copy()
        row[0], d[0] = i, 0.0
    return idx, dist


def knn_distance_matrix(idx: np.ndarray, dist: np.ndarray) -> sparse.csr_matrix:
    """``csr_matrix`` with exactly ``k`` stored entries per row (explicit zero for the cell itself)."""
    n, k = idx.shape
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    return sparse.csr_matrix((dist.ravel().astype(np.float32), idx.ravel(), indptr), shape=(n, n))


class KnnTransformer:
    """A scikit-learn-style kNN transformer for ``sc.pp.neighbors(transformer=...)``.

    ``n_neighbors`` counts the cell itself, as scanpy's ``n_neighbors`` does.
    """

    def __init__(self, n_neighbors: int = 15, *, random_state: int = 0, n_jobs: int | None = None):
        self.n_neighbors = int(n_neighbors)
        self.random_state = int(random_state)
        self.n_jobs = n_jobs

    def get_params(self, deep: bool = True) -> dict:
        return {"n_neighbors": self.n_neighbors, "random_state": self.random_state, "n_jobs": self.n_jobs}

    def fit(self, X, y=None):
        self._X = X
        return self

    def transform(self, X):
        if X is not getattr(self, "_X", None):
            raise ValueError("KnnTransformer only transforms the data it was fitted on (the kNN graph of X).")
        return self.fit_transform(X)

    def fit_transform(self, X, y=None) -> sparse.csr_matrix:
        X = X.toarray() if sparse.issparse(X) else np.asarray(X)
        idx, dist = knn_lists(X, self.n_neighbors, random_state=self.random_state, n_jobs=self.n_jobs)
        return knn_distance_matrix(idx, dist)


def neighbors(adata, *, use_rep: str, n_neighbors: int, random_state: int = 0, key_added: str | None = None) -> None:
    """``sc.pp.neighbors`` on ``adata.obsm[use_rep]`` through :class:`KnnTransformer` above 4,096 cells.

    At or below :data:`SCANPY_DEFAULT_MAX_CELLS` cells scanpy's own default (exact) runs unchanged.
    """
    import scanpy as sc

    from ._settings import settings

    k = int(min(n_neighbors, adata.n_obs - 1))
    if adata.n_obs <= SCANPY_DEFAULT_MAX_CELLS:
        sc.pp.neighbors(adata, use_rep=use_rep, n_neighbors=k, random_state=random_state, key_added=key_added)
        return
    tr = KnnTransformer(k, random_state=random_state, n_jobs=settings.n_jobs)
    sc.pp.neighbors(adata, use_rep=use_rep, transformer=tr, random_state=random_state, key_added=key_added)
