import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import immunomood as im


@pytest.fixture
def counts_adata():
    rng = np.random.default_rng(1)
    genes = ["C1QA", "C1QB", "C1QC", "C3", "CFD", "FCN1", "IFI6", "MX1"] + [f"G{i}" for i in range(40)]
    X = rng.poisson(rng.gamma(1.0, 1.0, size=len(genes)), size=(120, len(genes))).astype(np.float32)
    X[:, -1] += 1
    return ad.AnnData(
        sparse.csr_matrix(X), obs=pd.DataFrame(index=[f"c{i}" for i in range(120)]), var=pd.DataFrame(index=genes)
    )


SETS = {"s1": ["C1QA", "C1QB", "C1QC", "NOTAGENE"], "s2": ["C3", "CFD", "FCN1", "IFI6", "MX1"]}


def _reference(adata, sets):
    X = adata.X.toarray().astype(float)
    L = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    names = list(adata.var_names)
    out = {}
    for k, genes in sets.items():
        idx = [names.index(g) for g in genes if g in names and X[:, names.index(g)].sum() > 0]
        out[k] = (L[:, idx] - L[:, idx].mean(0)).mean(1)
    return pd.DataFrame(out, index=adata.obs_names)


def test_matches_independent_dense_computation_and_keys(counts_adata):
    a = counts_adata
    im.tl.score_pathways(a, SETS)
    got = a.obsm["pathway_scores"]
    assert isinstance(got, pd.DataFrame) and list(got.columns) == ["s1", "s2"]
    assert got.index.equals(a.obs_names)
    np.testing.assert_allclose(got.to_numpy(), _reference(a, SETS).to_numpy(), atol=1e-6)
    info = a.uns["pathway_scores"]
    assert set(info) == {"params", "genes_used", "genes_missing"}
    assert info["genes_used"]["s1"] == ["C1QA", "C1QB", "C1QC"]
    assert info["genes_missing"]["s1"] == ["NOTAGENE"]


def test_log_normalised_input_same_as_counts(counts_adata):
    a = counts_adata
    ref = im.tl.score_pathways(a, SETS, inplace=False)
    b = a.copy()
    X = b.X.toarray()
    b.layers["lognorm"] = sparse.csr_matrix(np.log1p(X / X.sum(1, keepdims=True) * 1e4))
    got = im.tl.score_pathways(b, SETS, layer="lognorm", inplace=False)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), atol=1e-6)
    dense = a.copy()
    dense.X = dense.X.toarray()
    np.testing.assert_allclose(im.tl.score_pathways(dense, SETS, inplace=False).to_numpy(), ref.to_numpy(), atol=1e-6)


def test_inplace_false_leaves_adata_untouched(counts_adata):
    a = counts_adata
    X0 = a.X.copy()
    df = im.tl.score_pathways(a, SETS, inplace=False)
    assert "pathway_scores" not in a.obsm and "pathway_scores" not in a.uns
    assert (a.X != X0).nnz == 0
    assert df.attrs["genes_used"]["s2"] == ["C3", "CFD", "FCN1", "IFI6", "MX1"]


def test_ensembl_var_names_with_symbol_column(counts_adata):
    a = counts_adata
    ref = im.tl.score_pathways(a, SETS, inplace=False)
    b = a.copy()
    b.var["gene_symbols"] = b.var_names.astype(str)
    b.var_names = [f"ENSG{i:011d}" for i in range(b.n_vars)]
    got = im.tl.score_pathways(b, SETS, inplace=False)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy())


def test_warns_few_genes_and_errors_when_none(counts_adata):
    with pytest.warns(UserWarning, match="only 2 of"):
        im.tl.score_pathways(counts_adata, {"tiny": ["C1QA", "C3", "ZZZ"]}, inplace=False)
    with pytest.raises(ValueError, match="None of the genes"):
        im.tl.score_pathways(counts_adata, {"x": ["AAA", "BBB"]})
    with pytest.raises(KeyError, match="Known"):
        im.tl.score_pathways(counts_adata, "not_a_set")


def test_refuses_view_inplace(counts_adata):
    with pytest.raises(ValueError, match="view"):
        im.tl.score_pathways(counts_adata[:10], SETS)


def test_overlapping_sets_lowercase_genes_and_empty_cells(counts_adata):
    """The one-pass kernel: a gene in several sets, case-insensitive names, cells with no counts at all."""
    a = counts_adata.copy()
    X = a.X.toarray()
    X[:5] = 0  # empty cells: score = minus the centring term, no division by zero
    a.X = sparse.csr_matrix(X)
    sets = {"s1": ["c1qa", "C1QB", "C3"], "s2": ["C3", "CFD", "FCN1"], "s3": ["C3"]}
    got = im.tl.score_pathways(a, sets, inplace=False)
    L = np.log1p(
        np.divide(X, X.sum(1, keepdims=True), out=np.zeros_like(X, dtype=float), where=X.sum(1, keepdims=True) > 0)
        * 1e4
    )
    names = list(a.var_names)
    for k, genes in sets.items():
        idx = [names.index(g.upper()) for g in genes]
        ref = (L[:, idx] - L[:, idx].mean(0)).mean(1)
        np.testing.assert_allclose(got[k].to_numpy(), ref, atol=1e-6)
    assert got.attrs["genes_used"]["s1"] == ["C1QA", "C1QB", "C3"]


@pytest.mark.parametrize("kind", ["dense", "csc", "csr64"])
def test_every_storage_gives_the_fused_csr_result(counts_adata, kind):
    """Dense and CSC counts (the column path) and float64 CSR counts give the fused kernel's scores (float32 CSR).

    The library-size factor 1e4 / total is taken in float64 on every path (the column path used to take it in the
    precision of X, 5e-8 off for float32 counts).
    """
    a = counts_adata
    ref = im.tl.score_pathways(a, SETS, inplace=False)
    b = a.copy()
    b.X = {
        "dense": lambda X: X.toarray(),
        "csc": lambda X: sparse.csc_matrix(X),
        "csr64": lambda X: sparse.csr_matrix(X, dtype=np.float64),
    }[kind](b.X)
    got = im.tl.score_pathways(b, SETS, inplace=False)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-13)
    assert got.attrs == ref.attrs
