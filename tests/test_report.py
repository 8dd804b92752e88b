"""The CLI report's summary: a problems section at the top that lists every recorded problem, unscored doublet
samples and failed figures; counts that agree with what the steps log."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from immunomood._config import parse_config
from immunomood._pipeline import Checkpoints
from immunomood._report import (
    activity_counts,
    problems_section,
    report_problems,
    unassigned_share,
    write_report,
)
from immunomood._utils import PROBLEMS_KEY, record_problem


def _cells(seed: int = 0) -> ad.AnnData:
    """60 cells of 6 donors (3 per condition), 2 cell types, one cell in six Unassigned, with recorded problems."""
    rng = np.random.default_rng(seed)
    n = 60
    donor = np.repeat([f"d{i}" for i in range(6)], 10)
    cond = np.where(np.isin(donor, ["d0", "d1", "d2"]), "control", "case")
    ct = np.tile(["T cell", "Monocyte", "T cell", "Monocyte", "T cell", "Unassigned"], 10)
    a = ad.AnnData(
        rng.poisson(2.0, size=(n, 12)).astype(np.float32),
        obs=pd.DataFrame(
            {"donor": donor, "condition": cond, "cell_type": ct, "cell_lineage": ct}, index=[f"c{i}" for i in range(n)]
        ),
    )
    for c in ("donor", "condition", "cell_type", "cell_lineage"):
        a.obs[c] = a.obs[c].astype("category")
    with pytest.warns(UserWarning):
        record_problem(a, "score_pathways: 3 of 10 gene sets had no gene in the data and were not scored")
    with pytest.warns(UserWarning):
        record_problem(a, "integrate: batch_key has a single level; integration skipped")
    a.uns["qc"] = {
        "doublets": pd.DataFrame(
            {
                "sample": ["d0", "d1", "d2"],
                "n_cells": [10, 3, 10],
                "scored": [True, False, True],
                "threshold": [0.3, np.nan, 0.25],
                "n_predicted": [1, 0, 0],
                "note": ["", "fewer than 30 cells", ""],
            }
        )
    }
    return a


def _activity() -> pd.DataFrame:
    """A differential_activity table with 4 rows of which one was not testable (NaN p-value, with its reason)."""
    return pd.DataFrame(
        {
            "group": ["T cell", "T cell", "Monocyte", "Monocyte"],
            "gene_set": ["s1", "s2", "s1", "s2"],
            "effect": [0.5, -0.1, 0.2, np.nan],
            "ci_low": [0.1, -0.5, -0.2, np.nan],
            "ci_high": [0.9, 0.3, 0.6, np.nan],
            "statistic": [3.0, -0.4, 1.0, np.nan],
            "pvalue": [0.001, 0.7, 0.3, np.nan],
            "padj": [0.003, 0.7, 0.45, np.nan],
            "n_case": [3, 3, 3, 3],
            "n_reference": [3, 3, 3, 3],
            "reason": ["", "", "", "no gene of the set expressed"],
        }
    )


def test_report_problems_lists_everything_once():
    a = _cells()
    mu = pytest.importorskip("mudata")
    prot = ad.AnnData(np.zeros((6, 2)), obs=pd.DataFrame(index=[f"d{i}" for i in range(6)]))
    prot.uns[PROBLEMS_KEY] = ["proteomics_qc: 1 assay below LOD in every sample, removed"]
    md = mu.MuData({"prot": prot})
    md.uns[PROBLEMS_KEY] = ["join_proteomics: donor d5 has no proteomics"]
    got = report_problems(a, md, figure_failures={"annotation": "KeyError: no annotation"})
    assert got[:2] == list(a.uns[PROBLEMS_KEY])
    assert "[proteomics] join_proteomics: donor d5 has no proteomics" in got
    assert "[proteomics: prot] proteomics_qc: 1 assay below LOD in every sample, removed" in got
    dbl = [m for m in got if m.startswith("Doublets not scored")]
    assert len(dbl) == 1 and "d1" in dbl[0] and "3 cells" in dbl[0] and "fewer than 30 cells" in dbl[0]
    assert got[-1] == "Figure `annotation` could not be drawn: KeyError: no annotation"
    assert len(got) == len(set(got)) == 6


def test_report_problems_after_h5ad_roundtrip(tmp_path):
    a = _cells()
    a.write_h5ad(tmp_path / "a.h5ad")
    b = ad.read_h5ad(tmp_path / "a.h5ad")
    assert report_problems(b) == report_problems(a)


def test_problems_section_empty_and_full():
    assert "No problems recorded" in "\n".join(problems_section([]))
    lines = problems_section(["x failed", "y skipped"])
    assert lines[0] == "## Steps that did not run / problems"
    assert "- x failed" in lines and "- y skipped" in lines and "2 problem(s)" in "\n".join(lines)


def test_counts_agree_with_the_logged_ones(caplog):
    a = _cells()
    assert unassigned_share(a) == pytest.approx(1 / 6)
    assert activity_counts(_activity()) == (3, 1, 1)
    # the summary's count of tests is the one tl.differential_activity logs, on a real result with untested rows
    import re
    import sys
    import warnings
    from pathlib import Path

    import immunomood as im

    sys.path.insert(0, str(Path(__file__).parent / "tl"))
    from _synth import SETS, synth_cohort

    c = synth_cohort(n_donors=6, seed=3, cells=(60, 8))  # the second type has too few cells: untested rows
    with caplog.at_level("INFO", logger="immunomood"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = im.tl.differential_activity(
            c, condition_key="condition", sample_key="donor", groupby="cell_type", gene_sets=SETS
        )
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("differential_activity: ")]
    m = re.search(r"(\d+) tests, (\d+) with padj < 0.05", logged[-1])
    n_tests, n_sig, n_untested = activity_counts(res)
    assert (n_tests, n_sig) == (int(m.group(1)), int(m.group(2)))
    assert n_untested > 0 and n_tests + n_untested == len(res)


def test_write_report_summary_opens_with_problems(tmp_path):
    a = _cells()
    cfg = parse_config({"input": {"h5ad": "x.h5ad"}, "output": {"outdir": str(tmp_path / "out")}})
    ck = Checkpoints(cfg.outdir)
    comp = pd.DataFrame(
        {
            "group": ["T cell", "Monocyte", "Unassigned"],
            "effect": [0.1, -0.1, 0.0],
            "pvalue": [0.5, 0.04, 0.9],
            "padj": [0.75, 0.12, 0.9],
        }
    )
    state = {"adata": a, "tables": {"differential_activity": _activity(), "composition": comp}}
    out = write_report(cfg, ck, state)  # figures without their inputs fail: listed, not fatal
    text = (out / "summary.md").read_text()
    sections = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert sections[0] == "## Steps that did not run / problems"
    top = text.split("## Cohort")[0]
    for m in a.uns[PROBLEMS_KEY]:
        assert f"- {m}" in top
    assert "Doublets not scored in sample d1" in top
    for name in state["figure_failures"]:  # qc/annotation figures cannot be drawn from this AnnData
        assert f"Figure `{name}` could not be drawn" in top
    assert "16.7% of 60 cells Unassigned" in text
    assert "- 3 tests (cell type x gene set) run; 1 with FDR < 0.05. 1 cell type x gene set" in text
    assert (out / "composition.png").is_file() and "`composition.png`" in text


# ---------------------------------------------------------------------------------------- clinical designs
def _design_activity() -> pd.DataFrame:
    """Two level contrasts and a continuous test, as differential_activity(design=...) returns them."""
    blocks = []
    for k, c in enumerate(["condition: MDD vs control", "condition: BD vs control", "hamd (per unit)"]):
        b = _activity().assign(contrast=c, pvalue=lambda d, k=k: d["pvalue"] * (k + 1), n_samples=6)
        if c.endswith("(per unit)"):
            b = b.assign(n_case=6, n_reference=0)
        blocks.append(b)
    return pd.concat(blocks, ignore_index=True)


def _prediction(binary: bool = True) -> dict:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 5) if binary else rng.normal(size=10)
    res = pd.DataFrame(
        {"outcome": y, "y": y, "prediction": np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.1, 10), 0, 1)},
        index=pd.Index([f"d{i}" for i in range(10)], name="donor"),
    )
    metrics = (
        {
            "statistic": "auc",
            "auc": 0.81,
            "auc_repeat_spread": [0.7, 0.9],
            "pvalue": 0.02,
            "n_permutations": 50,
            "brier": 0.2,
            "calibration_intercept": 0.1,
            "calibration_slope": 0.9,
        }
        if binary
        else {
            "statistic": "r2",
            "r2": 0.3,
            "r2_repeat_spread": [0.2, 0.4],
            "pvalue": 0.04,
            "n_permutations": 50,
            "pearson_r": 0.6,
        }
    )
    return {
        "params": {
            "outcome": "responder",
            "outcome_type": "binary" if binary else "continuous",
            "positive": "responder",
            "n_donors": 10,
            "model": "ridge",
            "n_splits": 5,
            "n_repeats": 2,
            "baseline": ["visit", "baseline"],
        },
        "results": res,
        "metrics": metrics,
        "features": pd.DataFrame({"selection_frequency": [1.0, 0.4]}, index=["Mono|complement", "T|proportion"]),
        "calibration": pd.DataFrame(
            {"bin": [0, 1], "mean_predicted": [0.3, 0.7], "observed_fraction": [0.2, 0.8], "n": [5, 5]}
        )
        if binary
        else pd.DataFrame(),
        "null": rng.uniform(0.3, 0.7, size=50),
    }


def test_report_one_section_per_contrast_and_the_prediction(tmp_path):
    from immunomood._report import _stored_params, contrast_kinds

    a = _cells()
    da = _design_activity()
    params = {
        "design": "~ condition + hamd",
        "method": "score",
        "random_effect": "",
        "contrasts": ["condition: MDD vs control", "condition: BD vs control", "hamd (per unit)"],
        "contrast_kinds": ["contrast", "contrast", "continuous"],
    }
    a.uns["differential_activity"] = {"params": params, "results": da}
    assert contrast_kinds(da, _stored_params(a, "differential_activity")) == {
        "condition: MDD vs control": "contrast",
        "condition: BD vs control": "contrast",
        "hamd (per unit)": "continuous",
    }
    # an h5ad of the previous layout (sibling keys key, key + "_params") gives the same parameters
    old = a.copy()
    old.uns["differential_activity"] = da
    old.uns["differential_activity_params"] = params
    assert _stored_params(old, "differential_activity") == params
    cfg = parse_config(
        {"input": {"h5ad": "x.h5ad"}, "predict": {"outcome": "responder"}, "output": {"outdir": str(tmp_path / "out")}}
    )
    state = {
        "adata": a,
        "tables": {"differential_activity": da},
        "prediction": _prediction(),
        "predict_problems": ["predict: 2 donors without an outcome were left out"],
    }
    out = write_report(cfg, Checkpoints(cfg.outdir), state)
    text = (out / "summary.md").read_text()
    assert "Design `~ condition + hamd`" in text
    assert "- 9 tests (cell type x gene set x contrast) run" in text  # 3 testable rows x 3 contrasts
    secs = {c: text.split(f"### {c}")[1].split("###")[0].split("## ")[0] for c in contrast_kinds(da, {})}
    assert "n_case" in secs["condition: BD vs control"] and "n_samples" not in secs["condition: BD vs control"]
    assert "Effect per unit" in secs["hamd (per unit)"] and "n_samples" in secs["hamd (per unit)"]
    assert "n_case" not in secs["hamd (per unit)"]
    # each section lists its own rows, smallest p first
    rows = [ln for ln in secs["hamd (per unit)"].splitlines() if ln.startswith("| ")]
    assert rows[1].startswith("| T cell | s1 | 0.5") and len(rows) == 1 + 4
    # the prediction: statistic, its spread (not a CI), permutation p, calibration, stable features, figure
    pred = text.split("## Response prediction")[1]
    assert "Cross-validated AUC 0.81 (spread over CV repeats 0.70-0.90" in pred and "permutation p = 0.02" in pred
    assert "baseline rows visit = baseline" in pred and "intercept 0.1, slope 0.9" in pred
    assert "Mono|complement" in pred and "| feature |" in pred
    assert (out / "predict_response.png").is_file() and "`predict_response.png`" in text
    for name in ("predict_results", "predict_features", "predict_calibration"):
        assert (out / f"{name}.csv").is_file()
    assert "- predict: 2 donors without an outcome were left out" in text.split("## Cohort")[0]
    # one volcano per contrast
    assert all((out / f"{n}.png").is_file() for n in ("volcano", "volcano_2", "volcano_3"))


def test_report_prediction_continuous_and_not_run(tmp_path):
    from immunomood._report import prediction_lines

    lines = "\n".join(prediction_lines(_prediction(binary=False)))
    assert "Cross-validated R^2 0.3" in lines and "Pearson r of observed vs predicted 0.6" in lines
    assert "Calibration" not in lines  # no calibration table for a continuous outcome
    a = _cells()
    cfg = parse_config(
        {"input": {"h5ad": "x.h5ad"}, "predict": {"outcome": "responder"}, "output": {"outdir": str(tmp_path / "out")}}
    )
    state = {
        "adata": a,
        "tables": {"differential_activity": _activity()},
        "prediction": None,
        "predict_problems": ["predict: response prediction of 'responder' not run: ValueError: too few"],
    }
    text = (write_report(cfg, Checkpoints(cfg.outdir), state) / "summary.md").read_text()
    assert "- predict: response prediction of 'responder' not run" in text.split("## Cohort")[0]
    assert "Not run for 'responder': see the problems above." in text
