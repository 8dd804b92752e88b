"""Training throughput (cells per second per epoch): immunomood's device-resident fast path vs scvi-tools'
default training loop (``SCVI(...).train()``: AnnDataLoader, batch 128, Lightning), same SCVI architecture.

Meant for a GPU with ``--n-cells 1000000``; runs anywhere (CPU) at a tiny size, which is what CI does.
Data: ``im.datasets.simulate_cohort`` (2 batches), the ``--n-genes`` genes with the highest mean count
(a stand-in for HVGs; the selection does not change the cost). Our path is timed with its own schedule's
batch size (1,024 above 100k cells) and, for a like-for-like loader comparison, also at batch 128.
Prints ``RESULT`` lines and one ``JSON`` line.

    python benchmarks/bench_scvi_gpu.py --n-cells 1000000 --epochs 5 --anchor-epochs 1
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings

SIZES = {
    "tiny": dict(n_cells=2_000, epochs=2, anchor_epochs=1),
    "gpu": dict(n_cells=1_000_000, epochs=5, anchor_epochs=1),
}


def _data(n_cells: int, n_genes: int):
    import numpy as np

    import immunomood as im

    n_donors = 16
    adata, _ = im.datasets.simulate_cohort(
        n_donors, int(np.ceil(n_cells / n_donors)), 2, batch_effect=1.0, random_state=0
    )
    mean = np.asarray(adata.X.mean(0)).ravel()
    keep = np.sort(np.argsort(-mean)[: min(n_genes, adata.n_vars)])
    return adata[:, keep].copy()


def run(
    size: str = "tiny",
    *,
    n_cells: int | None = None,
    epochs: int | None = None,
    anchor_epochs: int | None = None,
    n_genes: int = 2000,
    n_latent: int = 30,
) -> list[dict]:
    warnings.filterwarnings("ignore")
    import scvi
    import torch

    import immunomood as im

    cfg = dict(SIZES[size])
    cfg.update({k: v for k, v in dict(n_cells=n_cells, epochs=epochs, anchor_epochs=anchor_epochs).items() if v})
    adata = _data(cfg["n_cells"], n_genes)
    n = adata.n_obs
    gpu = torch.cuda.is_available()
    if not gpu:
        torch.set_num_threads(max(1, im.settings.n_jobs))  # same CPU threads for both paths
    device = torch.cuda.get_device_name(0) if gpu else "cpu"
    results = []

    def ours(batch_size):
        a = adata.copy()
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        im.tl.integrate(
            a,
            batch_key="batch",
            layer=None,
            fast=True,
            max_epochs=cfg["epochs"],
            n_latent=n_latent,
            batch_size=batch_size,
            early_stopping=False,
        )
        u = a.uns["integration"]
        n_train = int(np.ceil(0.9 * n))
        return {
            "train_s": u["train_s"],
            "epochs": u["epochs_run"],
            "batch_size": u["params"]["batch_size"],
            "cells_per_s_epoch": n_train * u["epochs_run"] / u["train_s"],
            "total_s": u["time_s"],
            "gpu_peak_gb": torch.cuda.max_memory_allocated() / 1e9 if gpu else 0.0,
        }

    import numpy as np

    ours_default = ours(None)
    ours_128 = ours(128)

    # anchor: scvi-tools' default loop (batch 128, AnnDataLoader, Lightning), same architecture
    ref = adata.copy()
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(ref, batch_key="batch")
    model = scvi.model.SCVI(ref, n_latent=n_latent)
    t0 = time.perf_counter()
    model.train(max_epochs=cfg["anchor_epochs"], enable_progress_bar=False)
    anchor_s = time.perf_counter() - t0
    n_train = len(model.train_indices)
    anchor_tp = n_train * cfg["anchor_epochs"] / anchor_s

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    for name, o in [("fast_default_batch", ours_default), ("fast_batch128", ours_128)]:
        # ours_s / anchor_s as seconds per epoch: ratio < 1 means faster; speedup = anchor/ours throughput
        results.append(
            {
                "name": f"scvi_gpu_{name}",
                "n_cells": n,
                "n_genes": adata.n_vars,
                "device": device,
                "ours_s": o["train_s"] / o["epochs"],
                "anchor_s": anchor_s / cfg["anchor_epochs"],
                "ratio": (o["train_s"] / o["epochs"]) / (anchor_s / cfg["anchor_epochs"]),
                "speedup": o["cells_per_s_epoch"] / anchor_tp,
                "ours_cells_per_s_epoch": o["cells_per_s_epoch"],
                "anchor_cells_per_s_epoch": anchor_tp,
                "ours_batch_size": o["batch_size"],
                "anchor_batch_size": 128,
                "peak_gb": peak,
                "gpu_peak_gb": o["gpu_peak_gb"],
            }
        )
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--n-cells", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--anchor-epochs", type=int, default=None)
    p.add_argument("--n-genes", type=int, default=2000)
    a = p.parse_args()
    res = run(a.size, n_cells=a.n_cells, epochs=a.epochs, anchor_epochs=a.anchor_epochs, n_genes=a.n_genes)
    for r in res:
        print(
            f"RESULT {r['name']} ours_s={r['ours_s']:.3f} anchor_s={r['anchor_s']:.3f} ratio={r['ratio']:.4f} "
            f"peak_gb={r['peak_gb']:.2f} speedup={r['speedup']:.2f} ours_cells_per_s_epoch="
            f"{r['ours_cells_per_s_epoch']:.0f} anchor_cells_per_s_epoch={r['anchor_cells_per_s_epoch']:.0f}"
        )
    print("JSON " + json.dumps(res))
