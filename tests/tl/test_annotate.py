"""Tests for im.tl.annotate: synthetic truth, exact keys, errors, real pbmc3k against Seurat labels."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import immunomood as im
from immunomood.tl._annotate import CELL_TYPES, LABELS, LINEAGE_CALLS, LINEAGES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers shared with the benchmarks
from _label_maps import SEURAT_FINE, SEURAT_LIN, csle_azimuth

TYPES = {
    "CD4 naive T": ["CD3D", "CD3E", "CD2", "CCR7", "SELL", "LEF1", "TCF7", "CD4", "MAL", "LRRN3", "IL7R"],
    "CD8 memory T": ["CD3D", "CD3E", "CD2", "CD8A", "CD8B", "GZMK", "CCL5", "NKG7", "GZMH"],
    "NK": ["GNLY", "NKG7", "KLRD1", "KLRF1", "PRF1", "FCER1G", "TYROBP"],
    "B naive": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "IGHD", "IGHM", "TCL1A", "HLA-DRA", "CD74"],
    "Classical monocyte": ["CD14", "LYZ", "S100A8", "S100A9", "VCAN", "FCN1", "CST3", "CSF1R", "HLA-DRA", "CD74"],
    "Neutrophil": ["CSF3R", "FCGR3B", "CXCR2", "CXCR1", "FPR1", "S100A8", "S100A9", "MNDA", "MMP9", "G0S2"],
}
# Both subsets of each split lineage present and every split's markers measured (what annotate needs to call
# subsets; TYPES above stays as the fixed stored state of the plot tests in tests/pl/test_annotate_plots.py)
TYPES_SPLIT = {
    **TYPES,
    "CD8 memory T": TYPES["CD8 memory T"] + ["S100A4", "ANXA1", "IL32", "VIM", "AHNAK"],
    "B memory": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "CD27", "AIM2", "TNFRSF13B", "IGHA1", "HLA-DRA", "CD74"],
    "Non-classical monocyte": [
        "FCGR3A",
        "MS4A7",
        "CDKN1C",
        "LST1",
        "C1QA",
        "CX3CR1",
        "RHOC",
        "CST3",
        "CSF1R",
        "HLA-DRA",
        "CD74",
    ],
}
LIN = {
    "CD4 naive T": "T cell",
    "CD8 memory T": "T cell",
    "NK": "NK cell",
    "B naive": "B cell",
    "B memory": "B cell",
    "Classical monocyte": "Monocyte",
    "Non-classical monocyte": "Monocyte",
    "Neutrophil": "Neutrophil",
}


def _distinction_genes() -> list[str]:
    res = json.loads(resources.files("immunomood").joinpath("resources", "markers", "blood.json").read_text())
    return sorted({g for d in res["distinctions"] for v in d["sides"].values() for g in v})


def _simulate(n_per_type: int = 60, seed: int = 0, *, split: bool = False) -> ad.AnnData:
    """Types with their markers up (``TYPES``). ``split=True``: ``TYPES_SPLIT``, and the panel also measures (at
    background level) every gene that the resource's distinctions need, as a real transcriptome does, so that
    every split is resolvable."""
    rng = np.random.default_rng(seed)
    types = TYPES_SPLIT if split else TYPES
    markers = sorted({g for v in types.values() for g in v})
    if split:
        markers += [g for g in _distinction_genes() if g not in markers]
    genes = markers + [f"BG{i}" for i in range(200)]
    base = rng.gamma(0.6, 0.5, size=len(genes))
    rows, truth = [], []
    for t, ms in types.items():
        mu = np.tile(base, (n_per_type, 1))
        mu[:, [genes.index(g) for g in ms]] += 6.0
        # a type-specific background program so that clusters form
        prog = rng.choice(np.arange(len(markers), len(genes)), size=20, replace=False)
        mu[:, prog] += 3.0
        rows.append(rng.poisson(mu * rng.uniform(0.6, 1.4, size=(n_per_type, 1))))
        truth += [t] * n_per_type
    X = np.vstack(rows).astype(np.float32)
    obs = pd.DataFrame({"truth": truth}, index=[f"c{i}" for i in range(len(truth))])
    return ad.AnnData(sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture(scope="module")
def sim():
    return _simulate(split=True)


def test_resource_versioned_with_sources():
    res = json.loads(resources.files("immunomood").joinpath("resources", "markers", "blood.json").read_text())
    assert res["name"] == "blood" and res["version"]
    for s in res["lineages"] + res["subsets"] + res["polarization"]:
        assert s["source"] and s["positive"]
    assert {s["label"] for s in res["lineages"]} == set(LINEAGES) - {"Unassigned"}
    assert {s["label"] for s in res["subsets"]} == set(CELL_TYPES) - {"Unassigned"}


def test_simulated_truth_and_keys(sim):
    a = sim.copy()
    X_before = a.X.copy()
    im.tl.annotate(a)
    assert (a.X != X_before).nnz == 0  # caller's counts untouched
    lin = a.obs["cell_lineage"].astype(str)
    truth_lin = a.obs["truth"].map(LIN)
    assert (lin == truth_lin).mean() >= 0.95
    fine = a.obs["cell_type"].astype(str)
    assert (fine == a.obs["truth"]).mean() >= 0.85
    # exact keys and vocabularies
    assert list(a.obs["cell_lineage"].cat.categories) == list(LINEAGES)
    assert list(a.obs["cell_type"].cat.categories) == list(LABELS)
    assert set(LABELS) == set(CELL_TYPES) | set(LINEAGE_CALLS) and set(LINEAGE_CALLS) <= set(LINEAGES)
    # every split is measured in this panel: no lineage-level call, no reason for assigned cells
    assert not a.obs["cell_type"].isin(LINEAGE_CALLS).any()
    assigned = (a.obs["cell_lineage"] != "Unassigned").to_numpy()
    assert (a.obs["cell_type_reason"].astype(str).to_numpy()[assigned] == "").all()
    assert a.uns["cell_type"]["coverage"]["supported"].all()
    conf = a.obs["cell_type_confidence"]
    assert conf.between(0, 1).all()
    u = a.uns["cell_type"]
    assert u["markers"] == {"name": "blood", "version": u["markers"]["version"]}
    assert {"params", "markers", "markers_used", "cluster_label_counts", "n_clusters", "coverage"} <= set(u)
    assert set(a.obs.columns) == {"truth", "cell_lineage", "cell_type", "cell_type_confidence", "cell_type_reason"}
    assert u["cluster_label_counts"].to_numpy().sum() == a.n_obs
    assert u["params"]["input"].startswith("raw counts")

    # conventional T labels are decided by CD8A/CD8B and the naive / memory axes: those are the genes reported
    assert u["markers_used"]["CD8 memory T"][:2] == ["CD8A", "CD8B"]
    assert "CCR7" in u["markers_used"]["CD4 naive T"] and u["n_t_subclusters"] >= 1
    pol = a.obsm["cd4_polarization"]
    assert list(pol.columns) == ["Th1", "Th2", "Th17", "Tfh"]
    cd4 = a.obs["cell_type"].isin(["CD4 naive T", "CD4 memory T", "Treg"]).to_numpy()
    assert pol.loc[~cd4].isna().all().all()


def test_key_added_derives_every_key():
    """A non-default key_added renames every written key (no fixed "cell_lineage"); the calls are the same, and
    every tuning constant is recorded with its current value."""
    from immunomood.tl._annotate import _constants as const

    a = _simulate(n_per_type=40, seed=3, split=True)
    b = a.copy()
    im.tl.annotate(a)
    im.tl.annotate(b, key_added="ct2")
    assert set(b.obs.columns) == {"truth", "ct2_lineage", "ct2", "ct2_confidence", "ct2_reason"}
    assert set(b.obsm) == {"ct2_cd4_polarization"} and set(b.uns) == {"ct2"}
    assert (b.obs["ct2_lineage"] == a.obs["cell_lineage"]).all() and (b.obs["ct2"] == a.obs["cell_type"]).all()
    assert np.array_equal(b.obs["ct2_confidence"], a.obs["cell_type_confidence"])
    pd.testing.assert_frame_equal(b.obsm["ct2_cd4_polarization"], a.obsm["cd4_polarization"])
    p = b.uns["ct2"]["params"]
    assert (p["lineage_key"], p["polarization_key"]) == ("ct2_lineage", "ct2_cd4_polarization")
    assert a.uns["cell_type"]["params"]["lineage_key"] == "cell_lineage"
    rec = p["constants"]
    assert len(rec) == len(const.TUNING) >= 24
    for name in const.TUNING:
        v = getattr(const, name)
        assert rec[name.lstrip("_").lower()] == (list(v) if isinstance(v, tuple) else v), name
    assert rec["n_neighbors"] == p["n_neighbors"] and rec["resolution"] == p["leiden_resolution"]


def test_large_input_sketch_and_transfer(sim, monkeypatch):
    """Above _SKETCH_CELLS cells a random sketch is annotated in full and the other cells learn from it."""
    import immunomood.tl._annotate._constants as const

    monkeypatch.setattr(const, "_SKETCH_CELLS", 300)
    monkeypatch.setattr(const, "_N_TRAIN", 250)
    a = sim.copy()
    im.tl.annotate(a)
    p = a.uns["cell_type"]["params"]
    assert p["n_cells_annotated_in_full"] == 300 and p["n_cells_transferred"] == a.n_obs - 300
    lin = a.obs["cell_lineage"].astype(str)
    assigned = lin != "Unassigned"
    assert (lin == a.obs["truth"].map(LIN))[assigned].mean() >= 0.98
    assert (a.obs["cell_type"].astype(str) == a.obs["truth"])[assigned].mean() >= 0.95
    # measured: lineage 0.99 on the sketch, 1.00 on the transferred cells; Unassigned 1.5% when all cells are
    # annotated in full (a 300-cell sketch has small clusters, so the bound is looser)
    assert 1 - assigned.mean() <= 0.05
    assert a.obs["cell_type_confidence"].between(0, 1).all()
    res = json.loads(resources.files("immunomood").joinpath("resources", "markers", "blood.json").read_text())
    lineage_of = {s["label"]: s["lineage"] for s in res["subsets"]} | {"Unassigned": "Unassigned"}
    assert (a.obs["cell_type"].astype(str).map(lineage_of) == a.obs["cell_lineage"].astype(str)).all()
    pol = a.obsm["cd4_polarization"]
    cd4 = a.obs["cell_type"].isin(["CD4 naive T", "CD4 memory T", "Treg"]).to_numpy()
    assert pol.loc[~cd4].isna().all().all() and pol.loc[cd4].notna().any().any()


def test_fine_agrees_with_lineage(sim):
    a = sim.copy()
    im.tl.annotate(a)
    res = json.loads(resources.files("immunomood").joinpath("resources", "markers", "blood.json").read_text())
    lineage_of = {s["label"]: s["lineage"] for s in res["subsets"]} | {"Unassigned": "Unassigned"}
    assert (a.obs["cell_type"].astype(str).map(lineage_of) == a.obs["cell_lineage"].astype(str)).all()


def test_lognormalised_and_ensembl_give_same_labels(sim):
    a = sim.copy()
    im.tl.annotate(a)
    b = sim.copy()
    b.X = b.X.multiply(1e4 / b.X.sum(axis=1)).tocsr()
    b.X.data = np.log1p(b.X.data)
    im.tl.annotate(b)
    assert b.uns["cell_type"]["params"]["input"] == "log-normalised"
    assert (a.obs["cell_type"] == b.obs["cell_type"]).mean() >= 0.98
    c = sim.copy()
    c.var["gene_symbols"] = c.var_names
    c.var_names = [f"ENSG{i:011d}" for i in range(c.n_vars)]
    im.tl.annotate(c)
    assert (a.obs["cell_type"].to_numpy() == c.obs["cell_type"].to_numpy()).all()


def test_groupby_and_use_rep(sim):
    a = sim.copy()
    a.obs["clusters"] = a.obs["truth"].astype("category")
    im.tl.annotate(a, groupby="clusters", key_added="ct")
    assert (a.obs["ct"].astype(str) == a.obs["truth"]).mean() >= 0.9
    assert set(a.uns["ct"]["cluster_label_counts"].index) == set(a.obs["truth"])
    b = sim.copy()
    rng = np.random.default_rng(1)
    onehot = pd.get_dummies(b.obs["truth"]).to_numpy(float)
    b.obsm["X_emb"] = onehot + rng.normal(0, 0.05, onehot.shape)
    im.tl.annotate(b, use_rep="X_emb")
    assert (b.obs["cell_lineage"].astype(str) == b.obs["truth"].map(LIN)).mean() >= 0.95


def test_min_confidence_one_unassigns(sim):
    a = sim.copy()
    im.tl.annotate(a, min_confidence=1.0)
    assert (a.obs["cell_lineage"] == "Unassigned").mean() > 0.5
    assert ((a.obs["cell_lineage"] == "Unassigned") == (a.obs["cell_type"] == "Unassigned")).all()


def test_errors(sim):
    a = sim.copy()
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    with pytest.raises(ValueError, match="No marker genes.*saw Ensembl IDs"):
        im.tl.annotate(a)
    with pytest.raises(ValueError, match="at least 20 cells"):
        im.tl.annotate(sim[:10].copy())
    with pytest.raises(KeyError, match="not found in adata.obs"):
        im.tl.annotate(sim.copy(), groupby="nope")
    with pytest.raises(KeyError, match="use_rep"):
        im.tl.annotate(sim.copy(), use_rep="X_nope")
    with pytest.raises(ValueError, match="view"):
        im.tl.annotate(sim[:100])
    with pytest.raises(ValueError, match="Unknown marker resource"):
        im.tl.annotate(sim.copy(), markers="liver")


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pbmc3k_annotated(data_dir):
    import scanpy as sc

    d = data_dir / "pbmc3k"
    a = sc.read_10x_mtx(d / "filtered_gene_bc_matrices" / "hg19", var_names="gene_symbols")
    lab = pd.read_csv(d / "pbmc3k_seurat_annotations.csv", index_col=0).iloc[:, 0]
    a.obs["seurat"] = lab.reindex(a.obs_names).to_numpy()
    im.tl.annotate(a)
    return a


def test_pbmc3k_against_seurat(pbmc3k_annotated):
    a = pbmc3k_annotated
    o = a.obs[a.obs["seurat"].notna()]
    fine, s = o["cell_type"].astype(str), o["seurat"].astype(str)
    ok = np.array([f in SEURAT_FINE[t] for f, t in zip(fine, s)])
    assigned = (fine != "Unassigned").to_numpy()
    lineage_acc = (o["cell_lineage"].astype(str).to_numpy() == s.map(SEURAT_LIN).to_numpy()).mean()
    assert lineage_acc >= 0.95
    assert 1 - assigned.mean() <= 0.05
    # Issue targets reached: measured 0.904 on 2,631 assigned cells (lineage 0.989, Unassigned 0.3%). The margin
    # is thin: the remaining errors are the naive/memory CD4 continuum (~150 cells) and low-UMI cells Seurat put
    # in "Naive CD4 T" that express CCL5/NKG7/GZMK and cluster with CD8 effector cells (~70). Thread scheduling
    # of the parallel kNN search moves it by about +-0.002 between runs, so the guard sits just below the target
    # (0.895) to keep CI deterministic; the measured figure is what the notes report.
    assert ok[assigned].mean() >= 0.895
    # confidence for correctness: AUROC 0.837 (0.761 before the kNN-agreement factor; issue target 0.8)
    conf = o["cell_type_confidence"].to_numpy()
    assert _auroc(ok[assigned], conf[assigned]) >= 0.8
    hi = assigned & (conf >= 0.8)
    assert ok[hi].mean() > ok[assigned & ~hi].mean() + 0.15  # measured 0.96 vs 0.70
    assert ok[hi].mean() >= 0.92
    # calibrated without labels (Platt on the calls' cross-validated agreement): mean confidence 0.867 against
    # accuracy 0.904; expected calibration error 0.045 (0.235 before calibration)
    assert abs(conf[assigned].mean() - ok[assigned].mean()) <= 0.06
    assert _ece(ok[assigned], conf[assigned]) <= 0.08
    cal = a.uns["cell_type"]["params"]["calibration"]
    assert cal["slope"] > 0 and 0.7 <= cal["cv_agreement"] <= 1 and cal["n_cells"] >= 2000
    # CD4 vs CD8 is decided per T sub-cluster: Seurat's CD8 T cells are called CD8 (or MAIT / gamma-delta)
    cd8 = (s == "CD8 T").to_numpy() & assigned
    assert np.isin(fine[cd8], list(SEURAT_FINE["CD8 T"])).mean() >= 0.85


def _ece(correct: np.ndarray, conf: np.ndarray) -> float:
    """Expected calibration error: |accuracy - mean confidence| over ten equal-width bins, weighted by size."""
    b = np.clip((conf * 10).astype(int), 0, 9)
    return float(sum(abs(correct[b == k].mean() - conf[b == k].mean()) * (b == k).mean() for k in np.unique(b)))


def _auroc(correct: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(correct, score))


KANG_LIN = {
    "CD14+ Monocytes": "Monocyte",
    "FCGR3A+ Monocytes": "Monocyte",
    "CD4 T cells": "T cell",
    "CD8 T cells": "T cell",
    "B cells": "B cell",
}
KANG_FINE = {
    "CD14+ Monocytes": {"Classical monocyte", "Intermediate monocyte"},
    "FCGR3A+ Monocytes": {"Non-classical monocyte", "Intermediate monocyte"},
}


@pytest.fixture(scope="module")
def kang2018(data_dir):
    path = data_dir / "kang2018" / "kang2018_2donors_ctrl_stim.h5ad"
    if not path.exists():
        pytest.skip("kang2018 not available")
    a = ad.read_h5ad(path)
    a.var_names = a.var["ENSEMBL"].astype(str).to_numpy()
    return a


def test_kang2018_few_genes_ensembl(kang2018):
    """1,267 genes, Ensembl IDs with a SYMBOL column, control + IFN-beta stimulated cells.

    The panel has CD8A but not CD8B, and no B naive marker (IGHD, IGHM, TCL1A, FCER2, IL4R): T and B cells stop
    at their lineage with the missing markers as reason. Monocytes are resolved (CD14+ -> classical or
    intermediate, FCGR3A+ -> non-classical or intermediate). Measured: lineage 0.973 on assigned, Unassigned
    3.3%, monocyte fine 0.93, lineage-level calls 58% (all T and B cells: whole marker families missing).
    """
    a = kang2018.copy()
    im.tl.annotate(a, reference=None)  # markers only (the reference path: tests/tl/test_annotate_reference.py)
    lin = a.obs["cell_lineage"].astype(str)
    fine = a.obs["cell_type"].astype(str)
    reason = a.obs["cell_type_reason"].astype(str)
    assigned = lin != "Unassigned"
    assert 1 - assigned.mean() <= 0.05
    # NK cells are not a label of this reference (they sit in its "CD8 T cells"), so NK calls there are fine
    agree = (lin == a.obs["cluster_id"].astype(str).map(KANG_LIN)) | (
        (lin == "NK cell") & (a.obs["cluster_id"] == "CD8 T cells")
    )
    assert agree[assigned].mean() >= 0.97
    for t in ("FCGR3A+ Monocytes", "CD14+ Monocytes", "B cells"):
        m = (a.obs["cluster_id"] == t).to_numpy()
        assert (lin[m] == "Unassigned").mean() <= 0.06, t
    cov = a.uns["cell_type"]["coverage"].set_index("distinction")
    assert not cov.loc["CD4 vs CD8 T", "supported"] and not cov.loc["B naive vs B memory", "supported"]
    assert cov.loc["classical vs non-classical monocyte", "supported"]
    # CD8 T cells are not called CD4 subsets: T cells stop at "T cell" (exactly the cell_lineage name), with why
    cd8 = (a.obs["cluster_id"] == "CD8 T cells").to_numpy()
    assert not fine[cd8].isin(["CD4 naive T", "CD4 memory T", "Treg"]).any()
    t_call = (lin == "T cell").to_numpy()
    assert (fine[t_call] == "T cell").all()
    assert reason[t_call].str.contains("CD4 vs CD8 T not resolvable").all()
    assert reason[t_call].str.contains("CD8B").all()
    b_call = (lin == "B cell").to_numpy()
    assert (fine[b_call] == "B cell").all() and reason[b_call].str.contains("IGHD").all()
    # monocytes: fine labels where the panel resolves them
    mono = a.obs["cluster_id"].isin(list(KANG_FINE)).to_numpy() & (lin == "Monocyte").to_numpy()
    ok = np.array([f in KANG_FINE[t] for f, t in zip(fine[mono], a.obs["cluster_id"].astype(str)[mono])])
    assert ok.mean() >= 0.90  # measured 0.93
    # confidence for correctness over all assigned cells (lineage-level calls judged on their lineage; the
    # reference's "CD8 T cells" hold its NK cells): AUROC 0.814 (0.784 before the kNN-agreement factor)
    fine_ok = {
        **KANG_FINE,
        "CD4 T cells": {"CD4 naive T", "CD4 memory T", "Treg"},
        "CD8 T cells": {"CD8 naive T", "CD8 memory T", "MAIT", "gamma-delta T", "NK"},
        "B cells": {"B naive", "B memory", "Plasmablast"},
    }
    truth = a.obs["cluster_id"].astype(str)
    level = fine.isin(LINEAGE_CALLS).to_numpy()
    correct = np.where(level, agree.to_numpy(), [f in fine_ok[t] for f, t in zip(fine, truth)])
    assert _auroc(correct[assigned.to_numpy()], a.obs["cell_type_confidence"].to_numpy()[assigned.to_numpy()]) >= 0.8


def test_kang2018_without_cd8_genes(kang2018):
    """The 8-donor panel of issue 15 lacks CD8A and CD8B: reasons name both, no CD4/CD8 subset is guessed."""
    symbols = kang2018.var["SYMBOL"].astype(str)
    a = kang2018[:, ~symbols.isin(["CD8A", "CD8B"]).to_numpy()].copy()
    im.tl.annotate(a)
    fine = a.obs["cell_type"].astype(str)
    assert not fine.isin(["CD4 naive T", "CD4 memory T", "Treg", "CD8 naive T", "CD8 memory T"]).any()
    t_call = (a.obs["cell_lineage"] == "T cell").to_numpy()
    assert t_call.sum() >= 500
    assert (fine[t_call] == "T cell").all()
    assert a.obs["cell_type_reason"].astype(str)[t_call].str.contains("0 of CD8A, CD8B").all()


def test_onek1k_real_donors(data_dir):
    """OneK1K, 40 donors, 1,000 eQTL genes (no CD14, MS4A1, CCR7), labels monoc/mononc/bmem/cd4nc.

    Mapping: monoc -> classical (or intermediate), mononc -> non-classical (or intermediate), cd4nc -> CD4
    naive or memory (the label is naive + central memory), bmem -> B cell lineage. The panel has one B memory
    marker (AIM2): B cells stop at "B cell". Measured: lineage 0.995, fine 0.963 on fine calls, Unassigned
    0.7%, AUROC of confidence for correctness 0.890 (0.762 before the kNN-agreement factor: the Treg calls
    among cd4nc, counted wrong here as OneK1K has no Treg label, sit on the edge of their neighbourhood).
    """
    path = data_dir / "onek1k" / "onek1k_40donors_4types.h5ad"
    if not path.exists():
        pytest.skip("onek1k not available")
    a = ad.read_h5ad(path)
    truth = a.obs["cell_type"].astype(str).to_numpy()  # the published labels (annotate writes its own there)
    im.tl.annotate(a, reference=None)  # markers only (the reference path: tests/tl/test_annotate_reference.py)
    lin_map = {"monoc": "Monocyte", "mononc": "Monocyte", "bmem": "B cell", "cd4nc": "T cell"}
    fine_map = {
        "monoc": {"Classical monocyte", "Intermediate monocyte"},
        "mononc": {"Non-classical monocyte", "Intermediate monocyte"},
        "cd4nc": {"CD4 naive T", "CD4 memory T"},
        "bmem": set(),
    }
    lin = a.obs["cell_lineage"].astype(str).to_numpy()
    fine = a.obs["cell_type"].astype(str).to_numpy()
    assigned = lin != "Unassigned"
    lin_ok = lin == np.array([lin_map[x] for x in truth])
    assert 1 - assigned.mean() <= 0.05
    assert lin_ok[assigned].mean() >= 0.97
    lineage_level = np.isin(fine, LINEAGE_CALLS)
    fine_ok = np.array([f in fine_map[x] for f, x in zip(fine, truth)])
    called = assigned & ~lineage_level
    assert fine_ok[called].mean() >= 0.93
    b = lin == "B cell"
    assert (fine[b] == "B cell").all()
    assert a.obs["cell_type_reason"].astype(str)[b].str.contains("AIM2").all()
    correct = np.where(lineage_level, lin_ok, fine_ok)[assigned]
    assert _auroc(correct, a.obs["cell_type_confidence"].to_numpy()[assigned]) >= 0.85


def test_csle_real_donors(data_dir):
    """cSLE, 44 donors, 1,503 genes, Azimuth level-3 labels of B / CD4 memory / Treg compartments.

    Mapping: B naive* -> B naive; B memory* -> B memory; B intermediate* -> B naive or B memory (Azimuth's
    intermediate B sit between both); CD4 TCM*/TEM* -> CD4 memory T; CD4 Naive -> CD4 naive T; Treg* -> Treg;
    CD8 TEM -> CD8 memory T; gdT -> gamma-delta T; MAIT -> MAIT; dnT -> no fine label; ILC -> NK cell lineage.
    Measured: lineage 0.996, fine 0.809 (target 0.93 not reached: Azimuth CD4 TCM_1 cells called CD4 naive,
    TCM_2 called Treg), Unassigned 3.6% (9.1% before the Erythrocyte negatives: ambient haemoglobin), AUROC 0.862
    (0.835 before the kNN-agreement factor).
    """
    path = data_dir / "csle" / "csle_44donors_B_CD4mem_Treg.h5ad"
    if not path.exists():
        pytest.skip("csle not available")
    a = ad.read_h5ad(path)
    im.tl.annotate(a)
    truth = a.obs["azimuth_l3"].astype(str).to_numpy()
    m = [csle_azimuth(t) for t in truth]
    lin = a.obs["cell_lineage"].astype(str).to_numpy()
    fine = a.obs["cell_type"].astype(str).to_numpy()
    assigned = lin != "Unassigned"
    lin_ok = lin == np.array([x[1] for x in m])
    fine_ok = np.array([f in x[0] for f, x in zip(fine, m)])
    assert lin_ok[assigned].mean() >= 0.97
    assert not np.isin(fine, LINEAGE_CALLS).any()  # every distinction is measured in this panel
    assert fine_ok[assigned].mean() >= 0.78
    assert 1 - assigned.mean() <= 0.05
    assert _auroc(fine_ok[assigned], a.obs["cell_type_confidence"].to_numpy()[assigned]) >= 0.8


def _otsu(x: np.ndarray) -> float:
    """Threshold maximising the between-class variance (Otsu) of one protein's log1p counts."""
    best, thr = -1.0, float(np.min(x))
    for t in np.unique(x)[1:]:
        lo, hi = x[x < t], x[x >= t]
        w = len(lo) * len(hi) * (lo.mean() - hi.mean()) ** 2
        if w > best:
            best, thr = w, float(t)
    return thr


