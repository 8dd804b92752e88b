"""pl.integration reads what tl stored: smoke (Figure, ax=), errors naming the tl call, and an image comparison of a
deterministic stored state (no UMAP computed for the compared image)."""

from __future__ import annotations

import os
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
UMAP_KEY = "X_integration_metrics_umap_unintegrated"


def _cells(n: int = 150) -> AnnData:
    """Three cell types x two batches; the PCA separates the batches, the 'integrated' latent space does not."""
    rng = np.random.default_rng(0)
    ct = np.repeat(["T", "B", "Mono"], n // 3)
    batch = np.tile(["b1", "b2"], n // 2)
    centers = {"T": 0.0, "B": 6.0, "Mono": 12.0}
    lat = np.array([[centers[c], 0, 0] for c in ct]) + rng.normal(0, 0.5, (n, 3))
    a = AnnData(
        X=np.zeros((n, 4), dtype=np.float32),
        obs=pd.DataFrame({"batch": batch, "cell_type": ct}, index=[f"c{i}" for i in range(n)]),
    )
    a.obsm["X_scVI"] = lat
    a.obsm["X_pca"] = lat + np.where(batch == "b2", 5.0, 0.0)[:, None] * np.array([0, 1.0, 0])
    return a


@pytest.fixture(scope="module")
def stored():
    """The state after the real tl calls: integration_metrics (metrics + 'before' UMAP) and embed ('after' UMAP)."""
    a = _cells()
    im.tl.integration_metrics(a, batch_key="batch", label_key="cell_type", embedding="X_scVI")
    im.tl.embed(a, use_rep="X_scVI", random_state=0)
    return a


def test_integration_metrics_stores_what_the_plot_reads():
    a = _cells(60)
    before = {k: v.copy() for k, v in a.obsm.items()}
    df = im.tl.integration_metrics(a, batch_key="batch", label_key="cell_type", embedding="X_scVI", key_added="im1")
    st = a.uns["im1"]
    assert st["metrics"].equals(df)
    assert st["params"]["batch_key"] == "batch" and st["params"]["label_key"] == "cell_type"
    assert st["params"]["embedding"] == ["X_scVI"] and st["params"]["umap_unintegrated"] == "X_im1_umap_unintegrated"
    umap = a.obsm["X_im1_umap_unintegrated"]
    assert umap.shape == (60, 2) and np.isfinite(umap).all()
    assert all(np.array_equal(a.obsm[k], before[k]) for k in before)
    # the UMAP is seeded: the same call gives the same coordinates
    b = _cells(60)
    im.tl.integration_metrics(b, batch_key="batch", label_key="cell_type", embedding="X_scVI", key_added="im1")
    np.testing.assert_array_equal(b.obsm["X_im1_umap_unintegrated"], umap)
    # umap=False: the metrics only, no obsm key
    c = _cells(60)
    im.tl.integration_metrics(c, batch_key="batch", label_key="cell_type", embedding="X_scVI", umap=False)
    assert set(c.obsm) == {"X_scVI", "X_pca"} and c.uns["integration_metrics"]["params"]["umap_unintegrated"] == ""
    with pytest.raises(ValueError, match="view"):
        im.tl.integration_metrics(c[:30], batch_key="batch", label_key="cell_type")
    with pytest.raises(TypeError, match="umap must be True or False"):
        im.tl.integration_metrics(c, batch_key="batch", label_key="cell_type", umap="yes")


def test_integration_computes_nothing(stored, monkeypatch):
    import scanpy as sc

    def boom(*args, **kwargs):
        raise AssertionError("pl.integration must not compute neighbours, UMAPs or metrics")

    monkeypatch.setattr(sc.pp, "neighbors", boom)
    monkeypatch.setattr(sc.tl, "umap", boom)
    monkeypatch.setattr(im.tl, "integration_metrics", boom)
    monkeypatch.setattr("immunomood.tl._metrics.integration_metrics", boom)
    obsm, uns = {k: np.array(v) for k, v in stored.obsm.items()}, set(stored.uns)
    fig = im.pl.integration(stored)
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 4
    assert "iLISI" in fig.axes[0].get_title() and "label ASW" in fig.axes[3].get_title()
    assert all(a.get_xlabel() == "UMAP1" and a.get_ylabel() == "UMAP2" for a in fig.axes)
    # the "before" panels show the stored unintegrated UMAP, the "after" ones obsm["X_umap"]
    np.testing.assert_allclose(
        np.sort(fig.axes[0].collections[0].get_offsets()[:, 0]), np.sort(stored.obsm[UMAP_KEY][:, 0]), rtol=1e-6
    )
    np.testing.assert_allclose(
        np.sort(fig.axes[2].collections[0].get_offsets()[:, 0]), np.sort(stored.obsm["X_umap"][:, 0]), rtol=1e-6
    )
    assert set(stored.uns) == uns and all(np.array_equal(stored.obsm[k], v) for k, v in obsm.items())
    plt.close(fig)


def test_integration_accepts_axes(stored):
    fig, axes = plt.subplots(1, 4, figsize=(12, 3))
    out = im.pl.integration(stored, batch_key="batch", label_key="cell_type", ax=axes)
    assert out is fig
    with pytest.raises(ValueError, match="4 Axes"):
        im.pl.integration(stored, ax=axes[:2])
    plt.close(fig)


def test_integration_missing_results_name_the_tl_call(stored):
    a = _cells(30)
    with pytest.raises(KeyError, match=r"im\.tl\.integration_metrics"):
        im.pl.integration(a, batch_key="batch", label_key="cell_type")
    im.tl.integration_metrics(a, batch_key="batch", label_key="cell_type", umap=False)
    with pytest.raises(KeyError, match=r"umap=True"):
        im.pl.integration(a)
    im.tl.integration_metrics(a, batch_key="batch", label_key="cell_type")
    with pytest.raises(KeyError, match=r"im\.tl\.embed\(adata, use_rep='X_scVI'\)"):
        im.pl.integration(a)  # no X_umap
    a.obsm["X_umap"] = a.obsm["X_pca"][:, :2]
    a.uns["neighbors"] = {"params": {"use_rep": "X_pca"}}
    with pytest.raises(KeyError, match=r"computed on use_rep='X_pca'"):
        im.pl.integration(a)  # a UMAP of another representation is not shown as the integrated one
    with pytest.raises(ValueError, match="computed with batch_key='batch'"):
        im.pl.integration(stored, batch_key="cell_type")


def _deterministic_state() -> AnnData:
    """Documented fixture of the image comparison: fixed 2-D coordinates (the first two latent dimensions, no UMAP)
    and a fixed metrics table with one metric not computable (NaN, shown as 'n/a'), in the layout that
    tl.integration_metrics and tl.embed store. Drawing it involves no random layout, so the image is the same on
    any CPU."""
    a = _cells()
    a.obsm[UMAP_KEY] = np.asarray(a.obsm["X_pca"][:, :2], dtype=np.float32)
    a.obsm["X_umap"] = np.asarray(a.obsm["X_scVI"][:, :2], dtype=np.float32)
    a.uns["neighbors"] = {"params": {"use_rep": "X_scVI"}}
    cols = ["ilisi", "silhouette_batch", "clisi", "silhouette_label", "graph_connectivity"]
    m = pd.DataFrame(
        [[0.05, 0.40, 1.0, 0.80, 1.0], [0.90, 0.95, 1.0, 0.85, np.nan]],
        columns=cols,
        index=pd.Index(["X_pca (unintegrated)", "X_scVI"], name="embedding"),
    )
    a.uns["integration_metrics"] = {
        "metrics": m,
        "params": {
            "batch_key": "batch",
            "label_key": "cell_type",
            "embedding": ["X_scVI"],
            "umap_unintegrated": UMAP_KEY,
        },
    }
    return a


def test_integration_image(tmp_path):
    from matplotlib.testing.compare import compare_images

    fig = im.pl.integration(_deterministic_state())
    assert "graph conn. n/a" in fig.axes[3].get_title()
    out = tmp_path / "integration.png"
    fig.savefig(out, dpi=40)
    plt.close(fig)
    if not BASELINE.exists() or os.environ.get("IMMUNOMOOD_UPDATE_BASELINES"):
        BASELINE.parent.mkdir(parents=True, exist_ok=True)
        BASELINE.write_bytes(out.read_bytes())
        pytest.skip("baseline written")
    assert compare_images(str(BASELINE), str(out), tol=15) is None
