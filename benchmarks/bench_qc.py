"""Benchmark of the QC path: qc_metrics + flag_outliers + normalize + highly_variable_genes.

Ours: ``im.pp.qc_metrics``, ``im.pp.flag_outliers(sample_key="donor")``, ``im.pp.normalize``,
``im.pp.highly_variable_genes(batch_key="batch")``.

Anchor, the plain scanpy calls for the same work: ``var`` flags for mt/ribo/hb +
``sc.pp.calculate_qc_metrics(qc_vars=["mt", "ribo", "hb"], percent_top=[20], log1p=True)``; the median
absolute deviation rule per donor written with numpy (scanpy has no outlier rule); ``layers["counts"] =
X.copy()`` + ``sc.pp.normalize_total(target_sum=1e4)`` + ``sc.pp.log1p``; ``sc.pp.highly_variable_genes(
flavor="seurat_v3", n_top_genes=2000, batch_key="batch", layer="counts")``.

Data: ``im.datasets.simulate_cohort`` (16 donors, 2 batches, ~13.7k genes, NB counts; ~825 genes per cell),
written once to a temporary h5ad and read by every measurement.

Each measurement runs in a fresh subprocess (ours and anchor interleaved, order alternating between
repeats). In the child, both paths are first warmed up on 500 cells (numba compilation is not timed for
either), then the peak resident set size is reset (``/proc/self/clear_refs``) and the four steps are timed.
``peak_gb`` is the increase of the peak RSS over the RSS after loading the data (the extra memory the path
needs), ``mem_ratio`` ours / anchor of that number. Times are the minimum over repeats.

Usage::

    python benchmarks/bench_qc.py [100k|1m] [--repeats N]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
N_DONORS = 16
STEPS = ("qc_metrics", "flag_outliers", "normalize", "highly_variable_genes")

_CHILD = r"""
import gc, json, os, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np
import anndata as ad
import scanpy as sc
import immunomood as im

what, path = sys.argv[1], sys.argv[2]
METRICS = ["log1p_total_counts", "log1p_n_genes_by_counts", "pct_counts_in_top_20_genes", "pct_counts_mt"]


def rss():
    with open("/proc/self/status") as f:
        d = dict(l.split(":", 1) for l in f if l.startswith(("VmRSS", "VmHWM")))
    return {k: int(v.split()[0]) * 1024 for k, v in d.items()}


def ours(a, steps):
    t = time.perf_counter(); im.pp.qc_metrics(a); steps["qc_metrics"] = time.perf_counter() - t
    t = time.perf_counter(); im.pp.flag_outliers(a, sample_key="donor"); steps["flag_outliers"] = time.perf_counter() - t
    t = time.perf_counter(); im.pp.normalize(a); steps["normalize"] = time.perf_counter() - t
    t = time.perf_counter(); im.pp.highly_variable_genes(a, n_top_genes=2000, batch_key="batch")
    steps["highly_variable_genes"] = time.perf_counter() - t


def anchor(a, steps):
    t = time.perf_counter()
    up = a.var_names.str.upper()
    a.var["mt"] = up.str.startswith("MT-")
    a.var["ribo"] = up.str.startswith(("RPS", "RPL"))
    a.var["hb"] = up.str.match(r"^HB(A1|A2|B|D|E1|G1|G2|M|Q1|Z)$")
    sc.pp.calculate_qc_metrics(a, qc_vars=["mt", "ribo", "hb"], percent_top=[20], log1p=True, inplace=True)
    steps["qc_metrics"] = time.perf_counter() - t
    t = time.perf_counter()
    samples = a.obs["donor"].to_numpy()
    out = np.zeros(a.n_obs, bool)
    for m in METRICS:
        k = 3 if m == "pct_counts_mt" else 5
        x = a.obs[m].to_numpy(np.float64)
        for s in np.unique(samples):
            sel = samples == s
            med = np.median(x[sel]); mad = np.median(np.abs(x[sel] - med))
            out[sel] |= np.abs(x[sel] - med) > k * mad
    a.obs["qc_outlier"] = out
    steps["flag_outliers"] = time.perf_counter() - t
    t = time.perf_counter()
    a.layers["counts"] = a.X.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    steps["normalize"] = time.perf_counter() - t
    t = time.perf_counter()
    sc.pp.highly_variable_genes(a, flavor="seurat_v3", n_top_genes=2000, batch_key="batch", layer="counts")
    steps["highly_variable_genes"] = time.perf_counter() - t


