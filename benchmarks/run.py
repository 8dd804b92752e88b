#!/usr/bin/env python
"""Benchmark suite: our path next to the plain scanpy / scvi-tools path for the same work, in one run.

    python benchmarks/run.py --suite quick [--out results.json]   # minutes: pbmc3k-sized and 100k cells
    python benchmarks/run.py --suite full  [--out results.json]   # 1M cells (out-of-core included)

Each benchmark module (``benchmarks/bench_*.py``) exposes ``run(size) -> list[dict]``; every dict becomes one line

    RESULT <name> ours_s=<x> anchor_s=<y> ratio=<x/y> peak_gb=<z>

Timings are ratios measured side by side in the same run; absolute seconds are context only. A module that
fails is reported as ``FAILED <module>: <error>`` and makes the exit code non-zero; a module whose file is absent
(e.g. the GPU benchmark) is reported as ``SKIPPED``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# module -> size argument per suite; each size is one of the module's own SIZES keys (checked before running)
SUITES = {
    "quick": {
        "bench_qc": "100k",  # SIZES 10k / 100k / 1m
        "bench_pathways": "100k",  # tiny / 100k / 1m
        "bench_integrate": "small",  # tiny / small = 3k (pbmc3k-sized, 10 donors x 300) / medium 20k
        "bench_annotate": "small",  # small = 3k (pbmc3k-sized) / medium 20k / large 100k
        "bench_simulate": "medium",  # tiny 2k / small 10k / medium 100k / large 1m
        "bench_ooc": "100k",  # 20k / 100k / 1m cells x 20k genes on disk
    },
    "full": {
        "bench_qc": "1m",
        "bench_pathways": "1m",
        "bench_annotate": "large",
        "bench_simulate": "large",
        "bench_integrate": "medium",  # CPU; the 1M-cell scVI run is the GPU benchmark below
        "bench_ooc": "1m",
        "bench_scvi_gpu": "1m",
    },
}


def _load(mod_name: str, size: str):
    """The benchmark module, or None when its file is absent; raises when ``size`` is not one it accepts."""
    if not (HERE / f"{mod_name}.py").is_file():
        return None
    mod = importlib.import_module(mod_name)
    sizes = getattr(mod, "SIZES", None)
    if sizes is not None and size not in sizes:
        raise ValueError(f"{mod_name} accepts sizes {sorted(sizes)}, the suite asks for {size!r}: fix SUITES in run.py")
    return mod


def format_result(r: dict) -> str:
    ours, anchor = r.get("ours_s"), r.get("anchor_s")
    ratio = r.get("ratio")
    if ratio is None and ours is not None and anchor:
        ratio = ours / anchor

    def f(v, fmt="{:.3f}"):
        return "NA" if v is None else fmt.format(v)

    extra = " ".join(f"{k}={v}" for k, v in r.items() if k not in {"name", "ours_s", "anchor_s", "ratio", "peak_gb"})
    line = (
        f"RESULT {r['name']} ours_s={f(ours)} anchor_s={f(anchor)} ratio={f(ratio)} "
        f"peak_gb={f(r.get('peak_gb'), '{:.2f}')}"
    )
    return line + (f"  # {extra}" if extra else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted(SUITES), default="quick")
    ap.add_argument("--only", nargs="*", help="run only these modules (e.g. bench_qc)")
    ap.add_argument("--out", help="write all results as JSON here")
    args = ap.parse_args(argv)
    results, failed, skipped = [], [], []
    t0 = time.perf_counter()
    for mod_name, size in SUITES[args.suite].items():
        if args.only and mod_name not in args.only:
            continue
        print(f"== {mod_name} ({size})", flush=True)
        try:
            mod = _load(mod_name, size)
            if mod is None:
                skipped.append(f"{mod_name}: benchmarks/{mod_name}.py not present")
                print(f"SKIPPED {skipped[-1]}", flush=True)
                continue
            rows = mod.run(size)
        except Exception as e:  # report and go on: one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(f"{mod_name}: {type(e).__name__}: {e}")
            continue
        for r in rows:
            r.setdefault("module", mod_name)
            results.append(r)
            print(format_result(r), flush=True)
    print(f"\n== summary ({args.suite} suite, {time.perf_counter() - t0:.0f} s)")
    for r in results:
        print(format_result(r))
    for s in skipped:
        print(f"SKIPPED {s}")
    for f in failed:
        print(f"FAILED {f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
