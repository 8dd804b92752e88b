"""Clinical designs of ``im.tl.differential_activity`` (``design=``, ``contrast=``, ``test=``, ``random_effect=``)
on real donors and on the cohort simulator (issue 14).

Parts (``--parts``, default all):

``onek1k``
    Null calibration on 40 real healthy donors (OneK1K subset, 4 cell types, 1,000 genes). Per draw, donor-level
    random values: a continuous ``score`` ~ N(0, 1) (``design="~ score"``, ``test="score"``), a HAM-D-like
    integer score (a mixture of remitted 0-7 and depressed 14-30 donors, permuted over donors) with covariates
    (``design="~ hamd + age + sex_code"``, ``test="hamd"``) and random three-level groups A / B / C (13 / 13 / 14
    donors, ``design="~ group"``, all three pairwise contrasts). Gene sets: the complement collection, interferon
    alpha and gamma, inflammatory. For ``fry_pooled`` (the default) and ``score``: the share of p < 0.05 per test
    kind and contrast (target [0.01, 0.08]), with a 95% interval that resamples whole draws (the tests of one draw
    are correlated); for ``score``, the share of 95% CIs that contain 0.
``csle``
    Childhood lupus (Nehar-Belaid 2020; 44 donors, 33 cSLE / 11 healthy; B, CD4 memory, Treg compartments):
    interferon programmes against condition with covariates (``~ condition + Age + Gender + Batch``) and against
    SLEDAI within patients (``~ SLEDAI + Age + Gender + Batch``, ``test="SLEDAI"``; SLEDAI "ND" patients left
    out), every method: effect, CI, p.
``combat``
    COMBAT (6 donors: 2 healthy, 2 mild, 2 critical COVID-19): cell lineages by ``im.tl.annotate``, then the three
    pairwise contrasts of ``~ condition`` through ``differential_activity`` (and ``composition`` /
    ``differential_expression`` when they take ``design=``).
``sim``
    Power on ``im.datasets.simulate_cohort`` over the number of patients (default 8, 16, 24, 32): a planted
    continuous association (``severity_effect``: log2 change of the planted complement genes of classical
    monocytes per 10 severity points, patients only, ``design="~ severity"``) and a time x responder interaction
    (``n_visits=2``, ``treatment_effect``, patients only, ``sample_key="sample"``, ``random_effect="donor"``,
    ``design="~ visit * responder"``, ``test="visit:responder"``): share of cohorts with p < 0.05 for the union of
    the complement arms in classical monocytes (``--cohorts`` cohorts per point), and the same with the effect set
    to 0 (``null=True``, half as many cohorts: calibration), plus the share of p < 0.05 in the three other cell
    types tested (CD4 naive / memory T, naive B: no planted effect). Defaults: 0.3 log2 per 10 points, -0.3 log2
    interaction, 120 cells per sample, 2,000 genes, patients only (the simulator makes half controls, which are
    dropped).

Run ``python benchmarks/bench_designs.py [--quick] [--parts onek1k,csle,combat,sim] [--draws N] [--cohorts M]
[--sizes 8,16,24,32] [--null-cohorts K] [--seed S] [--out DIR]`` with ``IMMUNOMOOD_DATA_DIR`` pointing at the
shared data (real parts are skipped when it is absent). Prints tables and ``RESULT`` lines; ``--out`` also writes
the raw tables as CSV. Default run: about 6 min for the real parts and 15 min for ``sim`` on a shared 2-core
machine (``--quick``: about 4 min). Results of the last run: ``docs/validation_designs.md``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import immunomood as im

ONEK1K = "onek1k/onek1k_40donors_4types.h5ad"
CSLE = "csle/csle_44donors_B_CD4mem_Treg.h5ad"
COMBAT = "combat/combat_covid_6donors.h5ad"
TARGET = (0.01, 0.08)
SIM_GROUP = "cell_type_true"
SIM_TARGET = "Classical monocyte"
SIM_TYPES = ("Classical monocyte", "CD4 naive T", "CD4 memory T", "B naive")


def data_dir() -> Path | None:
    d = os.environ.get("IMMUNOMOOD_DATA_DIR")
    cands = [Path(d)] if d else []
    cands.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return next((c for c in cands if c.is_dir()), None)


def null_sets() -> dict[str, list[str]]:
    """The complement collection, interferon alpha / gamma and inflammatory (packaged gene sets)."""
    sets = {}
    for name in ("complement", "interferon_alpha", "interferon_gamma", "inflammatory"):
        sets.update(im.tl.gene_sets(name))
    return sets


def draw_interval(df: pd.DataFrame, key: str, rng: np.random.Generator, n_boot: int = 2000) -> tuple[float, float]:
    """95% interval of the share of ``key`` over tests, resampling whole draws (cluster bootstrap)."""
    by = df.groupby("draw")[key].agg(["sum", "count"])
    s, c = by["sum"].to_numpy(float), by["count"].to_numpy(float)
    idx = rng.integers(0, len(s), size=(n_boot, len(s)))
    boot = s[idx].sum(axis=1) / np.maximum(c[idx].sum(axis=1), 1)
    return float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def _call(adata, **kw) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return im.tl.differential_activity(adata, **kw)


# ----------------------------------------------------------------------------------------------
# onek1k: null calibration on real donors
# ----------------------------------------------------------------------------------------------
def run_onek1k(root: Path, draws: int, seed: int) -> pd.DataFrame:
    import anndata as ad

    a = ad.read_h5ad(root / ONEK1K)
    a.obs["age"] = a.obs["age"].astype(float)
    donors = list(a.obs["donor"].cat.categories)
    n = len(donors)
    sets = null_sets()
    rng = np.random.default_rng(seed)
    rows = []
    t0 = time.time()
    for d in range(draws):
        score = rng.normal(size=n)
        remitted = rng.random(n) < 0.4
        hamd = np.where(remitted, rng.integers(0, 8, n), rng.integers(14, 31, n)).astype(float)
        groups = rng.permutation(np.repeat(["A", "B", "C"], [n // 3, n // 3, n - 2 * (n // 3)]))
        a.obs["score"] = a.obs["donor"].map(dict(zip(donors, score))).astype(float)
        a.obs["hamd"] = a.obs["donor"].map(dict(zip(donors, hamd))).astype(float)
        a.obs["group"] = pd.Categorical(
            a.obs["donor"].map(dict(zip(donors, groups))).astype(str), categories=["A", "B", "C"]
        )
        calls = {
            "score ~ N(0,1)": {"design": "~ score", "test": "score"},
            "hamd + age + sex": {"design": "~ hamd + age + sex_code", "test": "hamd"},
            "3 groups": {"design": "~ group"},
        }
        for method in ("fry_pooled", "score"):
            for kind, kw in calls.items():
                r = _call(a, sample_key="donor", groupby="cell_type", gene_sets=sets, method=method, **kw)
                r = r[r["pvalue"].notna()]
                rows += [
                    {
                        "draw": d,
                        "method": method,
                        "kind": kind,
                        "contrast": c,
                        "group": g,
                        "gene_set": s,
                        "p": p,
                        "lo": lo,
                        "hi": hi,
                    }
                    for c, g, s, p, lo, hi in zip(
                        r["contrast"], r["group"], r["gene_set"], r["pvalue"], r["ci_low"], r["ci_high"]
                    )
                ]
        if d == 0 or (d + 1) % 10 == 0:
            print(f"  onek1k draw {d + 1}/{draws} ({time.time() - t0:.0f} s)", flush=True)
    return pd.DataFrame(rows)


def report_onek1k(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = df.assign(hit=(df["p"] < 0.05).astype(float), covers=((df["lo"] <= 0) & (df["hi"] >= 0)).astype(float))
    out = []
    for (method, kind, contrast), g in df.groupby(["method", "kind", "contrast"], sort=False):
        lo, hi = draw_interval(g, "hit", rng)
        row = {
            "method": method,
            "kind": kind,
            "contrast": contrast,
            "draws": g["draw"].nunique(),
            "tests": len(g),
            "fpr": g["hit"].mean(),
            "fpr_lo": lo,
            "fpr_hi": hi,
            "in_target": TARGET[0] <= g["hit"].mean() <= TARGET[1],
        }
        if method == "score":
            row["ci_coverage"] = g["covers"].mean()
        out.append(row)
    for method, g in df.groupby("method"):
        lo, hi = draw_interval(g, "hit", rng)
        out.append(
            {
                "method": method,
                "kind": "all",
                "contrast": "all",
                "draws": g["draw"].nunique(),
                "tests": len(g),
                "fpr": g["hit"].mean(),
                "fpr_lo": lo,
                "fpr_hi": hi,
                "in_target": TARGET[0] <= g["hit"].mean() <= TARGET[1],
                "ci_coverage": g["covers"].mean() if method == "score" else np.nan,
            }
        )
    tab = pd.DataFrame(out)
    per_set = df.groupby(["method", "gene_set"])["hit"].agg(["mean", "size"]).unstack(0)
    print(
        "\nonek1k null (40 real donors): share of p < 0.05 per test kind / contrast "
        f"(target {TARGET}); 95% interval resamples whole draws"
    )
    print(tab.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print("\nper gene set (share of p < 0.05, tests):")
    print(per_set.to_string(float_format=lambda x: f"{x:.3f}"))
    for r in tab.itertuples():
        print(
            f"RESULT onek1k_fpr method={r.method} kind={r.kind!r} contrast={r.contrast!r} fpr={r.fpr:.4f} "
            f"[{r.fpr_lo:.4f}, {r.fpr_hi:.4f}] tests={r.tests}"
            + (f" ci_coverage={r.ci_coverage:.4f}" if r.method == "score" else "")
        )
    return tab


# ----------------------------------------------------------------------------------------------
# csle: interferon in lupus
# ----------------------------------------------------------------------------------------------
def load_csle(root: Path):
    import anndata as ad

    a = ad.read_h5ad(root / CSLE)
    a.obs["Age"] = a.obs["Age"].astype(float)
    a.obs["SLEDAI"] = pd.to_numeric(a.obs["SLEDAI"].astype(str), errors="coerce")
    return a


def run_csle(root: Path, min_cells: int = 3) -> pd.DataFrame:
    a = load_csle(root)
    sets = {**im.tl.gene_sets("interferon_alpha"), **im.tl.gene_sets("interferon_gamma")}
    pts = a[(a.obs["condition"] == "cSLE").to_numpy() & a.obs["SLEDAI"].notna().to_numpy()].copy()
    tab = a.obs.groupby("donor", observed=True)[["condition", "Gender", "Batch"]].first()
    print("\ncsle donors per condition x Batch:\n", pd.crosstab(tab["condition"], tab["Batch"]).to_string())
    print("csle donors per condition x Gender:\n", pd.crosstab(tab["condition"], tab["Gender"]).to_string())
    specs = [
        ("condition", a, {"design": "~ condition + Age + Gender + Batch", "contrast": ("condition", "cSLE", "cHD")}),
        ("SLEDAI (patients)", pts, {"design": "~ SLEDAI + Age + Gender + Batch", "test": "SLEDAI"}),
    ]
    rows = []
    for label, data, kw in specs:
        for method in ("fry_pooled", "fry", "score"):
            r = _call(
                data,
                sample_key="donor",
                groupby="compartment",
                gene_sets=sets,
                method=method,
                min_cells=min_cells,
                **kw,
            )
            r = r.assign(test=label, method_key=method)
            rows.append(r)
    res = pd.concat(rows, ignore_index=True)
    show = res[res["group"].isin(["B", "CD4mem"])]
    cols = [
        "test",
        "group",
        "gene_set",
        "method_key",
        "n_samples",
        "effect",
        "ci_low",
        "ci_high",
        "pvalue",
        "padj",
        "reason",
    ]
    print(
        f"\ncsle (min_cells={min_cells}): interferon in B and CD4 memory; effect = log2 fold change of the set "
        "(per SLEDAI point for the slope)"
    )
    print(show[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    for r in show.itertuples():
        print(
            f"RESULT csle test={r.test!r} group={r.group} set={r.gene_set} method={r.method_key} "
            f"effect={r.effect:.4f} ci=[{r.ci_low:.4f}, {r.ci_high:.4f}] p={r.pvalue:.3g} padj={r.padj:.3g}"
        )
    return res


# ----------------------------------------------------------------------------------------------
# combat: three levels end to end
# ----------------------------------------------------------------------------------------------
def run_combat(root: Path) -> dict:
    import anndata as ad

    a = ad.read_h5ad(root / COMBAT)
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im.tl.annotate(a, random_state=0)
    print(f"\ncombat: annotate {time.time() - t0:.0f} s; cells per donor x lineage:")
    print(a.obs.groupby(["donor", "cell_lineage"], observed=True).size().unstack(fill_value=0).to_string())
    a.obs["condition"] = pd.Categorical(
        a.obs["condition"].astype(str), categories=["Healthy", "Covid_Mild", "Covid_Critical"]
    )
    out = {}
    sets = null_sets()
    for method in ("fry_pooled", "score"):
        r = _call(a, design="~ condition", sample_key="donor", groupby="cell_lineage", gene_sets=sets, method=method)
        out[method] = r
        print(f"\ncombat differential_activity method={method}: rows per contrast (tested / all), smallest p")
        summ = r.groupby("contrast").agg(
            rows=("pvalue", "size"),
            tested=("pvalue", "count"),
            min_p=("pvalue", "min"),
            n_padj05=("padj", lambda x: int((x < 0.05).sum())),
        )
        print(summ.to_string())
        ifn = r[r["gene_set"].isin(["interferon_alpha", "interferon_gamma"]) & r["pvalue"].notna()]
        print(
            ifn[["contrast", "group", "gene_set", "effect", "ci_low", "ci_high", "pvalue", "padj"]].to_string(
                index=False, float_format=lambda x: f"{x:.3g}"
            )
        )
        print(
            f"RESULT combat_activity method={method} contrasts={r['contrast'].nunique()} "
            f"tested={int(r['pvalue'].notna().sum())} rows={len(r)}"
        )
    de_genes = ["ISG15", "IFI27", "IFI44L", "MX1", "S100A8", "HLA-DRA"]
    for name, fn, kw in [
        ("composition", im.tl.composition, {"groupby": "cell_lineage"}),
        (
            "differential_expression",
            im.tl.differential_expression,
            {"groupby": "cell_lineage", "genes": de_genes, "n_anchor_genes": 2000},
        ),
    ]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = fn(a, design="~ condition", sample_key="donor", **kw)
        except TypeError as err:
            print(f"combat {name}: design= not available ({err})")
            continue
        except ValueError as err:
            print(f"combat {name}: error {err}")
            out[name] = str(err)
            continue
        out[name] = r
        key = "contrast" if "contrast" in r.columns else None
        print(
            f"\ncombat {name} with design='~ condition': {len(r)} rows"
            + (f", contrasts {list(pd.unique(r[key]))}" if key else " (no contrast column)")
        )
        print(r.head(12).to_string(float_format=lambda x: f"{x:.3g}"))
        print(f"RESULT combat_{name} rows={len(r)} contrasts={r[key].nunique() if key else 'n/a'}")
    return out


# ----------------------------------------------------------------------------------------------
# simulated power curves
# ----------------------------------------------------------------------------------------------
def _complement_all() -> dict[str, list[str]]:
    arms = im.tl.gene_sets("complement")
    return {"complement_all": sorted({g for v in arms.values() for g in v})}


def sim_continuous(n_patients: int, effect: float, seed: int, n_cells: int) -> pd.Series:
    a, _ = im.datasets.simulate_cohort(
        2 * n_patients,
        n_cells,
        complement_effect=1.0,
        composition_shift=1.0,
        severity_effect=effect or 1.0,
        null=not effect,
        n_genes=2000,
        random_state=seed,
    )
    a = a[(a.obs["condition"] == "MDD").to_numpy() & a.obs[SIM_GROUP].isin(SIM_TYPES).to_numpy()].copy()
    r = _call(
        a,
        design="~ severity",
        test="severity",
        sample_key="donor",
        groupby=SIM_GROUP,
        gene_sets=_complement_all(),
        min_cells=10,
    )
    return r.set_index("group")["pvalue"]  # one set: p per cell type (the effect is planted in SIM_TARGET only)


def sim_interaction(n_patients: int, effect: float, seed: int, n_cells: int) -> pd.Series:
    a, _ = im.datasets.simulate_cohort(
        2 * n_patients,
        n_cells,
        complement_effect=1.0,
        composition_shift=1.0,
        n_visits=2,
        treatment_effect=effect or -1.0,
        null=not effect,
        n_genes=2000,
        random_state=seed,
    )
    a = a[(a.obs["condition"] == "MDD").to_numpy() & a.obs[SIM_GROUP].isin(SIM_TYPES).to_numpy()].copy()
    a.obs["responder"] = a.obs["responder"].cat.remove_unused_categories()
    r = _call(
        a,
        design="~ visit * responder",
        test="visit:responder",
        sample_key="sample",
        random_effect="donor",
        groupby=SIM_GROUP,
        gene_sets=_complement_all(),
        min_cells=10,
    )
    return r.set_index("group")["pvalue"]  # one set: p per cell type (the effect is planted in SIM_TARGET only)


def run_sim(
    sizes,
    cohorts: int,
    seed: int,
    n_cells: int,
    severity_effect: float,
    treatment_effect: float,
    null_cohorts: int | None = None,
):
    rows = []
    t0 = time.time()
    for kind, fn, eff in [
        ("severity slope", sim_continuous, severity_effect),
        ("visit x responder", sim_interaction, treatment_effect),
    ]:
        for n in sizes:
            for e in (eff, 0.0):
                k = cohorts if e else (max(cohorts // 2, 1) if null_cohorts is None else null_cohorts)
                if k == 0:
                    continue
                ps = pd.DataFrame([fn(n, e, seed + 1000 * n + i, n_cells) for i in range(k)])
                target = ps[SIM_TARGET].to_numpy(float) if SIM_TARGET in ps else np.full(k, np.nan)
                other = ps.drop(columns=[SIM_TARGET], errors="ignore").to_numpy(float).ravel()
                other = other[np.isfinite(other)]
                rows.append(
                    {
                        "kind": kind,
                        "patients": n,
                        "effect": e,
                        "cohorts": int(np.isfinite(target).sum()),
                        "share_p05": float(np.nanmean(target < 0.05)),
                        "other_types_p05": float(np.mean(other < 0.05)) if other.size else np.nan,
                        "other_tests": int(other.size),
                    }
                )
                print(
                    f"  sim {kind} n={n} effect={e}: {rows[-1]['share_p05']:.2f} (other cell types "
                    f"{rows[-1]['other_types_p05']:.3f}; {time.time() - t0:.0f} s)",
                    flush=True,
                )
    tab = pd.DataFrame(rows)
    print(f"\nsimulated power (share of cohorts with p < 0.05, complement_all in {SIM_TARGET}); effect 0 = calibration")
    print(
        tab.pivot_table(index=["kind", "effect"], columns="patients", values="share_p05").to_string(
            float_format=lambda x: f"{x:.2f}"
        )
    )
    print("\nfalse positives in the other cell types (no planted effect there), share of p < 0.05:")
    print(
        tab.pivot_table(index=["kind", "effect"], columns="patients", values="other_types_p05").to_string(
            float_format=lambda x: f"{x:.3f}"
        )
    )
    for kind, g in tab.groupby("kind"):
        null = g[g["effect"] == 0]
        hits = (null["share_p05"] * null["cohorts"]).sum() + (g["other_types_p05"] * g["other_tests"]).sum()
        n = null["cohorts"].sum() + g["other_tests"].sum()
        print(
            f"RESULT sim_null kind={kind!r} share_p05={hits / max(n, 1):.4f} tests={int(n)} (null cohorts, all "
            "cell types, and the other cell types of the power cohorts)"
        )
    for r in tab.itertuples():
        print(
            f"RESULT sim kind={r.kind!r} patients={r.patients} effect={r.effect} share_p05={r.share_p05:.3f} "
            f"cohorts={r.cohorts} other_types_p05={r.other_types_p05:.3f}"
        )
    return tab


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few draws / cohorts (a smoke run of a few minutes)")
    p.add_argument("--parts", default="onek1k,csle,combat,sim")
    p.add_argument("--draws", type=int, default=None, help="onek1k null draws (default 50, quick 8)")
    p.add_argument(
        "--cohorts",
        type=int,
        default=None,
        help="simulated cohorts per point with an effect (default 20, quick 4); half as many null ones",
    )
    p.add_argument("--sizes", default=None, help="patients per simulated cohort (default 8,16,24,32; quick 8,16)")
    p.add_argument(
        "--null-cohorts",
        type=int,
        default=None,
        help="simulated null cohorts per point (default half of --cohorts; --cohorts 0 --null-cohorts N: "
        "calibration only)",
    )
    p.add_argument("--cells", type=int, default=120, help="median cells per simulated sample")
    p.add_argument("--severity-effect", type=float, default=0.3, help="log2 per 10 severity points")
    p.add_argument("--treatment-effect", type=float, default=-0.3, help="log2 time x responder interaction")
    p.add_argument("--seed", type=int, default=20261202)
    p.add_argument("--out", default=None, help="folder for the raw tables (onek1k p-values, csle rows, sim)")
    args = p.parse_args(argv)
    draws = args.draws or (8 if args.quick else 50)
    cohorts = args.cohorts if args.cohorts is not None else (4 if args.quick else 20)
    sizes = [int(s) for s in (args.sizes or ("8,16" if args.quick else "8,16,24,32")).split(",")]
    parts = args.parts.split(",")
    root = data_dir()
    t0 = time.time()
    if root is None and any(x in parts for x in ("onek1k", "csle", "combat")):
        print("real data not found (set IMMUNOMOOD_DATA_DIR): real parts skipped")
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if root is not None and "onek1k" in parts:
        raw = run_onek1k(root, draws, args.seed)
        tab = report_onek1k(raw, args.seed)
        if out is not None:
            raw.to_csv(out / "onek1k_null_pvalues.csv", index=False)
            tab.to_csv(out / "onek1k_null_fpr.csv", index=False)
    if root is not None and "csle" in parts:
        res = run_csle(root)
        if out is not None:
            res.to_csv(out / "csle_interferon.csv", index=False)
    if root is not None and "combat" in parts:
        run_combat(root)
    if "sim" in parts:
        tab = run_sim(
            sizes, cohorts, args.seed, args.cells, args.severity_effect, args.treatment_effect, args.null_cohorts
        )
        if out is not None:
            tab.to_csv(out / "sim_power.csv", index=False)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
