"""Benchmark: im.tl.score_pathways (10 sets) against one pass over the matrix and against scanpy's score_genes.

Prints ``RESULT <name> ours_s=<x> anchor_s=<y> ratio=<x/y> peak_gb=<z>`` lines. Sizes: tiny (2k cells, CI),
100k (here), 1m (a bigger machine).
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time

import numpy as np

SIZES = {"tiny": 2_000, "100k": 100_000, "1m": 1_000_000}


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _best(f, repeat=5):
    ts = []
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def run(size: str = "100k") -> list[dict]:
    import scanpy as sc

    import immunomood as im

    n = SIZES[size]
    adata, _ = im.datasets.simulate_cohort(n_donors=16, n_cells_per_donor=max(n // 16, 20), random_state=0)
    counts = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    X = adata.X
    sets = {}
    for name in ("complement", "interferon_alpha", "interferon_gamma", "inflammatory", "tnfa_nfkb"):
        sets.update(im.tl.gene_sets(name))
    sets = dict(list(sets.items())[:10])
    ones = np.ones(X.shape[1], dtype=X.dtype)
    t_pass = _best(lambda: X @ ones)
    t_ours = _best(lambda: im.tl.score_pathways(adata, sets, inplace=False))
    raw = adata.copy()
    raw.X = counts
    ones_c = np.ones(counts.shape[1], dtype=counts.dtype)
    t_pass_c = _best(lambda: counts @ ones_c)
    t_ours_c = _best(lambda: im.tl.score_pathways(raw, sets, inplace=False))
    present = set(adata.var_names)

    def scanpy_path():
        for k, genes in sets.items():
            g = [x for x in genes if x in present]
            if g:
                sc.tl.score_genes(adata, g, score_name=f"_bench_{k}", random_state=0)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_scanpy = _best(scanpy_path, repeat=1)
    peak = _peak_gb()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta = f"cells={adata.n_obs} genes={adata.n_vars} nnz={X.nnz} sets={len(sets)} cpus={os.cpu_count()} load={load}"
    return [
        dict(
            name=f"score_pathways_vs_one_pass_{size}",
            ours_s=t_ours,
            anchor_s=t_pass,
            ratio=t_ours / t_pass,
            peak_gb=peak,
            info=meta + " anchor: one sparse mat-vec X @ 1 (one pass over the matrix)",
        ),
        dict(
            name=f"score_pathways_counts_input_vs_one_pass_{size}",
            ours_s=t_ours_c,
            anchor_s=t_pass_c,
            ratio=t_ours_c / t_pass_c,
            peak_gb=peak,
            info=meta + " raw counts in X (library sizes and log1p inside the same pass); anchor: counts @ 1",
        ),
        dict(
            name=f"score_pathways_vs_scanpy_score_genes_{size}",
            ours_s=t_ours,
            anchor_s=t_scanpy,
            ratio=t_ours / t_scanpy,
            peak_gb=peak,
            info=meta + " anchor: sc.tl.score_genes per set",
        ),
    ]


def main(size: str = "100k") -> None:
    for r in run(size):
        print(f"# {r['info']}")
        print(
            f"RESULT {r['name']} ours_s={r['ours_s']:.4f} anchor_s={r['anchor_s']:.4f} ratio={r['ratio']:.3f} "
            f"peak_gb={r['peak_gb']:.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "100k")
