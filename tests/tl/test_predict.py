"""tl.predict_response: nested CV without leakage, planted signals, baseline selection, errors, reproducibility."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import immunomood as im


def _donors(n=40, p=30, seed=0, effect=0.0, informative=(0, 1), continuous=False, missing=0.0):
    """A donor-level AnnData: n donors x p features, a binary 'responder' (or a continuous 'change')."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    obs = pd.DataFrame(index=[f"D{i:02d}" for i in range(n)])
    obs["donor"] = obs.index.to_numpy()
    if continuous:
        obs["change"] = effect * X[:, list(informative)].sum(1) + rng.normal(size=n)
    else:
        lab = np.array(["non-responder", "responder"])[np.arange(n) % 2]
        rng.shuffle(lab)
        for j in informative:
            X[lab == "responder", j] += effect
        obs["responder"] = pd.Categorical(lab, categories=["non-responder", "responder"])
    if missing:
        X[rng.random(X.shape) < missing] = np.nan
    var = pd.DataFrame({"kind": ["proportion"] * 5 + ["gene_set"] * (p - 5)}, index=[f"f{j}" for j in range(p)])
    return ad.AnnData(X=X, obs=obs, var=var)


def _run(adata, **kw):
    kw.setdefault("n_permutations", 0)
    kw.setdefault("n_repeats", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return im.tl.predict_response(adata, **kw)


# ---------------------------------------------------------------------------------------------- leakage
def test_no_leakage_pure_noise_many_features():
    """Pure noise, 300 features, 30 donors: the nested CV stays near 0.5; selecting on all donors first does not."""
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    nested, leaky = [], []
    for seed in range(3):
        a = _donors(n=30, p=300, seed=seed)
        res = _run(a, outcome="responder", n_repeats=3)
        nested.append(res.metrics["auc"])
        y = res.results["y"].to_numpy()
        X = a[res.results.index].X
        Xs = SelectKBest(f_classif, k=10).fit_transform(X, y)  # the leak: selection saw the test donors
        p = cross_val_predict(
            LogisticRegression(), Xs, y, cv=StratifiedKFold(5, shuffle=True, random_state=0), method="predict_proba"
        )[:, 1]
        leaky.append(roc_auc_score(y, p))
    assert abs(np.mean(nested) - 0.5) < 0.12, nested
    assert np.mean(leaky) > 0.8, leaky


# ---------------------------------------------------------------------------------------------- signal
def test_planted_binary_signal_found_with_permutation_p():
    a = _donors(n=40, p=30, effect=1.5, seed=1)
    res = _run(a, outcome="responder", n_permutations=19, n_repeats=2)
    assert res.params["outcome_type"] == "binary" and res.params["positive"] == "responder"
    assert res.metrics["auc"] > 0.8
    assert res.metrics["pvalue"] == pytest.approx(1 / 20)  # no permutation reaches the observed AUC
    assert len(res.null) == 19 and np.abs(res.null.mean() - 0.5) < 0.15
    assert set(res.features.index[:2]) == {"f0", "f1"}
    assert (res.features.loc[["f0", "f1"], "mean_coefficient"] > 0).all()
    assert (res.features.loc[["f0", "f1"], "sign_consistency"] == 1).all()
    # calibration table over all donors; Brier score of the stored predictions
    from sklearn.metrics import brier_score_loss

    assert res.calibration["n"].sum() == 40
    assert res.metrics["brier"] == pytest.approx(brier_score_loss(res.results["y"], res.results["prediction"]))
    assert np.isfinite(res.metrics["calibration_slope"]) and res.metrics["calibration_slope"] > 0
    # the mean prediction is higher for the responders, and it is the mean of the per-repeat columns
    r = res.results
    assert r.loc[r["y"] == 1, "prediction"].mean() > r.loc[r["y"] == 0, "prediction"].mean()
    np.testing.assert_allclose(r["prediction"], r[["oof_0", "oof_1"]].mean(1))


def test_sparse_l1_model_and_positive():
    a = _donors(n=40, p=30, effect=1.5, seed=2)
    res = _run(a, outcome="responder", model="l1", positive="non-responder", max_features=None)
    assert res.params["positive"] == "non-responder"
    assert res.metrics["auc"] > 0.8
    assert (res.features.loc[["f0", "f1"], "mean_coefficient"] < 0).all()  # lower in the positive class
    # L1: the planted features are always selected, the noise features less often and some never;
    # ridge without a filter gives every feature a coefficient in every fold
    noise = res.features.drop(["f0", "f1"])["selection_frequency"]
    assert (res.features.loc[["f0", "f1"], "selection_frequency"] == 1).all()
    assert noise.mean() < 0.6 and (noise == 0).any()
    ridge = _run(a, outcome="responder", model="ridge", max_features=None)
    assert (ridge.features["selection_frequency"] == 1).all()


def test_continuous_outcome():
    a = _donors(n=40, p=30, effect=1.0, continuous=True, seed=3)
    res = _run(a, outcome="change", n_permutations=19)
    assert res.params["outcome_type"] == "continuous"
    assert res.metrics["r2"] > 0.3 and res.metrics["pearson_r"] > 0.6
    assert res.metrics["pvalue"] == pytest.approx(1 / 20)
    assert res.calibration.empty
    from sklearn.metrics import r2_score

    assert res.metrics["r2_mean_prediction"] == pytest.approx(r2_score(res.results["y"], res.results["prediction"]))
    null = _run(_donors(n=40, p=30, effect=0.0, continuous=True, seed=4), outcome="change")
    assert null.metrics["r2"] < 0.1
    lasso = _run(a, outcome="change", model="l1", max_features=None)  # sparse, without the filter
    assert lasso.metrics["r2"] > 0.3
    f = lasso.features
    assert (f.loc[["f0", "f1"], "selection_frequency"] == 1).all()
    assert set(f["mean_coefficient"].abs().nlargest(2).index) == {"f0", "f1"}
    assert f.drop(["f0", "f1"])["selection_frequency"].mean() < 0.6


def test_missing_values_and_missing_outcome():
    a = _donors(n=40, p=30, effect=2.0, seed=5, missing=0.1)
    a.obs["responder"] = a.obs["responder"].astype(object)
    a.obs.loc[["D03", "D07"], "responder"] = np.nan
    with pytest.warns(UserWarning, match=r"2 donors left out.*D03"):
        res = im.tl.predict_response(a, outcome="responder", n_permutations=0, n_repeats=2)
    assert res.params["excluded_donors"] == ["D03", "D07"]
    assert "D03" not in res.results.index and len(res.results) == 38
    assert res.metrics["auc"] > 0.75


# ---------------------------------------------------------------------------------------------- baseline
def test_baseline_selection_equals_baseline_subset():
    a = _donors(n=30, p=20, effect=1.5, seed=6)
    later = a.copy()
    later.X = np.random.default_rng(9).normal(size=later.X.shape)
    later.obs_names = [f"{d}_w8" for d in a.obs_names]
    a.obs_names = [f"{d}_bl" for d in a.obs_names]
    a.obs["visit"] = "baseline"
    later.obs["visit"] = "week8"
    both = ad.concat([a, later], merge="same")
    both.var = a.var.copy()
    with pytest.raises(ValueError, match=r"30 donors appear more than once.*baseline="):
        im.tl.predict_response(both, outcome="responder")
    r1 = _run(both, outcome="responder", baseline={"visit": "baseline"})
    r2 = _run(both, outcome="responder", baseline=("visit", "baseline"))
    r0 = _run(a, outcome="responder")
    assert list(r1.results.index) == list(a.obs_names)
    np.testing.assert_allclose(r1.results["prediction"], r0.results["prediction"])
    np.testing.assert_allclose(r2.results["prediction"], r0.results["prediction"])
    assert r1.params["baseline"] == ["visit", "baseline"]
    with pytest.raises(ValueError, match="No row has 'visit' == 'screening'"):
        im.tl.predict_response(both, outcome="responder", baseline={"visit": "screening"})


def test_features_by_kind_and_name():
    a = _donors(n=30, p=20, effect=1.5, seed=7)
    res = _run(a, outcome="responder", features="proportion")
    assert set(res.features.index) == {f"f{j}" for j in range(5)}
    res = _run(a, outcome="responder", features=["f0", "gene_set"])
    assert set(res.features.index) == {"f0"} | {f"f{j}" for j in range(5, 20)}


# ---------------------------------------------------------------------------------------------- MuData, cells
@pytest.fixture(scope="module")
def cohort():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return im.datasets.simulate_cohort(n_donors=20, n_cells_per_donor=80, n_genes=1500, random_state=0)


def test_mudata_and_cell_level(cohort):
    cells, plasma = cohort
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dv = im.tl.donor_view(cells, sample_key="donor", groupby="cell_type_true")
    md = im.tl.join_proteomics(dv, plasma)
    res = _run(md, outcome="condition", features="prot")
    assert all(f.startswith("prot:") for f in res.features.index)
    assert res.metrics["auc"] > 0.8  # the simulator plants plasma differences between conditions
    assert "predict_response" in md.uns and set(md.uns["predict_response"]) >= {"params", "results", "null"}
    with pytest.raises(ValueError, match="looks like cell-level data.*sample_key="):
        im.tl.predict_response(cells, outcome="condition")
    with pytest.raises(KeyError, match="outcome column 'respond' not found in adata.obs"):
        im.tl.predict_response(cells, outcome="respond", sample_key="donor")  # before any donor_view work
    with pytest.raises(ValueError, match="varies within samples"):
        im.tl.predict_response(cells, outcome="cell_type_true", sample_key="donor")
    before = set(cells.uns)
    res_c = _run(
        cells,
        outcome="condition",
        sample_key="donor",
        groupby="cell_type_true",
        features="proportion",
        key_added="pr_cells",
    )
    assert set(cells.uns) - before == {"pr_cells"}
    assert res_c.metrics["n_donors"] == 20 and all(f.endswith("|proportion") for f in res_c.features.index)


# ---------------------------------------------------------------------------------------------- contract
def test_caller_object_unchanged_except_uns_and_writable(tmp_path):
    a = _donors(n=30, p=20, effect=1.0, seed=8)
    ref = a.copy()
    res = _run(a, outcome="responder", n_permutations=3, key_added="resp")
    assert set(a.uns) == {"resp"}
    np.testing.assert_array_equal(a.X, ref.X)
    pd.testing.assert_frame_equal(a.obs, ref.obs)
    pd.testing.assert_frame_equal(a.var, ref.var)
    st = a.uns["resp"]
    assert set(st) == {"params", "results", "metrics", "features", "calibration", "null"}
    pd.testing.assert_frame_equal(st["results"], res.results)
    np.testing.assert_array_equal(st["null"], res.null)
    a.write_h5ad(tmp_path / "a.h5ad")  # the stored result can be saved
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert back.uns["resp"]["params"]["outcome"] == "responder"


def test_reproducible_with_random_state():
    a = _donors(n=30, p=20, effect=0.8, seed=10)
    r1 = _run(a, outcome="responder", n_permutations=5, random_state=3)
    r2 = _run(a, outcome="responder", n_permutations=5, random_state=3)
    r3 = _run(a, outcome="responder", n_permutations=5, random_state=4)
    pd.testing.assert_frame_equal(r1.results, r2.results)
    np.testing.assert_array_equal(r1.null, r2.null)
    assert not np.allclose(r1.results["prediction"], r3.results["prediction"])


def test_warns_below_ten_donors_per_class():
    a = _donors(n=16, p=10, effect=2.0, seed=11)
    with pytest.warns(UserWarning, match="smaller class has only 8 donors"):
        im.tl.predict_response(a, outcome="responder", n_permutations=0, n_repeats=1, n_splits=4)


def test_errors_before_work():
    a = _donors(n=30, p=10, seed=12)
    with pytest.raises(KeyError, match="'resp' not found in adata.obs"):
        im.tl.predict_response(a, outcome="resp")
    a.obs["one"] = "x"
    with pytest.raises(ValueError, match="exactly two values in 'one', found 1"):
        im.tl.predict_response(a, outcome="one")
    a.obs["three"] = pd.Categorical(np.array(["a", "b", "c"])[np.arange(30) % 3])
    with pytest.raises(ValueError, match="exactly two values in 'three', found 3"):
        im.tl.predict_response(a, outcome="three")
    a.obs["rare"] = ["case"] * 3 + ["ctrl"] * 27
    with pytest.raises(ValueError, match="has 3 donors, fewer than n_splits=5"):
        im.tl.predict_response(a, outcome="rare")
    with pytest.raises(KeyError, match="neither a var name of adata nor a kind"):
        im.tl.predict_response(a, outcome="responder", features=["nope"])
    with pytest.raises(ValueError, match="selects no feature"):
        im.tl.predict_response(a, outcome="responder", features=[])
    with pytest.raises(TypeError, match="baseline"):
        im.tl.predict_response(a, outcome="responder", baseline="visit")
    with pytest.raises(ValueError, match="outcome_type"):
        im.tl.predict_response(a, outcome="responder", outcome_type="ordinal")
    with pytest.raises(ValueError, match="needs a numeric column"):
        im.tl.predict_response(a, outcome="responder", outcome_type="continuous")
    with pytest.raises(ValueError, match="positive='yes' is not a value"):
        im.tl.predict_response(a, outcome="responder", positive="yes")
    with pytest.raises(ValueError, match="n_permutations"):
        im.tl.predict_response(a, outcome="responder", n_permutations=-1)
    a.X[:] = np.nan
    with pytest.raises(ValueError, match="Every donor has a missing outcome|No feature with values"):
        im.tl.predict_response(a, outcome="responder")
    assert "predict_response" not in a.uns
