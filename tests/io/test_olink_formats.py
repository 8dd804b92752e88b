"""read_olink: published processed long tables, wide tables (plain and Target 96), and files that are not whole."""

from __future__ import annotations

import gzip
import sys

import numpy as np
import pandas as pd
import pytest

import immunomood as im

ASSAYS = [
    ("P05231", "3569", "IL6", "Inflammation"),
    ("P05231", "3569", "IL6", "Oncology"),
    ("P01375", "7124", "TNF", "Inflammation"),
    ("P10145", "3576", "CXCL8", "Inflammation"),
]


def _published(rng_seed: int = 0) -> pd.DataFrame:
    """A published-style long table: no OlinkID, LOD or QC; sample S2 measured twice (Index 2 and 5)."""
    rng = np.random.default_rng(rng_seed)
    runs = [("S1", "ID01", 1), ("S2", "ID02", 2), ("S3", "ID03", 3), ("S2", "ID02", 5)]
    rows = []
    for sid, ind, index in runs:
        for uni, gid, assay, panel in ASSAYS:
            rows.append(
                dict(
                    SampleID=sid,
                    Individual_ID=ind,
                    UniProt=uni,
                    GeneID=gid,
                    Assay=assay,
                    NPX=round(float(rng.normal(5, 1)), 4),
                    Panel=panel,
                    Index=index,
                )
            )
    return pd.DataFrame(rows)


def test_published_long_table(tmp_path):
    df = _published()
    p = tmp_path / "published.csv"
    df.to_csv(p, index=False)
    with pytest.warns(UserWarning, match=r"measured in several runs.*\['S2'\]"):
        a = im.io.read_olink(p)
    assert a.uns["proteomics"]["protein_key"] == "Assay"
    # the repeated sample is kept twice, each run with its ID
    assert sorted(a.obs_names) == ["S1", "S2|2", "S2|5", "S3"]
    assert a.obs.loc["S2|5", "SampleID"] == "S2" and a.obs["repeated"].sum() == 2
    assert a.obs.loc["S3", "Individual_ID"] == "ID03"
    # IL6 on two panels: two variables; no OlinkID column is invented
    assert sorted(a.var_names) == ["CXCL8", "IL6|Inflammation", "IL6|Oncology", "TNF"]
    assert "OlinkID" not in a.var.columns and a.var.loc["TNF", "UniProt"] == "P01375"
    assert np.isnan(a.var["LOD"]).all() and not a.layers["below_lod"].any()
    # values: an independent pivot of the table
    df["row"] = np.where(
        df.duplicated(["SampleID", "Assay", "Panel"], keep=False),
        df["SampleID"] + "|" + df["Index"].astype(str),
        df["SampleID"],
    )
    df["var"] = np.where(df["Assay"] == "IL6", df["Assay"] + "|" + df["Panel"], df["Assay"])
    piv = df.pivot(index="row", columns="var", values="NPX").loc[a.obs_names, a.var_names]
    np.testing.assert_allclose(a.X, piv.to_numpy())
    with pytest.raises(ValueError, match="var_names='olinkid' needs an OlinkID column"):
        im.io.read_olink(p, var_names="olinkid")
    a.write_h5ad(tmp_path / "a.h5ad")


def test_published_uniprot_only_and_true_duplicates(tmp_path):
    df = _published().drop(columns=["Assay", "Index"])
    df = df[df["SampleID"] != "S2"]
    p = tmp_path / "u.csv"
    df.to_csv(p, index=False)
    a = im.io.read_olink(p)
    assert a.uns["proteomics"]["protein_key"] == "UniProt"
    assert sorted(a.var_names) == ["P01375", "P05231|Inflammation", "P05231|Oncology", "P10145"]
    # the same sample twice with nothing to tell the runs apart: refused
    pd.concat([df, df[df["SampleID"] == "S1"]]).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"Duplicated sample IDs.*no Index/WellID/PlateID"):
        im.io.read_olink(p)


