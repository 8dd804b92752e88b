"""Donor-level link between single-cell data and plasma proteomics.

``donor_view`` turns cells into one row per donor (gene-set activity per cell type from pseudobulk, and
cell-type proportions); ``join_proteomics`` pairs it with plasma proteomics in a MuData indexed by donor;
``cross_modal_associations`` correlates every donor-level RNA feature with every protein (vectorised, with
covariates); ``biomarker_panel`` cross-validates a penalised logistic classifier without leakage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, special, stats

from .._docs import doc_adata, doc_gene_sets, doc_params, doc_random_state, doc_sample_key
from .._stats import bh
from .._utils import (
    check_adata,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_obs_key,
    check_random_state,
    check_str,
    symbols_for_sets,
    match_genes,
    resolve_random_state,
    sample_level_columns,
    warn,
)

__all__ = ["BiomarkerResult", "biomarker_panel", "cross_modal_associations", "donor_view", "join_proteomics"]

SEP = "|"


# ----------------------------------------------------------------------------------------------
# donor_view
# ----------------------------------------------------------------------------------------------
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
        raise KeyError(f"Layer {layer!r} not found in adata.layers. Available: {list(adata.layers.keys())}. "
                       "Pass the layer with raw counts, or None for layers['counts'] (else X).")
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
            S = set_scores(counts, np.ones((len(rows), 1)), {k: v[0] for k, v in matched.items()},
                           min_n=max(2, len(rows) // 2))
        for sname, (idx, missing) in matched.items():
            vals = np.full(len(donors), np.nan)
            used = idx[:0]
            if S is not None and sname in S["scores"]:
                vals[where] = S["scores"][sname]
                used = S["kept"][S["cols"][sname]]
            name = f"{ct}{SEP}{sname}"
            feats[name] = vals
            var_rows.append({"cell_type": str(ct), "feature": sname, "kind": "gene_set", "n_genes": int(used.size)})
            used_rows.append({"cell_type": str(ct), "gene_set": sname,
                              "genes_used": ",".join(symbols[used]), "genes_missing": ",".join(map(str, missing))})
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
        "params": {"sample_key": sample_key, "groupby": groupby, "min_cells": int(min_cells),
                   "gene_sets": gene_sets if isinstance(gene_sets, str) else "custom",
                   "layer": "X" if layer is None else layer,
                   "score": "precision-weighted mean over expressed set genes of pseudobulk log2 CPM, centred across donors (log2 units)"},
        "missing": missing,
        "genes_used": pd.DataFrame(used_rows),
    }
    if len(missing):
        shown = ", ".join(f"{d}{SEP}{c} ({n})" for d, c, n in missing.head(8).itertuples(index=False))
        warn(f"donor_view: {len(missing)} donor x cell type combinations have fewer than {min_cells} cells; their "
             f"gene-set activities are NaN (listed in uns['donor_view']['missing']): {shown}"
             f"{' ...' if len(missing) > 8 else ''}", stacklevel=3)
    return out


# ----------------------------------------------------------------------------------------------
# join_proteomics
# ----------------------------------------------------------------------------------------------
def join_proteomics(donors: AnnData, prot: AnnData, *, prot_sample_key: str | None = None):
    """Join the donor view and plasma proteomics into a MuData indexed by donor ID.

    Parameters
    ----------
    donors
        One row per donor, index = donor IDs (as returned by :func:`immunomood.tl.donor_view`).
    prot
        Proteomics, one row per plasma sample (e.g. after :func:`immunomood.pp.proteomics_qc`).
    prot_sample_key
        Column of ``prot.obs`` with each sample's donor ID; ``None``: ``prot.obs_names`` are donor IDs.

    Returns
    -------
    :class:`mudata.MuData` with modalities ``"rna"`` (the donor view) and ``"prot"`` (the proteomics, index =
    donor ID; the original sample IDs are kept in ``prot.obs["sample_id"]``), all donors of either side
    (those on one side only are reported by a warning). ``mdata.obs`` carries the donor metadata (columns of
    ``donors.obs``, completed by same-named columns of ``prot.obs`` for donors without cells);
    ``mdata.uns["join"]``: ``n_common``, ``rna_only``, ``prot_only`` (donor lists) and ``prot_sample_key``.

    Raises
    ------
    ValueError
        Several plasma samples for one donor (choose a visit or aggregate first), no donor in common (shows IDs
        of both sides), duplicated donor IDs in ``donors``.
    """
    import mudata as md

    check_adata(donors, name="donors")
    check_adata(prot, name="prot")
    if donors.obs_names.has_duplicates:
        dup = donors.obs_names[donors.obs_names.duplicated()].unique()[:5].tolist()
        raise ValueError(f"Duplicated donor IDs in `donors`: {dup}. `donors` must have one row per donor "
                         "(use im.tl.donor_view).")
    if prot_sample_key is not None:
        if prot_sample_key not in prot.obs.columns:
            raise KeyError(f"prot_sample_key {prot_sample_key!r} not found in prot.obs. "
                           f"Available: {list(map(str, prot.obs.columns))}.")
        if prot.obs[prot_sample_key].isna().any():
            raise ValueError(f"prot.obs[{prot_sample_key!r}] has {int(prot.obs[prot_sample_key].isna().sum())} "
                             "missing donor IDs; remove those samples first.")
        ids = prot.obs[prot_sample_key].astype(str)
    else:
        ids = pd.Series(prot.obs_names.astype(str), index=prot.obs_names)
    if ids.duplicated().any():
        dup = ids[ids.duplicated(keep=False)]
        ex = dup.unique()[:5].tolist()
        # columns that tell the visits apart
        g = prot.obs.loc[dup.index].groupby(dup.to_numpy(), observed=True)
        varying = [c for c in prot.obs.columns if c != prot_sample_key and
                   (g[c].nunique(dropna=False) > 1).any()][:5]
        hint = ""
        if varying:
            c = varying[0]
            v = prot.obs.loc[dup.index, c].dropna().astype(str).iloc[0]
            hint = (f" The samples differ in {varying}: choose one visit, e.g. "
                    f"`prot = prot[prot.obs[{c!r}] == {v!r}].copy()`,")
        raise ValueError(
            f"Several plasma samples per donor: {dup.nunique()} donors have more than one sample in `prot` "
            f"(e.g. {ex}).{hint} or aggregate them explicitly, e.g. by the mean per donor "
            "(`prot.X` grouped by donor), then join again. Visits are never merged silently."
        )
    d_ids = pd.Index(donors.obs_names.astype(str))
    p_ids = pd.Index(ids.to_numpy())
    common = d_ids.intersection(p_ids)
    if len(common) == 0:
        hint = ""
        for c in prot.obs.columns:
            if prot.obs[c].astype(str).isin(set(d_ids)).any():
                hint = f" prot.obs[{c!r}] holds donor IDs of `donors`: pass prot_sample_key={c!r}."
                break
        raise ValueError(
            f"No donor in common between `donors` ({len(d_ids)} donors, e.g. {d_ids[:4].tolist()}) and `prot` "
            f"({len(p_ids)} samples, e.g. {p_ids[:4].tolist()}).{hint} Check that both use the same donor IDs "
            "(or pass prot_sample_key= naming the column of prot.obs with the donor ID)."
        )
    rna_only = [x for x in d_ids if x not in set(common)]
    prot_only = [x for x in p_ids if x not in set(common)]
    if rna_only or prot_only:
        warn(f"join_proteomics: {len(common)} donors in common; {len(rna_only)} donors only in the cell data "
             f"{rna_only[:10]}{' ...' if len(rna_only) > 10 else ''}, {len(prot_only)} only in the proteomics "
             f"{prot_only[:10]}{' ...' if len(prot_only) > 10 else ''}. They are kept (NaN in the other modality); "
             "see mdata.uns['join'].", stacklevel=2)
    rna = donors.copy()
    rna.obs_names = d_ids
    p = prot.copy()
    p.obs["sample_id"] = p.obs_names.astype(str)
    p.obs_names = p_ids
    # donor metadata: donors.obs first, completed by prot.obs for donors without cells
    meta = rna.obs.copy()
    order = list(dict.fromkeys(list(d_ids) + list(p_ids)))
    meta = meta.reindex(order)
    for c in p.obs.columns:
        if c in ("sample_id", prot_sample_key):
            continue
        if c in meta.columns:
            fill = p.obs[c].reindex(order)
            if isinstance(meta[c].dtype, pd.CategoricalDtype):
                cats = list(meta[c].cat.categories) + [x for x in pd.unique(fill.dropna()) if x not in set(meta[c].cat.categories)]
                meta[c] = pd.Categorical(meta[c].astype(object).where(meta[c].notna(), fill.astype(object)), categories=cats)
            else:
                meta[c] = meta[c].where(meta[c].notna(), fill)
    try:
        opts = md.set_options(pull_on_update=False)
    except (ValueError, TypeError, KeyError):  # older/newer mudata without this option
        opts = _null()
    with opts:
        mdata = md.MuData({"rna": rna, "prot": p})
    mdata.obs = mdata.obs.reindex(mdata.obs_names)
    meta = meta.reindex(mdata.obs_names)
    for c in meta.columns:
        col = _writable(meta[c])
        mdata.obs[c] = col.values if isinstance(col.dtype, pd.api.extensions.ExtensionDtype) else col.to_numpy()
    mdata.uns["join"] = {"n_common": int(len(common)), "rna_only": list(rna_only), "prot_only": list(prot_only),
                         "prot_sample_key": prot_sample_key or "index"}
    return mdata


def _writable(col: pd.Series) -> pd.Series:
    """A donor column that a donor present in one modality only left partly missing, in a dtype h5mu can write.

    Booleans with gaps (e.g. a flag of the cell data, NaN for a donor without cells) become pandas' nullable
    ``boolean``, numbers with gaps ``float``; an object column of bools and NaN could not be written to h5mu.
    """
    if col.dtype != object:
        return col
    vals = col.dropna()
    if len(vals) and all(isinstance(v, (bool, np.bool_)) for v in vals):
        return col.astype("boolean")
    if len(vals) and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                         for v in vals):
        return col.astype(float)
    return col


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ----------------------------------------------------------------------------------------------
# cross_modal_associations
# ----------------------------------------------------------------------------------------------
def _residualise(Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Residuals of the columns of ``Y`` on ``[1, Z]`` (OLS)."""
    D = np.hstack([np.ones((Y.shape[0], 1)), Z])
    beta, *_ = np.linalg.lstsq(D, Y, rcond=None)
    return Y - D @ beta


