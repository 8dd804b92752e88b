"""Neighbours, Leiden clusters and UMAP on an (integrated) representation."""

from __future__ import annotations

from anndata import AnnData

from .._docs import doc_adata, doc_params, doc_random_state
from .._neighbors import neighbors
from .._settings import logger, settings
from .._utils import check_adata, check_int, check_not_view, check_number, check_random_state, resolve_random_state


@doc_params(adata=doc_adata, random_state=doc_random_state)
def embed(
    adata: AnnData,
    *,
    use_rep: str = "X_scVI",
    resolution: float = 1.0,
    n_neighbors: int = 15,
    random_state: int | None = 0,
) -> None:
    """Neighbour graph, Leiden clustering and UMAP of ``adata.obsm[use_rep]`` (scanpy, in place).

    Runs ``sc.pp.neighbors(use_rep=use_rep)`` (above 4,096 cells on immunomood's own kNN lists: exact
    up to 16,384 cells, NN-descent above; see ``immunomood._neighbors``), ``sc.tl.leiden(flavor="igraph", n_iterations=2,
    directed=False)`` (the future scanpy default, fast and deterministic for a given seed) and
    ``sc.tl.umap``, all seeded with ``random_state``.

    Parameters
    ----------
    {adata}
    use_rep
        ``obsm`` key of the representation (``"X_scVI"`` after :func:`immunomood.tl.integrate`;
        ``"X_pca"`` for the unintegrated view).
    resolution
        Leiden resolution (higher: more clusters).
    n_neighbors
        Neighbours of the kNN graph.
    {random_state}

    Returns
    -------
    ``None``; writes the usual scanpy keys:

    - ``adata.obsp["distances"]``, ``adata.obsp["connectivities"]`` and ``adata.uns["neighbors"]``
      (with ``params["use_rep"]``);
    - ``adata.obs["leiden"]`` (categorical) and ``adata.uns["leiden"]``;
    - ``adata.obsm["X_umap"]`` and ``adata.uns["umap"]``.
    """
    import scanpy as sc

    check_adata(adata, min_obs=3)
    check_not_view(adata, func="embed")
    if use_rep not in adata.obsm:
        raise KeyError(
            f"use_rep={use_rep!r} not found in adata.obsm. Available: {list(adata.obsm.keys())}. "
            "Run im.tl.integrate first (writes 'X_scVI') or sc.pp.pca (writes 'X_pca')."
        )
    resolution = check_number(
        "resolution",
        resolution,
        min=0,
        min_inclusive=False,
        fix="Leiden's resolution: about 0.2-2, higher gives more clusters.",
    )
    n_neighbors = check_int("n_neighbors", n_neighbors, min=2, fix="Typical values are 10-30.")
    check_random_state(random_state)
    seed = resolve_random_state(random_state)
    with settings.threads():
        neighbors(adata, use_rep=use_rep, n_neighbors=n_neighbors, random_state=seed)
        sc.tl.leiden(adata, resolution=resolution, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
        sc.tl.umap(adata, random_state=seed)
    logger.info("embed: %d Leiden clusters on %s", adata.obs["leiden"].nunique(), use_rep)
