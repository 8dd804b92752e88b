"""Benchmark of ``im.datasets.simulate_cohort``: time and peak memory at a given number of cells.

Anchor: the plain approach, drawing the full dense cells x genes negative-binomial matrix with numpy
(chunk by chunk, each chunk converted to CSR), with the same reference means and dispersions. Its cost is
strictly linear in cells, so it is measured on at most ``ANCHOR_MAX_CELLS`` cells and scaled linearly
(reported as ``anchor_cells``).

Each measurement runs in a fresh subprocess so that ``peak_gb`` is that process's own peak resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, including the interpreter and imports); the
Python-level peak of allocations (``tracemalloc``, numpy included) is reported as ``traced_peak_gb``.

Usage::

    python benchmarks/bench_simulate.py [small|medium|large]   # 10k, 100k, 1M cells
"""

from __future__ import annotations

import json
import subprocess
import sys

SIZES = {"tiny": 2_000, "small": 10_000, "medium": 100_000, "large": 1_000_000}
N_DONORS = 16
ANCHOR_MAX_CELLS = 5_000

_CHILD = r"""
import json, resource, sys, time, tracemalloc
import numpy as np
what, n_cells, traced = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
import immunomood as im
from immunomood.datasets import _simulate as S
ref = S._load_reference()
if traced:
    tracemalloc.start()
t0 = time.perf_counter(); c0 = time.process_time()
if what == "ours":
    adata, plasma = im.datasets.simulate_cohort(16, n_cells // 16, 2, random_state=0)
    nnz, shape = int(adata.X.nnz), list(adata.shape)
else:
    from scipy import sparse
    rng = np.random.default_rng(0)
    comp = ref["composition"]; prof = ref["profiles"]; r = 1.0 / ref["dispersion"]
    types = rng.choice(len(comp), size=n_cells, p=comp)
    lib = np.exp(ref["lib_logmean"][types] + ref["lib_logsd"][types] * rng.standard_normal(n_cells))
    parts, step = [], 500
    for s in range(0, n_cells, step):
        mu = lib[s:s + step, None] * prof[types[s:s + step]]
        x = rng.negative_binomial(r[None, :], r[None, :] / (r[None, :] + mu)).astype(np.float32)
        parts.append(sparse.csr_matrix(x))
    X = sparse.vstack(parts, format="csr")
    nnz, shape = int(X.nnz), list(X.shape)
dt = time.perf_counter() - t0; cpu = time.process_time() - c0
traced_peak = tracemalloc.get_traced_memory()[1] if traced else 0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
print(json.dumps({"time_s": dt, "cpu_s": cpu, "peak_gb": peak / 1e9, "traced_peak_gb": traced_peak / 1e9, "nnz": nnz, "shape": shape}))
"""


def _measure(what: str, n_cells: int, traced: bool = False) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, what, str(n_cells), "1" if traced else "0"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(size: str = "small") -> list[dict]:
    """Time ``simulate_cohort`` (16 donors, ``SIZES[size]`` cells) against the dense numpy anchor."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}.")
    n = SIZES[size]
    ours = _measure("ours", n)
    traced = _measure("ours", min(n, 100_000), traced=True)
    n_anchor = min(n, ANCHOR_MAX_CELLS)
    anchor = _measure("anchor", n_anchor)
    anchor_s = anchor["time_s"] * n / n_anchor
    res = {
        "name": f"simulate_cohort_{size}",
        "n_cells": n,
        "ours_s": ours["time_s"],
        "ours_cpu_s": ours["cpu_s"],
        "anchor_cpu_s": anchor["cpu_s"] * n / n_anchor,
        "anchor_s": anchor_s,
        "anchor_cells": n_anchor,
        "ratio": ours["time_s"] / anchor_s,
        "peak_gb": ours["peak_gb"],
        "traced_peak_gb": traced["traced_peak_gb"],
        "traced_cells": min(n, 100_000),
        "nnz": ours["nnz"],
        "shape": ours["shape"],
    }
    print(
        f"RESULT {res['name']} ours_s={res['ours_s']:.2f} anchor_s={anchor_s:.2f} ratio={res['ratio']:.3f} "
        f"peak_gb={res['peak_gb']:.2f}"
    )
    print(
        f"  cpu: ours={res['ours_cpu_s']:.2f}s anchor={res['anchor_cpu_s']:.2f}s (wall times depend on machine load)\n"
        f"  n_cells={n} nnz={res['nnz']} traced_peak_gb={res['traced_peak_gb']:.2f} (at {res['traced_cells']} cells) "
        f"anchor measured on {n_anchor} cells, scaled linearly"
    )
    return [res]


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "small")