fn = ours if what == "ours" else anchor
adata = ad.read_h5ad(path)
warm = adata[:500].copy()
fn(warm, {})  # warm-up: numba compilation / imports are not timed for either path
del warm
gc.collect()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    reset = True
except OSError:
    reset = False
base = rss()["VmRSS"]
steps = {}
t0 = time.perf_counter()
fn(adata, steps)
total = time.perf_counter() - t0
m = rss()
print("JSON" + json.dumps({"total_s": total, "steps": steps, "extra_peak_gb": (m["VmHWM"] - base) / 1e9,
                           "abs_peak_gb": m["VmHWM"] / 1e9, "base_gb": base / 1e9, "hwm_reset": reset,
                           "n_outliers": int(adata.obs["qc_outlier"].sum()),
                           "n_hvg": int(adata.var["highly_variable"].sum())}))
"""


def _data_path(n_cells: int) -> Path:
    path = Path(tempfile.gettempdir()) / f"immunomood_bench_qc_{n_cells}.h5ad"
    if not path.exists():
        import warnings

        import immunomood as im

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata, _ = im.datasets.simulate_cohort(N_DONORS, n_cells // N_DONORS, 2, random_state=0)
        tmp = path.with_suffix(".tmp.h5ad")
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    return path


def _measure(what: str, path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, what, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} child failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")][-1]
    return json.loads(line[4:])


def run(size: str = "100k", repeats: int = 2) -> list[dict]:
    """Time ours vs the plain scanpy calls at ``size`` cells (``"10k"``, ``"100k"``, ``"1m"``)."""
    n_cells = SIZES[size]
    path = _data_path(n_cells)
    res: dict[str, list[dict]] = {"ours": [], "anchor": []}
    for r in range(repeats):
        order = ("ours", "anchor") if r % 2 == 0 else ("anchor", "ours")
        for what in order:
            res[what].append(_measure(what, path))
    out = []

    def best(what, key):
        return min(m["steps"][key] if key in STEPS else m[key] for m in res[what])

    peak_o = max(m["extra_peak_gb"] for m in res["ours"])
    peak_a = max(m["extra_peak_gb"] for m in res["anchor"])
    for step in STEPS:
        o, a = best("ours", step), best("anchor", step)
        out.append({"name": f"qc_{step}_{size}", "ours_s": o, "anchor_s": a, "ratio": o / a, "peak_gb": None})
    o, a = best("ours", "total_s"), best("anchor", "total_s")
    out.append(
        {
            "name": f"qc_pipeline_{size}",
            "ours_s": o,
            "anchor_s": a,
            "ratio": o / a,
            "peak_gb": peak_o,
            "anchor_peak_gb": round(peak_a, 3),
            "mem_ratio": round(peak_o / peak_a, 3),
            "abs_peak_gb": round(max(m["abs_peak_gb"] for m in res["ours"]), 3),
            "n_outliers": res["ours"][0]["n_outliers"],
            "anchor_n_outliers": res["anchor"][0]["n_outliers"],
            "cells": n_cells,
            "repeats": repeats,
        }
    )
    return out


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("size", nargs="?", default="100k", choices=sorted(SIZES))
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    for r in run(args.size, args.repeats):
        ratio = r["ratio"]
        peak = "NA" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        extra = " ".join(
            f"{k}={v}" for k, v in r.items() if k not in {"name", "ours_s", "anchor_s", "ratio", "peak_gb"}
        )
        print(
            f"RESULT {r['name']} ours_s={r['ours_s']:.3f} anchor_s={r['anchor_s']:.3f} ratio={ratio:.3f} "
            f"peak_gb={peak}" + (f"  # {extra}" if extra else "")
        )
