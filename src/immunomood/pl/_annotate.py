"""Plots for :func:`immunomood.tl.annotate`: marker dot plot and confidence per label."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._kernels import count_matrix_problem, log1p_cp10k, row_totals
from .._utils import check_adata, check_obs_key, gene_symbols, match_genes
from ._base import new_ax

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _check_annotated(adata: AnnData, key: str) -> None:
    check_adata(adata)
    if key not in adata.obs.columns or key not in adata.uns:
        raise KeyError(
            f"No annotation {key!r} found (adata.obs[{key!r}] and adata.uns[{key!r}]). "
            f"Run `im.tl.annotate(adata, key_added={key!r})` first."
        )


def annotation(adata: AnnData, *, key: str = "cell_type", ax=None, n_genes: int = 4):
    """Dot plot of the marker genes used per label (mean log1p CP10k expression and fraction expressing).

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`immunomood.tl.annotate`.
    key
        ``key_added`` of the annotation.
    ax
        Matplotlib Axes to draw into; a new figure when ``None``.
    n_genes
        At most this many markers per label (those found in the data, in resource order).

    Returns
    -------
    The scanpy ``DotPlot`` object (its Axes via ``.get_axes()``).
    """
    import scanpy as sc

    _check_annotated(adata, key)
    used = adata.uns[key].get("markers_used", {})
    labels = [c for c in adata.obs[key].cat.categories if (adata.obs[key] == c).any() and c != "Unassigned"]
    var_names: dict[str, list[str]] = {}
    seen: set[str] = set()
    for lab in labels:
        genes = [g for g in list(used.get(lab, [])) if g.upper() not in seen][:n_genes]
        seen.update(g.upper() for g in genes)
        if genes:
            var_names[lab] = genes
    all_genes = [g for v in var_names.values() for g in v]
    idx, _ = match_genes(gene_symbols(adata), all_genes)
    X = adata.X[:, idx]
    X = X.toarray() if sparse.issparse(X) else np.asarray(X, dtype=float)
    if count_matrix_problem(adata.X) is None:  # raw counts: log1p CP10k for display (marker columns only)
        X = log1p_cp10k(X, totals=row_totals(adata.X), dtype=np.float64)
    found = [g for g in all_genes if g.upper() in {s.upper() for s in np.asarray(gene_symbols(adata))[idx]}]
    small = AnnData(X=X.astype(np.float32), obs=pd.DataFrame({key: adata.obs[key].array}, index=adata.obs_names))
    small.var_names = found
    small.obs[key] = small.obs[key].cat.remove_unused_categories()
    var_names = {k: [g for g in v if g in set(found)] for k, v in var_names.items()}
    var_names = {k: v for k, v in var_names.items() if v}
    dp = sc.pl.dotplot(small, var_names, groupby=key, ax=ax, show=False, return_fig=True)
    dp.make_figure()
    return dp


def annotation_confidence(adata: AnnData, *, key: str = "cell_type", ax=None) -> Axes:
    """Distribution of the annotation confidence per label (box plot, labels ordered as the vocabulary).

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`immunomood.tl.annotate`.
    key
        ``key_added`` of the annotation; reads ``obs[key]`` and ``obs[f"{key}_confidence"]``.
    ax
        Matplotlib Axes to draw into; a new figure when ``None``.

    Returns
    -------
    The matplotlib Axes.
    """
    _check_annotated(adata, key)
    check_obs_key(adata, f"{key}_confidence", what="confidence column")
    lab = adata.obs[key]
    conf = adata.obs[f"{key}_confidence"].to_numpy(dtype=float)
    labels = [c for c in lab.cat.categories if (lab == c).any()]
    data = [conf[(lab == c).to_numpy()] for c in labels]
    ax = new_ax(ax, figsize=(max(4.0, 0.45 * len(labels) + 1.5), 3.5))
    ax.boxplot(data, vert=True, showfliers=False, widths=0.6)
    for i, d in enumerate(data, start=1):
        jitter = np.random.default_rng(i).uniform(-0.2, 0.2, size=len(d))
        ax.scatter(np.full(len(d), i) + jitter, d, s=2, alpha=0.3, color="0.3", linewidths=0)
    ax.set_xticks(np.arange(1, len(labels) + 1))
    ax.set_xticklabels([f"{c} ({len(d)})" for c, d in zip(labels, data)], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"{key} (number of cells)")
    ax.set_ylabel("annotation confidence (0-1)")
    ax.set_title(f"{key}: confidence per label")
    return ax
