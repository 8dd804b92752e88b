"""Plots of the QC step: per-sample metric violins with thresholds, and the removal report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import doc_adata, doc_params, doc_sample_key
from .._utils import check_adata, check_obs_key
from ._base import new_ax, new_axes, not_measured

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


_DEFAULT_METRICS = ("log1p_total_counts", "log1p_n_genes_by_counts", "pct_counts_in_top_20_genes", "pct_counts_mt")
#: y-axis labels of the usual metrics
_LABELS = {
    "log1p_total_counts": "log1p(total counts per cell)",
    "log1p_n_genes_by_counts": "log1p(genes detected per cell)",
    "pct_counts_in_top_20_genes": "% counts in the top 20 genes",
    "pct_counts_mt": "% mitochondrial counts",
    "total_counts": "total counts per cell",
    "n_genes_by_counts": "genes detected per cell",
}
_REASON_COLORS = {
    "log1p_total_counts": "#d62728",
    "log1p_n_genes_by_counts": "#ff7f0e",
    "pct_counts_in_top_20_genes": "#9467bd",
    "pct_counts_mt": "#8c564b",
    "predicted_doublet": "#e377c2",
}


@doc_params(adata=doc_adata, sample_key=doc_sample_key)
def qc(
    adata: AnnData,
    *,
    sample_key: str | None,
    metrics: Sequence[str] = _DEFAULT_METRICS,
    show_thresholds: bool = True,
    max_cells_per_sample: int = 5000,
    ax=None,
) -> Figure:
    """Violins of QC metrics per sample, with the outlier thresholds drawn.

    Reads the metrics written by :func:`immunomood.pp.qc_metrics` and, when present, the per-sample
    thresholds in ``adata.uns["qc"]["thresholds"]`` written by :func:`immunomood.pp.flag_outliers`
    (drawn as dashed lines at ``low`` and ``high``). A metric with no finite value (e.g. ``pct_counts_mt`` when the
    panel has no mitochondrial gene) is shown as "not measured" instead of an empty panel; a sample without a value
    is marked ``n/a``.

    Parameters
    ----------
    {adata}
    {sample_key}
        ``None``: one violin with all cells.
    metrics
        ``obs`` columns to show, one panel each.
    show_thresholds
        Draw the thresholds (only those computed with the same ``sample_key``).
    max_cells_per_sample
        The violins' density is estimated from at most this many cells per sample (fixed seed).
    ax
        One Axes (for a single metric) or a sequence of Axes, one per metric. ``None``: a new figure.

    Returns
    -------
    The :class:`~matplotlib.figure.Figure` holding the panels (never shown or saved here).
    """
    check_adata(adata)
    check_obs_key(adata, sample_key, what="sample_key column")
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = list(metrics)
    missing = [m for m in metrics if m not in adata.obs.columns]
    if missing:
        raise KeyError(
            f"Metric column(s) {missing} not found in adata.obs: run im.pp.qc_metrics first. "
            f"Available: {list(map(str, adata.obs.columns))}."
        )
    fig, axes = new_axes(
        ax,
        len(metrics),
        what=f"one per metric ({len(metrics)})",
        figsize=(3.2 * len(metrics), 3.4),
        layout="constrained",
    )

    if sample_key is None:
        groups = np.zeros(adata.n_obs, dtype=int)
        names = ["all"]
    else:
        cat = pd.Categorical(adata.obs[sample_key]).remove_unused_categories()
        groups, names = np.asarray(cat.codes), [str(c) for c in cat.categories]
    thr = None
    qcu = adata.uns.get("qc", {})
    if show_thresholds and isinstance(qcu, dict) and isinstance(qcu.get("thresholds"), pd.DataFrame):
        used = qcu.get("params", {}).get("flag_outliers", {}).get("sample_key")
        if used == sample_key:
            thr = qcu["thresholds"].assign(sample=lambda d: d["sample"].astype(str)).set_index(["sample", "metric"])
    rng = np.random.default_rng(0)
    outl = adata.obs["qc_outlier"].to_numpy(bool) if "qc_outlier" in adata.obs else None
    pos = np.arange(1, len(names) + 1)
    for a, m in zip(axes, metrics):
        vals = pd.to_numeric(adata.obs[m], errors="coerce").to_numpy(dtype=np.float64)
        a.set_title(m, fontsize=9)
        a.set_ylabel(_LABELS.get(m, m), fontsize=8)
        a.set_xlabel(sample_key or "all cells")
        if not np.isfinite(vals).any():  # e.g. no mitochondrial gene in the panel: say so, no empty violins
            not_measured(a, f"{m}:\nnot measured (no finite value)")
            continue
        data, where, empty = [], [], []
        for g in range(len(names)):
            v = vals[(groups == g) & np.isfinite(vals)]
            if v.size == 0:
                empty.append(g)
                continue
            if v.size > max_cells_per_sample:
                v = rng.choice(v, max_cells_per_sample, replace=False)
            data.append(v if v.size > 1 and np.ptp(v) > 0 else np.r_[v, v + 1e-9])
            where.append(pos[g])
        parts = a.violinplot(data, positions=where, showextrema=False, widths=0.8)
        for g in empty:
            a.text(
                pos[g], 0.5, "n/a", transform=a.get_xaxis_transform(), ha="center", va="center", fontsize=7, color="0.4"
            )
        for body in parts["bodies"]:
            body.set_facecolor("#9ecae1")
            body.set_edgecolor("#3182bd")
            body.set_alpha(0.8)
        if outl is not None:
            sel = outl & np.isfinite(vals)
            if sel.any():
                x = groups[sel] + 1 + rng.uniform(-0.15, 0.15, sel.sum())
                a.scatter(x, vals[sel], s=2, c="#d62728", linewidths=0, label="outlier")
        if thr is not None:
            for p, name in zip(pos, names):
                if (name, m) in thr.index:
                    row = thr.loc[(name, m)]
                    for y in (row["low"], row["high"]):
                        if np.isfinite(y):
                            a.hlines(y, p - 0.4, p + 0.4, colors="k", linestyles="--", linewidth=1)
        a.set_xticks(pos)
        a.set_xticklabels(names, rotation=90 if len(names) > 4 else 0)
    return fig


@doc_params(adata=doc_adata)
def qc_report(adata: AnnData, *, normalize: bool = False, ax=None) -> Axes:
    """Cells kept and removed per sample, the removed ones split by reason (stacked bars).

    Reads ``adata.uns["qc"]["report"]`` written by :func:`immunomood.pp.filter_cells`.

    Parameters
    ----------
    {adata}
    normalize
        Show fractions of each sample's cells instead of counts.
    ax
        Axes to draw into; ``None``: a new figure.

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` (never shown or saved here).
    """
    qcu = adata.uns.get("qc", {}) if isinstance(adata, AnnData) else {}
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
    if not isinstance(qcu, dict) or not isinstance(qcu.get("report"), pd.DataFrame):
        raise KeyError("adata.uns['qc']['report'] not found: run im.pp.filter_cells first.")
    rep = qcu["report"]
    reasons = [c for c in rep.columns if c.startswith("removed_")]
    parts = {"kept": rep["cells_after"].to_numpy(float)}
    for c in reasons:
        parts[c.removeprefix("removed_")] = rep[c].to_numpy(float)
    if normalize:
        denom = np.maximum(rep["cells_before"].to_numpy(float), 1)
        parts = {k: v / denom for k, v in parts.items()}
    ax = new_ax(ax, figsize=(6.5, 0.35 * len(rep) + 1.5), layout="constrained")
    y = np.arange(len(rep))
    left = np.zeros(len(rep))
    for k, v in parts.items():
        if k != "kept" and not np.any(v > 0):
            continue
        ax.barh(y, v, left=left, color="#bdbdbd" if k == "kept" else _REASON_COLORS.get(k, None), label=k, height=0.7)
        left += v
    ax.set_yticks(y)
    ax.set_yticklabels(list(map(str, rep.index)))
    ax.invert_yaxis()
    ax.set_xlabel("fraction of cells" if normalize else "cells")
    ax.set_ylabel(rep.index.name or "sample")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if "too_small_to_pseudobulk" in rep:
        for yi, small in zip(y, rep["too_small_to_pseudobulk"].to_numpy(bool)):
            if small:
                ax.text(left[yi], yi, " too small", va="center", fontsize=7, color="#d62728")
    return ax
