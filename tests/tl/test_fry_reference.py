"""``method="fry"`` of differential_activity reproduces R limma-voom + fry on real pseudobulk (relative 1e-6).

The reference is R itself (``Rscript`` with limma and edgeR): the same pseudobulk counts, design and gene sets are
written to a temporary folder and run through the standard pipeline
``filterByExpr(y, design)`` -> ``y[keep, , keep.lib.sizes=FALSE]`` -> ``calcNormFactors`` (TMM) -> ``voom`` ->
``fry(v, index, design, contrast=2)``, or ``contrast=<vector>`` for a contrast that is not one design column
(three-level factor: MDD vs BD with control as reference), and ``contrast=<column>`` for a continuous column
with a covariate. Skips with the reason when Rscript, limma, edgeR or statmod are missing, or
when the real data are absent. On Debian: ``apt-get install -y r-base-core r-bioc-limma r-bioc-edger r-cran-statmod``.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.realdata

R_SCRIPT = r"""
suppressPackageStartupMessages({library(limma); library(edgeR)})
d <- commandArgs(TRUE)[1]
counts <- as.matrix(read.csv(file.path(d, "counts.csv"), row.names = 1, check.names = FALSE))
design <- as.matrix(read.csv(file.path(d, "design.csv"), row.names = 1, check.names = FALSE))
sets <- read.csv(file.path(d, "sets.csv"), stringsAsFactors = FALSE)
index <- split(sets$gene, factor(sets$set, levels = unique(sets$set)))
y <- DGEList(counts)
keep <- filterByExpr(y, design)
y <- y[keep, , keep.lib.sizes = FALSE]
y <- calcNormFactors(y)
v <- voom(y, design)
contrast <- 2
if (file.exists(file.path(d, "contrast.csv"))) {
  contrast <- read.csv(file.path(d, "contrast.csv"))$weight
  if (length(contrast) == 1L) contrast <- as.integer(contrast)
}
res <- fry(v, index = index, design = design, contrast = contrast, sort = "none")
write.csv(res, file.path(d, "fry.csv"))
write.csv(data.frame(norm.factors = y$samples$norm.factors, lib.size = y$samples$lib.size),
          file.path(d, "samples.csv"))
