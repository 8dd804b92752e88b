"""Neighbourhood graph and clusters: UMAP connectivities, Leiden, PCA, smoothing over the graph and clusters."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..._neighbors import knn_lists
from . import _constants as const
from ._scoring import _apply_gates, _set_scores


def _umap_connectivities(idx: np.ndarray, dist: np.ndarray) -> sparse.csr_matrix:
    """UMAP fuzzy-simplicial-set connectivities (as ``sc.pp.neighbors(method="umap")``) in vectorised numpy.

    Same kernel as ``umap.umap_.fuzzy_simplicial_set`` with ``local_connectivity=1``: per cell, ``rho`` is the
    distance to its nearest other cell and ``sigma`` is found by bisection so that the memberships sum to
    ``log2(k)``; then the fuzzy union ``P + P.T - P * P.T``. Computed here because umap's numba kernels are
    compiled in every new process (~40 s on 2 cores, the largest single cost of ``annotate`` on 16,000 cells).
    """
    n, k = idx.shape
    d = dist.astype(np.float64)
    d[idx == np.arange(n)[:, None]] = 0.0  # brute-force search can leave ~1e-7 on the cell itself
    nz = np.where(d > 0, d, np.inf)
    rho = np.min(nz, axis=1)
    rho[~np.isfinite(rho)] = 0.0
    target = np.log2(k)
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    mid = np.ones(n)
    dd = np.maximum(d[:, 1:] - rho[:, None], 0.0)
    done = np.zeros(n, dtype=bool)
    for _ in range(64):
        psum = np.exp(-dd / mid[:, None]).sum(axis=1)
        done |= np.abs(psum - target) < 1e-5
        up = (psum > target) & ~done
        down = (psum <= target) & ~done
        hi = np.where(up, mid, hi)
        lo = np.where(down, mid, lo)
        mid = np.where(up | (down & np.isfinite(hi)), (lo + hi) / 2.0, np.where(down, mid * 2.0, mid))
        if done.all():
            break
    sigma = mid
    floor = 1e-3 * np.where(rho > 0, d.mean(axis=1), d.mean())
    sigma = np.maximum(sigma, floor)
    val = np.exp(-np.maximum(d - rho[:, None], 0.0) / sigma[:, None])
    val[idx == np.arange(n)[:, None]] = 0.0
    P = sparse.csr_matrix((val.ravel().astype(np.float32), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    P.eliminate_zeros()
    Pt = P.T.tocsr()
    C = (P + Pt - P.multiply(Pt)).tocsr()
    C.eliminate_zeros()
    return C


def _knn_graph(rep: np.ndarray, n_neighbors: int, random_state: int) -> sparse.csr_matrix:
    """Connectivities of the shared kNN lists (:func:`immunomood._neighbors.knn_lists`, ``settings.n_jobs``)."""
    from ..._settings import settings

    k = int(min(n_neighbors, rep.shape[0] - 1))
    idx, dist = knn_lists(rep, k, random_state=random_state, n_jobs=settings.n_jobs)
    return _umap_connectivities(idx, dist)


def _leiden(C: sparse.csr_matrix, resolution: float, random_state: int) -> np.ndarray:
    """Leiden (igraph, modularity, 2 iterations, weighted, undirected) as ``sc.tl.leiden(flavor="igraph")``."""
    import scanpy as sc

    priv = AnnData(X=None, obs=pd.DataFrame(index=np.arange(C.shape[0]).astype(str)))
    sc.tl.leiden(
        priv,
        adjacency=C,
        resolution=resolution,
        random_state=random_state,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        key_added="clusters",
    )
    return priv.obs["clusters"].astype(str).to_numpy()


def _row_normalised(C: sparse.csr_matrix) -> sparse.csr_matrix:
    W = C + sparse.eye(C.shape[0], format="csr")  # the cell itself is part of its neighbourhood
    return (sparse.diags(1.0 / np.asarray(W.sum(axis=1)).ravel()) @ W).tocsr()


def _pca_fit(Xs, random_state: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the highly variable genes of ``Xs`` (``sc.pp.pca``, arpack, implicit centring).

    Returns ``(embedding of Xs, HVG column indices, components (HVGs x comps), HVG means of Xs)``: the model
    that :func:`_pca_project` applies to other cells (same components, same centring).
    """
    import scanpy as sc

    tmp = AnnData(X=Xs if sparse.issparse(Xs) else np.asarray(Xs))
    hvg = np.arange(tmp.n_vars)
    if tmp.n_vars > 3000:
        sc.pp.highly_variable_genes(tmp, n_top_genes=2000, flavor="seurat")
        hvg = np.flatnonzero(tmp.var["highly_variable"].to_numpy())
        tmp = tmp[:, hvg].copy()
    n_comps = int(max(2, min(30, tmp.n_obs - 2, tmp.n_vars - 2)))
    sc.pp.pca(tmp, n_comps=n_comps, random_state=random_state, svd_solver="arpack")
    fit = np.asarray(tmp.obsm["X_pca"], dtype=np.float32)
    pcs = np.asarray(tmp.varm["PCs"], dtype=np.float64)
    mu = np.asarray(tmp.X.mean(axis=0), dtype=np.float64).ravel()
    return fit, hvg, pcs, mu


