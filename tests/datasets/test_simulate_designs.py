"""Tests of the simulator's clinical designs (simulator 2.1.0): groups, severity, visits, responders, and the
guarantee that the defaults still give the output of simulator 2.0.0."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import immunomood as im
from immunomood.datasets import _simulate as S

BASE_COLUMNS = ["donor", "condition", "batch", "sex", "age", "cell_type_true", "lineage_true"]
DESIGN_COLUMNS = {"severity", "responder", "visit", "sample"}
SMALL = {"n_cells_per_donor": 100, "n_genes": 2000}


def _fingerprint(adata, plasma) -> tuple[str, str, str]:
    """Short sha256 of the counts (data, indices, indptr), of obs (values, dtypes, categories) and of plasma."""
    X = adata.X
    h = hashlib.sha256()
    for a in (X.data.astype(np.float32), X.indices.astype(np.int64), X.indptr.astype(np.int64)):
        h.update(np.ascontiguousarray(a).tobytes())
    o = hashlib.sha256(adata.obs.to_csv().encode())
    for c in adata.obs.columns:
        o.update(f"{c}:{adata.obs[c].dtype}".encode())
        if isinstance(adata.obs[c].dtype, pd.CategoricalDtype):
            o.update(repr(list(adata.obs[c].cat.categories)).encode())
    p = hashlib.sha256(np.round(plasma.X, 8).tobytes())
    p.update(plasma.obs.to_csv().encode())
    p.update(repr(list(plasma.var_names)).encode())
    return h.hexdigest()[:16], o.hexdigest()[:16], p.hexdigest()[:16]


def _planted_log2(adata, key: str) -> pd.Series:
    """Per level of ``obs[key]``: log2 of the share of the planted complement genes in the summed counts of its
    classical monocytes (the quantity the design's log2 shifts act on, up to a constant)."""
    m = (adata.obs["cell_type_true"] == S.COMPLEMENT_CELL_TYPE).to_numpy()
    idx = adata.var_names.get_indexer(adata.uns["simulation"]["effects"]["complement_genes"])
    X = adata.X[m]
    df = (
        pd.DataFrame(
            {
                "key": adata.obs.loc[m, key].astype(str).to_numpy(),
                "planted": np.asarray(X[:, idx].sum(1)).ravel(),
                "other": np.asarray(X.sum(1)).ravel() - np.asarray(X[:, idx].sum(1)).ravel(),
            }
        )
        .groupby("key")
        .sum()
    )
    return np.log2(df["planted"] / df["other"])


def _donors(adata) -> pd.DataFrame:
    return pd.DataFrame(adata.uns["simulation"]["donors"]).set_index("donor")


def _samples(adata) -> pd.DataFrame:
    return pd.DataFrame(adata.uns["simulation"]["design"]["samples"]).set_index("sample")


# ------------------------------------------------------------------------------------------------ backward compatibility
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"n_donors": 12, "n_cells_per_donor": 100, "n_batches": 2, "n_genes": 2000, "random_state": 0},
            ("5ed780341e8e7225", "17b82921ea80f8e4", "53fa9262cbb22d4b"),
        ),
        (
            {"n_donors": 12, "n_cells_per_donor": 100, "n_batches": 3, "null": True, "random_state": 5},
            ("6f62ce84c0f440b9", "6063aaae703e2043", "af7f72120732a7b2"),
        ),
    ],
)
def test_defaults_bit_identical_to_2_0_0(kwargs, expected):
    """Backward-compatibility guard: with the design parameters at their defaults, ``X``, ``obs`` and the plasma
    are bit-identical to simulator 2.0.0 (commit e2cbfea, before the clinical designs were added).

    The hashes were computed from a run of ``simulate_cohort`` at that commit, before editing. Hard-coding output
    hashes is acceptable here, and only here, because this test guards exactly that nothing existing changed (the
    statistical properties of the new features are tested below against their truth). Should numpy's generators
    change between versions, the hashes change too: recompute them at a 2.0.0 checkout with the same numpy.
    """
    adata, plasma = im.datasets.simulate_cohort(**kwargs)
    assert list(adata.obs.columns) == BASE_COLUMNS
    assert _fingerprint(adata, plasma) == expected


