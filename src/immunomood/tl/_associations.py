"""Cross-modal associations: every donor-level RNA feature with every protein (vectorised, with covariates)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy import special, stats

from .._stats import bh
from .._utils import (
    check_choice,
    check_int,
    check_str,
    warn,
)
from ._donor_data import SEP, dense, obs_frame

__all__ = ["cross_modal_associations"]


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
    bad = [w for w, p in zip(wanted, pos, strict=True) if p < 0]
    if bad:
        # allow a cell type or gene-set name as a prefix/suffix ("Classical monocyte" -> all its features)
        extra = []
        for w in bad:
            hit = np.flatnonzero(names.str.startswith(f"{w}{SEP}") | names.str.endswith(f"{SEP}{w}"))
            if hit.size == 0:
                raise KeyError(f"{what} {w!r} not found. Available (first 10 of {len(names)}): {names[:10].tolist()}.")
            extra.extend(hit.tolist())
        pos = np.concatenate([pos[pos >= 0], np.asarray(extra, dtype=int)])
    return np.unique(pos)


def _donor_design(mdata, donors: pd.Index, formula: str, variables: Sequence[str]):
    """The design's model matrix over ``donors`` (rows in that order) from the shared design engine."""
    from .._design import build_design

    frame = pd.DataFrame({c: obs_frame(mdata, c).reindex(donors) for c in variables}, index=donors)
    key = "donor" if "donor" not in frame.columns else "__donor__"
    frame.insert(0, key, np.asarray(donors, dtype=object))
    # no hypothesis is tested here: a custom one keeps build_design from checking levels or slopes
    dz = build_design(
        frame, sample_key=key, design=formula, contrast={"Intercept": 1.0}, min_per_level=0, where="mdata.obs"
    )
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
    key_added: str = "cross_modal_associations",
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
    key_added
        Key of ``mdata.uns`` where the result is stored.

    Returns
    -------
    DataFrame with one row per pair: ``rna_feature``, ``protein``, ``estimate`` (correlation; a partial
    correlation when ``covariates`` or ``design`` are given), ``pvalue``, ``padj`` (Benjamini-Hochberg over the
    table), ``n`` (donors used), ``df`` (degrees of freedom of the test, ``n - 2 - k``), ``partial_on`` (what the
    correlation is adjusted for, comma-separated: the covariates, or the design's model-matrix columns except the
    intercept, e.g. ``"age, sex[T.M]"``; empty for a plain correlation), sorted by ``pvalue``. ``attrs`` holds
    ``method``, ``covariates``, ``design`` (the formula, ``""`` without one), ``partial_on`` (as a list) and
    ``donors_excluded``. Also written to ``mdata.uns[key_added]``: ``{"params": {...}, "results": DataFrame}``
    (the package's result convention; ``params`` holds the ``attrs`` and ``min_donors``).
    """
    check_choice("method", method, ("spearman", "pearson"))
    check_str("key_added", key_added)
    min_donors = check_int(
        "min_donors", min_donors, min=3, fix="A correlation test needs at least 3 donors (6 or more to mean something)."
    )
    if not hasattr(mdata, "mod"):
        raise TypeError(
            f"`mdata` must be a MuData with modalities 'rna' and 'prot', got {type(mdata).__name__}. "
            "Build it with im.tl.join_proteomics."
        )
    for mod in ("rna", "prot"):
        if mod not in mdata.mod:
            raise KeyError(
                f"mdata has no modality {mod!r} (modalities: {list(mdata.mod)}); build it with im.tl.join_proteomics."
            )
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
        raise ValueError(
            f"`min_donors` must be an integer <= {len(donors)}, got {min_donors}: only {len(donors)} "
            "donors have both modalities, so no association could be estimated. Lower min_donors "
            "(or add donors)."
        )
    ia = _pick(pd.Index(rna.var_names), rna_features, "RNA feature")
    ib = _pick(pd.Index(prot.var_names), proteins, "Protein")
    excluded: list[str] = []
    formula = design
    if design is not None:
        from .._design import formula_variables

        variables = formula_variables(design)
        for c in variables:
            obs_frame(mdata, c)  # KeyError naming the column, before any work
    elif covariates:
        variables = covariates
        cov = pd.DataFrame({c: obs_frame(mdata, c).reindex(donors).to_numpy() for c in covariates}, index=donors)
        ok_rows = cov.notna().all(1).to_numpy()
        if not ok_rows.all():
            excluded = [str(d) for d in donors[~ok_rows]]
            warn(
                f"cross_modal_associations: {len(excluded)} donor(s) have no value of the covariates {covariates} "
                f"and are left out of every test: {excluded[:20]}{' ...' if len(excluded) > 20 else ''} "
                "(result.attrs['donors_excluded']).",
                stacklevel=3,
            )
        donors = donors[ok_rows]
        formula = "~ " + " + ".join(covariates)
    A = dense(rna[donors].X)[:, ia]
    B = dense(prot[donors].X)[:, ib]
    partial_on: list[str] = []
    if formula is not None:
        if len(donors) < 3:
            raise ValueError(
                f"Only {len(donors)} donors have both modalities and covariates; need at least 3 "
                "(more for a meaningful test)."
            )
        Xd, names = _donor_design(mdata, donors, formula, variables)
        Z_all = Xd[:, [j for j, n in enumerate(names) if n != "Intercept"]]
        partial_on = list(covariates) if design is None else [n for n in names if n != "Intercept"]
    else:
        Z_all = np.zeros((len(donors), 0))
    if len(donors) < 3:
        raise ValueError(
            f"Only {len(donors)} donors have both modalities{' and covariates' if covariates else ''}; "
            "need at least 3 (more for a meaningful test)."
        )
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
    res = pd.DataFrame(
        {
            "rna_feature": np.repeat(np.asarray(rna.var_names[ia], dtype=object), len(ib)),
            "protein": np.tile(np.asarray(prot.var_names[ib], dtype=object), len(ia)),
            "estimate": R.ravel(),
            "pvalue": P.ravel(),
            "n": N.ravel(),
            "df": DF.ravel(),
        }
    )
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
    mdata.uns[key_added] = {
        "params": {
            "method": method,
            "covariates": list(covariates),
            "design": design or "",
            "partial_on": list(partial_on),
            "donors_excluded": list(excluded),
            "min_donors": int(min_donors),
        },
        "results": res.copy(),
    }
    return res
