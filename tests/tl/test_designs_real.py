"""Clinical designs of ``differential_activity`` on real donors (skipped when the shared data are absent).

csle: interferon in lupus B cells with covariates (a known, strong signal) and the SLEDAI slope within patients;
onek1k: a few null draws (random continuous score, random three-level groups) show no systematic excess;
combat: three levels give three blocks of rows, additive for the score method. The full numbers come from
``benchmarks/bench_designs.py`` (``docs/validation_designs.md``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import immunomood as im

pytestmark = pytest.mark.realdata

IFN = ("interferon_alpha", "interferon_gamma")


def _ifn_sets():
    return {k: v for name in IFN for k, v in im.tl.gene_sets(name).items()}


def _quiet(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return im.tl.differential_activity(**kw)


@pytest.fixture(scope="module")
def csle(data_dir):
    import anndata as ad

    a = ad.read_h5ad(Path(data_dir) / "csle" / "csle_44donors_B_CD4mem_Treg.h5ad")
    a.obs["Age"] = a.obs["Age"].astype(float)
    a.obs["SLEDAI"] = pd.to_numeric(a.obs["SLEDAI"].astype(str), errors="coerce")  # "ND" (healthy, 2 patients)
    return a


def test_csle_interferon_up_in_lupus_b_cells_with_covariates(csle):
    res = _quiet(
        adata=csle,
        design="~ condition + Age + Gender + Batch",
        contrast=("condition", "cSLE", "cHD"),
        sample_key="donor",
        groupby="compartment",
        gene_sets=_ifn_sets(),
        min_cells=3,
    )
    assert set(res["contrast"]) == {"condition: cSLE vs cHD"}
    b = res[(res["group"] == "B")].set_index("gene_set")
    ifn_a = b.loc["interferon_alpha"]
    assert ifn_a["padj"] < 0.05 and ifn_a["effect"] > 0 and ifn_a["ci_low"] > 0
    assert ifn_a["n_case"] > 25 and ifn_a["n_reference"] >= 9  # donors with >= 3 B cells in each arm
    # every tested interferon row in B and CD4 memory points up in lupus
    tested = res[res["group"].isin(["B", "CD4mem"]) & res["pvalue"].notna()]
    assert len(tested) == 4 and (tested["effect"] > 0).all()


def test_csle_sledai_slope_within_patients_is_per_point(csle):
    pts = csle[(csle.obs["condition"] == "cSLE").to_numpy() & csle.obs["SLEDAI"].notna().to_numpy()].copy()
    res = _quiet(
        adata=pts,
        design="~ SLEDAI + Age + Gender + Batch",
        test="SLEDAI",
        sample_key="donor",
        groupby="compartment",
        gene_sets=_ifn_sets(),
        min_cells=3,
        method="score",
    )
    b = res[res["group"] == "B"].set_index("gene_set")
    assert set(res["contrast"]) == {"SLEDAI (per unit)"}
    assert (b["n_samples"] == b["n_case"]).all() and (b["n_reference"] == 0).all()
    ncell = pts.obs.loc[pts.obs["compartment"] == "B"].groupby("donor", observed=True).size()
    kept = pts.obs[pts.obs["donor"].isin(ncell.index[ncell >= 3])]
    n_b = len(ncell[ncell >= 3])
    # OLS df: donors - (intercept, SLEDAI, Age, Gender[M], one column per batch beyond the first)
    assert (b["n_samples"] == n_b).all() and (b["df"] == n_b - 4 - (kept["Batch"].nunique() - 1)).all()
    # per SLEDAI point: a small slope (the lupus vs healthy shift is ~0.5-1 log2 over a 0-19 score range)
    assert (b["effect"].abs() < 0.2).all() and (b["ci_high"] - b["ci_low"] < 0.3).all()


def test_onek1k_null_draws_no_systematic_excess(data_dir):
    import anndata as ad

    a = ad.read_h5ad(Path(data_dir) / "onek1k" / "onek1k_40donors_4types.h5ad")
    donors = list(a.obs["donor"].cat.categories)
    sets = {**im.tl.gene_sets("complement"), **_ifn_sets(), **im.tl.gene_sets("inflammatory")}
    rng = np.random.default_rng(20261202)
    ps = []
    for _ in range(4):
        a.obs["score"] = a.obs["donor"].map(dict(zip(donors, rng.normal(size=len(donors))))).astype(float)
        g = rng.permutation(np.repeat(["A", "B", "C"], [13, 13, len(donors) - 26]))
        a.obs["group"] = pd.Categorical(a.obs["donor"].map(dict(zip(donors, g))).astype(str))
        for kw in ({"design": "~ score", "test": "score"}, {"design": "~ group"}):
            r = _quiet(adata=a, sample_key="donor", groupby="cell_type", gene_sets=sets, **kw)
            ps.append(r["pvalue"].dropna().to_numpy())
    p = np.concatenate(ps)
    assert len(p) > 250
    assert (p < 0.05).mean() < 0.12  # benchmark: 0.05-0.07 over 60 draws; loose for 4 draws of correlated tests
    assert 0.35 < p.mean() < 0.65


def test_combat_three_levels_three_blocks(data_dir):
    import anndata as ad

    from immunomood._stats import bh

    a = ad.read_h5ad(Path(data_dir) / "combat" / "combat_covid_6donors.h5ad")
    a.obs["condition"] = pd.Categorical(
        a.obs["condition"].astype(str), categories=["Healthy", "Covid_Mild", "Covid_Critical"]
    )
    a.obs["compartment"] = "PBMC"  # whole-sample pseudobulk (no cell-type labels; the benchmark annotates)
    sets = {**_ifn_sets(), **im.tl.gene_sets("inflammatory")}
    res = {
        m: _quiet(adata=a, design="~ condition", sample_key="donor", groupby="compartment", gene_sets=sets, method=m)
        for m in ("score", "fry_pooled")
    }
    labels = [
        "condition: Covid_Mild vs Healthy",
        "condition: Covid_Critical vs Healthy",
        "condition: Covid_Critical vs Covid_Mild",
    ]
    for r in res.values():
        assert list(pd.unique(r["contrast"])) == labels
        assert (r.groupby("contrast").size() == len(sets)).all()
        assert r["pvalue"].notna().all() and (r["n_case"] == 2).all() and (r["n_reference"] == 2).all()
        np.testing.assert_allclose(r["padj"], bh(r["pvalue"].to_numpy()))  # BH over the whole table
    # score method: one OLS fit, so the contrasts are additive (Critical - Mild = (Critical - H) - (Mild - H))
    e = res["score"].pivot(index="gene_set", columns="contrast", values="effect")
    np.testing.assert_allclose(e[labels[2]], e[labels[1]] - e[labels[0]], atol=1e-10)
