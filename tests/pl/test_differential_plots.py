"""pl.differential_activity, pl.volcano and pl.composition: they read what tl stored or returned, name the tl call
when it is missing, label what a reader needs (padj, p-values, top hits), and an image comparison of the volcano."""

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

import immunomood as im
from immunomood.pl._base import fmt_p

sys.path.insert(0, str(Path(__file__).parents[1] / "tl"))
from _synth import SETS, synth_cohort

KW = {"condition_key": "condition", "sample_key": "donor", "groupby": "cell_type"}
BASELINE = Path(__file__).parent / "baseline" / "volcano.png"


@pytest.fixture(scope="module")
def cohort():
    """Seeded synthetic cohort (8 donors, setA planted in Mono) with the stored differential_activity results."""
    a = synth_cohort(n_donors=8, effect=1.6, seed=1)
    im.tl.differential_activity(a, gene_sets=SETS, **KW)
    return a


def test_differential_activity_plot_reads_stored(cohort):
    res = cohort.uns["differential_activity"]["results"]
    fig, ax = plt.subplots()
    out = im.pl.differential_activity(cohort, gene_set="setA", ax=ax)
    assert out is ax
    assert len(ax.collections) >= 4  # 2 groups x 2 conditions of donor points
    rows = res[res["gene_set"] == "setA"]
    texts = [t.get_text() for t in ax.texts]
    assert sorted(texts) == sorted(f"padj {fmt_p(p)}" for p in rows["padj"])
    assert ax.get_xlabel() == "cell_type" and "setA" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == list(rows["group"])
    # one point per sample: all stored scores of the set are drawn
    n_points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    scores = cohort.uns["differential_activity"]["scores"]
    assert n_points == int((scores["gene_set"] == "setA").sum())
    plt.close(fig)


def test_differential_activity_plot_computes_nothing(cohort):
    b = synth_cohort(n_donors=6, seed=2)
    uns = set(b.uns)
    with pytest.raises(KeyError, match=r"Run im\.tl\.differential_activity"):
        im.pl.differential_activity(b, gene_set="setB", **KW)
    assert set(b.uns) == uns  # nothing was computed or written
    with pytest.raises(ValueError, match="computed with groupby='cell_type'"):
        im.pl.differential_activity(cohort, gene_set="setA", groupby="donor")
    with pytest.raises(KeyError, match="Available"):
        im.pl.differential_activity(cohort, gene_set="nope")


def test_differential_activity_plot_reads_previous_layout(cohort):
    """An h5ad written before the one-result convention (sibling keys key, key_scores, key_params) still plots,
    with the same points and texts."""
    old = cohort.copy()
    st = old.uns.pop("differential_activity")
    old.uns["differential_activity"] = st["results"]
    old.uns["differential_activity_scores"] = st["scores"]
    old.uns["differential_activity_params"] = st["params"]
    new_ax = im.pl.differential_activity(cohort, gene_set="setA")
    old_ax = im.pl.differential_activity(old, gene_set="setA")
    assert [t.get_text() for t in old_ax.texts] == [t.get_text() for t in new_ax.texts]
    assert old_ax.get_title() == new_ax.get_title()
    for c_old, c_new in zip(old_ax.collections, new_ax.collections):
        np.testing.assert_array_equal(c_old.get_offsets(), c_new.get_offsets())
    plt.close("all")


def test_volcano_reads_stored_table(cohort):
    res = cohort.uns["differential_activity"]["results"]
    ax = im.pl.volcano(cohort, n_labels=3)
    ref = im.pl.volcano(res, n_labels=3)
    assert [t.get_text() for t in ax.texts] == [t.get_text() for t in ref.texts]
    plt.close("all")
    b = synth_cohort(n_donors=6, seed=2)
    with pytest.raises(KeyError, match=r"im\.tl\.differential_expression"):
        im.pl.volcano(b, key="differential_expression")


def test_differential_activity_untested_group_says_so(cohort):
    a = cohort.copy()
    sc = a.uns["differential_activity"]["scores"]
    a.uns["differential_activity"]["scores"] = sc[sc["group"] != "T"].copy()
    res = a.uns["differential_activity"]["results"].copy()
    res.loc[res["group"] == "T", ["padj", "pvalue"]] = np.nan
    res.loc[res["group"] == "T", "reason"] = "3 samples (need 4)"
    a.uns["differential_activity"]["results"] = res
    ax = im.pl.differential_activity(a, gene_set="setA")
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("not tested") and "need 4" in t for t in texts)
    assert "T" in [t.get_text() for t in ax.get_xticklabels()]  # the group is shown, not dropped
    plt.close(ax.figure)


