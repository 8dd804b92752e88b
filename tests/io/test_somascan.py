"""read_somascan: the real v4 example ADAT, agreement with SomaLogic's somadata, broken files."""

from __future__ import annotations

import numpy as np
import pytest

import immunomood as im


@pytest.fixture(scope="module")
def adat_path(data_dir):
    return data_dir / "proteomics" / "somascan_v4_example_10samples.adat"


@pytest.fixture(scope="module")
def soma(adat_path):
    return im.io.read_somascan(adat_path)


@pytest.fixture(scope="module")
def lines(adat_path):
    return adat_path.read_text().split("\n")


def test_real_adat(soma, adat_path, tmp_path):
    assert soma.shape == (10, 5284)
    for c in (
        "SeqId",
        "SeqIdVersion",
        "SomaId",
        "TargetFullName",
        "Target",
        "UniProt",
        "EntrezGeneID",
        "EntrezGeneSymbol",
        "Organism",
        "Units",
        "Type",
        "Dilution",
        "ColCheck",
    ):
        assert c in soma.var.columns
    assert len(soma.var.columns) == 20
    assert soma.var_names[0] == "seq.10000.28" and soma.var["SeqId"].iloc[0] == "10000-28"
    assert soma.var_names.is_unique
    for c in ("SampleId", "SampleType", "PlateId", "RowCheck", "Age", "Sex", "NormScale_20"):
        assert c in soma.obs.columns
    assert soma.obs.shape[1] == 34
    assert soma.obs["SampleType"].tolist() == ["Sample"] * 9 + ["Calibrator"]
    assert soma.obs["Age"].dtype.kind == "f" and soma.obs["SampleId"].dtype == object
    assert soma.uns["adat_header"]["AssayVersion"] == "V4"
    assert soma.uns["adat_header"]["StudyMatrix"] == "EDTA Plasma"
    assert soma.uns["adat_col_data"]["Name"][0] == "SeqId"
    assert soma.uns["proteomics"]["platform"] == "somascan"
    assert np.isfinite(soma.X).all() and soma.X.min() > 0
    soma.write_h5ad(tmp_path / "s.h5ad")


def test_values_against_raw_lines(soma, lines):
    # first sample row: 34 metadata fields, 1 empty, then RFU
    first = [ln for ln in lines if ln.startswith("Example Adat Set001")][0].rstrip("\r").split("\t")
    np.testing.assert_allclose(soma.X[0], np.asarray(first[35:], dtype=float))


def test_agrees_with_somadata(soma, adat_path):
    somadata = pytest.importorskip("somadata")
    ref = somadata.read_adat(str(adat_path))
    np.testing.assert_allclose(ref.to_numpy(), soma.X)
    assert list(ref.columns.get_level_values("SeqId")) == soma.var["SeqId"].tolist()
    assert list(ref.index.get_level_values("SampleId")) == soma.obs["SampleId"].astype(str).tolist()


