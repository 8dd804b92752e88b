import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import immunomood as im

sys.path.insert(0, str(Path(__file__).parent))
from _synth import SETS, synth_cohort

KW = dict(condition_key="condition", sample_key="donor", groupby="cell_type")
COLS = [
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
]


@pytest.fixture(scope="module")
def planted():
    return synth_cohort(n_donors=12, effect=1.6, seed=3)


def test_result_table_and_stored_keys(planted):
    a = planted.copy()
    res = im.tl.differential_activity(a, gene_sets=SETS, method="score", **KW)
    assert list(res.columns[: len(COLS)]) == COLS
    assert len(res) == 2 * 3
    new_keys = set(a.uns) - set(planted.uns)
    assert new_keys == {"differential_activity"}  # one key, derived from key_added
    assert set(a.uns["differential_activity"]) == {"params", "results", "scores"}
    pd.testing.assert_frame_equal(a.uns["differential_activity"]["results"], res)
    b = planted.copy()
    im.tl.differential_activity(b, gene_sets=SETS, method="score", key_added="da2", **KW)
    assert set(b.uns) - set(planted.uns) == {"da2"}
    r = res.set_index(["group", "gene_set"])
    assert r.loc[("Mono", "setA"), "padj"] < 0.01
    # effect in log2 units near log2(1.6) (the prior count shrinks low-count genes slightly towards 0)
    assert 0.7 * np.log2(1.6) < r.loc[("Mono", "setA"), "effect"] < 1.2 * np.log2(1.6)
    assert r.loc[("Mono", "setA"), "ci_low"] < r.loc[("Mono", "setA"), "effect"] < r.loc[("Mono", "setA"), "ci_high"]
    assert (r.loc[("Mono", "setA"), ["n_case", "n_reference"]] == [6, 6]).all()
    # padj = BH over the whole table
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(res["padj"], multipletests(res["pvalue"], method="fdr_bh")[1])


def test_statistic_equals_independent_ols(planted):
    """The test statistic is an OLS t-test of the stored donor scores (checked with statsmodels)."""
    import statsmodels.formula.api as smf

    a = planted.copy()
    res = im.tl.differential_activity(a, gene_sets=SETS, covariates=["age"], method="score", **KW)
    sc = a.uns["differential_activity"]["scores"]
    s = sc[(sc.group == "Mono") & (sc.gene_set == "setA")].copy()
    s["age"] = a.obs.groupby("donor", observed=True)["age"].first().reindex(s["sample"]).to_numpy()
    s["case"] = (s["condition"] == "case").astype(float)
    fit = smf.ols("score ~ case + age", data=s).fit()
    row = res[(res.group == "Mono") & (res.gene_set == "setA")].iloc[0]
    assert row["statistic"] == pytest.approx(fit.tvalues["case"], rel=1e-8)
    assert row["pvalue"] == pytest.approx(fit.pvalues["case"], rel=1e-8)


def test_dict_gene_sets_ensembl_and_reference(planted):
    a = planted.copy()
    a.var["symbol"] = a.var_names.astype(str)
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    a.layers["counts"] = a.X.copy()
    res = im.tl.differential_activity(a, gene_sets={"setA": SETS["setA"]}, reference="case", **KW)
    assert res.set_index("group").loc["Mono", "effect"] < 0  # reference flipped -> sign flips


