"""Tests of im.pp.detect_doublets (scrublet per sample)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import immunomood as im


def _cells_with_doublets(n_per_type=120, n_doublets=15, n_genes=300, seed=0, sample="a"):
    """Three cell types with distinct profiles plus planted doublets (sums of two cells of different types)."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.6, 1.0, size=(3, n_genes))
    for t in range(3):  # type-specific marker blocks
        base[t, t * 40 : (t + 1) * 40] *= 12
    cells, types = [], []
    for t in range(3):
        lib = rng.lognormal(0, 0.2, size=(n_per_type, 1))
        cells.append(rng.poisson(base[t] * lib))
        types += [t] * n_per_type
    X = np.vstack(cells).astype(np.float32)
    types = np.array(types)
    i = rng.choice(np.flatnonzero(types == 0), n_doublets, replace=False)
    j = rng.choice(np.flatnonzero(types == 1), n_doublets, replace=False)
    D = X[i] + X[j]
    X = np.vstack([X, D])
    truth = np.r_[np.zeros(len(types), bool), np.ones(n_doublets, bool)]
    obs = pd.DataFrame({"sample": sample, "is_doublet": truth}, index=[f"{sample}_{k}" for k in range(len(truth))])
    return AnnData(sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"G{g}" for g in range(n_genes)]))


@pytest.fixture(scope="module")
def two_samples_and_small():
    import anndata as ad

    a = _cells_with_doublets(seed=0, sample="a")
    b = _cells_with_doublets(seed=1, sample="b")
    small = _cells_with_doublets(n_per_type=5, n_doublets=2, seed=2, sample="tiny")
    return ad.concat([a, b, small])


def test_detect_doublets_per_sample(two_samples_and_small):
    adata = two_samples_and_small.copy()
    X_before = adata.X.copy()
    with pytest.warns(UserWarning, match=r"Doublets not scored in 1 of 3 sample\(s\): tiny \(17 cells") as rec:
        im.pp.detect_doublets(adata, sample_key="sample")
    assert any(w.filename == __file__ for w in rec)  # the warning points at the caller's line
    # the unscored sample is a line of the report's summary, not only a log line
    problems = adata.uns["immunomood_problems"]
    assert len(problems) == 1 and "tiny (17 cells" in problems[0]
    assert (adata.X != X_before).nnz == 0  # X never modified
    obs = adata.obs
    assert obs["doublet_score"].dtype == np.float64 and obs["predicted_doublet"].dtype == bool
    tiny = obs["sample"] == "tiny"
    assert obs.loc[tiny, "doublet_score"].isna().all() and not obs.loc[tiny, "predicted_doublet"].any()
    for s in ["a", "b"]:
        o = obs[obs["sample"] == s]
        assert o["doublet_score"].notna().all()
        # planted doublets score higher than singlets
        assert o.loc[o["is_doublet"], "doublet_score"].median() > o.loc[~o["is_doublet"], "doublet_score"].quantile(0.9)
    summ = adata.uns["qc"]["doublets"]
    assert summ.set_index("sample").loc["tiny", "scored"] == False  # noqa: E712
    assert adata.uns["qc"]["params"]["detect_doublets"]["sample_key"] == "sample"


def test_detect_doublets_per_sample_equals_separate_runs(two_samples_and_small):
    """Scoring per sample: sample 'a' alone gives the same scores as within the pooled object."""
    adata = two_samples_and_small.copy()
    res = im.pp.detect_doublets(adata[adata.obs["sample"] != "tiny"], sample_key="sample", inplace=False)
    alone = adata[adata.obs["sample"] == "a"].copy()
    im.pp.detect_doublets(alone, sample_key="sample")
    np.testing.assert_allclose(res.loc[alone.obs_names, "doublet_score"], alone.obs["doublet_score"])
    # same seed, same result
    res2 = im.pp.detect_doublets(adata[adata.obs["sample"] != "tiny"], sample_key="sample", inplace=False)
    pd.testing.assert_frame_equal(res, res2)


def test_detect_doublets_inplace_false_and_errors(two_samples_and_small):
    adata = two_samples_and_small[two_samples_and_small.obs["sample"] == "a"].copy()
    cols = list(adata.obs.columns)
    out = im.pp.detect_doublets(adata, sample_key=None, inplace=False)
    assert list(out.columns) == ["doublet_score", "predicted_doublet"] and list(adata.obs.columns) == cols
    assert "qc" not in adata.uns
    with pytest.raises(KeyError, match=r"'donor' not found in adata.obs. Available"):
        im.pp.detect_doublets(adata, sample_key="donor")
    with pytest.raises(ValueError, match="is a view"):
        im.pp.detect_doublets(adata[:50], sample_key="sample")
    neg = adata.copy()
    neg.X = neg.X.toarray() - 1
    with pytest.raises(ValueError, match="negative values"):
        im.pp.detect_doublets(neg, sample_key="sample")
    with pytest.raises(ValueError, match="empty"):
        im.pp.detect_doublets(adata[:0].copy(), sample_key="sample")


def test_detect_doublets_refuses_log_normalised(two_samples_and_small):
    adata = two_samples_and_small.copy()
    adata.X = adata.X.astype(np.float32)
    adata.X.data = np.log1p(adata.X.data * 1.37)
    with pytest.raises(ValueError, match="needs raw counts"):
        im.pp.detect_doublets(adata, sample_key="sample")
    assert "doublet_score" not in adata.obs
