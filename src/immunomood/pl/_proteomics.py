"""Plots of the donor-level cross-modal analysis: association heatmap and biomarker ROC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._base import new_ax, roc_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes


__all__ = ["biomarker_roc", "cross_modal"]


def cross_modal(
    result,
    *,
    rna_features: Sequence[str] | str | None = None,
    proteins: Sequence[str] | str | None = None,
    max_rows: int = 30,
    max_cols: int = 30,
    alpha: float = 0.05,
    key: str = "cross_modal_associations",
    ax=None,
    cmap: str = "RdBu_r",
) -> Axes:
    """Heatmap of cross-modal association estimates, with significance marks.

    Parameters
    ----------
    result
        The DataFrame returned by :func:`immunomood.tl.cross_modal_associations`, or a MuData holding that table in
        ``mdata.uns[key]["results"]`` (or, as stored before the one-result convention, ``mdata.uns[key]``).
        Nothing is computed here: a MuData without the table raises an error naming the call.
    rna_features, proteins
        Restrict the rows / columns shown.
    max_rows, max_cols
        Show at most this many RNA features (rows) and proteins (columns): those with the smallest p-values.
    alpha
        Cells with ``padj < alpha`` are marked ``*`` (``**`` below ``alpha / 10``).
    key
        Key of the stored table when ``result`` is a MuData.
    ax
        Axes to draw on; a new figure when ``None``.
    cmap
        Diverging colormap, centred on 0.

    Returns
    -------
    The matplotlib Axes.
    """
    import seaborn as sns

    if hasattr(result, "mod") and not isinstance(result, pd.DataFrame):
        stored = result.uns.get(key)
        if isinstance(stored, Mapping):  # the one-result convention: {"params": ..., "results": DataFrame}
            stored = stored.get("results")
        if not isinstance(stored, pd.DataFrame):  # (a bare DataFrame: the layout before the convention)
            raise KeyError(
                f"No association table in mdata.uns[{key!r}] (found {type(stored).__name__}). Run "
                "`res = im.tl.cross_modal_associations(mdata, ...)` and pass `res` (the plot computes no test)."
            )
        result = stored
    if not isinstance(result, pd.DataFrame):
        raise TypeError(
            f"`result` must be a DataFrame from im.tl.cross_modal_associations or a MuData, got "
            f"{type(result).__name__}."
        )
    res = result
    missing = [c for c in ("rna_feature", "protein", "estimate", "pvalue", "padj") if c not in res.columns]
    if missing:
        raise ValueError(
            f"`result` lacks the columns {missing}; pass the DataFrame returned by im.tl.cross_modal_associations."
        )
    if rna_features is not None:
        sel = [rna_features] if isinstance(rna_features, str) else list(rna_features)
        res = res[res["rna_feature"].isin(sel) | res["rna_feature"].str.split("|").str[0].isin(sel)]
    if proteins is not None:
        res = res[res["protein"].isin([proteins] if isinstance(proteins, str) else list(proteins))]
    res = res.dropna(subset=["estimate"])
    if res.empty:
        raise ValueError("No association with an estimate to show (all NaN or nothing selected).")
    best_r = res.groupby("rna_feature")["pvalue"].min().sort_values().index[:max_rows]
    best_p = res.groupby("protein")["pvalue"].min().sort_values().index[:max_cols]
    sub = res[res["rna_feature"].isin(best_r) & res["protein"].isin(best_p)]
    est = sub.pivot(index="rna_feature", columns="protein", values="estimate").reindex(index=best_r, columns=best_p)
    padj = sub.pivot(index="rna_feature", columns="protein", values="padj").reindex(index=best_r, columns=best_p)
    # no all-NaN row or column (a feature whose estimates are all for proteins not shown)
    keep_r, keep_p = est.notna().any(axis=1), est.notna().any(axis=0)
    est, padj = est.loc[keep_r, keep_p], padj.loc[keep_r, keep_p]
    marks = np.where(padj.to_numpy() < alpha / 10, "**", np.where(padj.to_numpy() < alpha, "*", ""))
    w, h = min(2 + 0.35 * est.shape[1], 16), min(1.5 + 0.3 * est.shape[0], 14)
    ax = new_ax(ax, figsize=(max(w, 4), max(h, 3)))
    sns.heatmap(
        est,
        ax=ax,
        cmap=cmap,
        vmin=-1,
        vmax=1,
        center=0,
        annot=marks,
        fmt="",
        annot_kws={"color": "black", "fontsize": 8},
        cbar_kws={"label": "estimate"},
        linewidths=0.3,
        linecolor="white",
    )
    ax.set_xlabel("protein")
    ax.set_ylabel("donor-level RNA feature")
    blank = "; blank: not estimable" if est.isna().to_numpy().any() else ""
    ax.set_title(f"cross-modal association (* padj < {alpha:g}, ** < {alpha / 10:g}{blank})")
    return ax


def biomarker_roc(result, *, ax=None, show_repeats: bool = True, color: str = "C0") -> Axes:
    """Mean ROC curve of the out-of-fold predictions of :func:`immunomood.tl.biomarker_panel`.

    One ROC curve per repeat (thin, when ``show_repeats``), their vertical average on a common
    false-positive-rate grid (thick), a band between the 2.5th and 97.5th percentiles, the chance line, and
    the AUC with its interval in the legend.

    Parameters
    ----------
    result
        :class:`immunomood.tl.BiomarkerResult` (from :func:`immunomood.tl.biomarker_panel`).
    ax
        Axes to draw on; a new figure when ``None``.
    show_repeats
        Draw each repeat's curve.
    color
        Colour of the curves.

    Returns
    -------
    The matplotlib Axes.
    """
    from sklearn.metrics import roc_curve

    for attr in ("oof", "predictions", "auc", "auc_ci"):
        if not hasattr(result, attr):
            raise TypeError(f"`result` must be the result of im.tl.biomarker_panel, got {type(result).__name__}.")
    y = result.predictions["label"].to_numpy()
    oof = result.oof.to_numpy()
    grid = np.linspace(0, 1, 101)
    tprs = []
    ax = new_ax(ax, figsize=(4, 4))
    for r in range(oof.shape[1]):
        fpr, tpr, _ = roc_curve(y, oof[:, r])
        if show_repeats:
            ax.plot(fpr, tpr, color=color, alpha=0.15, lw=0.7)
        t = np.interp(grid, fpr, tpr)
        t[0] = 0.0
        tprs.append(t)
    tprs = np.asarray(tprs)
    mean = tprs.mean(0)
    mean[-1] = 1.0
    lo, hi = np.percentile(tprs, [2.5, 97.5], axis=0)
    ax.fill_between(grid, lo, hi, color=color, alpha=0.2, lw=0)
    ax.plot(
        grid, mean, color=color, lw=2, label=f"AUC {result.auc:.2f} ({result.auc_ci[0]:.2f}-{result.auc_ci[1]:.2f})"
    )
    roc_axes(ax)
    params = getattr(result, "params", {}) or {}
    if params.get("case"):
        ax.set_title(f"{params['case']} vs {params.get('reference', '')}, out-of-fold")
    return ax
