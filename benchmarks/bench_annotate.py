"""Benchmark im.tl.annotate against the plain scanpy path (normalise, HVG, PCA, kNN, Leiden, score_genes).

Each path runs in its own subprocess on the same simulated cohort (``im.datasets.simulate_cohort``): the timed
part has no memory tracing, and peak memory is the subprocess's peak resident set size (``ru_maxrss``),
reported together with the part of it added by the timed step (``peak_gb`` = whole process, data included).
Our path is then run once more under cProfile to print where its time goes (cumulative seconds of its steps;
profiling adds overhead, the timed run above has none).

Usage: ``python benchmarks/bench_annotate.py [small|medium|large|SIZE ...]``: small = 10,000 cells,
medium = 100,000, large = 1,000,000. ``large`` does not hold the cohort in memory: :func:`_large_input` simulates
100,000 cells once and writes 10 binomially thinned copies (p = 0.9, one seed per copy; distinct cell names and
donors) to h5ad files joined by :func:`anndata.experimental.concat_on_disk` (6.1 GB in ``$BENCH_ANNOTATE_DIR``,
default ``/tmp/bench_annotate``: delete it afterwards; 190 s to write, 3.7 GB peak), which
:func:`immunomood.io.read_lazy` opens as Dask blocks of 10,000 cells. ``added_gb``: the peak RSS during the call
minus the RSS before it (the peak is reset before the call). The scanpy path is not run above 200,000 cells when
its memory (measured at 100,000 cells, x10) or time would not fit this machine; the reason is printed.
The issue-15 target is >= 2,000 cells/s for the whole ``annotate`` call at 100,000 cells on 2 cores.

Last runs (2 cores shared with other sessions, load average 3-5, ``settings.n_jobs = 2``):

- 9,965 cells: ours 20.4 s (488 cells/s; 11.1 s = 905 cells/s in a quieter run), scanpy path 23.6 s; lineage
  0.994, fine 0.952; profile: _annotate_cells 7.0 s (T sub-clusters 4.7), HVG + PCA 4.0, thread set-up 2.5
  (settings' ``_threads`` imports torch), kNN 1.4, Leiden 1.9, normalisation 0.7.
- 100,000 cells: ours 42.0 s (2,384 cells/s; 20.4 s = 4,911 cells/s in a quieter run), scanpy path 358 s (its
  ``score_genes`` per marker set and Leiden on 100k cells); peak RSS 2.65 GB (1.58 GB added by the call);
  lineage 0.998, fine 0.918 (sketch 0.949, transferred 0.914); profile: transfer 14.0 s (logistic model),
  _annotate_cells 9.5, thread set-up 7.6, HVG + PCA 6.1, normalisation 5.4.
- 1,000,000 cells: see the row-block runs below.

After the confidence/calibration change and one BLAS thread for the logistic models (load average 4-6):
9,965 cells 15.3 s (profile: _annotate_cells 6.7 s, HVG + PCA 3.4, Leiden 1.9, _calibration 0.3); 19,926 cells
21.0 s profiled (38.6 s before the BLAS-thread limit: the transfer's and the calibration's small logistic fits ran
30x slower with 2 BLAS threads on 2 busy cores); 100,000 cells 35.9 s = 2,786 cells/s (the previous code took
44.2 s in the same hour); labels identical to the previous code (lineage 0.985, fine 0.883, Unassigned 1.4% at
100k with the current simulator).

Row-block input (issue 15: no normalised copy in memory, Dask accepted; ``settings.n_jobs = 2``, labels identical
to the previous code at 16,000 and 100,000 cells). Peak RSS during the call at 100,000 cells in memory: 1.45 GB
added before, 0.48 GB after (the log-normalised CSR copy of the whole matrix is gone).

- 9,965 cells (load average 2.8-3.2): ours 7.8 s = 1,274 cells/s, scanpy path 20.3 s; peak 0.70 GB (scanpy
  0.72); lineage 0.994, fine 0.953; profile: _annotate_cells 7.7 s (sub-clusters 5.0), HVG + PCA 2.9, Leiden 2.2.
- 100,000 cells in memory, after merging the row blocks with the unscaled-graph CD8 override (81b080b; load average
  1.2-1.9): ours 12.1 s = 8,265 cells/s, scanpy path 90.5 s (ratio 0.13); peak 1.54 GB, 0.49 GB added by the
  call (scanpy 2.97 GB); lineage 0.985, fine 0.893, Unassigned 1.4%.
- 100,000 cells in memory (load average 1.8-2.0): ours 18.4 s = 5,425 cells/s (17.3 s = 5,791 cells/s at load
  3.9-4.3), scanpy path 88.7 s (146 s at load 4); peak 1.55 GB, 0.45 GB added by the call (scanpy 2.94 GB);
  lineage 0.985, fine 0.895, Unassigned 1.4%; profile: _annotate_cells 6.1 s, _transfer 4.9, reading the
  blocks (sketch rows, then marker genes + PCA projection) 2.9, HVG + PCA 1.8.
- 1,000,000 cells from disk (``read_lazy``, 100 Dask blocks of 10,000 cells; 6.1 GB h5ad): ours 242.6 s =
  4,121 cells/s at load average 1.6-2.3 (130.5 s = 7,666 cells/s in an earlier run, 307.3 s in another at load
  3.8); peak RSS 2.27 GB (1.86 GB added by the call: marker genes of 1M cells 0.6 GB, PCA projection, per-block
  results): within the 12 GB target. Lineage 0.984, fine 0.881, Unassigned 0.8% (10 copies of the 100,000-cell
  cohort thinned to 90% of their counts: 0.985 / 0.895 / 1.4% on the cohort itself). Where the time goes: reading the file twice (the
  sketch's 12,000 rows, then every block for marker genes and projection) 62 s of a 109 s profiled run when the
  file was in the page cache and 237 s of 299 s when it was not (52% I/O wait: this machine's shared disk read
  at a few MB/s; CPU time of the whole call ~110 s); the transfer (kNN of 988,000 cells among the sketch and
  the logistic model, in chunks of 50,000 cells) 38-43 s; the full annotation of the sketch 4 s, HVG + PCA 1-4 s.
  The scanpy path was not run: at 100,000 cells it took 89-146 s and 2.9 GB peak, x10 -> ~29 GB (the in-memory
  matrix, its normalised copy and score_genes' copies) on a 23 GiB machine, and >= 15 min.

Real labelled sets (``python benchmarks/bench_annotate.py real [SET ...] [--dump=DIR]``, needs
IMMUNOMOOD_DATA_DIR; ``BENCH_REFERENCE=blood`` runs with the opt-in packaged reference, ``BENCH_CONFUSION=1`` prints
the confusion table): per set lineage accuracy, fine accuracy on fine calls, Unassigned, lineage-level calls, AUROC
of confidence for correctness, expected calibration error, accuracy per confidence bin and per label.
``pbmc3k_nocd8`` and ``csle_nob`` are pbmc3k without CD8A/CD8B and csle without every B naive/memory marker:
held-out checks of the reference-signature path (the reference is built from combat and zheng2017 only).
Last run (after the unscaled-graph CD8 override), markers only (``reference=None``, the default) -> with
``reference="blood"`` (reference 1.1.0, effects replicated in both cohorts), as lineage / fine / Unassigned /
lineage-level / AUROC / ECE:

- pbmc3k 0.992 / 0.904 / 0.3% / 0% / 0.843 / 0.051 -> identical (every distinction has its markers);
- kang2018 0.995 / 0.942 / 3.0% / 55.4% / 0.814 / 0.028 -> 0.995 / 0.950 / 3.0% / 46.7% / 0.770 / 0.050: B cells
  split by the signature where clear (112 B naive, 19 B memory, 161 left at "B cell"); T cells stay at "T cell"
  (only CD8A separates CD8 from CD4 in both compartments of both cohorts). The AUROC falls because the B subset
  calls carry lower confidence while kang's truth ("B cells") cannot judge them;
- csle (Azimuth l3) 0.996 / 0.809 / 3.6% / 0% / 0.862 / 0.035 and csle (author labels) 1.000 / 0.806 / 3.6% / 0% /
  0.834 / 0.037 -> identical;
- onek1k 0.995 / 0.970 / 0.9% / 22.0% / 0.866 / 0.026 -> 0.995 / 0.955 / 0.9% / 10.9% / 0.881 / 0.046: of 1,707
  memory B in the B lineage 735 B memory, 125 B naive, 847 left at "B cell" (within 0.25 of the boundary);
- pbmc3k_nocd8 0.992 / 0.982 / 0.2% / 55.2% / 0.862 / 0.029 -> identical (only CTSW of the replicated CD4/CD8
  genes is left: not resolved);
- csle_nob 0.996 / 0.639 / 3.6% / 50.8% / 0.930 / 0.069 -> identical (4 replicated B-naive genes: not resolved).

Reference 1.0.0 took the effects of the pooled cohorts. Its CD4 vs CD8 signature was led by HLA-DPA1, HLA-DPB1, NME2
(activated CD8 T cells of COVID-19 donors): it resolved pbmc3k_nocd8 (CD4/CD8 agreement 0.945, fine 0.887) and
csle_nob (fine 0.747, lineage-level 5.2%), but on kang2018 it called 24% of CD4 T cells CD8 (fine 0.877). Requiring
an effect to replicate in both cohorts removes these genes. The reference is therefore opt-in: where it resolves a
distinction it trades an honest lineage-level call for a fine call of lower accuracy.
Variants tried for the reference path (chosen on principle; numbers are for reference 1.0.0): CD4/CD8 effect
threshold 0.5 (kept) vs 0.3; the CD4/CD8 score on coarse (kept) vs finer T sub-clusters, and kNN-only smoothing
(kang fine 0.920 / 0.924 / 0.925 at threshold 0.3); B naive/memory from the relative subset scores (onek1k: 1,079
of 1,743 memory B called naive) vs on the reference's scale with an additive per-gene offset (987) vs a
multiplicative per-gene panel scale (kept, 556) vs one global scale (481, but kang's B flip to mostly memory);
boundary margin 0 / 0.25 (kept) / 0.5 (onek1k lineage-level 0% / 12.1% / 16.8%, fine 0.905 / 0.949 / 0.968).
Agreement factors of the confidence where "B cell" calls sit among B naive/memory calls: plain share of the same
call (AUROC kang / onek1k / csle_nob 0.734 / 0.848 / 0.847), a lineage-level neighbour also supporting a fine
call (0.794 / 0.774 / 0.886: wrong fine calls gained confidence), a lineage-level call agreeing with its whole
lineage and a fine call only with the same call (kept: 0.767 / 0.867 / 0.880).
Before the kNN-agreement factor and the calibration the AUROCs were 0.761 / 0.784 / 0.835 / - / 0.762 and the
ECEs 0.15-0.24.

Before issue 15 the 16,000-cell call took 93 s, 43 s of it compiling umap's numba kernels for the connectivities
(now computed in numpy) and 15 s importing.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers shared with the tests

SIZES = {"small": 10_000, "medium": 100_000, "large": 1_000_000}
STEPS = (
    "_input_kind",
    "_row_blocks",
    "_expression_blocks",
    "_log_normalised",
    "_dense_cols",
    "_pca_fit",
    "_annotate_cells",
    "_graph_and_clusters",
    "_subcluster",
    "_t_subsets",
    "_transfer",
    "knn_lists",
    "_leiden",
    "_threads",
    "_calibration",
)
#: Where the 1,000,000-cell input is written (10 resampled copies of a 100,000-cell cohort, ~7 GB; delete after).
LARGE_DIR = Path(os.environ.get("BENCH_ANNOTATE_DIR", "/tmp/bench_annotate"))
#: Longest the scanpy path may run at one size before it is stopped (seconds).
ANCHOR_TIMEOUT_S = 1800


def _data(n: int):
    import immunomood as im

    n_donors = 16 if n <= 20_000 else 20
    per = max(50, -(-n // n_donors))
    adata, _ = im.datasets.simulate_cohort(n_donors=n_donors, n_cells_per_donor=per, random_state=0)
    return adata[:n].copy() if adata.n_obs > n else adata


def _large_input(n_copies: int = 10, base_cells: int = 100_000) -> Path:
    """The 1,000,000-cell h5ad, written block by block (never 1,000,000 cells in memory).

    One 100,000-cell cohort is simulated; each of ``n_copies`` copies is its counts binomially thinned (p = 0.9,
    seed = copy index: every cell's counts differ) with distinct cell names and donors (``donor`` + ``_r<i>``),
    written to its own h5ad and the copies joined on disk by :func:`anndata.experimental.concat_on_disk`.
    """
    import anndata as ad
    import numpy as np
    from anndata.experimental import concat_on_disk

    out = LARGE_DIR / f"annotate_{n_copies * base_cells}.h5ad"
    if out.exists():
        return out
    LARGE_DIR.mkdir(parents=True, exist_ok=True)
    base = _data(base_cells)
    parts = []
    for i in range(n_copies):
        X = base.X.copy()
        X.data = np.random.default_rng(i).binomial(X.data.astype(np.int64), 0.9).astype(np.float32)
        X.eliminate_zeros()
        a = ad.AnnData(X=X, obs=base.obs.copy(), var=base.var.copy())
        a.obs_names = [f"r{i}_{x}" for x in base.obs_names]
        a.obs["donor"] = (a.obs["donor"].astype(str) + f"_r{i}").astype("category")
        parts.append(LARGE_DIR / f"part{i}.h5ad")
        a.write_h5ad(parts[-1])
        del a, X
    concat_on_disk([str(p) for p in parts], str(out), max_loaded_elems=50_000_000)
    for p in parts:
        p.unlink()
    return out


def _anchor(adata):
    """The plain scanpy path a user would write (kNN through the package's shared kNN: scanpy's own default
    transformer fails above 4,096 cells with pynndescent 0.7 + scipy >= 1.15)."""
    import scanpy as sc

    from immunomood._markers import load_markers
    from immunomood._neighbors import neighbors

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


def _status_gb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, GB (Linux; else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith(field + ":")) / 1e6
    except (OSError, StopIteration):  # pragma: no cover - not Linux
        return _rss_gb()


def _reset_peak() -> float:
    """Reset this process's peak RSS (``/proc/self/clear_refs``) and return its RSS now, GB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # pragma: no cover - not Linux: added_gb then includes the data's own peak
        pass
    return _status_gb("VmRSS")


def _worker(path: str, n: int) -> dict:
    import immunomood as im

    im.settings.n_jobs = 2
    if path.endswith("_lazy"):  # the 1,000,000-cell file, read as Dask row blocks of 10,000 cells
        adata = im.io.read_lazy(_large_input(), chunk_size=10_000)
        path = path.removesuffix("_lazy")
    else:
        adata = _data(n)
    import scanpy  # noqa: F401  (imported before timing in both paths: an import is not the method's cost)

    gc.collect()
    before = _reset_peak()  # the data's own peak (simulation) is not the method's
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
        return {"seconds": time.perf_counter() - t, "steps": steps, "n_obs": adata.n_obs, "peak_gb": _rss_gb()}
    else:
        _anchor(adata)
    dt = time.perf_counter() - t
    out = {"seconds": dt, "peak_gb": _rss_gb(), "added_gb": _status_gb("VmHWM") - before, "n_obs": adata.n_obs}
    if path == "ours":
        truth = adata.obs["cell_type_true"].astype(str)
        out["lineage_acc"] = float(
            (adata.obs["cell_lineage"].astype(str) == adata.obs["lineage_true"].astype(str)).mean()
        )
        out["fine_acc"] = float((adata.obs["cell_type"].astype(str) == truth).mean())
        out["unassigned"] = float((adata.obs["cell_lineage"] == "Unassigned").mean())
    return out


def _run_path(path: str, n: int, timeout: float | None = None) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, "--worker", path, str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


_ANCHOR_RUNS: dict[int, dict] = {}  # the scanpy path's results per size in this invocation


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def run(size: str = "small", profile: bool = True) -> list[dict]:
    n = SIZES[size] if size in SIZES else int(size)
    lazy = n > 200_000  # read from disk with im.io.read_lazy: the in-memory cohort would not fit
    if lazy:
        t = time.perf_counter()
        path = _large_input(n_copies=max(1, n // 100_000))
        print(f"INPUT {path} ({path.stat().st_size / 1e9:.1f} GB, {time.perf_counter() - t:.0f} s to write or find)")
    print(f"START {size} {_load()}")
    ours = _run_path("ours_lazy" if lazy else "ours", n)
    anchor = _anchor_at(n)
    out = {
        "name": f"annotate_{size}_{ours['n_obs']}",
        "ours_s": ours["seconds"],
        "cells_per_s": ours["n_obs"] / ours["seconds"],
        "anchor_s": anchor.get("seconds", float("nan")),
        "ratio": ours["seconds"] / anchor.get("seconds", float("nan")),
        "peak_gb": ours["peak_gb"],
        "added_gb": ours["added_gb"],
        "anchor_peak_gb": anchor.get("peak_gb", float("nan")),
        "lineage_acc": ours["lineage_acc"],
        "fine_acc": ours["fine_acc"],
        "unassigned": ours["unassigned"],
    }
    print(
        f"RESULT {out['name']} ours_s={out['ours_s']:.2f} cells_per_s={out['cells_per_s']:.0f} "
        f"anchor_s={out['anchor_s']:.2f} ratio={out['ratio']:.2f} peak_gb={out['peak_gb']:.2f} "
        f"added_gb={out['added_gb']:.2f} anchor_peak_gb={out['anchor_peak_gb']:.2f} "
        f"lineage_acc={out['lineage_acc']:.3f} fine_acc={out['fine_acc']:.3f} unassigned={out['unassigned']:.3f} "
        f"({_load()})"
    )
    if "not_run" in anchor:
        print(f"ANCHOR {out['name']} not run: {anchor['not_run']}")
    if profile:
        prof = _run_path("profile_lazy" if lazy else "profile", n)
        steps = " ".join(f"{k}={v:.1f}" for k, v in sorted(prof["steps"].items(), key=lambda kv: -kv[1]))
        print(f"WHERE {out['name']} total_profiled_s={prof['seconds']:.1f} (cumulative, nested) {steps}")
        out["steps"] = prof["steps"]
    return [out]


def _anchor_at(n: int) -> dict:
    """The scanpy path at ``n`` cells, or why it was not run (it holds the whole matrix and a normalised copy)."""
    if n <= 200_000:
        _ANCHOR_RUNS[n] = _run_path("anchor", n, timeout=ANCHOR_TIMEOUT_S)
        return _ANCHOR_RUNS[n]
    ref_n = max(_ANCHOR_RUNS, default=100_000)
    ref = _ANCHOR_RUNS.get(ref_n) or _run_path("anchor", ref_n, timeout=ANCHOR_TIMEOUT_S)
    f = n / ref_n
    mem = ref["peak_gb"] * f
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    why = (
        f"measured at {ref_n:,} cells: {ref['seconds']:.0f} s, peak RSS {ref['peak_gb']:.1f} GB; x{f:.0f} cells "
        f"-> ~{mem:.0f} GB (the in-memory matrix, its normalised copy and score_genes' per-set copies) and "
        f">= {ref['seconds'] * f / 60:.0f} min (Leiden and score_genes grow at least linearly)"
    )
    if mem < 0.8 * total and ref["seconds"] * f < ANCHOR_TIMEOUT_S:  # pragma: no cover - not on this machine
        return _run_path("anchor", n, timeout=ANCHOR_TIMEOUT_S)
    return {"not_run": f"{why}; this machine has {total:.0f} GB and the timeout is {ANCHOR_TIMEOUT_S} s"}


# ---------------------------------------------------------------------------------------------------------------
# real labelled sets (IMMUNOMOOD_DATA_DIR): lineage, fine, Unassigned, lineage-level calls, confidence AUROC
# ---------------------------------------------------------------------------------------------------------------
# How published labels are matched to our types (the same maps as tests/tl/test_annotate.py). A fine call is
# correct when it is in the label's set; a lineage-level call ("T cell" ...) is judged on its lineage only.
from _label_maps import CSLE_AZIMUTH, SEURAT_FINE, SEURAT_LIN  # noqa: E402  (tests/_label_maps.py, shared with the tests)

# kang2018: its "CD8 T cells" cluster holds the NK cells too (no NK label in that reference)
KANG_FINE = {
    "CD14+ Monocytes": {"Classical monocyte", "Intermediate monocyte"},
    "FCGR3A+ Monocytes": {"Non-classical monocyte", "Intermediate monocyte"},
    "CD4 T cells": {"CD4 naive T", "CD4 memory T", "Treg"},
    "CD8 T cells": {"CD8 naive T", "CD8 memory T", "MAIT", "gamma-delta T", "NK"},
    "B cells": {"B naive", "B memory", "Plasmablast"},
}
KANG_LIN = {
    "CD14+ Monocytes": {"Monocyte"},
    "FCGR3A+ Monocytes": {"Monocyte"},
    "CD4 T cells": {"T cell"},
    "CD8 T cells": {"T cell", "NK cell"},
    "B cells": {"B cell"},
}
ONEK1K_FINE = {
    "monoc": {"Classical monocyte", "Intermediate monocyte"},
    "mononc": {"Non-classical monocyte", "Intermediate monocyte"},
    "cd4nc": {"CD4 naive T", "CD4 memory T"},
    "bmem": {"B memory"},
}
ONEK1K_LIN = {"monoc": "Monocyte", "mononc": "Monocyte", "bmem": "B cell", "cd4nc": "T cell"}
CSLE = CSLE_AZIMUTH  # Azimuth level-3 label prefix -> (fine types, lineage)
# csle's own (author) labels in obs["cell_type"]: the compartments the cells were sorted/annotated into. They
# disagree with Azimuth level 3 on Tregs (60 of Azimuth's 199 "CD4 TCM_1" are author Tregs), so both are scored.
CSLE_AUTHORS = {
    "B_Naive": ({"B naive"}, "B cell"),
    "B_Memory": ({"B memory"}, "B cell"),
    "B_DN2": ({"B memory"}, "B cell"),
    "CD4mem": ({"CD4 memory T"}, "T cell"),
    "Treg": ({"Treg"}, "T cell"),
}
REAL_SETS = ("pbmc3k", "kang2018", "csle", "csle_authors", "onek1k", "pbmc3k_nocd8", "csle_nob")
# held-out checks of the reference-signature path: the markers of one distinction dropped from var
MASKS = {
    "nocd8": ["CD8A", "CD8B"],
    "nob": ["IGHD", "IGHM", "TCL1A", "FCER2", "IL4R", "CD27", "AIM2", "TNFRSF13B", "IGHA1", "IGHG1", "SSPN"],
}
BINS = (0.0, 0.5, 0.7, 0.8, 0.9, 1.0001)


def _real_data(name: str, data_dir):
    """(AnnData, truth label per cell, map label -> fine types, map label -> lineages)."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    base, _, mask = name.partition("_no")
    if mask and f"no{mask}" in MASKS:
        from immunomood._markers import marker_symbols

        a, truth, fine_map, lin_map = _real_data(base, data_dir)
        drop = np.isin(np.asarray(marker_symbols(a)).astype(str), MASKS[f"no{mask}"])
        return a[:, ~drop].copy(), truth, fine_map, lin_map
    if name == "pbmc3k":
        import scanpy as sc

        d = data_dir / "pbmc3k"
        a = sc.read_10x_mtx(d / "filtered_gene_bc_matrices" / "hg19", var_names="gene_symbols")
        lab = pd.read_csv(d / "pbmc3k_seurat_annotations.csv", index_col=0).iloc[:, 0].reindex(a.obs_names)
        keep = lab.notna().to_numpy()
        return a, np.where(keep, lab.astype(str), ""), SEURAT_FINE, {k: {v} for k, v in SEURAT_LIN.items()}
    if name == "kang2018":
        a = ad.read_h5ad(data_dir / "kang2018" / "kang2018_2donors_ctrl_stim.h5ad")
        a.var_names = a.var["ENSEMBL"].astype(str).to_numpy()
        return a, a.obs["cluster_id"].astype(str).to_numpy(), KANG_FINE, KANG_LIN
    if name == "onek1k":
        a = ad.read_h5ad(data_dir / "onek1k" / "onek1k_40donors_4types.h5ad")
        return a, a.obs["cell_type"].astype(str).to_numpy(), ONEK1K_FINE, {k: {v} for k, v in ONEK1K_LIN.items()}
    if name in ("csle", "csle_authors"):
        a = ad.read_h5ad(data_dir / "csle" / "csle_44donors_B_CD4mem_Treg.h5ad")
        column, table = ("azimuth_l3", CSLE) if name == "csle" else ("cell_type", CSLE_AUTHORS)
        truth = a.obs[column].astype(str).to_numpy()
        fine, lin = {}, {}
        for t in np.unique(truth):
            pre = next(p for p in table if t.startswith(p))
            fine[t], lin[t] = table[pre][0], {table[pre][1]}
        return a, truth, fine, lin
    raise ValueError(f"unknown real set {name!r}; available: {REAL_SETS}")


def real(name: str, dump: str | None = None) -> dict:
    """Annotate one real labelled set and score it against its published labels."""
    import os
    from pathlib import Path

    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    import immunomood as im
    from immunomood._markers import LINEAGE_CALLS

    data_dir = Path(os.environ.get("IMMUNOMOOD_DATA_DIR", "../shared/data"))
    a, truth, fine_map, lin_map = _real_data(name, data_dir)
    im.settings.n_jobs = 2
    # BENCH_REFERENCE=blood: with the opt-in packaged reference (default: markers only, as annotate's default)
    ref = os.environ.get("BENCH_REFERENCE", "none")
    t0 = time.perf_counter()
    im.tl.annotate(a, reference=None if ref.lower() == "none" else ref)
    dt = time.perf_counter() - t0
    lab = truth != ""
    lin = a.obs["cell_lineage"].astype(str).to_numpy()[lab]
    fine = a.obs["cell_type"].astype(str).to_numpy()[lab]
    conf = a.obs["cell_type_confidence"].to_numpy()[lab]
    t = truth[lab]
    assigned = lin != "Unassigned"
    lin_ok = np.array([x in lin_map[y] for x, y in zip(lin, t)])
    fine_ok = np.array([x in fine_map[y] for x, y in zip(fine, t)])
    level = np.isin(fine, LINEAGE_CALLS)
    called = assigned & ~level
    correct = np.where(level, lin_ok, fine_ok)
    out = {
        "set": name,
        "n_cells": int(lab.sum()),
        "seconds": dt,
        "lineage": float(lin_ok[assigned].mean()),
        "fine": float(fine_ok[called].mean()) if called.any() else np.nan,
        "unassigned": float(1 - assigned.mean()),
        "lineage_level": float(level[assigned].mean()),
        "auroc": float(roc_auc_score(correct[assigned], conf[assigned])),
    }
    # expected calibration error: |accuracy - mean confidence| over ten equal-width bins, weighted by their size
    b10 = np.clip((conf[assigned] * 10).astype(int), 0, 9)
    ok_a, c_a = correct[assigned], conf[assigned]
    out["ece"] = float(
        sum(abs(ok_a[b10 == k].mean() - c_a[b10 == k].mean()) * (b10 == k).mean() for k in np.unique(b10))
    )
    out["mean_conf"] = float(c_a.mean())
    out["acc_assigned"] = float(ok_a.mean())
    bins = pd.cut(conf[assigned], BINS, right=False)
    cal = (
        pd.DataFrame({"bin": bins, "ok": correct[assigned]}).groupby("bin", observed=False)["ok"].agg(["size", "mean"])
    )
    out["bins"] = {str(k): (int(r["size"]), float(r["mean"]) if r["size"] else float("nan")) for k, r in cal.iterrows()}
    conf_tab = pd.crosstab(pd.Series(t[assigned], name="truth"), pd.Series(fine[assigned], name="call"))
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            {
                "truth": t,
                "lineage": lin,
                "fine": fine,
                "conf": conf,
                "correct": correct,
                "lin_ok": lin_ok,
                "fine_ok": fine_ok,
            }
        ).to_csv(Path(dump) / f"{name}.csv")
    print(
        f"REAL {name} n={out['n_cells']} lineage={out['lineage']:.3f} fine={out['fine']:.3f} "
        f"unassigned={out['unassigned']:.3f} lineage_level={out['lineage_level']:.3f} auroc={out['auroc']:.3f} "
        f"ece={out['ece']:.3f} (mean confidence {out['mean_conf']:.3f}, accuracy {out['acc_assigned']:.3f}) "
        f"seconds={dt:.1f}"
    )
    print("  accuracy per confidence bin: " + "  ".join(f"{k} n={n} acc={m:.3f}" for k, (n, m) in out["bins"].items()))
    per = pd.DataFrame({"t": t, "ok": np.where(level, lin_ok, fine_ok), "a": assigned}).groupby("t")
    print(
        "  per label (assigned cells correct / n): "
        + "  ".join(f"{k}={g['ok'][g['a']].mean():.2f}/{int(g['a'].sum())}" for k, g in per if g["a"].any())
    )
    if os.environ.get("BENCH_CONFUSION"):
        print(conf_tab.to_string())
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(sys.argv[2], int(sys.argv[3]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "real":
        dump = next((x.split("=", 1)[1] for x in sys.argv[2:] if x.startswith("--dump=")), None)
        for name in [x for x in sys.argv[2:] if not x.startswith("--")] or REAL_SETS:
            real(name, dump)
    else:
        for size in sys.argv[1:] or ["small"]:
            run(size)
