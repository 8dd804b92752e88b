"""pl.predict_response: smoke tests for both outcome kinds, and the plot fits nothing (reads the stored result)."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import immunomood as im


@pytest.fixture(scope="module")
def donors():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 12))
    lab = np.array(["NR", "R"])[np.arange(30) % 2]
    X[lab == "R", :3] += 1.5
    obs = pd.DataFrame(
        {"responder": lab, "change": 2 * X[:, 1] + rng.normal(size=30)}, index=[f"D{i:02d}" for i in range(30)]
    )
    a = ad.AnnData(X=X, obs=obs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res_b = im.tl.predict_response(a, outcome="responder", n_permutations=9, n_repeats=2)
        res_c = im.tl.predict_response(a, outcome="change", n_permutations=9, n_repeats=2, key_added="pr_change")
    return a, res_b, res_c


def test_binary_two_panels_and_ax(donors):
    a, res_b, _ = donors
    fig = im.pl.predict_response(a)
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 2
    roc, hist = fig.axes
    assert roc.get_xlabel() == "false positive rate"
    # the null panel holds one bar per bin and the observed AUC as a vertical line
    assert res_b.metrics["pvalue"] == pytest.approx(0.1)  # no permutation of 9 reaches the planted AUC
    assert "p=0.1" in hist.get_title() and len(hist.patches) > 0
    assert np.isclose(hist.lines[0].get_xdata()[0], res_b.metrics["auc"])
    plt.close(fig)
    fig, ax = plt.subplots()
    out = im.pl.predict_response(res_b, ax=ax)  # the returned dataclass works too; with ax= the null is an inset
    assert out is ax and len(ax.child_axes) == 1
    plt.close(fig)
    out = im.pl.predict_response(a, null=None)
    assert isinstance(out, plt.Axes) and not out.child_axes
    fig, axes = plt.subplots(1, 2)  # two Axes given: the main panel and the null
    assert im.pl.predict_response(a, ax=axes) is fig
    assert axes[0].get_xlabel() == "false positive rate" and axes[1].get_ylabel() == "permutations"
    with pytest.raises(ValueError, match="unless null='panel'"):
        im.pl.predict_response(a, ax=axes, null="inset")
    plt.close("all")


def test_continuous_observed_vs_predicted(donors):
    a, _, res_c = donors
    fig = im.pl.predict_response(a, "pr_change")
    ax = fig.axes[0]
    pts = ax.collections[0].get_offsets()
    np.testing.assert_allclose(pts[:, 0], res_c.results["prediction"])
    np.testing.assert_allclose(pts[:, 1], res_c.results["y"])
    assert "R²" in ax.texts[0].get_text()
    plt.close(fig)


def test_plot_fits_nothing(donors, monkeypatch):
    """Every estimator's fit (and the tl engine) raises: the plot still draws from the stored result."""
    import sklearn.feature_selection
    import sklearn.impute
    import sklearn.linear_model
    import sklearn.pipeline
    import sklearn.preprocessing
    import statsmodels.api as sm

    import immunomood.tl._predict as tlp

    def boom(*a, **k):
        raise AssertionError("the plot fitted a model")

    for cls in (
        sklearn.linear_model.RidgeCV,
        sklearn.linear_model.LogisticRegression,
        sklearn.linear_model.ElasticNetCV,
        sklearn.pipeline.Pipeline,
        sklearn.preprocessing.StandardScaler,
        sklearn.impute.SimpleImputer,
        sklearn.feature_selection.SelectKBest,
        sm.GLM,
    ):
        monkeypatch.setattr(cls, "fit", boom)
    monkeypatch.setattr(tlp, "_nested_cv", boom)
    monkeypatch.setattr(tlp, "predict_response", boom)
    a, _, _ = donors
    with pytest.raises(AssertionError, match="fitted"):  # the patches are live
        sklearn.linear_model.RidgeCV().fit(np.zeros((3, 1)), np.zeros(3))
    fig = im.pl.predict_response(a)
    fig2 = im.pl.predict_response(a, "pr_change")
    assert len(fig.axes) == 2 and len(fig2.axes) == 2
    plt.close("all")


def test_errors(donors):
    a, _, _ = donors
    with pytest.raises(KeyError, match=r"No stored result in .uns\['nope'\].*im.tl.predict_response"):
        im.pl.predict_response(a, "nope")
    with pytest.raises(ValueError, match="`null` must be"):
        im.pl.predict_response(a, null="side")
    b = a.copy()
    b.uns["bad"] = {"params": {}}
    with pytest.raises(KeyError, match=r"\['results'\] is not a DataFrame"):
        im.pl.predict_response(b, "bad")
    with pytest.raises(KeyError, match=r"missing \['metrics', 'null'\]"):
        im.pl.predict_response({"params": {}, "results": pd.DataFrame()})
    with pytest.raises(TypeError, match="must be an AnnData"):
        im.pl.predict_response(np.zeros(3))
