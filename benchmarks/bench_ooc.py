"""Out-of-core benchmark: QC -> normalise -> HVG -> pathway scores -> pseudobulk on an .h5ad on disk.

Ours: ``im.io.read_lazy`` (Dask, blocks of cells) through the immunomood functions.
Anchor: the plain in-memory scanpy path for the same work (``sc.read_h5ad`` of the whole file,
``calculate_qc_metrics``, the MAD rule in numpy, ``normalize_total`` + ``log1p``, ``highly_variable_genes``
seurat_v3, ``score_genes`` per set, ``sc.get.aggregate``).
Each path runs in its own process; peak memory is that process's maximum resident set size.

    python benchmarks/bench_ooc.py --cells 100000 [--genes 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"20k": 20_000, "100k": 100_000, "300k": 300_000, "1m": 1_000_000}
CACHE = Path(os.environ.get("IMMUNOMOOD_BENCH_DIR", Path(tempfile.gettempdir()) / "immunomood_bench"))


def _pad_genes(X, n_extra: int, seed: int):
    """``n_extra`` lowly expressed genes (independent Poisson counts, rates fixed across chunks) appended to X."""
    import numpy as np
    from scipy import sparse

    lam = np.random.default_rng(7).gamma(0.3, 0.05, size=n_extra)  # mean 0.015 counts per cell and gene
    rng = np.random.default_rng(seed)
    per_cell = rng.poisson(lam.sum(), size=X.shape[0])  # Poisson splitting: exact per-gene Poisson counts
    rows = np.repeat(np.arange(X.shape[0]), per_cell)
    cols = rng.choice(n_extra, size=rows.size, p=lam / lam.sum())
    E = sparse.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(X.shape[0], n_extra))
    E.sum_duplicates()
    return sparse.hstack([X, E], format="csr", dtype=np.float32)


def make_h5ad(n_cells: int, n_genes: int = 20_000, path: Path | None = None) -> Path:
    """Write a simulated cohort of ``n_cells`` cells to disk in chunks (never the whole matrix in memory).

    The simulator's reference has 13,701 genes; up to ``n_genes`` are padded with lowly expressed genes
    (``PAD00000``...; about 90 extra non-zeros per cell) so the matrix has the width of a real atlas.
    """
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem

    import immunomood as im

    path = path or CACHE / f"sim_{n_cells}_{n_genes}g.h5ad"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.h5ad")
    per_chunk = 16 * 2_500  # 16 donors x 2,500 cells per simulated chunk
    n_chunks = max(1, -(-n_cells // per_chunk))
    obs_parts = []
    for i in range(n_chunks):
        cells = min(per_chunk, n_cells - i * per_chunk)
        a, _ = im.datasets.simulate_cohort(
            n_donors=16, n_cells_per_donor=max(1, cells // 16), n_batches=2, n_genes=n_genes, random_state=1000 + i
        )
        a.obs["donor"] = [f"c{i:02d}_{d}" for d in a.obs["donor"].astype(str)]
        a.obs["batch"] = [f"b{i % 4}_{b}" for b in a.obs["batch"].astype(str)]
        a.obs_names = [f"c{i:02d}_{n}" for n in a.obs_names]
        a.X = a.X.astype("float32")
        if n_genes > a.n_vars:
            extra = n_genes - a.n_vars
            names = a.var_names.append(pd.Index([f"PAD{j:05d}" for j in range(extra)]))
            a = ad.AnnData(_pad_genes(a.X, extra, seed=5000 + i), obs=a.obs, var=pd.DataFrame(index=names))
        obs_parts.append(a.obs[["donor", "condition", "batch", "cell_type_true"]].astype(str))
        if i == 0:
            ad.AnnData(X=a.X, var=a.var[[]]).write_h5ad(tmp)
        else:
            with h5py.File(tmp, "r+") as f:
                sparse_dataset(f["X"]).append(a.X)
        del a
    obs = pd.concat(obs_parts)
    for c in obs.columns:
        obs[c] = obs[c].astype("category")
    with h5py.File(tmp, "r+") as f:
        del f["obs"]
        write_elem(f, "obs", obs)
    os.replace(tmp, path)
    return path


OURS = r"""
import sys, time, json, resource
import immunomood as im

