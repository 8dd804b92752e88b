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
h5ad = "{cohort / "cohort.h5ad"}"
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
path = "{cohort / "plasma.h5ad"}"
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
        (
            ('condition_key = "condition"', 'condition_key = "diagnosis"'),
            r"columns \['diagnosis'\] not found in cohort.h5ad obs. Available: \[.*'condition'",
        ),
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
    r = subprocess.run(EXE + ["run", str(cfg_path)], capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "error" in r.stderr.lower()


def test_sample_sheet_errors(tmp_path):
    sheet = tmp_path / "samples.csv"
    pd.DataFrame({"donor": ["a", "a"], "condition": ["x", "y"], "path": ["s1.h5ad", "s2.h5ad"]}).to_csv(
        sheet, index=False
    )
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
    r = subprocess.run(EXE + ["run", "--help"], capture_output=True, text=True, check=False)
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
    r = subprocess.run(EXE + ["run", str(ref_cfg)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = ref_out / "report"
    summary = (rep / "summary.md").read_text()
    assert "Figures that failed" not in summary, summary
    for fig in [
        "qc_violins",
        "qc_report",
        "integration",
        "annotation",
        "annotation_confidence",
        "differential_activity",
        "volcano",
        "composition",
        "cross_modal",
        "biomarker_roc",
    ]:
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

    r = subprocess.run(EXE + ["run", str(cfg), "--resume"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    logtext = log.read_text()
    assert "stage load: checkpoint matches the config, skipped" in logtext
    assert "stage qc: checkpoint matches the config, skipped" in logtext
    assert not (ck / ".tmp").exists() or not any((ck / ".tmp").iterdir())
    ref, got = _tables(ref_out), _tables(out)
    assert set(ref) == set(got) and "differential_activity" in ref
    for name in ref:
        pd.testing.assert_frame_equal(ref[name], got[name], check_exact=False, rtol=1e-6, obj=name)


# ---------------------------------------------------------------------------------------- clinical designs
@pytest.mark.parametrize(
    ("section", "match"),
    [
        (
            '[differential]\ndesgin = "~ condition"\n',
            r"unknown key 'desgin' in \[differential\].*Did you mean 'design'",
        ),
        (
            '[differential]\ndesign = "~ condition +"\n',
            r"\[differential\] design: design='~ condition \+' is not a valid",
        ),
        ('[differential]\ndesign = "condition + age"\n', r"design must be a formula such as"),
        ('[differential]\ncontrasts = [["condition", "MDD", "control"]]\n', r"contrasts and tests need a design"),
        (
            '[differential]\ndesign = "~ condition"\ncontrasts = [["conditon", "MDD", "control"]]\n',
            r"contrasts\[0\]: 'conditon' is not in design .*Did you mean 'condition'",
        ),
        (
            '[differential]\ndesign = "~ condition"\ncontrasts = [["condition", "MDD"]]\n',
            r"contrasts\[0\] must be \[column, case, reference\]",
        ),
        ('[differential]\ndesign = "~ condition + age"\ntests = ["aeg"]\n', r"tests: 'aeg' is not in design"),
        ('[differential]\ndesign = "~ condition"\nrandom_effect = "condition"\n', r"random_effect 'condition' is also"),
        ('[predict]\noutcome = "responder"\nmodel = "lasso"\n', r"\[predict\] model must be one of"),
        ('[predict]\noutcome = "responder"\nbaseline = "visit"\n', r"baseline must be 'column=value'"),
        ('[predict]\noutcome = "responder"\nn_permutations = -5\n', r"n_permutations must be an integer >= 0"),
        ('[predict]\noutcome = "responder"\nn_splits = 1\n', r"n_splits must be an integer >= 2"),
        ('[predict]\noutcom = "responder"\n', r"unknown key 'outcom' in \[predict\].*Did you mean 'outcome'"),
    ],
)
def test_bad_design_or_predict_config(tmp_path, section, match):
    text = f'[input]\nh5ad = "x.h5ad"\n[integrate]\nenabled = false\n{section}'
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text))


def test_design_and_covariates_both_set_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"covariates = \['age'\] and \[differential\] design are both set.*"
        r'design = "~ condition \+ age"',
    ):
        parse_config({"input": {"h5ad": "x", "covariates": ["age"]}, "differential": {"design": "~ condition"}})


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            {"design": "~ condition + aeg"},
            (
                r"\[differential\] design: Column 'aeg' of the design is not in the input"
                r".*Did you mean \['age'\]"
            ),
        ),
        ({"design": "~ condition + age", "contrasts": [["condition", "BD", "control"]]}, r"'BD' is not a level of"),
        ({"design": "~ condition + age", "tests": ["condition"]}, r"test='condition' is categorical"),
        ({"design": "~ condition", "random_effect": "donor"}, r"random_effect 'donor' has one level per sample"),
        ({"design": "~ condition + sex", "groupby": "sex"}, r"groupby 'sex' is also in the design"),
    ],
)
def test_design_checked_on_the_input_before_any_work(tmp_path, small_cohort, edit, match):
    """A design that the input's samples cannot carry stops the run before the load stage (no output folder)."""
    import tomllib

    from immunomood._pipeline import run_pipeline

    out = tmp_path / "out"
    raw = tomllib.loads(_config(small_cohort, out).replace('covariates = ["batch"]\n', ""))
    raw["differential"].update(edit)
    with pytest.raises(ConfigError, match=match):
        run_pipeline(parse_config(raw, tmp_path / "c.toml"))
    assert not out.exists()


