"""im.tl.annotate on Dask row blocks (as im.io.read_lazy gives): same results as in memory, checks, n_jobs."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import immunomood as im
import immunomood.tl._annotate._blocks as blocks_mod
import immunomood.tl._annotate._constants as const

da = pytest.importorskip("dask.array")

WRITTEN_OBS = ["cell_lineage", "cell_type", "cell_type_confidence", "cell_type_reason"]


def _cohort(n: int, seed: int = 0) -> ad.AnnData:
    """Simulated PBMC-like cohort (whole transcriptome, known types), first ``n`` cells."""
    a, _ = im.datasets.simulate_cohort(n_donors=4, n_cells_per_donor=-(-n // 4), random_state=seed)
    return a[:n].copy()


def _lazy(a: ad.AnnData, chunk: int, *, dense: bool = False) -> ad.AnnData:
    b = a.copy()
    X = (a.X.toarray() if sparse.issparse(a.X) else np.asarray(a.X)) if dense else sparse.csr_matrix(a.X)
    b.X = da.from_array(X, chunks=(chunk, -1), asarray=False)
    return b


def _assert_same_annotation(a: ad.AnnData, b: ad.AnnData) -> None:
    for k in WRITTEN_OBS:
        np.testing.assert_array_equal(a.obs[k].to_numpy(), b.obs[k].to_numpy(), err_msg=k)
    pd.testing.assert_frame_equal(a.obsm["cd4_polarization"], b.obsm["cd4_polarization"])
    pa, pb = a.uns["cell_type"]["params"], b.uns["cell_type"]["params"]
    assert pa == pb
    pd.testing.assert_frame_equal(
        a.uns["cell_type"]["cluster_label_counts"], b.uns["cell_type"]["cluster_label_counts"]
    )


@pytest.fixture(scope="module")
def cohort():
    return _cohort(2_000)


@pytest.fixture
def small_sketch(monkeypatch):
    """The sketch path on a small input: 800 of 2,000 cells annotated in full, the rest transferred."""
    monkeypatch.setattr(const, "_SKETCH_CELLS", 800)
    monkeypatch.setattr(const, "_N_TRAIN", 500)
    monkeypatch.setattr(blocks_mod, "_BLOCK_CELLS", 600)  # several in-memory blocks too


def test_dask_same_as_memory_with_sketch(cohort, small_sketch):
    """A Dask copy (sparse blocks of 700 cells) gives exactly the in-memory calls: same sketch, labels,
    confidences, clusters and parameters; neither input is modified."""
    mem = cohort.copy()
    lazy = _lazy(cohort, 700)
    X_lazy = lazy.X
    im.tl.annotate(mem)
    im.tl.annotate(lazy)
    p = mem.uns["cell_type"]["params"]
    assert p["n_cells_annotated_in_full"] == 800 and p["n_cells_transferred"] == 1_200
    _assert_same_annotation(mem, lazy)
    assert lazy.X is X_lazy and da.Array is type(lazy.X)  # still lazy, never replaced
    assert (mem.X != cohort.X).nnz == 0
    truth = mem.obs["lineage_true"].astype(str)
    assert (mem.obs["cell_lineage"].astype(str) == truth).mean() >= 0.9


def test_read_lazy_file_same_as_memory(cohort, small_sketch, tmp_path):
    """The blocks that im.io.read_lazy gives (anndata's lazy CSR reader, blocks of 500 cells) give the
    in-memory calls too."""
    mem = cohort.copy()
    cohort.write_h5ad(tmp_path / "c.h5ad")
    lazy = im.io.read_lazy(tmp_path / "c.h5ad", chunk_size=500)
    assert isinstance(lazy.X, da.Array)
    im.tl.annotate(mem)
    im.tl.annotate(lazy)
    _assert_same_annotation(mem, lazy)


def test_dask_log_normalised_input_same_as_memory(cohort, small_sketch):
    """Log-normalised input (detected on the sampled blocks) is used as it is, block by block, as in memory;
    normalised but not logged input gets log1p with the same warning in both paths."""
    from immunomood._kernels import log1p_cp10k

    mem = cohort.copy()
    mem.X = log1p_cp10k(cohort.X)
    lazy = _lazy(mem, 700)
    im.tl.annotate(mem)
    im.tl.annotate(lazy)
    assert lazy.uns["cell_type"]["params"]["input"] == "log-normalised"
    _assert_same_annotation(mem, lazy)
    cp10k = cohort[:600].copy()
    cp10k.X = np.expm1(log1p_cp10k(cohort.X[:600]).toarray())
    for a in (cp10k, _lazy(cp10k, 250, dense=True)):
        with pytest.warns(UserWarning, match="applying log1p"):
            im.tl.annotate(a)
    np.testing.assert_array_equal(cp10k.obs["cell_type"].to_numpy(), a.obs["cell_type"].to_numpy())


def test_dask_dense_layer_below_sketch_size(cohort):
    """Below the sketch size every cell is materialised: dense Dask blocks in a layer (X empty) give the calls
    of the in-memory CSR counts."""
    a = cohort[:1_000].copy()
    lazy = ad.AnnData(obs=a.obs.copy(), var=a.var.copy())
    lazy.layers["counts"] = da.from_array(a.X.toarray(), chunks=(300, -1))
    im.tl.annotate(a)
    im.tl.annotate(lazy, layer="counts")
    assert a.uns["cell_type"]["params"]["n_cells_transferred"] == 0
    pd.testing.assert_frame_equal(
        a.obs[WRITTEN_OBS], lazy.obs[WRITTEN_OBS], check_categorical=True, check_index_type=True
    )
    assert lazy.uns["cell_type"]["params"]["layer"] == "counts"


def test_dask_chunked_along_genes_refused(cohort):
    lazy = cohort[:200].copy()
    lazy.X = da.from_array(sparse.csr_matrix(lazy.X), chunks=(100, 5_000), asarray=False)
    with pytest.raises(ValueError, match="Rechunk"):
        im.tl.annotate(lazy)
    assert "cell_type" not in lazy.obs


def test_backed_input_points_to_read_lazy(cohort, tmp_path):
    cohort[:200].write_h5ad(tmp_path / "b.h5ad")
    b = ad.read_h5ad(tmp_path / "b.h5ad", backed="r")
    with pytest.raises(ValueError, match="read_lazy"):
        im.tl.annotate(b)
    b.file.close()


def test_dask_bad_values_in_an_unsampled_block(cohort):
    """The counts check reads a sample of blocks (first, middle, last); a NaN in another block is still found
    (every block's values are checked while the sketch is read), before any annotation is written."""
    X = cohort[:1_000].X.toarray()
    X[150, 3] = np.nan  # block 1 of 5 (blocks 0, 2, 4 are sampled)
    lazy = ad.AnnData(X=da.from_array(X, chunks=(200, -1)), obs=cohort.obs.iloc[:1_000].copy(), var=cohort.var)
    with pytest.raises(ValueError, match="NaN"):
        im.tl.annotate(lazy)
    assert "cell_type" not in lazy.obs


def test_n_jobs_honoured_and_same_labels(cohort, small_sketch, monkeypatch):
    """settings.n_jobs sets the Dask workers, BLAS and numba threads inside annotate; 1 and 2 give the same calls."""
    import numba
    from threadpoolctl import threadpool_info

    seen = []
    orig = blocks_mod.map_row_blocks

    def spy(*args, **kwargs):
        import dask

        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        seen.append((dask.config.get("num_workers"), numba.get_num_threads(), max(blas, default=1)))
        return orig(*args, **kwargs)

    monkeypatch.setattr(blocks_mod, "map_row_blocks", spy)
    runs = {}
    for n_jobs in (1, 2):
        monkeypatch.setattr(im.settings, "n_jobs", n_jobs)
        seen.clear()
        b = _lazy(cohort, 700)
        im.tl.annotate(b)
        runs[n_jobs] = b
        assert seen and all(s[0] == n_jobs and s[2] <= n_jobs for s in seen), seen
        assert all(s[1] == min(n_jobs, numba.config.NUMBA_NUM_THREADS) for s in seen), seen
    for k in ("cell_lineage", "cell_type", "cell_type_reason"):
        np.testing.assert_array_equal(runs[1].obs[k].to_numpy(), runs[2].obs[k].to_numpy(), err_msg=k)
    np.testing.assert_allclose(runs[1].obs["cell_type_confidence"], runs[2].obs["cell_type_confidence"], atol=1e-6)


@pytest.mark.slow
def test_dask_same_as_memory_at_sketch_size():
    """16,000 cells with the real sketch size (12,000) and read_lazy's kind of blocks: identical calls."""
    a, _ = im.datasets.simulate_cohort(n_donors=16, n_cells_per_donor=1_000, random_state=1)
    lazy = _lazy(a, 3_000)
    im.tl.annotate(a)
    im.tl.annotate(lazy)
    assert a.uns["cell_type"]["params"]["n_cells_annotated_in_full"] == const._SKETCH_CELLS
    _assert_same_annotation(a, lazy)