def _pca_project(Xh, pcs: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Cells (log expression of the HVG columns, ``Xh``) on the components ``pcs`` centred at ``mu``."""
    return (np.asarray(Xh @ pcs) - mu @ pcs).astype(np.float32)


def _pca_rep(Xlog, random_state: int, rows: np.ndarray | None = None):
    """PCA of the highly variable genes (:func:`_pca_fit`) fitted on ``rows``.

    Without ``rows``: the embedding of all cells. With ``rows``: ``(embedding of rows, projection of the other
    cells)``, the other cells projected on the same components with the same centring.
    """
    fit, hvg, pcs, mu = _pca_fit(Xlog if rows is None else Xlog[rows], random_state)
    if rows is None:
        return fit
    rest = np.setdiff1d(np.arange(Xlog.shape[0]), rows)
    return fit, _pca_project(Xlog[rest][:, hvg], pcs, mu)


def _graph_and_clusters(
    adata: AnnData,
    Xlog,
    *,
    use_rep: str | None,
    groupby: str | None,
    random_state: int,
    rep: np.ndarray | None = None,
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Row-normalised kNN graph (self included) and Leiden clusters (or the ``groupby`` column)."""
    if rep is None:
        rep = np.asarray(adata.obsm[use_rep], np.float32) if use_rep is not None else _pca_rep(Xlog, random_state)
    C = _knn_graph(rep, const._N_NEIGHBORS, random_state)
    W = _row_normalised(C)
    if groupby is not None:
        clusters = adata.obs[groupby].astype(str).to_numpy()
    else:
        clusters = _leiden(C, const._RESOLUTION, random_state)
    return W, clusters


def _cluster_mean(S: np.ndarray, codes: np.ndarray, n_clusters: int) -> np.ndarray:
    M = sparse.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_clusters, len(codes)))
    sizes = np.asarray(M.sum(axis=1)).ravel()
    means = (M @ np.nan_to_num(S)) / sizes[:, None]
    return means[codes]


def _smooth(S: np.ndarray, W: sparse.csr_matrix, codes: np.ndarray, n_clusters: int) -> np.ndarray:
    nan_cols = np.all(np.isnan(S), axis=0)
    S0 = np.nan_to_num(S)
    out = const._W_CELL * S0 + const._W_KNN * (W @ S0) + const._W_CLUSTER * _cluster_mean(S0, codes, n_clusters)
    out[:, nan_cols] = -np.inf
    return out


def _smooth_gene(Z: np.ndarray, W: sparse.csr_matrix, codes: np.ndarray, n_clusters: int) -> np.ndarray:
    """Gene values for gates: mostly context (neighbourhood and cluster), a little the cell itself."""
    return 0.4 * Z + 0.3 * (W @ Z) + 0.3 * _cluster_mean(Z, codes, n_clusters)