score_pathways = im.tl.score_pathways  # one code path for Dask and in-memory input
pseudobulk = im.tl.pseudobulk
t0 = time.perf_counter()
a = im.io.read_lazy(sys.argv[1], chunk_size=20_000)
im.pp.qc_metrics(a, sample_key="donor")
im.pp.flag_outliers(a, sample_key="donor")
im.pp.normalize(a)
im.pp.highly_variable_genes(a, n_top_genes=2000, batch_key="batch")
sets = {}
for name in ("complement", "interferon_alpha"):
    sets.update(im.tl.gene_sets(name))
score_pathways(a, sets)
pb = pseudobulk(a, sample_key="donor", groupby="cell_type_true", layer="counts", min_cells=10)
t = time.perf_counter() - t0
print(json.dumps({"seconds": t, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                  "n_pseudobulk": int(pb.n_obs), "n_hvg": int(a.var["highly_variable"].sum())}))
"""

ANCHOR = r"""
import sys, time, json, resource
import numpy as np, scanpy as sc
import immunomood as im
t0 = time.perf_counter()
a = sc.read_h5ad(sys.argv[1])
a.var["mt"] = a.var_names.str.upper().str.startswith("MT-")
sc.pp.calculate_qc_metrics(a, qc_vars=["mt"], percent_top=[20], inplace=True, log1p=True)
out = np.zeros(a.n_obs, bool)
for d, idx in a.obs.groupby("donor", observed=True).indices.items():
    for m, n in (("log1p_total_counts", 5), ("log1p_n_genes_by_counts", 5), ("pct_counts_in_top_20_genes", 5),
                 ("pct_counts_mt", 3)):
        v = a.obs[m].to_numpy()[idx]
        med = np.median(v); mad = np.median(np.abs(v - med))
        out[idx] |= np.abs(v - med) > n * mad
a.obs["qc_outlier"] = out
a.layers["counts"] = a.X.copy()
sc.pp.normalize_total(a, target_sum=1e4)
sc.pp.log1p(a)
sc.pp.highly_variable_genes(a, n_top_genes=2000, flavor="seurat_v3", layer="counts", batch_key="batch")
sets = {}
for name in ("complement", "interferon_alpha"):
    sets.update(im.tl.gene_sets(name))
for s, genes in sets.items():
    g = [x for x in genes if x in a.var_names]
    if g:
        sc.tl.score_genes(a, g, score_name=s, random_state=0)
pb = sc.get.aggregate(a, by=["donor", "cell_type_true"], func="sum", layer="counts")
t = time.perf_counter() - t0
print(json.dumps({"seconds": t, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                  "n_pseudobulk": int(pb.n_obs)}))
"""


def _run(code: str, path: Path, timeout: int = 3600) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", code, str(path)], check=False, capture_output=True, text=True, timeout=timeout
    )
    if r.returncode != 0:
        killed = r.returncode in (-9, 137)
        return {
            "seconds": None,
            "peak_gb": None,
            "error": "killed (out of memory)" if killed else r.stderr.strip().splitlines()[-1][:300],
        }
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(size: str = "100k", n_genes: int = 20_000) -> list[dict]:
    n = SIZES[size]
    t0 = time.perf_counter()
    path = make_h5ad(n, n_genes)
    gen = time.perf_counter() - t0
    ours = _run(OURS, path)
    anchor = _run(ANCHOR, path)
    row = {
        "name": f"out_of_core_{size}",
        "ours_s": ours["seconds"],
        "anchor_s": anchor["seconds"],
        "peak_gb": ours["peak_gb"],
        "anchor_peak_gb": anchor["peak_gb"],
        "file_gb": round(path.stat().st_size / 1024**3, 2),
        "simulate_write_s": round(gen, 1),
    }
    for k in ("error",):
        if k in ours:
            row["ours_error"] = ours[k]
        if k in anchor:
            row["anchor_error"] = anchor[k]
    return [row]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="100k", choices=sorted(SIZES))
    ap.add_argument("--genes", type=int, default=20_000)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from run import format_result

    for r in run(args.size, args.genes):
        print(format_result(r))
