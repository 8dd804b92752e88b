"""Acceptance numbers of the donor-level tests on the cohort simulator (im.datasets.simulate_cohort).

1. Calibration on null cohorts (null=True): share of p < 0.05 for ours, for a per-cell Mann-Whitney test on
   score_pathways scores (the common, wrong practice) and for a t-test on donor-mean per-cell scores.
2. Power, 8 vs 8 donors: complement_effect=1.5 (10 seeds): share of seeds where each complement arm with expressed
   (planted) genes in "Classical monocyte" has padj < 0.05, and the share of other cell-type tests flagged;
   complement_effect=1.1: share of seeds with p < 0.05, ours vs the donor-mean t-test.
3. Composition: planted monocyte increase / T and B decrease, and null calibration.
4. Timing: differential_activity against scanpy's pseudobulk aggregation (sc.get.aggregate) of the same cells.

Run ``python benchmarks/bench_differential.py [quick|full]``; prints tables and ``RESULT`` lines.
"""

from __future__ import annotations

import resource
import sys
import time
import warnings

import numpy as np
import pandas as pd
from scipy import stats

GROUP = "cell_type_true"
TARGET = "Classical monocyte"
SETS_NULL = ("complement", "interferon_alpha", "inflammatory", "tnfa_nfkb", "kynurenine", "il6_jak_stat3")


def _sets(names):
    import immunomood as im

    out = {}
    for n in names:
        out.update(im.tl.gene_sets(n))
    return out


def baselines(adata, sets, *, min_cells=10):
    """Per-cell Mann-Whitney and donor-mean t-test on score_pathways scores, per group x set."""
    import immunomood as im

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = im.tl.score_pathways(adata, sets, inplace=False)
    obs = adata.obs
    ref, case = list(obs["condition"].cat.categories)[:2]
    rows = []
    for g in obs[GROUP].unique():
        m = (obs[GROUP] == g).to_numpy()
        ncell = obs.loc[m].groupby("donor", observed=True).size()
        ok_donors = ncell.index[ncell >= min_cells]
        mm = m & obs["donor"].isin(ok_donors).to_numpy()
        cond = obs.loc[mm, "condition"].to_numpy()
        dcond = obs.loc[mm].groupby("donor", observed=True)["condition"].first()
        if (dcond == ref).sum() < 2 or (dcond == case).sum() < 2:
            continue
        for k in sets:
            v = sc.loc[mm, k].to_numpy()
            if not np.isfinite(v).all():
                continue
            p_mwu = stats.mannwhitneyu(v[cond == case], v[cond == ref]).pvalue
            dm = pd.Series(v).groupby(obs.loc[mm, "donor"].to_numpy()).mean()
            dc = dcond.reindex(dm.index)
            p_t = stats.ttest_ind(dm[dc == case], dm[dc == ref]).pvalue
            rows.append(dict(group=str(g), gene_set=k, p_mwu=p_mwu, p_donor_t=p_t))
    return pd.DataFrame(rows)