def test_explicit_defaults_and_design_stream_leave_existing_output_alone():
    a0, p0 = im.datasets.simulate_cohort(12, random_state=4, **SMALL)
    explicit, pe = im.datasets.simulate_cohort(
        12,
        random_state=4,
        groups=["control", "MDD"],
        group_effects=None,
        severity_effect=0.0,
        n_visits=1,
        responder_fraction=0.5,
        treatment_effect=0.0,
        response_baseline_effect=0.0,
        **SMALL,
    )
    assert _fingerprint(a0, p0) == _fingerprint(explicit, pe)
    # a design parameter that plants nothing: the severity column appears, nothing else moves
    a1, p1 = im.datasets.simulate_cohort(12, random_state=4, responder_fraction=0.3, **SMALL)
    assert list(a1.obs.columns) == [*BASE_COLUMNS, "severity"]
    assert (a1.X != a0.X).nnz == 0
    pd.testing.assert_frame_equal(a1.obs[BASE_COLUMNS], a0.obs)
    np.testing.assert_array_equal(p1.X, p0.X)
    # severity scores and responders are drawn whatever the parameters: the same for a seed
    pd.testing.assert_series_equal(_donors(a1)["severity"], _donors(a0)["severity"])
    assert (a1.obs.groupby("donor", observed=True)["severity"].first() == _donors(a0)["severity"]).all()


def test_baseline_of_two_visits_is_the_one_visit_cohort():
    kw = dict(severity_effect=1.0, response_baseline_effect=0.7, random_state=2, **SMALL)
    one, _ = im.datasets.simulate_cohort(12, n_visits=1, **kw)
    two, _ = im.datasets.simulate_cohort(12, n_visits=2, treatment_effect=-1.0, **kw)
    base = two[(two.obs["visit"] == "baseline").to_numpy()]
    assert (base.X != one.X).nnz == 0
    cols = [*BASE_COLUMNS, "severity", "responder"]
    assert list(one.obs.columns) == cols
    # (a view drops unused categories: compare the values)
    pd.testing.assert_frame_equal(
        base.obs[cols].astype(str).reset_index(drop=True), one.obs.astype(str).reset_index(drop=True)
    )


# ------------------------------------------------------------------------------------------------ groups
def test_three_groups_balanced_over_batches():
    groups = ("control", "MDD", "BD")
    adata, plasma = im.datasets.simulate_cohort(18, n_batches=3, groups=groups, random_state=1, **SMALL)
    assert list(adata.obs["condition"].cat.categories) == list(groups)
    assert list(plasma.obs["condition"].cat.categories) == list(groups)
    donors = adata.obs.groupby("donor", observed=True)[["condition", "batch"]].first()
    assert (donors["condition"].value_counts() == 6).all()
    assert (pd.crosstab(donors["batch"], donors["condition"]).to_numpy() == 2).all()
    sim = adata.uns["simulation"]
    assert sim["design"]["groups"] == list(groups) and sim["design"]["reference"] == "control"
    assert sim["design"]["group_sizes"] == {"control": 6, "MDD": 6, "BD": 6}
    assert sim["composition_expected"]["BD"] == sim["composition_expected"]["MDD"]
    assert sim["composition_expected"]["BD"] != sim["composition_expected"]["control"]
    assert sim["effects"]["group_effects"] == {"MDD": 1.5, "BD": 1.5}
    assert "severity" in adata.obs and "responder" not in adata.obs and "visit" not in adata.obs
    # uneven split: as even as possible, the remainder to the first groups
    uneven, _ = im.datasets.simulate_cohort(
        16, n_batches=5, groups=groups, random_state=1, n_cells_per_donor=20, n_genes=500
    )
    n = uneven.obs.groupby("donor", observed=True)["condition"].first().value_counts()
    assert n.to_dict() == {"control": 6, "MDD": 5, "BD": 5}
    assert (
        pd.crosstab(
            uneven.obs.groupby("donor", observed=True)["batch"].first(),
            uneven.obs.groupby("donor", observed=True)["condition"].first(),
        ).to_numpy()
        >= 1
    ).all()


