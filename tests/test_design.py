"""The shared design engine (``immunomood._design``): contrasts on the reference grid, errors found before any work,
between-within df, and the legacy two-group form as a thin layer over ``design=``."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pandas as pd
import pytest

from immunomood._design import build_design, contrast_as_coef


def _obs(n_donors=18, cells=3, seed=0):
    """Cells of ``n_donors`` donors (``cells`` each): a 3-level diagnosis, a continuous score, age, sex."""
    rng = np.random.default_rng(seed)
    donors = [f"D{i:02d}" for i in range(n_donors)]
    tab = pd.DataFrame(
        {
            "donor": donors,
            "dx": pd.Categorical(np.resize(["control", "MDD", "BD"], n_donors), categories=["control", "MDD", "BD"]),
            "hamd": rng.normal(15, 6, n_donors).round(1),
            "age": rng.integers(20, 70, n_donors).astype(float),
            "sex": np.resize(["F", "M", "M", "F", "F"], n_donors),
        }
    )
    obs = tab.loc[np.repeat(np.arange(n_donors), cells)].reset_index(drop=True)
    obs["donor"] = pd.Categorical(obs["donor"], categories=donors)
    obs.index = [f"c{i}" for i in range(len(obs))]
    return obs, tab.set_index("donor")


def _ols_beta(X, y):
    return np.linalg.lstsq(X, y, rcond=None)[0]


def test_three_level_contrasts_on_reference_grid():
    obs, _ = _obs()
    pairs = [("dx", "MDD", "control"), ("dx", "BD", "control"), ("dx", "BD", "MDD")]
    d = build_design(obs, sample_key="donor", design="~ dx + age", contrast=pairs)
    assert d.columns == ["Intercept", "dx[T.MDD]", "dx[T.BD]", "age"]
    v = {h.name: h.vector for h in d.hypotheses}
    np.testing.assert_allclose(v["dx: MDD vs control"], [0, 1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(v["dx: BD vs control"], [0, 0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(v["dx: BD vs MDD"], [0, -1, 1, 0], atol=1e-12)
    # without contrast/test: every pair of levels of the first variable, case after reference in level order
    d_all = build_design(obs, sample_key="donor", design="~ dx + age")
    assert [h.name for h in d_all.hypotheses] == ["dx: MDD vs control", "dx: BD vs control", "dx: BD vs MDD"]
    # the contrast is a difference of the group means adjusted for age: same as fitting the cell means directly
    rng = np.random.default_rng(1)
    y = rng.normal(size=len(d.table))
    beta = _ols_beta(d.X, y)
    tab = d.table
    cell = np.column_stack([(tab["dx"] == lv).to_numpy(float) for lv in ["control", "MDD", "BD"]] + [tab["age"]])
    g = _ols_beta(cell, y)
    assert v["dx: BD vs MDD"] @ beta == pytest.approx(g[2] - g[1], abs=1e-10)


def test_interaction_contrast_is_effect_at_reference_levels_and_means():
    obs, _ = _obs(n_donors=24)
    d = build_design(obs, sample_key="donor", design="~ dx * hamd", contrast=("dx", "BD", "MDD"), test="hamd")
    names = d.columns
    h_c, h_t = d.hypotheses
    mean_h = d.table["hamd"].astype(float).mean()
    expect = np.zeros(len(names))
    expect[names.index("dx[T.BD]")] = 1
    expect[names.index("dx[T.MDD]")] = -1
    expect[names.index("dx[T.BD]:hamd")] = mean_h
    expect[names.index("dx[T.MDD]:hamd")] = -mean_h
    np.testing.assert_allclose(h_c.vector, expect, atol=1e-9)
    # the per-unit slope of hamd (at the reference level of dx) equals the OLS slope in the control donors alone
    rng = np.random.default_rng(2)
    y = rng.normal(size=len(d.table)) + 0.3 * d.table["hamd"].to_numpy(float)
    beta = _ols_beta(d.X, y)
    ctrl = (d.table["dx"] == "control").to_numpy()
    x = d.table["hamd"].to_numpy(float)[ctrl]
    slope = _ols_beta(np.column_stack([np.ones(ctrl.sum()), x]), y[ctrl])[1]
    assert h_t.kind == "continuous" and h_t.vector @ beta == pytest.approx(slope, abs=1e-10)


def test_continuous_per_unit_slope_equals_ols_slope():
    import statsmodels.api as sm

    obs, tab = _obs(n_donors=20)
    d = build_design(obs, sample_key="donor", design="~ hamd + age + sex", test="hamd")
    (h,) = d.hypotheses
    assert h.kind == "continuous" and h.name == "hamd (per unit)"
    rng = np.random.default_rng(3)
    y = 0.2 * d.table["hamd"].to_numpy(float) + rng.normal(size=len(d.table))
    beta = _ols_beta(d.X, y)
    t = tab.loc[d.table.index]
    exog = sm.add_constant(pd.DataFrame({"hamd": t["hamd"], "age": t["age"], "male": (t["sex"] == "M").astype(float)}))
    ref = sm.OLS(y, exog).fit().params["hamd"]
    assert h.vector @ beta == pytest.approx(ref, abs=1e-10)


def test_interaction_test_of_two_level_factors():
    obs, _ = _obs(n_donors=16)
    obs["visit"] = pd.Categorical(np.resize(["baseline", "week8"], len(obs)), categories=["baseline", "week8"])
    obs["responder"] = pd.Categorical(np.where(obs["donor"].cat.codes % 2 == 0, "no", "yes"), categories=["no", "yes"])
    obs["sample"] = obs["donor"].astype(str) + "_" + obs["visit"].astype(str)
    d = build_design(
        obs, sample_key="sample", design="~ visit * responder", test="visit:responder", random_effect="donor"
    )
    (h,) = d.hypotheses
    assert h.kind == "interaction"
    np.testing.assert_array_equal(h.vector, (np.array(d.columns) == "visit[T.week8]:responder[T.yes]").astype(float))


def test_contrast_as_coef_reparametrises():
    rng = np.random.default_rng(4)
    D = np.column_stack([np.ones(12), rng.integers(0, 2, 12), rng.normal(size=12)])
    c = np.array([0.0, -1.0, 2.0])
    Ds = contrast_as_coef(D, c)
    y = rng.normal(size=12)
    b, bs = _ols_beta(D, y), _ols_beta(Ds, y)
    assert bs[0] == pytest.approx(c @ b, abs=1e-10)
    np.testing.assert_allclose(Ds @ bs, D @ b, atol=1e-10)  # same fit
    with pytest.raises(ValueError, match="all zero"):
        contrast_as_coef(D, np.zeros(3))


# ----------------------------------------------------------------------------------------------
# errors, all before any work
# ----------------------------------------------------------------------------------------------
def test_unknown_column_suggests_the_close_name():
    obs, _ = _obs()
    with pytest.raises(KeyError, match=r"'hamd_17'.*Did you mean \['hamd'\]"):
        build_design(obs, sample_key="donor", design="~ hamd_17 + age")
    with pytest.raises(ValueError, match=r"test='hamdd' is not in design.*Did you mean \['hamd'\]"):
        build_design(obs, sample_key="donor", design="~ hamd", test="hamdd")
    with pytest.raises(KeyError, match="sample_key 'donr'.*Did you mean"):
        build_design(obs, sample_key="donr", design="~ hamd")


def test_missing_values_name_the_samples():
    obs, _ = _obs()
    obs.loc[obs["donor"].isin(["D03", "D11"]), "hamd"] = np.nan
    with pytest.raises(ValueError, match=r"'hamd'.*missing values.*2 sample\(s\).*D03.*D11"):
        build_design(obs, sample_key="donor", design="~ hamd + age", test="hamd")


def test_rank_deficiency_names_the_columns():
    obs, _ = _obs()
    obs["age_months"] = obs["age"] * 12  # the same information as age
    with pytest.raises(ValueError, match=r"rank-deficient.*\['age', 'age_months'\]"):
        build_design(obs, sample_key="donor", design="~ dx + age + age_months")
    obs["site"] = obs["dx"].map({"control": "s1", "MDD": "s2", "BD": "s3"}).astype(str)  # confounded with dx
    with pytest.raises(ValueError, match=r"rank-deficient.*dx\[T.*site\[T"):
        build_design(obs, sample_key="donor", design="~ dx + site")


def test_categorical_test_and_wide_interaction_are_refused():
    obs, _ = _obs()
    with pytest.raises(ValueError, match=r"test='dx' is categorical.*contrast=\('dx', 'BD', 'control'\)"):
        build_design(obs, sample_key="donor", design="~ dx + age", test="dx")
    with pytest.raises(ValueError, match=r"spans 2 design columns.*dx\[T.MDD\]:hamd.*dx\[T.BD\]:hamd"):
        build_design(obs, sample_key="donor", design="~ dx * hamd", test="dx:hamd")
    with pytest.raises(ValueError, match="no hamd:age interaction term"):
        build_design(obs, sample_key="donor", design="~ hamd + age", test="hamd:age")
    with pytest.raises(ValueError, match="'hamd' is numeric"):
        build_design(obs, sample_key="donor", design="~ hamd", contrast=("hamd", 1, 2))


def test_too_few_samples_per_level():
    obs, _ = _obs(n_donors=12)
    one_bd = obs["donor"].isin(["D02", "D05", "D08"])  # three of the four BD donors -> MDD
    obs["dx"] = obs["dx"].astype(str).where(~one_bd, "MDD")
    with pytest.raises(ValueError, match=r"Condition 'BD' \(dx\) has 1 sample\(s\).*at least 2"):
        build_design(obs, sample_key="donor", design="~ dx", contrast=("dx", "BD", "control"))
    with pytest.raises(ValueError, match="takes 2 distinct value"):
        build_design(obs.assign(x=obs["donor"].cat.codes % 2 * 1.0), sample_key="donor", design="~ x", test="x")


# ----------------------------------------------------------------------------------------------
# between-within df with a random intercept
# ----------------------------------------------------------------------------------------------
def _visits(n_donors=12):
    rows = []
    for i in range(n_donors):
        for v in ("baseline", "week8"):
            rows.append(
                {
                    "donor": f"D{i:02d}",
                    "visit": v,
                    "responder": "yes" if i % 2 else "no",
                    "age": 20.0 + 3 * i + (i % 3),
                    "sample": f"D{i:02d}_{v}",
                }
            )
    obs = pd.DataFrame(rows)
    obs["visit"] = pd.Categorical(obs["visit"], categories=["baseline", "week8"])
    obs["responder"] = pd.Categorical(obs["responder"], categories=["no", "yes"])
    return obs


def test_between_within_df_visits_and_time_by_responder():
    from scipy import stats

    obs = _visits(12)
    # donor-level contrast (responder, constant over visits): between donors, 12 donors - 3 between columns
    d = build_design(
        obs,
        sample_key="sample",
        design="~ responder + visit + age",
        contrast=("responder", "yes", "no"),
        random_effect="donor",
    )
    groups = d.table["donor"].to_numpy()
    assert d.df_between_within(d.samples, d.hypotheses[0], groups) == 12 - 3
    # time x responder varies within donors: 24 samples - 12 donors - 2 within columns = 10 ...
    d2 = build_design(
        obs, sample_key="sample", design="~ visit * responder + age", test="visit:responder", random_effect="donor"
    )
    df_w = d2.df_between_within(d2.samples, d2.hypotheses[0], d2.table["donor"].to_numpy())
    assert df_w == 24 - 12 - 2
    # ... which, without the donor-level covariate, is the df of the two-sample t-test of the within-donor changes
    d3 = build_design(
        obs, sample_key="sample", design="~ visit * responder", test="visit:responder", random_effect="donor"
    )
    df3 = d3.df_between_within(d3.samples, d3.hypotheses[0], d3.table["donor"].to_numpy())
    rng = np.random.default_rng(5)
    y = pd.Series(rng.normal(size=24), index=d3.table.index)
    change = y[d3.table["visit"] == "week8"].to_numpy() - y[d3.table["visit"] == "baseline"].to_numpy()
    resp = d3.table.loc[d3.table["visit"] == "week8", "responder"].to_numpy() == "yes"
    tt = stats.ttest_ind(change[resp], change[~resp])
    assert df3 == tt.df == 10
    # and its contrast of the fixed effects equals the difference of mean changes
    beta = _ols_beta(d3.X, y.to_numpy())
    assert d3.hypotheses[0].vector @ beta == pytest.approx(change[resp].mean() - change[~resp].mean(), abs=1e-10)


def test_random_effect_errors():
    obs = _visits(6)
    with pytest.raises(ValueError, match="one level per sample"):
        build_design(
            obs.assign(sample_copy=obs["sample"]), sample_key="sample", design="~ visit", random_effect="sample_copy"
        )
    with pytest.raises(ValueError, match="random_effect 'donor' is also in the design"):
        build_design(obs, sample_key="sample", design="~ visit + donor", random_effect="donor")


# ----------------------------------------------------------------------------------------------
# the legacy two-group form is the same model as design=
# ----------------------------------------------------------------------------------------------
def test_legacy_condition_key_equals_design_call():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "tl"))
    from _synth import SETS, synth_cohort

    import immunomood as im

    a = synth_cohort(n_donors=10, effect=1.5, seed=3)
    d_old = build_design(a.obs, sample_key="donor", condition_key="condition", covariates=("age", "sex"))
    d_new = build_design(
        a.obs, sample_key="donor", design="~ condition + age + sex", contrast=("condition", "case", "control")
    )
    np.testing.assert_array_equal(d_old.X, d_new.X)
    np.testing.assert_array_equal(d_old.hypotheses[0].vector, d_new.hypotheses[0].vector)
    for method in ("score", "fry"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old = im.tl.differential_activity(
                a,
                condition_key="condition",
                covariates=("age", "sex"),
                sample_key="donor",
                groupby="cell_type",
                gene_sets=SETS,
                method=method,
            )
            new = im.tl.differential_activity(
                a,
                design="~ condition + age + sex",
                contrast=("condition", "case", "control"),
                sample_key="donor",
                groupby="cell_type",
                gene_sets=SETS,
                method=method,
            )
        pd.testing.assert_frame_equal(old, new)
        assert old["contrast"].unique().tolist() == ["condition: case vs control"]
        assert old["pvalue"].notna().sum() >= 4


def test_formula_transforms_find_their_columns():
    """Functions and modules in a formula are not columns: scale(age) uses 'age', np.log(crp) uses 'crp', and the
    per-unit test of a scaled column is the effect per unit of the original column."""
    from immunomood._design import build_design, formula_variables

    assert formula_variables("~ scale(age) + np.log(crp) + I(x ** 2)") == ["age", "crp", "x"]
    assert formula_variables('~ C(dx, Treatment("MDD")) + age') == ["dx", "age"]
    rng = np.random.default_rng(3)
    obs = pd.DataFrame(
        {"d": [f"d{i}" for i in range(12)], "age": rng.normal(40, 10, 12), "dx": ["MDD", "ctrl", "BD"] * 4}
    )
    D = build_design(obs, sample_key="d", design="~ scale(age) + dx", test="age", contrast=("dx", "BD", "ctrl"))
    h_age = next(h for h in D.hypotheses if h.kind == "continuous")
    assert h_age.vector[D.columns.index("scale(age)")] == pytest.approx(1 / obs["age"].std(ddof=1))


def test_mixed_model_on_the_boundary_falls_back_to_ols(monkeypatch):
    """A random-intercept variance estimated at 0 can give a covariance with a negative diagonal; the fit then uses
    the OLS estimate and standard error, keeping the between-within df."""
    import statsmodels.api as sm

    from immunomood._stats import ols
    from immunomood.tl._differential import _fit_set

    class Fake:
        def __init__(self, *a, **k):
            pass

        def fit(self, **k):
            return types.SimpleNamespace(fe_params=np.array([0.0, 9.0]), cov_params=lambda: -np.eye(2))

    monkeypatch.setattr(sm, "MixedLM", Fake)
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(6), 2)
    D = np.column_stack([np.ones(12), np.tile([0.0, 1.0], 6)])
    y = rng.normal(size=12) + D[:, 1]
    coef, se, df = _fit_set(y, D, np.array([0.0, 1.0]), groups)
    B, s2, XtXi, _ = ols(D, y[:, None])
    assert coef == pytest.approx(B[1, 0]) and se == pytest.approx(np.sqrt(s2[0] * XtXi[1, 1]))
    assert df == 12 - 6 - 1  # within-donor contrast
