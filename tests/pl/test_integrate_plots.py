"""pl.integration: smoke (Figure, ax=), and an image comparison at low dpi against a committed baseline."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import immunomood as im

BASELINE = Path(__file__).parent / "baseline" / "integration.png"


@pytest.fixture
def embedded():
    rng = np.random.default_rng(0)
    n = 150
    ct = np.repeat(["T", "B", "Mono"], n // 3)
    batch = np.tile(["b1", "b2"], n // 2)
    centers = {"T": 0.0, "B": 6.0, "Mono": 12.0}
    lat = np.array([[centers[c], 0, 0] for c in ct]) + rng.normal(0, 0.5, (n, 3))
    a = AnnData(obs=pd.DataFrame({"batch": batch, "cell_type": ct}, index=[f"c{i}" for i in range(n)]))
    a.obsm["X_scVI"] = lat
    a.obsm["X_pca"] = lat + np.where(batch == "b2", 5.0, 0.0)[:, None] * np.array([0, 1.0, 0])
    return a


def test_integration_returns_figure_and_leaves_adata(embedded):
    keys = set(embedded.obsm)
    fig = im.pl.integration(embedded, batch_key="batch", label_key="cell_type")
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 4
    assert "iLISI" in fig.axes[0].get_title() and "label ASW" in fig.axes[3].get_title()
    assert set(embedded.obsm) == keys
    plt.close(fig)


def test_integration_accepts_axes(embedded):
    fig, axes = plt.subplots(1, 4, figsize=(12, 3))
    out = im.pl.integration(embedded, batch_key="batch", label_key="cell_type", ax=axes)
    assert out is fig
    with pytest.raises(ValueError, match="4 Axes"):
        im.pl.integration(embedded, batch_key="batch", label_key="cell_type", ax=axes[:2])
    plt.close(fig)


def test_integration_image(embedded, tmp_path):
    from matplotlib.testing.compare import compare_images

    metrics = im.tl.integration_metrics(embedded, batch_key="batch", label_key="cell_type")
    fig = im.pl.integration(embedded, batch_key="batch", label_key="cell_type", metrics=metrics)
    out = tmp_path / "integration.png"
    fig.savefig(out, dpi=40)
    plt.close(fig)
    if not BASELINE.exists():  # first run writes the baseline to commit
        BASELINE.parent.mkdir(parents=True, exist_ok=True)
        out.replace(BASELINE)
        pytest.skip("baseline written")
    assert compare_images(str(BASELINE), str(out), tol=25) is None
