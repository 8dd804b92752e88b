"""Benchmark im.tl.annotate against the plain scanpy path (normalise, HVG, PCA, kNN, Leiden, score_genes).

Each path runs in its own subprocess on the same simulated cohort (``im.datasets.simulate_cohort``): the timed
part has no memory tracing, and peak memory is the subprocess's peak resident set size (``ru_maxrss``),
reported together with the part of it added by the timed step (``peak_gb`` = whole process, data included).
Our path is then run once more under cProfile to print where its time goes (cumulative seconds of its steps;
profiling adds overhead, the timed run above has none).

Usage: ``python benchmarks/bench_annotate.py [small|medium|large|SIZE ...]``: small = 10,000 cells,
medium = 100,000, large = 1,000,000 (needs ~30 GB for the simulated cohort alone; not run on 2-core CI).
The issue-15 target is >= 2,000 cells/s for the whole ``annotate`` call at 100,000 cells on 2 cores.

Last runs (2 cores shared with other sessions, load average 3-5, ``settings.n_jobs = 2``):

- 9,965 cells: ours 20.4 s (488 cells/s; 11.1 s = 905 cells/s in a quieter run), scanpy path 23.6 s; lineage
  0.994, fine 0.952; profile: _annotate_cells 7.0 s (T sub-clusters 4.7), HVG + PCA 4.0, thread set-up 2.5
  (settings' ``_threads`` imports torch), kNN 1.4, Leiden 1.9, normalisation 0.7.
- 100,000 cells: ours 42.0 s (2,384 cells/s; 20.4 s = 4,911 cells/s in a quieter run), scanpy path 358 s (its
  ``score_genes`` per marker set and Leiden on 100k cells); peak RSS 2.65 GB (1.58 GB added by the call);
  lineage 0.998, fine 0.918 (sketch 0.949, transferred 0.914); profile: transfer 14.0 s (logistic model),
  _annotate_cells 9.5, thread set-up 7.6, HVG + PCA 6.1, normalisation 5.4.
- 1,000,000 cells: not run here (the simulated cohort alone exceeds this machine's 23 GB).

Before issue 15 the 16,000-cell call took 93 s, 43 s of it compiling umap's numba kernels for the connectivities
(now computed in numpy) and 15 s importing.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

SIZES = {"small": 10_000, "medium": 100_000, "large": 1_000_000}
STEPS = (
    "_log_normalised", "_dense_cols", "_pca_rep", "_annotate_cells", "_graph_and_clusters", "_subcluster",
    "_t_subsets", "_transfer", "knn_lists", "_leiden", "_threads",
)


def _data(n: int):
    import immunomood as im

    n_donors = 16 if n <= 20_000 else 20
    per = max(50, -(-n // n_donors))
    adata, _ = im.datasets.simulate_cohort(n_donors=n_donors, n_cells_per_donor=per, random_state=0)
    return adata[:n].copy() if adata.n_obs > n else adata


def _anchor(adata):
    """The plain scanpy path a user would write (kNN through the package's shared kNN: scanpy's own default
    transformer fails above 4,096 cells with pynndescent 0.7 + scipy >= 1.15)."""
    import scanpy as sc

    from immunomood._neighbors import neighbors
    from immunomood.tl._annotate import load_markers

    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=2000, flavor="seurat")
    b = a[:, a.var["highly_variable"]].copy()
    sc.pp.pca(b, n_comps=30, svd_solver="arpack", random_state=0)
    neighbors(b, use_rep="X_pca", n_neighbors=15, random_state=0)
    sc.tl.leiden(b, resolution=2.0, flavor="igraph", n_iterations=2, directed=False, random_state=0)
    for s in load_markers()["lineages"] + load_markers()["subsets"]:
        genes = [g for g in s["positive"] if g in a.var_names]
        if genes:
            sc.tl.score_genes(a, genes, score_name="s", random_state=0)


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def _worker(path: str, n: int) -> dict:
    import immunomood as im

    im.settings.n_jobs = 2
    adata = _data(n)
    import scanpy  # noqa: F401  (imported before timing in both paths: an import is not the method's cost)

    before = _rss_gb()
    t = time.perf_counter()
    if path == "ours":
        im.tl.annotate(adata)
    elif path == "profile":
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.enable()
        im.tl.annotate(adata)
        pr.disable()
        st = pstats.Stats(pr).stats
        steps = {}
        for (_, _, func), (_, _, _, ct, _) in st.items():
            if func in STEPS:
                steps[func] = steps.get(func, 0.0) + ct
        return {"seconds": time.perf_counter() - t, "steps": steps, "n_obs": adata.n_obs}
    else:
        _anchor(adata)
    dt = time.perf_counter() - t
    out = {"seconds": dt, "peak_gb": _rss_gb(), "added_gb": _rss_gb() - before, "n_obs": adata.n_obs}
    if path == "ours":
        truth = adata.obs["cell_type_true"].astype(str)
        out["lineage_acc"] = float((adata.obs["cell_lineage"].astype(str) == adata.obs["lineage_true"].astype(str)).mean())
        out["fine_acc"] = float((adata.obs["cell_type"].astype(str) == truth).mean())
        out["unassigned"] = float((adata.obs["cell_lineage"] == "Unassigned").mean())
    return out


def _run_path(path: str, n: int) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, "--worker", path, str(n)], capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(size: str = "small", profile: bool = True) -> list[dict]:
    n = SIZES[size] if size in SIZES else int(size)
    ours = _run_path("ours", n)
    anchor = _run_path("anchor", n)
    out = {
        "name": f"annotate_{size}_{ours['n_obs']}",
        "ours_s": ours["seconds"],
        "cells_per_s": ours["n_obs"] / ours["seconds"],
        "anchor_s": anchor["seconds"],
        "ratio": ours["seconds"] / anchor["seconds"],
        "peak_gb": ours["peak_gb"],
        "added_gb": ours["added_gb"],
        "anchor_peak_gb": anchor["peak_gb"],
        "lineage_acc": ours["lineage_acc"],
        "fine_acc": ours["fine_acc"],
        "unassigned": ours["unassigned"],
    }
    print(
        f"RESULT {out['name']} ours_s={out['ours_s']:.2f} cells_per_s={out['cells_per_s']:.0f} "
        f"anchor_s={out['anchor_s']:.2f} ratio={out['ratio']:.2f} peak_gb={out['peak_gb']:.2f} "
        f"added_gb={out['added_gb']:.2f} anchor_peak_gb={out['anchor_peak_gb']:.2f} "
        f"lineage_acc={out['lineage_acc']:.3f} fine_acc={out['fine_acc']:.3f} unassigned={out['unassigned']:.3f}"
    )
    if profile:
        prof = _run_path("profile", n)
        steps = " ".join(f"{k}={v:.1f}" for k, v in sorted(prof["steps"].items(), key=lambda kv: -kv[1]))
        print(f"WHERE {out['name']} total_profiled_s={prof['seconds']:.1f} (cumulative, nested) {steps}")
        out["steps"] = prof["steps"]
    return [out]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(sys.argv[2], int(sys.argv[3]))))
    else:
        for size in sys.argv[1:] or ["small"]:
            run(size)
