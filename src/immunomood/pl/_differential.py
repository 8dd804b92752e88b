"""Plots of donor-level differential results: per-donor set scores by condition, volcano."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = ["differential_activity", "volcano"]


def _ax(ax, figsize=(6, 4)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def differential_activity(
    adata: AnnData,
    *,
    gene_set: str,
    groupby: str | None = None,
    condition_key: str | None = None,
    sample_key: str | None = None,
    key: str = "differential_activity",
    gene_sets=None,
    ax=None,
):
    """Per cell type, one point per donor (sample) with its set score, by condition.

    Reads the donor scores stored by :func:`immunomood.tl.differential_activity` in
    ``adata.uns[key + "_scores"]``; when they are absent (or were computed for other columns) and ``groupby``,
    ``condition_key`` and ``sample_key`` are given, runs the test first (a pseudobulk computation, cheap).

    Parameters
    ----------
    adata
        The cells (with stored results, or the columns to compute them).
    gene_set
        Name of the set to show (e.g. ``"complement_classical"``).
    groupby, condition_key, sample_key
        Columns of ``adata.obs``; needed only when results are not stored.
    key
        ``key_added`` used with :func:`immunomood.tl.differential_activity`.
    gene_sets
        Gene sets to compute with when results are not stored (default: the collection holding ``gene_set``).
    ax
        Axes to draw into; a new figure otherwise.

    Returns
    -------
    The matplotlib Axes.
    """
    from ..tl import differential_activity as _tl_da
    from ..tl._gene_sets import gene_sets as _gs, known_gene_sets

    params = adata.uns.get(key + "_params", {})
    stored = key + "_scores" in adata.uns and all(
        v is None or params.get(k) == v for k, v in
        (("groupby", groupby), ("condition_key", condition_key), ("sample_key", sample_key)))
    if not stored:
        if None in (groupby, condition_key, sample_key):
            raise KeyError(
                f"No stored results under adata.uns[{key + '_scores'!r}]. Run im.tl.differential_activity first, or "
                "pass groupby=, condition_key= and sample_key= to compute them."
            )
        if gene_sets is None:
            gene_sets = next((n for n in known_gene_sets() if gene_set in _gs(n)), None)
            if gene_sets is None:
                raise KeyError(f"Gene set {gene_set!r} is in no packaged collection; pass gene_sets= (a dict).")
        _tl_da(adata, condition_key=condition_key, sample_key=sample_key, groupby=groupby, gene_sets=gene_sets,
               key_added=key)
        params = adata.uns[key + "_params"]
    scores = adata.uns[key + "_scores"]
    res = adata.uns.get(key)
    s = scores[scores["gene_set"] == gene_set]
    if s.empty:
        raise KeyError(f"Gene set {gene_set!r} not in the stored results. Available: {sorted(scores['gene_set'].unique())}.")
    groups = list(pd.unique(s["group"]))
    levels = [params.get("reference"), params.get("case")]
    colors = {levels[0]: "#4C72B0", levels[1]: "#DD8452"}
    ax = _ax(ax, figsize=(max(4, 1.2 * len(groups) + 1), 4))
    rng = np.random.default_rng(0)
    for i, g in enumerate(groups):
        for j, lv in enumerate(levels):
            v = s.loc[(s["group"] == g) & (s["condition"] == str(lv)), "score"].to_numpy()
            x = i + (j - 0.5) * 0.35 + rng.uniform(-0.06, 0.06, size=len(v))
            ax.scatter(x, v, s=18, color=colors[lv], label=str(lv) if i == 0 else None, zorder=3)
            if len(v):
                ax.hlines(np.mean(v), i + (j - 0.5) * 0.35 - 0.12, i + (j - 0.5) * 0.35 + 0.12, color="k", lw=1.5)
        if res is not None:
            row = res[(res["group"] == str(g)) & (res["gene_set"] == gene_set)]
            if len(row) and np.isfinite(row["padj"].iloc[0]):
                ax.text(i, ax.get_ylim()[1] if False else np.nanmax(s["score"]) * 1.05 + 0.05,
                        f"padj={row['padj'].iloc[0]:.2g}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=45, ha="right")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel(f"{gene_set} donor score")
    ax.set_title(f"{gene_set}: one point per sample")
    ax.legend(frameon=False, fontsize=8)
    return ax


def volcano(result: pd.DataFrame, *, alpha: float = 0.05, label: bool = True, ax=None):
    """Volcano plot of a result table of :func:`immunomood.tl.differential_activity` (``effect``) or
    :func:`immunomood.tl.differential_expression` (``log2fc``).

    Parameters
    ----------
    result
        The DataFrame returned by the test.
    alpha
        Adjusted p-value threshold for highlighting.
    label
        Annotate the significant points (group and gene set / gene).
    ax
        Axes to draw into.

    Returns
    -------
    The matplotlib Axes.
    """
    if not isinstance(result, pd.DataFrame):
        raise TypeError(f"`result` must be the DataFrame returned by a test, got {type(result).__name__}.")
    x_col = "effect" if "effect" in result else "log2fc" if "log2fc" in result else None
    if x_col is None or "pvalue" not in result:
        raise KeyError(f"`result` needs columns 'effect' (or 'log2fc') and 'pvalue'; has {list(result.columns)}.")
    r = result[np.isfinite(result["pvalue"].astype(float))]
    ax = _ax(ax)
    y = -np.log10(np.maximum(r["pvalue"].to_numpy(dtype=float), 1e-300))
    sig = (r["padj"] < alpha).to_numpy() if "padj" in r else np.zeros(len(r), bool)
    ax.scatter(r[x_col][~sig], y[~sig], s=12, color="grey", alpha=0.6, label=f"padj >= {alpha}")
    ax.scatter(r[x_col][sig], y[sig], s=16, color="#C44E52", label=f"padj < {alpha}")
    if label:
        name = "gene_set" if "gene_set" in r else "gene" if "gene" in r else None
        for (_, row), yy, s in zip(r.iterrows(), y, sig):
            if s:
                txt = f"{row['group']}|{row[name]}" if name and "group" in r else str(row.get(name, ""))
                ax.annotate(txt, (row[x_col], yy), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("effect (log2 fold change)" if x_col == "effect" else "log2 fold change")
    ax.set_ylabel("-log10 p-value")
    ax.legend(frameon=False, fontsize=8)
    return ax
