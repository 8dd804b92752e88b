"""Benchmark im.tl.annotate against the plain scanpy path (normalise, HVG, PCA, kNN, Leiden, score_genes)."""

from __future__ import annotations

import sys
import time
import tracemalloc

import numpy as np

SIZES = {"small": 3_000, "medium": 20_000, "large": 100_000}


def _data(n: int):
    import immunomood as im

    per = max(50, n // 16)
    adata, _ = im.datasets.simulate_cohort(n_donors=16, n_cells_per_donor=per, random_state=0)
    return adata[: n].copy() if adata.n_obs > n else adata


def _anchor(adata):
    import scanpy as sc
    from immunomood.tl._annotate import load_markers

    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=2000, flavor="seurat")
    b = a[:, a.var["highly_variable"]].copy()
    sc.pp.pca(b, n_comps=30, svd_solver="arpack", random_state=0)
    sc.pp.neighbors(b, n_neighbors=15, random_state=0)
    sc.tl.leiden(b, resolution=2.0, flavor="igraph", n_iterations=2, directed=False, random_state=0)
    for s in load_markers()["lineages"] + load_markers()["subsets"]:
        genes = [g for g in s["positive"] if g in a.var_names]
        if genes:
            sc.tl.score_genes(a, genes, score_name="s", random_state=0)


def _timed(fn, *args, **kw):
    tracemalloc.start()
    t = time.perf_counter()
    fn(*args, **kw)
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 1e9
    tracemalloc.stop()
    return dt, peak


def run(size: str = "small") -> list[dict]:
    import immunomood as im

    n = SIZES[size]
    adata = _data(n)
    ours, peak = _timed(im.tl.annotate, adata)
    anchor, _ = _timed(_anchor, adata)
    acc_lin = float((adata.obs["cell_lineage"].astype(str) == adata.obs["lineage_true"].astype(str)).mean())
    out = {"name": f"annotate_{size}_{adata.n_obs}", "ours_s": ours, "anchor_s": anchor,
           "ratio": ours / anchor, "peak_gb": peak, "lineage_acc": acc_lin}
    print(f"RESULT {out['name']} ours_s={ours:.2f} anchor_s={anchor:.2f} ratio={ours / anchor:.2f} peak_gb={peak:.2f}")
    return [out]


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "small")
