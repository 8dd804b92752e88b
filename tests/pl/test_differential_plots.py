import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import immunomood as im  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "tl"))
from _synth import SETS, synth_cohort  # noqa: E402

KW = dict(condition_key="condition", sample_key="donor", groupby="cell_type")
BASELINE = Path(__file__).parent / "baseline" / "volcano.png"


@pytest.fixture(scope="module")
def cohort():
    a = synth_cohort(n_donors=8, effect=1.6, seed=1)
    im.tl.differential_activity(a, gene_sets=SETS, **KW)
    return a


def test_differential_activity_plot_reads_stored(cohort):
    fig, ax = plt.subplots()
    out = im.pl.differential_activity(cohort, gene_set="setA", ax=ax)
    assert out is ax
    assert len(ax.collections) >= 4  # 2 groups x 2 conditions of donor points
    plt.close(fig)


def test_differential_activity_plot_computes_when_absent():
    a = synth_cohort(n_donors=6, seed=2)
    ax = im.pl.differential_activity(a, gene_set="setB", gene_sets=SETS, **KW)
    assert "differential_activity_scores" in a.uns
    plt.close(ax.figure)
    b = synth_cohort(n_donors=6, seed=2)
    with pytest.raises(KeyError, match="Run im.tl.differential_activity first"):
        im.pl.differential_activity(b, gene_set="setB")


def test_volcano_and_composition(cohort, tmp_path):
    from matplotlib.testing.compare import compare_images

    res = cohort.uns["differential_activity"]
    fig, ax = plt.subplots(figsize=(4, 3))
    assert im.pl.volcano(res, ax=ax, label=False) is ax
    out = tmp_path / "volcano.png"
    fig.savefig(out, dpi=40)
    plt.close(fig)
    if not BASELINE.exists():  # first run generates the committed baseline
        BASELINE.parent.mkdir(exist_ok=True)
        BASELINE.write_bytes(out.read_bytes())
    assert compare_images(str(BASELINE), str(out), tol=15) is None
    with pytest.raises(KeyError, match="pvalue"):
        im.pl.volcano(res.drop(columns="pvalue"))
    ax = im.pl.composition(cohort, sample_key="donor", condition_key="condition", groupby="cell_type")
    assert ax.get_ylabel().startswith("proportion")
    plt.close(ax.figure)