@pytest.fixture(scope="module")
def citeseq_annotated(data_dir):
    """10x PBMC 5k CITE-seq, 200 cells: protein-defined truth by Otsu gates on log1p antibody counts.

    T = CD3+ CD19- CD14-; CD4 T = CD4+ CD8a-, CD8 T = CD8a+ CD4-; naive = CD45RA+ CD45RO-, memory = CD45RO+
    CD45RA-; monocytes = CD14+ (or CD16+ HLA-DR+ CD56-), CD3- CD19-: classical CD14+ CD16-, non-classical CD16+
    CD14-, intermediate both; B = CD19+ or CD20+ (CD3- CD14-); NK = CD56+ CD3- CD14- CD19-; cells in no gate
    are left out of the scores.
    """
    path = data_dir / "citeseq" / "pbmc5k_cite_200cells.h5ad"
    if not path.exists():
        pytest.skip("citeseq not available")
    a = ad.read_h5ad(path)
    names = [n.split("_")[0] for n in a.uns["protein_names"]]
    prot = pd.DataFrame(np.log1p(np.asarray(a.obsm["protein_expression"], float)), columns=names, index=a.obs_names)
    pos = pd.DataFrame({c: prot[c] >= _otsu(prot[c].to_numpy()) for c in prot.columns})
    truth = pd.Series("", index=a.obs_names, dtype=object)
    t = pos["CD3"] & ~pos["CD19"] & ~pos["CD14"]
    naive, mem = pos["CD45RA"] & ~pos["CD45RO"], pos["CD45RO"] & ~pos["CD45RA"]
    cd4, cd8 = t & pos["CD4"] & ~pos["CD8a"], t & pos["CD8a"] & ~pos["CD4"]
    truth[cd4 & naive], truth[cd4 & mem] = "CD4 naive T", "CD4 memory T"
    truth[cd8 & naive], truth[cd8 & mem] = "CD8 naive T", "CD8 memory T"
    m = (pos["CD14"] | (pos["CD16"] & pos["HLA-DR"] & ~pos["CD56"])) & ~pos["CD3"] & ~pos["CD19"]
    truth[m & pos["CD14"] & ~pos["CD16"]] = "Classical monocyte"
    truth[m & pos["CD16"] & ~pos["CD14"]] = "Non-classical monocyte"
    truth[m & pos["CD16"] & pos["CD14"]] = "Intermediate monocyte"
    truth[(pos["CD19"] | pos["CD20"]) & ~pos["CD3"] & ~pos["CD14"]] = "B"
    truth[pos["CD56"] & ~pos["CD3"] & ~pos["CD14"] & ~pos["CD19"]] = "NK"
    a.obs["protein_truth"] = truth.to_numpy()
    im.tl.annotate(a)
    return a


