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
    for c in ("SeqId", "SeqIdVersion", "SomaId", "TargetFullName", "Target", "UniProt", "EntrezGeneID",
              "EntrezGeneSymbol", "Organism", "Units", "Type", "Dilution", "ColCheck"):
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
    short = lines[: t0 + 3] + lines[t0 + 4:]
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
    dup = lines[: k + 1] + [lines[k]] + lines[k + 1:]
    with pytest.raises(ValueError, match=r"Duplicated sample IDs in the ADAT: \['1'\]"):
        im.io.read_somascan(_write(tmp_path, dup))
