"""Shared test fixtures: tiny seeded data, the real-data directory (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from scipy import sparse


def _data_dir() -> Path | None:
    env = os.environ.get("IMMUNOMOOD_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


DATA_DIR = _data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real public data folder (IMMUNOMOOD_DATA_DIR, else ../shared/data); skips when absent."""
    if DATA_DIR is None:
        pytest.skip("real data not available: set IMMUNOMOOD_DATA_DIR to the shared data folder")
    os.environ.setdefault("IMMUNOMOOD_DATA_DIR", str(DATA_DIR))
    return DATA_DIR


@pytest.fixture
def tiny_counts():
    """A tiny seeded AnnData with raw counts, gene symbols incl. MT-/RP/HB genes, 3 samples."""
    import anndata as ad

    rng = np.random.default_rng(0)
    n_cells, genes = 90, [f"GENE{i}" for i in range(40)] + ["MT-CO1", "MT-ND1", "RPS3", "RPL13", "HBB", "HBA1"]
    mu = rng.gamma(1.0, 2.0, size=len(genes))
    X = rng.poisson(mu, size=(n_cells, len(genes))).astype(np.float32)
    X[:, 0] += 1  # no all-zero cells
    obs = pd.DataFrame(
        {"sample": np.repeat(["s1", "s2", "s3"], n_cells // 3), "condition": np.repeat(["a", "b", "a"], n_cells // 3)},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    obs["sample"] = obs["sample"].astype("category")
    return ad.AnnData(sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=genes))
