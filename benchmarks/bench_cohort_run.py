#!/usr/bin/env python
"""A whole cohort through ``immunomood run`` and through the Python API, side by side, with the time per stage.

    python benchmarks/bench_cohort_run.py --cohort combat [--max-epochs N] [--outdir DIR]
    python benchmarks/bench_cohort_run.py --cohort sim20k [--max-epochs N] [--outdir DIR]

``combat``: the real COMBAT donors of ``$IMMUNOMOOD_DATA_DIR`` (healthy and critical: 4 donors, full transcriptome)
written as a lab receives them (10x v3 and v2 folders, a CellRanger .h5, .h5ad files) plus a sample sheet; the CLI
reads the sheet, the API path calls ``im.io.read_cohort`` on the same sheet. ``sim20k``: a simulated cohort of
8 donors x 2,600 cells (20,800 cells) in one .h5ad. Both run every stage with the package defaults (doublets,
HVG, scVI with the donor as batch, embedding, annotation, scoring, donor-level tests).

Prints the CLI's time per stage (from its log), the API path's time per step, and whether the two give identical
results: the cells kept, the cell-type calls and the differential-activity table. Exits non-zero when they differ
or when any step was skipped (``uns["immunomood_problems"]`` lists it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the COMBAT cohort writer shared with the tests


def _config(inp: str, outdir: Path, *, max_epochs: int | None, reference: str) -> str:
    epochs = f"max_epochs = {max_epochs}\n" if max_epochs else ""
    return (
        f'[input]\n{inp}\nsample_key = "donor"\ncondition_key = "condition"\nreference = "{reference}"\n'
        f'batch_key = "donor"\n\n[integrate]\n{epochs}\n[output]\noutdir = "{outdir}"\n'
    )


def _stage_times(log: Path) -> dict[str, float]:
    out = {}
    for line in log.read_text().splitlines():
        m = re.search(r"stage (\w+): done in ([\d.]+) s", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def api_path(adata, *, max_epochs: int | None, gene_sets: list[str], reference: str):
    """What a user types in a notebook: the package defaults, the donor as sample and batch, seed 0."""
    import immunomood as im

    times = {}
    t = time.perf_counter()
    im.pp.qc_metrics(adata, sample_key="donor")
    im.pp.flag_outliers(adata, sample_key="donor", nmads=5.0, mt_nmads=3.0)
    im.pp.detect_doublets(adata, sample_key="donor", random_state=0)
    im.pp.filter_cells(adata, remove=("qc_outlier", "predicted_doublet"), min_cells_per_sample=20, sample_key="donor")
    im.pp.normalize(adata)
    im.pp.highly_variable_genes(adata, n_top_genes=2000, batch_key="donor")
    times["qc"] = time.perf_counter() - t
    t = time.perf_counter()
    import scanpy as sc

    sub = adata[:, adata.var["highly_variable"]].copy()
    sc.pp.pca(sub, random_state=0)
    adata.obsm["X_pca"] = sub.obsm["X_pca"]
    im.tl.integrate(adata, batch_key="donor", n_latent=10, max_epochs=max_epochs, random_state=0)
    im.tl.embed(adata, use_rep="X_scVI", random_state=0)
    times["integrate"] = time.perf_counter() - t
    t = time.perf_counter()
    im.tl.annotate(adata, markers="blood", use_rep="X_scVI", min_confidence=0.5, random_state=0)
    times["annotate"] = time.perf_counter() - t
    t = time.perf_counter()
    sets = {}
    for name in gene_sets:
        sets.update(im.tl.gene_sets(name))
    im.tl.score_pathways(adata, sets)
    times["score"] = time.perf_counter() - t
    t = time.perf_counter()
    res = im.tl.differential_activity(
        adata,
        gene_sets=sets,
        condition_key="condition",
        sample_key="donor",
        groupby="cell_type",
        min_cells=10,
        reference=reference,
    )
    times["differential"] = time.perf_counter() - t
    return adata, res, times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", choices=("combat", "sim20k"), default="combat")
    ap.add_argument("--max-epochs", type=int, default=None, help="scVI epochs (default: the package's choice)")
    ap.add_argument("--outdir", default=None)
    args = ap.parse_args(argv)

    import anndata as ad

    import immunomood as im
    from immunomood._config import SCHEMA

    work = Path(args.outdir or tempfile.mkdtemp(prefix=f"bench_{args.cohort}_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.cohort == "combat":
        from _cohort_data import write_combat_cohort

        data_dir = os.environ.get("IMMUNOMOOD_DATA_DIR")
        if not data_dir:
            print("SKIPPED: set IMMUNOMOOD_DATA_DIR to the shared data folder")
            return 0
        sheet, _ = write_combat_cohort(Path(data_dir), work / "cohort", conditions=("Healthy", "Covid_Critical"))
        inp, reference = f'sample_sheet = "{sheet}"', "Healthy"
        load = lambda: im.io.read_cohort(sheet, sample_key="donor")
    else:
        adata, _ = im.datasets.simulate_cohort(n_donors=8, n_cells_per_donor=2_600, random_state=0)
        h5 = work / "cohort.h5ad"
        adata.write_h5ad(h5)
        inp, reference = f'h5ad = "{h5}"', "control"
        load = lambda: ad.read_h5ad(h5)
    out = work / "cli_out"
    cfg = work / "config.toml"
    cfg.write_text(_config(inp, out, max_epochs=args.max_epochs, reference=reference))

    t = time.perf_counter()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "immunomood"), "run", str(cfg)], capture_output=True, text=True
    )
    cli_s = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        print(f"FAILED: immunomood run exited {proc.returncode}")
        return 1
    stages = _stage_times(out / "immunomood.log")
    cli = ad.read_h5ad(out / "immunomood_annotated.h5ad")
    cli_res = pd.read_csv(next((out / "report").glob("differential_activity*.csv")))

    t = time.perf_counter()
    adata = load()
    times = {"load": time.perf_counter() - t}
    adata, res, api_times = api_path(
        adata, max_epochs=args.max_epochs, gene_sets=list(SCHEMA["score"]["gene_sets"][0]), reference=reference
    )
    times.update(api_times)

    print(
        f"cohort {args.cohort}: {cli.n_obs} cells after QC x {cli.n_vars} genes, "
        f"{cli.obs['donor'].nunique()} donors; CLI total {cli_s:.0f} s"
    )
    print(f"{'stage':<14}{'CLI s':>9}{'API s':>9}")
    for s in ("load", "qc", "integrate", "annotate", "score", "differential", "proteomics", "report"):
        print(f"{s:<14}{stages.get(s, float('nan')):>9.1f}{times.get(s, float('nan')):>9.1f}")
    same_cells = cli.obs_names.tolist() == adata.obs_names.tolist()
    same_types = (
        same_cells
        and (cli.obs["cell_type"].astype(str).to_numpy() == adata.obs["cell_type"].astype(str).to_numpy()).all()
    )
    a = res.reset_index() if "group" not in res.columns else res
    key = ["group", "gene_set"]
    a = a.sort_values(key).reset_index(drop=True)
    b = cli_res.sort_values(key).reset_index(drop=True)
    same_tests = len(a) == len(b) and np.allclose(
        a["pvalue"].to_numpy(float), b["pvalue"].to_numpy(float), rtol=1e-6, equal_nan=True
    )
    problems = list(cli.uns.get("immunomood_problems", []))
    print(
        f"identical cells kept: {same_cells}; identical cell types: {same_types}; "
        f"identical differential_activity p-values ({len(a)} tests): {same_tests}"
    )
    print(f"steps that did not run / problems ({len(problems)}): {problems if problems else 'none'}")
    return 0 if (same_cells and same_types and same_tests) else 1


if __name__ == "__main__":
    raise SystemExit(main())
