"""UMAP before and after integration, coloured by batch and by label, with the integration metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import doc_adata, doc_params
from .._utils import check_adata, check_obs_key
from ._base import fmt, new_axes, palette

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _default_palette(n: int) -> list:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _scatter(ax, xy, values: pd.Series, title: str, legend: bool, size: float, adata=None, key=None) -> None:
    cats = pd.Categorical(values.astype(str))
    by_level = palette(cats.categories, adata=adata, key=key, default=_default_palette(len(cats.categories)))
    cols = [by_level[str(c)] for c in cats.categories]
    order = np.random.default_rng(0).permutation(len(xy))  # no batch drawn on top of the others
    codes = cats.codes[order]
    ax.scatter(xy[order, 0], xy[order, 1], c=[cols[c] for c in codes], s=size, linewidths=0, rasterized=True)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if legend:
        import matplotlib.lines as mlines

        handles = [
            mlines.Line2D([], [], marker="o", ls="", color=cols[i], label=str(c)) for i, c in enumerate(cats.categories)
        ]
        ax.legend(
            handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False, markerscale=0.8
        )


def _stored(adata: AnnData, key: str) -> tuple[pd.DataFrame, dict]:
    st = adata.uns.get(key)
    run = (
        "Run im.tl.integration_metrics(adata, batch_key=..., label_key=..., embedding=...) first: it stores the "
        "metrics and the UMAP of the unintegrated PCA that this plot reads (the plot computes nothing)."
    )
    if not isinstance(st, dict) or "metrics" not in st or "params" not in st:
        raise KeyError(f"No integration metrics found in adata.uns[{key!r}] (got {type(st).__name__}). {run}")
    metrics = st["metrics"]
    if not isinstance(metrics, pd.DataFrame):
        raise TypeError(f"adata.uns[{key!r}]['metrics'] must be a DataFrame, got {type(metrics).__name__}. {run}")
    return metrics, dict(st["params"])


@doc_params(adata=doc_adata)
def integration(
    adata: AnnData,
    *,
    key: str = "integration_metrics",
    embedding: str | None = None,
    batch_key: str | None = None,
    label_key: str | None = None,
    metrics: pd.DataFrame | None = None,
    point_size: float | None = None,
    ax: Sequence | None = None,
) -> Figure:
    """UMAPs before (unintegrated PCA) and after integration, coloured by batch and by label, with metrics.

    Panels: top row unintegrated PCA, bottom row ``embedding``; left column coloured by the batch, right column by
    the label. Panel titles carry the batch-mixing (iLISI, batch ASW) and conservation (cLISI, label ASW, graph
    connectivity) scores; a score that could not be computed (e.g. iLISI with a single batch) shows as ``n/a``.

    The plot only reads stored results and computes nothing:

    - ``adata.uns[key]`` (metrics and parameters) and ``adata.obsm[adata.uns[key]["params"]["umap_unintegrated"]]``
      (the "before" UMAP), both written by :func:`immunomood.tl.integration_metrics` (``key_added=key``);
    - ``adata.obsm["X_umap"]`` (the "after" UMAP), written by :func:`immunomood.tl.embed` with
      ``use_rep=embedding`` (checked against ``adata.uns["neighbors"]["params"]["use_rep"]``).

    Parameters
    ----------
    {adata}
    key
        ``key_added`` of :func:`immunomood.tl.integration_metrics`.
    embedding
        ``obsm`` key of the integrated embedding to show (default: the first one scored).
    batch_key, label_key
        Default: those the metrics were computed with; when given, they must be the same.
    metrics
        A metrics table to use for the titles instead of the stored one (e.g. the DataFrame returned by
        :func:`immunomood.tl.integration_metrics`).
    point_size
        Marker size (default from the number of cells).
    ax
        Four Axes to draw into (before/batch, before/label, after/batch, after/label); a new figure when
        ``None``.

    Returns
    -------
    The matplotlib Figure.
    """
    check_adata(adata, min_obs=3, min_vars=0)
    stored, params = _stored(adata, key)
    if metrics is None:
        metrics = stored
    elif not isinstance(metrics, pd.DataFrame):
        raise TypeError(
            f"`metrics` must be the DataFrame of im.tl.integration_metrics or None, got {type(metrics).__name__}."
        )
    for name, given in (("batch_key", batch_key), ("label_key", label_key)):
        used = params.get(name)
        if given is not None and given != used:
            raise ValueError(
                f"{name}={given!r}, but the stored metrics (adata.uns[{key!r}]) were computed with {name}={used!r}. "
                f"Rerun im.tl.integration_metrics(adata, {name}={given!r}, ...) or leave {name} unset."
            )
    batch_key, label_key = params.get("batch_key"), params.get("label_key")
    check_obs_key(adata, batch_key, what="batch column")
    check_obs_key(adata, label_key, what="label column")
    scored = [e for e in list(params.get("embedding", [])) if e in metrics.index]
    if embedding is None:
        if not scored:
            raise KeyError(
                f"The metrics in adata.uns[{key!r}] score no integrated embedding (rows: "
                f"{list(metrics.index)}). Run im.tl.integration_metrics(adata, embedding='X_scVI', ...)."
            )
        embedding = scored[0]
    from ..tl._metrics import UNINTEGRATED

    for row, fix in ((UNINTEGRATED, "unintegrated=True"), (embedding, f"embedding={embedding!r}")):
        if row not in metrics.index:
            raise KeyError(
                f"The metrics have no row {row!r} (rows: {list(metrics.index)}). "
                f"Run im.tl.integration_metrics(adata, {fix}, ...)."
            )
    before_key = params.get("umap_unintegrated") or ""
    if not before_key or before_key not in adata.obsm:
        raise KeyError(
            f"The UMAP of the unintegrated representation ({before_key or 'not computed'}) is not in adata.obsm. "
            f"Run im.tl.integration_metrics(adata, key_added={key!r}, umap=True, ...) (it stores it)."
        )
    neigh = adata.uns.get("neighbors", {})
    use_rep = neigh.get("params", {}).get("use_rep") if isinstance(neigh, dict) else None
    if "X_umap" not in adata.obsm or use_rep != embedding:
        found = (
            "no adata.obsm['X_umap']"
            if "X_umap" not in adata.obsm
            else f"adata.obsm['X_umap'] was computed on use_rep={use_rep!r}"
        )
        raise KeyError(
            f"The UMAP of {embedding!r} is needed ({found}). Run im.tl.embed(adata, use_rep={embedding!r}) first."
        )
    before = np.asarray(adata.obsm[before_key])
    after = np.asarray(adata.obsm["X_umap"])

    fig, axes = new_axes(
        ax,
        4,
        nrows=2,
        what="4 Axes (before/batch, before/label, after/batch, after/label)",
        figsize=(9, 7.5),
        constrained_layout=True,
    )
    if ax is None:
        fig.suptitle("Integration metrics: scib-metrics scaling, 0-1, higher is better", fontsize=9)
    size = point_size if point_size is not None else float(np.clip(3e4 / adata.n_obs, 1, 30))

    def titles(row: str, name: str) -> tuple[str, str]:
        m = metrics.loc[row]
        return (
            f"{name}: {batch_key}\niLISI {fmt(m['ilisi'])} | batch ASW {fmt(m['silhouette_batch'])}",
            f"{name}: {label_key}\ncLISI {fmt(m['clisi'])} | label ASW {fmt(m['silhouette_label'])} | "
            f"graph conn. {fmt(m['graph_connectivity'])}",
        )

    tb, tl_ = titles(UNINTEGRATED, "unintegrated PCA")
    ta, tl2 = titles(embedding, embedding)
    _scatter(axes[0], before, adata.obs[batch_key], tb, False, size, adata, batch_key)
    _scatter(axes[1], before, adata.obs[label_key], tl_, True, size, adata, label_key)
    _scatter(axes[2], after, adata.obs[batch_key], ta, True, size, adata, batch_key)
    _scatter(axes[3], after, adata.obs[label_key], tl2, True, size, adata, label_key)
    for a in axes:
        a.set_xlabel("UMAP1", fontsize=8)
        a.set_ylabel("UMAP2", fontsize=8)
    return fig
