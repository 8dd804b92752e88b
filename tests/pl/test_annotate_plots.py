"""Smoke and image tests for im.pl.annotation / annotation_confidence."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import importlib.util

import matplotlib.pyplot as plt
import pytest
from matplotlib.testing.compare import compare_images

import immunomood as im

_spec = importlib.util.spec_from_file_location("_ann_tl", Path(__file__).parents[1] / "tl" / "test_annotate.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
_simulate = _mod._simulate
TYPES = _mod.TYPES

BASELINE = Path(__file__).parent / "baseline"


@pytest.fixture(scope="module")
def annotated():
    """Documented deterministic fixture: seeded simulated counts (tests/tl/test_annotate.py::_simulate) with the
    keys im.tl.annotate stores written directly (true labels, seeded confidences, the markers used), so the plots
    are tested on a fixed stored state (the clustering inside tl.annotate is not part of the compared image; it is
    tested in tests/tl/test_annotate.py)."""
    import numpy as np
    import pandas as pd

    from immunomood.tl._annotate import CELL_TYPES

    a = _simulate(n_per_type=30)
    a.obs["cell_type"] = pd.Categorical(a.obs["truth"], categories=list(CELL_TYPES))
    rng = np.random.default_rng(0)
    a.obs["cell_type_confidence"] = rng.beta(5, 2, size=a.n_obs)
    a.uns["cell_type"] = {"markers_used": {k: list(v) for k, v in TYPES.items()}}
    return a


def test_annotation_dotplot(annotated):
    dp = im.pl.annotation(annotated)
    axes = dp.get_axes()
    assert "mainplot_ax" in axes
    labels = [t.get_text() for t in axes["mainplot_ax"].get_xticklabels()]
    used = annotated.uns["cell_type"]["markers_used"]
    assert used["CD4 naive T"][0] in labels and len(labels) >= 8
    plt.close("all")
    fig, ax = plt.subplots()
    im.pl.annotation(annotated, ax=ax)
    plt.close("all")


def test_annotation_confidence(annotated, tmp_path):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    out = im.pl.annotation_confidence(annotated, ax=ax)
    assert out is ax
    assert len(ax.get_xticklabels()) == annotated.obs["cell_type"].nunique()
    assert ax.get_xlabel() and ax.get_ylabel()
    fig.tight_layout()
    actual = tmp_path / "annotation_confidence.png"
    fig.savefig(actual, dpi=40)
    plt.close(fig)
    expected = BASELINE / "annotation_confidence.png"
    if not expected.exists() or os.environ.get("IMMUNOMOOD_UPDATE_BASELINES"):  # (re)generate the baseline
        expected.write_bytes(actual.read_bytes())
        pytest.skip("baseline generated")
    assert compare_images(str(expected), str(actual), tol=15) is None


def test_requires_annotation():
    a = _simulate(n_per_type=5)
    with pytest.raises(KeyError, match="Run `im.tl.annotate"):
        im.pl.annotation_confidence(a)