def test_predict_columns_checked_before_any_work(tmp_path, small_cohort):
    import tomllib

    from immunomood._pipeline import run_pipeline

    out = tmp_path / "out"
    raw = tomllib.loads(_config(small_cohort, out).replace(f'path = "{small_cohort / "plasma.h5ad"}"\n', ""))
    raw["predict"] = {"outcome": "respnder", "baseline": "visit=baseline"}
    with pytest.raises(ConfigError) as e:
        run_pipeline(parse_config(raw, tmp_path / "c.toml"))
    msg = str(e.value)
    assert "[predict] outcome 'respnder' is not a column of the input" in msg
    assert "[predict] baseline column 'visit' is not a column" in msg
    assert not out.exists()


def test_legacy_config_gives_the_same_design_arguments(small_cohort, tmp_path):
    """Without [differential] design the tests get condition_key / reference / covariates, as before."""
    import tomllib

    from immunomood._config import design_kwargs

    cfg = parse_config(tomllib.loads(_config(small_cohort, tmp_path)))
    assert design_kwargs(cfg) == {
        "condition_key": "condition",
        "reference": None,
        "covariates": ("batch",),
        "random_effect": None,
    }
    raw = tomllib.loads(_config(small_cohort, tmp_path).replace('covariates = ["batch"]\n', ""))
    raw["differential"].update(design="~ condition + age", contrasts=[["condition", "MDD", "control"]], tests=["age"])
    assert design_kwargs(parse_config(raw)) == {
        "design": "~ condition + age",
        "contrast": [("condition", "MDD", "control")],
        "test": ["age"],
        "random_effect": None,
    }
    # the design keys change the differential stage and later ones, not the earlier ones
    a, b = parse_config(tomllib.loads(_config(small_cohort, tmp_path))), parse_config(raw)
    assert a.stage_hash("score") != b.stage_hash("score")  # [input] covariates differ (an input key)
    c = parse_config({**raw, "predict": {"outcome": "condition"}})
    assert c.stage_hash("proteomics") == b.stage_hash("proteomics") and c.stage_hash("predict") != b.stage_hash(
        "predict"
    )


@pytest.fixture(scope="module")
def design_cohort(tmp_path_factory):
    """Three diagnoses, a symptom score related to the planted effect, responders with a baseline difference."""
    import immunomood as im

    d = tmp_path_factory.mktemp("design_cohort")
    adata, _ = im.datasets.simulate_cohort(
        n_donors=12,
        n_cells_per_donor=80,
        groups=("control", "MDD", "BD"),
        severity_effect=2.0,
        response_baseline_effect=2.0,
        random_state=5,
    )
    adata.write_h5ad(d / "cohort.h5ad")
    return d / "cohort.h5ad"


@pytest.mark.slow
def test_design_run_end_to_end(tmp_path, design_cohort):
    """A three-group design with a continuous test, and the response prediction, through the CLI."""
    out = tmp_path / "out"
    text = f"""
[input]
h5ad = "{design_cohort}"
sample_key = "donor"
condition_key = "condition"

[qc]
doublets = false
n_top_genes = 500

[integrate]
enabled = false

[score]
gene_sets = ["complement"]

[differential]
min_cells = 5
design = "~ condition + severity"
contrasts = [["condition", "MDD", "control"], ["condition", "BD", "control"]]
tests = ["severity"]

[predict]
outcome = "responder"
exclude_values = ["control"]
features = ["proportion", "gene_set"]
n_splits = 2
n_repeats = 2
n_permutations = 5

[output]
outdir = "{out}"
"""
    cfg = _write(tmp_path, text)
    r = subprocess.run(EXE + ["run", str(cfg)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = out / "report"
    da = pd.read_csv(rep / "differential_activity.csv")
    want = ["condition: MDD vs control", "condition: BD vs control", "severity (per unit)"]
    assert list(pd.unique(da["contrast"])) == want
    summary = (rep / "summary.md").read_text()
    for c in want:  # one section per contrast
        assert f"### {c}" in summary
    assert "Design `~ condition + severity`" in summary and "Effect per unit of the column" in summary
    cont = summary.split("### severity (per unit)")[1].split("##")[0]
    assert "n_samples" in cont and "n_case" not in cont  # a continuous test has no arms
    # the prediction: 8 patients (controls left out), AUC and permutation p as stored, the figure drawn
    assert "## Response prediction" in summary and "Cross-validated AUC" in summary
    assert "permutation p = " in summary and "Calibration of the out-of-fold probabilities" in summary
    res = pd.read_csv(rep / "predict_results.csv")
    assert len(res) == 8 and set(res["outcome"]) == {"responder", "non-responder"}
    assert (rep / "predict_response.png").is_file() and "`predict_response.png`" in summary
    assert "Figures that failed" not in summary, summary
    info = json.loads((out / "checkpoints" / "07_predict" / "checkpoint.json").read_text())
    m = info["prediction"]["metrics"]
    assert f"Cross-validated AUC {float(m['auc']):.3g}" in summary
    assert 0 < float(m["pvalue"]) <= 1 and m["n_permutations"] == 5
    # every volcano of a contrast
    for name in ("volcano", "volcano_2", "volcano_3"):
        assert (rep / f"{name}.png").is_file()
