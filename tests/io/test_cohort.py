"""read_cohort: a real 6-donor cohort written as 10x v2/v3 folders and .h5ad files; sheet errors before any read."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _cohort_data import write_combat_cohort
from scipy import sparse

import immunomood as im
from immunomood.io import _cohort


# ---------------------------------------------------------------------------------------- real cohort
@pytest.fixture(scope="module")
def combat(data_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("combat_cohort")
    sheet, src = write_combat_cohort(data_dir, d)
    return sheet, src


@pytest.mark.realdata
def test_real_cohort_same_counts_and_obs_as_source(combat):
    sheet, src = combat
    a = im.io.read_cohort(sheet, sample_key="donor")
    assert a.shape == src.shape == (4591, 25456)
    # obs names "<sample>_<barcode>" give back the source's own names, cell for cell
    assert a.obs_names.tolist() == src.obs_names.tolist()
    assert a.var_names.tolist() == src.var_names.tolist()
    assert sparse.issparse(a.X)
    assert (abs(a.X - src.X)).sum() == 0
    assert a.obs["donor"].astype(str).tolist() == src.obs["donor"].astype(str).tolist()
    assert a.obs["condition"].astype(str).tolist() == src.obs["condition"].astype(str).tolist()
    rep = a.uns["read_cohort"]
    assert list(rep.columns) == ["sample", "path", "kind", "n_cells", "n_genes", "n_genes_kept"]
    expected = src.obs["donor"].astype(str).value_counts()
    assert dict(zip(rep["sample"], rep["n_cells"])) == expected.to_dict()
    assert set(rep["kind"]) == {"10x_mtx", "10x_h5", "h5ad"}
    assert (rep["n_genes"] == 25456).all() and (rep["n_genes_kept"] == 25456).all()
    # the result survives an h5ad round trip (report DataFrame included)
    p = sheet.parent / "roundtrip.h5ad"
    a.write_h5ad(p)
    b = ad.read_h5ad(p)
    pd.testing.assert_frame_equal(
        b.uns["read_cohort"].reset_index(drop=True), rep.reset_index(drop=True), check_dtype=False
    )


@pytest.mark.realdata
def test_real_cohort_gene_ids_and_relative_paths(combat, tmp_path, monkeypatch):
    sheet, src = combat
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the sheet's folder, not the working folder
    a = im.io.read_cohort(sheet, sample_key="donor", var_names="gene_ids")
    assert a.n_obs == src.n_obs
    # a DataFrame sheet resolves against the current folder: absolute paths work from anywhere
    df = pd.read_csv(sheet)
    df["path"] = [str(sheet.parent / p) for p in df["path"]]
    b = im.io.read_cohort(df, sample_key="donor")
    assert b.obs_names.tolist() == src.obs_names.tolist()


# ---------------------------------------------------------------------------------------- tiny cohorts
def _tiny(n_cells: int, genes: list[str], seed: int, **obs) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = sparse.csr_matrix(rng.poisson(1.0, size=(n_cells, len(genes))).astype(np.float32))
    a = ad.AnnData(X, var=pd.DataFrame(index=genes))
    a.obs_names = [f"BC{i}-1" for i in range(n_cells)]
    for k, v in obs.items():
        a.obs[k] = v
    return a


GENES = [f"G{i}" for i in range(8)]


@pytest.fixture
def tiny_sheet(tmp_path):
    (tmp_path / "s").mkdir()
    rows = []
    for i, (sid, cond) in enumerate([("101", "ctrl"), ("102", "case"), ("103", "case")]):
        _tiny(5 + i, GENES, i).write_h5ad(tmp_path / "s" / f"{sid}.h5ad")
        rows.append({"donor": sid, "condition": cond, "age": 30 + i, "path": f"s/{sid}.h5ad"})
    sheet = tmp_path / "samples.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    return sheet


def _no_reading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a sample was read although the sheet is invalid")

    monkeypatch.setattr(_cohort, "_read_one", boom)


def test_tiny_cohort_obs_and_ids_stay_text(tiny_sheet):
    a = im.io.read_cohort(tiny_sheet, sample_key="donor", required_columns=["condition"])
    assert a.n_obs == 5 + 6 + 7
    # numeric-looking IDs are kept as written, not turned into 101.0
    assert list(a.obs["donor"].cat.categories) == ["101", "102", "103"]
    assert a.obs_names[0] == "101_BC0-1"
    assert a.obs["age"].dtype.kind in "if" and set(a.obs["age"]) == {30, 31, 32}
    assert a.obs.loc["102_BC3-1", "condition"] == "case"


def test_missing_file_named_with_its_row_before_reading(tiny_sheet, monkeypatch):
    df = pd.read_csv(tiny_sheet, dtype=str)
    df.loc[1, "path"] = "s/nope.h5ad"
    df.to_csv(tiny_sheet, index=False)
    _no_reading(monkeypatch)
    with pytest.raises(ValueError, match=r"row 2 \(sample '102'\): file not found: .*nope.h5ad"):
        im.io.read_cohort(tiny_sheet, sample_key="donor")


def test_duplicate_and_nan_ids_refused_naming_rows(tiny_sheet, monkeypatch):
    _no_reading(monkeypatch)
    df = pd.read_csv(tiny_sheet, dtype=str)
    df.loc[2, "donor"] = "101"
    df.to_csv(tiny_sheet, index=False)
    with pytest.raises(ValueError, match=r"duplicated sample IDs in column 'donor': \['101'\] \(rows \[1, 3\]\)"):
        im.io.read_cohort(tiny_sheet, sample_key="donor")
    df.loc[2, "donor"] = None
    df.loc[0, "condition"] = None
    df.to_csv(tiny_sheet, index=False)
    with pytest.raises(ValueError, match=r"column 'donor' is empty or NaN in row\(s\) \[3\]") as e:
        im.io.read_cohort(tiny_sheet, sample_key="donor", required_columns=["condition"])
    assert "column 'condition' is empty or NaN in row(s) [1]" in str(e.value)
    # without asking for it, a missing condition is allowed (it stays missing, never the text 'nan')
    df.loc[2, "donor"] = "103"
    df.to_csv(tiny_sheet, index=False)
    monkeypatch.undo()
    a = im.io.read_cohort(tiny_sheet, sample_key="donor")
    assert a.obs.loc[a.obs["donor"] == "101", "condition"].isna().all()
    assert "nan" not in list(a.obs["condition"].cat.categories)


def test_missing_columns_and_bad_sheets(tiny_sheet, tmp_path):
    with pytest.raises(ValueError, match=r"column\(s\) \['sample'\] missing from the sample sheet. Available"):
        im.io.read_cohort(tiny_sheet)
    with pytest.raises(ValueError, match="folder"):
        im.io.read_cohort(tmp_path, sample_key="donor")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        im.io.read_cohort(empty, sample_key="donor")
    u16 = tiny_sheet.parent / "u16.csv"  # Excel's "Unicode text": UTF-16 with its byte-order mark is read
    u16.write_text(tiny_sheet.read_text(), encoding="utf-16")
    assert im.io.read_cohort(u16, sample_key="donor").n_obs == 18
    binary = tmp_path / "bin.csv"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="not a text file"):
        im.io.read_cohort(binary, sample_key="donor")
    with pytest.raises(TypeError, match="sample_sheet"):
        im.io.read_cohort(42)
    with pytest.raises(ValueError, match="join"):
        im.io.read_cohort(tiny_sheet, sample_key="donor", join="union")


def _tenx(folder: Path, a: ad.AnnData, *, v3: bool) -> None:
    from scipy import io as sio

    folder.mkdir(parents=True)
    sio.mmwrite(str(folder / "matrix.mtx"), sparse.csr_matrix(a.X.T).astype(np.int64), field="integer")
    genes = [f"ENSG{i:011d}\t{g}" + ("\tGene Expression" if v3 else "") for i, g in enumerate(a.var_names)]
    bcs = list(a.obs_names)
    if v3:
        for name, lines in (("features.tsv.gz", genes), ("barcodes.tsv.gz", bcs)):
            with gzip.open(folder / name, "wt") as fh:
                fh.write("\n".join(lines) + "\n")
        with open(folder / "matrix.mtx", "rb") as s, gzip.open(folder / "matrix.mtx.gz", "wb") as d:
            d.write(s.read())
        (folder / "matrix.mtx").unlink()
    else:
        (folder / "genes.tsv").write_text("\n".join(genes) + "\n")
        (folder / "barcodes.tsv").write_text("\n".join(bcs) + "\n")


def test_10x_folder_missing_genes_or_features_names_the_file(tmp_path, monkeypatch):
    a = _tiny(4, GENES, 0)
    _tenx(tmp_path / "v3", a, v3=True)
    _tenx(tmp_path / "v2", a, v3=False)
    pd.DataFrame({"sample": ["a", "b"], "path": ["v3", "v2"]}).to_csv(tmp_path / "sheet.csv", index=False)
    ok = im.io.read_cohort(tmp_path / "sheet.csv", var_names="gene_ids")
    assert ok.var_names[0] == "ENSG00000000000" and ok.var["gene_symbols"].iloc[0] == "G0"
    # the rest of the package finds the symbols on its own (QC, scoring, annotation, coverage)
    from immunomood._utils import gene_symbols

    assert gene_symbols(ok).tolist() == GENES
    cov = im.io.gene_coverage(ok, markers=None, gene_sets={"s": ["G1", "G2", "NOPE"]}, inplace=False)
    assert cov["n_found"].item() == 2
    assert ok.n_obs == 8
    (tmp_path / "v3" / "features.tsv.gz").unlink()
    (tmp_path / "v2" / "genes.tsv").unlink()
    _no_reading(monkeypatch)
    with pytest.raises(ValueError) as e:
        im.io.read_cohort(tmp_path / "sheet.csv")
    msg = str(e.value)
    assert "row 1 (sample 'a')" in msg and "lacks ['features.tsv.gz']" in msg
    assert "row 2 (sample 'b')" in msg and "lacks ['genes.tsv']" in msg
    # v3 files left uncompressed: the fix is named
    for f in ("matrix.mtx.gz", "barcodes.tsv.gz"):
        with gzip.open(tmp_path / "v3" / f, "rb") as src:
            (tmp_path / "v3" / f[:-3]).write_bytes(src.read())
        (tmp_path / "v3" / f).unlink()
    (tmp_path / "v3" / "features.tsv").write_text("ENSG1\tG0\tGene Expression\n")
    with pytest.raises(
        ValueError,
        match=r"row 1 \(sample 'a'\).*lacks \['matrix.mtx.gz', 'features.tsv.gz', "
        r"'barcodes.tsv.gz'\].*gzip matrix.mtx features.tsv barcodes.tsv",
    ):
        im.io.read_cohort(tmp_path / "sheet.csv")


def test_join_exact_inner_outer(tmp_path):
    _tiny(4, GENES, 0).write_h5ad(tmp_path / "a.h5ad")
    _tiny(5, GENES[:6] + ["X1"], 1).write_h5ad(tmp_path / "b.h5ad")
    pd.DataFrame({"sample": ["a", "b"], "path": ["a.h5ad", "b.h5ad"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ValueError, match=r"do not measure the same genes \(6 shared of 9.*join='inner'"):
        im.io.read_cohort(tmp_path / "s.csv")
    inner = im.io.read_cohort(tmp_path / "s.csv", join="inner")
    assert sorted(inner.var_names) == sorted(GENES[:6])
    assert inner.uns["read_cohort"]["n_genes_kept"].tolist() == [6, 6]
    outer = im.io.read_cohort(tmp_path / "s.csv", join="outer")
    assert sorted(outer.var_names) == sorted(GENES + ["X1"])
    assert outer[outer.obs["sample"] == "a", "X1"].X.sum() == 0
    b = ad.read_h5ad(tmp_path / "b.h5ad")
    got = outer[[f"b_{n}" for n in b.obs_names], list(b.var_names)].X
    assert abs(got - b.X).sum() == 0


def test_not_counts_and_contradicting_obs(tmp_path):
    a = _tiny(4, GENES, 0)
    a.layers["counts"] = a.X.copy()
    a.X = a.X.toarray() * 0.5 + 0.1
    a.obs["donor"] = "zz"
    a.write_h5ad(tmp_path / "a.h5ad")
    pd.DataFrame({"donor": ["a"], "path": ["a.h5ad"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ValueError, match=r"not raw counts: it contains non-integer values.*layer="):
        im.io.read_cohort(tmp_path / "s.csv", sample_key="donor")
    with pytest.raises(ValueError, match=r"the sheet's 'donor' is 'a' but the file's obs\['donor'\] holds \['zz'\]"):
        im.io.read_cohort(tmp_path / "s.csv", sample_key="donor", layer="counts")
    with pytest.raises(ValueError, match=r"layer 'nope' not found in a.h5ad"):
        im.io.read_cohort(tmp_path / "s.csv", sample_key="donor", layer="nope")


def test_check_sample_sheet_lists_every_problem(tiny_sheet):
    df = pd.read_csv(tiny_sheet, dtype=str)
    df.loc[0, "path"] = "missing.h5ad"
    df.loc[1, "donor"] = "103"
    problems = _cohort.check_sample_sheet(
        df.assign(path=[str(tiny_sheet.parent / p) for p in df["path"]]), sample_key="donor"
    )
    assert len(problems) == 2
    assert any("duplicated sample IDs" in p for p in problems)
    assert any("missing.h5ad" in p for p in problems)
    shutil.rmtree(tiny_sheet.parent / "s")


def test_cellranger_h5_repeated_symbols_made_unique(tmp_path):
    from _cohort_data import _write_h5

    a = _tiny(6, GENES, 2)
    genes = GENES[:-1] + ["G0"]  # one symbol twice, as in the 10x references (e.g. TBCE)
    _write_h5(tmp_path / "a.h5", a.X, genes, list(a.obs_names))
    pd.DataFrame({"sample": ["a"], "path": ["a.h5"]}).to_csv(tmp_path / "s.csv", index=False)
    got = im.io.read_cohort(tmp_path / "s.csv")
    assert got.var_names.is_unique and got.var_names[-1] == "G0-1"  # scanpy's make-unique rule
    assert abs(got.X - a.X).sum() == 0
    assert got.uns["read_cohort"]["kind"].tolist() == ["10x_h5"]


def test_damaged_sample_files_named_with_their_row(tmp_path):
    a = _tiny(6, GENES, 3)
    _tenx(tmp_path / "v3", a, v3=True)
    _tenx(tmp_path / "v2", a, v3=False)
    pd.DataFrame({"sample": ["a", "b"], "path": ["v3", "v2"]}).to_csv(tmp_path / "s.csv", index=False)
    mtx = tmp_path / "v3" / "matrix.mtx.gz"
    mtx.write_bytes(mtx.read_bytes()[:-30])  # gzip cut short
    with pytest.raises(ValueError, match=r"Could not read row 1 \(sample 'a'.*EOFError"):
        im.io.read_cohort(tmp_path / "s.csv")
    pd.DataFrame({"sample": ["b"], "path": ["v2"]}).to_csv(tmp_path / "s.csv", index=False)
    mm = tmp_path / "v2" / "matrix.mtx"
    lines = mm.read_text().splitlines()
    mm.write_text("\n".join(lines[:-3]) + "\n")  # entries lost at a line boundary: the header's count says so
    with pytest.raises(ValueError, match=r"Could not read row 1 \(sample 'b'.*Truncated file"):
        im.io.read_cohort(tmp_path / "s.csv")
    _tenx(tmp_path / "v2b", a, v3=False)
    genes = tmp_path / "v2b" / "genes.tsv"
    genes.write_text("\n".join(genes.read_text().splitlines()[:-1]) + "\n")  # one gene line lost
    pd.DataFrame({"sample": ["c"], "path": ["v2b"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ValueError, match=r"Could not read row 1 \(sample 'c'"):
        im.io.read_cohort(tmp_path / "s.csv")
