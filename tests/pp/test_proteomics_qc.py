"""proteomics_qc: failed/control samples, assays below LOD, log2 of RFU, the report in uns."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import immunomood as im


def _olink_like() -> ad.AnnData:
    rng = np.random.default_rng(0)
    X = rng.normal(5, 1, size=(6, 4))
    obs = pd.DataFrame(
        {
            "QC_Warning": ["Pass", "Pass", "Warning", "Pass", "Pass", "Pass"],
            "is_control": [False, False, False, False, False, True],
        },
        index=[f"S{i}" for i in range(5)] + ["CONTROL_1"],
    )
    var = pd.DataFrame(
        {"LOD": [1.0, 1.0, 1.0, 1.0], "is_control": [False, False, False, True]}, index=["A", "B", "C", "Ctrl"]
    )
    a = ad.AnnData(X, obs=obs, var=var)
    below = np.zeros_like(X, dtype=bool)
    below[:, 1] = [True, True, True, True, False, False]  # B: 3/4 kept samples below LOD -> removed
    below[:, 2] = [True, True, False, False, False, False]  # C: 2/4 = 0.5 -> kept (not > 0.5)
    a.layers["below_lod"] = below
    a.uns["proteomics"] = {"platform": "olink", "scale": "log2"}
    return a


def test_olink_like_rules():
    a = _olink_like()
    X0 = a.X.copy()
    out = im.pp.proteomics_qc(a, copy=True)
    assert a.shape == (6, 4) and np.array_equal(a.X, X0)  # untouched with copy=True
    assert out.obs_names.tolist() == ["S0", "S1", "S3", "S4"]
    assert out.var_names.tolist() == ["A", "C"]
    np.testing.assert_array_equal(out.X, X0[[0, 1, 3, 4]][:, [0, 2]])  # no log2 for NPX
    rep = out.uns["proteomics_qc"]
    assert set(rep) == {
        "params",
        "samples",
        "assays",
        "frac_below_lod",
        "n_samples_before",
        "n_samples_after",
        "n_assays_before",
        "n_assays_after",
        "log2",
        "skipped",
    }
    assert rep["samples"].loc["S2", "reason"] == "QC_Warning=Warning"
    assert rep["samples"].loc["CONTROL_1", "reason"] == "control sample"
    assert rep["assays"].loc["Ctrl", "reason"] == "control assay"
    assert rep["assays"].loc["B", "reason"].startswith("75% of samples below LOD")
    assert rep["frac_below_lod"].loc["C", "frac_below_lod"] == pytest.approx(0.5)
    assert rep["n_samples_after"] == 4 and rep["n_assays_after"] == 2 and rep["log2"] is False
    # kept failed samples count in the LOD share (C: 2/6); they are listed as not removed
    out2 = im.pp.proteomics_qc(a, max_below_lod=0.3, drop_failed_samples=False, copy=True)
    assert "C" not in out2.var_names and out2.n_obs == 6
    assert not out2.uns["proteomics_qc"]["samples"]["removed"].any()


def test_inplace_and_errors():
    a = _olink_like()
    assert im.pp.proteomics_qc(a) is None
    assert a.n_obs == 4 and "proteomics_qc" in a.uns
    b = _olink_like()
    with pytest.raises(ValueError, match="is a view"):
        im.pp.proteomics_qc(b[:3])
    with pytest.raises(ValueError, match=r"`max_below_lod` must be a finite number >= 0 and <= 1"):
        im.pp.proteomics_qc(b, max_below_lod=2)
    b.obs["QC_Warning"] = "Warning"
    with pytest.raises(ValueError, match="would remove every sample"):
        im.pp.proteomics_qc(b, copy=True)


def test_real_olink(data_dir):
    o = im.io.read_olink(data_dir / "proteomics" / "olink_npx_synthetic_long.csv.gz")
    q = im.pp.proteomics_qc(o, copy=True)
    rep = q.uns["proteomics_qc"]
    assert q.n_obs == 153  # 160 - 4 control runs - 3 samples with QC_Warning
    assert rep["samples"]["reason"].value_counts().to_dict() == {"control sample": 4, "QC_Warning=Warning": 3}
    assert not q.obs["is_control"].any()
    assert q.n_vars == 184  # at most 10% below LOD in this file


def test_real_somascan_log2(data_dir, tmp_path):
    s = im.io.read_somascan(data_dir / "proteomics" / "somascan_v4_example_10samples.adat")
    q = im.pp.proteomics_qc(s, copy=True)
    rep = q.uns["proteomics_qc"]
    assert rep["log2"] is True and q.uns["proteomics"]["scale"] == "log2"
    assert rep["samples"]["reason"].tolist() == ["SampleType is not Sample"]  # the calibrator
    assert q.n_obs == 9
    assert (q.var["Type"] == "Protein").all() and len(rep["assays"]) == 77  # control analytes
    np.testing.assert_allclose(q.X, np.log2(s[q.obs_names, q.var_names].X))
    assert "below_lod" in rep["skipped"]
    q.write_h5ad(tmp_path / "q.h5ad")
    raw = im.pp.proteomics_qc(s, log2=False, copy=True)
    np.testing.assert_allclose(raw.X, s[raw.obs_names, raw.var_names].X)