def test_validation_errors(planted):
    a = planted.copy()
    one = a[a.obs.condition == "case"].copy()
    with pytest.raises(ValueError, match="single level"):
        im.tl.differential_activity(one, gene_sets=SETS, **KW)
    b = a[~a.obs.donor.isin(["d0", "d1", "d2", "d3", "d4"])].copy()
    with pytest.raises(ValueError, match="at least 2 per arm"):
        im.tl.differential_activity(b, gene_sets=SETS, **KW)
    c = a.copy()
    c.obs["site"] = c.obs["condition"].map({"control": "x", "case": "y"}).astype(str)
    with pytest.raises(ValueError, match="'site'.*confounded with the condition"):
        im.tl.differential_activity(c, gene_sets=SETS, covariates=["site"], **KW)
    d = a.copy()
    d.obs["cov"] = np.arange(d.n_obs) % 2
    with pytest.raises(ValueError, match="'cov'\\] varies within sample"):
        im.tl.differential_activity(d, gene_sets=SETS, covariates=["cov"], **KW)
    e = a.copy()
    e.obs["condition"] = e.obs["condition"].astype(str)
    e.obs.iloc[0, e.obs.columns.get_loc("condition")] = "case" if e.obs["condition"].iloc[0] == "control" else "control"
    with pytest.raises(ValueError, match="'condition'\\] varies within sample"):
        im.tl.differential_activity(e, gene_sets=SETS, **KW)
    f = a.copy()
    f.obs["age"] = f.obs["age"].astype(float)
    f.obs.iloc[3, f.obs.columns.get_loc("age")] = np.nan
    with pytest.raises(ValueError, match="missing values"):
        im.tl.differential_activity(f, gene_sets=SETS, covariates=["age"], **KW)
    with pytest.raises(KeyError, match="Known"):
        im.tl.differential_activity(a, gene_sets="complemnt", **KW)
    with pytest.raises(KeyError, match="Available"):
        im.tl.differential_activity(a, gene_sets=SETS, condition_key="cond", sample_key="donor", groupby="cell_type")


def test_group_with_too_few_donors_is_reported(planted):
    a = planted.copy()
    keep = ~((a.obs.cell_type == "T") & a.obs.donor.isin(["d6", "d7", "d8", "d9", "d10"]))
    a = a[keep.to_numpy()].copy()
    with pytest.warns(UserWarning, match="groups not tested.*T"):
        res = im.tl.differential_activity(a, gene_sets=SETS, **KW)
    t = res[res.group == "T"]
    assert t["pvalue"].isna().all() and t["reason"].str.contains("fewer than 2 samples").all()
    assert res[res.group == "Mono"]["pvalue"].notna().all()


def test_paired_design_fixed_and_random(planted):
    """Each donor in both conditions: sample = donor x condition, pairing by covariate or random effect."""
    rng = np.random.default_rng(0)
    a = synth_cohort(n_donors=12, effect=1.0, seed=5)
    # pair donors: d{i} (control) and d{i+6} (case) become the same person
    pid = {f"d{i}": f"p{i % 6}" for i in range(12)}
    a.obs["person"] = a.obs["donor"].map(pid).astype("category")
    with pytest.raises(ValueError, match="paired designs"):
        x = a.copy()
        x.obs["donor"] = x.obs["person"]
        im.tl.differential_activity(x, gene_sets=SETS, **KW)
    r1 = im.tl.differential_activity(a, gene_sets=SETS, covariates=["person"], method="score", **KW)
    r2 = im.tl.differential_activity(a, gene_sets=SETS, random_effect="person", **KW)  # default -> score
    assert r1["pvalue"].notna().all() and r2["pvalue"].notna().all()
    assert (r1["df"] == 12 - 2 - 5).all()
    assert "MixedLM" in r2["method"].iloc[0]
    assert rng is not None


@pytest.mark.slow
def test_calibrated_and_powerful_on_synthetic():
    p_null = []
    for seed in range(15):
        r = im.tl.differential_activity(synth_cohort(seed=100 + seed), gene_sets=SETS, method="score", **KW)
        p_null += list(r["pvalue"])
    p_null = np.asarray(p_null)
    assert len(p_null) == 90
    assert 0.0 <= (p_null < 0.05).mean() <= 0.12
    hits = 0
    for seed in range(4):
        r = im.tl.differential_activity(
            synth_cohort(n_donors=16, seed=200 + seed, effect=1.5), gene_sets=SETS, method="score", **KW
        )
        hits += r.set_index(["group", "gene_set"]).loc[("Mono", "setA"), "pvalue"] < 0.05
    assert hits >= 3