write.csv(v$weights, file.path(d, "weights.csv"))
writeLines(rownames(y), file.path(d, "kept.txt"))
cat(as.character(packageVersion("limma")), as.character(packageVersion("edgeR")), "\n")
"""


def r_available() -> str | None:
    """None when Rscript with limma, edgeR and statmod runs here, else the reason it does not."""
    if shutil.which("Rscript") is None:
        return "Rscript not found (install R: apt-get install -y r-base-core r-bioc-limma r-bioc-edger r-cran-statmod)"
    check = "for (p in c('limma','edgeR','statmod')) if (!requireNamespace(p, quietly=TRUE)) cat(p, '')"
    out = subprocess.run(["Rscript", "-e", check], check=False, capture_output=True, text=True)
    if out.returncode != 0 or out.stdout.strip():
        return f"R packages missing: {out.stdout.strip() or out.stderr.strip()[:200]}"
    return None


def run_r_voom_fry(
    counts: pd.DataFrame, design: np.ndarray, sets: dict[str, list[str]], tmp: Path, contrast: int | np.ndarray = 2
) -> dict:
    """R limma-voom + fry on ``counts`` (samples x genes) -> fry table, norm factors, voom weights, kept genes.

    ``contrast``: R's 1-based column of ``design``, or a contrast vector (limma then uses ``contrastAsCoef``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"weight": np.atleast_1d(np.asarray(contrast, dtype=float))}).to_csv(tmp / "contrast.csv", index=False)
    counts.T.to_csv(tmp / "counts.csv")
    pd.DataFrame(design, index=counts.index, columns=[f"c{j}" for j in range(design.shape[1])]).to_csv(
        tmp / "design.csv"
    )
    pd.DataFrame([(k, g) for k, v in sets.items() for g in v], columns=["set", "gene"]).to_csv(
        tmp / "sets.csv", index=False
    )
    (tmp / "voom_fry.R").write_text(R_SCRIPT)
    out = subprocess.run(
        ["Rscript", str(tmp / "voom_fry.R"), str(tmp)], check=False, capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(f"Rscript failed: {out.stderr[-2000:]}")
    return {
        "table": pd.read_csv(tmp / "fry.csv", index_col=0),
        "samples": pd.read_csv(tmp / "samples.csv", index_col=0),
        "weights": pd.read_csv(tmp / "weights.csv", index_col=0),
        "kept": (tmp / "kept.txt").read_text().split(),
        "versions": out.stdout.strip(),
    }


def _pseudobulk(adata, mask, sample_key):
    """Summed counts of the cells in ``mask`` per sample (samples in order of appearance) x genes."""
    import scipy.sparse as sp

    sub = adata[mask]
    s = sub.obs[sample_key].astype(str).to_numpy()
    samples = list(dict.fromkeys(s))
    G = sp.csr_matrix(
        (np.ones(len(s)), (pd.Index(samples).get_indexer(s), np.arange(len(s)))), shape=(len(samples), len(s))
    )
    M = np.asarray((G @ sub.X).todense() if sp.issparse(sub.X) else G @ sub.X)
    return pd.DataFrame(np.round(M).astype(np.int64), index=samples, columns=adata.var_names.astype(str))


def _compare(py: dict, r: dict, counts: pd.DataFrame, sets: dict[str, list[str]]):
    genes = counts.columns
    kept_py = list(genes[py["keep"]])
    assert kept_py == r["kept"]
    np.testing.assert_allclose(py["norm_factors"], r["samples"]["norm.factors"].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(py["weights"].T, r["weights"].to_numpy(), rtol=1e-6)
    tr, tp = r["table"], py["table"].loc[list(sets)]
    np.testing.assert_array_equal(tp["NGenes"].to_numpy(), tr["NGenes"].to_numpy())
    ok = tr["NGenes"].to_numpy() > 0
    assert ok.sum() >= 3
    assert (tp["Direction"].to_numpy()[ok] == tr["Direction"].to_numpy()[ok]).all()
    np.testing.assert_allclose(tp["PValue"].to_numpy()[ok], tr["PValue"].to_numpy()[ok], rtol=1e-6)
    np.testing.assert_allclose(tp["PValue.Mixed"].to_numpy()[ok], tr["PValue.Mixed"].to_numpy()[ok], rtol=1e-6)
    return tp, tr


@pytest.fixture(scope="module")
def need_r():
    why = r_available()
    if why:
        pytest.skip(why)


def _sets_for(adata, rng, n_random=8, size=20):
    import immunomood as im

    sets = {}
    for name in (
        "complement_hallmark",
        "interferon_alpha",
        "interferon_gamma",
        "inflammatory",
        "tnfa_nfkb",
        "il6_jak_stat3",
    ):
        for k, v in im.tl.gene_sets(name).items():
            sets[k] = [g for g in v if g in set(adata.var_names)]
    for i in range(n_random):
        sets[f"random{i}"] = list(rng.choice(np.asarray(adata.var_names.astype(str)), size, replace=False))
    return sets


def test_clowess_matches_r_lowess(need_r, tmp_path):
    from immunomood._limma import clowess

    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=400), 1)  # ties, as voom's mean log-counts of low-count genes
    y = np.sin(x) + 0.3 * rng.standard_t(3, size=400)
    np.savetxt(tmp_path / "xy.csv", np.column_stack([x, y]), delimiter=",", fmt="%.17g")
    expr = (
        f"d <- read.csv('{tmp_path}/xy.csv', header=FALSE); l <- lowess(d[,1], d[,2], f=0.5); "
        f"write.table(sprintf('%.17g', l$y), '{tmp_path}/l.txt', row.names=FALSE, col.names=FALSE, quote=FALSE)"
    )
    subprocess.run(["Rscript", "-e", expr], check=True, capture_output=True)
    ry = np.loadtxt(tmp_path / "l.txt")
    _, py = clowess(x, y, f=0.5)
    np.testing.assert_allclose(py, ry, rtol=1e-10, atol=1e-12)


