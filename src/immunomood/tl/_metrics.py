"""Integration metrics (batch mixing and biological conservation), scaled as scib-metrics scales them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._docs import doc_adata, doc_params
from .._settings import logger
from .._utils import check_adata, check_not_view, check_obs_key, check_str

#: neighbours used by scib-metrics' Benchmarker: 90 for LISI, 15 for graph connectivity
_K_LISI = 90
_K_GRAPH = 15
_METRIC_COLUMNS = ["ilisi", "silhouette_batch", "clisi", "silhouette_label", "graph_connectivity"]
#: index of the unintegrated row of the metrics table
UNINTEGRATED = "X_pca (unintegrated)"


def umap_unintegrated_key(key_added: str) -> str:
    """``obsm`` key of the UMAP of the unintegrated representation stored by :func:`integration_metrics`."""
    return f"X_{key_added}_umap_unintegrated"


# ----------------------------------------------------------------------------------------------
# building blocks (numpy re-implementations of scib-metrics; used when scib-metrics is absent)
# ----------------------------------------------------------------------------------------------
def _knn(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours of every row, the cell itself included (distance 0), as
    scib-metrics' ``NeighborsResults`` from pynndescent/faiss."""
    from sklearn.neighbors import NearestNeighbors

    k = int(min(k, X.shape[0]))
    nn = NearestNeighbors(n_neighbors=k, algorithm="auto").fit(X)
    dist, idx = nn.kneighbors(X, return_distance=True)
    return dist.astype(np.float64), idx


def _simpson_index(
    dist: np.ndarray, idx: np.ndarray, codes: np.ndarray, n_labels: int, perplexity: float, tol: float = 1e-5
) -> np.ndarray:
    """Simpson index per cell with perplexity-calibrated Gaussian kernel weights (vectorised version of
    ``scib_metrics.utils.compute_simpson_index``: same binary search on beta, 50 tries, same tolerance)."""
    n = dist.shape[0]
    logU = np.log(perplexity)
    beta = np.ones(n)
    betamin = np.full(n, -np.inf)
    betamax = np.full(n, np.inf)

    def hbeta(b):
        P = np.exp(-dist * b[:, None])
        sumP = P.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            H = np.where(sumP == 0, 0.0, np.log(sumP) + b * (dist * P).sum(1) / sumP)
            P = np.where(sumP[:, None] == 0, 0.0, P / sumP[:, None])
        return H, P

    H, P = hbeta(beta)
    Hdiff = H - logU
    active = np.abs(Hdiff) > tol
    for _ in range(50):
        if not active.any():
            break
        up = Hdiff > 0
        new_betamin = np.where(up, beta, betamin)
        new_betamax = np.where(up, betamax, beta)
        new_beta = np.where(
            up,
            np.where(np.isinf(betamax), beta * 2, (beta + betamax) / 2),
            np.where(np.isinf(betamin), beta / 2, (beta + betamin) / 2),
        )
        beta = np.where(active, new_beta, beta)
        betamin = np.where(active, new_betamin, betamin)
        betamax = np.where(active, new_betamax, betamax)
        H_new, P_new = hbeta(beta)
        H = np.where(active, H_new, H)
        P = np.where(active[:, None], P_new, P)
        Hdiff = H - logU
        active = active & (np.abs(Hdiff) > tol)
    onehot_sum = np.zeros((n, n_labels))
    np.add.at(onehot_sum, (np.repeat(np.arange(n), idx.shape[1]), codes[idx].ravel()), P.ravel())
    simpson = (onehot_sum**2).sum(1)
    return np.where(H == 0, -1.0, simpson)


def _lisi(dist: np.ndarray, idx: np.ndarray, labels: np.ndarray) -> np.ndarray:
    codes = np.asarray(pd.Categorical(labels).codes)
    perplexity = np.floor(idx.shape[1] / 3)
    return 1.0 / _simpson_index(dist, idx, codes, int(codes.max()) + 1, perplexity)


def _ilisi(dist, idx, batches) -> float:
    """Median iLISI scaled to [0, 1] as scib-metrics: ``(iLISI - 1) / (n_batches - 1)``."""
    n_batches = len(np.unique(batches))
    if n_batches < 2:
        return float("nan")
    return float((np.nanmedian(_lisi(dist, idx, batches)) - 1) / (n_batches - 1))


def _clisi(dist, idx, labels) -> float:
    """Median cLISI scaled to [0, 1] as scib-metrics: ``(n_labels - cLISI) / (n_labels - 1)``."""
    n_labels = len(np.unique(labels))
    if n_labels < 2:
        return float("nan")
    return float((n_labels - np.nanmedian(_lisi(dist, idx, labels))) / (n_labels - 1))


