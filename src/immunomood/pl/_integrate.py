"""UMAP before and after integration, coloured by batch and by label, with the integration metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import doc_adata, doc_params
from .._settings import logger
from .._utils import check_adata, check_obs_key

_UNINTEGRATED = "X_pca (unintegrated)"


def _umap_of(adata: AnnData, rep: np.ndarray, random_state: int) -> np.ndarray:
    """UMAP of a representation, computed on a throw-away AnnData (``adata`` is not touched)."""
    import scanpy as sc

    tmp = AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()))
    tmp.obsm["rep"] = np.asarray(rep, dtype=np.float32)
    sc.pp.neighbors(tmp, use_rep="rep", n_neighbors=int(min(15, adata.n_obs - 1)), random_state=random_state)
    sc.tl.umap(tmp, random_state=random_state)
    return np.asarray(tmp.obsm["X_umap"])


def _palette(n: int) -> list:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _scatter(ax, xy, values: pd.Series, title: str, legend: bool, size: float) -> None:
    cats = pd.Categorical(values.astype(str))
    cols = _palette(len(cats.categories))
    order = np.random.default_rng(0).permutation(len(xy))  # no batch drawn on top of the others
    codes = cats.codes[order]
    ax.scatter(xy[order, 0], xy[order, 1], c=[cols[c] for c in codes], s=size, linewidths=0, rasterized=True)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if legend:
        import matplotlib.lines as mlines

        handles = [mlines.Line2D([], [], marker="o", ls="", color=cols[i], label=str(c))
                   for i, c in enumerate(cats.categories)]
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False,
                  markerscale=0.8)


@doc_params(adata=doc_adata)
def integration(
    adata: AnnData,
    *,
    batch_key: str,
    label_key: str,
    embedding: str = "X_scVI",
    metrics: pd.DataFrame | None = None,
    point_size: float | None = None,
    random_state: int = 0,
    ax: Sequence | None = None,
):
    """UMAPs before (unintegrated PCA) and after integration, coloured by batch and by label, with metrics.

    Panels: top row unintegrated PCA, bottom row ``embedding``; left column coloured by ``batch_key``, right
    column by ``label_key``. Panel titles carry the batch-mixing (iLISI, batch ASW) and conservation
    (cLISI, label ASW, graph connectivity) scores of :func:`immunomood.tl.integration_metrics`.

    The "after" UMAP is ``adata.obsm["X_umap"]`` when :func:`immunomood.tl.embed` computed it from
    ``embedding``; otherwise, and for the "before" UMAP, a UMAP is computed on a throw-away copy (``adata`` is
    never modified).

    Parameters
    ----------
    {adata}
    batch_key
        ``obs`` column with the batch.
    label_key
        ``obs`` column with the cell type.
    embedding
        ``obsm`` key of the integrated embedding.
    metrics
        Output of :func:`immunomood.tl.integration_metrics` (computed here when ``None``).
    point_size
        Marker size (default from the number of cells).
    random_state
        Seed of the UMAPs computed here.
    ax
        Four Axes to draw into (before/batch, before/label, after/batch, after/label); a new figure when
        ``None``.

    Returns
    -------
    The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    from ..tl._metrics import _unintegrated_pca, integration_metrics

    check_adata(adata, min_obs=3, min_vars=0)
    check_obs_key(adata, batch_key, what="batch column")
    check_obs_key(adata, label_key, what="label column")
    if embedding not in adata.obsm:
        raise KeyError(
            f"Embedding {embedding!r} not found in adata.obsm. Available: {list(adata.obsm.keys())}. "
            "Run im.tl.integrate first."
        )
    if metrics is None:
        metrics = integration_metrics(adata, batch_key=batch_key, label_key=label_key, embedding=embedding)
    for row in (_UNINTEGRATED, embedding):
        if row not in metrics.index:
            raise KeyError(f"`metrics` has no row {row!r}; rows: {list(metrics.index)}.")

    neigh = adata.uns.get("neighbors", {})
    use_rep = neigh.get("params", {}).get("use_rep") if isinstance(neigh, dict) else None
    if "X_umap" in adata.obsm and use_rep == embedding:
        after = np.asarray(adata.obsm["X_umap"])
    else:
        logger.info("pl.integration: computing a UMAP of %s on a copy", embedding)
        after = _umap_of(adata, adata.obsm[embedding], random_state)
    before = _umap_of(adata, _unintegrated_pca(adata), random_state)

    if ax is None:
        fig, axes = plt.subplots(2, 2, figsize=(9, 7.5), constrained_layout=True)
        axes = list(np.ravel(axes))
    else:
        axes = list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) != 4:
            raise ValueError(f"`ax` must hold 4 Axes (before/batch, before/label, after/batch, after/label); got {len(axes)}.")
        fig = axes[0].figure
    size = point_size if point_size is not None else float(np.clip(3e4 / adata.n_obs, 1, 30))

    def titles(row: str, name: str) -> tuple[str, str]:
        m = metrics.loc[row]
        return (
            f"{name}: {batch_key}\niLISI {m['ilisi']:.2f} | batch ASW {m['silhouette_batch']:.2f}",
            f"{name}: {label_key}\ncLISI {m['clisi']:.2f} | label ASW {m['silhouette_label']:.2f} | "
            f"graph conn. {m['graph_connectivity']:.2f}",
        )

    tb, tl_ = titles(_UNINTEGRATED, "unintegrated PCA")
    ta, tl2 = titles(embedding, embedding)
    _scatter(axes[0], before, adata.obs[batch_key], tb, False, size)
    _scatter(axes[1], before, adata.obs[label_key], tl_, True, size)
    _scatter(axes[2], after, adata.obs[batch_key], ta, True, size)
    _scatter(axes[3], after, adata.obs[label_key], tl2, True, size)
    for a in axes:
        a.set_xlabel("UMAP1", fontsize=8)
        a.set_ylabel("UMAP2", fontsize=8)
    return fig
