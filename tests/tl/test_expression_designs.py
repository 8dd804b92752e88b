"""differential_expression with study designs: level contrasts of a 3-level factor, continuous tests, the
random-effect error, and equality with pydeseq2 run directly on the formula."""

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import immunomood as im

sys.path.insert(0, str(Path(__file__).parent))
from _synth import SETS, synth_cohort

DE = {"sample_key": "donor", "groupby": "cell_type"}


@pytest.fixture(scope="module")
def cohort():
    a = synth_cohort(n_donors=12, n_genes=120, effect=2.0, seed=3, types=("Mono",))
    donors = [f"d{i}" for i in range(12)]
    arm = dict(zip(donors, np.array(["A", "B", "C"])[np.arange(12) % 3]))
    a.obs["arm"] = pd.Categorical(a.obs["donor"].map(arm).astype(str), categories=["A", "B", "C"])
    # a donor-level score: 1 + noise in case donors, noise in controls (the planted set goes up with it)
    rng = np.random.default_rng(0)
    case = a.obs.groupby("donor", observed=True)["condition"].first() == "case"
    score = dict(zip(case.index, case.to_numpy().astype(float) + rng.normal(0, 0.3, len(case))))
    a.obs["score"] = a.obs["donor"].map(score).astype(float)
    return a


def _direct(a, formula, columns):
    """pydeseq2 run directly on the donor pseudobulk with the formula (no immunomood design code)."""
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference

    donor = a.obs["donor"].astype(str).to_numpy()
    C = pd.DataFrame(np.asarray(a.X.todense()), columns=a.var_names).groupby(donor).sum()
    meta = a.obs.groupby("donor", observed=True)[columns].first()
    meta.index = meta.index.astype(str)
    C = C.loc[meta.index].astype(np.int64)
    C = C.loc[:, C.sum(axis=0) > 0]
    inf = DefaultInference(n_cpus=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=C, metadata=meta, design=formula, inference=inf, quiet=True)
        dds.deseq2()
    return dds, inf


def test_three_levels_equal_pydeseq2_direct(cohort):
    """Every pair of a 3-level factor (adjusted for age) = pydeseq2's formula + level contrast, to 1e-10."""
    from pydeseq2.ds import DeseqStats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = im.tl.differential_expression(cohort, design="~ arm + age", **DE)
    assert list(res.columns) == ["group", "gene", "log2fc", "pvalue", "padj", "base_mean", "contrast", "n_samples"]
    assert list(pd.unique(res["contrast"])) == ["arm: B vs A", "arm: C vs A", "arm: C vs B"]
    assert (res["n_samples"] == 12).all()
    dds, inf = _direct(cohort, "~ arm + age", ["arm", "age"])
    for case, ref in [("B", "A"), ("C", "A"), ("C", "B")]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = DeseqStats(dds, contrast=["arm", case, ref], inference=inf, quiet=True)
            ds.summary()
        r = ds.results_df
        mine = res[res["contrast"] == f"arm: {case} vs {ref}"].set_index("gene")
        assert list(mine.index) == list(r.index)
        np.testing.assert_allclose(mine["log2fc"], r["log2FoldChange"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(mine["pvalue"], r["pvalue"], rtol=1e-10)
        np.testing.assert_allclose(mine["padj"], r["padj"], rtol=1e-10)  # DESeq2's, per group and contrast
    # one contrast by name: the same block
    one = im.tl.differential_expression(cohort, design="~ arm + age", contrast=("arm", "C", "B"), **DE)
    pd.testing.assert_frame_equal(one, res[res["contrast"] == "arm: C vs B"].reset_index(drop=True))


def test_continuous_per_unit_and_legacy(cohort):
    """test='score': log2 fold change per unit of the score = pydeseq2's coefficient of the score; the planted
    set goes up with it. condition_key= gives the numbers of design='~ condition'."""
    res = im.tl.differential_expression(cohort, design="~ score", test="score", **DE)
    assert set(res["contrast"]) == {"score (per unit)"}
    dds, _ = _direct(cohort, "~ score", ["score"])
    coef = dds.varm["LFC"]["score"] / np.log(2)
    np.testing.assert_allclose(res.set_index("gene").loc[coef.index, "log2fc"], coef, rtol=1e-10)
    planted = res.set_index("gene").loc[[g for g in SETS["setA"] if g in set(res["gene"])]]
    others = res.set_index("gene").drop(index=planted.index)
    assert planted["log2fc"].median() > 0.5 > others["log2fc"].abs().median()
    legacy = im.tl.differential_expression(cohort, condition_key="condition", genes=SETS["setA"][:5], **DE)
    formula = im.tl.differential_expression(cohort, design="~ condition", genes=SETS["setA"][:5], **DE)
    pd.testing.assert_frame_equal(legacy, formula)
    assert set(legacy["contrast"]) == {"condition: case vs control"}


def test_random_effect_error_and_untestable_contrast(cohort):
    with pytest.raises(ValueError, match=r"no random effect.*fixed effect.*design='~ donor"):
        im.tl.differential_expression(cohort, design="~ arm", random_effect="donor", **DE)
    # arm C keeps a single sample with >= min_cells cells: its contrasts are named in a warning and have no rows
    b = cohort.copy()
    drop = (b.obs["arm"] == "C").to_numpy() & ~b.obs["donor"].isin(["d2"]).to_numpy()
    keep = ~drop | (np.arange(b.n_obs) % 10 == 0)  # a few cells of the other C donors stay (below min_cells)
    b = b[keep].copy()
    with pytest.warns(UserWarning, match=r"arm: C vs A \(fewer than 2 samples .* 1 C\)"):
        res = im.tl.differential_expression(b, design="~ arm", min_cells=20, **DE)
    assert list(pd.unique(res["contrast"])) == ["arm: B vs A"]
    assert (res["n_samples"] == 9).all()
