"""Tests of im.pp.normalize and im.pp.highly_variable_genes."""

from __future__ import annotations

import inspect

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from anndata import AnnData
from scipy import sparse

import immunomood as im


@pytest.fixture
def counts_2batches():
    rng = np.random.default_rng(3)
    n, g = 400, 300
    mu = rng.gamma(0.5, 2.0, size=g)
    lib = rng.lognormal(0, 0.4, size=(n, 1))
    X = rng.negative_binomial(2, 2 / (2 + mu * lib)).astype(np.float32)
    X[:, 0] += 1
    obs = pd.DataFrame({"batch": np.repeat(["b1", "b2"], n // 2)}, index=[f"c{i}" for i in range(n)])
    return AnnData(sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(g)]))


@pytest.mark.parametrize("dense", [False, True])
def test_normalize_matches_scanpy(counts_2batches, dense):
    a = counts_2batches.copy()
    if dense:
        a.X = a.X.toarray()
    raw = a.X.copy()
    im.pp.normalize(a, target_sum=1e4)
    b = counts_2batches.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    Xa = a.X.toarray() if sparse.issparse(a.X) else a.X
    np.testing.assert_allclose(Xa, b.X.toarray(), rtol=1e-5, atol=1e-6)
    assert a.X.dtype == np.float32 and sparse.issparse(a.X) != dense
    L = a.layers["counts"]
    np.testing.assert_array_equal(
        L.toarray() if sparse.issparse(L) else L, raw.toarray() if sparse.issparse(raw) else raw
    )
    assert a.uns["log1p"] == {"base": None}
    assert a.uns["normalize"]["params"] == {"target_sum": 1e4, "counts_layer": "counts"}
    # expm1 of each row sums to target_sum
    np.testing.assert_allclose(np.expm1(Xa.astype(np.float64)).sum(1), 1e4, rtol=1e-4)


def test_normalize_copy_leaves_input(counts_2batches):
    a = counts_2batches
    before = (a.X.data.tobytes(), a.X.indices.tobytes(), a.X.indptr.tobytes(), dict(a.uns), list(a.layers))
    out = im.pp.normalize(a, copy=True, counts_layer="raw")
    assert (a.X.data.tobytes(), a.X.indices.tobytes(), a.X.indptr.tobytes(), dict(a.uns), list(a.layers)) == before
    assert "raw" in out.layers and "log1p" in out.uns


def test_normalize_empty_cells_stay_zero(counts_2batches):
    a = counts_2batches.copy()
    X = a.X.toarray()
    X[5] = 0
    a.X = sparse.csr_matrix(X)
    im.pp.normalize(a)
    assert a.X[5].sum() == 0 and np.isfinite(a.X.data).all()


def test_normalize_refuses_non_counts(counts_2batches):
    a = counts_2batches.copy()
    a.X = a.X * 0.37
    with pytest.raises(ValueError, match=r"non-integer values.*layer"):
        im.pp.normalize(a)
    a.X = a.X.toarray() - 2
    with pytest.raises(ValueError, match=r"negative values.*layer"):
        im.pp.normalize(a)
    assert "counts" not in a.layers
    # already normalised, counts in layers: says how to proceed
    b = counts_2batches.copy()
    im.pp.normalize(b)
    with pytest.raises(ValueError, match=r"already normalised.*adata.X = adata.layers\['counts'\].copy\(\)"):
        im.pp.normalize(b)


def test_normalize_errors(counts_2batches):
    with pytest.raises(ValueError, match="is a view"):
        im.pp.normalize(counts_2batches[:10])
    assert im.pp.normalize(counts_2batches[:10], copy=True).n_obs == 10
    with pytest.raises(ValueError, match="empty"):
        im.pp.normalize(counts_2batches[:0].copy())
    a = counts_2batches.copy()
    a.var_names = ["G0"] + list(a.var_names[1:-1]) + ["G0"]
    with pytest.raises(ValueError, match="duplicated"):
        im.pp.normalize(a)
    with pytest.raises(ValueError, match="target_sum"):
        im.pp.normalize(counts_2batches.copy(), target_sum=0)


@pytest.mark.parametrize("batch_key", [None, "batch"])
def test_hvg_matches_scanpy_seurat_v3(counts_2batches, batch_key):
    a = counts_2batches.copy()
    im.pp.normalize(a)
    im.pp.highly_variable_genes(a, n_top_genes=50, batch_key=batch_key)
    b = counts_2batches.copy()
    sc.pp.highly_variable_genes(b, flavor="seurat_v3", n_top_genes=50, batch_key=batch_key)
    np.testing.assert_array_equal(a.var["highly_variable"], b.var["highly_variable"])
    # our in-memory CSR path is the two-pass numba implementation: it must reproduce scanpy's numbers, not only flags
    for col in ("means", "variances", "variances_norm"):
        np.testing.assert_allclose(a.var[col].to_numpy(), b.var[col].to_numpy(), rtol=1e-9, err_msg=col)
    np.testing.assert_array_equal(a.var["highly_variable_rank"].to_numpy(), b.var["highly_variable_rank"].to_numpy())
    assert a.var["highly_variable"].sum() == 50
    assert a.uns["hvg"]["flavor"] == "seurat_v3"
    if batch_key:
        assert "highly_variable_nbatches" in a.var


def test_hvg_inplace_false_and_errors(counts_2batches):
    a = counts_2batches.copy()
    on_x = im.pp.highly_variable_genes(a, n_top_genes=50, inplace=False)  # no counts layer: X holds the counts
    with pytest.raises(KeyError, match=r"Layer 'counts' with raw counts not found.*im.pp.normalize"):
        im.pp.highly_variable_genes(a, layer="counts")
    im.pp.normalize(a)
    pd.testing.assert_frame_equal(im.pp.highly_variable_genes(a, n_top_genes=50, inplace=False), on_x)
    var_before = a.var.copy()
    df = im.pp.highly_variable_genes(a, n_top_genes=30, inplace=False)
    assert isinstance(df, pd.DataFrame) and df["highly_variable"].sum() == 30
    assert a.var.equals(var_before) and "hvg" not in a.uns
    with pytest.raises(KeyError, match="Available"):
        im.pp.highly_variable_genes(a, batch_key="donor")
    with pytest.raises(ValueError, match="not raw counts|raw counts, but"):
        a.layers["lognorm"] = a.X.copy()
        im.pp.highly_variable_genes(a, layer="lognorm")
    with pytest.raises(ValueError, match="n_top_genes"):
        im.pp.highly_variable_genes(a, n_top_genes=10_000)


def test_one_counts_layer_rule():
    """Every function that reads raw counts takes `layer=None`: layers["counts"] when present, else X. hvg's old
    `counts_layer=` still works, with a FutureWarning, and gives the same genes."""
    import warnings

    rng = np.random.default_rng(0)
    X = sparse.csr_matrix(rng.poisson(2.0, size=(200, 60)).astype(np.float32))
    a = ad.AnnData(
        X,
        obs=pd.DataFrame(
            {"donor": np.repeat(["d1", "d2"], 100), "ct": ["a", "b"] * 100}, index=[f"c{i}" for i in range(200)]
        ),
    )
    a.var_names = [f"g{i}" for i in range(60)]
    raw = a.copy()
    im.pp.normalize(a)  # X log-normalised, counts in layers["counts"]
    for func in (im.pp.qc_metrics, im.pp.highly_variable_genes, im.tl.pseudobulk, im.tl.integrate):
        assert inspect.signature(func).parameters["layer"].default is None, func.__name__
    qa, qr = im.pp.qc_metrics(a, inplace=False), im.pp.qc_metrics(raw, inplace=False)
    pd.testing.assert_frame_equal(qa[0], qr[0])  # the counts layer, not the log-normalised X
    pb = im.tl.pseudobulk(a, sample_key="donor", groupby="ct", min_cells=1)
    np.testing.assert_allclose(
        pb.X.toarray(), im.tl.pseudobulk(raw, sample_key="donor", groupby="ct", min_cells=1).X.toarray()
    )
    assert pb.uns["pseudobulk"]["layer"] == "counts"
    new = im.pp.highly_variable_genes(a, n_top_genes=20, inplace=False)
    with pytest.warns(FutureWarning, match="counts_layer"):
        old = im.pp.highly_variable_genes(a, n_top_genes=20, inplace=False, counts_layer="counts")
    pd.testing.assert_frame_equal(new, old)
    del a.layers["counts"]  # no counts layer and a log-normalised X: refused by every reader of raw counts
    for func, kw in (
        (im.tl.integrate, {"batch_key": "donor"}),
        (im.tl.pseudobulk, {"sample_key": "donor", "groupby": "ct"}),
    ):
        with pytest.raises((ValueError, KeyError), match="raw counts|not integer|non-integer"):
            func(a, **kw)
    a.layers["counts"] = raw.X.copy()
    with pytest.raises(ValueError, match="once"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        im.pp.highly_variable_genes(a, layer="counts", counts_layer="other")