def calibration(seeds, log=print):
    import immunomood as im

    sets = _sets(SETS_NULL)
    ours, mwu, dmt = [], [], []
    comp = []
    for s in seeds:
        adata, _ = im.datasets.simulate_cohort(n_donors=16, null=True, random_state=s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = im.tl.differential_activity(adata, condition_key="condition", sample_key="donor", groupby=GROUP,
                                            gene_sets=sets, covariates=["batch"])
        ours += list(r["pvalue"].dropna())
        b = baselines(adata, sets)
        mwu += list(b["p_mwu"])
        dmt += list(b["p_donor_t"].dropna())
        c = im.tl.composition(adata, sample_key="donor", condition_key="condition", groupby=GROUP)
        comp += list(c["pvalue"].dropna())
        log(f"  null seed {s}: ours {len(ours)} tests so far, share<0.05 {np.mean(np.array(ours) < 0.05):.3f}")
    f = lambda p: (len(p), float(np.mean(np.asarray(p) < 0.05)))  # noqa: E731
    return {"ours": f(ours), "per_cell_mwu": f(mwu), "donor_mean_t": f(dmt), "composition": f(comp)}


def power(effect, seeds, log=print):
    import immunomood as im

    sets = im.tl.gene_sets("complement")
    rows = []
    for s in seeds:
        adata, _ = im.datasets.simulate_cohort(n_donors=16, complement_effect=effect, random_state=s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = im.tl.differential_activity(adata, condition_key="condition", sample_key="donor", groupby=GROUP,
                                            gene_sets=sets, covariates=["batch"])
        b = baselines(adata, sets).set_index(["group", "gene_set"])
        for _, x in r.iterrows():
            key = (x["group"], x["gene_set"])
            rows.append(dict(seed=s, group=x["group"], gene_set=x["gene_set"], n_genes=x["n_genes"],
                             p=x["pvalue"], padj=x["padj"], effect=x["effect"],
                             p_donor_t=b["p_donor_t"].get(key, np.nan), p_mwu=b["p_mwu"].get(key, np.nan)))
        log(f"  effect {effect} seed {s} done")
    return pd.DataFrame(rows)


def composition_power(seeds):
    import immunomood as im

    hits = []
    for s in seeds:
        adata, _ = im.datasets.simulate_cohort(n_donors=16, random_state=s)
        c = im.tl.composition(adata, sample_key="donor", condition_key="condition", groupby="lineage_true")
        c = c.set_index("group")
        hits.append(dict(seed=s, mono_up=bool(c.loc["Monocyte", "effect"] > 0 and c.loc["Monocyte", "padj"] < 0.05),
                         t_down=bool(c.loc["T cell", "effect"] < 0 and c.loc["T cell", "padj"] < 0.05),
                         b_down=bool(c.loc["B cell", "effect"] < 0 and c.loc["B cell", "padj"] < 0.05)))
    return pd.DataFrame(hits)


def timing(n_cells_per_donor=1000):
    import scanpy as sc

    import immunomood as im

    adata, _ = im.datasets.simulate_cohort(n_donors=16, n_cells_per_donor=n_cells_per_donor, random_state=0)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im.tl.differential_activity(adata, condition_key="condition", sample_key="donor", groupby=GROUP,
                                    gene_sets="complement")
    ours = time.perf_counter() - t
    t = time.perf_counter()
    sc.get.aggregate(adata, by=["donor", GROUP], func="sum")
    anchor = time.perf_counter() - t
    return dict(name=f"differential_activity_vs_sc_aggregate_{adata.n_obs}", ours_s=ours, anchor_s=anchor,
                ratio=ours / anchor, peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)


def run(size: str = "quick") -> list[dict]:
    n_null = 10 if size == "full" else 3
    n_pow = 10 if size == "full" else 3
    res = []
    cal = calibration(range(n_null))
    for k, (n, share) in cal.items():
        res.append(dict(name=f"calibration_{k}", n_tests=n, share_p05=share))
    p15 = power(1.5, range(n_pow))
    tgt = p15[(p15.group == TARGET) & (p15.n_genes > 0)]
    for arm, d in tgt.groupby("gene_set"):
        res.append(dict(name=f"power1.5_{arm}", seeds=len(d), share_padj05=float((d.padj < 0.05).mean()),
                        mean_n_genes=float(d.n_genes.mean()), share_donor_t_p05=float((d.p_donor_t < 0.05).mean())))
    other = p15[(p15.group != TARGET) & p15.p.notna()]
    res.append(dict(name="power1.5_other_cell_types_flagged", n_tests=len(other),
                    share_padj05=float((other.padj < 0.05).mean())))
    p11 = power(1.1, range(n_pow))
    tgt = p11[(p11.group == TARGET) & (p11.n_genes > 0)]
    for arm, d in tgt.groupby("gene_set"):
        res.append(dict(name=f"power1.1_{arm}", seeds=len(d), ours_share_p05=float((d.p < 0.05).mean()),
                        donor_t_share_p05=float((d.p_donor_t < 0.05).mean()),
                        mwu_share_p05=float((d.p_mwu < 0.05).mean())))
    cp = composition_power(range(n_pow))
    res.append(dict(name="composition_planted", seeds=len(cp), mono_up=float(cp.mono_up.mean()),
                    t_down=float(cp.t_down.mean()), b_down=float(cp.b_down.mean())))
    res.append(timing())
    return res


def main(size="quick"):
    for r in run(size):
        if "ours_s" in r:
            print(f"RESULT {r['name']} ours_s={r['ours_s']:.4f} anchor_s={r['anchor_s']:.4f} ratio={r['ratio']:.3f} "
                  f"peak_gb={r['peak_gb']:.2f}")
        else:
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick")