CITE_LIN = {
    "CD4 naive T": "T cell",
    "CD4 memory T": "T cell",
    "CD8 naive T": "T cell",
    "CD8 memory T": "T cell",
    "Classical monocyte": "Monocyte",
    "Non-classical monocyte": "Monocyte",
    "Intermediate monocyte": "Monocyte",
    "B": "B cell",
    "NK": "NK cell",
}


def test_citeseq_protein_truth(citeseq_annotated):
    """Measured on 178 gated, assigned cells: lineage 0.994; CD4 naive 38/39; classical monocyte 50/55; NK 12/12."""
    a = citeseq_annotated
    o = a.obs[a.obs["protein_truth"] != ""]
    lin, fine, t = (o[c].astype(str).to_numpy() for c in ("cell_lineage", "cell_type", "protein_truth"))
    assigned = lin != "Unassigned"
    assert assigned.mean() >= 0.95
    assert (lin == pd.Series(t).map(CITE_LIN).to_numpy())[assigned].mean() >= 0.97
    assert (fine[t == "CD4 naive T"] == "CD4 naive T").mean() >= 0.9
    mono = np.isin(t, ["Classical monocyte", "Non-classical monocyte"]) & assigned
    assert (fine[mono] == t[mono]).mean() >= 0.85
    assert (fine[t == "NK"] == "NK").mean() >= 0.9


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known failure (issue 15): 26 of 41 protein CD4+ CD8a- CD45RO+ T cells (GZMK+ CCL5+ effector memory, no CD8A "
        "or CD8B read) sit in a T sub-cluster called CD8 and are called CD8 memory T: the sub-cluster prior (odds "
        "300) outweighs their own CD8A/CD8B absence. The mixture's own prior instead was tried: pbmc3k fine fell to "
        "0.863; sub-clusters of an unscaled T-cell graph for every decision call none of them CD8 but 8 of the 12 "
        "protein CD8 T cells CD4 and lower pbmc3k fine to 0.893; letting clearly CD4 sub-clusters of that graph "
        "override left 24 of them CD8."
    ),
)
def test_citeseq_cd4_memory_not_called_cd8(citeseq_annotated):
    a = citeseq_annotated
    m = (a.obs["protein_truth"] == "CD4 memory T").to_numpy()
    assert (~a.obs["cell_type"].astype(str)[m].isin(["CD8 naive T", "CD8 memory T"])).mean() >= 0.9


