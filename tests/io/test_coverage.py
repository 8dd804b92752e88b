"""gene_coverage: which markers, subsets and gene sets a gene panel can resolve."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import immunomood as im
from immunomood.tl._annotate import load_markers


def _panel(genes, ensembl=False):
    X = sparse.csr_matrix(np.ones((3, len(genes)), dtype=np.float32))
    if ensembl:
        var = pd.DataFrame({"gene_symbols": genes}, index=[f"ENSG{i:011d}" for i in range(len(genes))])
    else:
        var = pd.DataFrame(index=genes)
    return ad.AnnData(X, var=var)


def test_lineage_needs_three_markers_and_gates():
    res = load_markers("blood")
    t = next(s for s in res["lineages"] if s["label"] == "T cell")
    two = _panel(t["positive"][:2] + ["ACTB"])
    tab = im.io.gene_coverage(two, gene_sets="complement", inplace=False)
    row = tab[(tab["kind"] == "lineage") & (tab["name"] == "T cell")].iloc[0]
    assert row["n_found"] == 2 and not row["resolvable"]
    assert set(row["missing"].split(";")) == set(t["positive"][2:])
    three = _panel(t["positive"][:3])
    tab3 = im.io.gene_coverage(three, gene_sets="complement", inplace=False)
    assert tab3.loc[(tab3["kind"] == "lineage") & (tab3["name"] == "T cell"), "resolvable"].item()
    # MAIT needs one of its gated genes
    mait = next(s for s in res["subsets"] if s["label"] == "MAIT")
    other = [g for g in mait["positive"] if g not in mait["require"]]
    tm = im.io.gene_coverage(_panel(other), gene_sets="complement", inplace=False)
    assert not tm.loc[tm["name"] == "MAIT", "resolvable"].item()
    tm = im.io.gene_coverage(_panel(other + [mait["require"][0]]), gene_sets="complement", inplace=False)
    assert tm.loc[tm["name"] == "MAIT", "resolvable"].item()


def test_gene_sets_fraction_ensembl_and_inplace():
    sets = im.tl.gene_sets("complement")
    name, genes = next(iter(sets.items()))
    half = genes[: int(np.ceil(len(genes) / 2))]
    a = _panel(half + ["ACTB"], ensembl=True)
    assert im.io.gene_coverage(a, markers=None, gene_sets="complement") is None
    tab = a.uns["gene_coverage"]
    assert list(tab.columns) == [
        "resource",
        "kind",
        "name",
        "n_genes",
        "n_found",
        "fraction",
        "resolvable",
        "rule",
        "missing",
    ]
    row = tab[tab["name"] == name].iloc[0]
    assert row["n_found"] == len(half) and row["resolvable"] and row["resource"] == "gene_sets:complement"
    tab = im.io.gene_coverage(a, markers=None, gene_sets="complement", min_fraction=1.0, inplace=False)
    assert not tab.loc[tab["name"] == name, "resolvable"].item()
    # lower-case symbols still match (case-insensitive, as the scoring functions)
    b = _panel([g.lower() for g in half])
    assert im.io.gene_coverage(b, markers=None, gene_sets={"s": genes}, inplace=False)["n_found"].item() == len(half)
    with pytest.raises(KeyError, match="Unknown gene-set collection 'nope'"):
        im.io.gene_coverage(a, gene_sets="nope")
    with pytest.raises(ValueError, match="min_fraction"):
        im.io.gene_coverage(a, min_fraction=2)


@pytest.mark.realdata
def test_real_panels(data_dir):
    combat = ad.read_h5ad(data_dir / "combat" / "combat_covid_6donors.h5ad", backed="r")
    full = im.io.gene_coverage(ad.AnnData(var=combat.var.copy(), obs=pd.DataFrame(index=[])), inplace=False)
    lin = full[full["kind"] == "lineage"]
    assert lin["resolvable"].all(), lin
    onek = ad.read_h5ad(data_dir / "onek1k" / "onek1k_40donors_4types.h5ad", backed="r")
    sub = im.io.gene_coverage(ad.AnnData(var=onek.var.copy(), obs=pd.DataFrame(index=[])), inplace=False)
    # the 1,000 eQTL genes lack CD14, MS4A1 and CCR7 (data README): reported missing where they are markers
    cm = sub[(sub["kind"] == "subset") & (sub["name"] == "Classical monocyte")].iloc[0]
    assert "CD14" in cm["missing"].split(";")
    measured = set(onek.var_names.str.upper())
    for (
        _,
        r,
    ) in sub.iterrows():  # n_found = the set's genes among the measured genes, counted here independently
        missing = [g for g in r["missing"].split(";") if g]
        assert all(g.upper() not in measured for g in missing)
        assert r["n_found"] == r["n_genes"] - len(missing)
    assert sub["fraction"].mean() < full["fraction"].mean()
