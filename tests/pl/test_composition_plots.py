"""pl.composition with study designs: every level of the condition is drawn, the p-values of one contrast are
shown (chosen by `contrast`), and the result stored by tl.composition is found in adata.uns."""

import matplotlib

matplotlib.use("Agg")
import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

import immunomood as im
from immunomood.pl._base import fmt_p


def _three_arms(seed=0, n=12):
    rng = np.random.default_rng(seed)
    alpha = np.array([30, 20, 10, 5.0]) * 3
    rows = []
    for d in range(n):
        arm = "ABC"[d % 3]
        c = rng.multinomial(rng.integers(150, 300), rng.dirichlet(alpha * ([2.0, 1, 1, 1] if arm == "C" else 1)))
        rows += [(f"d{d}", arm, f"t{k}") for k in range(len(c)) for _ in range(c[k])]
    obs = pd.DataFrame(rows, columns=["donor", "arm", "ct"])
    obs.index = obs.index.astype(str)
    obs["arm"] = pd.Categorical(obs["arm"], categories=["A", "B", "C"])
    return ad.AnnData(np.zeros((len(obs), 1), dtype=np.float32), obs=obs)


def _texts(ax):
    return sorted(t.get_text() for t in ax.texts)


def test_three_levels_contrast_selected_and_stored():
    a = _three_arms()
    res = im.tl.composition(a, sample_key="donor", groupby="ct", design="~ arm")
    kw = {"sample_key": "donor", "condition_key": "arm", "groupby": "ct"}
    ax = im.pl.composition(a, **kw)  # reads adata.uns["composition"]["results"]: first contrast
    first = res[res.contrast == "arm: B vs A"]
    assert _texts(ax) == sorted(f"p {fmt_p(p)}\npadj {fmt_p(q)}" for p, q in zip(first["pvalue"], first["padj"]))
    assert "arm: B vs A" in ax.get_title()
    n_points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    assert n_points == 12 * 4  # every sample of every level (3 levels) and type
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["A (4 samples)", "B (4 samples)", "C (4 samples)"]
    plt.close(ax.figure)
    fig, ax = plt.subplots()
    out = im.pl.composition(a, result=res, contrast="arm: C vs B", reference="B", ax=ax, **kw)
    assert out is ax
    cb = res[res.contrast == "arm: C vs B"]
    assert _texts(ax) == sorted(f"p {fmt_p(p)}\npadj {fmt_p(q)}" for p, q in zip(cb["pvalue"], cb["padj"]))
    assert next(t.get_text() for t in ax.get_legend().get_texts()).startswith("B ")
    plt.close(fig)
    with pytest.raises(ValueError, match=r"contrast='arm: D vs A' is not in the result.*arm: B vs A"):
        im.pl.composition(a, result=res, contrast="arm: D vs A", **kw)
    with pytest.raises(ValueError, match="reference='Z' is not a level"):
        im.pl.composition(a, result=res, reference="Z", **kw)
