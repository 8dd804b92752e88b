"""Donor view: cells to one row per donor.

Gene-set activity per cell type from pseudobulk, and cell-type proportions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._docs import doc_adata, doc_gene_sets, doc_params, doc_sample_key
from .._utils import (
    check_adata,
    check_int,
    check_obs_key,
    check_str,
    match_genes,
    sample_level_columns,
    symbols_for_sets,
    warn,
)
from ._donor_data import SEP

__all__ = ["donor_view"]


@doc_params(adata=doc_adata, sample_key=doc_sample_key, gene_sets=doc_gene_sets)
def donor_view(
    adata: AnnData,
    *,
    sample_key: str,
    groupby: str = "cell_type",
    gene_sets: str | Mapping[str, Sequence[str]] = "complement",
    min_cells: int = 10,
    layer: str | None = None,
) -> AnnData:
    """One row per donor: gene-set activity per cell type (from pseudobulk) and cell-type proportions.

    For each cell type, counts are summed per donor (:func:`immunomood.tl.pseudobulk`); genes expressed in
    by the edgeR-like expression filter (set members by a lenient count filter), turned into log2 CPM
    (normalisation factors, prior 0.5) and centred across donors; a set's activity is the precision-weighted mean
    over its genes (voom-like trend weights), in log2 units: the donor-level score that
    :func:`immunomood.tl.differential_activity` tests (its ``set_scores``, here with an intercept-only design). The proportion of a cell type is its number
    of cells over the donor's total (all cells, whatever ``min_cells``).

    Parameters
    ----------
    {adata}
    {sample_key}
    groupby
        Column of ``adata.obs`` with the cell types.
    {gene_sets}
    min_cells
        A donor x cell type combination with fewer cells gets ``NaN`` activities (its proportion is still
        given); all such combinations are listed in ``uns["donor_view"]["missing"]`` and a warning is issued.
    layer
        Layer with raw counts; ``None``: ``layers["counts"]`` when present, else ``X``.

    Returns
    -------
    AnnData with one row per donor (index = donor IDs) and features ``"<cell type>|<gene set>"`` (e.g.
    ``"Classical monocyte|complement_classical"``) and ``"<cell type>|proportion"``.

    - ``obs``: every donor-level column of ``adata.obs`` (constant within a donor: condition, sex, age,
      batch ...) and ``n_cells``;
    - ``var``: ``cell_type``, ``feature`` (gene-set name or ``"proportion"``), ``kind`` (``"gene_set"`` or
      ``"proportion"``), ``n_genes`` (genes used);
    - ``uns["donor_view"]``: ``params``, ``missing`` (DataFrame: donor, cell type, n_cells under
      ``min_cells``), ``genes_used`` (DataFrame: cell type, gene set, genes used, genes missing).
    """
    from ._gene_sets import resolve_gene_sets
    from ._pseudobulk import pseudobulk

    check_adata(adata)
    check_str("sample_key", sample_key)
    check_str("groupby", groupby)
    check_str("layer", layer, allow_none=True)
    min_cells = check_int("min_cells", min_cells, min=1, fix="It is a number of cells per donor x cell type, e.g. 10.")
    check_obs_key(adata, sample_key, what="sample_key column")
    check_obs_key(adata, groupby, what="groupby column")
    if layer is not None and layer not in adata.layers:
        raise KeyError(
            f"Layer {layer!r} not found in adata.layers. Available: {list(adata.layers.keys())}. "
            "Pass the layer with raw counts, or None for layers['counts'] (else X)."
        )
    sets = resolve_gene_sets(gene_sets)
    if layer is None and "counts" in adata.layers:
        layer = "counts"
    symbols = symbols_for_sets(adata, None, sets)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pseudobulk's own min_cells warning: we report (and warn) below
        pb = pseudobulk(adata, sample_key=sample_key, groupby=groupby, layer=layer, min_cells=min_cells)
    obs_cells = adata.obs
    donors_cat = obs_cells[sample_key].astype("category")
    donors = [d for d in donors_cat.cat.categories if (donors_cat == d).any()]
    ct_cat = obs_cells[groupby].astype("category")
    cell_types = [c for c in ct_cat.cat.categories if (ct_cat == c).any()]
    tab = pd.crosstab(donors_cat, ct_cat).reindex(index=donors, columns=cell_types, fill_value=0)
    n_total = tab.sum(1)

    feats: dict[str, np.ndarray] = {}
    var_rows = []
    used_rows = []
    C_all = pb.X.toarray() if sparse.issparse(pb.X) else np.asarray(pb.X)
    pb_donor = pb.obs[sample_key].astype(str).to_numpy()
    pb_ct = pb.obs[groupby].astype(str).to_numpy()
    donor_str = [str(d) for d in donors]
    from ._differential import set_scores

    matched = {sname: match_genes(symbols, genes) for sname, genes in sets.items()}
    for ct in cell_types:
        rows = np.flatnonzero(pb_ct == str(ct))
        counts = C_all[rows]
        where = pd.Index(donor_str).get_indexer(pb_donor[rows])
        S = None
        if len(rows) >= 2:
            # the same donor-level score that differential_activity tests, with an intercept-only design
            S = set_scores(
                counts, np.ones((len(rows), 1)), {k: v[0] for k, v in matched.items()}, min_n=max(2, len(rows) // 2)
            )
        for sname, (idx, missing) in matched.items():
            vals = np.full(len(donors), np.nan)
            used = idx[:0]
            if S is not None and sname in S["scores"]:
                vals[where] = S["scores"][sname]
                used = S["kept"][S["cols"][sname]]
            name = f"{ct}{SEP}{sname}"
            feats[name] = vals
            var_rows.append({"cell_type": str(ct), "feature": sname, "kind": "gene_set", "n_genes": int(used.size)})
            used_rows.append(
                {
                    "cell_type": str(ct),
                    "gene_set": sname,
                    "genes_used": ",".join(symbols[used]),
                    "genes_missing": ",".join(map(str, missing)),
                }
            )
        name = f"{ct}{SEP}proportion"
        feats[name] = (tab[ct] / n_total.replace(0, np.nan)).to_numpy(dtype=float)
        var_rows.append({"cell_type": str(ct), "feature": "proportion", "kind": "proportion", "n_genes": 0})

    X = np.column_stack(list(feats.values())) if feats else np.zeros((len(donors), 0))
    var = pd.DataFrame(var_rows, index=list(feats.keys()))
    meta_cols = [c for c in sample_level_columns(obs_cells, sample_key) if c != groupby]
    obs = obs_cells.groupby(sample_key, observed=True, sort=False)[meta_cols].first().reindex(donors)
    for c in meta_cols:
        if isinstance(obs_cells[c].dtype, pd.CategoricalDtype):
            obs[c] = pd.Categorical(obs[c], categories=obs_cells[c].cat.categories)
    obs["n_cells"] = n_total.to_numpy().astype(int)
    obs.index = pd.Index(donor_str, name=None)
    out = AnnData(X=X, obs=obs, var=var)
    missing = tab.stack().rename("n_cells").reset_index()
    missing.columns = ["donor", "cell_type", "n_cells"]
    missing = missing[missing["n_cells"] < min_cells].reset_index(drop=True)
    missing["donor"] = missing["donor"].astype(str)
    missing["cell_type"] = missing["cell_type"].astype(str)
    out.uns["donor_view"] = {
        "params": {
            "sample_key": sample_key,
            "groupby": groupby,
            "min_cells": int(min_cells),
            "gene_sets": gene_sets if isinstance(gene_sets, str) else "custom",
            "layer": "X" if layer is None else layer,
            "score": "precision-weighted mean over expressed set genes of pseudobulk log2 CPM, centred across donors (log2 units)",
        },
        "missing": missing,
        "genes_used": pd.DataFrame(used_rows),
    }
    if len(missing):
        shown = ", ".join(f"{d}{SEP}{c} ({n})" for d, c, n in missing.head(8).itertuples(index=False))
        warn(
            f"donor_view: {len(missing)} donor x cell type combinations have fewer than {min_cells} cells; their "
            f"gene-set activities are NaN (listed in uns['donor_view']['missing']): {shown}"
            f"{' ...' if len(missing) > 8 else ''}",
            stacklevel=3,
        )
    return out