def test_volcano_names_top_hits(cohort):
    res = cohort.uns["differential_activity"]["results"]
    fig, ax = plt.subplots()
    assert im.pl.volcano(res, ax=ax, n_labels=3) is ax
    texts = [t.get_text() for t in ax.texts]
    top = res.dropna(subset=["pvalue"]).sort_values("pvalue").head(3)
    assert sorted(texts) == sorted(f"{g} | {s}" for g, s in zip(top["group"], top["gene_set"]))
    assert ax.get_xlabel().startswith("effect") and ax.get_ylabel() == "-log10 p-value"
    if (res["padj"] < 0.05).any():  # the FDR line sits at the largest p-value that passes
        thr = -np.log10(res.loc[res["padj"] < 0.05, "pvalue"].max())
        assert any(np.allclose(line.get_ydata(), thr) for line in ax.lines)
    plt.close(fig)
    ax = im.pl.volcano(res, label=False)
    assert len(ax.texts) == 0
    plt.close(ax.figure)
    with pytest.raises(KeyError, match="pvalue"):
        im.pl.volcano(res.drop(columns="pvalue"))
    with pytest.raises(ValueError, match="n_labels"):
        im.pl.volcano(res, n_labels=-1)


def test_volcano_label_heights_never_overlap():
    from immunomood.pl._differential import _spread

    pos = np.array([0.9, 0.91, 0.5, 0.505, 0.0, 0.01, 0.02])
    out = _spread(pos, gap=0.05)
    assert np.all(np.diff(np.sort(out)) >= 0.05 - 1e-12)
    assert np.array_equal(np.argsort(-out, kind="stable"), np.argsort(-pos, kind="stable"))  # order kept
    assert out.min() >= 0.03 and out.max() <= 0.97
    assert _spread(np.array([0.2, 0.6]), gap=0.05).tolist() == [0.2, 0.6]  # apart already: unchanged


def test_volcano_untested_rows_and_empty():
    r = pd.DataFrame(
        {
            "group": ["a", "b", "c"],
            "gene_set": ["s"] * 3,
            "effect": [1.0, np.nan, -0.5],
            "pvalue": [0.01, np.nan, 0.2],
            "padj": [0.02, np.nan, 0.2],
        }
    )
    ax = im.pl.volcano(r)
    assert "1 rows not tested" in ax.get_title() and sum(len(c.get_offsets()) for c in ax.collections) == 2
    plt.close(ax.figure)
    ax = im.pl.volcano(r.assign(pvalue=np.nan))
    assert any("no test with a p-value" in t.get_text() for t in ax.texts)  # not an empty panel
    plt.close(ax.figure)


def test_volcano_image(cohort, tmp_path):
    from matplotlib.testing.compare import compare_images

    res = cohort.uns["differential_activity"]["results"]
    fig, ax = plt.subplots(figsize=(4, 3))
    im.pl.volcano(res, ax=ax, label=False)
    out = tmp_path / "volcano.png"
    fig.savefig(out, dpi=40)
    plt.close(fig)
    if not BASELINE.exists() or os.environ.get("IMMUNOMOOD_UPDATE_BASELINES"):
        BASELINE.parent.mkdir(exist_ok=True)
        BASELINE.write_bytes(out.read_bytes())
        pytest.skip("baseline written")
    assert compare_images(str(BASELINE), str(out), tol=15) is None


def test_composition_shows_p_values(cohort):
    comp = im.tl.composition(cohort, sample_key="donor", condition_key="condition", groupby="cell_type")
    fig, ax = plt.subplots()
    out = im.pl.composition(
        cohort, sample_key="donor", condition_key="condition", groupby="cell_type", result=comp, ax=ax
    )
    assert out is ax
    texts = [t.get_text() for t in ax.texts]
    assert sorted(texts) == sorted(f"p {fmt_p(p)}\npadj {fmt_p(q)}" for p, q in zip(comp["pvalue"], comp["padj"]))
    assert ax.get_ylabel().startswith("proportion") and ax.get_xlabel() == "cell_type"
    # one point per sample and cell type, and each sample's proportions sum to 1
    n_points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    assert n_points == cohort.obs["donor"].nunique() * cohort.obs["cell_type"].nunique()
    plt.close(fig)
    ax = im.pl.composition(cohort, sample_key="donor", condition_key="condition", groupby="cell_type")
    # tl.composition stored its result in uns: the plot reads it without result=
    assert sorted(t.get_text() for t in ax.texts) == sorted(texts)
    plt.close(ax.figure)
    bare = cohort.copy()
    del bare.uns["composition"]
    ax = im.pl.composition(bare, sample_key="donor", condition_key="condition", groupby="cell_type")
    assert "im.tl.composition" in ax.get_title() and len(ax.texts) == 0
    plt.close(ax.figure)
    with pytest.raises(KeyError, match="lacks the columns"):
        im.pl.composition(cohort, result=comp.drop(columns="padj"), **KW)
    with pytest.raises(ValueError, match="none of which"):
        im.pl.composition(cohort, result=comp.assign(group="x"), **KW)


