"""Plot of cell-type proportions per donor by condition, with the composition test's p-values."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from ._base import fmt_p, new_ax

__all__ = ["composition"]


def composition(
    adata: AnnData,
    *,
    sample_key: str,
    condition_key: str,
    groupby: str,
    result: pd.DataFrame | None = None,
    reference=None,
    ax=None,
):
    """Per cell type, each donor's (sample's) proportion, by condition, with the test's p-values.

    The proportions are a count summary of ``adata.obs`` (no model). The p-values are read from ``result``, the
    table returned by :func:`immunomood.tl.composition` (or one stored as ``adata.uns["composition"]``): ``p`` and
    ``padj`` are written above each cell type. No test is run here; without a result the title says which call
    gives the p-values.

    Parameters
    ----------
    adata
        The cells.
    sample_key
        Column of ``adata.obs`` with the sample (donor).
    condition_key
        Column of ``adata.obs`` with the condition (constant within a sample).
    groupby
        Column of ``adata.obs`` with the cell types.
    result
        The DataFrame returned by :func:`immunomood.tl.composition` with the same columns (``group``, ``pvalue``,
        ``padj``).
    reference
        Reference condition, drawn first (default: the first category), as in :func:`immunomood.tl.composition`.
    ax
        Axes to draw into; a new figure otherwise.

    Returns
    -------
    The matplotlib Axes.
    """
    from .._utils import check_obs_key
    from ..tl._composition import cell_counts
    from ..tl._differential import _condition_levels, _sample_table

    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
    for k in (sample_key, condition_key, groupby):
        check_obs_key(adata, k)
    if result is None and isinstance(adata.uns.get("composition"), pd.DataFrame):
        result = adata.uns["composition"]
    if result is not None:
        if not isinstance(result, pd.DataFrame):
            raise TypeError(f"`result` must be the DataFrame returned by im.tl.composition, got {type(result).__name__}.")
        missing = [c for c in ("group", "pvalue", "padj") if c not in result.columns]
        if missing:
            raise KeyError(f"`result` lacks the columns {missing} (has {list(result.columns)}); pass the DataFrame "
                           "returned by im.tl.composition.")
    counts = cell_counts(adata, sample_key, groupby)
    props = counts.div(counts.sum(axis=1), axis=0)
    if result is not None:
        shown = {str(c) for c in props.columns}
        if not shown & set(result["group"].astype(str)):
            raise ValueError(
                f"`result` tests the groups {sorted(result['group'].astype(str))[:8]}, none of which is a level of "
                f"adata.obs[{groupby!r}] ({sorted(shown)[:8]}). Pass the result of im.tl.composition(adata, "
                f"groupby={groupby!r}, ...)."
            )
        by_group = result.assign(group=result["group"].astype(str)).set_index("group")
    tab = _sample_table(adata.obs, sample_key, [condition_key])
    case, ref = _condition_levels(adata.obs, condition_key, reference)
    cond = tab[condition_key].reindex(props.index).to_numpy()
    ax = new_ax(ax, figsize=(max(4, 0.9 * props.shape[1] + 1), 4))
    rng = np.random.default_rng(0)
    colors = {ref: "#4C72B0", case: "#DD8452"}
    for i, g in enumerate(props.columns):
        for j, lv in enumerate((ref, case)):
            v = props.loc[cond == lv, g].to_numpy()
            x0 = i + (j - 0.5) * 0.35
            ax.scatter(x0 + rng.uniform(-0.06, 0.06, len(v)), v, s=14, color=colors[lv],
                       label=f"{lv} ({len(v)} samples)" if i == 0 else None, zorder=3)
            if len(v):
                ax.hlines(np.median(v), x0 - 0.12, x0 + 0.12, color="k", lw=1.5)
        if result is not None:
            if str(g) in by_group.index:
                row = by_group.loc[str(g)]
                row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
                txt = f"p {fmt_p(row['pvalue'])}\npadj {fmt_p(row['padj'])}"
            else:
                txt = "not tested"
            ax.text(i, 0.99, txt, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=6)
    top = float(np.nanmax(props.to_numpy())) if props.size else 1.0
    ax.set_ylim(0, top * 1.25 + 1e-3)  # headroom for the p-values
    ax.set_xticks(range(props.shape[1]))
    ax.set_xticklabels([str(c) for c in props.columns], rotation=45, ha="right")
    ax.set_xlabel(groupby)
    ax.set_ylabel("proportion of the sample's cells")
    title = f"Composition ({case} vs {ref}): one point per sample, median bar"
    if result is None:
        title += "\np-values: pass result=im.tl.composition(adata, ...)"
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=8, title=condition_key, title_fontsize=8, loc="center left",
              bbox_to_anchor=(1.0, 0.5))
    return ax
