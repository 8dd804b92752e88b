"""Benchmark of ``im.tl.predict_response``: null calibration, planted signals, a simulated trial, and its speed.

1. Null calibration on real donors: the donor view of ``../shared/data/onek1k`` (40 donors, 4 cell types; complement,
   interferon, inflammatory, TNF/NF-kB, IL-6/JAK/STAT3 and kynurenine set activities and the proportions) with a
   random outcome: a balanced binary one (``N_NULL`` cohorts) and a normal score (``N_NULL_CONT`` cohorts). Reported:
   mean and SD of the cross-validated AUC / R^2, the share of permutation p-values below 0.05 and the KS test of
   the p-values against U(0, 1) (p-values of ``N_PERM`` permutations are discrete, multiples of 1 / (N_PERM + 1):
   the KS p is a rough check). Simulated Gaussian donors (40 x 30, no correlation) give a second null.
2. A planted baseline difference in the same real features: responders get ``+effect`` (in SD units) on three
   features; AUC and permutation p at the defaults, over a few seeds.
3. Simulated end to end: ``simulate_cohort(n_visits=2, response_baseline_effect=...)``, the MDD donors' baseline
   cells, ``donor_view`` (per sample) and ``predict_response(baseline={"visit": "baseline"})``.
4. Time of one call at the defaults (200 permutations, 5 x 5-fold) on 40 donors x 50 features (one thread).

Results (2026-12-02, this repository's shared 2-core machine, ``full``; ``ridge`` model, 5 x 5-fold)::

    null, onek1k real donors (40 x 22 features), binary, 24 cohorts, 99 permutations:
        mean AUC 0.501 (SD 0.092, SE 0.019); p < 0.05 in 1/24 (0.042); KS p (uniform) 0.27; mean p 0.45
    null, onek1k, continuous score, 20 cohorts: mean R^2 -0.18 (out-of-fold R^2 is negative under the null);
        p < 0.05 in 1/20 (0.05); KS p 0.48
    null, Gaussian 40 x 30, binary, 20 cohorts: mean AUC 0.482 (SE 0.022); p < 0.05 in 0/20; KS p 0.95
    planted on onek1k (3 features shifted in responders, 200 permutations):
        0.5 SD: AUC 0.78 (p 0.010), 0.64 (p 0.12); 1.0 SD: AUC 0.80, 0.79 (p 0.005, the minimum)
    simulate_cohort(n_visits=2, 80 donors -> 40 MDD patients, 150 cells), baseline donor view (cells):
        response_baseline_effect 0.25: AUC 0.70 (p 0.035); 0.5: 0.92 (p 0.005); 1.0: 1.00 (p 0.005)
        plasma of the same patients: AUC 0.74 (p 0.020), 0.96, 1.00
    time, 40 donors x 50 features, defaults (200 permutations): binary 18.0 s CPU (53 s wall at load 6.4 on
        2 cores), continuous 14.1 s CPU; model="l1" 0.73 s CPU per nested CV (about 150 s at 200 permutations)

Usage::

    IMMUNOMOOD_DATA_DIR=../shared/data python benchmarks/bench_predict.py [quick|full] [--no-timing]
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

import immunomood as im

MODE = sys.argv[1] if len(sys.argv) > 1 else "full"
TIMING = "--no-timing" not in sys.argv
N_NULL = 24 if MODE == "full" else 6
N_NULL_CONT = 20 if MODE == "full" else 4
N_NULL_GAUSS = 20 if MODE == "full" else 3
N_PERM = 99 if MODE == "full" else 19
SETS = (
    "complement",
    "interferon_alpha",
    "interferon_gamma",
    "inflammatory",
    "tnfa_nfkb",
    "il6_jak_stat3",
    "kynurenine",
)


def _quiet(f, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*a, **k)


def real_donor_features() -> pd.DataFrame | None:
    """The onek1k donor view (donors x features measured in >= 90% of donors), or None without the data."""
    root = Path(os.environ.get("IMMUNOMOOD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = root / "onek1k" / "onek1k_40donors_4types.h5ad"
    if not path.exists():
        print(f"(no real data at {path}: real-data parts skipped)")
        return None
    import anndata as ad

    cells = ad.read_h5ad(path)
    sets = {}
    for name in SETS:
        sets.update(im.tl.gene_sets(name))
    dv = _quiet(im.tl.donor_view, cells, sample_key="donor", groupby="cell_type", gene_sets=sets)
    X = pd.DataFrame(np.asarray(dv.X, dtype=float), index=dv.obs_names, columns=dv.var_names)
    X = X.loc[:, X.notna().mean() >= 0.9]  # features measured in >= 90% of donors
    return X


def _adata(X: pd.DataFrame, obs: dict):
    import anndata as ad

    return ad.AnnData(
        X=X.to_numpy(), obs=pd.DataFrame(obs, index=X.index.astype(str)), var=pd.DataFrame(index=X.columns.astype(str))
    )


def null_cohorts(X: pd.DataFrame, label: str, n_binary: int, n_cont: int) -> dict:
    """Random outcomes on fixed donor features: mean statistic, share of p < 0.05, KS test of the p-values."""
    out = {}
    rng = np.random.default_rng(2024)
    aucs, pb = [], []
    t0 = time.time()
    for i in range(n_binary):
        lab = np.array(["non-responder", "responder"])[np.arange(len(X)) % 2]
        rng.shuffle(lab)
        r = _quiet(
            im.tl.predict_response,
            _adata(X, {"responder": lab}),
            outcome="responder",
            n_permutations=N_PERM,
            random_state=i,
        )
        aucs.append(r.metrics["auc"])
        pb.append(r.metrics["pvalue"])
    out["binary"] = {
        "n_cohorts": n_binary,
        "mean_auc": float(np.mean(aucs)),
        "sd_auc": float(np.std(aucs)),
        "se_mean_auc": float(np.std(aucs) / np.sqrt(n_binary)),
        "share_p_below_0.05": float(np.mean(np.asarray(pb) < 0.05)),
        "ks_p_uniform": float(stats.kstest(pb, "uniform").pvalue),
        "mean_p": float(np.mean(pb)),
        "seconds_per_cohort": (time.time() - t0) / max(n_binary, 1),
    }
    r2s, pc = [], []
    for i in range(n_cont):
        score = rng.normal(size=len(X))
        r = _quiet(
            im.tl.predict_response, _adata(X, {"score": score}), outcome="score", n_permutations=N_PERM, random_state=i
        )
        r2s.append(r.metrics["r2"])
        pc.append(r.metrics["pvalue"])
    if n_cont:
        out["continuous"] = {
            "n_cohorts": n_cont,
            "mean_r2": float(np.mean(r2s)),
            "sd_r2": float(np.std(r2s)),
            "share_p_below_0.05": float(np.mean(np.asarray(pc) < 0.05)),
            "ks_p_uniform": float(stats.kstest(pc, "uniform").pvalue),
            "mean_p": float(np.mean(pc)),
        }
    print(f"[null, {label}] {json.dumps(out, indent=1)}", flush=True)
    return out


def planted(X: pd.DataFrame, effects=(0.5, 1.0), n_seeds: int = 2) -> list[dict]:
    """Responders shifted by ``effect`` SD on three real features: AUC, permutation p, calibration."""
    rows = []
    sd = X.std()
    cols = list(X.columns[X.notna().all()][:3])
    for eff in effects:
        for seed in range(n_seeds):
            rng = np.random.default_rng(100 + seed)
            lab = np.array(["non-responder", "responder"])[np.arange(len(X)) % 2]
            rng.shuffle(lab)
            Xp = X.copy()
            for c in cols:
                Xp.loc[lab == "responder", c] += eff * sd[c]
            t0 = time.time()
            r = _quiet(im.tl.predict_response, _adata(Xp, {"responder": lab}), outcome="responder", random_state=seed)
            top = list(r.features.index[:3])
            rows.append(
                {
                    "effect_sd": eff,
                    "seed": seed,
                    "auc": round(r.metrics["auc"], 3),
                    "auc_repeat_spread": [round(float(v), 3) for v in r.metrics["auc_repeat_spread"]],
                    "pvalue": r.metrics["pvalue"],
                    "brier": round(r.metrics["brier"], 3),
                    "calibration_slope": round(r.metrics["calibration_slope"], 2),
                    "planted_in_top3": len(set(top) & set(cols)),
                    "seconds": round(time.time() - t0, 1),
                }
            )
            print(f"[planted] {rows[-1]}", flush=True)
    return rows


def simulated_trial(effect: float = 1.0, n_donors: int = 80, seed: int = 0) -> dict:
    """simulate_cohort with responders -> baseline cells of the patients -> predict_response (and the plasma)."""
    import inspect

    if "response_baseline_effect" not in inspect.signature(im.datasets.simulate_cohort).parameters:
        print("(simulate_cohort has no responders yet: simulated trial skipped)")
        return {}
    t0 = time.time()
    cells, plasma = _quiet(
        im.datasets.simulate_cohort,
        n_donors=n_donors,
        n_cells_per_donor=150,
        n_genes=1500,
        n_visits=2,
        response_baseline_effect=effect,
        random_state=seed,
    )
    patients = cells[(cells.obs["responder"] != "control").to_numpy()].copy()
    patients.obs["responder"] = patients.obs["responder"].cat.remove_unused_categories()
    r = _quiet(
        im.tl.predict_response,
        patients,
        outcome="responder",
        sample_key="sample",
        groupby="cell_type_true",
        baseline={"visit": "baseline"},
        donor_key="donor",
        random_state=seed,
    )
    out = {
        "response_baseline_effect": effect,
        "n_patients": r.metrics["n_donors"],
        "auc": r.metrics["auc"],
        "pvalue": r.metrics["pvalue"],
        "top_features": list(r.features.index[:5]),
        "seconds": round(time.time() - t0, 1),
    }
    # the plasma (IL6 carries the same planted difference), one row per donor
    pl = plasma[(plasma.obs["responder"] != "control").to_numpy()].copy() if "responder" in plasma.obs else None
    if pl is not None:
        pl.obs["responder"] = pl.obs["responder"].astype(str)
        rp = _quiet(im.tl.predict_response, pl, outcome="responder", random_state=seed)
        out.update(
            {
                "plasma_auc": rp.metrics["auc"],
                "plasma_pvalue": rp.metrics["pvalue"],
                "plasma_top": list(rp.features.index[:3]),
            }
        )
    print(f"[simulated trial] {out}", flush=True)
    return out


def timing() -> dict:
    """CPU and wall time of one call at the defaults on 40 donors x 50 features."""
    rng = np.random.default_rng(7)
    X = pd.DataFrame(
        rng.normal(size=(40, 50)), index=[f"D{i}" for i in range(40)], columns=[f"f{j}" for j in range(50)]
    )
    lab = np.array(["NR", "R"])[np.arange(40) % 2]
    out = {}
    # model="l1" (logistic, C by an inner CV) is timed with 20 permutations only (about 5x slower than ridge)
    for kind, obs, kw in (
        ("binary ridge", {"r": lab}, {}),
        ("continuous ridge", {"r": rng.normal(size=40)}, {}),
        ("binary l1, 20 permutations", {"r": lab}, {"model": "l1", "n_permutations": 20}),
    ):
        t0, c0 = time.time(), time.process_time()
        _quiet(im.tl.predict_response, _adata(X, obs), outcome="r", **kw)
        out[kind] = {"wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
    # cpu_s: the time of one core; wall_s is larger when the machine is shared (load above its cores)
    print(
        f"[timing, 40 donors x 50 features, defaults (200 permutations, 5 x 5-fold)] {out}, load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return out


def main() -> None:
    """Run every part and print the results as JSON."""
    results = {"mode": MODE, "n_permutations_null": N_PERM}
    if TIMING:
        results["timing"] = timing()
    X = real_donor_features()
    if X is not None:
        print(f"onek1k donor view: {X.shape[0]} donors x {X.shape[1]} features", flush=True)
        results["null_real"] = null_cohorts(X, "onek1k", N_NULL, N_NULL_CONT)
        results["planted_real"] = planted(X)
    rng = np.random.default_rng(1)
    Xs = pd.DataFrame(
        rng.normal(size=(40, 30)), index=[f"S{i}" for i in range(40)], columns=[f"g{j}" for j in range(30)]
    )
    results["null_gaussian"] = null_cohorts(Xs, "gaussian 40 x 30", N_NULL_GAUSS, 0)
    results["simulated_trial"] = [simulated_trial(effect) for effect in (0.25, 0.5, 1.0)]
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
