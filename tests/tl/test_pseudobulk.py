import numpy as np
import pytest

import immunomood as im


@pytest.fixture
def cells(tiny_counts):
    a = tiny_counts.copy()
    a.obs["cell_type"] = np.tile(["A", "A", "B"], a.n_obs // 3)
    a.obs["donor_age"] = a.obs["sample"].map({"s1": 30, "s2": 40, "s3": 50}).astype(int)
    a.obs["per_cell"] = np.arange(a.n_obs)
    a.layers["counts"] = a.X.copy()
    return a


def test_sums_and_metadata(cells):
    pb = im.tl.pseudobulk(cells, sample_key="sample", groupby="cell_type", min_cells=5)
    assert pb.n_obs == 6
    X = cells.X.toarray()
    for name, row in pb.obs.iterrows():
        m = ((cells.obs["sample"] == row["sample"]) & (cells.obs["cell_type"] == row["cell_type"])).to_numpy()
        np.testing.assert_allclose(pb[name].X.toarray().ravel(), X[m].sum(0))
        assert row["n_cells"] == m.sum()
    assert {"sample", "cell_type", "n_cells", "condition", "donor_age"} <= set(pb.obs.columns)
    assert "per_cell" not in pb.obs.columns
    assert pb.obs.loc["s2|A", "condition"] == "b" and pb.obs.loc["s3|B", "donor_age"] == 50
    assert pb.uns["dropped"].empty


def test_dropped_listed_and_warned(cells):
    with pytest.warns(UserWarning, match="fewer than 15 cells"):
        pb = im.tl.pseudobulk(cells, sample_key="sample", groupby="cell_type", min_cells=15)
    d = pb.uns["dropped"]
    assert list(d.columns) == ["sample", "cell_type", "n_cells", "reason"]
    assert (d["reason"] == "fewer than 15 cells").all()
    assert set(d["cell_type"]) == {"B"} and (d["n_cells"] == 10).all()
    assert pb.n_obs == 3


def test_layer_errors(cells):
    del cells.layers["counts"]
    # no counts layer, raw counts in X: X is aggregated (recorded), the same as layer=None
    pb_default = im.tl.pseudobulk(cells, sample_key="sample", groupby="cell_type", min_cells=1)
    assert pb_default.uns["pseudobulk"]["layer"] == "X"
    pb = im.tl.pseudobulk(cells, sample_key="sample", groupby="cell_type", layer=None, min_cells=1)
    assert pb.n_obs == 6
    np.testing.assert_array_equal(pb_default.X.toarray(), pb.X.toarray())
    cells.X = np.log1p(cells.X.toarray())
    with pytest.raises(ValueError, match="not raw counts"):
        im.tl.pseudobulk(cells, sample_key="sample", groupby="cell_type")
    with pytest.raises(KeyError, match="'counts' not found"):
        im.tl.pseudobulk(cells, sample_key="sample", groupby="cell_type", layer="counts")
    with pytest.raises(ValueError, match="not raw counts"):
        im.tl.pseudobulk(cells, sample_key="sample", groupby="cell_type", layer=None)
    with pytest.raises(KeyError, match="Available"):
        im.tl.pseudobulk(cells, sample_key="nope", groupby="cell_type", layer=None)


def test_integer_sample_ids_with_drops_write_to_h5ad(cells, tmp_path):
    cells.obs["sid"] = cells.obs["sample"].map({"s1": 1, "s2": 2, "s3": 3}).astype(int)
    with pytest.warns(UserWarning, match="fewer than"):
        pb = im.tl.pseudobulk(cells, sample_key="sid", groupby="cell_type", min_cells=10_000)
    assert len(pb.uns["dropped"]) == 6 and pb.n_obs == 0
    pb.write_h5ad(tmp_path / "pb.h5ad")


def test_aggregation_core_shared_and_blockwise(cells):
    """sum_by_sample_group (the core that pseudobulk and differential_* use): every combination by default, the
    kept ones with min_cells, the same sums on Dask input (block by block), errors naming the caller."""
    da = pytest.importorskip("dask.array")
    from immunomood.tl._pseudobulk import sum_by_sample_group

    grid, M = sum_by_sample_group(cells.X, cells.obs, "sample", "cell_type")
    X = cells.X.toarray()
    assert M.shape == (len(grid), cells.n_vars) and M.dtype == np.float64
    for i, (s, g, n) in enumerate(grid[["sample", "cell_type", "n_cells"]].itertuples(index=False)):
        m = ((cells.obs["sample"] == s) & (cells.obs["cell_type"] == g)).to_numpy()
        assert n == m.sum()
        np.testing.assert_array_equal(M[i].toarray().ravel(), X[m].sum(0))
    pb = im.tl.pseudobulk(cells, sample_key="sample", groupby="cell_type", min_cells=5)
    _, K = sum_by_sample_group(cells.X, cells.obs, "sample", "cell_type", min_cells=5)
    np.testing.assert_array_equal(K.toarray(), pb.X.toarray())
    lazy = da.from_array(X, chunks=(7, X.shape[1]))
    _, L = sum_by_sample_group(lazy, cells.obs, "sample", "cell_type")
    np.testing.assert_array_equal(L.toarray(), M.toarray())
    with pytest.raises(ValueError, match="`differential_expression` processes Dask arrays in blocks of whole cells"):
        sum_by_sample_group(
            da.from_array(X, chunks=(7, 3)), cells.obs, "sample", "cell_type", func="differential_expression"
        )
