"""Tiny seeded synthetic cohorts for the differential tests: NB counts with donor-level random effects."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

SETS = {
    "setA": [f"G{i}" for i in range(0, 20)],
    "setB": [f"G{i}" for i in range(20, 40)],
    "setC": [f"G{i}" for i in range(40, 55)],
}


def synth_cohort(
    n_donors=12,
    n_genes=300,
    cells=(60, 40),
    effect=1.0,
    planted=("setA",),
    corr_sd=0.15,
    donor_sd=0.2,
    seed=0,
    types=("Mono", "T"),
):
    """Cells of ``len(types)`` cell types from ``n_donors`` donors (half control, half case).

    Each donor has gene-level log-normal deviations (sd ``donor_sd``) plus a shared per-donor shift of each set
    (sd ``corr_sd``: inter-gene correlation inside a donor). ``effect`` multiplies the planted sets' genes in the
    first cell type of case donors.
    """
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(n_genes)]
    blocks, obs = [], []
    cond = np.array(["control"] * (n_donors // 2) + ["case"] * (n_donors - n_donors // 2))
    base = {t: rng.gamma(0.6, 1.5, size=n_genes) * 0.3 for t in types}
    for d in range(n_donors):
        dev = rng.normal(0, donor_sd, size=n_genes)
        for s in SETS.values():
            idx = [genes.index(g) for g in s]
            dev[idx] += rng.normal(0, corr_sd)
        for ti, t in enumerate(types):
            mu = base[t] * np.exp(dev)
            if ti == 0 and cond[d] == "case" and effect != 1.0:
                for name in planted:
                    mu[[genes.index(g) for g in SETS[name]]] *= effect
            n = int(cells[ti] * rng.uniform(0.7, 1.3))
            size = rng.lognormal(0, 0.3, size=n)
            lam = mu[None, :] * size[:, None]
            r = 5.0
            x = rng.poisson(rng.gamma(r, lam / r))
            blocks.append(sparse.csr_matrix(x.astype(np.float32)))
            obs.append(
                pd.DataFrame(
                    {
                        "donor": f"d{d}",
                        "condition": cond[d],
                        "cell_type": t,
                        "age": 40 + d % 5,
                        "sex": ["F", "M"][d % 2],
                    },
                    index=range(n),
                )
            )
    obs = pd.concat(obs, ignore_index=True)
    obs.index = [f"c{i}" for i in range(len(obs))]
    obs["condition"] = pd.Categorical(obs["condition"], categories=["control", "case"])
    for c in ("donor", "cell_type", "sex"):
        obs[c] = obs[c].astype("category")
    return ad.AnnData(sparse.vstack(blocks).tocsr(), obs=obs, var=pd.DataFrame(index=genes))