def _block_corr(A: np.ndarray, B: np.ndarray, Z: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Correlation of every column of A with every column of B (complete rows), partial on Z."""
    if method == "spearman":
        A = stats.rankdata(A, axis=0)
        B = stats.rankdata(B, axis=0)
    n = A.shape[0]
    k = Z.shape[1]
    if k:
        Ra, Rb = _residualise(A, Z), _residualise(B, Z)
    else:
        Ra, Rb = A - A.mean(0), B - B.mean(0)
    na = np.sqrt((Ra**2).sum(0))
    nb = np.sqrt((Rb**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (Ra.T @ Rb) / np.outer(na, nb)
    r[~np.isfinite(r)] = np.nan
    r = np.clip(r, -1.0, 1.0)
    return r, n, k


def _pvalues(r: np.ndarray, df: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        t = r * np.sqrt(df / np.maximum(1.0 - r**2, 1e-300))
        p = 2 * stats.t.sf(np.abs(t), df)
    p[(df < 1) | np.isnan(r)] = np.nan
    return p


def _pick(names: pd.Index, wanted, what: str) -> np.ndarray:
    if wanted is None:
        return np.arange(len(names))
    if isinstance(wanted, str):
        wanted = [wanted]
    wanted = list(wanted)
    pos = names.get_indexer(wanted)
    bad = [w for w, p in zip(wanted, pos) if p < 0]
    if bad:
        # allow a cell type or gene-set name as a prefix/suffix ("Classical monocyte" -> all its features)
        extra = []
        for w in bad:
            hit = np.flatnonzero(names.str.startswith(f"{w}{SEP}") | names.str.endswith(f"{SEP}{w}"))
            if hit.size == 0:
                raise KeyError(f"{what} {w!r} not found. Available (first 10 of {len(names)}): "
                               f"{names[:10].tolist()}.")
            extra.extend(hit.tolist())
        pos = np.concatenate([pos[pos >= 0], np.asarray(extra, dtype=int)])
    return np.unique(pos)


def _obs_frame(mdata, key: str) -> pd.Series:
    if key in mdata.obs.columns:
        return mdata.obs[key]
    for mod in ("rna", "prot"):
        if key in mdata[mod].obs.columns:
            return mdata[mod].obs[key].reindex(mdata.obs_names)
    cols = sorted(set(mdata.obs.columns) | set(mdata["rna"].obs.columns) | set(mdata["prot"].obs.columns))
    raise KeyError(f"Column {key!r} not found in mdata.obs nor in the modalities' obs. Available: {cols}.")


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X, dtype=float)


def _donor_design(mdata, donors: pd.Index, formula: str, variables: Sequence[str]):
    """The design's model matrix over ``donors`` (rows in that order) from the shared design engine."""
    from .._design import build_design

    frame = pd.DataFrame({c: _obs_frame(mdata, c).reindex(donors) for c in variables}, index=donors)
    key = "donor" if "donor" not in frame.columns else "__donor__"
    frame.insert(0, key, np.asarray(donors, dtype=object))
    # no hypothesis is tested here: a custom one keeps build_design from checking levels or slopes
    dz = build_design(frame, sample_key=key, design=formula, contrast={"Intercept": 1.0}, min_per_level=0,
                      where="mdata.obs")
    return dz.matrix(donors), dz.columns


def cross_modal_associations(
    mdata,
    *,
    method: Literal["spearman", "pearson"] = "spearman",
    covariates: Sequence[str] = (),
    design: str | None = None,
    rna_features: Sequence[str] | str | None = None,
    proteins: Sequence[str] | str | None = None,
    min_donors: int = 6,
) -> pd.DataFrame:
    """Association of every donor-level RNA feature with every protein, across donors.

    Correlations use the pairwise complete donors (NaN in either feature excluded) and are computed as
    matrix products over blocks of features that share their missing-value pattern (not one test per
    pair). With ``covariates`` or ``design``, the partial correlation: ranks (Spearman) or values (Pearson) are
    residualised by OLS on the design matrix (intercept + the covariates' columns, dummies for categories; the
    same model matrix as the other donor-level tests, :func:`immunomood._design.build_design`), the residuals
    correlated, and the t test uses ``n - 2 - k`` degrees of freedom (``k`` design columns besides the
    intercept, counted by rank among the donors of each pair).

    Parameters
    ----------
    mdata
        MuData from :func:`immunomood.tl.join_proteomics` (modalities ``"rna"`` and ``"prot"``).
    method
        ``"spearman"`` or ``"pearson"``.
    covariates
        Columns of ``mdata.obs`` (or of a modality's obs) to adjust for, e.g. ``("age", "sex")`` (the design
        ``~ age + sex``). Donors without a value of a covariate are left out of every test, with a warning that
        names them (also in ``result.attrs["donors_excluded"]``).
    design
        Instead of ``covariates``: a formula on the same donor-level columns (``formulaic``, as in R), e.g.
        ``"~ age + sex"`` or ``"~ age * sex"``; the associations are partial on all its columns (the intercept
        takes the mean). A donor with a missing value in a design column is an error naming the donors (none is
        dropped silently); subset the MuData or fill the column first.
    rna_features
        Features of ``mdata["rna"]`` to test (names, or a cell type / gene-set name selecting all its features);
        ``None``: all.
    proteins
        Proteins (``mdata["prot"].var_names``) to test; ``None``: all.
    min_donors
        Pairs with fewer pairwise complete donors get ``NaN`` (the t approximation is meaningless for 3 donors)
        and are left out of the multiple-testing correction.

    Returns
    -------
    DataFrame with one row per pair: ``rna_feature``, ``protein``, ``estimate`` (correlation; a partial
    correlation when ``covariates`` or ``design`` are given), ``pvalue``, ``padj`` (Benjamini-Hochberg over the
    table), ``n`` (donors used), ``df`` (degrees of freedom of the test, ``n - 2 - k``), ``partial_on`` (what the
    correlation is adjusted for, comma-separated: the covariates, or the design's model-matrix columns except the
    intercept, e.g. ``"age, sex[T.M]"``; empty for a plain correlation), sorted by ``pvalue``. ``attrs`` holds
    ``method``, ``covariates``, ``design`` (the formula, ``""`` without one), ``partial_on`` (as a list) and
    ``donors_excluded``.
    """
    check_choice("method", method, ("spearman", "pearson"))
    min_donors = check_int("min_donors", min_donors, min=3,
                           fix="A correlation test needs at least 3 donors (6 or more to mean something).")
    if not hasattr(mdata, "mod"):
        raise TypeError(f"`mdata` must be a MuData with modalities 'rna' and 'prot', got {type(mdata).__name__}. "
                        "Build it with im.tl.join_proteomics.")
    for mod in ("rna", "prot"):
        if mod not in mdata.mod:
            raise KeyError(f"mdata has no modality {mod!r} (modalities: {list(mdata.mod)}); build it with "
                           "im.tl.join_proteomics.")
    if isinstance(covariates, str):
        covariates = [covariates]
    covariates = list(covariates)
    if not all(isinstance(c, str) for c in covariates):
        raise TypeError(f"`covariates` must be a list of column names, got {covariates!r}.")
    if design is not None:
        if covariates:
            raise ValueError("Pass either `covariates` or `design` (a formula such as '~ age + sex'), not both.")
        if not isinstance(design, str) or "~" not in design:
            raise ValueError(f"design must be a formula string such as '~ age + sex', got {design!r}.")
    rna, prot = mdata["rna"], mdata["prot"]
    donors = rna.obs_names.intersection(prot.obs_names)
    if min_donors > len(donors):
        raise ValueError(f"`min_donors` must be an integer <= {len(donors)}, got {min_donors}: only {len(donors)} "
                         "donors have both modalities, so no association could be estimated. Lower min_donors "
                         "(or add donors).")
    ia = _pick(pd.Index(rna.var_names), rna_features, "RNA feature")
    ib = _pick(pd.Index(prot.var_names), proteins, "Protein")
    excluded: list[str] = []
    formula = design
    if design is not None:
        from .._design import _formula_variables

        variables = _formula_variables(design)
        for c in variables:
            _obs_frame(mdata, c)  # KeyError naming the column, before any work
    elif covariates:
        variables = covariates
        cov = pd.DataFrame({c: _obs_frame(mdata, c).reindex(donors).to_numpy() for c in covariates}, index=donors)
        ok_rows = cov.notna().all(1).to_numpy()
        if not ok_rows.all():
            excluded = [str(d) for d in donors[~ok_rows]]
            warn(f"cross_modal_associations: {len(excluded)} donor(s) have no value of the covariates {covariates} "
                 f"and are left out of every test: {excluded[:20]}{' ...' if len(excluded) > 20 else ''} "
                 "(result.attrs['donors_excluded']).", stacklevel=3)
        donors = donors[ok_rows]
        formula = "~ " + " + ".join(covariates)
    A = _dense(rna[donors].X)[:, ia]
    B = _dense(prot[donors].X)[:, ib]
    partial_on: list[str] = []
    if formula is not None:
        if len(donors) < 3:
            raise ValueError(f"Only {len(donors)} donors have both modalities and covariates; need at least 3 "
                             "(more for a meaningful test).")
        Xd, names = _donor_design(mdata, donors, formula, variables)
        Z_all = Xd[:, [j for j, n in enumerate(names) if n != "Intercept"]]
        partial_on = list(covariates) if design is None else [n for n in names if n != "Intercept"]
    else:
        Z_all = np.zeros((len(donors), 0))
    if len(donors) < 3:
        raise ValueError(f"Only {len(donors)} donors have both modalities{' and covariates' if covariates else ''}; "
                         "need at least 3 (more for a meaningful test).")
    Ma, Mb = ~np.isnan(A), ~np.isnan(B)
    pa, inv_a = np.unique(Ma.T, axis=0, return_inverse=True)
    pb, inv_b = np.unique(Mb.T, axis=0, return_inverse=True)
    inv_a, inv_b = np.ravel(inv_a), np.ravel(inv_b)
    R = np.full((A.shape[1], B.shape[1]), np.nan)
    N = np.zeros_like(R, dtype=int)
    DF = np.zeros_like(R)
    for i, ma in enumerate(pa):
        ca = np.flatnonzero(inv_a == i)
        for j, mb in enumerate(pb):
            cb = np.flatnonzero(inv_b == j)
            rows = ma & mb
            n = int(rows.sum())
            N[np.ix_(ca, cb)] = n
            Z = Z_all[rows]
            k = np.linalg.matrix_rank(np.hstack([np.ones((n, 1)), Z])) - 1 if Z.shape[1] and n else 0
            if n - 2 - k < 1 or n < min_donors:
                continue
            r, _, _ = _block_corr(A[np.ix_(rows, ca)], B[np.ix_(rows, cb)], Z, method)
            R[np.ix_(ca, cb)] = r
            DF[np.ix_(ca, cb)] = n - 2 - k
    if np.isnan(R).all():
        n_max = int(N.max()) if N.size else 0
        raise ValueError(
            f"No association is estimable: every RNA feature x protein pair has at most {n_max} donors with values "
            f"in both (and in the covariates), below min_donors={min_donors} or too few for {Z_all.shape[1]} "
            "covariate column(s). Lower min_donors, drop covariates, or select features measured in more donors "
            "(rna_features=, proteins=)."
        )
    P = _pvalues(R, DF)
    if method == "spearman":
        # the t approximation explodes as |rho| -> 1 with few donors (rho = -1 at n = 6 gave p ~ 1e-24); no rank
        # correlation of n donors can have a two-sided p below 2 / n! (the exact permutation minimum)
        with np.errstate(invalid="ignore"):
            floor = np.exp(np.log(2.0) - special.gammaln(N.astype(float) + 1.0))
        P = np.where(np.isnan(P), P, np.maximum(P, floor))
    res = pd.DataFrame({
        "rna_feature": np.repeat(np.asarray(rna.var_names[ia], dtype=object), len(ib)),
        "protein": np.tile(np.asarray(prot.var_names[ib], dtype=object), len(ia)),
        "estimate": R.ravel(),
        "pvalue": P.ravel(),
        "n": N.ravel(),
        "df": DF.ravel(),
    })
    res["padj"] = bh(res["pvalue"].to_numpy())
    # what the estimate is: a plain correlation, or a partial one adjusted for these covariates
    res["partial_on"] = ", ".join(partial_on)
    res = res[["rna_feature", "protein", "estimate", "pvalue", "padj", "n", "df", "partial_on"]]
    res = res.sort_values("pvalue", na_position="last", kind="mergesort").reset_index(drop=True)
    res.attrs["method"] = method
    res.attrs["covariates"] = list(covariates)
    res.attrs["design"] = design or ""
    res.attrs["partial_on"] = partial_on
    res.attrs["donors_excluded"] = excluded
    return res


# ----------------------------------------------------------------------------------------------
# biomarker_panel
#: Below this many donors in the smaller condition, biomarker_panel warns that its AUC means little.
MIN_DONORS_PER_CLASS_PANEL = 10
# ----------------------------------------------------------------------------------------------
@dataclass
class BiomarkerResult:
    """Result of :func:`biomarker_panel`.

    Attributes
    ----------
    auc
        Mean over repeats of the out-of-fold ROC AUC (each repeat predicts every donor once).
    auc_ci
        2.5th and 97.5th percentiles of the per-repeat AUCs (variability due to the CV splits; it does not
        include the sampling variability of the donors).
    features
        One row per feature: ``selection_frequency`` (share of the fitted models with a non-zero coefficient),
        ``mean_coefficient`` (mean over models of the standardised coefficient, zeros included), sorted.
    predictions
        One row per donor: ``condition``, ``label`` (1 = case), ``probability`` (mean out-of-fold probability of
        being a case over repeats) and ``probability_sd``.
    auc_per_repeat
        AUC of each repeat.
    oof
        Out-of-fold probabilities, donors x repeats (for ROC curves).
    params
        Parameters and the case / reference levels.
    """

    auc: float
    auc_ci: tuple[float, float]
    features: pd.DataFrame
    predictions: pd.DataFrame
    auc_per_repeat: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    oof: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    params: dict = field(repr=False, default_factory=dict)


def _feature_matrix(mdata, features) -> tuple[pd.DataFrame, list[str]]:
    """Donors (in every selected modality) x features, names prefixed ``"<modality>:"``."""
    mods = list(mdata.mod)
    sel: dict[str, list[str] | None] = {}
    if features is None:
        sel = {m: None for m in mods}
    elif isinstance(features, str):
        features = [features]
    if isinstance(features, Mapping):
        for m, names in features.items():
            if m not in mdata.mod:
                raise KeyError(f"Modality {m!r} not in mdata (modalities: {mods}).")
            sel[m] = None if names is None else ([names] if isinstance(names, str) else list(names))
    elif features is not None:
        for f in features:
            if f in mdata.mod:
                sel[f] = None
                continue
            if ":" in f and f.split(":", 1)[0] in mdata.mod:
                m, name = f.split(":", 1)
            else:
                hits = [m for m in mods if f in mdata[m].var_names]
                if not hits:
                    raise KeyError(f"Feature {f!r} not found in any modality ({mods}); pass a modality name, a "
                                   "feature name, '<modality>:<feature>' or a dict {modality: [features]}.")
                m, name = hits[0], f
            if sel.get(m, []) is None:
                continue
            sel.setdefault(m, []).append(name)
    frames = []
    for m, names in sel.items():
        ad_ = mdata[m]
        if names is not None:
            bad = [n for n in names if n not in ad_.var_names]
            if bad:
                raise KeyError(f"Features {bad} not found in mdata[{m!r}].var_names.")
            ad_ = ad_[:, names]
        frames.append(pd.DataFrame(_dense(ad_.X), index=ad_.obs_names.astype(str),
                                   columns=[f"{m}:{v}" for v in ad_.var_names]))
    common = frames[0].index
    for f in frames[1:]:
        common = common.intersection(f.index)
    X = pd.concat([f.loc[common] for f in frames], axis=1)
    return X, list(sel)


@doc_params(random_state=doc_random_state)
def biomarker_panel(
    mdata,
    *,
    condition_key: str,
    features: str | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    n_splits: int = 5,
    n_repeats: int = 20,
    random_state: int | None = 0,
    max_features: int = 10,
    C: float | Literal["cv"] = 0.5,
    mofa: bool = False,
) -> BiomarkerResult:
    """Repeated stratified cross-validation of a penalised (L1) logistic classifier of the condition.

    Every step that learns from data runs inside each training fold (a scikit-learn ``Pipeline``): median
    imputation of missing values, standardisation, univariate selection of the ``max_features`` features
    with the largest ANOVA F, and an L1-penalised logistic regression (liblinear) with a fixed inverse
    penalty ``C`` (default 0.5 on standardised features: a few features survive with tens of donors), or,
    with ``C="cv"``, ``C`` chosen by an inner 3-fold CV on each training fold (``LogisticRegressionCV``,
    ROC AUC; about 20 times slower, and noisy with few donors).
    No information from the held-out donors reaches the model.

    Parameters
    ----------
    mdata
        MuData from :func:`immunomood.tl.join_proteomics` (or any MuData with donors as observations).
    condition_key
        Column (of ``mdata.obs`` or a modality's obs) with exactly two conditions; the first category (or the
        first in sorted order) is the reference, the other the case.
    features
        Which features: ``None`` (all modalities), a modality name (``"prot"``), a list of modality names
        and/or feature names (``"prot:C5"`` or ``"C5"``), or a dict ``{{modality: [features]}}``. Only donors
        present in every selected modality are used.
    n_splits, n_repeats
        Folds and repeats of :class:`sklearn.model_selection.RepeatedStratifiedKFold`.
    {random_state}
    max_features
        Features kept by the univariate filter inside each fold.
    C
        Inverse L1 penalty (fixed), or ``"cv"`` to choose it inside each training fold.
    mofa
        Add the factors of a multi-omics factor analysis (``muon.tl.mofa``, needs ``mofapy2``) as candidate
        features. MOFA is unsupervised and fitted once on all donors (it never sees the condition).

    Returns
    -------
    :class:`BiomarkerResult` with ``auc``, ``auc_ci``, ``features``, ``predictions`` (out-of-fold, per donor).
    """
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    check_str("condition_key", condition_key)
    n_splits = check_int("n_splits", n_splits, min=2, fix="Cross-validation needs at least 2 folds (usually 5).")
    n_repeats = check_int("n_repeats", n_repeats, min=1, fix="Usually 10-50 repeats.")
    max_features = check_int("max_features", max_features, min=1, fix="Usually 5-20.")
    if isinstance(C, str):
        if C != "cv":
            raise ValueError(f"`C` must be a positive number or 'cv', got {C!r}. Pass e.g. C=0.5, or C='cv'.")
    else:
        C = check_number("C", C, min=0, min_inclusive=False, fix="Pass e.g. C=0.5, or C='cv'.")
    check_random_state(random_state)
    mofa = check_bool("mofa", mofa)
    if not hasattr(mdata, "mod"):
        raise TypeError(f"`mdata` must be a MuData (im.tl.join_proteomics), got {type(mdata).__name__}.")
    seed = resolve_random_state(random_state)
    X, mods = _feature_matrix(mdata, features)
    cond = _obs_frame(mdata, condition_key).reindex(X.index)
    keep = cond.notna().to_numpy()
    X, cond = X.loc[keep], cond[keep]
    levels = list(cond.cat.categories) if isinstance(cond.dtype, pd.CategoricalDtype) else sorted(pd.unique(cond))
    levels = [l for l in levels if (cond == l).any()]
    if len(levels) != 2:
        raise ValueError(f"biomarker_panel needs exactly two conditions in {condition_key!r}, found {levels}.")
    y = (cond == levels[1]).to_numpy().astype(int)
    n_min = int(min(y.sum(), (1 - y).sum()))
    if n_min < n_splits:
        raise ValueError(f"The smaller condition has {n_min} donors, fewer than n_splits={n_splits}; lower n_splits.")
    if n_min < MIN_DONORS_PER_CLASS_PANEL:
        warn(
            f"biomarker_panel: the smaller condition has only {n_min} donors. With so few donors the cross-validated "
            f"AUC is very uncertain and the selected features unstable; treat the panel as exploratory "
            f"(at least {MIN_DONORS_PER_CLASS_PANEL} donors per condition are advised)."
        )
    if mofa:
        try:
            import mofapy2  # noqa: F401
            import muon as mu
        except ImportError as e:
            raise ImportError("mofa=True needs mofapy2: pip install mofapy2 (or immunomood[mofa]).") from e
        import os
        import tempfile

        m2 = mdata[X.index].copy()
        with tempfile.TemporaryDirectory() as tmp:
            mu.tl.mofa(m2, n_factors=5, seed=seed, verbose=False, use_var=None, use_obs="intersection",
                       scale_views=True, outfile=os.path.join(tmp, "mofa.hdf5"))
        fac = pd.DataFrame(m2.obsm["X_mofa"], index=m2.obs_names.astype(str),
                           columns=[f"mofa:Factor{i + 1}" for i in range(m2.obsm["X_mofa"].shape[1])])
        X = pd.concat([X, fac.reindex(X.index)], axis=1)
    X = X.loc[:, X.notna().any(axis=0)]
    if X.shape[1] == 0:
        raise ValueError("No feature with values left for biomarker_panel.")
    k = int(min(max_features, X.shape[1]))
    inner_min = int(min(np.bincount(y))) - int(np.ceil(n_min / n_splits))
    l1 = {"l1_ratio": 1.0} if _has_l1_ratios() else {"penalty": "l1"}
    if isinstance(C, str) and C != "cv":
        raise ValueError(f"C must be a positive number or 'cv', got {C!r}.")
    if C == "cv" and inner_min >= 3:
        import inspect

        extra = {"l1_ratios": (1.0,)} if _has_l1_ratios() else {"penalty": "l1"}
        if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters:
            extra["use_legacy_attributes"] = False
        clf = LogisticRegressionCV(Cs=np.logspace(-2, 2, 9), cv=StratifiedKFold(3, shuffle=True, random_state=seed),
                                   solver="liblinear", scoring="roc_auc", random_state=seed, **extra)
        c_used = "inner CV"
    else:
        c_used = 0.5 if C == "cv" else float(C)  # too few donors for an inner CV: documented fallback
        if c_used <= 0:
            raise ValueError(f"C must be positive, got {C!r}.")
        clf = LogisticRegression(C=c_used, solver="liblinear", random_state=seed, **l1)
    pipe = Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("select", SelectKBest(f_classif, k=k)),
        ("model", clf),
    ])
    cv = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    Xv = X.to_numpy(dtype=float)
    oof = np.full((len(y), n_repeats), np.nan)
    coef_sum = np.zeros(X.shape[1])
    sel_count = np.zeros(X.shape[1])
    n_fits = 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence / constant-feature chatter of tiny folds
        for i, (tr, te) in enumerate(cv.split(Xv, y)):
            rep = i // n_splits
            pipe.fit(Xv[tr], y[tr])
            oof[te, rep] = pipe.predict_proba(Xv[te])[:, 1]
            support = pipe.named_steps["select"].get_support()
            coef = np.zeros(X.shape[1])
            coef[support] = pipe.named_steps["model"].coef_.ravel()
            coef_sum += coef
            sel_count += coef != 0
            n_fits += 1
    aucs = np.array([roc_auc_score(y, oof[:, r]) for r in range(n_repeats)])
    feats = pd.DataFrame({"selection_frequency": sel_count / n_fits, "mean_coefficient": coef_sum / n_fits},
                         index=X.columns)
    feats = feats[feats["selection_frequency"] > 0].sort_values(
        ["selection_frequency", "mean_coefficient"], ascending=[False, False], key=lambda s: s.abs()
        if s.name == "mean_coefficient" else s)
    preds = pd.DataFrame({"condition": cond.astype(str).to_numpy(), "label": y,
                          "probability": oof.mean(1), "probability_sd": oof.std(1)}, index=X.index)
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return BiomarkerResult(
        auc=float(aucs.mean()), auc_ci=(float(lo), float(hi)), features=feats, predictions=preds,
        auc_per_repeat=aucs, oof=pd.DataFrame(oof, index=X.index, columns=[f"repeat{r}" for r in range(n_repeats)]),
        params={"condition_key": condition_key, "reference": str(levels[0]), "case": str(levels[1]),
                "n_splits": n_splits, "n_repeats": n_repeats, "random_state": seed, "max_features": k,
                "C": c_used, "modalities": mods, "n_donors": int(len(y)), "n_features": int(X.shape[1]),
                "mofa": bool(mofa)},
    )


def _has_l1_ratios() -> bool:
    """scikit-learn >= 1.8 deprecates ``penalty=`` in favour of ``l1_ratio(s)``."""
    import inspect

    from sklearn.linear_model import LogisticRegression

    import sklearn

    major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
    return (major, minor) >= (1, 8) and "l1_ratio" in inspect.signature(LogisticRegression).parameters
