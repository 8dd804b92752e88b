"""The command line: config validation before any work, checkpoints, kill + resume, demo report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from immunomood import cli
from immunomood._config import ConfigError, describe_keys, load_config, parse_config

EXE = [sys.executable, "-m", "immunomood.cli"]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    import immunomood as im

    d = tmp_path_factory.mktemp("cohort")
    adata, plasma = im.datasets.simulate_cohort(n_donors=8, n_cells_per_donor=150, random_state=3)
    adata.write_h5ad(d / "cohort.h5ad")
    plasma.write_h5ad(d / "plasma.h5ad")
    return d


def _config(cohort: Path, outdir: Path, **over) -> str:
    text = f"""
[input]
h5ad = "{cohort / 'cohort.h5ad'}"
sample_key = "donor"
condition_key = "condition"
batch_key = "batch"
covariates = ["batch"]

[qc]
doublets = true
n_top_genes = 1000

[integrate]
max_epochs = 8

[annotate]
min_confidence = 0.5

[score]
gene_sets = ["complement"]

[differential]
min_cells = 5

[proteomics]
path = "{cohort / 'plasma.h5ad'}"
biomarker_repeats = 2

[output]
outdir = "{outdir}"
random_state = 0
"""
    for k, v in over.items():
        text = text.replace(k, v)
    return text


# ---------------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (("[qc]\n", "[qc]\nnmad = 4\n"), r"unknown key 'nmad' in \[qc\]"),
        (("[output]\n", "[outputs]\nx = 1\n[output]\n"), r"unknown section \[outputs\]"),
        (("n_top_genes = 1000", 'n_top_genes = "many"'), r"\[qc\] n_top_genes must be int, got str"),
        (("doublets = true", "doublets = 1"), r"\[qc\] doublets must be bool"),
        (("cohort.h5ad", "nope.h5ad"), r"h5ad file not found: .*nope.h5ad"),
        (('condition_key = "condition"', 'condition_key = "diagnosis"'),
         r"columns \['diagnosis'\] not found in cohort.h5ad obs. Available: \[.*'condition'"),
        (("plasma.h5ad", "missing_plasma.csv"), r"\[proteomics\] file not found"),
        (('batch_key = "batch"\n', ""), r"needs \[input\] batch_key"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, small_cohort, edit, match):
    out = tmp_path / "out"
    text = _config(small_cohort, out).replace(*edit)
    cfg_path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match):
        from immunomood._pipeline import run_pipeline

        run_pipeline(load_config(cfg_path))
    assert not out.exists(), "no work (not even the output folder) may happen before validation"
    # the command line turns it into exit code 2 with the message
    r = subprocess.run(EXE + ["run", str(cfg_path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "error" in r.stderr.lower()


def test_sample_sheet_errors(tmp_path):
    sheet = tmp_path / "samples.csv"
    pd.DataFrame({"donor": ["a", "a"], "condition": ["x", "y"], "path": ["s1.h5ad", "s2.h5ad"]}).to_csv(sheet,
                                                                                                   index=False)
    cfg = parse_config({"input": {"sample_sheet": str(sheet)}, "integrate": {"enabled": False}}, tmp_path / "c.toml")
    from immunomood._pipeline import validate_inputs

    with pytest.raises(ConfigError) as e:
        validate_inputs(cfg)
    msg = str(e.value)
    assert "s1.h5ad" in msg and "s2.h5ad" in msg and "duplicated sample IDs" in msg


def test_config_needs_one_input_and_valid_toml(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of `h5ad` or `sample_sheet`"):
        parse_config({"input": {}})
    bad = _write(tmp_path, "[input\nh5ad='x'")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config(tmp_path / "none.toml")


def test_help_documents_every_key():
    from immunomood._config import SCHEMA

    text = describe_keys()
    for sec, keys in SCHEMA.items():
        assert f"[{sec}]" in text
        for k in keys:
            assert f"  {k} " in text
    r = subprocess.run(EXE + ["run", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "[differential]" in r.stdout and "--resume" in r.stdout


def test_example_config_is_valid():
    import tomllib

    parse_config(tomllib.loads(cli.EXAMPLE_CONFIG.read_text()))


def test_stage_hash_changes_only_downstream(small_cohort, tmp_path):
    import tomllib

    a = parse_config(tomllib.loads(_config(small_cohort, tmp_path)))
    b = parse_config(tomllib.loads(_config(small_cohort, tmp_path, **{"min_cells = 5": "min_cells = 6"})))
    assert a.stage_hash("annotate") == b.stage_hash("annotate")
    assert a.stage_hash("differential") != b.stage_hash("differential")
    assert a.stage_hash("report") != b.stage_hash("report")


# ---------------------------------------------------------------------------------------- kill + resume
def _tables(outdir: Path) -> dict[str, pd.DataFrame]:
    rep = outdir / "report"
    return {p.stem: pd.read_csv(p) for p in sorted(rep.glob("*.csv"))}


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_gives_identical_results(tmp_path, small_cohort):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    ref_cfg = tmp_path / "ref.toml"
    ref_cfg.write_text(_config(small_cohort, ref_out))
    r = subprocess.run(EXE + ["run", str(ref_cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = ref_out / "report"
    summary = (rep / "summary.md").read_text()
    assert "Figures that failed" not in summary, summary
    for fig in ["qc_violins", "qc_report", "integration", "annotation", "annotation_confidence",
                "differential_activity", "volcano", "composition", "cross_modal", "biomarker_roc"]:
        png = rep / f"{fig}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
        assert f"`{fig}.png`" in summary

    cfg = tmp_path / "killed.toml"
    cfg.write_text(_config(small_cohort, out))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(EXE + ["run", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    log = out / "immunomood.log"
    deadline = time.time() + 300
    while time.time() < deadline:
        if log.is_file() and "stage integrate: started" in log.read_text():
            break
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be killed")
        time.sleep(0.05)
    time.sleep(1.0)  # in the middle of scVI training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = out / "checkpoints"
    done = sorted(p.name for p in ck.iterdir() if p.name != ".tmp")
    assert done == ["00_load", "01_qc"], done  # the stage that was killed left no checkpoint
    for d in done:  # what is there is complete and loadable
        meta = json.loads((ck / d / "checkpoint.json").read_text())
        assert meta["stage"] == d.split("_", 1)[1]
        import anndata as ad

        a = ad.read_h5ad(ck / d / "data.h5ad")
        assert a.uns["immunomood_checkpoint"]["config_hash"] == meta["config_hash"]

    r = subprocess.run(EXE + ["run", str(cfg), "--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    logtext = log.read_text()
    assert "stage load: checkpoint matches the config, skipped" in logtext
    assert "stage qc: checkpoint matches the config, skipped" in logtext
    assert not (ck / ".tmp").exists() or not any((ck / ".tmp").iterdir())
    ref, got = _tables(ref_out), _tables(out)
    assert set(ref) == set(got) and "differential_activity" in ref
    for name in ref:
        pd.testing.assert_frame_equal(ref[name], got[name], check_exact=False, rtol=1e-6, obj=name)
