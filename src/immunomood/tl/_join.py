"""Join of the donor view with plasma proteomics in a MuData indexed by donor."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData

from .._utils import (
    check_adata,
    warn,
)
from ._donor_data import null_context, writable

__all__ = ["join_proteomics"]


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
        raise ValueError(
            f"Duplicated donor IDs in `donors`: {dup}. `donors` must have one row per donor (use im.tl.donor_view)."
        )
    if prot_sample_key is not None:
        if prot_sample_key not in prot.obs.columns:
            raise KeyError(
                f"prot_sample_key {prot_sample_key!r} not found in prot.obs. "
                f"Available: {list(map(str, prot.obs.columns))}."
            )
        if prot.obs[prot_sample_key].isna().any():
            raise ValueError(
                f"prot.obs[{prot_sample_key!r}] has {int(prot.obs[prot_sample_key].isna().sum())} "
                "missing donor IDs; remove those samples first."
            )
        ids = prot.obs[prot_sample_key].astype(str)
    else:
        ids = pd.Series(prot.obs_names.astype(str), index=prot.obs_names)
    if ids.duplicated().any():
        dup = ids[ids.duplicated(keep=False)]
        ex = dup.unique()[:5].tolist()
        # columns that tell the visits apart
        g = prot.obs.loc[dup.index].groupby(dup.to_numpy(), observed=True)
        varying = [c for c in prot.obs.columns if c != prot_sample_key and (g[c].nunique(dropna=False) > 1).any()][:5]
        hint = ""
        if varying:
            c = varying[0]
            v = prot.obs.loc[dup.index, c].dropna().astype(str).iloc[0]
            hint = (
                f" The samples differ in {varying}: choose one visit, e.g. "
                f"`prot = prot[prot.obs[{c!r}] == {v!r}].copy()`,"
            )
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
        warn(
            f"join_proteomics: {len(common)} donors in common; {len(rna_only)} donors only in the cell data "
            f"{rna_only[:10]}{' ...' if len(rna_only) > 10 else ''}, {len(prot_only)} only in the proteomics "
            f"{prot_only[:10]}{' ...' if len(prot_only) > 10 else ''}. They are kept (NaN in the other modality); "
            "see mdata.uns['join'].",
            stacklevel=2,
        )
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
                cats = list(meta[c].cat.categories) + [
                    x for x in pd.unique(fill.dropna()) if x not in set(meta[c].cat.categories)
                ]
                meta[c] = pd.Categorical(
                    meta[c].astype(object).where(meta[c].notna(), fill.astype(object)), categories=cats
                )
            else:
                meta[c] = meta[c].where(meta[c].notna(), fill)
    try:
        opts = md.set_options(pull_on_update=False)
    except (ValueError, TypeError, KeyError):  # older/newer mudata without this option
        opts = null_context()
    with opts:
        mdata = md.MuData({"rna": rna, "prot": p})
    mdata.obs = mdata.obs.reindex(mdata.obs_names)
    meta = meta.reindex(mdata.obs_names)
    for c in meta.columns:
        col = writable(meta[c])
        mdata.obs[c] = col.values if isinstance(col.dtype, pd.api.extensions.ExtensionDtype) else col.to_numpy()
    mdata.uns["join"] = {
        "n_common": int(len(common)),
        "rna_only": list(rna_only),
        "prot_only": list(prot_only),
        "prot_sample_key": prot_sample_key or "index",
    }
    return mdata
