"""Plot of cell-type proportions per donor by condition."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = ["composition"]


def composition(adata: AnnData, *, sample_key: str, condition_key: str, groupby: str, reference=None, ax=None):
    """Per cell type, each donor's (sample's) proportion, by condition.

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
    reference
        Reference condition, drawn first (default: the first category), as in :func:`immunomood.tl.composition`.
    ax
        Axes to draw into; a new figure otherwise.

    Returns
    -------
    The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    from .._utils import check_obs_key
    from ..tl._composition import cell_counts
    from ..tl._differential import _condition_levels, _sample_table

    for k in (sample_key, condition_key, groupby):
        check_obs_key(adata, k)
    counts = cell_counts(adata, sample_key, groupby)
    props = counts.div(counts.sum(axis=1), axis=0)
    tab = _sample_table(adata.obs, sample_key, [condition_key])
    case, ref = _condition_levels(adata.obs, condition_key, reference)
    cond = tab[condition_key].reindex(props.index).to_numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4, 0.9 * props.shape[1] + 1), 4))
    rng = np.random.default_rng(0)
    colors = {ref: "#4C72B0", case: "#DD8452"}
    for i, g in enumerate(props.columns):
        for j, lv in enumerate((ref, case)):
            v = props.loc[cond == lv, g].to_numpy()
            x0 = i + (j - 0.5) * 0.35
            ax.scatter(x0 + rng.uniform(-0.06, 0.06, len(v)), v, s=14, color=colors[lv],
                       label=str(lv) if i == 0 else None, zorder=3)
            if len(v):
                ax.hlines(np.median(v), x0 - 0.12, x0 + 0.12, color="k", lw=1.5)
    ax.set_xticks(range(props.shape[1]))
    ax.set_xticklabels([str(c) for c in props.columns], rotation=45, ha="right")
    ax.set_ylabel("proportion of the sample's cells")
    ax.set_title("Composition: one point per sample")
    ax.legend(frameon=False, fontsize=8)
    return ax