# ---------------------------------------------------------------------------------------- wide tables
def _wide_matrix():
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        rng.normal(4, 1, size=(3, 4)).round(3), index=["A", "B", "C"], columns=["IL6", "TNF", "CXCL8", "CCL2"]
    )


def test_plain_wide_csv(tmp_path):
    m = _wide_matrix()
    df = m.copy()
    df.insert(0, "SampleID", m.index)
    df["Plate ID"] = ["P1", "P1", "P2"]
    df["QC Warning"] = ["Pass", "Warning", "Pass"]
    df["Age"] = [31, 45, 52]  # numeric, but a known metadata name: stays in obs
    p = tmp_path / "wide.csv"
    df.to_csv(p, index=False)
    a = im.io.read_olink(p)
    assert a.uns["proteomics"]["source"]["layout"] == "wide"
    assert a.obs_names.tolist() == ["A", "B", "C"] and a.var_names.tolist() == list(m.columns)
    np.testing.assert_allclose(a.X, m.to_numpy())
    assert a.obs.loc["B", "QC_Warning"] == "Warning" and a.obs.loc["C", "PlateID"] == "P2"
    assert a.obs["Age"].tolist() == [31, 45, 52]
    # a thousands separator in a protein column: refused, not read as 1.234
    df["IL6"] = df["IL6"].astype(object)
    df.loc[1, "IL6"] = "1,234"
    df.to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"Column 'NPX' holds 1 value\(s\) with a comma, e.g. \['1,234'\]"):
        im.io.read_olink(p)


def _target96_rows(m: pd.DataFrame, *, footer: bool = True) -> list[list[str]]:
    n = m.shape[1]
    rows = [
        ["Olink NPX Signature 1.9"] + [""] * (n + 2),
        ["NPX"] + [""] * (n + 2),
        ["Panel", "Olink Target 96 Inflammation(v.3012)"] + [""] * (n + 1),
        ["Assay", *m.columns, "Plate ID", "QC Warning"],
        ["Uniprot ID", "P05231", "P01375", "P10145", "P13500", "", ""],
        ["OlinkID", "OID00001", "OID00002", "OID00003", "OID00004", "", ""],
    ]
    qc = ["Pass", "Warning", "Pass"]
    for k, (sid, vals) in enumerate(m.iterrows()):
        rows.append([sid, *[f"{v:.3f}" for v in vals], "Plate1", qc[k]])
    rows.append([""] * (n + 3))
    if footer:
        rows.append(["LOD", "3.5", "3.9", "10", "2", "", ""])
        rows.append(["Missing Data freq.", "0", "0.33", "1", "0", "", ""])
        rows.append(["Normalization", "Intensity", "Intensity", "Intensity", "Intensity", "", ""])
    return rows


