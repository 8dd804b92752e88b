"""Plot of cell-type proportions per donor by condition, with the composition test's p-values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from ._base import fmt_p, new_ax, palette

if TYPE_CHECKING:
    from matplotlib.axes import Axes


__all__ = ["composition"]


def composition(
    adata: AnnData,
    *,
    sample_key: str,
    condition_key: str,
    groupby: str,
    result: pd.DataFrame | None = None,
    reference=None,
    contrast: str | None = None,
    key: str = "composition",
    ax=None,
) -> Axes:
    """Per cell type, each donor's (sample's) proportion, by condition, with the test's p-values.

    The proportions are a count summary of ``adata.obs`` (no model); every level of ``condition_key`` is drawn,
    the reference first. The p-values are read from ``result``, the table returned by
    :func:`immunomood.tl.composition` (or the one it stored in ``adata.uns[key]["results"]``): ``p``
    and ``padj`` of one contrast are written above each cell type. No test is run here; without a result the
    title says which call gives the p-values.

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
    contrast
        With a result of several contrasts (its ``contrast`` column), the one whose p-values are shown, e.g.
        ``"condition: MDD vs control"``; default: the first one in the table (named in the title).
    key
        ``key_added`` of :func:`immunomood.tl.composition`, read when ``result`` is ``None``.
    ax
        Axes to draw into; a new figure otherwise.

    Returns
    -------
    The matplotlib Axes.
    """
    from .._design import _levels, _sample_table
    from .._utils import check_obs_key
    from ..tl._composition import cell_counts

    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
    for k in (sample_key, condition_key, groupby):
        check_obs_key(adata, k)
    if result is None:
        stored = adata.uns.get(key)
        if isinstance(stored, Mapping) and isinstance(stored.get("results"), pd.DataFrame):
            result = stored["results"]
        elif isinstance(stored, pd.DataFrame):  # stored by an older version
            result = stored
    if result is not None:
        if not isinstance(result, pd.DataFrame):
            raise TypeError(
                f"`result` must be the DataFrame returned by im.tl.composition, got {type(result).__name__}."
            )
        missing = [c for c in ("group", "pvalue", "padj") if c not in result.columns]
        if missing:
            raise KeyError(
                f"`result` lacks the columns {missing} (has {list(result.columns)}); pass the DataFrame "
                "returned by im.tl.composition."
            )
        if "contrast" in result.columns and len(result):
            names = list(pd.unique(result["contrast"].astype(str)))
            if contrast is None:
                contrast = names[0]
            elif contrast not in names:
                raise ValueError(f"contrast={contrast!r} is not in the result; its contrasts are {names}.")
            result = result[result["contrast"].astype(str) == contrast]
        elif contrast is not None:
            raise ValueError("`contrast` selects rows of a result with a `contrast` column; this result has none.")
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
    levels = _levels(tab[condition_key])
    if len(levels) < 2:
        raise ValueError(f"adata.obs[{condition_key!r}] has a single level ({levels}); the plot compares levels.")
    if reference is not None:
        if reference not in levels:
            raise ValueError(f"reference={reference!r} is not a level of adata.obs[{condition_key!r}]: {levels}.")
        levels = [reference] + [lv for lv in levels if lv != reference]
    cond = tab[condition_key].reindex(props.index).to_numpy()
    ax = new_ax(ax, figsize=(max(4, 0.9 * props.shape[1] + 1), 4))
    rng = np.random.default_rng(0)
    colors = dict(zip(levels, palette(levels, adata=adata, key=condition_key).values()))
    width = 0.7 / len(levels)
    for i, g in enumerate(props.columns):
        for j, lv in enumerate(levels):
            v = props.loc[cond == lv, g].to_numpy()
            x0 = i + (j - (len(levels) - 1) / 2) * width
            ax.scatter(
                x0 + rng.uniform(-0.06, 0.06, len(v)) * width / 0.35,
                v,
                s=14,
                color=colors[lv],
                label=f"{lv} ({len(v)} samples)" if i == 0 else None,
                zorder=3,
            )
            if len(v):
                ax.hlines(np.median(v), x0 - 0.12 * width / 0.35, x0 + 0.12 * width / 0.35, color="k", lw=1.5)
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
    what = (
        contrast
        if contrast is not None
        else (f"{levels[1]} vs {levels[0]}" if len(levels) == 2 else f"{condition_key}, reference {levels[0]}")
    )
    title = f"Composition ({what}): one point per sample, median bar"
    if result is None:
        title += "\np-values: pass result=im.tl.composition(adata, ...)"
    ax.set_title(title, fontsize=9)
    ax.legend(
        frameon=False, fontsize=8, title=condition_key, title_fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5)
    )
    return ax