def test_group_effects_planted_in_the_right_group():
    adata, plasma = im.datasets.simulate_cohort(
        18,
        n_batches=1,
        groups=("control", "MDD", "BD"),
        group_effects={"MDD": 1.0, "BD": 3.0},
        random_state=3,
        **SMALL,
    )
    sim = adata.uns["simulation"]
    act = pd.Series(sim["complement_activity"]) - pd.Series(sim["latent_complement_activity"])
    cond = _donors(adata)["condition"]
    np.testing.assert_allclose(act[cond == "BD"], math.log(3.0))
    np.testing.assert_allclose(act[cond != "BD"], 0.0)
    y = _planted_log2(adata, "donor").reindex(cond.index)
    diff = {g: y[cond == g].mean() - y[cond == "control"].mean() for g in ("MDD", "BD")}
    se = {g: math.sqrt(y[cond == g].var() / 6 + y[cond == "control"].var() / 6) for g in ("MDD", "BD")}
    assert abs(diff["BD"] - math.log2(3.0)) < 4 * se["BD"]
    assert abs(diff["MDD"]) < 4 * se["MDD"]
    assert diff["BD"] > 6 * se["BD"]  # the test can tell the effect from nothing
    # DCLK3 / CALY shifted in every non-reference group
    x = pd.DataFrame(plasma[:, ["DCLK3"]].X, index=plasma.obs_names)[0]
    for g in ("MDD", "BD"):
        assert x[cond == g].mean() - x[cond == "control"].mean() > 0.3


# ------------------------------------------------------------------------------------------------ severity
@pytest.mark.parametrize("severity_effect", [2.0, 0.0])
def test_severity_slope_recovered(severity_effect):
    """Log2 planted share of each patient's classical monocytes regressed on severity: the slope is
    severity_effect / 10 per point within 4 standard errors of the fit (measured over seeds 0-7 at 18 donors
    x 150 cells: |z| <= 1.7 with and without the effect), and ~0 without the effect. The scores come from the
    truth's donor table, which always has them (obs["severity"] only when a design parameter is used)."""
    adata, _ = im.datasets.simulate_cohort(
        18, n_batches=1, severity_effect=severity_effect, random_state=11, n_cells_per_donor=150, n_genes=2000
    )
    don = _donors(adata)
    assert ((don["severity"] >= 0) & (don["severity"] <= 52)).all()
    ctrl, pat = don[don["condition"] == "control"], don[don["condition"] == "MDD"]
    assert ctrl["severity"].mean() < 8 and pat["severity"].mean() > 15
    if severity_effect:
        obs_sev = adata.obs.groupby("donor", observed=True)["severity"].agg(["first", "nunique"])
        assert (obs_sev["nunique"] == 1).all()
        np.testing.assert_array_equal(obs_sev["first"], don["severity"].reindex(obs_sev.index))
    else:
        assert list(adata.obs.columns) == BASE_COLUMNS
    truth = adata.uns["simulation"]["effects"]["severity_log2_slope_per_point"]
    assert truth == severity_effect / 10
    # the truth is consistent: the design's log2 shift is exactly the slope times the centred score
    samples = _samples(adata)
    centre = adata.uns["simulation"]["design"]["severity_centre"]
    assert math.isclose(centre, pat["severity"].mean())
    np.testing.assert_allclose(
        samples.loc[pat.index, "design_log2_shift"], truth * (pat["severity"] - centre), atol=1e-12
    )
    np.testing.assert_allclose(samples.loc[ctrl.index, "design_log2_shift"], 0.0)
    y = _planted_log2(adata, "donor").reindex(pat.index).to_numpy()
    fit = sm.OLS(y, sm.add_constant(pat["severity"].to_numpy())).fit()
    slope, se = fit.params[1], fit.bse[1]
    assert abs(slope - truth) < 4 * se, (slope, se, truth)
    if severity_effect:
        assert slope > 5 * se


# ------------------------------------------------------------------------------------------------ visits, responders
@pytest.fixture(scope="module")
def trial():
    return im.datasets.simulate_cohort(
        16,
        n_batches=1,
        n_cells_per_donor=120,
        n_genes=2000,
        n_visits=2,
        treatment_effect=-1.0,
        response_baseline_effect=3.0,
        random_state=7,
    )


