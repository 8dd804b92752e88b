"""What ``immunomood run`` leaves at the top of its output folder, and the sample-sheet path equal to the Python API."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _cohort_data import write_combat_cohort

import immunomood as im
from immunomood._config import load_config, parse_config
from immunomood._pipeline import ANNOTATED_H5AD, run_pipeline, versions

_FAST = """
[qc]
doublets = false
n_top_genes = 500

[integrate]
enabled = false

[score]
gene_sets = ["complement"]

[differential]
min_cells = 5
"""


@pytest.fixture(scope="module")
def sim_cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    adata, _ = im.datasets.simulate_cohort(n_donors=6, n_cells_per_donor=120, random_state=1)
    adata.write_h5ad(d / "cohort.h5ad")
    return d / "cohort.h5ad"


def _check_outputs(out: Path, cfg_text: str | None) -> ad.AnnData:
    h5 = out / ANNOTATED_H5AD
    assert h5.is_file()
    assert not list(out.glob(f".{ANNOTATED_H5AD}.*")), "no temporary file may be left behind"
    a = ad.read_h5ad(h5)
    for key in ("cell_type", "donor", "condition"):
        assert key in a.obs.columns
    assert "gene_coverage" in a.uns and {"resolvable", "missing"} <= set(a.uns["gene_coverage"].columns)
    cfg = (out / "config.toml").read_text()
    if cfg_text is not None:
        assert cfg == cfg_text
    tomllib.loads(cfg)  # valid TOML either way
    ver = json.loads((out / "versions.json").read_text())
    assert ver == versions() and {"immunomood", "anndata", "scanpy", "numpy", "pandas"} <= set(ver)
    return a


@pytest.mark.slow
def test_run_writes_annotated_h5ad_config_and_versions(tmp_path, sim_cohort):
    out = tmp_path / "out"
    text = (
        f'[input]\nh5ad = "{sim_cohort}"\nsample_key = "donor"\ncondition_key = "condition"\n{_FAST}'
        f'\n[output]\noutdir = "{out}"\n'
    )
    p = tmp_path / "config.toml"
    p.write_text(text)
    state = run_pipeline(load_config(p))
    a = _check_outputs(out, text)
    assert a.n_obs == state["adata"].n_obs
    assert a.obs["cell_type"].astype(str).tolist() == state["adata"].obs["cell_type"].astype(str).tolist()
    # resume: every stage skipped, the outputs are written again from the checkpoints
    (out / ANNOTATED_H5AD).unlink()
    run_pipeline(load_config(p), resume=True)
    b = _check_outputs(out, text)
    assert b.obs_names.tolist() == a.obs_names.tolist()


def test_config_without_file_is_written_as_toml(tmp_path):
    from immunomood._pipeline import _config_toml

    h5 = tmp_path / "x.h5ad"
    raw = tomllib.loads(f'[input]\nh5ad = "{h5}"\nsample_key = "donor"\n{_FAST}')
    back = tomllib.loads(_config_toml(parse_config(raw)))  # no config file: the effective values, as TOML
    assert back["input"]["h5ad"] == str(h5) and back["qc"]["doublets"] is False
    assert back["qc"]["nmads"] == parse_config(raw)["qc"]["nmads"]
    assert "gene_symbols" not in back["input"]  # unset optional keys are left out (TOML has no null)
    assert parse_config(back).data == parse_config(raw).data


@pytest.mark.slow
@pytest.mark.realdata
def test_cli_sample_sheet_equals_python_read_cohort(tmp_path, data_dir):
    sheet, src = write_combat_cohort(data_dir, tmp_path / "cohort", n_cells=60)
    out = tmp_path / "out"
    text = (
        f'[input]\nsample_sheet = "{sheet}"\nsample_key = "donor"\ncondition_key = "condition"\n'
        f'reference = "Healthy"\n{_FAST}\n[output]\noutdir = "{out}"\n'
    )
    p = tmp_path / "config.toml"
    p.write_text(text)
    cfg = load_config(p)
    from immunomood._pipeline import Checkpoints, stage_load

    state: dict = {}
    ck = Checkpoints(out)
    stage_load(cfg, ck, cfg.stage_hash("load"), state)
    cli = state["adata"]
    # the load checkpoint carries the per-sample read report and the gene coverage as tables
    assert ck.read_table("load", "samples_read")["n_cells"].tolist() == [60] * 6
    assert len(ck.read_table("load", "gene_coverage")) == len(cli.uns["gene_coverage"])
    py = im.io.read_cohort(sheet, sample_key="donor")
    assert cli.obs_names.tolist() == py.obs_names.tolist() == src.obs_names.tolist()
    assert cli.var_names.tolist() == py.var_names.tolist()
    assert abs(cli.X - py.X).sum() == 0 and abs(py.X - src.X).sum() == 0
    for c in ("donor", "condition"):
        assert cli.obs[c].astype(str).tolist() == py.obs[c].astype(str).tolist()
    assert list(cli.obs["condition"].cat.categories)[0] == "Healthy"
    pd.testing.assert_frame_equal(cli.uns["read_cohort"], py.uns["read_cohort"])
    # the full transcriptome resolves every lineage of the blood markers
    cov = cli.uns["gene_coverage"]
    assert cov.loc[cov["kind"] == "lineage", "resolvable"].all()


@pytest.mark.realdata
def test_sheet_with_nan_condition_refused_before_any_work(tmp_path, data_dir):
    sheet, _ = write_combat_cohort(data_dir, tmp_path / "cohort", n_cells=5)
    df = pd.read_csv(sheet)
    df.loc[2, "condition"] = np.nan
    df.to_csv(sheet, index=False)
    out = tmp_path / "out"
    cfg = parse_config(
        {
            "input": {"sample_sheet": str(sheet), "sample_key": "donor"},
            "integrate": {"enabled": False},
            "output": {"outdir": str(out)},
        },
        tmp_path / "c.toml",
    )
    from immunomood._config import ConfigError

    with pytest.raises(ConfigError, match=r"column 'condition' is empty or NaN in row\(s\) \[3\]"):
        run_pipeline(cfg)
    assert not out.exists()


def test_h5ad_with_missing_ids_refused_before_any_work(tmp_path, tiny_counts):
    from immunomood._config import ConfigError

    a = tiny_counts.copy()
    a.obs["donor"] = a.obs["sample"].astype(str)
    a.obs["condition"] = a.obs["condition"].astype(object)
    a.obs.iloc[:4, a.obs.columns.get_loc("condition")] = np.nan
    a.write_h5ad(tmp_path / "c.h5ad")
    out = tmp_path / "out"
    cfg = parse_config(
        {
            "input": {"h5ad": str(tmp_path / "c.h5ad"), "sample_key": "donor"},
            "integrate": {"enabled": False},
            "output": {"outdir": str(out)},
        },
        tmp_path / "c.toml",
    )
    with pytest.raises(ConfigError, match=r"column 'condition' of c.h5ad is missing for 4 cells \(e.g. \['cell0'"):
        run_pipeline(cfg)
    assert not out.exists()


def test_missing_counts_layer_named(tmp_path, tiny_counts):
    from immunomood._config import ConfigError
    from immunomood._pipeline import Checkpoints, stage_load

    a = tiny_counts.copy()
    a.obs["donor"] = a.obs["sample"].astype(str)
    a.layers["raw"] = a.X.copy()
    a.write_h5ad(tmp_path / "c.h5ad")
    cfg = parse_config(
        {
            "input": {"h5ad": str(tmp_path / "c.h5ad"), "sample_key": "donor", "counts_layer": "counts"},
            "integrate": {"enabled": False},
            "output": {"outdir": str(tmp_path / "out")},
        },
        tmp_path / "c.toml",
    )
    with pytest.raises(ConfigError, match=r"counts_layer 'counts' is not a layer of c.h5ad. Layers present: \['raw'\]"):
        stage_load(cfg, Checkpoints(tmp_path / "out"), cfg.stage_hash("load"), {})


@pytest.mark.slow
@pytest.mark.realdata
def test_cli_run_on_real_sample_sheet(tmp_path, data_dir):
    """``immunomood run`` on 4 real COMBAT donors given as 10x v3/v2 folders, a CellRanger .h5 and an .h5ad."""
    import subprocess
    import sys

    sheet, src = write_combat_cohort(
        data_dir, tmp_path / "cohort", n_cells=150, conditions=("Healthy", "Covid_Critical")
    )
    assert set(pd.read_csv(sheet)["path"].str.rsplit(".", n=1).str[-1]) >= {"h5", "h5ad"}
    text = (
        '[input]\nsample_sheet = "cohort/samples.csv"\nsample_key = "donor"\ncondition_key = "condition"\n'
        f'reference = "Healthy"\n{_FAST}\n[output]\noutdir = "out"\n'
    )
    p = tmp_path / "config.toml"
    p.write_text(text)  # relative paths: the sheet against the config, the samples against the sheet
    r = subprocess.run([sys.executable, "-m", "immunomood.cli", "run", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    a = _check_outputs(out, text)
    assert set(a.obs["donor"].astype(str)) == set(src.obs["donor"].astype(str))
    assert list(a.obs["condition"].cat.categories) == ["Healthy", "Covid_Critical"]
    # the cells kept after QC carry exactly the counts of the source, cell for cell
    assert set(a.obs_names) <= set(src.obs_names) and a.n_obs > 0.5 * src.n_obs
    ref = src[a.obs_names, a.var_names].X
    assert abs(a.layers["counts"] - ref).sum() == 0
    assert (out / "report" / "summary.md").is_file()
