"""read_olink: real exports (long CSV, Explore parquet), delimiter/zip/checksum variants, errors."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pandas as pd
import pytest

import immunomood as im


@pytest.fixture(scope="module")
def olink_csv(data_dir):
    return data_dir / "proteomics" / "olink_npx_synthetic_long.csv.gz"


@pytest.fixture(scope="module")
def olink(olink_csv):
    return im.io.read_olink(olink_csv)


def _tiny_long(**over) -> pd.DataFrame:
    """A small long export: 3 samples x 3 assays, IL6 on two panels, one control sample, one missing NPX."""
    rows = []
    assays = [
        ("OID1", "P05231", "IL6", "Inflammation", 1.0),
        ("OID2", "P05231", "IL6", "Oncology", 2.0),
        ("OID3", "P01375", "TNF", "Inflammation", 0.5),
    ]
    samples = [("S1", "Pass", "P1"), ("S2", "Warning", "P1"), ("CONTROL_SAMPLE_1", "Pass", "P1")]
    npx = iter([3.0, 1.5, 0.2, 0.4, np.nan, 2.0, 5.0, 5.0, 5.0])
    for sid, qc, plate in samples:
        for oid, uni, assay, panel, lod in assays:
            rows.append(
                dict(
                    SampleID=sid,
                    Index=1,
                    OlinkID=oid,
                    UniProt=uni,
                    Assay=assay,
                    MissingFreq=0.1,
                    Panel=panel,
                    Panel_Version="v1",
                    PlateID=plate,
                    QC_Warning=qc,
                    LOD=lod,
                    NPX=next(npx),
                    Subject=None if "CONTROL" in sid else f"ID{sid}",
                    Time="baseline",
                )
            )
    df = pd.DataFrame(rows)
    for k, v in over.items():
        df[k] = v
    return df


def test_real_long_csv(olink, olink_csv):
    raw = pd.read_csv(olink_csv)
    # 156 samples + 2 control samples each run on two plates (kept apart) = 160 rows; 184 assays on 2 panels
    assert olink.shape == (160, 184)
    assert raw["SampleID"].nunique() == 158
    assert olink.obs["is_control"].sum() == 4
    assert set(olink.obs.loc[olink.obs["is_control"], "SampleID"]) == {"CONTROL_SAMPLE_AS 1", "CONTROL_SAMPLE_AS 2"}
    for c in ("OlinkID", "UniProt", "Assay", "Panel", "LOD", "MissingFreq", "Panel_Version"):
        assert c in olink.var.columns
    for c in ("PlateID", "QC_Warning", "Subject", "Treatment", "Site", "Time", "Project"):
        assert c in olink.obs.columns
    assert olink.var["OlinkID"].is_unique and olink.var_names.is_unique
    assert set(olink.var["Panel"]) == {"Olink Cardiometabolic", "Olink Inflammation"}
    # values: independent pivot of the long table for the non-control samples
    samp = raw[~raw["SampleID"].str.contains("CONTROL")]
    piv = samp.pivot(index="SampleID", columns="OlinkID", values="NPX")
    sub = olink[piv.index, :]
    got = pd.DataFrame(sub.X, index=sub.obs_names, columns=sub.var["OlinkID"])[piv.columns]
    np.testing.assert_allclose(got.to_numpy(), piv.to_numpy())
    # below LOD: same share as the long table
    assert olink.layers["below_lod"].dtype == bool
    assert olink.layers["below_lod"].mean() == pytest.approx((raw["NPX"] < raw["LOD"]).mean())
    # QC_Warning per panel and its worst value
    warned = raw.loc[raw["QC_Warning"] != "Pass", "SampleID"].unique()
    assert set(olink.obs_names[olink.obs["QC_Warning"] == "Warning"]) == set(warned)
    assert "QC_Warning|Olink Inflammation" in olink.obs.columns
    assert olink.uns["proteomics"]["platform"] == "olink"
    assert olink.uns["proteomics"]["source"]["delimiter"] == ","


def test_real_parquet(data_dir, tmp_path):
    a = im.io.read_olink(data_dir / "proteomics" / "olink_explore_synthetic.parquet")
    assert a.shape == (1, 1)
    assert a.var_names.tolist() == ["MAPT"] and a.var["OlinkID"].iloc[0] == "OID42741"
    for c in ("SampleType", "PlateID", "WellID", "SampleQC"):
        assert c in a.obs.columns
    assert {"Count", "ExtNPX", "PCNormalizedNPX"} <= set(a.layers)
    assert np.isnan(a.var["LOD"]).all() and not a.layers["below_lod"].any()
    assert a.uns["proteomics"]["source"]["file_metadata"]["Product"] == "ExploreHT"
    a.write_h5ad(tmp_path / "p.h5ad")


def test_h5ad_roundtrip(olink, tmp_path):
    olink.write_h5ad(tmp_path / "o.h5ad")
    import anndata as ad

    b = ad.read_h5ad(tmp_path / "o.h5ad")
    np.testing.assert_array_equal(b.X, olink.X)
    assert b.obs["is_control"].sum() == 4


def test_semicolon_decimal_comma_and_panels(tmp_path):
    df = _tiny_long()
    p = tmp_path / "npx.csv"
    txt = df.to_csv(sep=";", index=False, na_rep="NA")
    # European export: decimal commas in NPX
    lines = txt.splitlines()
    head = lines[0].split(";")
    j = head.index("NPX")
    fixed = [lines[0]] + [
        ";".join(v.replace(".", ",") if k == j else v for k, v in enumerate(ln.split(";"))) for ln in lines[1:]
    ]
    p.write_text("\n".join(fixed) + "\n")
    a = im.io.read_olink(p)
    assert a.uns["proteomics"]["source"]["delimiter"] == ";"
    assert a.var_names.tolist() == ["IL6|Inflammation", "IL6|Oncology", "TNF"]
    np.testing.assert_allclose(a["S1"].X.ravel(), [3.0, 1.5, 0.2])
    assert np.isnan(a["S2", "IL6|Oncology"].X[0, 0])
    # NPX < LOD; False where NPX is missing
    np.testing.assert_array_equal(a.layers["below_lod"][1], [True, False, False])
    assert a.obs.loc["CONTROL_SAMPLE_1", "is_control"] and not a.obs.loc["S1", "is_control"]
    b = im.io.read_olink(p, var_names="olinkid")
    assert b.var_names.tolist() == ["OID1", "OID2", "OID3"]


def test_zip_with_checksum(tmp_path):
    df = _tiny_long()
    data = df.to_csv(index=False).encode()
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("npx.csv", data)
        z.writestr("MD5_checksum.txt", hashlib.md5(data).hexdigest())
    a = im.io.read_olink(good)
    assert a.shape == (3, 3) and a.uns["proteomics"]["source"]["checksum"] == "md5"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("npx.csv", data)
        z.writestr("checksum_sha256.txt", "0" * 64)
    with pytest.raises(ValueError, match="Checksum mismatch"):
        im.io.read_olink(bad)


def test_errors(tmp_path):
    p = tmp_path / "x.csv"
    _tiny_long().drop(columns=["SampleID"]).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"lacks \['SampleID'\]"):
        im.io.read_olink(p)
    _tiny_long().drop(columns=["OlinkID", "UniProt", "Assay"]).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"lacks \['a protein identifier \(OlinkID, Assay or UniProt\)'\]"):
        im.io.read_olink(p)
    df = _tiny_long()
    df["NPX"] = df["NPX"].astype(object)
    df.loc[0, "NPX"] = "abc"
    df.to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"Column 'NPX' must be numeric.*'abc'"):
        im.io.read_olink(p)
    df = _tiny_long()
    pd.concat([df, df[df.SampleID == "S1"]]).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"Duplicated sample IDs.*'S1'"):
        im.io.read_olink(p)
    with pytest.raises(FileNotFoundError):
        im.io.read_olink(tmp_path / "nope.csv")