# ---------------------------------------------------------------------------------------- clinical designs
@pytest.fixture(scope="module")
def design_cohort():
    """synth_cohort with a seeded continuous score per donor and a third group (cases split in two)."""
    a = synth_cohort(n_donors=12, effect=1.6, seed=4)
    rng = np.random.default_rng(7)
    donors = a.obs["donor"].cat.categories
    score = dict(zip(donors, rng.normal(20, 5, size=len(donors)).round(1)))
    a.obs["score"] = a.obs["donor"].map(score).astype(float)
    three = {
        d: ("control" if c == "control" else ("MDD" if i % 2 else "BD"))
        for i, (d, c) in enumerate(a.obs.groupby("donor", observed=True)["condition"].first().items())
    }
    a.obs["group3"] = pd.Categorical(a.obs["donor"].map(three).astype(str), categories=["control", "MDD", "BD"])
    return a


def test_differential_activity_plot_continuous_draws_score_vs_value(design_cohort):
    a = design_cohort.copy()
    res = im.tl.differential_activity(
        a, design="~ score + age", test="score", method="score", gene_sets=SETS, sample_key="donor", groupby="cell_type"
    )
    uns_before = set(a.uns)
    fig, ax = plt.subplots()
    assert im.pl.differential_activity(a, gene_set="setA", ax=ax) is ax
    assert set(a.uns) == uns_before  # a reader: nothing computed or written
    assert "score" in ax.get_xlabel()
    scores = a.uns["differential_activity"]["scores"]
    sa = scores[scores["gene_set"] == "setA"]
    offsets = np.vstack([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    assert len(offsets) == len(sa)
    # x is the donor's score, not a category position
    donor_score = a.obs.groupby("donor", observed=True)["score"].first()
    assert np.allclose(np.sort(offsets[:, 0]), np.sort(donor_score.reindex(sa["sample"]).to_numpy()))
    # one line per tested group, its slope the stored effect per unit
    rows = res[res["gene_set"] == "setA"].set_index("group")
    assert len(ax.lines) == rows["effect"].notna().sum()
    slopes = sorted(np.diff(line.get_ydata())[0] / np.diff(line.get_xdata())[0] for line in ax.lines)
    assert np.allclose(slopes, sorted(rows["effect"].dropna()))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert all("/unit, padj" in t for t in labels)
    plt.close(fig)


def test_differential_activity_plot_three_levels_in_design_order(design_cohort):
    a = design_cohort.copy()
    im.tl.differential_activity(
        a,
        design="~ group3",
        contrast=[("group3", "MDD", "control"), ("group3", "BD", "control")],
        gene_sets=SETS,
        sample_key="donor",
        groupby="cell_type",
    )
    ax = im.pl.differential_activity(a, gene_set="setA")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["control", "MDD", "BD"]  # the design's order (reference first), not alphabetical
    texts = [t.get_text() for t in ax.texts]
    assert all(t.splitlines()[0].startswith("MDD: padj") and t.splitlines()[1].startswith("BD: padj") for t in texts)
    assert "MDD, BD vs control" in ax.get_title()
    assert len(texts) == 2  # one per cell type
    plt.close(ax.figure)
    res = a.uns["differential_activity"]["results"]
    ax = im.pl.volcano(res, contrast="group3: BD vs control", n_labels=2)
    n = sum(len(c.get_offsets()) for c in ax.collections)
    assert n == int((res["contrast"] == "group3: BD vs control").sum()) and "BD vs control" in ax.get_title()
    plt.close(ax.figure)
    ax = im.pl.volcano(res, n_labels=2)  # both blocks: each label names its contrast
    assert all(t.get_text().split(" | ")[-1].startswith("group3:") for t in ax.texts)
    plt.close(ax.figure)
    with pytest.raises(KeyError, match="Available"):
        im.pl.volcano(res, contrast="group3: X vs control")