def _smooth_scores(Z, col, sets, W, codes, n_clusters, min_markers=1) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Smoothed set scores with their gates applied."""
    S, used = _set_scores(Z, col, sets, min_markers=min_markers)
    out = _smooth(S, W, codes, n_clusters)
    if any(s.get(k) is not None for s in sets for k in ("require", "all_of", "exclude")):
        out = _apply_gates(out, _smooth_gene(Z, W, codes, n_clusters), col, sets)
    return out, used


def _neighbour_agreement(labels: np.ndarray, W: sparse.csr_matrix) -> np.ndarray:
    """Weighted share of each cell's kNN neighbourhood that has the cell's own label.

    ``W`` is the row-normalised graph, the cell itself included.
    """
    cat = pd.Categorical(labels)
    codes = cat.codes.astype(np.int64)
    onehot = sparse.csr_matrix(
        (np.ones(len(codes), dtype=np.float32), (np.arange(len(codes)), codes)), shape=(len(codes), len(cat.categories))
    )
    share = W @ onehot
    return np.asarray(share[np.arange(len(codes)), codes]).ravel()


def _agreement(labels: np.ndarray, codes: np.ndarray) -> np.ndarray:
    df = pd.DataFrame({"c": codes, "l": labels})
    frac = df.groupby(["c", "l"]).size() / df.groupby("c").size()
    return frac.reindex(pd.MultiIndex.from_arrays([codes, labels])).to_numpy()


def _subcluster(
    adata: AnnData,
    Xlog,
    rows: np.ndarray,
    *,
    use_rep: str | None,
    groupby: str | None,
    random_state: int,
    resolutions: tuple[float, ...] = (const._SUB_RESOLUTION,),
    scale: bool = True,
    Xh: sparse.csr_matrix | None = None,
) -> tuple[sparse.csr_matrix, list[np.ndarray], sparse.csr_matrix]:
    """KNN graph (row-normalised, self included) and Leiden sub-clusters of the cells ``rows`` on their own.

    The cells' own highly variable genes (scaled to unit variance unless ``scale=False``; sparse, implicitly centred
    PCA) or ``use_rep`` restricted to them; with ``groupby`` the user's clusters restricted to them. Unit variance
    weighs every variable gene alike; without it, highly expressed genes weigh more (in combat's T cells only the
    unscaled graph separates CD8A+ CD8B+ CD4- naive T cells from CD4 naive T cells). ``Xh``: the highly variable
    genes' expression of these cells from an earlier call (skips their selection). Returns the graph, the
    sub-clusters per resolution and ``Xh``.
    """
    import scanpy as sc

    n = len(rows)
    priv = AnnData(X=None, obs=pd.DataFrame(index=np.arange(n).astype(str)))
    if Xh is None:
        Xs = Xlog[rows]
        Xs = (
            sparse.csr_matrix(Xs, dtype=np.float32)
            if sparse.issparse(Xs)
            else sparse.csr_matrix(np.asarray(Xs, np.float32))
        )
        tmp = AnnData(X=Xs, obs=priv.obs.copy())
        if tmp.n_vars > 3000:
            sc.pp.highly_variable_genes(tmp, n_top_genes=2000, flavor="seurat")
            tmp = tmp[:, tmp.var["highly_variable"].to_numpy()].copy()
        Xh = tmp.X.tocsr()  # log expression of the cells' highly variable genes
        del tmp, Xs
    if use_rep is not None:
        priv.obsm["X_rep"] = np.asarray(adata.obsm[use_rep], dtype=np.float32)[rows]
    else:
        sd = _col_sd(Xh)
        keep = sd > 0
        Xu = (Xh[:, keep] @ sparse.diags((1.0 / sd[keep]).astype(np.float32))).tocsr() if scale else Xh[:, keep]
        tmp = AnnData(X=Xu, obs=priv.obs.copy())
        n_comps = int(max(2, min(const._SUB_N_PCS, tmp.n_obs - 2, tmp.n_vars - 2)))
        sc.pp.pca(tmp, n_comps=n_comps, random_state=random_state, svd_solver="arpack")
        priv.obsm["X_rep"] = tmp.obsm["X_pca"]
        del tmp, Xu
    C = _knn_graph(np.asarray(priv.obsm["X_rep"], np.float32), const._N_NEIGHBORS_SUB, random_state)
    W = _row_normalised(C)
    out = []
    for r in resolutions:
        if groupby is not None:
            sub = adata.obs[groupby].astype(str).to_numpy()[rows]
        else:
            sub = _leiden(C, r, random_state)
        out.append(pd.Categorical(sub).codes.astype(int))
    return W, out, Xh


def _col_sd(X: sparse.csr_matrix) -> np.ndarray:
    mean = np.asarray(X.mean(axis=0)).ravel()
    return np.sqrt(np.maximum(np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2, 0))
