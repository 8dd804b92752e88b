"""Donor-level differential testing: gene-set activity (precision-weighted set test on pseudobulk) and pseudobulk DESeq2.

The donor (more exactly: the ``sample_key`` level) is the unit of replication. Cells of one donor are not
independent replicates, so any test on per-cell values is badly anti-conservative; here every test is a model fitted
to one value per sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import special, stats

from .._design import Hypothesis, build_design, contrast_as_coef
from .._docs import doc_adata, doc_condition_key, doc_design, doc_gene_sets, doc_params, doc_sample_key
from .._limma import pool_set_variance, trigamma_inverse, voom_fry
from .._settings import logger
from .._stats import bh, ols, test_based_ci
from .._utils import check_adata, check_not_view, check_obs_key, match_genes, symbols_for_sets, warn
from .._utils import gene_symbols as _gene_symbols
from ._gene_sets import resolve_gene_sets
from ._pseudobulk import resolve_counts, sum_by_sample_group

__all__ = ["differential_activity", "differential_expression"]

PRIOR_COUNT = 0.5


# ----------------------------------------------------------------------------------------------
# pseudobulk -> logCPM -> gene-wise variances (limma-style moderation); designs: immunomood._design
# ----------------------------------------------------------------------------------------------
def filter_by_expr(counts: np.ndarray, min_n: int, *, min_count: float = 3.0, min_total: float = 4.5) -> np.ndarray:
    """edgeR ``filterByExpr``-like: CPM >= min_count / median library (in millions) in >= ``min_n`` samples.

    ``min_count=3`` (edgeR uses 10): low-count genes still carry information once the set score divides each gene
    by its posterior sd; on the simulator this kept calibration (0.048 of 248 null tests) and raised power.
    """
    lib = counts.sum(axis=1)
    med = np.median(lib[lib > 0]) if (lib > 0).any() else 1.0
    cutoff = min_count / med * 1e6
    cpm = counts / np.maximum(lib, 1)[:, None] * 1e6
    return ((cpm >= cutoff).sum(axis=0) >= min_n) & (counts.sum(axis=0) >= min_total)


def norm_factors(counts: np.ndarray) -> np.ndarray:
    """Median-of-ratios (DESeq/TMM-like) normalisation factors of the library sizes (geometric mean 1)."""
    lib = counts.sum(axis=1).astype(float)
    pos = (counts > 0).all(axis=0)
    if pos.sum() < 10 or (lib <= 0).any():
        return np.ones(counts.shape[0])
    lc = np.log(counts[:, pos] / lib[:, None])
    f = np.exp(np.median(lc - lc.mean(axis=0, keepdims=True), axis=1))
    return f / np.exp(np.mean(np.log(f)))


def log_cpm(counts: np.ndarray, eff_lib: np.ndarray) -> np.ndarray:
    """voom-style log2 counts per million, prior count 0.5."""
    return np.log2((counts + PRIOR_COUNT) / (eff_lib[:, None] + 1.0) * 1e6)


def squeeze_var(s2: np.ndarray, df: float, amean: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """limma ``squeezeVar``: empirical-Bayes posterior variances (prior trended on ``amean`` when given)."""
    post, d0, _ = _squeeze_var_prior(s2, df, amean)
    return post, d0


def _squeeze_var_prior(s2: np.ndarray, df: float, amean: np.ndarray | None = None):
    """:func:`squeeze_var` that also returns the (trended) prior variance ``s0`` of every gene."""
    s2 = np.maximum(s2, 1e-8)
    n = s2.size
    z = np.log(s2)
    e = z - special.digamma(df / 2) + np.log(df / 2)
    if amean is not None and n >= 20:
        from statsmodels.nonparametric.smoothers_lowess import lowess

        rng_a = float(np.ptp(amean)) if n else 0.0  # delta: interpolate between fits 1% of the range apart (speed)
        emean = lowess(e, amean, frac=0.5, it=0, delta=0.01 * rng_a, return_sorted=False)
    else:
        emean = np.full(n, e.mean())
    evar = np.sum((e - emean) ** 2) / max(n - 1, 1) - special.polygamma(1, df / 2)
    if n < 3 or evar <= 0:
        return np.exp(emean), np.inf, np.exp(emean)
    d0 = 2 * trigamma_inverse(float(evar))
    s0 = np.exp(emean + special.digamma(d0 / 2) - np.log(d0 / 2))
    return (d0 * s0 + df * s2) / (d0 + df), d0, s0


SET_MIN_TOTAL_PER_SAMPLE = 1.0  # set members: mean count per sample needed to enter a set test
SET_MIN_NONZERO = 0.5  # ... and nonzero in at least this share of the samples


def filter_set_members(
    counts: np.ndarray, *, min_total_per_sample: float = SET_MIN_TOTAL_PER_SAMPLE, min_nonzero: float = SET_MIN_NONZERO
) -> np.ndarray:
    """Lenient filter for gene-set members: enough total counts across all samples (not per arm).

    A set test pools genes, so a low-count member still carries information on the set's shift; it is down-weighted
    by its (large) variance instead of being dropped. Only genes that are almost never seen are left out: the
    logCPM of a gene with mostly zero counts sits on the prior-count floor and its variance says nothing.
    """
    n = counts.shape[0]
    return (counts.sum(axis=0) >= min_total_per_sample * n) & ((counts > 0).sum(axis=0) >= np.ceil(min_nonzero * n))


def set_scores(
    counts: np.ndarray,
    D: np.ndarray,
    members: Mapping[str, np.ndarray],
    *,
    min_n: int,
    weighting: str = "trend",
    lenient: bool = True,
) -> dict:
    """Donor-level set scores from pseudobulk counts (samples x genes) and a design ``D``.

    Genes: the edgeR-like filter (:func:`filter_by_expr`) for the variance trend and normalisation, plus, for set
    members, the lenient :func:`filter_set_members` (when ``lenient``). logCPM (voom-like, prior 0.5), per-gene OLS
    on ``D``, empirical-Bayes variances with a trend on mean expression (:func:`squeeze_var`).
    Score of a set per sample: weighted mean over its genes of centred logCPM, weights summing to 1;
    ``weighting="trend"`` (default): 1 / the trended prior variance at the gene's mean expression (voom-like
    precision weights: low-count genes, whose logCPM is dominated by sampling noise, count little, and the weights
    do not depend on the gene's own residuals, so they cannot select genes that happen to look quiet);
    ``"precision"``: 1 / posterior variance; ``"sd"``: 1 / posterior sd (limma ``fry`` with
    ``standardize="posterior.sd"``). On 30 simulated null cohorts (``benchmarks/bench_differential.py``) the share
    of p < 0.05 was 0.047 / 0.050 (300 / 1000 cells per donor) for ``"trend"``, 0.053 / 0.060 for
    ``"precision"``, 0.050 / 0.054 for ``"sd"``, with the same power at 1.1x within simulation error.
    The score is in log2 units, so the condition coefficient of ``score ~ D`` is the weighted mean log2 fold change.

    Returns a dict with ``kept`` (gene positions kept), and per set name: ``scores`` (per sample), ``cols`` (positions
    in ``kept`` of the set's genes), ``weights`` (summing to 1), ``lfc`` (unweighted mean coefficient); plus ``Y``
    (logCPM of the kept genes), ``B`` (coefficients), ``post``, ``s0`` (posterior and prior variances), ``d0``.
    """
    keep = filter_by_expr(counts, min_n)
    lib = counts.sum(axis=1)
    eff = lib * norm_factors(counts[:, keep] if keep.sum() >= 10 else counts)
    union = np.unique(np.concatenate([np.asarray(v, dtype=int) for v in members.values()] + [np.zeros(0, int)]))
    if lenient and union.size:
        extra = np.zeros_like(keep)
        extra[union] = filter_set_members(counts[:, union])
        keep = keep | extra
    kept = np.flatnonzero(keep)
    out = dict(kept=kept, scores={}, lfc={}, cols={}, weights={}, d0=np.nan)
    if kept.size == 0:
        return out
    Y = log_cpm(counts[:, kept], eff)
    B, s2, _, df = ols(D, Y)
    post, d0, s0 = _squeeze_var_prior(s2, df, Y.mean(axis=0))
    if weighting == "precision":
        w_all = 1.0 / post
    elif weighting == "sd":
        w_all = 1.0 / np.sqrt(post)
    elif weighting == "trend":
        w_all = 1.0 / s0
    else:
        raise ValueError(f"weighting must be 'precision', 'sd' or 'trend', got {weighting!r}.")
    pos = pd.Index(kept).get_indexer
    Yc = Y - Y.mean(axis=0, keepdims=True)
    for k, idx in members.items():
        p = pos(np.asarray(idx, dtype=int))
        cols = np.unique(p[p >= 0])
        if cols.size == 0:
            continue
        w = w_all[cols] / w_all[cols].sum()
        out["scores"][k] = Yc[:, cols] @ w
        out["lfc"][k] = float(B[1, cols].mean()) if B.shape[0] > 1 else np.nan
        out["cols"][k] = cols
        out["weights"][k] = w
    out.update(Y=Y, post=post, s0=s0, d0=d0, B=B)
    return out


# ----------------------------------------------------------------------------------------------
# the per-group computation shared by the test and the plot
# ----------------------------------------------------------------------------------------------
def _prepare(
    adata,
    *,
    sample_key,
    groupby,
    gene_sets,
    design,
    contrast,
    test,
    condition_key,
    reference,
    covariates,
    random_effect,
    min_cells,
    layer,
    gene_symbols,
    func="differential_activity",
):
    check_adata(adata)
    for key, what in [(sample_key, "sample_key column"), (groupby, "groupby column")]:
        check_obs_key(adata, key, what=what)
    D = build_design(
        adata.obs,
        sample_key=sample_key,
        design=design,
        contrast=contrast,
        test=test,
        condition_key=condition_key,
        reference=reference,
        covariates=covariates,
        random_effect=random_effect,
        reserved={"groupby": groupby},
    )
    sets = resolve_gene_sets(gene_sets)
    if not isinstance(min_cells, (int, np.integer)) or min_cells < 1:
        raise ValueError(f"`min_cells` must be a positive integer, got {min_cells!r}.")
    X, layer = resolve_counts(adata, layer, func=func, auto=True)
    symbols = symbols_for_sets(adata, gene_symbols, sets)
    members = {k: match_genes(symbols, v)[0] for k, v in sets.items()}
    if all(len(v) == 0 for v in members.values()):
        raise ValueError(
            f"None of the genes of the gene sets {list(sets)} is in adata (e.g. var_names {list(adata.var_names[:3])}). "
            "If var_names are Ensembl IDs, pass the symbol column with `gene_symbols=`."
        )
    grid, M = sum_by_sample_group(X, adata.obs, sample_key, groupby, func=func)  # tl.pseudobulk's core
    return dict(design=D, sets=sets, members=members, grid=grid, M=M, symbols=symbols, layer=layer)


def _arm_counts(tab: pd.DataFrame, h: Hypothesis) -> tuple[int, int]:
    """Samples at the case and reference levels of a level contrast (all samples and 0 otherwise)."""
    if h.kind != "contrast":
        return len(tab), 0
    v = tab[h.variable].to_numpy()
    return int((v == h.case).sum()), int((v == h.reference).sum())


def _min_n(D: np.ndarray, tab: pd.DataFrame, hyps: Sequence[Hypothesis]) -> int:
    """Smallest group for the expression filter: the smaller arm of a level contrast (edgeR's rule for two
    groups), else edgeR's ``filterByExpr`` rule for a general design, 1 / the largest leverage."""
    arms = [min(_arm_counts(tab, h)) for h in hyps if h.kind == "contrast"]
    if arms:
        return max(1, min(arms))
    u, _, _ = np.linalg.svd(D, full_matrices=False)
    hat = (u[:, : np.linalg.matrix_rank(D)] ** 2).sum(axis=1)
    return max(1, int(round(1.0 / hat.max())))


def _group_scores(P: dict, group, *, sample_key, groupby, min_cells):
    """Donor-level set scores of one group, the design rows and per-hypothesis vectors, or a reason why not."""
    grid, design = P["grid"], P["design"]
    in_group = grid[groupby].to_numpy() == group
    rows = np.flatnonzero(in_group & (grid["n_cells"].to_numpy() >= min_cells))
    left_out = grid.loc[in_group & (grid["n_cells"].to_numpy() < min_cells), [sample_key, "n_cells"]]
    samples = grid[sample_key].to_numpy()[rows]
    st = design.table.loc[samples]
    out = dict(
        samples=samples,
        tab=st,
        n_samples=len(samples),
        excluded=[f"{s!s} ({n} cells)" for s, n in zip(left_out[sample_key], left_out["n_cells"])],
    )
    if len(samples) == 0:
        out["reason"] = f"no sample with >= {min_cells} cells"
        return out
    D, vecs = design.subset(samples)
    hyp_reason = {}
    for h in design.hypotheses:
        if h.kind == "contrast" and min(_arm_counts(st, h)) < 2:
            nc, nr = _arm_counts(st, h)
            hyp_reason[h.name] = (
                f"fewer than 2 samples with >= {min_cells} cells in an arm ({nr} {h.reference!s}, {nc} {h.case!s})"
            )
        elif isinstance(vecs[h.name], str):
            hyp_reason[h.name] = vecs[h.name]
    testable = [h for h in design.hypotheses if h.name not in hyp_reason]
    out.update(hyp_reason=hyp_reason, vecs=vecs)
    if not testable:
        out["reason"] = "; ".join(dict.fromkeys(hyp_reason.values()))
        return out
    counts = P["M"][rows].toarray()
    S = set_scores(counts, D, P["members"], min_n=_min_n(D, st, testable))
    kept = S["kept"]
    for k, cols in S["cols"].items():
        out.setdefault("genes", {})[k] = [str(P["symbols"][kept[c]]) for c in cols]
    lfc = {}
    if "B" in S:
        for h in testable:
            cB = vecs[h.name] @ S["B"]
            lfc[h.name] = {k: float(cB[cols].mean()) for k, cols in S["cols"].items()}
    out.update(
        D=D, scores=S["scores"], lfc=lfc, d0=S["d0"], counts=counts, n_genes={k: len(v) for k, v in S["cols"].items()}
    )
    return out


def _fit_set(score: np.ndarray, D: np.ndarray, vector: np.ndarray, groups: np.ndarray | None):
    """The contrast ``vector @ beta`` of ``score ~ D``, its standard error and df (OLS, or a random intercept)."""
    if groups is None:
        B, s2, XtXi, df = ols(D, score[:, None])
        return float(vector @ B[:, 0]), float(np.sqrt(s2[0] * (vector @ XtXi @ vector))), df
    import statsmodels.api as sm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sm.MixedLM(score, D, groups=groups).fit(reml=True)
    p = D.shape[1]
    cov = np.asarray(res.cov_params())[:p, :p]
    var = float(vector @ cov @ vector)
    df = between_within_df(D, groups, vector)
    if not (np.isfinite(var) and var > 0):
        # random-intercept variance on the boundary (estimated ~0): statsmodels' covariance can have negative
        # diagonal entries; the model is then the OLS fit, so use its estimate and standard error (same df)
        B, s2, XtXi, _ = ols(D, score[:, None])
        return float(vector @ B[:, 0]), float(np.sqrt(s2[0] * (vector @ XtXi @ vector))), df
    return float(vector @ np.asarray(res.fe_params)), float(np.sqrt(var)), df


def between_within_df(D: np.ndarray, groups: np.ndarray, col: int | np.ndarray = 1) -> int:
    """Residual df of a contrast in a random-intercept model ("between-within" / containment rule).

    ``col``: a column of ``D`` or a contrast vector. A contrast whose columns are constant within every group
    (donor-level: repeated visits or pooled samples of one donor) is tested between groups: ``df = n_groups -
    rank of the between-group columns``. One that varies within groups (paired: both conditions in a donor;
    visit; time x responder) is tested within groups: ``df = n_samples - n_groups - rank of the within-group
    columns``. Using ``n_samples - p`` instead would count repeated samples of a donor as independent evidence
    for a donor-level effect. See :func:`immunomood._design.between_within_df`.
    """
    from .._design import between_within_df as _bw

    if np.ndim(col) == 0:
        v = np.zeros(D.shape[1])
        v[int(col)] = 1.0
    else:
        v = np.asarray(col, dtype=float)
    return _bw(D, groups, v)


def _fry_design(D: np.ndarray, vector: np.ndarray) -> tuple[np.ndarray, int, float]:
    """Design, tested column and sign for fry: a column of ``D`` when the contrast is one (as limma's
    ``contrast=<column>``), else ``D`` reparametrised so that column 0 is the contrast (limma's
    ``contrastAsCoef``, :func:`immunomood._design.contrast_as_coef`)."""
    nz = np.flatnonzero(np.abs(vector) > 1e-12)
    if nz.size == 1 and abs(abs(vector[nz[0]]) - 1.0) < 1e-12:
        return D, int(nz[0]), float(np.sign(vector[nz[0]]))
    return contrast_as_coef(D, vector), 0, 1.0


def _fry_rows(G: dict, P: dict, base: dict, vector: np.ndarray) -> list[dict]:
    """Rows of one group x hypothesis by limma-voom + fry (:func:`immunomood._limma.voom_fry`) on its pseudobulk."""
    Dt, col, sign = _fry_design(G["D"], vector)
    try:
        F = voom_fry(G["counts"], Dt, P["members"], contrast=col)
    except (ValueError, np.linalg.LinAlgError) as err:
        return [base | dict(gene_set=k, reason=f"voom + fry failed: {err}", n_genes=0) for k in P["sets"]]
    tab, coef, kidx = F["table"], F["coef"] * sign, F["kept_index"]
    rows = []
    for k in P["sets"]:
        ng = int(tab.loc[k, "NGenes"])
        if ng == 0:
            rows.append(
                base | dict(gene_set=k, n_genes=0, reason="no gene of the set passes filterByExpr in this group")
            )
            continue
        lfc = float(coef[kidx[k]].mean())
        rows.append(
            base
            | dict(
                gene_set=k,
                effect=lfc,
                statistic=sign * float(tab.loc[k, "statistic"]),
                pvalue=float(tab.loc[k, "PValue"]),
                pvalue_mixed=float(tab.loc[k, "PValue.Mixed"]),
                lfc_mean=lfc,
                n_genes=ng,
                df=int(tab.loc[k, "df"]),
                reason="",
                _num=sign * float(tab.loc[k, "numerator"]),
                _den2=float(tab.loc[k, "denominator2"]),
            )
        )
    return rows


def _pool_rows(rows: list[dict]) -> None:
    """method="fry_pooled": per set and hypothesis, borrow the variance ratio across the groups where it was tested
    (in place)."""
    by_set: dict = {}
    for r in rows:
        if "_num" in r:
            by_set.setdefault((r["gene_set"], r.get("contrast", "")), []).append(r)
    for rs in by_set.values():
        t, df, p = pool_set_variance(
            [r["_num"] for r in rs], [r["_den2"] for r in rs], [r["n_genes"] for r in rs], [r["df"] for r in rs]
        )
        for r, ti, di, pi in zip(rs, t, df, p):
            r.update(statistic=float(ti), df=float(di), pvalue=float(pi))


@doc_params(
    adata=doc_adata,
    sample_key=doc_sample_key,
    gene_sets=doc_gene_sets,
    design=doc_design,
    condition_key=doc_condition_key,
)
def differential_activity(
    adata: AnnData,
    *,
    condition_key: str | None = None,
    sample_key: str,
    groupby: str,
    gene_sets: str | Mapping[str, Sequence[str]] = "complement",
    reference: str | None = None,
    covariates: Sequence[str] = (),
    design: str | None = None,
    contrast=None,
    test=None,
    random_effect: str | None = None,
    method: Literal["fry_pooled", "fry", "score"] | None = None,
    min_cells: int = 10,
    layer: str | None = None,
    gene_symbols: str | None = None,
    key_added: str = "differential_activity",
) -> pd.DataFrame:
    """Test gene-set activity between conditions per cell type, with the donor (sample) as the unit.

    Three self-contained set tests on pseudobulk (one summed count profile per sample and cell type; samples with
    fewer than ``min_cells`` cells of the type are left out), chosen by ``method``:

    - ``"fry_pooled"`` (the default, ``method=None``, without ``random_effect``): limma-voom + ``fry`` (below), with
      the variance ratio of each set's mean borrowed from the same set in the other cell types tested;
    - ``"fry"``: limma-voom + ``fry`` exactly as R limma computes it;
    - ``"score"`` (the default with ``random_effect``, the only method that fits one): a precision-weighted set
      score per sample, t-tested by OLS or by a mixed model; the only one with a confidence interval.

    Which method ran is in the ``method`` column of the result and in ``uns[key_added]["params"]["method"]``.
    On real donors (onek1k, 40 healthy donors, random 4v4 / 8v8 / 20v20 splits; ``benchmarks/bench_differential.py
    --real``, 140 null and 90 power splits per size, see ``docs/tour.md``) ``"fry_pooled"`` was calibrated and at
    least as powerful as R limma-voom + fry at every effect and split size; ``"score"`` was calibrated but less
    powerful. fry drops set members that fail edgeR's ``filterByExpr``, so in shallow groups fewer sets are tested
    than with ``"score"`` (whose lenient member filter keeps low-count genes).

    The ``"score"`` method, per group (cell type):

    1. sum raw counts per sample (:func:`immunomood.tl.pseudobulk`);
    2. keep genes expressed in enough samples (edgeR ``filterByExpr`` rule, ``min_count=3``) and, for gene-set
       members only, also genes with enough counts over all samples (a mean of >= 1 count per sample, non-zero in
       >= half of them): a set test pools its genes, so a low-count member still informs it once it is
       down-weighted (step 4) instead of dropped; normalise library sizes (median-of-ratios, TMM-like) and take
       log2 counts per million with a prior count of 0.5 (as voom);
    3. fit ``logCPM ~ condition + covariates`` per gene and moderate the residual variances by empirical Bayes
       (limma's ``squeezeVar``, prior trended on mean expression);
    4. for each gene set, a per-sample score = weighted mean over the set's kept genes of centred logCPM, with
       voom-like precision weights 1 / (trended variance at the gene's mean expression), so that noisy low-count
       genes count little and precise genes much; the score is in log2 units;
    5. fit ``score ~ condition + covariates`` by OLS (t-test of the condition coefficient, residual df = samples -
       parameters), or, with ``random_effect``, a linear mixed model with a random intercept per level
       (statsmodels ``MixedLM``, REML; Wald statistic referred to a t distribution with the same df).

    Inter-gene correlation is kept inside each sample's score, and the samples are the replicates, so the test is
    calibrated whatever the correlation between genes; the precision weights are where its power over a t-test of
    donor-mean per-cell scores comes from. On the cohort simulator it matches an oracle that knows the planted genes
    and their true variances (``benchmarks/bench_differential.py``).

    Paired designs (each donor measured in both conditions, e.g. before/after stimulation): ``sample_key`` must be
    the donor x condition sample (condition and covariates must be constant within a sample), and the pairing goes
    in ``covariates=("donor",)`` (a paired analysis by fixed donor effects, best for few donors) or
    ``random_effect="donor"`` (a random intercept per donor, for many donors or repeated visits).

    Parameters
    ----------
    {adata}
    {condition_key}
    {sample_key}
        Each sample must belong to one condition (and one value of every design column).
    groupby
        Column of ``adata.obs`` with the cell types (or any grouping) tested separately.
    {gene_sets}
    reference
        Reference level of ``condition_key``; default: the first category (or the first level in sorted order).
    covariates
        With ``condition_key``: sample-level columns of ``adata.obs`` to adjust for (numeric or categorical).
    {design}
    random_effect
        Column of ``adata.obs`` grouping samples of one donor (repeated visits, pooled samples, pairs), for any
        design. The set score is then fitted by a linear mixed model with a random intercept per group
        (statsmodels ``MixedLM``, REML) and each contrast is t-tested with "between-within" degrees of freedom:
        groups minus between-group parameters for a donor-level contrast (condition over visits), samples minus
        groups minus within-group parameters for one that varies within donors (paired conditions, visit,
        time x responder) (``df`` column).
    method
        ``None`` (default): ``"fry_pooled"``, or ``"score"`` when ``random_effect`` is given (fry has no random
        effect). ``"score"``: the precision-weighted set score above. ``"fry"``: limma-voom + ``fry`` as in R
        (a port that matches R limma 3.54 / edgeR 3.40 to relative 1e-6, checked by
        ``tests/tl/test_fry_reference.py``), per group on the same pseudobulk: edgeR ``filterByExpr`` with the
        design (defaults: 10 counts at the median library size, 15 in total), ``y[keep, , keep.lib.sizes=FALSE]``,
        TMM ``calcNormFactors``, ``voom`` weights (R's ``lowess`` of sqrt-sd on mean log-count, span 0.5),
        weighted least-squares effects (``.lmEffects``), fry's robust posterior-sd standardisation (``squeezeVar``
        prior from ``fitFDist``, no trend, not robust: fry's defaults), the directional p-value on the residual
        df (``pvalue``, two-sided) and the non-directional one (``pvalue_mixed``). Set members that fail
        ``filterByExpr`` leave the set. As in R, fry's p-value with voom weights depends on the order of the samples
        (the residual basis of each gene's weighted QR; on onek1k, reordering changed p by a median 1%, at most 30%); samples are in the order of
        the ``sample_key`` categories (sorted when the column is not categorical).
        ``random_effect`` is not available with ``"fry"`` (use ``covariates`` for a fixed donor effect).
        ``"fry_pooled"`` (not a limma method; experimental): fry, with the variance ratio of each set's mean
        (``n_genes`` x fry's squared denominator) moderated towards the same set's ratio in the other groups, with
        half their residual df as prior df (:func:`immunomood._limma.pool_set_variance`); ``df`` becomes
        fractional, ``pvalue_mixed`` stays fry's. On onek1k (``benchmarks/bench_differential.py --variants``, 60
        random splits per size) its false-positive rate was that of fry (0.057 / 0.056 / 0.064 at 4v4 / 8v8 /
        20v20 vs 0.059 / 0.057 / 0.063) and its power at least fry's at every effect and size (25 splits found
        only by it, 6 only by fry). On cells (``--real``, 30 splits, all four cell types in each call) its
        false-positive rate was 0.081 / 0.073 / 0.067 (R limma-voom + fry 0.082 / 0.070 / 0.070) and its power at
        least R fry's at every point (1.1x: 0.34 / 0.73 / 0.90 vs 0.14 / 0.47 / 0.87); pooled with 110 more null
        and 60 more power splits (140 / 90 in all): false-positive rate 0.065 / 0.064 / 0.062 (R 0.067 / 0.065 /
        0.067), power at least R's at every effect and size, which made it the default. It assumes a set's
        gene-gene correlation is alike across the groups tested.
    min_cells
        Minimum number of cells of a sample in a group for that sample to enter the group's test. Samples left
        out are named in the ``samples_excluded`` column and in a warning.
    layer
        Layer with raw counts; default: ``layers["counts"]`` when present, else ``X`` if it holds raw counts.
    gene_symbols
        Column of ``adata.var`` with gene symbols (found automatically for Ensembl ``var_names``).
    key_added
        Key under which results are stored in ``adata.uns``.

    Returns
    -------
    DataFrame with one row per group x gene set: ``group``, ``gene_set``, ``effect`` (log2 fold change of the
    set, case minus reference), ``ci_low``, ``ci_high`` (95%), ``statistic`` (t), ``pvalue``, ``padj``
    (Benjamini-Hochberg over the whole table), ``n_case``, ``n_reference`` (samples), ``method`` (the method that
    ran, in words), and also ``lfc_mean`` (unweighted mean log2 fold change), ``n_genes``, ``df``, ``reason`` (why a
    row is NaN: too few samples or genes in that group; a warning names them) and ``samples_excluded`` (samples of
    the group left out for having fewer than ``min_cells`` cells of it, with their cell counts, e.g.
    ``"D7 (4 cells), D9 (0 cells)"``; empty when none). With ``"score"``: ``effect`` is the precision-weighted
    mean log2 fold change of the set's genes, with the weights of the test, so ``effect / (ci width)`` matches
    ``statistic``. With ``"fry"`` and ``"fry_pooled"``: ``effect`` and ``lfc_mean`` are the mean over the set's
    kept genes of the voom-weighted log2 fold changes (per unit for a continuous ``test``), ``ci_low`` /
    ``ci_high`` the test-based 95% interval ``effect +- t_0.975(df) x |effect / statistic|`` (fry gives no standard
    error; this interval excludes 0 exactly when ``pvalue < 0.05``), ``statistic`` is fry's t, ``df`` its residual df (fractional with
    ``"fry_pooled"``: the residual df plus the prior df borrowed from the other groups), and ``pvalue_mixed`` is
    added (fry's non-directional p-value, "genes of the set change in either direction"; not pooled).
    Then ``contrast`` (what the row tests, e.g. ``"condition: MDD vs control"``, ``"hamd (per unit)"``) and
    ``n_samples`` (samples in the group's model); ``n_case`` / ``n_reference`` count the samples at the two levels
    of a level contrast (for a continuous test or an interaction: ``n_samples`` and 0). With several contrasts
    the table has one block of rows per contrast and ``padj`` is over all of them.
    Also written to ``adata``:

    - ``uns[key_added]["results"]``: the DataFrame;
    - ``uns[key_added]["scores"]``: donor-level set scores of the ``"score"`` method (long table: sample, group,
      gene_set, condition, score) used by :func:`immunomood.pl.differential_activity`, whatever ``method`` ran;
    - ``uns[key_added]["params"]``: the parameters, with ``method`` and ``method_description`` (the method
      that ran) and ``method_requested`` (``"default"`` or the value passed).
    """
    check_adata(adata)
    check_not_view(adata, func="differential_activity")
    if method not in (None, "fry_pooled", "fry", "score"):
        raise ValueError(
            f"method must be None (the default: 'fry_pooled', or 'score' with random_effect), "
            f"'fry_pooled', 'fry' (limma-voom + fry) or 'score' (the set score), got {method!r}."
        )
    requested = method
    if method is None:
        method = "score" if random_effect is not None else "fry_pooled"
        if random_effect is not None:
            logger.info(
                "differential_activity: random_effect=%r given, so the default method is 'score' (its mixed "
                "model); fry and fry_pooled have no random effect",
                random_effect,
            )
    if method != "score" and random_effect is not None:
        raise ValueError(
            f"method={method!r} has no random effect (random_effect={random_effect!r}); use method='score' with "
            f"random_effect, or method='fry' with covariates=({random_effect!r},) for a fixed donor effect."
        )
    P = _prepare(
        adata,
        sample_key=sample_key,
        groupby=groupby,
        gene_sets=gene_sets,
        design=design,
        contrast=contrast,
        test=test,
        condition_key=condition_key,
        reference=reference,
        covariates=covariates,
        random_effect=random_effect,
        min_cells=min_cells,
        layer=layer,
        gene_symbols=gene_symbols,
    )
    dz = P["design"]
    if method == "fry":
        method_name = "limma-voom + fry (filterByExpr, TMM, voom weights, posterior-sd standardisation)"
    elif method == "fry_pooled":
        method_name = "limma-voom + fry, set variance ratio borrowed across groups (half prior weight)"
    else:
        method_name = "precision-weighted set score on pseudobulk logCPM; " + (
            f"MixedLM random intercept ({random_effect})" if random_effect else "OLS t-test"
        )
    shown = dz.hypotheses[0].variable if dz.hypotheses[0].variable in dz.table.columns else None
    rows, score_rows, skipped, excluded = [], [], [], []
    groups = list(pd.unique(P["grid"][groupby]))
    for group in groups:
        G = _group_scores(P, group, sample_key=sample_key, groupby=groupby, min_cells=min_cells)
        if G["excluded"]:
            excluded.append(f"{group!s}: {', '.join(G['excluded'])}")
        if "reason" in G:
            skipped.append(f"{group!s} ({G['reason']})")
        if "scores" in G:
            labels = G["tab"][shown].astype(str).to_numpy() if shown is not None else np.full(len(G["samples"]), "")
            for k in P["sets"]:
                if k in G["scores"]:
                    score_rows += [
                        (smp, group, k, c, float(v)) for smp, c, v in zip(G["samples"], labels, G["scores"][k])
                    ]
        re_groups = G["tab"][random_effect].to_numpy() if random_effect else None
        for h in dz.hypotheses:
            n_case, n_ref = _arm_counts(G["tab"], h)
            base = dict(
                group=group,
                contrast=h.name,
                n_case=n_case,
                n_reference=n_ref,
                n_samples=G["n_samples"],
                method=method_name,
                samples_excluded=", ".join(G["excluded"]),
            )
            why = G.get("hyp_reason", {}).get(h.name) or (G.get("reason") if "scores" not in G else None)
            if why:
                rows += [base | dict(gene_set=k, reason=why, n_genes=0) for k in P["sets"]]
                continue
            vec = G["vecs"][h.name]
            if method in ("fry", "fry_pooled"):
                rows += _fry_rows(G, P, base, vec)
                continue
            for k in P["sets"]:
                if k not in G["scores"]:
                    rows.append(
                        base | dict(gene_set=k, reason="no gene of the set is expressed in this group", n_genes=0)
                    )
                    continue
                try:
                    coef, se, df = _fit_set(G["scores"][k], G["D"], vec, re_groups)
                except Exception as err:  # noqa: BLE001 - a failed mixed model fit becomes a NaN row with its reason
                    rows.append(base | dict(gene_set=k, reason=f"model fit failed: {err}", n_genes=G["n_genes"][k]))
                    continue
                if not (np.isfinite(coef) and np.isfinite(se) and se > 0):
                    rows.append(
                        base
                        | dict(
                            gene_set=k,
                            n_genes=G["n_genes"][k],
                            reason=f"standard error not estimable (coef {coef}, se {se})",
                        )
                    )
                    continue
                t = coef / se
                q = stats.t.ppf(0.975, df)
                # the score is a weighted mean of centred logCPM: the contrast is a weighted mean log2FC
                rows.append(
                    base
                    | dict(
                        gene_set=k,
                        effect=coef,
                        ci_low=coef - q * se,
                        ci_high=coef + q * se,
                        statistic=t,
                        pvalue=2 * stats.t.sf(abs(t), df),
                        lfc_mean=G["lfc"][h.name].get(k, np.nan),
                        n_genes=G["n_genes"][k],
                        df=df,
                        reason="",
                    )
                )
    if method == "fry_pooled":
        _pool_rows(rows)
    cols = [
        "group",
        "gene_set",
        "effect",
        "ci_low",
        "ci_high",
        "statistic",
        "pvalue",
        "padj",
        "n_case",
        "n_reference",
        "method",
        "lfc_mean",
        "n_genes",
        "df",
        "reason",
        "samples_excluded",
        "contrast",
        "n_samples",
    ]
    if method != "score":
        cols.insert(cols.index("df") + 1, "pvalue_mixed")
    res = pd.DataFrame(rows).reindex(columns=cols)
    if method != "score":  # fry gives no interval: the test-based one, consistent with fry's t and df
        res["ci_low"], res["ci_high"] = test_based_ci(res["effect"], res["statistic"], res["df"])
    res["padj"] = bh(res["pvalue"].to_numpy())
    res["group"] = res["group"].astype(str)
    for c in ("n_genes", "n_case", "n_reference", "n_samples"):
        res[c] = res[c].fillna(0).astype(int)
    for c in ("reason", "samples_excluded", "contrast"):
        res[c] = res[c].fillna("").astype(str)
    if excluded:
        warn(
            f"differential_activity: samples left out of a group (fewer than min_cells={min_cells} cells of it; "
            f"column 'samples_excluded'): {'; '.join(excluded)}",
            stacklevel=3,
        )
    if skipped:
        warn(
            f"differential_activity: groups not tested (rows with NaN and a reason): {'; '.join(skipped)}", stacklevel=3
        )
    single = res.loc[(res["n_genes"] == 1) & res["pvalue"].notna(), ["group", "gene_set"]].drop_duplicates()
    if len(single) and method != "score":
        warn(
            "differential_activity: these sets keep a single gene after edgeR's filterByExpr, so their fry test is a "
            "one-gene test (on onek1k a bimodal gene made such a test anti-conservative, 0.11 at p < 0.05): "
            f"{', '.join(f'{g}/{k}' for g, k in single.itertuples(index=False))}. method='score' keeps low-count "
            "set members (n_genes column).",
            stacklevel=3,
        )
    h0 = dz.hypotheses[0]
    scores = pd.DataFrame(score_rows, columns=["sample", "group", "gene_set", "condition", "score"]).astype(
        {"sample": str, "group": str, "condition": str}
    )
    params = {
        "condition_key": condition_key if condition_key is not None else (h0.variable or ""),
        "sample_key": sample_key,
        "groupby": groupby,
        "case": "" if h0.case is None else str(h0.case),
        "reference": "" if h0.reference is None else str(h0.reference),
        "covariates": list(covariates) if isinstance(covariates, (list, tuple)) else [covariates],
        "random_effect": random_effect or "",
        "min_cells": int(min_cells),
        "gene_sets": gene_sets if isinstance(gene_sets, str) else "custom",
        "layer": "X" if P["layer"] is None else P["layer"],
        "method": method,
        "method_requested": "default" if requested is None else requested,
        "method_description": method_name,
        "design": dz.formula,
        "contrasts": [h.name for h in dz.hypotheses],
        "contrast_kinds": [h.kind for h in dz.hypotheses],
        "design_columns": list(dz.columns),
        "ci": "t interval of the score contrast"
        if method == "score"
        else "test-based (effect +- t quantile x |effect / statistic|): agrees with fry's p-value",
    }
    adata.uns[key_added] = {"params": params, "results": res, "scores": scores}
    logger.info(
        "differential_activity: %d tests, %d with padj < 0.05",
        res["pvalue"].notna().sum(),
        int((res["padj"] < 0.05).sum()),
    )
    return res


@doc_params(adata=doc_adata, sample_key=doc_sample_key, design=doc_design, condition_key=doc_condition_key)
def differential_expression(
    adata: AnnData,
    *,
    condition_key: str | None = None,
    sample_key: str,
    groupby: str,
    covariates: Sequence[str] = (),
    design: str | None = None,
    contrast=None,
    test=None,
    random_effect: str | None = None,
    genes: Sequence[str] | None = None,
    min_cells: int = 10,
    reference: str | None = None,
    layer: str | None = None,
    n_cpus: int = 1,
    n_anchor_genes: int | None = None,
    gene_symbols: str | None = None,
    key_added: str = "differential_expression",
) -> pd.DataFrame:
    """Pseudobulk DESeq2 (pydeseq2) per group, with the sample as the unit.

    Raw counts are summed per sample and group by :func:`immunomood.tl.pseudobulk` (samples with fewer than
    ``min_cells`` cells of the group are left out); per group, pydeseq2 fits the negative-binomial GLM on the design matrix of the study design (built once
    for all groups: the same columns, reference levels and contrast vectors in every group), and each requested
    contrast or continuous test is a Wald test of its contrast vector over the design's columns
    (``DeseqStats(contrast=<vector>)``). With a formula this gives the same numbers as pydeseq2 run directly with
    the formula and the level contrast (checked in ``tests/tl/test_expression_designs.py``).

    Parameters
    ----------
    {adata}
    {condition_key}
    {sample_key}
        Each sample must belong to one condition (and one value of every design column).
    groupby
        Column of ``adata.obs`` with the groups (cell types) tested separately.
    covariates
        With ``condition_key``: sample-level columns added to the design (``~ condition_key + covariates``).
    {design}
    random_effect
        Not available: DESeq2 has no random effect, and this function raises an error when it is given. For paired
        or repeated samples of a donor, put the donor in the design as a fixed effect
        (``design="~ donor + condition"``: the within-donor contrast), or use
        :func:`immunomood.tl.differential_activity` with ``random_effect``.
    genes
        Restrict the output to these genes (``var_names`` or gene symbols). The fit still uses every expressed
        gene (size factors, dispersion trend and independent filtering as in a full DESeq2 run), so p-values do
        not depend on which genes are requested; ``padj`` is DESeq2's over all genes of the group.
    min_cells
        Minimum cells of a sample in a group.
    reference
        With ``condition_key``: the reference condition level (default: first category).
    layer
        Layer with raw counts (default: ``layers["counts"]`` if present, else ``X``).
    n_cpus
        Processes used by pydeseq2.
    n_anchor_genes
        Quick approximation for large data: with ``genes``, fit only them plus this many most expressed genes of
        the group. Size factors and the dispersion trend then come from those genes, so p-values differ from a
        full fit (default ``None``: full fit).
    gene_symbols
        Column of ``adata.var`` with gene symbols (found automatically when ``var_names`` are Ensembl IDs).
    key_added
        Key under which the result is stored in ``adata.uns``.

    Returns
    -------
    DataFrame with one row per group x contrast x gene: ``group``, ``gene`` (``var_names``), ``log2fc`` (case vs
    reference for a level contrast; per unit of the column for a continuous ``test``; the contrast vector applied
    to the coefficients for an interaction or a dict), ``pvalue`` (DESeq2's Wald test), ``padj`` (DESeq2's:
    Benjamini-Hochberg with independent filtering, per group and contrast, as DESeq2 computes it; not over the
    whole table), ``base_mean``, ``symbol`` when the symbols differ from ``var_names`` (Ensembl IDs), then
    ``contrast`` (what the rows test, e.g. ``"condition: MDD vs control"``, ``"hamd (per unit)"``) and
    ``n_samples`` (samples in the group's model). Rows come in blocks of group x contrast. A group x contrast
    that cannot be tested (fewer than 2 samples with ``min_cells`` cells in an arm, a design column absent from
    the group's samples, a rank-deficient design there) has no rows, and a warning names it with the reason.
    Also written to ``adata``: ``uns[key_added]`` = ``{{"params": ..., "results": <the DataFrame>}}`` (the
    parameters: ``condition_key``, ``sample_key``, ``groupby``, ``covariates``, ``design``, ``contrasts``,
    ``contrast_kinds``, ``min_cells``, ``layer``, ``genes``, ``n_anchor_genes``).
    """
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    check_adata(adata)
    check_not_view(adata, func="differential_expression")
    if random_effect is not None:
        raise ValueError(
            f"differential_expression (DESeq2) has no random effect (random_effect={random_effect!r}). For paired "
            f"or repeated samples of a donor, put the donor in the design as a fixed effect, e.g. "
            f"design='~ {random_effect} + <condition>' (the within-donor contrast), or use "
            f"im.tl.differential_activity(..., random_effect={random_effect!r}) for gene sets."
        )
    for key, what in [(sample_key, "sample_key column"), (groupby, "groupby column")]:
        check_obs_key(adata, key, what=what)
    if not isinstance(min_cells, (int, np.integer)) or isinstance(min_cells, bool) or min_cells < 1:
        raise ValueError(f"`min_cells` must be a positive integer, got {min_cells!r}.")
    dz = build_design(
        adata.obs,
        sample_key=sample_key,
        design=design,
        contrast=contrast,
        test=test,
        condition_key=condition_key,
        reference=reference,
        covariates=covariates,
        reserved={"groupby": groupby},
    )
    X, layer = resolve_counts(adata, layer, func="differential_expression", auto=True)
    symbols = _gene_symbols(adata, gene_symbols)
    names = adata.var_names.astype(str)
    if genes is not None:
        genes, miss, resolved = list(dict.fromkeys(str(g) for g in genes)), [], []
        in_names = set(names)
        upper = pd.Series(np.asarray(names), index=pd.Index(symbols).str.upper())
        upper = upper[~upper.index.duplicated(keep="first")]
        for g in genes:
            if g in in_names:
                resolved.append(g)
            elif g.upper() in upper.index:
                resolved.append(str(upper[g.upper()]))
            else:
                miss.append(g)
        if miss:
            raise KeyError(
                f"genes not in adata.var_names nor in the gene symbols: {miss[:10]}{' ...' if len(miss) > 10 else ''}."
            )
        genes = list(dict.fromkeys(resolved))
    grid, M = sum_by_sample_group(
        X,
        adata.obs,
        sample_key,
        groupby,  # tl.pseudobulk's core
        func="differential_expression",
    )
    inf = DefaultInference(n_cpus=n_cpus)
    out, skipped = [], []
    for group in pd.unique(grid[groupby]):
        rows = np.flatnonzero((grid[groupby].to_numpy() == group) & (grid["n_cells"].to_numpy() >= min_cells))
        samples = grid[sample_key].to_numpy()[rows]
        if len(samples) == 0:
            skipped.append(f"{group!s} (no sample with >= {min_cells} cells)")
            continue
        st = dz.table.loc[samples]
        D, vecs = dz.subset(samples)
        testable = []
        for h in dz.hypotheses:
            n_case, n_ref = _arm_counts(st, h)
            if h.kind == "contrast" and min(n_case, n_ref) < 2:
                skipped.append(
                    f"{group!s} / {h.name} (fewer than 2 samples with >= {min_cells} cells in an arm: "
                    f"{n_ref} {h.reference!s}, {n_case} {h.case!s})"
                )
            elif isinstance(vecs[h.name], str):
                skipped.append(f"{group!s} / {h.name} ({vecs[h.name]})")
            else:
                testable.append(h)
        if not testable:
            continue
        counts = pd.DataFrame(
            np.round(M[rows].toarray()).astype(np.int64), index=[str(s) for s in samples], columns=names
        )
        counts = counts.loc[:, counts.sum(axis=0) > 0]
        if genes is not None and n_anchor_genes is not None:  # approximation: requested + most expressed genes
            top = set(counts.sum(axis=0).sort_values(ascending=False).index[:n_anchor_genes])
            counts = counts.loc[:, [g for g in counts.columns if g in set(genes) or g in top]]
        kept_cols = [c for c, k in zip(dz.columns, np.abs(dz.matrix(samples)).sum(axis=0) > 0) if k]
        dmat = pd.DataFrame(D, index=counts.index, columns=kept_cols)
        meta = st.copy()
        meta.index = counts.index
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dds = DeseqDataSet(counts=counts, metadata=meta, design=dmat, inference=inf, quiet=True)
            dds.deseq2()
        for h in testable:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = DeseqStats(dds, contrast=np.asarray(vecs[h.name], dtype=float), inference=inf, quiet=True)
                ds.summary()
            r = ds.results_df
            if genes is not None:
                r = r.reindex([g for g in genes if g in r.index])
            out.append(
                pd.DataFrame(
                    {
                        "group": str(group),
                        "gene": r.index.astype(str),
                        "log2fc": r["log2FoldChange"].to_numpy(),
                        "pvalue": r["pvalue"].to_numpy(),
                        "padj": r["padj"].to_numpy(),
                        "base_mean": r["baseMean"].to_numpy(),
                        "contrast": h.name,
                        "n_samples": len(samples),
                    }
                )
            )
    if skipped:
        warn(f"differential_expression: group / contrast not tested (no rows): {'; '.join(skipped)}", stacklevel=3)
    cols = ["group", "gene", "log2fc", "pvalue", "padj", "base_mean", "contrast", "n_samples"]
    if not out:
        res = pd.DataFrame(columns=cols)
    else:
        res = pd.concat(out, ignore_index=True)
        if not symbols.equals(pd.Index(names)):
            res.insert(
                cols.index("base_mean") + 1,
                "symbol",
                pd.Series(np.asarray(symbols), index=names).reindex(res["gene"]).to_numpy(),
            )
    h0 = dz.hypotheses[0]
    adata.uns[key_added] = {
        "params": {
            "condition_key": condition_key if condition_key is not None else (h0.variable or ""),
            "sample_key": sample_key,
            "groupby": groupby,
            "covariates": list(covariates) if isinstance(covariates, (list, tuple)) else [covariates],
            "design": dz.formula,
            "contrasts": [h.name for h in dz.hypotheses],
            "contrast_kinds": [h.kind for h in dz.hypotheses],
            "min_cells": int(min_cells),
            "layer": "X" if layer is None else layer,
            "genes": [] if genes is None else list(genes),
            "n_anchor_genes": -1 if n_anchor_genes is None else int(n_anchor_genes),
        },
        "results": res,
    }
    return res