def test_kang2018_interferon_up_in_monocytes(data_dir):
    import anndata as ad

    a = ad.read_h5ad(data_dir / "kang2018" / "kang2018_2donors_ctrl_stim.h5ad")
    a.var_names = a.var["ENSEMBL"].astype(str).to_numpy()  # Ensembl IDs + SYMBOL column, as real data often has
    a.obs["group_id"] = pd.Categorical(a.obs["group_id"].astype(str), categories=["ctrl", "stim"])
    res = im.tl.differential_activity(
        a,
        condition_key="group_id",
        sample_key="sample_id",
        groupby="cluster_id",
        gene_sets="interferon_alpha",
        covariates=["donor"],
    )
    mono = res.set_index("group").loc["CD14+ Monocytes"]
    assert mono["effect"] > 2.0  # > 4-fold up on average over the set's genes
    assert mono["statistic"] > 0 and mono["n_case"] == 2 and mono["n_reference"] == 2


def test_differential_expression_pydeseq2(planted):
    a = planted.copy()
    genes = SETS["setA"][:5] + ["G100", "G101"]
    res = im.tl.differential_expression(a, genes=genes, n_anchor_genes=60, **KW)
    assert list(res.columns[:5]) == ["group", "gene", "log2fc", "pvalue", "padj"]
    mono = res[res.group == "Mono"].set_index("gene")
    assert set(mono.index) <= set(genes)
    assert mono.loc[[g for g in SETS["setA"][:5] if g in mono.index], "log2fc"].mean() > 0.3
    # stored under key_added only, as {params, results}
    assert set(a.uns) - set(planted.uns) == {"differential_expression"}
    st = a.uns["differential_expression"]
    pd.testing.assert_frame_equal(st["results"], res)
    assert st["params"]["sample_key"] == KW["sample_key"] and st["params"]["n_anchor_genes"] == 60
    with pytest.raises(ValueError, match="view"):
        im.tl.differential_expression(a[:, :200], genes=genes, **KW)
    with pytest.raises(ValueError, match="single level"):
        im.tl.differential_expression(a[a.obs.condition == "case"].copy(), **KW)


def test_low_count_set_members_kept_and_down_weighted():
    """Set members too sparse for the edgeR-like filter still enter the set test, with small precision weights;
    the effect is the weighted mean of per-gene OLS log2 fold changes (checked with numpy lstsq)."""
    from immunomood.tl._differential import (
        filter_by_expr,
        filter_set_members,
        log_cpm,
        norm_factors,
        set_scores,
    )

    rng = np.random.default_rng(7)
    n, g = 12, 400
    mean = rng.gamma(0.7, 40.0, size=g) + 0.2
    mean[:3] = [1.2, 1.5, 2.0]  # low-count members of the set
    mean[3:6] = [200.0, 400.0, 800.0]  # well expressed members
    counts = rng.poisson(mean * rng.lognormal(0, 0.1, size=(n, g))).astype(float)
    tab = pd.DataFrame({"condition": ["a"] * 6 + ["b"] * 6}, index=[f"s{i}" for i in range(n)])
    D = np.column_stack([np.ones(n), (tab["condition"] == "b").to_numpy(dtype=float)])
    strict = filter_by_expr(counts, 6)
    lenient = filter_set_members(counts[:, :6])
    assert not strict[:3].any() and lenient.all()
    np.testing.assert_array_equal(
        filter_set_members(np.array([[0, 1, 9.0], [0, 0, 0], [1, 2, 0]])), [False, True, False]
    )  # >= 1 count per sample on average and non-zero in >= half
    members = {"set": np.arange(6)}
    S = set_scores(counts, D, members, min_n=6)
    kept = S["kept"]
    assert set(kept[S["cols"]["set"]]) == set(range(6))
    w = pd.Series(S["weights"]["set"], index=kept[S["cols"]["set"]])
    assert w.sum() == pytest.approx(1.0) and w.loc[[0, 1, 2]].max() < w.loc[[3, 4, 5]].min()
    S0 = set_scores(counts, D, members, min_n=6, lenient=False)
    assert set(S0["kept"][S0["cols"]["set"]]) == {3, 4, 5}
    # coefficient of the score = weighted mean of per-gene coefficients (independent per-gene fits)
    keep = filter_by_expr(counts, 6)
    Y = log_cpm(counts, counts.sum(1) * norm_factors(counts[:, keep]))
    b = np.linalg.lstsq(D, Y[:, w.index.to_numpy()], rcond=None)[0][1]
    coef = np.linalg.lstsq(D, S["scores"]["set"], rcond=None)[0][1]
    assert coef == pytest.approx(float(b @ w.to_numpy()), rel=1e-8)


