"""Out-of-core (Dask) paths give the same results as in memory: read_lazy vs read_h5ad on a simulated cohort."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import immunomood as im

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

CHUNK = 700


@pytest.fixture(scope="module")
def h5ad_path(tmp_path_factory):
    """3,000 cells of the simulated cohort (2 batches, 6 donors) written to .h5ad (CSR, float32)."""
    # equal donors (cells_per_donor_sd=0, simulator 2.0.0 varies them by default): the chunk layout below needs 3,000
    a, _ = im.datasets.simulate_cohort(
        n_donors=6, n_cells_per_donor=500, n_batches=2, cells_per_donor_sd=0.0, random_state=0
    )
    a.X = sparse.csr_matrix(a.X, dtype=np.float32)
    path = tmp_path_factory.mktemp("dask") / "sim.h5ad"
    a.write_h5ad(path)
    return path


def _pair(path, chunk_size=CHUNK):
    import anndata as ad

    return ad.read_h5ad(path), im.io.read_lazy(path, chunk_size=chunk_size)


def _quiet(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return func(*args, **kwargs)


def _gene_sets():
    sets = {}
    for name in ("complement", "interferon_alpha"):
        sets.update(im.tl.gene_sets(name))
    return sets


def _dense(M):
    M = M.compute() if hasattr(M, "compute") else M
    return M.toarray() if sparse.issparse(M) else np.asarray(M)


def _assert_same_csr(A, B):
    assert sparse.issparse(A) and A.shape == B.shape and A.dtype == B.dtype
    A, B = sparse.csr_matrix(A), sparse.csr_matrix(B)
    np.testing.assert_array_equal(A.indptr, B.indptr)
    np.testing.assert_array_equal(A.indices, B.indices)
    np.testing.assert_array_equal(A.data, B.data)


# ----------------------------------------------------------------------------------------------
def test_read_lazy_blocks(h5ad_path):
    mem, lazy = _pair(h5ad_path)
    assert isinstance(lazy.X, da.Array) and lazy.X.chunks[0] == (700, 700, 700, 700, 200)
    assert lazy.X.chunks[1] == (mem.n_vars,)
    np.testing.assert_array_equal(_dense(lazy.X[:900]), mem.X[:900].toarray())
    pd.testing.assert_frame_equal(lazy.obs, mem.obs)
    assert lazy.uns["_immunomood_lazy"]["chunk_size"] == CHUNK


def test_read_lazy_errors(tmp_path, h5ad_path):
    import anndata as ad

    with pytest.raises(FileNotFoundError, match="No such file"):
        im.io.read_lazy(tmp_path / "missing.h5ad")
    a = ad.read_h5ad(h5ad_path)[:50].copy()
    a.X = sparse.csc_matrix(a.X)
    a.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(ValueError, match="stored as CSC"):
        im.io.read_lazy(tmp_path / "csc.h5ad")


def test_qc_metrics_and_flag_outliers_equal(h5ad_path):
    mem, lazy = _pair(h5ad_path)
    for a in (mem, lazy):
        _quiet(im.pp.qc_metrics, a, sample_key="donor")
        _quiet(im.pp.flag_outliers, a, sample_key="donor")
    pd.testing.assert_frame_equal(lazy.obs, mem.obs, check_exact=True)
    pd.testing.assert_frame_equal(lazy.var, mem.var, check_exact=True)
    for key in ("n_empty_cells", "n_empty_genes"):
        assert lazy.uns["qc"][key] == mem.uns["qc"][key]
    pd.testing.assert_frame_equal(lazy.uns["qc"]["per_sample"], mem.uns["qc"]["per_sample"])
    pd.testing.assert_frame_equal(lazy.uns["qc"]["thresholds"], mem.uns["qc"]["thresholds"])
    assert lazy.uns["qc"]["params"] == mem.uns["qc"]["params"]
    assert isinstance(lazy.X, da.Array)  # QC does not load X


def test_normalize_equal_and_lazy(h5ad_path):
    mem, lazy = _pair(h5ad_path)
    im.pp.normalize(mem)
    im.pp.normalize(lazy)
    assert isinstance(lazy.X, da.Array) and isinstance(lazy.layers["counts"], da.Array)
    assert lazy.X.dtype == np.float32
    _assert_same_csr(lazy.X.compute(), mem.X)  # bit-identical
    _assert_same_csr(lazy.layers["counts"].compute(), mem.layers["counts"])
    assert lazy.uns["log1p"] == mem.uns["log1p"] and lazy.uns["normalize"] == mem.uns["normalize"]


def test_normalize_does_not_compute_the_matrix(h5ad_path):
    """normalize on a lazy X evaluates at most the 3 sampled blocks of 5, never the whole matrix."""
    import threading

    lazy = im.io.read_lazy(h5ad_path, chunk_size=CHUNK)
    rows_read: list[int] = []
    lock = threading.Lock()

    def counted(block):  # every evaluation of a block of the input matrix passes here
        with lock:
            rows_read.append(block.shape[0])
        return block

    lazy.X = lazy.X.map_blocks(counted, dtype=lazy.X.dtype, meta=lazy.X._meta)
    n_blocks = lazy.X.numblocks[0]
    with dask.config.set(scheduler="threads"):
        im.pp.normalize(lazy)
    assert 0 < len(rows_read) <= 3 < n_blocks and sum(rows_read) < lazy.n_obs, rows_read
    assert isinstance(lazy.X, da.Array) and isinstance(lazy.layers["counts"], da.Array)
    rows_read.clear()
    lazy.X.blocks[1].compute()  # computing one block of the result reads exactly that block
    assert rows_read == [CHUNK]


def test_dense_blocks_equal(h5ad_path):
    """Dask arrays of dense row blocks (da.from_array) go through the same paths."""
    import anndata as ad

    mem = ad.read_h5ad(h5ad_path)[:1200].copy()
    mem.X = mem.X.toarray()
    lazy = mem.copy()
    lazy.X = da.from_array(mem.X, chunks=(500, -1))
    for a in (mem, lazy):
        _quiet(im.pp.qc_metrics, a)
        im.pp.normalize(a)
        _quiet(im.pp.highly_variable_genes, a, n_top_genes=300)
    pd.testing.assert_frame_equal(lazy.obs, mem.obs, check_exact=True)
    np.testing.assert_array_equal(_dense(lazy.X), mem.X)
    pd.testing.assert_frame_equal(lazy.var, mem.var, check_exact=False, rtol=1e-6, atol=1e-12)
    assert (lazy.var["highly_variable"] == mem.var["highly_variable"]).all()


@pytest.mark.parametrize("batch_key", ["batch", None])
def test_highly_variable_genes_equal(h5ad_path, batch_key):
    mem, lazy = _pair(h5ad_path)
    for a in (mem, lazy):
        im.pp.normalize(a)
    ref = _quiet(im.pp.highly_variable_genes, mem, n_top_genes=500, batch_key=batch_key, inplace=False)
    got = im.pp.highly_variable_genes(lazy, n_top_genes=500, batch_key=batch_key, inplace=False)
    assert list(got.columns) == list(ref.columns) and got.index.equals(ref.index)
    np.testing.assert_array_equal(got["highly_variable"], ref["highly_variable"])
    np.testing.assert_array_equal(got["highly_variable_rank"], ref["highly_variable_rank"])  # NaN-aware
    if batch_key is not None:
        np.testing.assert_array_equal(got["highly_variable_nbatches"], ref["highly_variable_nbatches"])
    for c in ("means", "variances"):  # sums of counts: exact
        np.testing.assert_array_equal(got[c], ref[c])
    np.testing.assert_allclose(got["variances_norm"], ref["variances_norm"], rtol=1e-9)
    # inplace writes the same var columns and uns["hvg"]
    _quiet(im.pp.highly_variable_genes, mem, n_top_genes=500, batch_key=batch_key)
    im.pp.highly_variable_genes(lazy, n_top_genes=500, batch_key=batch_key)
    pd.testing.assert_frame_equal(lazy.var, mem.var, check_exact=False, rtol=1e-9)
    assert lazy.uns["hvg"] == mem.uns["hvg"]


@pytest.mark.parametrize("layer", [None, "counts"])
def test_score_pathways_equal(h5ad_path, layer):
    mem, lazy = _pair(h5ad_path)
    for a in (mem, lazy):
        im.pp.normalize(a)
    sets = _gene_sets()
    ref = _quiet(im.tl.score_pathways, mem, sets, layer=layer, inplace=False)
    got = _quiet(im.tl.score_pathways, lazy, sets, layer=layer, inplace=False)
    pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-10, atol=1e-12)
    assert got.attrs == ref.attrs
    _quiet(im.tl.score_pathways, lazy, sets, layer=layer, key_added="ps")
    pd.testing.assert_frame_equal(lazy.obsm["ps"], ref, check_exact=False, rtol=1e-10, atol=1e-12)
    assert lazy.uns["ps"]["genes_used"] == ref.attrs["genes_used"]


def test_pseudobulk_equal(h5ad_path):
    mem, lazy = _pair(h5ad_path)
    for a in (mem, lazy):
        im.pp.normalize(a)
    ref = _quiet(im.tl.pseudobulk, mem, sample_key="donor", groupby="cell_type_true", min_cells=10)
    got = _quiet(im.tl.pseudobulk, lazy, sample_key="donor", groupby="cell_type_true", min_cells=10)
    assert sparse.issparse(got.X) and got.X.dtype == np.float64
    np.testing.assert_array_equal(got.X.toarray(), ref.X.toarray())
    pd.testing.assert_frame_equal(got.obs, ref.obs)
    pd.testing.assert_frame_equal(got.uns["dropped"], ref.uns["dropped"])
    assert got.uns["pseudobulk"] == ref.uns["pseudobulk"]
    del lazy.layers["counts"]  # layer=None: layers["counts"] when present, else X (log-normalised here: refused)
    with pytest.raises(ValueError, match="is not raw counts"):
        im.tl.pseudobulk(lazy, sample_key="donor", groupby="cell_type_true", layer=None)


def test_differential_aggregates_block_by_block(h5ad_path, monkeypatch):
    """differential_activity on Dask input: tl.pseudobulk's core sums block by block (never X.compute()).

    The result equals the in-memory one.
    """
    mem, lazy = _pair(h5ad_path)
    kw = {
        "sample_key": "donor",
        "groupby": "cell_type_true",
        "gene_sets": "complement",
        "condition_key": "condition",
        "layer": None,
        "method": "score",
        "min_cells": 5,
    }
    ref = _quiet(im.tl.differential_activity, mem, **kw)

    def no_whole_compute(self, *args, **kwargs):
        raise AssertionError("the whole Dask matrix was computed")

    monkeypatch.setattr(da.Array, "compute", no_whole_compute)
    got = _quiet(im.tl.differential_activity, lazy, **kw)
    pd.testing.assert_frame_equal(got, ref)


def test_distributed_cluster(h5ad_path):
    """With a dask.distributed client started by the user, the same results (the client does the work)."""
    distributed = pytest.importorskip("distributed")

    mem, lazy = _pair(h5ad_path, chunk_size=1500)
    _quiet(im.pp.qc_metrics, mem, sample_key="donor")
    im.pp.normalize(mem)
    _quiet(im.pp.highly_variable_genes, mem, n_top_genes=500, batch_key="batch")
    ref = _quiet(im.tl.pseudobulk, mem, sample_key="donor", groupby="cell_type_true")
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
        distributed.get_task_stream(client) as ts,
    ):
        _quiet(im.pp.qc_metrics, lazy, sample_key="donor")
        im.pp.normalize(lazy)
        im.pp.highly_variable_genes(lazy, n_top_genes=500, batch_key="batch")
        got = _quiet(im.tl.pseudobulk, lazy, sample_key="donor", groupby="cell_type_true")
    assert len(ts.data) >= 4 * 2  # the blocks of 4 passes ran on the cluster's workers
    pd.testing.assert_frame_equal(lazy.obs, mem.obs, check_exact=True)
    pd.testing.assert_frame_equal(lazy.var, mem.var, check_exact=False, rtol=1e-9)
    np.testing.assert_array_equal(got.X.toarray(), ref.X.toarray())


def test_dask_errors(h5ad_path):
    import anndata as ad

    lazy = im.io.read_lazy(h5ad_path, chunk_size=CHUNK)

    a = ad.AnnData(da.from_array(np.ones((20, 10), np.float32), chunks=(10, 5)))
    with pytest.raises(ValueError, match="chunked along genes"):
        im.pp.qc_metrics(a)
    with pytest.raises(ValueError, match="chunked along genes"):
        im.pp.normalize(a)
    neg = ad.AnnData(da.from_array(-np.ones((20, 10), np.float32), chunks=(10, 10)))
    with pytest.raises(ValueError, match="negative values"):
        im.pp.qc_metrics(neg)
    im.pp.normalize(lazy)
    with pytest.raises(ValueError, match="looks already normalised"):  # X lazy log1p, counts layer present
        im.pp.normalize(lazy)
    lazy.layers["counts"] = lazy.X
    with pytest.raises(ValueError, match="seurat_v3 needs raw counts"):
        im.pp.highly_variable_genes(lazy)
