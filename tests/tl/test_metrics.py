"""integration_metrics: scib-metrics scaling on hand-computable cases and an independent LISI reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import immunomood as im
from immunomood.tl._metrics import (
    _clisi,
    _graph_connectivity,
    _ilisi,
    _knn,
    _lisi,
    _silhouette_batch,
    _silhouette_label,
)


def _reference_lisi(dist, idx, labels, perplexity):
    """Straight per-cell transcription of the Harmony/scib-metrics LISI (binary search on beta)."""
    codes = pd.Categorical(labels).codes
    out = []
    for d, nb in zip(dist, idx):
        beta, bmin, bmax = 1.0, -np.inf, np.inf

        def hb(b, d=d):
            P = np.exp(-d * b)
            s = P.sum()
            return (0.0, np.zeros_like(P)) if s == 0 else (np.log(s) + b * (d * P).sum() / s, P / s)

        H, P = hb(beta)
        diff = H - np.log(perplexity)
        tries = 0
        while abs(diff) > 1e-5 and tries < 50:
            if diff > 0:
                bmin = beta
                beta = beta * 2 if np.isinf(bmax) else (beta + bmax) / 2
            else:
                bmax = beta
                beta = beta / 2 if np.isinf(bmin) else (beta + bmin) / 2
            H, P = hb(beta)
            diff = H - np.log(perplexity)
            tries += 1
        w = np.bincount(codes[nb], weights=P, minlength=codes.max() + 1)
        out.append(1.0 / (w**2).sum())
    return np.array(out)


def _twins(n=200, d=4, seed=0):
    """Every point twice, once in batch a and once in batch b: a perfectly mixed embedding."""
    X = np.random.default_rng(seed).normal(size=(n, d))
    X = np.vstack([X, X])
    batches = np.repeat(["a", "b"], n)
    return X, batches


def test_lisi_matches_reference_implementation():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 3))
    labels = rng.choice(["x", "y", "z"], 150)
    dist, idx = _knn(X, 30)
    np.testing.assert_allclose(_lisi(dist, idx, labels), _reference_lisi(dist, idx, labels, 10), rtol=1e-9)


def test_perfectly_mixed_batches_score_one():
    X, b = _twins()
    d, i = _knn(X, 90)
    assert _ilisi(d, i, b) == pytest.approx(1.0, abs=1e-9)
    labels = np.repeat(["t"], len(b))
    # own batch: the same n - 1 other points (mean over n - 1); other batch: all n twins (mean over n, one at 0),
    # so a = S / (n - 1), b = S / n and s = (b - a) / a = -1 / n for every cell -> score 1 - 1 / n
    assert _silhouette_batch(X, labels, b) == pytest.approx(1 - 1 / 200, abs=1e-9)


def test_fully_separated_batches_and_labels():
    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(0, 1, (100, 3)), rng.normal(1000, 1, (100, 3))])
    groups = np.repeat(["g1", "g2"], 100)
    d, i = _knn(X, 90)
    assert _ilisi(d, i, groups) == pytest.approx(0.0, abs=1e-9)  # every neighbourhood one batch
    assert _clisi(d, i, groups) == pytest.approx(1.0, abs=1e-9)  # every neighbourhood one label
    assert _silhouette_label(X, groups) == pytest.approx(1.0, abs=5e-3)  # (ASW ~1 + 1) / 2
    # batch perfectly confounded with labels inside one label: silhouette of batches ~1 -> score ~0
    sub = np.vstack([rng.normal(0, 1, (50, 3)), rng.normal(1000, 1, (50, 3))])
    assert _silhouette_batch(sub, np.repeat("t", 100), np.repeat(["a", "b"], 50)) == pytest.approx(0.0, abs=5e-3)
    # graph connectivity on evenly spaced cells (a kNN graph of a line is strongly connected)
    line = np.concatenate([np.arange(100.0), 1000 + np.arange(100.0)])[:, None]
    _, i_line = _knn(line, 15)
    assert _graph_connectivity(i_line, groups) == pytest.approx(1.0)


def test_silhouette_label_hand_computed():
    X = np.array([[0.0], [1.0], [4.0], [5.0]])
    labels = np.array(["a", "a", "b", "b"])
    # point 0: a = 1, b = (4 + 5) / 2 = 4.5 -> s = 1 - 1/4.5; point 1: a = 1, b = 3.5 -> s = 1 - 1/3.5
    s = np.array([1 - 1 / 4.5, 1 - 1 / 3.5, 1 - 1 / 3.5, 1 - 1 / 4.5])
    assert _silhouette_label(X, labels) == pytest.approx((s.mean() + 1) / 2)


def test_graph_connectivity_hand_computed():
    # label "x": two far apart evenly spaced runs of 30 and 10 cells; the 10 cells' neighbours reach into the 30
    # but not back, so the largest strongly connected component holds 30 / 40; label "y": one run of 40 -> 1
    X = np.concatenate([np.arange(30.0), 1000 + np.arange(10.0), -1000 - np.arange(40.0)])[:, None]
    labels = np.array(["x"] * 40 + ["y"] * 40)
    _, i = _knn(X, 15)
    assert _graph_connectivity(i, labels) == pytest.approx((30 / 40 + 1.0) / 2)


def test_integration_metrics_dataframe_and_directions():
    rng = np.random.default_rng(4)
    n = 300
    labels = rng.choice(["t1", "t2", "t3"], n)
    batches = rng.choice(["b1", "b2"], n)
    centers = {"t1": 0, "t2": 8, "t3": 16}
    mixed = np.array([[centers[t], 0.0] for t in labels]) + rng.normal(0, 1, (n, 2))
    split = mixed + np.where(batches == "b2", 4.0, 0.0)[:, None] * np.array([0, 1.0])
    adata = AnnData(obs=pd.DataFrame({"batch": batches, "ct": labels}, index=[f"c{i}" for i in range(n)]))
    adata.obsm["X_pca"] = split
    adata.obsm["X_scVI"] = mixed
    before = {k: v.copy() for k, v in adata.obsm.items()}
    df = im.tl.integration_metrics(adata, batch_key="batch", label_key="ct")
    assert list(df.index) == ["X_pca (unintegrated)", "X_scVI"]
    for c in ["ilisi", "silhouette_batch", "clisi", "silhouette_label", "graph_connectivity", "batch_mean", "bio_mean"]:
        assert c in df.columns
        assert df[c].between(0, 1).all()
    assert df.loc["X_scVI", "ilisi"] > df.loc["X_pca (unintegrated)", "ilisi"] + 0.3
    assert df.loc["X_scVI", "silhouette_batch"] > df.loc["X_pca (unintegrated)", "silhouette_batch"]
    # only the documented UMAP of the unintegrated PCA is added; existing embeddings are untouched
    assert set(adata.obsm) == set(before) | {"X_integration_metrics_umap_unintegrated"}
    assert all(np.array_equal(adata.obsm[k], before[k]) for k in before)
    assert adata.uns["integration_metrics"]["metrics"].equals(df)
    assert df["implementation"].iloc[0] in {"immunomood", "scib-metrics"}


def test_integration_metrics_errors_and_pca_fallback(tiny_counts):
    a = tiny_counts.copy()
    a.obs["ct"] = np.tile(["x", "y", "z"], a.n_obs // 3)
    with pytest.raises(KeyError, match="X_scVI"):
        im.tl.integration_metrics(a, batch_key="sample", label_key="ct")
    with pytest.raises(KeyError, match="Available"):
        im.tl.integration_metrics(a, batch_key="nope", label_key="ct")
    a.obsm["X_scVI"] = np.random.default_rng(0).normal(size=(a.n_obs, 5))
    df = im.tl.integration_metrics(a, batch_key="sample", label_key="ct")
    assert "X_pca" not in a.obsm  # PCA computed on a private copy
    assert df.shape[0] == 2