def test_fry_equals_r_onek1k_monocytes_20v20(need_r, data_dir, tmp_path):
    import anndata as ad

    from immunomood._limma import voom_fry

    a = ad.read_h5ad(Path(data_dir) / "onek1k" / "onek1k_40donors_4types.h5ad")
    counts = _pseudobulk(a, (a.obs["cell_type"] == "monoc").to_numpy(), "donor")
    rng = np.random.default_rng(20261201)
    case = rng.permutation(counts.shape[0])[: counts.shape[0] // 2]
    x = np.zeros(counts.shape[0])
    x[case] = 1
    design = np.column_stack([np.ones_like(x), x])
    sets = _sets_for(a, rng)
    r = run_r_voom_fry(counts, design, sets, tmp_path / "r")
    index = {k: counts.columns.get_indexer(v) for k, v in sets.items()}
    py = voom_fry(counts.to_numpy(), design, index)
    tp, _ = _compare(py, r, counts, sets)
    assert tp["PValue"].min() > 1e-4  # a random split of healthy donors: no set is strongly "different"


def test_fry_equals_r_kang2018_stim_paired(need_r, data_dir, tmp_path):
    """Kang 2018, CD14+ monocytes, interferon-beta stimulated vs control; paired by donor (fixed effect)."""
    import anndata as ad

    from immunomood._limma import voom_fry

    a = ad.read_h5ad(Path(data_dir) / "kang2018" / "kang2018_2donors_ctrl_stim.h5ad")
    counts = _pseudobulk(a, (a.obs["cluster_id"] == "CD14+ Monocytes").to_numpy(), "sample_id")
    tab = a.obs.groupby("sample_id", observed=True)[["group_id", "donor"]].first().loc[counts.index]
    stim = (tab["group_id"].astype(str) == "stim").to_numpy(float)
    donor = (tab["donor"].astype(str) == tab["donor"].astype(str).iloc[0]).to_numpy(float)
    rng = np.random.default_rng(7)
    sets = _sets_for(a, rng)
    index = {k: counts.columns.get_indexer(v) for k, v in sets.items()}
    for name, design in [
        ("unpaired", np.column_stack([np.ones(4), stim])),
        ("paired", np.column_stack([np.ones(4), stim, donor])),
    ]:
        r = run_r_voom_fry(counts, design, sets, tmp_path / name)
        py = voom_fry(counts.to_numpy(), design, index)
        tp, _ = _compare(py, r, counts, sets)
        ifn = tp.loc["interferon_alpha"]
        assert ifn["Direction"] == "Up" and ifn["PValue.Mixed"] < 0.05, name


def test_method_fry_of_differential_activity_equals_r(need_r, data_dir, tmp_path):
    """The public entry point: method="fry" gives R's p-values per group (onek1k, 8 vs 8 donors, 2 cell types)."""
    import anndata as ad

    import immunomood as im

    a = ad.read_h5ad(Path(data_dir) / "onek1k" / "onek1k_40donors_4types.h5ad")
    donors = sorted(a.obs["donor"].unique())
    rng = np.random.default_rng(11)
    pick = list(rng.choice(donors, 16, replace=False))
    a = a[a.obs["donor"].isin(pick).to_numpy() & a.obs["cell_type"].isin(["monoc", "bmem"]).to_numpy()].copy()
    a.obs["condition"] = pd.Categorical(
        np.where(a.obs["donor"].isin(pick[:8]), "case", "ctrl"), categories=["ctrl", "case"]
    )
    sets = {k: v for k, v in _sets_for(a, rng, n_random=4).items() if len(v) >= 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = im.tl.differential_activity(
            a,
            condition_key="condition",
            sample_key="donor",
            groupby="cell_type",
            gene_sets=sets,
            method="fry",
            min_cells=10,
        )
    for group in ("monoc", "bmem"):
        m = (a.obs["cell_type"] == group).to_numpy()
        counts = _pseudobulk(a, m, "donor")
        ncell = a.obs.loc[m, "donor"].astype(str).value_counts()
        # the package's sample order (sorted donor categories): with per-gene voom weights fry's residual basis,
        # hence its p-value, depends on the order of the samples, in R as here
        order = [str(d) for d in a.obs["donor"].astype("category").cat.categories]
        counts = counts.loc[[s for s in order if s in counts.index and ncell[s] >= 10]]
        x = np.isin(counts.index, pick[:8]).astype(float)
        design = np.column_stack([np.ones_like(x), x])
        r = run_r_voom_fry(counts, design, sets, tmp_path / group)["table"]
        sub = res[res["group"] == group].set_index("gene_set").loc[list(sets)]
        ok = r["NGenes"].to_numpy() > 0
        np.testing.assert_allclose(sub["pvalue"].to_numpy()[ok], r["PValue"].to_numpy()[ok], rtol=1e-6)
        np.testing.assert_allclose(sub["pvalue_mixed"].to_numpy()[ok], r["PValue.Mixed"].to_numpy()[ok], rtol=1e-6)
        up = np.where(r["Direction"].to_numpy()[ok] == "Up", 1, -1)
        assert (np.sign(sub["statistic"].to_numpy()[ok]) == up).all()


def _onek1k_for_designs(data_dir, seed):
    """onek1k monocytes + memory B, 40 donors: a random 3-level diagnosis (control / MDD / BD, 13-14 donors each)
    and a random continuous score, both donor-level."""
    import anndata as ad

    a = ad.read_h5ad(Path(data_dir) / "onek1k" / "onek1k_40donors_4types.h5ad")
    a = a[a.obs["cell_type"].isin(["monoc", "bmem"]).to_numpy()].copy()
    donors = list(a.obs["donor"].cat.categories)
    rng = np.random.default_rng(seed)
    dx = rng.permutation(np.repeat(["control", "MDD", "BD"], [13, 13, len(donors) - 26]))
    score = rng.normal(size=len(donors))
    a.obs["diagnosis"] = pd.Categorical(
        a.obs["donor"].map(dict(zip(donors, dx))).astype(str), categories=["control", "MDD", "BD"]
    )
    a.obs["score"] = a.obs["donor"].map(dict(zip(donors, score))).astype(float)
    a.obs["age"] = a.obs["age"].astype(float)
    return a, rng


def _group_counts(a, group, min_cells):
    """Pseudobulk of one cell type in the package's sample order (donor categories), samples with >= min_cells."""
    m = (a.obs["cell_type"] == group).to_numpy()
    counts = _pseudobulk(a, m, "donor")
    ncell = a.obs.loc[m, "donor"].astype(str).value_counts()
    order = [str(d) for d in a.obs["donor"].cat.categories]
    return counts.loc[[s for s in order if s in counts.index and ncell[s] >= min_cells]]


def test_fry_contrast_vector_equals_r(need_r, data_dir, tmp_path):
    """A contrast that is not one design column (BD vs MDD, control the reference: c(0, -1, 1)): our
    contrastAsCoef + voom_fry equals R's ``fry(v, index, design, contrast=c(0, -1, 1))``."""
    from immunomood._design import contrast_as_coef
    from immunomood._limma import voom_fry

    a, rng = _onek1k_for_designs(data_dir, 20261202)
    counts = _group_counts(a, "monoc", 10)
    dx = a.obs.groupby("donor", observed=True)["diagnosis"].first().astype(str).loc[counts.index].to_numpy()
    design = np.column_stack([np.ones(len(dx)), dx == "MDD", dx == "BD"]).astype(float)
    vec = np.array([0.0, -1.0, 1.0])
    sets = _sets_for(a, rng)
    r = run_r_voom_fry(counts, design, sets, tmp_path / "r", contrast=vec)
    index = {k: counts.columns.get_indexer(v) for k, v in sets.items()}
    py = voom_fry(counts.to_numpy(), contrast_as_coef(design, vec), index, contrast=0)
    _compare(py, r, counts, sets)
    # the same rows with the contrast's sign flipped (MDD vs BD) swap direction and keep the p-value
    flip = voom_fry(counts.to_numpy(), contrast_as_coef(design, -vec), index, contrast=0)["table"].loc[list(sets)]
    ok = r["table"]["NGenes"].to_numpy() > 0
    np.testing.assert_allclose(flip["PValue"].to_numpy()[ok], r["table"]["PValue"].to_numpy()[ok], rtol=1e-6)
    assert (flip["Direction"].to_numpy()[ok] != r["table"]["Direction"].to_numpy()[ok]).all()


def test_differential_activity_fry_three_levels_and_slope_equal_r(need_r, data_dir, tmp_path):
    """The public entry point with design=: every pairwise contrast of a 3-level factor (one column or not) and a
    continuous column with a covariate (``~ score + age``, test="score") give R's fry p-values per group."""
    import immunomood as im

    a, rng = _onek1k_for_designs(data_dir, 20261203)
    sets = {k: v for k, v in _sets_for(a, rng, n_random=4).items() if len(v) >= 2}
    pairs = [("diagnosis", "MDD", "control"), ("diagnosis", "BD", "control"), ("diagnosis", "BD", "MDD")]
    r_contrast = {pairs[0]: 2, pairs[1]: 3, pairs[2]: np.array([0.0, -1.0, 1.0])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res3 = im.tl.differential_activity(
            a,
            design="~ diagnosis",
            contrast=pairs,
            sample_key="donor",
            groupby="cell_type",
            gene_sets=sets,
            method="fry",
            min_cells=10,
        )
        res_c = im.tl.differential_activity(
            a,
            design="~ score + age",
            test="score",
            sample_key="donor",
            groupby="cell_type",
            gene_sets=sets,
            method="fry",
            min_cells=10,
        )
    assert res3["contrast"].nunique() == 3 and res_c["contrast"].nunique() == 1
    checked = 0
    for group in ("monoc", "bmem"):
        counts = _group_counts(a, group, 10)
        tab = a.obs.groupby("donor", observed=True)[["diagnosis", "score", "age"]].first().loc[counts.index]
        dx = tab["diagnosis"].astype(str).to_numpy()
        cases = [
            (
                res3,
                pairs[i],
                np.column_stack([np.ones(len(dx)), dx == "MDD", dx == "BD"]).astype(float),
                r_contrast[pairs[i]],
                f"diagnosis: {pairs[i][1]} vs {pairs[i][2]}",
            )
            for i in range(3)
        ]
        cases.append(
            (
                res_c,
                "score",
                np.column_stack([np.ones(len(dx)), tab["score"], tab["age"]]).astype(float),
                2,
                "score (per unit)",
            )
        )
        for res, key, design, contrast, label in cases:
            r = run_r_voom_fry(counts, design, sets, tmp_path / f"{group}_{checked}", contrast=contrast)["table"]
            sub = res[(res["group"] == group) & (res["contrast"] == label)].set_index("gene_set").loc[list(sets)]
            ok = r["NGenes"].to_numpy() > 0
            assert ok.sum() >= 3, (group, key)
            np.testing.assert_array_equal(sub["n_genes"].to_numpy()[ok], r["NGenes"].to_numpy()[ok])
            np.testing.assert_allclose(
                sub["pvalue"].to_numpy()[ok], r["PValue"].to_numpy()[ok], rtol=1e-6, err_msg=f"{group} {key}"
            )
            np.testing.assert_allclose(
                sub["pvalue_mixed"].to_numpy()[ok],
                r["PValue.Mixed"].to_numpy()[ok],
                rtol=1e-6,
                err_msg=f"{group} {key}",
            )
            up = np.where(r["Direction"].to_numpy()[ok] == "Up", 1, -1)
            assert (np.sign(sub["statistic"].to_numpy()[ok]) == up).all(), (group, key)
            # the test-based CI excludes 0 exactly when p < 0.05
            excl = (sub["ci_low"].to_numpy()[ok] > 0) | (sub["ci_high"].to_numpy()[ok] < 0)
            assert (excl == (sub["pvalue"].to_numpy()[ok] < 0.05)).all()
            checked += 1
    assert checked == 8