def test_visits_and_samples(trial, tmp_path):
    import anndata as ad

    adata, plasma = trial
    obs = adata.obs
    assert list(obs.columns) == [*BASE_COLUMNS, "severity", "responder", "visit", "sample"]
    assert list(obs["visit"].cat.categories) == ["baseline", "week8"]
    assert list(obs["responder"].cat.categories) == ["non-responder", "responder", "control"]
    assert (obs["sample"].astype(str) == obs["donor"].astype(str) + "_" + obs["visit"].astype(str)).all()
    per_donor = obs.groupby("donor", observed=True)["visit"].nunique()
    assert (per_donor == 2).all() and obs["sample"].nunique() == 32
    assert adata.obs_names.is_unique
    sim = adata.uns["simulation"]
    counts = obs["sample"].astype(str).value_counts()
    assert counts.to_dict() == sim["n_cells"]
    assert sim["design"]["visits"] == ["baseline", "week8"]
    # donor-level columns constant within donor; severity constant within sample
    assert (obs.groupby("donor", observed=True)[["condition", "batch", "responder"]].nunique() == 1).all().all()
    assert (obs.groupby("sample", observed=True)["severity"].nunique() == 1).all()
    # responders: half of the patients, controls "control"
    don = _donors(adata)
    assert (don.loc[don["condition"] == "control", "responder"] == "control").all()
    assert (don.loc[don["condition"] == "MDD", "responder"] == "responder").sum() == 4
    assert sim["design"]["responders"] == don["responder"].to_dict()
    # severity at week8: -50% in responders, -10% in non-responders, unchanged in controls
    sev = obs.groupby(["donor", "visit"], observed=True)["severity"].first().unstack()
    ratio = (sev["week8"] / sev["baseline"]).where(sev["baseline"] > 0)
    factor = don["responder"].map(S.SEVERITY_WEEK8_FACTOR)
    np.testing.assert_allclose(ratio.dropna(), factor.reindex(ratio.dropna().index))
    # plasma: one row per donor with its baseline
    assert list(plasma.obs_names) == list(don.index)
    np.testing.assert_allclose(plasma.obs["severity"], sev["baseline"].reindex(plasma.obs_names))
    assert (plasma.obs["responder"].astype(str) == don["responder"]).all()
    # the truth survives h5ad
    adata.write_h5ad(tmp_path / "a.h5ad")
    plasma.write_h5ad(tmp_path / "p.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad").uns["simulation"]["design"]
    assert list(back["samples"]["sample"]) == list(obs["sample"].cat.categories)
    assert ad.read_h5ad(tmp_path / "p.h5ad").obs["responder"].astype(str).tolist() == don["responder"].tolist()


def test_interaction_truth_and_recovery(trial):
    adata, plasma = trial
    design = adata.uns["simulation"]["design"]
    assert design["treatment_effect"] == design["interaction_log2"] == -1.0
    assert design["response_baseline_effect"] == 3.0 and design["response_protein"] == "IL6"
    s = _samples(adata)
    wide = s.pivot(index="donor", columns="visit", values="planted_log2_shift")
    change = wide["week8"] - wide["baseline"]
    resp = pd.Series(design["responders"])
    np.testing.assert_allclose(change[resp == "responder"], -1.0, atol=1e-12)
    np.testing.assert_allclose(change[resp != "responder"], 0.0, atol=1e-12)
    base = wide["baseline"]
    assert np.isclose(base[resp == "responder"].mean() - base[resp == "non-responder"].mean(), 3.0)
    # recovered from the counts: paired change, responders - non-responders (the donor variation cancels)
    y = _planted_log2(adata, "sample")
    y.index = pd.MultiIndex.from_tuples([tuple(i.rsplit("_", 1)) for i in y.index])
    obs_change = (y.xs("week8", level=1) - y.xs("baseline", level=1)).reindex(resp.index)
    r, n = obs_change[resp == "responder"], obs_change[resp == "non-responder"]
    est, se = r.mean() - n.mean(), math.sqrt(r.var() / r.size + n.var() / n.size)
    assert abs(est - (-1.0)) < 4 * se and est < -5 * se, (est, se)
    c = obs_change[resp == "control"]
    assert abs(c.mean()) < 4 * c.std() / math.sqrt(c.size)
    # plasma IL6 differs responders - non-responders by response_baseline_effect
    il6 = pd.Series(plasma[:, "IL6"].X.ravel(), index=plasma.obs_names)
    d = il6[resp == "responder"].mean() - il6[resp == "non-responder"].mean()
    se_p = math.sqrt(il6[resp == "responder"].var() / 4 + il6[resp == "non-responder"].var() / 4)
    assert abs(d - 3.0) < 4 * se_p and d > 3 * se_p


