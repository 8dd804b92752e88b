"""The main path at real size (20,000+ cells): the class of failure that only shows above 4,096 / 8,192
cells (scanpy's approximate-neighbour path with pynndescent >= 0.7 and scipy >= 1.15) must be caught here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from anndata import AnnData
from scipy import sparse

import immunomood as im
from immunomood._neighbors import EXACT_MAX_CELLS, KnnTransformer, knn_lists


@pytest.fixture(scope="module")
def cohort_20k():
    adata, _ = im.datasets.simulate_cohort(n_donors=8, n_cells_per_donor=2_600, random_state=0)
    assert adata.n_obs >= 20_000
    return adata


def test_main_path_20k_cells(cohort_20k):
    adata = cohort_20k.copy()
    im.pp.detect_doublets(adata, sample_key="donor")
    report = adata.uns["qc"]["doublets"]
    # every sample (2,600 cells each: above scanpy's 4,096-obs approximate threshold with simulated doublets)
    assert report["scored"].all(), report
    assert "immunomood_problems" not in adata.uns
    assert np.isfinite(adata.obs["doublet_score"]).all()

    im.pp.normalize(adata)
    im.pp.highly_variable_genes(adata, n_top_genes=1_000, batch_key="batch")
    sc.pp.pca(adata, n_comps=20, mask_var="highly_variable", random_state=0)
    im.tl.embed(adata, use_rep="X_pca")
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    D = adata.obsp["distances"]
    assert D.shape == (adata.n_obs, adata.n_obs)
    # 15 stored entries per cell (itself as an explicit zero + 14 neighbours, as scanpy's pynndescent path)
    assert np.all(np.diff(D.indptr) == 15)
    assert adata.obs["leiden"].nunique() > 3

    im.tl.annotate(adata)
    truth = adata.obs["lineage_true"].astype(str).to_numpy()
    called = adata.obs["cell_lineage"].astype(str).to_numpy()
    assigned = called != "Unassigned"
    assert assigned.mean() > 0.9
    assert (called[assigned] == truth[assigned]).mean() > 0.95


def test_knn_lists_exact_matches_sklearn():
    from sklearn.neighbors import NearestNeighbors

    X = np.random.default_rng(1).normal(size=(600, 8)).astype(np.float32)
    idx, dist = knn_lists(X, 10)
    assert np.array_equal(idx[:, 0], np.arange(600)) and np.all(dist[:, 0] == 0)
    d_ref, _ = NearestNeighbors(n_neighbors=10).fit(X).kneighbors(X)
    np.testing.assert_allclose(dist, d_ref, rtol=1e-4, atol=1e-4)


def test_knn_lists_duplicates_put_self_first():
    X = np.repeat(np.random.default_rng(2).normal(size=(50, 3)), 3, axis=0)
    idx, dist = knn_lists(X, 5)
    assert np.array_equal(idx[:, 0], np.arange(len(X)))
    assert np.all(dist[:, 0] == 0)


@pytest.mark.slow
def test_knn_lists_nndescent_recall():
    """The approximate path (used above EXACT_MAX_CELLS cells) finds >= 95% of the exact neighbours."""
    X = np.random.default_rng(3).normal(size=(6_000, 10)).astype(np.float32)
    exact, _ = knn_lists(X, 15, exact=True)
    approx, _ = knn_lists(X, 15, exact=False)
    assert np.array_equal(approx[:, 0], np.arange(len(X)))
    recall = np.mean([len(np.intersect1d(a, b)) / 15 for a, b in zip(exact, approx, strict=True)])
    assert recall > 0.95
    assert EXACT_MAX_CELLS < 10**6


def test_knn_transformer_in_scanpy_above_default_threshold():
    """sc.pp.neighbors with our transformer on 5,000 cells gives a graph scanpy can use (csr_matrix)."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(5_000, 6)).astype(np.float32)
    adata = AnnData(sparse.csr_matrix((5_000, 1), dtype=np.float32), obs=pd.DataFrame(index=map(str, range(5_000))))
    adata.obsm["X_rep"] = X
    tr = KnnTransformer(10, random_state=0)
    sc.pp.neighbors(adata, use_rep="X_rep", transformer=tr)
    assert np.all(np.diff(adata.obsp["distances"].indptr) == 10)
    with pytest.raises(ValueError, match="only transforms the data it was fitted on"):
        tr.fit(X).transform(X.copy())
