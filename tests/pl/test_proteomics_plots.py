"""pl.cross_modal (heatmap) and pl.biomarker_roc (mean out-of-fold ROC): smoke tests and image comparison."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import immunomood as im

BASELINE = Path(__file__).parent / "baseline" / "cross_modal.png"


@pytest.fixture(scope="module")
def mdata():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, p = im.datasets.simulate_cohort(n_donors=16, n_cells_per_donor=80, n_genes=1500, random_state=0)
        dv = im.tl.donor_view(a, sample_key="donor", groupby="cell_type_true")
    return im.tl.join_proteomics(dv, p)


def _fixed_result() -> pd.DataFrame:
    """A small deterministic association table (independent of the simulator, for the image comparison)."""
    rng = np.random.default_rng(0)
    rows = [f"Classical monocyte|set{i}" for i in range(4)]
    cols = ["C5", "DCLK3", "CALY", "CRP", "IL6"]
    est = rng.uniform(-0.9, 0.9, size=(4, 5))
    padj = np.where(np.abs(est) > 0.6, 0.001, np.where(np.abs(est) > 0.4, 0.03, 0.5))
    return pd.DataFrame(
        {
            "rna_feature": np.repeat(rows, 5),
            "protein": np.tile(cols, 4),
            "estimate": est.ravel(),
            "pvalue": padj.ravel() / 10,
            "padj": padj.ravel(),
            "n": 16,
        }
    )


def test_cross_modal_from_result_and_mdata(mdata):
    res = im.tl.cross_modal_associations(mdata, rna_features="Classical monocyte")
    fig, ax = plt.subplots()
    out = im.pl.cross_modal(res, ax=ax, max_cols=8)
    assert out is ax and ax.get_xlabel() == "protein"
    assert len(ax.get_xticklabels()) == 8
    plt.close(fig)
    # a MuData: only a stored table is read, no test is computed inside the plot
    bare = mdata.copy()
    bare.uns.pop("cross_modal_associations", None)
    with pytest.raises(KeyError, match=r"im\.tl\.cross_modal_associations"):
        im.pl.cross_modal(bare)
    m2 = mdata.copy()
    for stored in ({"params": {}, "results": res}, res):  # the one-result convention, and the bare table before it
        m2.uns["cross_modal_associations"] = stored
        ax2 = im.pl.cross_modal(m2, rna_features="Classical monocyte", proteins=["C5", "DCLK3", "CALY"])
        assert {t.get_text() for t in ax2.get_xticklabels()} == {"C5", "DCLK3", "CALY"}
        plt.close(ax2.figure)
    with pytest.raises(TypeError, match="must be a DataFrame"):
        im.pl.cross_modal(np.zeros(3))
    with pytest.raises(ValueError, match="lacks the columns"):
        im.pl.cross_modal(pd.DataFrame({"a": [1]}))


def test_cross_modal_marks():
    res = _fixed_result()
    ax = im.pl.cross_modal(res, alpha=0.05)
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("**") == int((res["padj"] < 0.005).sum())
    assert texts.count("*") == int(((res["padj"] < 0.05) & (res["padj"] >= 0.005)).sum())
    plt.close(ax.figure)


def test_cross_modal_image(tmp_path):
    from matplotlib.testing.compare import compare_images

    fig, ax = plt.subplots(figsize=(5, 3))
    im.pl.cross_modal(_fixed_result(), ax=ax)
    out = tmp_path / "cross_modal.png"
    fig.savefig(out, dpi=40)
    plt.close(fig)
    if not BASELINE.exists() or os.environ.get("IMMUNOMOOD_UPDATE_BASELINES"):
        BASELINE.parent.mkdir(exist_ok=True)
        BASELINE.write_bytes(out.read_bytes())
        pytest.skip("baseline written")
    assert compare_images(str(BASELINE), str(out), tol=5) is None


def test_biomarker_roc(mdata):
    r = im.tl.biomarker_panel(mdata, condition_key="condition", features=["DCLK3", "CALY"], n_repeats=3)
    fig, ax = plt.subplots()
    out = im.pl.biomarker_roc(r, ax=ax)
    assert out is ax
    assert len(ax.lines) == 3 + 2  # one curve per repeat, the mean, the chance line
    assert f"AUC {r.auc:.2f}" in ax.get_legend().get_texts()[0].get_text()
    mean = ax.lines[-2].get_ydata()
    assert mean[0] == 0 and mean[-1] == 1 and np.all(np.diff(mean) >= -1e-12)
    plt.close(fig)
    ax2 = im.pl.biomarker_roc(r, show_repeats=False)
    assert len(ax2.lines) == 2
    plt.close(ax2.figure)
    with pytest.raises(TypeError, match="biomarker_panel"):
        im.pl.biomarker_roc(pd.DataFrame())