def test_target96_wide_csv(tmp_path):
    m = _wide_matrix()
    p = tmp_path / "t96.csv"
    p.write_text("\n".join(";".join(r) for r in _target96_rows(m)) + "\n")
    a = im.io.read_olink(p)
    assert a.uns["proteomics"]["source"]["layout"] == "target96 wide"
    assert a.var_names.tolist() == list(m.columns)
    assert a.var["OlinkID"].tolist() == ["OID00001", "OID00002", "OID00003", "OID00004"]
    assert set(a.var["Panel"]) == {"Olink Target 96 Inflammation(v.3012)"}
    np.testing.assert_allclose(a.X, m.loc[a.obs_names].to_numpy(), atol=5e-4)
    np.testing.assert_allclose(a.var["LOD"], [3.5, 3.9, 10, 2])
    np.testing.assert_array_equal(a.layers["below_lod"], m.loc[a.obs_names].to_numpy() < [3.5, 3.9, 10, 2])
    assert a.obs.loc["B", "QC_Warning"] == "Warning" and set(a.obs["PlateID"]) == {"Plate1"}
    # two "QC Deviation from median" columns (Inc Ctrl, Det Ctrl) keep both, named by the label under them
    rows = _target96_rows(m)
    rows[3] += ["QC Deviation from median"] * 2
    rows[4] += ["Inc Ctrl", "Det Ctrl"]
    rows[5] += ["", ""]
    for k in range(6, 9):
        rows[k] += ["0.1", "-0.2"]
    for k in range(9, len(rows)):
        rows[k] += ["", ""]
    p.write_text("\n".join(";".join(r) for r in rows) + "\n")
    q = im.io.read_olink(p)
    assert q.obs["QC Deviation from median_Inc Ctrl"].tolist() == [0.1] * 3
    assert q.obs["QC Deviation from median_Det Ctrl"].tolist() == [-0.2] * 3
    np.testing.assert_array_equal(q.X, a.X)
    # the footer cut off: the file is truncated
    p.write_text("\n".join(";".join(r) for r in _target96_rows(m, footer=False)) + "\n")
    with pytest.raises(ValueError, match="ends without its footer rows"):
        im.io.read_olink(p)
    # a sample row cut short
    rows = _target96_rows(m)
    rows[7] = rows[7][:3]
    p.write_text("\n".join(";".join(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=r"line 8 \(sample 'B'\) has 3 cells"):
        im.io.read_olink(p)


def test_xlsx(tmp_path, monkeypatch):
    m = _wide_matrix()
    p = tmp_path / "t96.xlsx"
    try:
        import openpyxl
    except ImportError:
        openpyxl = None
    if openpyxl is not None:
        wb = openpyxl.Workbook()
        for r in _target96_rows(m):
            wb.active.append(r)
        wb.save(p)
        a = im.io.read_olink(p)
        np.testing.assert_allclose(a.X, m.loc[a.obs_names].to_numpy(), atol=5e-4)
        assert a.uns["proteomics"]["source"]["layout"] == "target96 wide"
        # a long table and a plain wide table in Excel, numbers stored as numbers
        long = _published()
        long = long[long["SampleID"] != "S2"]
        wide = m.copy()
        wide.insert(0, "SampleID", m.index)
        for name, table in (("long.xlsx", long), ("wide.xlsx", wide)):
            wb = openpyxl.Workbook()
            wb.active.append(list(table.columns))
            for r in table.itertuples(index=False):
                wb.active.append(list(r))
            wb.save(tmp_path / name)
        got = im.io.read_olink(tmp_path / "long.xlsx")
        assert got.shape == (2, 4) and got.uns["proteomics"]["protein_key"] == "Assay"
        tnf = long.loc[(long["SampleID"] == "S1") & (long["Assay"] == "TNF"), "NPX"].item()
        np.testing.assert_allclose(got["S1", "TNF"].X[0, 0], tnf)
        got = im.io.read_olink(tmp_path / "wide.xlsx")
        assert got.uns["proteomics"]["source"]["layout"] == "wide"
        np.testing.assert_allclose(got.X, m.to_numpy())
    else:
        p.write_bytes(b"PK\x03\x04 not really a workbook")
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # as when the package is not installed
    with pytest.raises(ImportError, match="needs the package 'openpyxl'"):
        im.io.read_olink(p)


# ---------------------------------------------------------------------------------------- whole or not
@pytest.fixture
def long_csv(tmp_path):
    df = _published().drop(columns=["Index"])
    df = df[df["SampleID"] != "S2"].copy()
    df["Index"] = 1
    p = tmp_path / "long.csv"
    df.to_csv(p, index=False)
    return p


def test_truncated_mid_row(long_csv, tmp_path):
    text = long_csv.read_text()
    cut = tmp_path / "cut.csv"
    cut.write_text(text[: len(text) - 25])  # the last row loses its last fields
    n_lines = len(text.splitlines())
    with pytest.raises(ValueError, match=rf"truncated or ragged: 1 row\(s\).*line {n_lines} has .*cut mid-row"):
        im.io.read_olink(cut)
    # cut inside the last value only: every row still has its fields; the missing final line break is said
    cut.write_text(text[:-2])
    with pytest.warns(UserWarning, match="does not end with a line break"):
        im.io.read_olink(cut)
    gz = tmp_path / "cut.csv.gz"
    gz.write_bytes(gzip.compress(text.encode())[:-20])
    with pytest.raises(ValueError, match="cannot be decompressed.*truncated"):
        im.io.read_olink(gz)


def test_decimal_comma_rule(tmp_path):
    df = _published().drop(columns=["Index"])
    df = df[df["SampleID"] != "S2"].copy()
    df["NPX"] = df["NPX"].astype(object)
    df.iloc[0, df.columns.get_loc("NPX")] = "1,234"
    p = tmp_path / "c.csv"
    df.to_csv(p, index=False)  # comma-delimited: the value is quoted "1,234"
    with pytest.raises(ValueError, match=r"with a comma.*ambiguous.*thousands separator"):
        im.io.read_olink(p)
    # semicolon-delimited (European locale) with ',' as the only decimal mark: 1,234 is 1.234
    eu = df.copy()
    eu["NPX"] = eu["NPX"].astype(str).str.replace(".", ",", regex=False)
    eu.to_csv(p, index=False, sep=";")
    a = im.io.read_olink(p)
    assert a["S1", "IL6|Inflammation"].X[0, 0] == pytest.approx(1.234)
    # ... but a column mixing '.' and ',' is refused
    df.to_csv(p, index=False, sep=";")
    with pytest.raises(ValueError, match="mixes '.' and ','"):
        im.io.read_olink(p)


def test_empty_binary_utf16_folder(long_csv, tmp_path):
    ref = im.io.read_olink(long_csv)
    empty = tmp_path / "e.csv"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
        im.io.read_olink(empty)
    blank = tmp_path / "b.csv"
    blank.write_text("\n\n")
    with pytest.raises(ValueError, match="holds no text"):
        im.io.read_olink(blank)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match="not a text file"):
        im.io.read_olink(binary)
    u16 = tmp_path / "u16.txt"
    u16.write_text(long_csv.read_text().replace(",", "\t"), encoding="utf-16")  # Excel "Unicode text"
    b = im.io.read_olink(u16)
    np.testing.assert_array_equal(b.X, ref.X)
    assert b.obs_names.tolist() == ref.obs_names.tolist()
    with pytest.raises(ValueError, match="must be a file, got the folder"):
        im.io.read_olink(tmp_path)
    latin = tmp_path / "l.csv"
    latin.write_bytes(long_csv.read_bytes().replace(b"ID01", b"ID\xe901"))
    with pytest.raises(ValueError, match="not UTF-8 text: byte"):
        im.io.read_olink(latin)


@pytest.mark.realdata
def test_real_export_cut_at_line_boundary_is_reported(data_dir, tmp_path):
    src = data_dir / "proteomics" / "olink_npx_synthetic_long.csv.gz"
    whole = im.io.read_olink(src)
    assert whole.uns["proteomics"]["integrity"]["rows_absent"] == 0
    assert "immunomood_problems" not in whole.uns
    lines = gzip.decompress(src.read_bytes()).decode().splitlines()
    cut = tmp_path / "cut.csv"
    cut.write_text("\n".join(lines[:-40]) + "\n")  # 40 rows lost at a line boundary: a well-formed file
    lost = pd.read_csv(src).tail(40)  # the rows that were cut (the export is sorted by assay, then sample)
    n_samples = lost["SampleID"].nunique()
    with pytest.warns(UserWarning, match=rf"{n_samples} sample\(s\) lack rows for some assays of a panel"):
        a = im.io.read_olink(cut)
    assert a.uns["proteomics"]["integrity"]["rows_absent"] == 40
    assert any("cut at a line boundary" in m for m in a.uns["immunomood_problems"])
    # what was read is the file's content, with NaN exactly where rows are absent
    assert a.shape == whole.shape
    for sid, oid in lost[["SampleID", "OlinkID"]].head(5).itertuples(index=False):
        j = np.flatnonzero(a.var["OlinkID"].to_numpy() == oid)[0]
        assert np.isnan(a[a.obs["SampleID"] == sid].X[:, j]).all()
