"""``--resume`` reruns what changed: checkpoints carry the content hashes of their input files, and a report resumed
after a kill (no report checkpoint) draws every figure, the biomarker ROC included."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

import immunomood as im
from immunomood._config import parse_config
from immunomood._pipeline import Checkpoints, run_pipeline

FIGURES = [
    "qc_violins",
    "qc_report",
    "annotation",
    "annotation_confidence",
    "differential_activity",
    "volcano",
    "composition",
    "cross_modal",
    "biomarker_roc",
]


@pytest.fixture(scope="module")
def cohort_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume_cohort")
    adata, plasma = im.datasets.simulate_cohort(n_donors=8, n_cells_per_donor=120, random_state=3)
    adata.write_h5ad(d / "cohort.h5ad")
    plasma.write_h5ad(d / "plasma.h5ad")
    return d


def _cfg(indir: Path, outdir: Path):
    import tomllib

    text = f"""
[input]
h5ad = "{indir / "cohort.h5ad"}"
sample_key = "donor"
condition_key = "condition"
batch_key = "batch"
[qc]
doublets = false
n_top_genes = 500
[integrate]
enabled = false
[score]
gene_sets = ["complement"]
[differential]
min_cells = 5
[proteomics]
path = "{indir / "plasma.h5ad"}"
biomarker_repeats = 2
[output]
outdir = "{outdir}"
"""
    return parse_config(tomllib.loads(text), indir / "config.toml")


def _run(cfg, **kw) -> str:
    """Run, and return what this run wrote to the log."""
    log = cfg.outdir / "immunomood.log"
    start = log.stat().st_size if log.is_file() else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_pipeline(cfg, **kw)
    return log.read_text()[start:]


def _ran(logtext: str) -> list[str]:
    from immunomood._config import STAGES

    return [s for s in STAGES if f"stage {s}: started" in logtext]


@pytest.fixture(scope="module")
def finished_run(cohort_files, tmp_path_factory):
    """One complete run on a private copy of the inputs (tests below change them)."""
    base = tmp_path_factory.mktemp("resume_run")
    indir = base / "input"
    shutil.copytree(cohort_files, indir)
    cfg = _cfg(indir, base / "out")
    assert _ran(_run(cfg)) == [
        "load",
        "qc",
        "integrate",
        "annotate",
        "score",
        "differential",
        "proteomics",
        "predict",
        "report",
    ]
    return cfg, indir


@pytest.mark.slow
def test_report_resumed_after_a_kill_draws_every_figure(finished_run):
    cfg, _ = finished_run
    rep = cfg.outdir / "report"
    summary = (rep / "summary.md").read_text()
    for fig in FIGURES:
        assert (rep / f"{fig}.png").is_file() and f"`{fig}.png`" in summary, fig
    # a deleted report folder is written again on resume (its checkpoint alone is not enough)
    shutil.rmtree(rep)
    assert _ran(_run(cfg, resume=True)) == ["report"]
    assert (rep / "summary.md").is_file()
    # a kill during the report stage leaves no report checkpoint (and possibly a half-written report folder)
    shutil.rmtree(Checkpoints(cfg.outdir).path("report"))
    shutil.rmtree(rep)
    assert _ran(_run(cfg, resume=True)) == ["report"]
    summary = (rep / "summary.md").read_text()
    assert "Figures that failed" not in summary, summary
    for fig in FIGURES:
        png = rep / f"{fig}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
        assert f"`{fig}.png`" in summary, fig


@pytest.mark.slow
def test_changed_input_file_makes_resume_rerun_load_and_report_new_results(finished_run):
    cfg, indir = finished_run
    rep = cfg.outdir / "report"
    before = pd.read_csv(rep / "qc_report.csv")
    assert len(before) == 8

    # nothing changed (a touched file with the same content included): every stage is skipped
    os.utime(indir / "cohort.h5ad")
    assert _ran(_run(cfg, resume=True)) == []

    # the proteomics file changed: only proteomics and report run again
    plasma = im.datasets.simulate_cohort(n_donors=8, n_cells_per_donor=120, random_state=3)[1]
    plasma.X = plasma.X * 2.0 + 1.0
    plasma.write_h5ad(indir / "plasma.h5ad")
    log = _run(cfg, resume=True)
    assert _ran(log) == ["proteomics", "predict", "report"]  # predict may use the proteomics
    assert "stage proteomics: checkpoint made from other input files (proteomics changed), rerun" in log

    # the input h5ad changed (one donor removed): load and everything after it run again, the report shows it
    a = im.datasets.simulate_cohort(n_donors=8, n_cells_per_donor=120, random_state=3)[0]
    gone = max(a.obs["donor"].astype(str).unique())
    a = a[a.obs["donor"].astype(str) != gone].copy()
    a.write_h5ad(indir / "cohort.h5ad")
    log = _run(cfg, resume=True)
    assert _ran(log) == [
        "load",
        "qc",
        "integrate",
        "annotate",
        "score",
        "differential",
        "proteomics",
        "predict",
        "report",
    ]
    assert "stage load: checkpoint made from other input files (input changed), rerun" in log
    after = pd.read_csv(rep / "qc_report.csv")
    assert len(after) == 7 and gone not in set(after.iloc[:, 0].astype(str))
    assert "7 donors" in (rep / "summary.md").read_text()
    meta = json.loads((cfg.outdir / "checkpoints" / "00_load" / "checkpoint.json").read_text())
    (f,) = meta["input_files"]["input"]
    assert f["path"].endswith("cohort.h5ad") and f["size"] == (indir / "cohort.h5ad").stat().st_size
    assert len(f["sha256"]) == 64 and "mtime" in f