def _complement_union():
    arms = im.tl.gene_sets("complement")
    return {"complement_all": sorted({g for v in arms.values() for g in v})}


@pytest.mark.slow
def test_power_1p1_simulated_cohort():
    """Acceptance: 8 vs 8 donors, complement genes 1.1x in classical monocytes (simulator defaults, 2,000 cells per
    donor, a typical 10x PBMC library): the union of the complement arms has p < 0.05 in >= 4 of 10 seeds.

    Simulator 1.1.0 (donor_sd 0.1, complement_sd 0.02, equal donors) gave 9-10 of 10 (20 seeds: 0.95). Simulator
    2.0.0 (donor-level parameters estimated from real donors: donor_sd 0.21, composition concentration 18, cells
    per donor varying) measured over seeds 0-9: method="score" 5 of 10, limma-voom + fry (method="fry") 6 of 10;
    the bound leaves one seed of margin below the score figure. No simulator parameter was changed for this."""
    hits = []
    for seed in range(10):
        a, _ = im.datasets.simulate_cohort(n_cells_per_donor=2000, complement_effect=1.1, random_state=seed)
        r = im.tl.differential_activity(
            a,
            condition_key="condition",
            sample_key="donor",
            groupby="cell_type_true",
            gene_sets=_complement_union(),
            covariates=["batch"],
            method="score",
        )
        row = r.set_index("group").loc["Classical monocyte"]
        hits.append(row["pvalue"] < 0.05 and row["effect"] > 0)
    assert sum(hits) >= 4, hits


@pytest.mark.slow
def test_issue_scenario_beats_donor_mean_t_test():
    """The task's real-data scenario on a simulated null cohort of 8 donors: 20 monocyte genes (>= 0.3 counts per
    cell) raised by 10% in 4 donors, every 4 vs 4 split. Ours finds it far more often than a t-test on donor means of per-cell scores,
    and without the raise it is not inflated (the per-cell Mann-Whitney test is)."""
    import itertools

    from scipy import sparse, stats

    a, _ = im.datasets.simulate_cohort(n_donors=8, n_cells_per_donor=1000, n_batches=1, null=True, random_state=1)
    a = a[(a.obs["cell_type_true"] == "Classical monocyte").to_numpy()].copy()
    rng = np.random.default_rng(1)
    mean = np.asarray(a.X.mean(axis=0)).ravel()
    cols = np.sort(rng.choice(np.flatnonzero(mean >= 0.3), 20, replace=False))
    sets = {"raised": list(a.var_names[cols])}
    coo = a.X.tocoo()
    in_set = np.isin(coo.col, cols)
    donors = list(a.obs["donor"].cat.categories)
    splits = [c for c in itertools.combinations(donors, 4) if donors[0] in c]  # 35: each partition once
    res = {1.0: [], 1.1: []}
    for fc, case in itertools.product((1.0, 1.1), splits):
        is_case = a.obs["donor"].isin(case).to_numpy()
        b = a.copy()
        b.obs["condition"] = pd.Categorical(np.where(is_case, "MDD", "control"), categories=["control", "MDD"])
        if fc != 1.0:
            m = in_set & is_case[coo.row]
            data = coo.data.copy()
            data[m] += rng.binomial(data[m].astype(np.int64), fc - 1.0)
            b.X = sparse.csr_matrix((data, (coo.row, coo.col)), shape=a.shape)
        r = im.tl.differential_activity(
            b, condition_key="condition", sample_key="donor", groupby="cell_type_true", gene_sets=sets, method="score"
        )
        sc = im.tl.score_pathways(b, sets, inplace=False)["raised"].to_numpy()
        dm = pd.Series(sc).groupby(b.obs["donor"].to_numpy()).mean()
        dcase = dm.index.isin(case)
        p_t = stats.ttest_ind(dm[dcase], dm[~dcase]).pvalue
        p_mwu = stats.mannwhitneyu(sc[is_case], sc[~is_case]).pvalue
        res[fc].append((r["pvalue"].iloc[0], p_t, p_mwu))
    null, raised = ((np.asarray(res[k]) < 0.05).mean(axis=0) for k in (1.0, 1.1))
    assert null[0] <= 0.15 and null[2] >= 0.15, null  # ours not inflated; the per-cell test is
    # simulator 2.0.0 (donor_sd 0.21 estimated from real donors; 0.1 before, where this bound was 0.8): measured
    # over the 35 splits, ours 0.20 (null 0.057), limma-voom + fry 0.31 (null 0.086), t-test on donor means 0.0;
    # the per-cell Mann-Whitney test calls 0.60 of the null splits
    assert raised[0] >= 0.1 and raised[0] >= 3 * raised[1], (raised, null)