def test_set_scores_scale_with_markers_present():
    """A lineage with one marker in the data cannot reach the score of a set whose three markers agree."""
    from immunomood.tl._annotate._scoring import _set_scores

    Z = np.ones((4, 4), dtype=np.float32)
    col = {"A": 0, "B": 1, "C": 2, "HBB": 3}
    sets = [{"label": "x", "positive": ["A", "B", "C"]}, {"label": "ery", "positive": ["HBB", "HBA1", "HBA2"]}]
    S, used = _set_scores(Z, col, sets, min_markers=3)
    assert np.allclose(S[:, 0], 1.0) and np.allclose(S[:, 1], 1 / 3)
    assert used["ery"] == ["HBB"]


def test_neighbour_agreement_hand_computed():
    """Share of the row-normalised neighbourhood (self included) with the cell's own label."""
    from immunomood.tl._annotate._graph import _neighbour_agreement, _row_normalised

    # path graph 0-1-2-3 with unit connectivities; labels a a b b
    C = sparse.csr_matrix(np.array([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]], dtype=float))
    got = _neighbour_agreement(np.array(["a", "a", "b", "b"]), _row_normalised(C))
    assert np.allclose(got, [1.0, 2 / 3, 2 / 3, 1.0])


def test_calibration_on_cross_validated_agreement():
    """Two overlapping populations: the Platt map is increasing and its mean matches the CV agreement rate."""
    from immunomood.tl._annotate._calibration import _calibration, _platt

    rng = np.random.default_rng(0)
    n = 600
    y = np.repeat(["A", "B"], n // 2)
    E = rng.normal(size=(n, 6)).astype(np.float32)
    E[y == "B", :3] += 1.0  # overlapping classes: some calls are not reproducible from the features
    margin = np.abs(E[:, :3].mean(axis=1) - 0.5)
    raw = 1 / (1 + np.exp(-4 * margin))  # a raw confidence that grows with the distance from the boundary
    out = {"fine": y.astype(object), "unassigned": np.zeros(n, dtype=bool), "confidence": raw}
    cal = _calibration(out, E, rng.normal(size=(n, 2)), 0)
    assert cal["n_cells"] == n and 0.6 < cal["cv_agreement"] < 0.99
    assert cal["slope"] > 0
    assert abs(_platt(raw, cal["slope"], cal["intercept"]).mean() - cal["cv_agreement"]) < 0.01
    # perfectly reproducible calls: nothing to calibrate on
    E2 = E.copy()
    E2[y == "B", :3] += 20.0
    assert _calibration(out, E2, rng.normal(size=(n, 2)), 0)["slope"] == 0.0


def test_calibration_keeps_the_ranking(pbmc3k_annotated, monkeypatch):
    """Platt scaling moves the confidence values but not their order (pbmc3k: raw vs calibrated, same run)."""
    from scipy.stats import spearmanr

    import immunomood.tl._annotate._core as mod  # annotate looks _calibration up here

    seen = {}
    original = mod._calibration

    def spy(out, *args, **kw):
        seen["raw"] = np.asarray(out["confidence"], dtype=float).copy()
        seen["cal"] = original(out, *args, **kw)
        return seen["cal"]

    monkeypatch.setattr(mod, "_calibration", spy)
    a0 = pbmc3k_annotated
    b = ad.AnnData(a0.X.copy(), obs=pd.DataFrame(index=a0.obs_names), var=pd.DataFrame(index=a0.var_names))
    im.tl.annotate(b)
    cal = seen["cal"]
    assert cal["slope"] > 0 and b.uns["cell_type"]["params"]["calibration"] == cal
    m = (b.obs["cell_lineage"] != "Unassigned").to_numpy()
    raw, calibrated = seen["raw"][m], b.obs["cell_type_confidence"].to_numpy()[m]
    assert np.allclose(calibrated, mod._platt(raw, cal["slope"], cal["intercept"]))
    assert spearmanr(raw, calibrated).statistic > 0.999
    assert not np.allclose(raw, calibrated)


def test_cd8_posterior_mixture_model():
    """Per-cluster CD8 fraction recovered from detection rates; cells follow their cluster unless ambiguous."""
    from immunomood.tl._annotate._tcell import _cd8_posterior

    rng = np.random.default_rng(0)
    fracs = [0.0, 0.0, 0.1, 1.0, 0.9]  # CD4 clusters, CD4 cluster with a few CD8, CD8 clusters
    p8, p4 = np.array([0.6, 0.5]), np.array([0.05, 0.08])
    codes, is8, D = [], [], []
    for k, f in enumerate(fracs):
        n = 400
        t = rng.random(n) < f
        rate = np.where(t[:, None], p8, p4)
        D.append(rng.random((n, 2)) < rate)
        codes += [k] * n
        is8.append(t)
    D, codes, is8 = np.vstack(D), np.array(codes), np.concatenate(is8)
    post, pi = _cd8_posterior(D, codes)
    for k, f in enumerate(fracs):
        assert abs(pi[codes == k][0] - f) < 0.12, (k, pi[codes == k][0], f)
    call = post >= 0.5
    assert (call == (pd.Series(fracs)[codes].to_numpy() >= 0.5)).mean() >= 0.99  # the cluster decides
    assert ((post > 0) & (post < 1)).all()


def test_pbmc3k_synthetic_neutrophils(pbmc3k_annotated):
    """PBMC has no neutrophils; add neutrophil-like cells and check only they are called Neutrophil."""
    a0 = pbmc3k_annotated
    assert (a0.obs["cell_lineage"] == "Neutrophil").mean() < 0.01
    import scanpy as sc  # noqa: F401

    rng = np.random.default_rng(0)
    X = a0.X.tocsr()
    mono = np.flatnonzero((a0.obs["cell_lineage"] == "Monocyte").to_numpy())[:150]
    base = X[mono].toarray()
    names = pd.Index(a0.var_names)
    for g in ["HLA-DRA", "HLA-DRB1", "HLA-DPA1", "HLA-DPB1", "CD74", "CD14", "CST3", "LYZ", "VCAN", "CSF1R"]:
        base[:, names.get_loc(g)] = rng.binomial(base[:, names.get_loc(g)].astype(int), 0.05)
    for g, lam in {
        "CSF3R": 4,
        "FCGR3B": 6,
        "CXCR2": 4,
        "FPR1": 3,
        "S100A8": 30,
        "S100A9": 40,
        "MNDA": 3,
        "CXCR1": 2,
        "G0S2": 3,
        "MMP9": 2,
    }.items():
        base[:, names.get_loc(g)] = rng.poisson(lam, size=len(mono))
    neu = ad.AnnData(sparse.csr_matrix(base.astype(np.float32)), var=a0.var.copy())
    neu.obs_names = [f"neu{i}" for i in range(len(mono))]
    b = ad.concat([ad.AnnData(X, obs=pd.DataFrame(index=a0.obs_names), var=a0.var.copy()), neu], merge="same")
    im.tl.annotate(b)
    is_neu = b.obs_names.str.startswith("neu")
    assert (b.obs["cell_lineage"][is_neu] == "Neutrophil").mean() >= 0.9
    assert (b.obs["cell_lineage"][~is_neu] == "Neutrophil").mean() < 0.01


_HASH_SCRIPT = """
import sys, hashlib
sys.path.insert(0, {tests!r})
import numpy as np
import immunomood as im
from test_annotate import _simulate
a = _simulate(n_per_type=40, seed=3, split=True)
im.tl.annotate(a)
h = hashlib.sha1()
h.update("|".join(a.obs["cell_type"].astype(str)).encode())
h.update("|".join(a.obs["cell_lineage"].astype(str)).encode())
h.update(np.round(a.obs["cell_type_confidence"].to_numpy(), 12).tobytes())
print("RESULT", h.hexdigest())
"""


def test_independent_of_python_hash_seed():
    """Labels and confidences do not depend on the iteration order of sets/dicts (PYTHONHASHSEED)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = _HASH_SCRIPT.format(tests=str(Path(__file__).parent))
    out = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run(
            [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr[-2000:]
        out.append([line for line in r.stdout.splitlines() if line.startswith("RESULT")][-1])
    assert out[0] == out[1]
