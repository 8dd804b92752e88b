#!/usr/bin/env python
"""Estimate the donor-level parameters of ``im.datasets.simulate_cohort`` from real multi-donor data.

Every parameter of the simulator that shapes donor-to-donor variation is estimated here from the real donors in
``IMMUNOMOOD_DATA_DIR`` (onek1k: 40 healthy donors x 4 labelled cell types; csle: 44 donors; combat: 6 donors, full
transcriptome), and written with its provenance to ``src/immunomood/resources/sim_params.json``, which the
simulator reads for its defaults. No value here is chosen to make any test or power target reachable.

Estimates (all natural-log scale where an sd):

- ``composition_concentration`` (Dirichlet, onek1k): donor x type counts of the 4 labelled types follow a
  Dirichlet-multinomial; method of moments on the proportions, correcting for multinomial sampling:
  ``Var(p_k) = m_k (1 - m_k) / N * (N + A) / (1 + A)`` solved for ``A`` pooled over types. The 4 types are a
  subcomposition; a Dirichlet(a w) restricted to types S and renormalised is Dirichlet(a w_S), so the full
  concentration is ``a = A / sum(w_S)`` with ``w`` the simulator's reference composition (pbmc3k) of the matching
  types (CD4 naive T, B memory, classical and non-classical monocytes).
- ``cells_per_donor_sd`` (onek1k): sd of log(cells of the 4 types per donor), less the part the donor's share of
  those 4 types explains (log of a Beta(a w_S, a (1 - w_S)) variable: trigamma difference).
- ``library_sd`` (onek1k): donor offset of the log library size within cell type: the between-donor variance
  of the donor x type mean log library, less its sampling variance (within-donor variance / cells), pooled over
  types (libraries over onek1k's 1,000 genes: a donor offset is a ratio, unchanged by the gene subset). combat
  (full transcriptome, 6 donors, mixed cell types) is reported as a check.
- ``donor_sd`` (onek1k, per cell type): per gene, the between-donor variance of the donor's expression
  ``q_d = sum(counts) / sum(library)`` less its sampling variance (Poisson plus the cell-level negative-binomial
  term, ``phi`` estimated by moments from the cells within donors), over ``q^2``: ``s_g^2``, the squared
  biological coefficient of variation of the donor means (edgeR's BCV with the sampling noise removed).
  ``donor_sd = sqrt(log(1 + median s_g^2))`` over well-expressed genes (>= 0.1 counts per cell) and donors with
  >= 10 cells of the type, median over the 4 types. The onek1k genes are eQTL genes (chosen for genetic
  donor-to-donor variation): this estimate is an upper side of the genome-wide value. A check on combat's
  full transcriptome (monocytes by markers, within-condition donor pairs, 3 df) is reported, not used: about 0.11.
- ``complement_sd`` (onek1k classical monocytes): the shared donor-level variation of the complement genes that
  monocytes express: mean pairwise covariance, across donors, of the genes' relative donor means
  ``q_dg / mean_d q_dg`` (independent gene-level variation and sampling noise do not covary across genes),
  ``sqrt(log1p(.))`` of it when positive. The same
  statistic over random expression-matched gene sets is reported as the baseline of shared variation of any set.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse, special

from immunomood._utils import file_sha256

SCRIPT_VERSION = "1.0.0"
ONEK1K = "onek1k/onek1k_40donors_4types.h5ad"
CSLE = "csle/csle_44donors_B_CD4mem_Treg.h5ad"
COMBAT = "combat/combat_covid_6donors.h5ad"
# onek1k label -> simulator reference type
ONEK1K_TYPES = {
    "cd4nc": "CD4 naive T",
    "bmem": "B memory",
    "monoc": "Classical monocyte",
    "mononc": "Non-classical monocyte",
}
MIN_CELLS = 10  # donors with fewer cells of a type are left out of the per-gene variance estimates
MIN_MEAN = 0.1  # counts per cell for a gene to count as well expressed
COMPLEMENT_MIN_MEAN = 0.05  # counts per classical monocyte for a complement gene to enter the set
N_RANDOM_SETS = 200
N_BOOT = 1000


def _read(path: Path):
    import anndata as ad

    a = ad.read_h5ad(path)
    a.X = sparse.csr_matrix(a.X, dtype=np.float64)
    return a


# ------------------------------------------------------------------------------------------------ estimators
def dirichlet_concentration(counts: np.ndarray) -> tuple[float, dict]:
    """Method-of-moments Dirichlet-multinomial concentration from a donors x types count table."""
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(1)
    keep = n > 0
    counts, n = counts[keep], n[keep]
    p = counts / n[:, None]
    m = counts.sum(0) / n.sum()
    var = p.var(0, ddof=1)
    nbar = n.mean()
    # Var(p_k) = m_k (1 - m_k) * (1 / N) * (N + A) / (1 + A)  ->  pooled over types:  r = sum var / sum m(1-m)
    r = var.sum() / (m * (1 - m)).sum()
    # r = (nbar + A) / (nbar (1 + A))  ->  A = (nbar - r nbar) / (r nbar - 1)
    A = (nbar - r * nbar) / (r * nbar - 1.0)
    return float(A), {"mean_proportions": m.tolist(), "var_ratio": float(r), "mean_cells": float(nbar)}


def log_beta_var(a: float, b: float) -> float:
    return float(special.polygamma(1, a) - special.polygamma(1, a + b))


def donor_means(X: sparse.csr_matrix, lib: np.ndarray, donor: np.ndarray):
    """Per donor: q_d (sum counts / sum lib), its sampling variance (Poisson + cell-level NB), number of cells."""
    codes, uniq = pd.factorize(donor)
    D = uniq.size
    agg = sparse.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(D, codes.size))
    S = np.asarray((agg @ X).todense())
    L = agg @ lib
    L2 = agg @ lib**2
    n = np.bincount(codes, minlength=D)
    q = S / L[:, None]
    # cell-level dispersion by moments, pooled over donors: sum((x - l q_d)^2 - l q_d) / sum((l q_d)^2)
    Xc = X.tocoo()
    mu_nz = lib[Xc.row] * q[codes[Xc.row], Xc.col]
    G = X.shape[1]
    sq = np.bincount(Xc.col, weights=Xc.data**2 - 2 * Xc.data * mu_nz, minlength=G)
    sum_mu2 = (L2[:, None] * q**2).sum(0)
    sum_mu = (L[:, None] * q).sum(0)
    num = sq + sum_mu2 - sum_mu  # sum over all cells of (x - mu)^2 - mu
    phi = np.where(sum_mu2 > 0, num / np.maximum(sum_mu2, 1e-300), 0.0)
    phi = np.clip(phi, 0.0, None)
    samp = q / L[:, None] + phi[None, :] * q**2 * (L2 / L**2)[:, None]
    return q, samp, n, uniq, phi


def between_donor_s2(q: np.ndarray, samp: np.ndarray) -> np.ndarray:
    """Per gene squared biological CV of the donor means: (Var_d q_d - mean sampling var) / qbar^2."""
    qbar = q.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (q.var(0, ddof=1) - samp.mean(0)) / qbar**2


def pseudobulk_bcv(counts: np.ndarray) -> np.ndarray:
    """Per gene edgeR-style moment BCV^2 of a donors x genes pseudobulk: mean(((y - mu)^2 - mu) / mu^2), mu = N p."""
    y = np.asarray(counts, dtype=float)
    N = y.sum(1, keepdims=True)
    mu = N * (y.sum(0, keepdims=True) / N.sum())
    D = y.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (((y - mu) ** 2 - mu) / mu**2).sum(0) / (D - 1)


def _combat_monocyte_donor_sd(cb) -> dict:
    """Check of donor_sd on the full transcriptome: combat monocytes (LYZ and S100A8 high, CD3E and MS4A1 absent),
    between-donor variance within condition (2 donors per condition: 3 df), same estimator as onek1k."""
    lib = np.asarray(cb.X.sum(1)).ravel()
    pos = {g: i for i, g in enumerate(cb.var_names)}

    def cp10k(g):
        return np.asarray(cb.X[:, pos[g]].todense()).ravel() / lib * 1e4

    mono = (cp10k("LYZ") > 20) & (cp10k("S100A8") > 5) & (cp10k("CD3E") == 0) & (cp10k("MS4A1") == 0)
    obs = cb.obs[mono]
    X = cb.X[np.flatnonzero(mono)]
    q, samp, n, uniq, _ = donor_means(X, lib[mono], obs["donor"].astype(str).to_numpy())
    cond = obs.groupby("donor", observed=True)["condition"].first().astype(str).reindex(uniq).to_numpy()
    expressed = np.asarray(X.mean(0)).ravel() >= MIN_MEAN
    num, df = np.zeros(q.shape[1]), 0
    for c in np.unique(cond):
        k = cond == c
        if k.sum() >= 2:
            num += (q[k].var(0, ddof=1) - samp[k].mean(0)) * (k.sum() - 1)
            df += int(k.sum() - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s2 = ((num / df) / q.mean(0) ** 2)[expressed]
    med = float(np.nanmedian(s2))
    return {
        "cells": int(mono.sum()),
        "n_donors": int(uniq.size),
        "df": df,
        "n_genes": int(expressed.sum()),
        "median_s2": med,
        "donor_sd": float(np.sqrt(np.log1p(max(med, 0.0)))),
        "note": "full transcriptome: about half onek1k's figure, whose 1,000 genes were chosen as eQTL genes "
        "(genetic donor variation); 3 df only (the median of a 3-df variance estimate is ~0.8 of its mean). "
        "Reported, not used.",
    }


# ------------------------------------------------------------------------------------------------ build
def estimate(data_dir: Path) -> dict:
    from immunomood.datasets import _simulate as S

    ref = S._load_reference()
    ref_comp = dict(zip([str(t) for t in ref["cell_types"]], ref["composition"].astype(float), strict=True))
    w_S = sum(ref_comp[t] for t in ONEK1K_TYPES.values())

    ok = _read(data_dir / ONEK1K)
    obs = ok.obs
    lib = np.asarray(ok.X.sum(1)).ravel()
    tab = pd.crosstab(obs["donor"], obs["cell_type"])[list(ONEK1K_TYPES)]
    out: dict = {"details": {}}

    # (c) composition concentration
    A, info = dirichlet_concentration(tab.to_numpy())
    conc = A / w_S
    out["composition_concentration"] = conc
    out["details"]["composition"] = {
        "set": "onek1k",
        "types": ONEK1K_TYPES,
        "subcomposition_concentration": A,
        "reference_share_of_types": w_S,
        **info,
    }
    # csle check (fine labels, few cells: noisy)
    cs = _read(data_dir / CSLE)
    A_cs, info_cs = dirichlet_concentration(pd.crosstab(cs.obs["donor"], cs.obs["cell_type"]).to_numpy())
    out["details"]["composition"]["csle_check_concentration_of_its_subcomposition"] = A_cs

    # (a) cells per donor: log-normal sd of the donor total, less the share part
    tot = tab.sum(1).to_numpy().astype(float)
    var_tot = float(np.log(tot).var(ddof=1))
    var_share = log_beta_var(conc * w_S, conc * (1 - w_S))
    cpd_sd = float(np.sqrt(max(var_tot - var_share, 0.0)))
    out["cells_per_donor_sd"] = cpd_sd
    out["details"]["cells_per_donor"] = {
        "set": "onek1k",
        "log_sd_of_4type_total": float(np.sqrt(var_tot)),
        "log_var_share_part": var_share,
        "min": int(tot.min()),
        "median": float(np.median(tot)),
        "max": int(tot.max()),
        "fold_range": float(tot.max() / tot.min()),
        "csle_log_sd": float(np.log(cs.obs["donor"].value_counts().to_numpy()).std(ddof=1)),
        "note": "onek1k, csle and combat are donor subsets of their studies; onek1k's 4-type totals are the least "
        "downsampled (combat was cut to 684-800 cells per donor, csle to 6-38).",
    }

    # (b) library sizes: donor offset within type, pooled
    loglib = np.log(lib)
    between, within_part, per_type = [], [], {}
    for t in ONEK1K_TYPES:
        m = (obs["cell_type"] == t).to_numpy()
        df = pd.DataFrame({"d": obs["donor"].to_numpy()[m], "l": loglib[m]})
        g = df.groupby("d", observed=True)["l"]
        n = g.size()
        keep = n >= MIN_CELLS
        means = g.mean()[keep]
        wvar = g.var(ddof=1)[keep]
        b = float(means.var(ddof=1))
        s = float((wvar / n[keep]).mean())
        between.append(b)
        within_part.append(s)
        per_type[t] = {"offset_sd": float(np.sqrt(max(b - s, 0.0))), "within_donor_log_sd": float(np.sqrt(wvar.mean()))}
    lib_sd = float(np.sqrt(max(np.mean(between) - np.mean(within_part), 0.0)))
    out["library_sd"] = lib_sd
    cb = _read(data_dir / COMBAT)
    cb_lib = np.log(np.asarray(cb.X.sum(1)).ravel())
    cb_df = pd.DataFrame({"d": cb.obs["donor"].to_numpy(), "l": cb_lib}).groupby("d", observed=True)["l"]
    out["details"]["library"] = {
        "set": "onek1k",
        "per_type": per_type,
        "combat_check": {
            "donor_mean_log_sd": float(cb_df.mean().std(ddof=1)),
            "within_donor_log_sd": float(np.sqrt(cb_df.var(ddof=1).mean())),
            "median_library": float(np.exp(np.median(cb_lib))),
            "note": "6 donors, healthy / mild / critical COVID, unlabelled mixed cell types",
        },
    }

    # (d) per-gene biological variation between donors
    sd_type, det = {}, {}
    q_mono = None
    for t in ONEK1K_TYPES:
        m = (obs["cell_type"] == t).to_numpy()
        donors = obs["donor"].to_numpy()[m]
        counts = pd.Series(donors).value_counts()
        keepd = np.isin(donors, counts.index[counts >= MIN_CELLS])
        X = ok.X[np.flatnonzero(m)[keepd]]
        q, samp, n, uniq, phi = donor_means(X, lib[m][keepd], donors[keepd])
        mean_count = np.asarray(X.mean(0)).ravel()
        expressed = mean_count >= MIN_MEAN
        s2 = between_donor_s2(q, samp)[expressed]
        med = float(np.median(s2))
        sd_type[t] = float(np.sqrt(np.log1p(max(med, 0.0))))
        det[t] = {
            "n_donors": int(uniq.size),
            "n_genes": int(expressed.sum()),
            "median_s2": med,
            "quartiles_s2": [float(x) for x in np.quantile(s2, [0.25, 0.75])],
            "median_cell_dispersion": float(np.median(phi[expressed])),
        }
        if t == "monoc":
            q_mono, samp_mono, X_mono = q, samp, X
    donor_sd = float(np.median(list(sd_type.values())))
    out["donor_sd"] = donor_sd
    out["details"]["donor_sd"] = {
        "set": "onek1k",
        "per_type": sd_type,
        "per_type_details": det,
        "combat_check": _combat_monocyte_donor_sd(cb),
    }

    # (e) complement latent sd: shared donor-level covariance of the complement genes in classical monocytes.
    # Genes: those the simulator plants (complement genes its reference classical monocytes express) that onek1k
    # holds and its classical monocytes express (>= COMPLEMENT_MIN_MEAN counts per cell).
    t_comp = [str(t) for t in ref["cell_types"]].index(S.COMPLEMENT_CELL_TYPE)
    ref_mono = pd.Series(ref["profiles"][t_comp] * np.exp(float(ref["lib_logmean"][t_comp])), index=ref["genes"])
    planted = [g for g in S.complement_genes() if g in ref_mono.index and ref_mono[g] >= S.PLANTED_MIN_MEAN]
    mean_mono = np.asarray(X_mono.mean(0)).ravel()
    genes = np.asarray(ok.var_names)
    pos = {g: i for i, g in enumerate(genes)}
    idx = np.array([pos[g] for g in planted if g in pos and mean_mono[pos[g]] >= COMPLEMENT_MIN_MEAN])
    others = [
        g for g in S.complement_genes() if g in pos and g not in planted and mean_mono[pos[g]] >= COMPLEMENT_MIN_MEAN
    ]

    def shared_cov(ix, rows=None):
        # relative (linear-scale) covariance: sampling noise, independent across genes given the donor, drops out
        qq = q_mono[:, ix] if rows is None else q_mono[rows][:, ix]
        r = qq / qq.mean(0)
        c = np.cov(r, rowvar=False)
        k = len(ix)
        return float((c.sum() - np.trace(c)) / (k * (k - 1)))

    cov_c = shared_cov(idx)
    rng = np.random.default_rng(0)
    D = q_mono.shape[0]
    boot = np.array([shared_cov(idx, rng.integers(0, D, D)) for _ in range(N_BOOT)])
    pool = np.flatnonzero((mean_mono >= COMPLEMENT_MIN_MEAN) & ~np.isin(np.arange(genes.size), idx))
    # expression-matched random sets: for each set gene, a random gene of the same expression decile
    dec = np.searchsorted(np.quantile(mean_mono[pool], np.linspace(0, 1, 11)[1:-1]), mean_mono)
    rand = []
    for _ in range(N_RANDOM_SETS):
        pick = [rng.choice(pool[dec[pool] == dec[i]]) for i in idx]
        if len(set(pick)) == len(pick):
            rand.append(shared_cov(np.array(pick)))
    rand = np.array(rand)
    hi = float(np.quantile(boot, 0.95))
    out["complement_sd"] = float(np.sqrt(np.log1p(max(cov_c, 0.0))))
    setmean = np.log((q_mono[:, idx] / q_mono[:, idx].mean(0)).mean(1))
    out["details"]["complement_sd"] = {
        "set": "onek1k classical monocytes (monoc)",
        "genes": [str(g) for g in genes[idx]],
        "n_donors": int(D),
        "mean_pairwise_covariance": cov_c,
        "bootstrap_over_donors": {"n": N_BOOT, "q05": float(np.quantile(boot, 0.05)), "q95": hi},
        "sd_upper_95": float(np.sqrt(np.log1p(max(hi, 0.0)))),
        "random_sets_mean_pairwise_covariance": {
            "median": float(np.median(rand)),
            "q05": float(np.quantile(rand, 0.05)),
            "q95": float(np.quantile(rand, 0.95)),
            "n_sets": int(rand.size),
        },
        "sd_of_log_set_mean_relative_expression": float(setmean.std(ddof=1)),
        "left_out_complement_genes": {
            "genes": others,
            "mean_pairwise_covariance": shared_cov(np.array([pos[g] for g in others])) if len(others) > 1 else None,
            "why": "expressed in onek1k classical monocytes but not planted by the simulator (its pbmc3k classical "
            "monocytes do not express them); C1QA / C1QB are high in a few donors only (C1Q+ cells), a cell-state "
            "signal rather than a pathway activity",
        },
        "note": "complement_sd = sqrt(log1p(max(0, mean pairwise covariance of the set genes' relative donor "
        "means))): the donor-level variation shared by the set, beyond independent gene-level variation "
        "(donor_sd) and sampling noise (both independent across genes). When the point estimate is <= 0 (no "
        "shared variation detectable) the parameter is 0; sd_upper_95 is the largest value the donors allow.",
    }
    return out


def build(data_dir: Path, out_path: Path) -> dict:
    data_dir = Path(data_dir)
    est = estimate(data_dir)
    params = {
        k: round(float(est[k]), 4)
        for k in ("cells_per_donor_sd", "library_sd", "composition_concentration", "donor_sd", "complement_sd")
    }
    doc = {
        "name": "immunomood simulate_cohort donor-level parameters",
        "script": "src/immunomood/resources/build/estimate_sim_params.py",
        "script_version": SCRIPT_VERSION,
        "built": _dt.date.today().isoformat(),
        "inputs": [{"path": p, "sha256": file_sha256(data_dir / p)} for p in (ONEK1K, CSLE, COMBAT)],
        "method": {
            "cells_per_donor_sd": "onek1k: sd of log cells of the 4 labelled types per donor, less the log-Beta "
            "variance of the donor's share of those types",
            "library_sd": "onek1k: between-donor variance of the donor x type mean log library size less its "
            "sampling variance, pooled over the 4 types",
            "composition_concentration": "onek1k: Dirichlet-multinomial method of moments on the 4 types' "
            "proportions, divided by the reference (pbmc3k) share of those types (Dirichlet aggregation)",
            "donor_sd": "onek1k: per type, median over genes (>= 0.1 counts per cell) of the between-donor "
            "squared CV of donor means less Poisson + cell-level NB sampling variance; sqrt(log1p(.)); median of "
            "the 4 types",
            "complement_sd": "onek1k classical monocytes: sqrt(log1p(mean pairwise covariance across donors of the "
            "relative donor means q_dg / mean_d q_dg)) of the complement genes expressed there (>= 0.05 counts per "
            "cell)",
        },
        "params": params,
        "details": est["details"],
    }
    out_path = Path(out_path)
    out_path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    return doc


def main() -> None:
    here = Path(__file__).resolve()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-dir", default=os.environ.get("IMMUNOMOOD_DATA_DIR", str(here.parents[5] / "shared" / "data"))
    )
    p.add_argument("--out", default=str(here.parents[1] / "sim_params.json"))
    a = p.parse_args()
    doc = build(Path(a.data_dir), Path(a.out))
    print(json.dumps(doc["params"], indent=1))


if __name__ == "__main__":
    main()