def test_differential_expression_ensembl_ids_and_symbols(planted):
    """Ensembl var_names with a symbol column: `genes` may be symbols or IDs; the output carries both."""
    a = planted.copy()
    a.var["symbol"] = a.var_names.astype(str)
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    res = im.tl.differential_expression(a, genes=["G0", "G1", f"ENSG{2:011d}"], n_anchor_genes=60, **KW)
    mono = res[res.group == "Mono"]
    assert list(mono["gene"]) == [f"ENSG{i:011d}" for i in range(3)]
    assert list(mono["symbol"]) == ["G0", "G1", "G2"]
    with pytest.raises(KeyError, match="NOTAGENE"):
        im.tl.differential_expression(a, genes=["NOTAGENE"], **KW)


def test_between_within_df():
    from immunomood.tl._differential import between_within_df

    donors = np.repeat(np.arange(8), 2)  # 8 donors x 2 samples
    between = np.column_stack([np.ones(16), (donors >= 4).astype(float)])  # condition per donor
    assert between_within_df(between, donors) == 8 - 2
    paired = np.column_stack([np.ones(16), np.tile([0.0, 1.0], 8)])  # both conditions in every donor
    assert between_within_df(paired, donors) == 16 - 8 - 1


@pytest.mark.slow
def test_random_effect_pooled_samples_calibrated():
    """Two samples per donor (cells split at random), condition per donor, random_effect='donor': the donor-level
    df keeps the test calibrated (with n_samples - p df it called 0.079 of 240 null tests)."""
    ps = []
    for seed in range(30):
        a = synth_cohort(n_donors=8, seed=500 + seed, cells=(120, 80))
        rng = np.random.default_rng(seed)
        a.obs["sample"] = (a.obs["donor"].astype(str) + "_v" + rng.integers(0, 2, a.n_obs).astype(str)).astype(
            "category"
        )
        r = im.tl.differential_activity(
            a,
            condition_key="condition",
            sample_key="sample",
            groupby="cell_type",
            gene_sets=SETS,
            random_effect="donor",
        )
        assert (r["df"] == 6).all()
        ps += list(r["pvalue"])
    assert 0.01 <= (np.asarray(ps) < 0.05).mean() <= 0.08


def test_design_errors_found_by_review(planted):
    """groupby reused as condition/sample, random effect equal to the condition or with one level per sample, an
    arm whose samples all come from one donor, a numeric covariate stored as text: clear errors up front."""
    a = planted.copy()
    with pytest.raises(ValueError, match="groupby 'condition'"):
        im.tl.differential_activity(
            a, gene_sets=SETS, condition_key="condition", sample_key="donor", groupby="condition"
        )
    with pytest.raises(ValueError, match="random_effect 'condition' is also in the design"):
        im.tl.differential_activity(a, gene_sets=SETS, random_effect="condition", **KW)
    with pytest.raises(ValueError, match="one level per sample"):
        im.tl.differential_activity(a, gene_sets=SETS, random_effect="donor", **KW)
    b = planted.copy()
    rng = np.random.default_rng(0)
    b.obs["sample"] = (b.obs["donor"].astype(str) + "_v" + rng.integers(0, 2, b.n_obs).astype(str)).astype("category")
    b.obs["subject"] = b.obs["donor"].astype(str)
    b.obs.loc[(b.obs["condition"] == "control").to_numpy(), "subject"] = "one_donor"
    with pytest.raises(ValueError, match="at least 2 donors per arm"):
        im.tl.differential_activity(
            b,
            gene_sets=SETS,
            condition_key="condition",
            sample_key="sample",
            groupby="cell_type",
            random_effect="subject",
        )
    a.obs["age_text"] = a.obs["age"].astype(str) + a.obs["donor"].astype(str).str[1:]  # one level per donor
    with pytest.raises(ValueError, match="convert it"):
        im.tl.differential_activity(a, gene_sets=SETS, covariates=["age_text"], **KW)