def _silhouette_label(X, labels) -> float:
    """Label ASW rescaled as scib-metrics: ``(mean silhouette + 1) / 2``."""
    from sklearn.metrics import silhouette_samples

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float((np.mean(silhouette_samples(X, labels, metric="euclidean")) + 1) / 2)


def _silhouette_batch(X, labels, batches) -> float:
    """Batch ASW as scib-metrics: per label, silhouette of batches, ``1 - |s|`` per cell, mean per label,
    then mean over labels (labels with one batch, or one cell per batch, are skipped)."""
    from sklearn.metrics import silhouette_samples

    per_label = []
    for lab in np.unique(labels):
        m = labels == lab
        b = batches[m]
        nb = len(np.unique(b))
        if nb == 1 or nb == m.sum():
            continue
        s = silhouette_samples(X[m], b, metric="euclidean")
        per_label.append(np.mean(1 - np.abs(s)))
    return float(np.mean(per_label)) if per_label else float("nan")


def _graph_connectivity(idx: np.ndarray, labels: np.ndarray) -> float:
    """Mean over labels of the largest strongly connected component's share of the label's cells, in the
    directed kNN graph restricted to the label (scib-metrics ``graph_connectivity``)."""
    from scipy.sparse.csgraph import connected_components

    n, k = idx.shape
    graph = sparse.csr_matrix((np.ones(n * k), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    res = []
    for lab in np.unique(labels):
        m = np.asarray(labels == lab)
        sub = graph[m][:, m]
        _, comps = connected_components(sub, connection="strong")
        counts = np.bincount(comps)
        res.append(counts.max() / counts.sum())
    return float(np.mean(res))


def _scib_metrics_available() -> bool:
    try:
        import scib_metrics  # noqa: F401
    except Exception:  # noqa: BLE001 - jax missing, or broken install
        return False
    return True


def _metrics_for(X: np.ndarray, batches: np.ndarray, labels: np.ndarray, *, use_scib: bool) -> dict[str, float]:
    X = np.asarray(X, dtype=np.float64)
    if use_scib:
        import scib_metrics
        from scib_metrics.nearest_neighbors import NeighborsResults

        d90, i90 = _knn(X, _K_LISI)
        d15, i15 = _knn(X, _K_GRAPH)
        nn90 = NeighborsResults(indices=i90, distances=d90)
        nn15 = NeighborsResults(indices=i15, distances=d15)
        return {
            "ilisi": float(scib_metrics.ilisi_knn(nn90, batches)),
            "silhouette_batch": float(scib_metrics.silhouette_batch(X, labels, batches)),
            "clisi": float(scib_metrics.clisi_knn(nn90, labels)),
            "silhouette_label": float(scib_metrics.silhouette_label(X, labels)),
            "graph_connectivity": float(scib_metrics.graph_connectivity(nn15, labels)),
        }
    d, i = _knn(X, _K_LISI)
    k15 = min(_K_GRAPH, i.shape[1])
    return {
        "ilisi": _ilisi(d, i, batches),
        "silhouette_batch": _silhouette_batch(X, labels, batches),
        "clisi": _clisi(d, i, labels),
        "silhouette_label": _silhouette_label(X, labels),
        "graph_connectivity": _graph_connectivity(i[:, :k15], labels),
    }


def _unintegrated_pca(adata: AnnData, *, n_comps: int = 50, layer: str | None = None) -> np.ndarray:
    """``obsm["X_pca"]`` when present, else PCA of log-normalised counts (HVGs when flagged) on a private copy."""
    if "X_pca" in adata.obsm:
        return np.asarray(adata.obsm["X_pca"])
    import scanpy as sc

    if layer is None:
        layer = "counts" if "counts" in adata.layers else None
    X = adata.X if layer is None else adata.layers[layer]
    tmp = AnnData(X=X.copy(), obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=adata.var_names))
    if "highly_variable" in adata.var.columns and adata.var["highly_variable"].sum() >= 2:
        tmp = tmp[:, adata.var["highly_variable"].to_numpy()].copy()
    tmp.X = tmp.X.astype(np.float32)
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    n = int(min(n_comps, tmp.n_obs - 1, tmp.n_vars - 1))
    sc.pp.pca(tmp, n_comps=n, random_state=0)
    logger.info("integration_metrics: adata.obsm['X_pca'] absent; computed a %d-component PCA on a copy", n)
    return np.asarray(tmp.obsm["X_pca"])


def _umap_of(obs_names: pd.Index, rep: np.ndarray, *, n_neighbors: int, random_state: int) -> np.ndarray:
    """UMAP (scanpy, seeded) of a representation, computed on a throw-away AnnData, on the same kNN graph as
    :func:`immunomood.tl.embed` (the shared ``_neighbors`` helper, safe above 4,096 cells)."""
    import scanpy as sc

    from .._neighbors import neighbors

    tmp = AnnData(obs=pd.DataFrame(index=obs_names.copy()))
    tmp.obsm["rep"] = np.asarray(rep, dtype=np.float32)
    neighbors(tmp, use_rep="rep", n_neighbors=int(n_neighbors), random_state=random_state)
    sc.tl.umap(tmp, random_state=random_state)
    return np.asarray(tmp.obsm["X_umap"], dtype=np.float32)


@doc_params(adata=doc_adata)
def integration_metrics(
    adata: AnnData,
    *,
    batch_key: str,
    label_key: str,
    embedding: str | Sequence[str] = "X_scVI",
    unintegrated: bool = True,
    max_cells: int | None = 50_000,
    random_state: int = 0,
    key_added: str = "integration_metrics",
    umap: bool = True,
    n_neighbors: int = 15,
) -> pd.DataFrame:
    """Batch mixing and biological conservation of an integrated embedding, next to the unintegrated PCA.

    The metrics and their scaling follow scib-metrics (Luecken et al. 2022, *Nat. Methods*), so every
    value lies in [0, 1] and higher is better. scib-metrics itself is used when it is installed (it
    needs ``jax``); otherwise a numpy/scikit-learn re-implementation of the same definitions is used,
    tested to give the same values on hand-computable cases.

    Batch mixing
        ``ilisi``: median over cells of the local inverse Simpson index of batches in a
        perplexity-30 Gaussian kernel over the 90 nearest neighbours, scaled as
        ``(iLISI - 1) / (n_batches - 1)`` (0: every neighbourhood has a single batch; 1: batches
        perfectly mixed at equal sizes).
        ``silhouette_batch``: within each label, the silhouette of batch memberships ``s``, taken as
        ``1 - |s|`` per cell, averaged per label and then over labels (scib "batch ASW").
    Biological conservation
        ``clisi``: median cLISI of labels, scaled as ``(n_labels - cLISI) / (n_labels - 1)``
        (1: neighbourhoods are pure in label).
        ``silhouette_label``: label ASW rescaled as ``(ASW + 1) / 2``.
        ``graph_connectivity``: per label, the share of its cells in the largest strongly connected
        component of the directed 15-nearest-neighbour graph restricted to that label; mean over labels.

    ``batch_mean`` and ``bio_mean`` are the plain means of the two groups above (a subset of the full
    scib benchmark, so not comparable to scib's published aggregate scores).

    Parameters
    ----------
    {adata}
    batch_key
        Column of ``adata.obs`` with the batch of each cell.
    label_key
        Column of ``adata.obs`` with the (ground-truth or annotated) cell type of each cell.
    embedding
        Key (or keys) of ``adata.obsm`` holding the integrated embedding(s).
    unintegrated
        Also score the unintegrated PCA: ``adata.obsm["X_pca"]`` when present, else a PCA of the
        log-normalised counts (``layers["counts"]`` when present, else ``X``; HVGs when flagged) computed
        on a private copy. ``adata`` is never modified.
    max_cells
        Above this many cells, score a random subset of this size (silhouettes are quadratic in the
        number of cells). ``None``: always all cells.
    random_state
        Seed of that subsample and of the UMAP of the unintegrated representation.
    key_added
        Where the results are stored (see Returns), read by :func:`immunomood.pl.integration`.
    umap
        With ``unintegrated=True``, also compute (scanpy, seeded) and store the UMAP of the unintegrated
        representation, the "before" panels of :func:`immunomood.pl.integration`. ``False`` skips it (the metrics
        alone are cheaper).
    n_neighbors
        Neighbours of the kNN graph of that UMAP (as :func:`immunomood.tl.embed`).

    Returns
    -------
    DataFrame with one row per embedding (index: ``"X_pca (unintegrated)"`` first, then the ``obsm`` keys)
    and columns ``ilisi``, ``silhouette_batch``, ``clisi``, ``silhouette_label``, ``graph_connectivity``,
    ``batch_mean``, ``bio_mean``, ``n_cells``, ``implementation`` (``"scib-metrics"`` or ``"immunomood"``).
    Also written into ``adata`` (what :func:`immunomood.pl.integration` reads; the plot computes nothing):

    - ``uns[key_added]``: ``{{"metrics": <the DataFrame>, "params": {{...}}}}``, the params holding ``batch_key``,
      ``label_key``, ``embedding`` (list), ``unintegrated``, ``max_cells``, ``random_state``, ``n_neighbors`` and
      ``umap_unintegrated`` (the ``obsm`` key below, or ``""``);
    - ``obsm[f"X_{{key_added}}_umap_unintegrated"]`` (``"X_integration_metrics_umap_unintegrated"`` by default):
      the 2-D UMAP of the unintegrated representation (cells x 2), when ``unintegrated`` and ``umap``.

    The UMAP of the integrated embedding is not computed here: it is ``obsm["X_umap"]`` written by
    :func:`immunomood.tl.embed` with ``use_rep=embedding``.
    """
    check_adata(adata, min_vars=0)
    check_obs_key(adata, batch_key, what="batch column")
    check_obs_key(adata, label_key, what="label column")
    check_not_view(adata, func="integration_metrics")
    check_str("key_added", key_added, fix="Pass a non-empty name, e.g. key_added='integration_metrics'.")
    if not isinstance(umap, bool):
        raise TypeError(f"umap must be True or False, got {umap!r} ({type(umap).__name__}).")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int | np.integer) or n_neighbors < 2:
        raise ValueError(f"n_neighbors must be an integer >= 2, got {n_neighbors!r}.")
    keys = [embedding] if isinstance(embedding, str) else list(embedding)
    for k in keys:
        if k not in adata.obsm:
            raise KeyError(
                f"Embedding {k!r} not found in adata.obsm. Available: {list(adata.obsm.keys())}. "
                "Run im.tl.integrate first, or pass `embedding=` with an existing key."
            )
    if adata.n_obs < 3:
        raise ValueError(f"integration_metrics needs at least 3 cells, got {adata.n_obs}.")
    from .._utils import check_int

    check_int(
        "max_cells",
        max_cells,
        min=int(n_neighbors) + 1,
        allow_none=True,
        fix="Pass None to score every cell, or a subset size larger than the neighbourhoods.",
    )

    reps: dict[str, np.ndarray] = {}
    if unintegrated:
        reps[UNINTEGRATED] = _unintegrated_pca(adata)
    for k in keys:
        X = adata.obsm[k]
        X = X.to_numpy() if isinstance(X, pd.DataFrame) else np.asarray(X)
        if not np.all(np.isfinite(X)):
            raise ValueError(f"adata.obsm[{k!r}] contains NaN or infinite values; cannot score it.")
        reps[k] = X

    batches = np.asarray(adata.obs[batch_key].astype(str))
    labels = np.asarray(adata.obs[label_key].astype(str))
    sel = np.arange(adata.n_obs)
    if max_cells is not None and adata.n_obs > max_cells:
        sel = np.sort(np.random.default_rng(random_state).choice(adata.n_obs, size=max_cells, replace=False))
        logger.info("integration_metrics: scoring a random subset of %d of %d cells", max_cells, adata.n_obs)

    use_scib = _scib_metrics_available()
    rows = {}
    for name, X in reps.items():
        m = _metrics_for(X[sel], batches[sel], labels[sel], use_scib=use_scib)
        m["batch_mean"] = float(np.nanmean([m["ilisi"], m["silhouette_batch"]]))
        m["bio_mean"] = float(np.nanmean([m["clisi"], m["silhouette_label"], m["graph_connectivity"]]))
        m["n_cells"] = int(len(sel))
        m["implementation"] = "scib-metrics" if use_scib else "immunomood"
        rows[name] = m
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "embedding"

    umap_key = ""
    if unintegrated and umap:
        umap_key = umap_unintegrated_key(key_added)
        adata.obsm[umap_key] = _umap_of(
            adata.obs_names, reps[UNINTEGRATED], n_neighbors=int(n_neighbors), random_state=int(random_state)
        )
    adata.uns[key_added] = {
        "metrics": df.copy(),
        "params": {
            "batch_key": batch_key,
            "label_key": label_key,
            "embedding": list(keys),
            "unintegrated": bool(unintegrated),
            "max_cells": -1 if max_cells is None else int(max_cells),
            "random_state": int(random_state),
            "n_neighbors": int(n_neighbors),
            "umap_unintegrated": umap_key,
        },
    }
    return df
