"""im.io.write_pseudobulk: files that edgeR / limma / DESeq2 read directly; round trip read back with pandas."""

from __future__ import annotations

import gzip

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import immunomood as im

DONORS = [f"d{i}" for i in range(6)]


@pytest.fixture
def cells():
    """120 cells of 6 donors x 2 cell types (names with a space and a slash), seeded Poisson counts."""
    rng = np.random.default_rng(0)
    n, g = 120, 30
    obs = pd.DataFrame(
        {"donor": np.repeat(DONORS, 20), "cell_type": np.tile(["T cell", "B/plasma"], n // 2)},
        index=[f"c{i}" for i in range(n)],
    )
    cond = dict(zip(DONORS, ["MDD", "control"] * 3))
    obs["condition"] = pd.Categorical(obs["donor"].map(cond), categories=["MDD", "control"])
    obs["age"] = obs["donor"].map({d: 20 + i for i, d in enumerate(DONORS)}).astype(int)
    obs["smoker"] = obs["donor"].isin(["d1", "d2"])
    obs["per_cell"] = rng.normal(size=n)  # not sample-level: never in the sample table
    var = pd.DataFrame({"symbol": [f"G{i}" for i in range(g)]}, index=[f"ENSG{i:011d}" for i in range(g)])
    X = sparse.csr_matrix(rng.poisson(3, size=(n, g)).astype(np.float32))
    a = ad.AnnData(X, obs=obs, var=var)
    a.layers["counts"] = a.X.copy()
    return a


def _read_counts(path):
    return pd.read_csv(path, index_col=0)


def _read_samples(path):
    return pd.read_csv(path, index_col=0)


def test_by_group_round_trip(cells, tmp_path):
    out = im.io.write_pseudobulk(
        cells,
        tmp_path / "export",
        sample_key="donor",
        groupby="cell_type",
        condition_key="condition",
        reference="control",
        covariates=["age", "smoker"],
        min_cells=5,
    )
    assert out == tmp_path / "export"
    pb = im.tl.pseudobulk(cells, sample_key="donor", groupby="cell_type", min_cells=5)
    groups = pd.read_csv(out / "groups.csv")
    assert groups["group"].tolist() == ["B/plasma", "T cell"]
    assert groups["folder"].tolist() == ["B_plasma", "T_cell"]  # safe folder names
    assert groups["n_samples"].tolist() == [6, 6] and groups["n_cells"].tolist() == [60, 60]
    X = cells.layers["counts"].toarray()
    for grp, folder in zip(groups["group"], groups["folder"]):
        counts = _read_counts(out / folder / "counts.csv.gz")
        samples = _read_samples(out / folder / "samples.csv")
        # genes x samples, integers, rows = genes in order, columns = the sample table's rows in order
        assert counts.shape == (cells.n_vars, 6)
        assert counts.index.tolist() == cells.var_names.tolist()
        assert all(dt == np.int64 for dt in counts.dtypes)
        assert counts.columns.tolist() == samples.index.tolist() == DONORS
        # the same counts as tl.pseudobulk, and as summing the cells by hand
        names = [f"{d}|{grp}" for d in DONORS]
        np.testing.assert_array_equal(counts.to_numpy().T, pb[names].X.toarray())
        for d in DONORS:
            m = ((cells.obs["donor"] == d) & (cells.obs["cell_type"] == grp)).to_numpy()
            np.testing.assert_array_equal(counts[d].to_numpy(), X[m].sum(0))
        # sample-level metadata, R-friendly booleans read back as booleans; per-cell columns left out
        assert {"donor", "cell_type", "n_cells", "condition", "age", "smoker"} <= set(samples.columns)
        assert "per_cell" not in samples.columns
        assert samples.loc["d1", "condition"] == "control" and samples.loc["d5", "age"] == 25
        assert samples["smoker"].dtype == bool and samples["smoker"].sum() == 2
        assert (samples["n_cells"] == 10).all()
        lv = pd.read_csv(out / folder / "factor_levels.csv")
        assert lv.loc[lv["column"] == "condition", "level"].tolist() == ["control", "MDD"]  # reference first
        assert lv.loc[lv["column"] == "cell_type", "level"].tolist() == [grp]  # only levels present
    assert (out / "design.txt").read_text() == "~ age + smoker + condition\n"
    genes = pd.read_csv(out / "genes.csv", index_col=0)
    assert genes.index.tolist() == cells.var_names.tolist() and genes["symbol"].tolist() == cells.var["symbol"].tolist()
    assert (out / "README.txt").read_text().startswith("immunomood pseudobulk export")
    assert "DESeqDataSetFromMatrix" in (out / "README.txt").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name != "export"]  # no temporary folder left behind


def test_single_matrix_from_pseudobulk(cells, tmp_path):
    pb = im.tl.pseudobulk(cells, sample_key="donor", groupby="cell_type", min_cells=5)
    out = im.io.write_pseudobulk(pb, tmp_path / "all", by_group=False, condition_key="condition")
    counts = _read_counts(out / "counts.csv.gz")
    samples = _read_samples(out / "samples.csv")
    assert counts.columns.tolist() == samples.index.tolist() == pb.obs_names.tolist()
    np.testing.assert_array_equal(counts.to_numpy().T, pb.X.toarray())
    assert samples["cell_type"].tolist() == pb.obs["cell_type"].astype(str).tolist()
    lv = pd.read_csv(out / "factor_levels.csv")
    assert lv.loc[lv["column"] == "condition", "level"].tolist() == ["MDD", "control"]  # first category
    assert (out / "design.txt").read_text() == "~ condition\n"
    assert not (out / "groups.csv").exists()


def test_reproducible_bytes_and_dropped(cells, tmp_path):
    cells = cells[
        ~((cells.obs["donor"] == "d0") & (cells.obs["cell_type"] == "T cell")).to_numpy() | (np.arange(cells.n_obs) < 2)
    ].copy()  # d0|T cell keeps 1 cell
    with pytest.warns(UserWarning, match="fewer than 5 cells"):
        a = im.io.write_pseudobulk(cells, tmp_path / "a", sample_key="donor", groupby="cell_type", min_cells=5)
    with pytest.warns(UserWarning, match="fewer than 5 cells"):
        b = im.io.write_pseudobulk(cells, tmp_path / "b", sample_key="donor", groupby="cell_type", min_cells=5)
    assert (a / "T_cell" / "counts.csv.gz").read_bytes() == (b / "T_cell" / "counts.csv.gz").read_bytes()
    with gzip.open(a / "T_cell" / "counts.csv.gz", "rt") as fh:
        assert fh.readline().strip() == "gene,d1,d2,d3,d4,d5"
    dropped = pd.read_csv(a / "dropped.csv")
    assert dropped[["donor", "cell_type", "n_cells"]].to_dict("records") == [
        {"donor": "d0", "cell_type": "T cell", "n_cells": 1}
    ]
    assert not (a / "design.txt").exists()


def test_r_formula_quotes_non_syntactic_names(cells, tmp_path):
    cells.obs["age at visit"] = cells.obs["age"]
    out = im.io.write_pseudobulk(
        cells,
        tmp_path / "q",
        sample_key="donor",
        groupby="cell_type",
        condition_key="condition",
        covariates=["age at visit"],
        min_cells=5,
    )
    assert (out / "design.txt").read_text() == "~ `age at visit` + condition\n"


def test_overwrite_only_an_earlier_export(cells, tmp_path):
    kw = {"sample_key": "donor", "groupby": "cell_type", "min_cells": 5}
    out = im.io.write_pseudobulk(cells, tmp_path / "e", **kw)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        im.io.write_pseudobulk(cells, out, **kw)
    (out / "T_cell" / "stale.txt").write_text("old")
    im.io.write_pseudobulk(cells, out, overwrite=True, **kw)
    assert not (out / "T_cell" / "stale.txt").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="never deleted"):
        im.io.write_pseudobulk(cells, other, overwrite=True, **kw)
    assert (other / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({}, ValueError, "pass both `sample_key`"),
        ({"sample_key": "donor", "groupby": "nope"}, KeyError, "'nope' not found"),
        (
            {"sample_key": "donor", "groupby": "cell_type", "condition_key": "per_cell"},
            ValueError,
            "varies within samples",
        ),
        (
            {"sample_key": "donor", "groupby": "cell_type", "condition_key": "condition", "reference": "bipolar"},
            ValueError,
            "not a level",
        ),
        ({"sample_key": "donor", "groupby": "cell_type", "reference": "control"}, ValueError, "needs `condition_key`"),
        (
            {"sample_key": "donor", "groupby": "cell_type", "condition_key": "age", "covariates": ["age"]},
            ValueError,
            "list it once",
        ),
    ],
)
def test_bad_input(cells, tmp_path, kwargs, err, match):
    with pytest.raises(err, match=match):
        im.io.write_pseudobulk(cells, tmp_path / "x", min_cells=5, **kwargs)
    assert not (tmp_path / "x").exists()


def test_refuses_non_counts_and_conflicting_keys(cells, tmp_path):
    pb = im.tl.pseudobulk(cells, sample_key="donor", groupby="cell_type", min_cells=5)
    with pytest.raises(ValueError, match="made with sample_key='donor'"):
        im.io.write_pseudobulk(pb, tmp_path / "x", sample_key="condition")
    pb.X = np.log1p(pb.X.toarray())
    with pytest.raises(ValueError, match="not raw counts"):
        im.io.write_pseudobulk(pb, tmp_path / "x")
    (tmp_path / "f").write_text("")
    with pytest.raises(FileExistsError, match="is a file"):
        im.io.write_pseudobulk(pb, tmp_path / "f")
    with pytest.raises(TypeError, match="must be an AnnData"):
        im.io.write_pseudobulk(pb.X, tmp_path / "x")