def test_gene_set_of_ensembl_ids_matches_ensembl_var_names(planted):
    """A dict of Ensembl IDs on Ensembl var_names (with a symbol column) matches the IDs."""
    a = planted.copy()
    a.var["symbol"] = a.var_names.astype(str)
    ids = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    a.var_names = ids
    by_id = im.tl.differential_activity(a, gene_sets={"setA": ids[:20]}, **KW)
    by_symbol = im.tl.differential_activity(a, gene_sets={"setA": SETS["setA"]}, **KW)
    pd.testing.assert_series_equal(by_id["pvalue"], by_symbol["pvalue"])
    sc = im.tl.score_pathways(a, {"setA": ids[:20]}, inplace=False)
    assert np.isfinite(sc["setA"]).all()


def test_samples_left_out_of_a_group_are_listed(planted):
    """Samples with fewer than min_cells cells of a group are named in the table and in a warning."""
    a = planted.copy()
    mono_d1 = np.flatnonzero(((a.obs.cell_type == "Mono") & (a.obs.donor == "d1")).to_numpy())
    drop = np.zeros(a.n_obs, bool)
    drop[mono_d1[3:]] = True  # d1 keeps 3 monocytes
    a = a[~drop].copy()
    with pytest.warns(UserWarning, match=r"samples left out of a group.*Mono: d1 \(3 cells\)"):
        res = im.tl.differential_activity(a, gene_sets=SETS, **KW)
    mono = res[res.group == "Mono"]
    assert (mono["samples_excluded"] == "d1 (3 cells)").all()
    assert (mono["n_case"] + mono["n_reference"] == 11).all()
    assert (res.loc[res.group == "T", "samples_excluded"] == "").all()


def test_method_fry_table_and_errors(planted):
    a = planted.copy()
    res = im.tl.differential_activity(a, gene_sets=SETS, method="fry", **KW)
    assert list(res.columns[: len(COLS)]) == COLS and "pvalue_mixed" in res.columns
    r = res.set_index(["group", "gene_set"])
    hit = r.loc[("Mono", "setA")]
    assert hit["pvalue"] < 0.01 and hit["statistic"] > 0 and hit["pvalue_mixed"] < 0.05
    assert 0.5 * np.log2(1.6) < hit["effect"] < 1.5 * np.log2(1.6)
    assert (res["df"].dropna() == 12 - 2).all() and "fry" in res["method"].iloc[0]
    assert a.uns["differential_activity"]["params"]["method"] == "fry"
    with pytest.raises(ValueError, match="method must be None.*'fry_pooled'.*got 'camera'"):
        im.tl.differential_activity(planted.copy(), gene_sets=SETS, method="camera", **KW)
    with pytest.raises(ValueError, match="method='fry' has no random effect"):
        im.tl.differential_activity(planted.copy(), gene_sets=SETS, method="fry", random_effect="age", **KW)


def test_limma_port_invariants():
    """Properties of the R ports that hold without R: lowess of a line is the line; TMM of proportional samples is 1;
    fry without weights equals the t-test of the set mean of standardised effects (its definition)."""
    from immunomood._limma import calc_norm_factors, clowess, filter_by_expr, fry

    x = np.linspace(0, 10, 101)
    np.testing.assert_allclose(clowess(x, 2 * x + 1, f=0.5)[1], 2 * x + 1, atol=1e-10)
    rng = np.random.default_rng(0)
    base = rng.poisson(50, size=300).astype(float)
    np.testing.assert_allclose(calc_norm_factors(np.vstack([base, 2 * base, 3 * base])), 1.0, atol=1e-12)
    counts = rng.poisson(np.r_[np.full(5, 20.0), np.full(5, 0.2)], size=(6, 10))
    keep = filter_by_expr(counts, group=[0, 0, 0, 1, 1, 1], min_count=1, min_total_count=1)
    assert keep[:5].all() and not keep[5:].any()
    E = rng.normal(size=(8, 200))
    D = np.column_stack([np.ones(8), np.r_[np.zeros(4), np.ones(4)]])
    t = fry(E, D, {"s": np.arange(10)})
    assert t.loc["s", "df"] == 6 and 0 <= t.loc["s", "PValue"] <= 1 and t.loc["s", "NGenes"] == 10


