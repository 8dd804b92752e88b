"""Tests of im.pl.qc and im.pl.qc_report: smoke tests and image comparison at low dpi."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.testing.compare import compare_images

import immunomood as im

BASELINE = Path(__file__).parent / "baseline"


@pytest.fixture
def qc_done(tiny_counts):
    a = tiny_counts.copy()
    X = a.X.toarray()
    X[30] *= 30
    X[31, 40:42] += 200
    a.X = type(a.X)(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im.pp.qc_metrics(a, sample_key="sample")
        im.pp.flag_outliers(a, sample_key="sample")
    a.obs["predicted_doublet"] = False
    a.obs.iloc[[0, 65], a.obs.columns.get_loc("predicted_doublet")] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im.pp.filter_cells(a, min_cells_per_sample=29)
    return a


def _check_image(fig, name, tmp_path, tol=15):
    matplotlib.rcParams["svg.hashsalt"] = "0"
    actual = tmp_path / name
    fig.savefig(actual, dpi=40)
    plt.close(fig)
    expected = BASELINE / name
    if not expected.exists() or os.environ.get("IMMUNOMOOD_UPDATE_BASELINES"):  # write the baseline (commit it)
        expected.parent.mkdir(parents=True, exist_ok=True)
        expected.write_bytes(actual.read_bytes())
        pytest.skip(f"baseline {name} created")
    result = compare_images(str(expected), str(actual), tol=tol)
    assert result is None, result


def test_qc_smoke(qc_done):
    fig = im.pl.qc(qc_done, sample_key="sample")
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 4
    # thresholds drawn: 3 samples x 2 lines per metric (one collection each)
    assert all(len(ax.collections) >= 3 for ax in fig.axes)
    plt.close(fig)
    fig, ax = plt.subplots()
    out = im.pl.qc(qc_done, sample_key="sample", metrics="pct_counts_mt", ax=ax)
    assert out is fig and ax.get_title() == "pct_counts_mt"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["s1", "s2", "s3"]
    plt.close(fig)
    fig = im.pl.qc(qc_done, sample_key=None, metrics=["total_counts"])
    plt.close(fig)


def test_qc_errors(qc_done, tiny_counts):
    with pytest.raises(KeyError, match="run im.pp.qc_metrics first"):
        im.pl.qc(tiny_counts, sample_key="sample")
    with pytest.raises(KeyError, match="Available"):
        im.pl.qc(qc_done, sample_key="donor")
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="one per metric"):
        im.pl.qc(qc_done, sample_key="sample", ax=ax)
    plt.close(fig)


def test_qc_report_smoke(qc_done, tiny_counts):
    ax = im.pl.qc_report(qc_done)
    assert isinstance(ax, matplotlib.axes.Axes)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "kept" and "predicted_doublet" in labels
    # bar totals equal cells_before per sample
    rep = qc_done.uns["qc"]["report"]
    widths = np.zeros(len(rep))
    for p in ax.patches:
        widths[int(round(p.get_y() + p.get_height() / 2))] += p.get_width()
    np.testing.assert_allclose(widths, rep["cells_before"].to_numpy(float))
    plt.close(ax.figure)
    fig, ax2 = plt.subplots()
    assert im.pl.qc_report(qc_done, ax=ax2, normalize=True) is ax2
    plt.close(fig)
    with pytest.raises(KeyError, match="run im.pp.filter_cells first"):
        im.pl.qc_report(tiny_counts)


def test_qc_images(qc_done, tmp_path):
    _check_image(im.pl.qc(qc_done, sample_key="sample"), "qc_violins.png", tmp_path)
    _check_image(im.pl.qc_report(qc_done).figure, "qc_report.png", tmp_path)


def test_qc_not_measured_panel_and_labels(qc_done):
    a = qc_done.copy()
    a.obs["pct_counts_mt"] = np.nan  # e.g. a panel without mitochondrial genes
    a.obs.loc[a.obs["sample"] == "s2", "pct_counts_in_top_20_genes"] = np.nan
    fig = im.pl.qc(a, sample_key="sample")
    mt = fig.axes[3]
    assert any("not measured" in t.get_text() for t in mt.texts) and len(mt.collections) == 0
    top = fig.axes[2]
    assert [t.get_text() for t in top.texts] == ["n/a"]  # the sample without values says so
    assert all(ax.get_ylabel() and ax.get_xlabel() == "sample" for ax in fig.axes)
    plt.close(fig)