def test_responder_column_without_visits():
    adata, plasma = im.datasets.simulate_cohort(
        12, response_baseline_effect=1.0, responder_fraction=1 / 3, random_state=0, **SMALL
    )
    assert list(adata.obs.columns) == [*BASE_COLUMNS, "severity", "responder"]
    don = _donors(adata)
    assert (don.loc[don["condition"] == "MDD", "responder"] == "responder").sum() == 2  # round(6 / 3)
    assert "responder" in plasma.obs
    fr0, _ = im.datasets.simulate_cohort(
        12, n_visits=2, responder_fraction=0.0, random_state=0, n_cells_per_donor=20, n_genes=500
    )
    assert set(fr0.obs["responder"].astype(str)) == {"control", "non-responder"}


# ------------------------------------------------------------------------------------------------ null
def test_null_zeroes_design_effects():
    kw = {
        "groups": ("control", "MDD", "BD"),
        "group_effects": {"BD": 2.0},
        "severity_effect": 3.0,
        "n_visits": 2,
        "treatment_effect": -2.0,
        "response_baseline_effect": 2.0,
        "random_state": 9,
        "n_cells_per_donor": 30,
        "n_genes": 500,
    }
    null, nplasma = im.datasets.simulate_cohort(12, n_batches=2, null=True, **kw)
    alt, _ = im.datasets.simulate_cohort(12, n_batches=2, **kw)
    assert list(null.obs.columns) == list(alt.obs.columns)  # same layout as the non-null twin
    sim = null.uns["simulation"]
    eff, design = sim["effects"], sim["design"]
    assert eff["group_effects"] == {"MDD": 1.0, "BD": 1.0}
    assert eff["severity_log2_slope_per_point"] == 0 and design["treatment_effect"] == 0
    assert design["response_baseline_effect"] == 0 and eff["complement_log_effect"] == 0
    assert set(design["response_protein_log2"].values()) == {0.0}
    np.testing.assert_allclose(_samples(null)["planted_log2_shift"], 0.0)  # complement_sd is 0 by default
    assert nplasma.uns["simulation"]["effects"]["response_baseline_effect"] == 0
    # the design itself (scores, responders) is the same as the non-null twin's
    pd.testing.assert_frame_equal(_donors(null), _donors(alt))
    assert np.ptp(_samples(alt)["planted_log2_shift"]) > 1


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"groups": "MDD"}, TypeError, "groups.*sequence"),
        ({"groups": ("control",)}, ValueError, "groups.*at least 2"),
        ({"groups": ("control", "MDD", "MDD")}, ValueError, "groups.*unique"),
        ({"groups": ("control", 3)}, TypeError, "groups.*non-empty strings"),
        ({"groups": ("control", "")}, TypeError, "groups.*non-empty strings"),
        ({"group_effects": {"control": 1.2}}, ValueError, "reference"),
        ({"group_effects": {"BD": 1.2}}, ValueError, "group_effects.*not non-reference"),
        ({"group_effects": {"MDD": 0}}, ValueError, r"group_effects\['MDD'\].*> 0"),
        ({"group_effects": [1.5]}, TypeError, "group_effects.*mapping"),
        ({"severity_effect": float("nan")}, TypeError, "severity_effect.*finite"),
        ({"severity_effect": "high"}, TypeError, "severity_effect"),
        ({"n_visits": 3}, ValueError, "n_visits.*one of"),
        ({"n_visits": 2.0}, TypeError, "n_visits.*integer"),
        ({"n_visits": True}, TypeError, "n_visits.*integer"),
        ({"responder_fraction": 1.5}, ValueError, "responder_fraction"),
        ({"responder_fraction": -0.1}, ValueError, "responder_fraction"),
        ({"treatment_effect": 1.0}, ValueError, "treatment_effect.*n_visits=2"),
        ({"response_baseline_effect": None}, TypeError, "response_baseline_effect"),
        ({"n_donors": 5, "groups": ("control", "MDD", "BD")}, ValueError, "n_donors.*>= 6.*2 donors per group"),
        ({"n_donors": 8, "n_batches": 3, "groups": ("control", "MDD", "BD")}, ValueError, "n_batches.*at most 2"),
        ({"n_donors": 5}, ValueError, "must be even"),
    ],
)
def test_bad_design_inputs(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        im.datasets.simulate_cohort(**kwargs)
