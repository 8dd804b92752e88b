#!/usr/bin/env python
"""Build the compact blood reference that :func:`immunomood.tl.annotate` uses where a panel lacks markers.

Inputs: two real full-transcriptome PBMC data sets of the shared data directory (``IMMUNOMOOD_DATA_DIR``):

- ``combat/combat_covid_6donors.h5ad``: COMBAT consortium 2022 (Cell, DOI 10.1016/j.cell.2022.01.012), 6 donors,
  25,456 genes, raw counts (GitHub bioinfoDZ/scDAPP, ExampleData/TestCovidDataset, commit 87c9a2e; MIT / CC BY 4.0);
- ``zheng2017/zheng2017_frozen_donorA.h5ad``: Zheng et al. 2017 (Nat Commun, DOI 10.1038/ncomms14049), 10x frozen
  PBMC donor A, 13,939 genes, raw counts (MUDAN example data; 10x CC BY 4.0).

Labels are MARKER-DEFINED, not published: ``im.tl.annotate(markers="blood", reference=None)`` on each set (the full
marker panel is present), kept where its confidence is >= ``MIN_CONFIDENCE`` and, for the labels that the
reference is used to separate, where the raw counts of the deciding markers agree:

- CD4 naive T / CD4 memory T: called so, no CD8A/CD8B read; naive ones with the naive score (CCR7 SELL LEF1 TCF7
  LRRN3 NOSIP minus CCL5 NKG7 GZMK GZMH GZMA GNLY CST7, log1p CP10k) > 0, memory ones <= 0;
- CD8 naive T: any conventional T call with naive score > 0 and >= 3 CD8A + CD8B reads (``annotate`` calls most of
  these cells CD4 naive on these two sets: their coarse T sub-cluster is mostly CD4);
- CD8 memory T: called so, naive score <= 0, >= 1 CD8A/CD8B read;
- B naive: called so with IGHD or TCL1A read; B memory: called so with no IGHD read;
- every other label: the confident call.

Stored per label (labels with >= ``MIN_CELLS`` cells): the mean log1p-CP10k profile (the average over donors of
per-donor pseudobulk means, donors with >= ``MIN_CELLS_DONOR`` cells of the label) and the pooled within-donor
cell-level standard deviation; per distinction the per-gene effect size (difference of means / pooled SD) within each
source, stored only where both sources agree in sign (the smaller one): version 1.0.0 took the effects of the
pooled sources, and its CD4 vs CD8 signature was led by HLA-DPA1, HLA-DPB1, NME2 (activated CD8 T cells of the
COVID-19 donors); on kang2018 it called 24% of CD4 T cells CD8. Replicated, only CD8A, CD8B and CTSW remain. Genes:
those of both sets detected in >= 1% of the cells of some label, the ``N_GENES`` with the largest effect or
between-label spread, plus every marker gene of ``resources/markers/blood.json``.

Output (committed, derived, < 1 MB):
  src/immunomood/resources/reference/blood_reference.npz   arrays (float16 / int, compressed)
  src/immunomood/resources/reference/blood_reference.json  provenance: sources, sha256 of inputs, rules, counts,
                                                            script version, date

Usage::

    IMMUNOMOOD_DATA_DIR=/path/to/shared/data python src/immunomood/resources/build/build_annotation_reference.py
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

SCRIPT_VERSION = "1.1.0"  # 1.1.0: effects replicated across the two sources
MIN_CONFIDENCE = 0.7
MIN_CELLS = 20  # cells of a label in the reference
MIN_CELLS_DONOR = 5  # cells of a label in a donor for its pseudobulk
N_GENES = 5000
SOURCES = {
    "combat": {
        "file": "combat/combat_covid_6donors.h5ad",
        "citation": "COMBAT consortium 2022, Cell, DOI 10.1016/j.cell.2022.01.012",
        "obtained_from": "GitHub bioinfoDZ/scDAPP, ExampleData/TestCovidDataset (commit 87c9a2e)",
        "licence": "MIT (repository); COMBAT data CC BY 4.0",
    },
    "zheng2017": {
        "file": "zheng2017/zheng2017_frozen_donorA.h5ad",
        "citation": "Zheng et al. 2017, Nat Commun, DOI 10.1038/ncomms14049 (10x frozen PBMC donor A)",
        "obtained_from": "MUDAN example data",
        "licence": "10x Genomics CC BY 4.0",
    },
}
LABEL_RULES = [
    f"im.tl.annotate(markers='blood', reference=None) call with confidence >= {MIN_CONFIDENCE}",
    "naive score = mean log1p CP10k of CCR7 SELL LEF1 TCF7 LRRN3 NOSIP minus that of CCL5 NKG7 GZMK GZMH GZMA GNLY CST7",
    "CD4 naive T: called CD4 naive T, no CD8A/CD8B read, naive score > 0",
    "CD4 memory T: called CD4 memory T, no CD8A/CD8B read, naive score <= 0",
    "CD8 naive T: called CD4/CD8 naive/memory T, naive score > 0, >= 3 CD8A + CD8B reads",
    "CD8 memory T: called CD8 memory T, naive score <= 0, >= 1 CD8A/CD8B read",
    "B naive: called B naive with an IGHD or TCL1A read; B memory: called B memory without an IGHD read",
    "other labels: the confident call",
]
NAIVE = ["CCR7", "SELL", "LEF1", "TCF7", "LRRN3", "NOSIP"]
EFFECTOR = ["CCL5", "NKG7", "GZMK", "GZMH", "GZMA", "GNLY", "CST7"]
CONVENTIONAL_T = ["CD4 naive T", "CD4 memory T", "CD8 naive T", "CD8 memory T"]
#: effect sizes stored: name -> (label up, label down)
EFFECTS = {
    "CD8 vs CD4 naive": ("CD8 naive T", "CD4 naive T"),
    "CD8 vs CD4 memory": ("CD8 memory T", "CD4 memory T"),
    "B memory vs B naive": ("B memory", "B naive"),
}
#: distinctions of the marker resource the reference can resolve: its sides and the effects a gene must pass
DISTINCTIONS = {
    "CD4 vs CD8 T": {
        "up": "CD8",
        "down": "CD4",
        "effects": ["CD8 vs CD4 naive", "CD8 vs CD4 memory"],
        "note": "a gene must separate CD8 from CD4 T cells in both the naive and the memory compartment "
        "(memory genes such as CCL5 otherwise call CD4 memory cells CD8)",
    },
    "B naive vs B memory": {
        "up": "B memory",
        "down": "B naive",
        "effects": ["B memory vs B naive"],
        "note": "",
    },
}


def _counts(path: Path):
    import anndata as ad

    a = ad.read_h5ad(path)
    a.X = sparse.csr_matrix(a.X, dtype=np.float32)
    a.var_names_make_unique()
    return a


def _labels(a) -> pd.Series:
    """Marker-defined labels of one set (see the module docstring); '' = not kept."""
    import immunomood as im

    b = a.copy()
    im.tl.annotate(b, reference=None, random_state=0)
    call = b.obs["cell_type"].astype(str).to_numpy()
    conf = b.obs["cell_type_confidence"].to_numpy()
    X = a.X
    lib = np.asarray(X.sum(axis=1)).ravel()
    logn = X.multiply(1e4 / np.maximum(lib, 1)[:, None]).tocsr()
    logn.data = np.log1p(logn.data)

    def raw(g: str) -> np.ndarray:
        return np.asarray(X[:, a.var_names.get_loc(g)].todense()).ravel() if g in a.var_names else np.zeros(a.n_obs)

    def mean_log(genes: list[str]) -> np.ndarray:
        idx = [a.var_names.get_loc(g) for g in genes if g in a.var_names]
        return np.asarray(logn[:, idx].mean(axis=1)).ravel()

    naive = (mean_log(NAIVE) - mean_log(EFFECTOR)) > 0
    cd8 = raw("CD8A") + raw("CD8B")
    sure = conf >= MIN_CONFIDENCE
    lab = np.where(sure, call, "").astype(object)
    lab[np.isin(call, ["T cell", "B cell", "Monocyte", "Dendritic cell", "Unassigned"])] = ""
    t = np.isin(call, CONVENTIONAL_T)
    lab[t] = ""
    lab[sure & (call == "CD4 naive T") & (cd8 == 0) & naive] = "CD4 naive T"
    lab[sure & (call == "CD4 memory T") & (cd8 == 0) & ~naive] = "CD4 memory T"
    lab[sure & t & naive & (cd8 >= 3)] = "CD8 naive T"
    lab[sure & (call == "CD8 memory T") & (cd8 >= 1) & ~naive] = "CD8 memory T"
    bn, bm = call == "B naive", call == "B memory"
    lab[bn & ~((raw("IGHD") > 0) | (raw("TCL1A") > 0))] = ""
    lab[bm & (raw("IGHD") > 0)] = ""
    return pd.Series(lab, index=a.obs_names), logn


def _replicated_effect(stats: dict, up: str, down: str) -> np.ndarray:
    """Per-gene effect size of ``up`` vs ``down`` that replicates across the source data sets.

    The effect ((mean up - mean down) / pooled SD, SD floored at 0.1) is computed within each source that has both
    labels (profiles: the average of its donors' pseudobulks); the stored effect is the smallest one in absolute
    value when all sources agree in sign, else 0. A difference seen in one cohort only (e.g. HLA class II in the
    activated CD8 T cells of COVID-19 patients) is a state of that cohort, not of the cell type.
    """
    per_source = []
    for src in SOURCES:

        def prof(label: str, src: str = src):
            rows = [r for r in stats.get(label, []) if r[3].startswith(f"{src}:")]
            if not rows:
                return None
            mu = np.mean([r[0] for r in rows], axis=0)
            var = np.average([r[1] for r in rows], axis=0, weights=[r[2] for r in rows])
            return mu, var

        pu, pd_ = prof(up), prof(down)
        if pu is None or pd_ is None:
            continue
        per_source.append((pu[0] - pd_[0]) / np.maximum(np.sqrt((pu[1] + pd_[1]) / 2), 0.1))
    E = np.stack(per_source)
    agree = np.all(np.sign(E) == np.sign(E[0]), axis=0)
    return np.where(agree, np.sign(E[0]) * np.min(np.abs(E), axis=0), 0.0)


def build(data_dir: Path, out_dir: Path) -> dict:
    from immunomood._markers import load_markers
    from immunomood._utils import file_sha256

    sets = {k: _counts(data_dir / v["file"]) for k, v in SOURCES.items()}
    genes = sorted(set.intersection(*(set(a.var_names) for a in sets.values())))
    # per-donor pseudobulks: (label, donor) -> mean, variance (over cells), n
    stats: dict[str, list[tuple[np.ndarray, np.ndarray, int, str]]] = {}
    label_counts: dict[str, dict[str, int]] = {}
    for name, a in sets.items():
        lab, logn = _labels(a)
        logn = logn[:, [a.var_names.get_loc(g) for g in genes]].tocsr()
        donors = a.obs["donor"].astype(str).to_numpy()
        for (label, donor), grp in pd.DataFrame({"l": lab.to_numpy(), "d": donors}).groupby(["l", "d"]):
            if not label:
                continue
            label_counts.setdefault(label, {})
            label_counts[label][f"{name}:{donor}"] = len(grp)
            if len(grp) < MIN_CELLS_DONOR:
                continue
            M = logn[grp.index.to_numpy()]
            mu = np.asarray(M.mean(axis=0)).ravel()
            m2 = np.asarray(M.multiply(M).mean(axis=0)).ravel()
            stats.setdefault(label, []).append((mu, np.maximum(m2 - mu**2, 0), len(grp), f"{name}:{donor}"))
    labels = [lab for lab in stats if sum(n for *_, n, _d in stats[lab]) >= MIN_CELLS]
    from immunomood._markers import CELL_TYPES

    labels = [c for c in CELL_TYPES if c in labels]
    mean = np.stack([np.mean([s[0] for s in stats[lab]], axis=0) for lab in labels])
    var = np.stack(
        [np.average([s[1] for s in stats[lab]], axis=0, weights=[s[2] for s in stats[lab]]) for lab in labels]
    )
    sd = np.sqrt(var)
    li = {lab: i for i, lab in enumerate(labels)}
    eff = {}
    for e, (up, down) in EFFECTS.items():
        eff[e] = _replicated_effect(stats, up, down)
    # genes: the largest effects and between-label spread, plus every marker gene
    detected = mean.max(axis=0) > 0.01
    score = np.max(np.abs(np.stack(list(eff.values()))), axis=0) + mean.std(axis=0) / max(mean.std(axis=0).max(), 1e-9)
    score[~detected] = -np.inf
    keep = set(np.argsort(-score)[:N_GENES].tolist())
    res = load_markers("blood")
    marker_genes = {g for part in ("lineages", "subsets") for s in res[part] for g in s.get("positive", [])}
    keep |= {i for i, g in enumerate(genes) if g in marker_genes}
    keep = np.array(sorted(keep))
    gene_arr = np.array(genes)[keep]
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_dir / "blood_reference.npz",
        genes=gene_arr.astype("U"),
        labels=np.array(labels, dtype="U"),
        mean=mean[:, keep].astype(np.float16),
        sd=sd[:, keep].astype(np.float16),
        effect_names=np.array(list(eff), dtype="U"),
        effect=np.stack([eff[e][keep] for e in eff]).astype(np.float16),
        n_cells=np.array([sum(s[2] for s in stats[lab]) for lab in labels], dtype=np.int64),
        n_donors=np.array([len(stats[lab]) for lab in labels], dtype=np.int64),
    )
    prov = {
        "name": "blood",
        "version": SCRIPT_VERSION,
        "description": "Mean log1p-CP10k profile and within-donor SD per blood cell type, and per-gene effect sizes "
        "of the distinctions below, from marker-defined labels of two real full-transcriptome PBMC sets. Used by "
        "im.tl.annotate to resolve a distinction with an expanded signature where the panel lacks its markers.",
        "labels_are": "marker-defined (im.tl.annotate with the full 'blood' marker panel, confident cells, raw-count "
        "checks of the deciding markers), not published annotations",
        "label_rules": LABEL_RULES,
        "sources": {k: dict(v, sha256=file_sha256(data_dir / v["file"])) for k, v in SOURCES.items()},
        "script": "src/immunomood/resources/build/build_annotation_reference.py",
        "script_version": SCRIPT_VERSION,
        "built": _dt.date.today().isoformat(),
        "markers": {"name": res["name"], "version": res["version"]},
        "normalisation": "log1p of counts per 10,000 (CP10k) per cell",
        "profile": f"average over donors of per-donor pseudobulk means (donors with >= {MIN_CELLS_DONOR} cells)",
        "effect": "(mean up - mean down) / sqrt((var up + var down) / 2), SD floored at 0.1, within each source; "
        "stored: the smallest across sources when all agree in sign, else 0 (replicated in both cohorts)",
        "min_confidence": MIN_CONFIDENCE,
        "n_genes": len(gene_arr),
        "gene_selection": f"genes of both sets, mean >= 0.01 in some label; the {N_GENES} with the largest "
        "|effect| plus scaled between-label SD, plus every positive marker of markers/blood.json",
        "labels": {
            lab: {
                "n_cells": int(sum(s[2] for s in stats[lab])),
                "n_donors": len(stats[lab]),
                "cells_per_donor": label_counts[lab],
            }
            for lab in labels
        },
        "effects": {e: {"up": u, "down": d} for e, (u, d) in EFFECTS.items()},
        "distinctions": DISTINCTIONS,
    }
    (out_dir / "blood_reference.json").write_text(json.dumps(prov, indent=1) + "\n")
    return prov


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("IMMUNOMOOD_DATA_DIR", "../shared/data"))
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parents[1] / "reference"))
    a = p.parse_args()
    prov = build(Path(a.data_dir), Path(a.out_dir))
    for lab, v in prov["labels"].items():
        print(f"{lab}: {v['n_cells']} cells, {v['n_donors']} donors")
    print(f"{prov['n_genes']} genes -> {a.out_dir}")


if __name__ == "__main__":
    main()