def _write(tmp_path, lines, name="b.adat"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def test_broken_sections(lines, tmp_path):
    no_table = [ln for ln in lines if not ln.startswith("^TABLE_BEGIN")]
    with pytest.raises(ValueError, match=r"Broken ADAT file: \^TABLE_BEGIN.*missing"):
        im.io.read_somascan(_write(tmp_path, no_table))
    no_col = [ln for ln in lines if not ln.startswith("^COL_DATA")]
    with pytest.raises(ValueError, match=r"\^COL_DATA.*missing"):
        im.io.read_somascan(_write(tmp_path, no_col))
    # truncated in the middle of a sample row
    k = next(i for i, ln in enumerate(lines) if ln.startswith("Example Adat Set001"))
    trunc = lines[: k + 2] + [lines[k + 2][:500]]
    with pytest.raises(ValueError, match=rf"\^TABLE_BEGIN \(line {k + 3}\).*ragged or truncated"):
        im.io.read_somascan(_write(tmp_path, trunc))
    # a table with the header row but no sample
    with pytest.raises(ValueError, match="at least one sample row"):
        im.io.read_somascan(_write(tmp_path, lines[:k]))
    # the analyte block cut short
    t0 = next(i for i, ln in enumerate(lines) if ln.startswith("^TABLE_BEGIN"))
    short = lines[: t0 + 3] + lines[t0 + 4 :]
    with pytest.raises(ValueError, match=r"\^TABLE_BEGIN \(line \d+\): expected the analyte-metadata row"):
        im.io.read_somascan(_write(tmp_path, short))
    # non-numeric RFU
    bad = list(lines)
    parts = bad[k].split("\t")
    parts[40] = "oops"
    bad[k] = "\t".join(parts)
    with pytest.raises(ValueError, match="non-numeric RFU 'oops'"):
        im.io.read_somascan(_write(tmp_path, bad))


def test_duplicated_sample_ids(lines, tmp_path):
    k = next(i for i, ln in enumerate(lines) if ln.startswith("Example Adat Set001"))
    dup = lines[: k + 1] + [lines[k]] + lines[k + 1 :]
    with pytest.raises(ValueError, match=r"Duplicated sample IDs in the ADAT: \['1'\]"):
        im.io.read_somascan(_write(tmp_path, dup))


# ---------------------------------------------------------------------------------------- the 170-sample plasma ADAT
@pytest.fixture(scope="module")
def plasma_path(data_dir):
    return data_dir / "proteomics" / "somascan_v4_plasma_170samples.adat"


@pytest.fixture(scope="module")
def plasma(plasma_path):
    return im.io.read_somascan(plasma_path)


@pytest.mark.realdata
def test_real_plasma_170_samples(plasma, plasma_path):
    assert plasma.shape == (192, 5284)
    st = plasma.obs["SampleType"].astype(str)
    assert (st == "Sample").sum() == 170
    # the 22 QC/calibrator/buffer rows are kept and identifiable by SampleType, with unique names
    assert (st != "Sample").sum() == 22 and set(st) == {"Sample", "Calibrator", "QC", "Buffer"}
    assert plasma.obs_names.is_unique
    assert plasma.obs_names[st.to_numpy() != "Sample"].str.contains("_").all()
    # RFU: linear scale, positive, finite
    assert np.isfinite(plasma.X).all() and (plasma.X > 0).all()
    # two full 96-well plates: nothing to report
    integ = plasma.uns["proteomics"]["integrity"]
    assert integ["complete_plates"] and set(integ["rows_per_plate"].values()) == {96}
    assert "immunomood_problems" not in plasma.uns
    # the last sample row's values, read independently from the file's last line
    last = plasma_path.read_text().rstrip("\r\n").split("\n")[-1].rstrip("\r").split("\t")
    np.testing.assert_allclose(plasma.X[-1], np.asarray(last[-5284:], dtype=float))


def _plasma_lines(plasma_path):
    return plasma_path.read_bytes().decode().split("\r\n")[:-1]  # CRLF file with a final line break


@pytest.mark.realdata
def test_truncated_at_line_boundary_is_reported(plasma_path, tmp_path):
    lines = _plasma_lines(plasma_path)
    p = tmp_path / "cut.adat"
    p.write_text("\n".join(lines[:-3]) + "\n")  # 3 rows lost at a line boundary: still a well-formed file
    with pytest.warns(UserWarning, match=r"fewer rows than the 96 wells.*'Example Adat Set002': 93"):
        a = im.io.read_somascan(p)
    assert a.n_obs == 189  # what is there is read; the loss is said, in uns and the run's report
    assert not a.uns["proteomics"]["integrity"]["complete_plates"]
    assert any("93" in m for m in a.uns["immunomood_problems"])


@pytest.mark.realdata
def test_truncated_inside_last_field_refused(plasma_path, tmp_path):
    raw = plasma_path.read_bytes()
    p = tmp_path / "cut.adat"
    p.write_bytes(raw[:-4])  # '1098.5\r\n' -> '1098': every field still parses as a number
    with pytest.raises(ValueError, match=r"Broken ADAT file.*does not end with a line break"):
        im.io.read_somascan(p)


def test_bad_adat_files(lines, tmp_path):
    k = next(i for i, ln in enumerate(lines) if ln.startswith("Example Adat Set001"))
    bad = list(lines)
    parts = bad[k].split("\t")
    parts[40] = "1,234"  # a thousands separator is never read as 1.234 (nor as 1234)
    bad[k] = "\t".join(parts)
    with pytest.raises(ValueError, match="non-numeric RFU '1,234'"):
        im.io.read_somascan(_write(tmp_path, bad))
    empty = tmp_path / "empty.adat"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        im.io.read_somascan(empty)
    binary = tmp_path / "bin.adat"
    binary.write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="not a text file"):
        im.io.read_somascan(binary)
    with pytest.raises(ValueError, match="must be a file, got the folder"):
        im.io.read_somascan(tmp_path)
    latin = tmp_path / "latin.adat"
    latin.write_bytes("\n".join(lines).encode("utf-8").replace(b"Example", b"Ex\xe9mple", 1) + b"\n")
    with pytest.raises(ValueError, match="not UTF-8 text: byte"):
        im.io.read_somascan(latin)


def test_utf16_with_bom_reads_as_utf8(lines, soma, tmp_path):
    p = tmp_path / "u16.adat"
    p.write_text("\n".join(lines) + "\n", encoding="utf-16")  # with its byte-order mark
    a = im.io.read_somascan(p)
    np.testing.assert_array_equal(a.X, soma.X)
    assert a.uns["proteomics"]["source"]["encoding"] == "utf-16"
    nobom = tmp_path / "u16le.adat"
    nobom.write_bytes(("\n".join(lines) + "\n").encode("utf-16-le"))
    with pytest.raises(ValueError, match="UTF-16 text without its byte-order mark"):
        im.io.read_somascan(nobom)


def test_example_cut_to_7_of_10_samples_is_not_silent(lines, tmp_path):
    body = [ln for ln in lines if ln.strip()]
    p = _write(tmp_path, body[:-3])  # 10 sample rows -> 7, cut at a line boundary
    with pytest.warns(UserWarning, match=r"fewer rows than the 96 wells.*'Example Adat Set001': 7"):
        a = im.io.read_somascan(p)
    assert a.n_obs == 7
    assert a.uns["proteomics"]["integrity"]["rows_per_plate"] == {"Example Adat Set001": 7}
