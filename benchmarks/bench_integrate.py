"""CPU benchmark: im.tl.integrate (size-based schedule) vs scvi-tools ``SCVI(...).train()`` with its defaults.

Data: ``im.datasets.simulate_cohort`` at about pbmc3k size (default 3,000 cells: 10 donors x 300 cells, 2 batches,
``batch_effect=1.0``, i.e. strong gene-wise batch effects), 2,000 HVGs (scanpy's seurat flavour on log-normalised counts). pbmc3k itself has a
single batch, so the simulator (whose profiles are derived from pbmc3k) stands in for it. Both paths train SCVI with
the same architecture on the same HVG counts in the same process, one torch thread each (the machine is shared;
``im.settings.n_jobs`` = 1 is also immunomood's default). Prints
``RESULT integrate_<size> ours_s=.. anchor_s=.. ratio=.. peak_gb=..`` and the metrics of both embeddings.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings

SIZES = {"tiny": (4, 60, 8), "small": (10, 300, None), "medium": (20, 1000, None)}  # donors, cells/donor, epochs


def _data(n_donors: int, per_donor: int):
    import numpy as np
    import scanpy as sc

    import immunomood as im

    adata, _ = im.datasets.simulate_cohort(n_donors, per_donor, 2, batch_effect=1.0, random_state=0)
    adata.layers["counts"] = adata.X.copy()
    tmp = adata.copy()
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.pp.highly_variable_genes(tmp, n_top_genes=min(2000, adata.n_vars - 1))  # scanpy "seurat" flavour
    adata.var["highly_variable"] = tmp.var["highly_variable"]
    sub = tmp[:, tmp.var["highly_variable"].to_numpy()].copy()
    sc.pp.pca(sub, n_comps=30, random_state=0)
    adata.obsm["X_pca"] = np.asarray(sub.obsm["X_pca"])
    return adata


def run(size: str = "small") -> list[dict]:
    warnings.filterwarnings("ignore")
    import scvi
    import torch

    import immunomood as im

    n_donors, per_donor, epochs = SIZES[size]
    adata = _data(n_donors, per_donor)
    torch.set_num_threads(1)

    # ours
    t0 = time.perf_counter()
    im.tl.integrate(adata, batch_key="batch", layer="counts", max_epochs=epochs, random_state=0)
    ours_s = time.perf_counter() - t0

    # anchor: scvi-tools defaults (400 epochs below 20k cells, batch 128, no early stopping)

    t0 = time.perf_counter()
    ref = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(ref, layer="counts", batch_key="batch")
    model = scvi.model.SCVI(ref, n_latent=30)
    kw = {"max_epochs": epochs} if epochs else {}
    model.train(enable_progress_bar=False, **kw)
    adata.obsm["X_scVI_default"] = model.get_latent_representation()
    anchor_s = time.perf_counter() - t0

    m = im.tl.integration_metrics(
        adata, batch_key="batch", label_key="cell_type_true", embedding=["X_scVI", "X_scVI_default"]
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    u = adata.uns["integration"]
    res = {
        "name": f"integrate_{size}",
        "ours_s": ours_s,
        "anchor_s": anchor_s,
        "ratio": ours_s / anchor_s,
        "peak_gb": peak,
        "n_cells": adata.n_obs,
        "n_genes": int(adata.var["highly_variable"].sum()),
        "ours_epochs": int(u["epochs_run"]),
        "ours_path": u["path"],
        "anchor_epochs": int(len(model.history["elbo_train"])),
        "metrics": m.drop(columns=["implementation"]).round(4).to_dict(orient="index"),
    }
    return [res]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=list(SIZES))
    args = p.parse_args()
    for r in run(args.size):
        print(
            f"RESULT {r['name']} ours_s={r['ours_s']:.2f} anchor_s={r['anchor_s']:.2f} "
            f"ratio={r['ratio']:.3f} peak_gb={r['peak_gb']:.2f}"
        )
        import pandas as pd

        print(pd.DataFrame(r["metrics"]).T.to_string())
        print("JSON " + json.dumps(r))