def test_method_fry_pooled_borrows_across_groups(planted):
    """With one group fry_pooled is fry; with two, each group's set variance ratio gets half the other's df."""
    from immunomood._limma import pool_set_variance

    a = planted.copy()
    fry = im.tl.differential_activity(a, gene_sets=SETS, method="fry", **KW)
    pooled = im.tl.differential_activity(a.copy(), gene_sets=SETS, method="fry_pooled", **KW)
    both = fry.merge(pooled, on=["group", "gene_set"], suffixes=("_fry", "_pooled"))
    ok = both["pvalue_fry"].notna()
    two = both[ok].groupby("gene_set")["group"].transform("size") == 2
    np.testing.assert_allclose(both.loc[ok, "df_pooled"][two], 10 + 0.5 * 10)
    np.testing.assert_allclose(both.loc[ok, "pvalue_mixed_pooled"], both.loc[ok, "pvalue_mixed_fry"])
    assert pooled.set_index(["group", "gene_set"]).loc[("Mono", "setA"), "pvalue"] < 0.01
    mono = a[(a.obs.cell_type == "Mono").to_numpy()].copy()
    r1 = im.tl.differential_activity(mono, gene_sets=SETS, method="fry", **KW)
    r2 = im.tl.differential_activity(mono.copy(), gene_sets=SETS, method="fry_pooled", **KW)
    np.testing.assert_allclose(r1["pvalue"], r2["pvalue"], rtol=1e-12)
    t, df, p = pool_set_variance([1.0, 0.5], [0.04, 0.09], [5, 5], [6, 6])
    vif = (6 * 5 * 0.04 + 3 * 5 * 0.09) / 9
    assert t[0] == pytest.approx(1.0 / np.sqrt(vif / 5)) and df[0] == 9
    assert p[0] == pytest.approx(2 * __import__("scipy").stats.t.sf(t[0], 9))


def test_default_method_is_fry_pooled_and_score_with_random_effect(planted):
    """method=None runs fry_pooled (the result and the params say so); with random_effect it runs the set score's
    mixed model, the only method with a random effect; an explicit fry method with random_effect is an error."""
    a = planted.copy()
    res = im.tl.differential_activity(a, gene_sets=SETS, **KW)
    pooled = im.tl.differential_activity(planted.copy(), gene_sets=SETS, method="fry_pooled", **KW)
    pd.testing.assert_frame_equal(res, pooled)
    assert "borrowed across groups" in res["method"].iloc[0]
    # fry has no standard error: the interval is test-based, so it excludes 0 exactly when p < 0.05
    excl = (res["ci_low"] > 0) | (res["ci_high"] < 0)
    assert res["ci_low"].notna().all() and ((res["pvalue"] < 0.05) == excl).all()
    assert ((res["ci_low"] < res["effect"]) & (res["effect"] < res["ci_high"])).all()
    params = a.uns["differential_activity"]["params"]
    assert params["method"] == "fry_pooled" and params["method_requested"] == "default"
    assert res.set_index(["group", "gene_set"]).loc[("Mono", "setA"), "pvalue"] < 0.01
    b = synth_cohort(n_donors=8, seed=5)
    rng = np.random.default_rng(0)
    b.obs["sample"] = (b.obs["donor"].astype(str) + "_v" + rng.integers(0, 2, b.n_obs).astype(str)).astype("category")
    kw = dict(condition_key="condition", sample_key="sample", groupby="cell_type", gene_sets=SETS)
    r = im.tl.differential_activity(b, random_effect="donor", **kw)
    assert r["method"].str.contains("MixedLM random intercept").all() and (r["df"] == 6).all()
    assert b.uns["differential_activity"]["params"]["method"] == "score"
    assert (r["ci_low"] < r["ci_high"]).all()
    with pytest.raises(ValueError, match="method='fry_pooled' has no random effect"):
        im.tl.differential_activity(b, random_effect="donor", method="fry_pooled", **kw)
