#!/usr/bin/env python
"""Build the compact expression reference used by ``im.datasets.simulate_cohort``.

Reads the real 10x pbmc3k raw counts and the published Seurat tutorial labels, splits the nine coarse
labels into the fine cell types of the annotation vocabulary with marker genes, and stores, per fine type,
the mean normalised expression profile (proportions summing to 1), typical library sizes and the base
composition, plus a gene-wise negative-binomial dispersion estimate.

Output (committed, derived, < 2 MB):
  src/immunomood/resources/sim_reference.npz   arrays (float32, compressed)
  src/immunomood/resources/sim_reference.json  provenance: inputs + sha256, rules, counts, script version, date

Usage::

    python src/immunomood/resources/build/build_sim_reference.py [--data-dir /path/to/shared/data] [--out-dir src/immunomood/resources]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from immunomood._utils import file_sha256

SCRIPT_VERSION = "1.0.0"
MIN_CELLS_DETECTED = 3
PROFILE_PSEUDOCELLS = 0.5  # shrink each type's profile towards the global one by this many "cells"
MIN_MAIT_CELLS = 15

# fine type -> lineage, in the order they are stored
LINEAGE = {
    "CD4 naive T": "T cell",
    "CD4 memory T": "T cell",
    "Treg": "T cell",
    "CD8 naive T": "T cell",
    "CD8 memory T": "T cell",
    "MAIT": "T cell",
    "NK": "NK cell",
    "B naive": "B cell",
    "B memory": "B cell",
    "Classical monocyte": "Monocyte",
    "Intermediate monocyte": "Monocyte",
    "Non-classical monocyte": "Monocyte",
    "cDC": "Dendritic cell",
    "pDC": "Dendritic cell",
    "Platelet": "Platelet",
}

# genes kept whatever their detection rate (from GENESETS_AND_MARKERS.md)
MARKERS = """
CCR7 SELL LEF1 TCF7 CD4 IL7R MAL ITGB1 LTB AQP3 GZMK KLRB1 CCL5 GZMH FGFBP2 GNLY NKG7 FOXP3 IL2RA CTLA4 RTKN2
TIGIT IKZF2 FCRL3 TBX21 CXCR3 IFNG RORC CCR6 IL23R GATA3 PTGDR2 CCR4 IL17RB CXCR5 PDCD1 ICOS CD8A CD8B LINC02446
CRTAM GZMB CX3CR1 SLC4A10 TRAV1-2 ZBTB16 NCR3 TRDC TRGC1 TRGC2 TRDV2 TRGV9 MKI67 TOP2A TYMS CD14 LYZ S100A8 S100A9
S100A12 VCAN FCN1 FCGR3A MS4A7 CDKN1C LST1 C1QA HLA-DRA HLA-DRB1 HLA-DPA1 HLA-DPB1 CD74 CLEC9A XCR1 CADM1 CD1C
FCER1A CLEC10A LILRA4 IL3RA PLD4 CSF3R FCGR3B CXCR2 CXCR1 FPR1 MNDA KLRD1 KLRF1 PRF1 NCAM1 XCL1 KLRC1 SPINK2 MS4A1
CD79A CD79B IGHD IGHM TCL1A CD27 MZB1 JCHAIN XBP1 PPBP PF4 GP9 HBB HBA1 HBA2 FCER2 CD3E CD3D CD19
""".split()
COMPLEMENT = """
C1QA C1QB C1QC C1R C1S C2 C4A C4B MBL2 FCN1 FCN2 FCN3 COLEC10 COLEC11 MASP1 MASP2 C3 CFB CFD CFP C5 C6 C7 C8A C8B
C8G C9 C3AR1 C5AR1 C5AR2 CR1 CR2 ITGAM ITGB2 ITGAX VSIG4 C1QBP CD93 CD46 CD55 CD59 CFH CFHR1 CFHR2 CFHR3 CFHR4
CFHR5 CFI C4BPA C4BPB SERPING1 CLU VTN CPN1 CPN2 CPB2
""".split()
KYNURENINE = "IDO1 IDO2 TDO2 AFMID KMO KYNU HAAO ACMSD QPRT KYAT1 AADAT KYAT3 SLC7A5 SLC3A2 SLC36A4".split()
INTERFERON_SETS = (
    "MSigDB_v7.4_HALLMARK_INTERFERON_ALPHA_RESPONSE",
    "MSigDB_v7.4_HALLMARK_INTERFERON_GAMMA_RESPONSE",
)


def read_pbmc3k(data_dir: Path):
    import scanpy as sc

    mtx_dir = data_dir / "pbmc3k" / "filtered_gene_bc_matrices" / "hg19"
    adata = sc.read_10x_mtx(mtx_dir, var_names="gene_symbols", make_unique=False)
    adata.var_names_make_unique(join=".")  # the R way: PNRC2, PNRC2.1
    labels = pd.read_csv(data_dir / "pbmc3k" / "pbmc3k_seurat_annotations.csv", index_col=0).iloc[:, 0]
    if not adata.obs_names.isin(labels.index).any():  # barcodes without the '-1' suffix
        labels.index = labels.index.astype(str) + "-1"
    adata.obs["seurat_label"] = labels.reindex(adata.obs_names).values
    inputs = [
        mtx_dir / "matrix.mtx",
        mtx_dir / "genes.tsv",
        mtx_dir / "barcodes.tsv",
        data_dir / "pbmc3k" / "pbmc3k_seurat_annotations.csv",
    ]
    return adata, inputs


def fine_labels(adata) -> tuple[pd.Series, dict]:
    """Split the coarse Seurat labels into fine types with marker-gene rules (documented in the JSON)."""
    X = adata.X.tocsr().astype(np.float64)
    lib = np.asarray(X.sum(1)).ravel()
    lognorm = sparse.diags(1e4 / lib) @ X
    lognorm.data = np.log1p(lognorm.data)
    lognorm = lognorm.tocsc()
    names = adata.var_names

    def g(name: str) -> np.ndarray:
        if name not in names:
            return np.zeros(adata.n_obs)
        return np.asarray(lognorm[:, names.get_loc(name)].todense()).ravel()

    def pos(*genes: str) -> np.ndarray:
        return sum((g(x) > 0).astype(int) for x in genes)

    coarse = adata.obs["seurat_label"].astype(object).values
    fine = np.full(adata.n_obs, None, dtype=object)
    fine[coarse == "Naive CD4 T"] = "CD4 naive T"
    fine[coarse == "NK"] = "NK"
    fine[coarse == "Platelet"] = "Platelet"

    mem4 = coarse == "Memory CD4 T"
    treg = mem4 & ((g("FOXP3") > 0) | (pos("IL2RA", "CTLA4", "RTKN2", "IKZF2", "TIGIT") >= 2))
    fine[mem4] = "CD4 memory T"
    fine[treg] = "Treg"

    cd8 = coarse == "CD8 T"
    naive_score = g("CCR7") + g("LEF1") + g("SELL")
    memory_score = g("GZMK") + g("GZMH") + g("CCL5")
    fine[cd8] = "CD8 memory T"
    fine[cd8 & (naive_score > memory_score / 3)] = "CD8 naive T"
    mait = cd8 & (g("SLC4A10") > 0) & (g("KLRB1") > 0)
    n_mait = int(mait.sum())
    if n_mait >= MIN_MAIT_CELLS:
        fine[mait] = "MAIT"

    b = coarse == "B"
    fine[b] = "B memory"
    fine[b & ((g("TCL1A") > 0) | (g("IGHD") > 0) | (g("FCER2") > 0))] = "B naive"

    fine[coarse == "CD14+ Mono"] = "Classical monocyte"
    fine[coarse == "FCGR3A+ Mono"] = "Non-classical monocyte"
    mono = np.isin(coarse, ["CD14+ Mono", "FCGR3A+ Mono"])
    mhc = g("HLA-DRA") + g("HLA-DRB1") + g("HLA-DPA1") + g("HLA-DPB1") + g("CD74")
    inter = mono & (g("CD14") > 0) & (g("FCGR3A") > 0) & (mhc > np.median(mhc[mono]))
    fine[inter] = "Intermediate monocyte"

    dc = coarse == "DC"
    fine[dc] = "cDC"
    fine[dc & ((g("LILRA4") > 0) | (g("IL3RA") > 0))] = "pDC"

    rules = {
        "CD4 naive T": "Seurat 'Naive CD4 T'",
        "CD4 memory T": "Seurat 'Memory CD4 T' not Treg",
        "Treg": "Seurat 'Memory CD4 T' with FOXP3>0 or >=2 of IL2RA/CTLA4/RTKN2/IKZF2/TIGIT detected",
        "CD8 naive T": "Seurat 'CD8 T' with log(CCR7)+log(LEF1)+log(SELL) > (log(GZMK)+log(GZMH)+log(CCL5))/3",
        "CD8 memory T": "Seurat 'CD8 T' otherwise (and not MAIT)",
        "MAIT": f"Seurat 'CD8 T' with SLC4A10>0 and KLRB1>0 (kept only if >= {MIN_MAIT_CELLS} cells; found {n_mait})",
        "NK": "Seurat 'NK'",
        "B naive": "Seurat 'B' with TCL1A, IGHD or FCER2 detected",
        "B memory": "Seurat 'B' otherwise",
        "Classical monocyte": "Seurat 'CD14+ Mono' not intermediate",
        "Intermediate monocyte": "Seurat CD14+ or FCGR3A+ Mono with CD14>0, FCGR3A>0 and MHC-II score "
        "(HLA-DRA+HLA-DRB1+HLA-DPA1+HLA-DPB1+CD74, log-normalised) above the monocyte median",
        "Non-classical monocyte": "Seurat 'FCGR3A+ Mono' not intermediate",
        "cDC": "Seurat 'DC' not pDC",
        "pDC": "Seurat 'DC' with LILRA4>0 or IL3RA>0",
        "Platelet": "Seurat 'Platelet'",
    }
    return pd.Series(fine, index=adata.obs_names, dtype=object), rules


def estimate_dispersion(counts: sparse.csr_matrix, lib: np.ndarray, types: np.ndarray, order: list[str]) -> np.ndarray:
    """Gene-wise NB dispersion: method of moments within each fine type, pooled, shrunk to a mean trend."""
    n_genes = counts.shape[1]
    num = np.zeros(n_genes)
    den = np.zeros(n_genes)
    total = np.zeros(n_genes)
    for t in order:
        m = types == t
        if m.sum() < 20:
            continue
        s = lib[m] / lib[m].mean()
        y = sparse.diags(1.0 / s) @ counts[m]
        mu = np.asarray(y.mean(0)).ravel()
        ey2 = np.asarray(y.multiply(y).mean(0)).ravel()
        var = (ey2 - mu**2) * m.sum() / (m.sum() - 1)
        num += m.sum() * (var - mu * np.mean(1.0 / s))
        den += m.sum() * mu**2
        total += np.asarray(counts[m].sum(0)).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.where(den > 0, num / den, np.nan)
    raw = np.clip(raw, 0.01, 20.0)
    mean_count = total / counts.shape[0]
    good = (total >= 200) & np.isfinite(raw)
    # trend: median dispersion in bins of log mean among well-estimated genes
    logm = np.log10(np.maximum(mean_count, 1e-6))
    edges = np.quantile(logm[good], np.linspace(0, 1, 11))
    centres, meds = [], []
    for lo, hi in itertools.pairwise(edges):
        sel = good & (logm >= lo) & (logm <= hi)
        if sel.sum() >= 10:
            centres.append(np.median(logm[sel]))
            meds.append(np.median(np.log(raw[sel])))
    trend = np.exp(np.interp(logm, centres, meds))
    phi = np.where(good, np.exp(0.7 * np.log(np.where(good, raw, 1.0)) + 0.3 * np.log(trend)), trend)
    return np.clip(phi, 0.01, 20.0)


def build(data_dir: Path, out_dir: Path) -> dict:
    adata, inputs = read_pbmc3k(data_dir)
    adata = adata[adata.obs["seurat_label"].notna()].copy()
    fine, rules = fine_labels(adata)
    order = [t for t in LINEAGE if (fine == t).any()]
    counts = adata.X.tocsr().astype(np.float64)

    detected = np.asarray((counts > 0).sum(0)).ravel()
    ifn = set()
    with open(data_dir.parent / "reference" / "database_genesets.json") as fh:
        sets = json.load(fh)
    for k in INTERFERON_SETS:
        ifn.update(sets.get(k, []))
    keep_names = {x.upper() for x in MARKERS + COMPLEMENT + KYNURENINE + sorted(ifn)}
    upper = adata.var_names.str.upper()
    keep = (detected >= MIN_CELLS_DETECTED) | np.asarray(upper.isin(keep_names))
    counts = counts[:, keep]
    genes = adata.var_names[keep]
    gene_ids = adata.var["gene_ids"].values[keep]
    lib = np.asarray(counts.sum(1)).ravel()
    types = fine.values.astype(str)

    prop = sparse.diags(1.0 / lib) @ counts
    global_profile = np.asarray(prop.mean(0)).ravel()
    profiles, n_cells, lib_logmean, lib_logsd = [], [], [], []
    for t in order:
        m = types == t
        s = np.asarray(prop[m].sum(0)).ravel()
        p = (s + PROFILE_PSEUDOCELLS * global_profile) / (m.sum() + PROFILE_PSEUDOCELLS)
        profiles.append(p / p.sum())
        n_cells.append(int(m.sum()))
        lib_logmean.append(float(np.mean(np.log(lib[m]))))
        lib_logsd.append(float(np.std(np.log(lib[m]), ddof=1)) if m.sum() > 2 else 0.3)
    dispersion = estimate_dispersion(counts.tocsr(), lib, types, order)
    n_cells = np.asarray(n_cells)

    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_dir / "sim_reference.npz",
        genes=np.asarray(genes, dtype=str),
        gene_ids=np.asarray(gene_ids, dtype=str),
        cell_types=np.asarray(order, dtype=str),
        lineages=np.asarray([LINEAGE[t] for t in order], dtype=str),
        profiles=np.asarray(profiles, dtype=np.float32),
        dispersion=dispersion.astype(np.float32),
        composition=(n_cells / n_cells.sum()).astype(np.float64),
        n_cells=n_cells.astype(np.int64),
        lib_logmean=np.asarray(lib_logmean, dtype=np.float32),
        lib_logsd=np.asarray(lib_logsd, dtype=np.float32),
    )
    root = data_dir
    prov = {
        "name": "immunomood simulator reference (pbmc3k)",
        "script": "src/immunomood/resources/build/build_sim_reference.py",
        "script_version": SCRIPT_VERSION,
        "built": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "inputs": [
            {"path": str(p.relative_to(root)), "sha256": file_sha256(p), "size": p.stat().st_size} for p in inputs
        ],
        "source": "10x Genomics PBMC 3k (CC BY 4.0); Seurat pbmc3k tutorial labels (via CRAN ProFAST, GPL-3)",
        "n_cells_labelled": int(adata.n_obs),
        "n_genes": len(genes),
        "gene_rule": f"detected in >= {MIN_CELLS_DETECTED} labelled cells, or a marker / complement / "
        "kynurenine / interferon (Hallmark IFN-alpha, IFN-gamma) gene",
        "profile": f"mean over cells of counts/library (kept genes), shrunk to the global profile by "
        f"{PROFILE_PSEUDOCELLS} pseudo-cells, renormalised to sum 1",
        "dispersion": "NB method of moments within each fine type (>= 20 cells), pooled, geometric 0.7/0.3 "
        "shrinkage to a binned mean trend; trend only for genes with < 200 total counts; clipped to [0.01, 20]",
        "library": "per fine type mean and sd of log(total counts over kept genes)",
        "cell_types": {
            t: {"lineage": LINEAGE[t], "n_cells": int(n), "rule": rules[t]} for t, n in zip(order, n_cells, strict=True)
        },
        "cell_types_not_kept": {t: rules[t] for t in LINEAGE if t not in order},
        "complement_genes_present": [g for g in COMPLEMENT if g in set(genes)],
    }
    with open(out_dir / "sim_reference.json", "w") as fh:
        json.dump(prov, fh, indent=1)
    return prov


def main() -> None:
    here = Path(__file__).resolve().parents[4]  # repository root (src/immunomood/resources/build/)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default=os.environ.get("IMMUNOMOOD_DATA_DIR", str(here.parent / "shared" / "data"))
    )
    parser.add_argument("--out-dir", default=str(here / "src" / "immunomood" / "resources"))
    args = parser.parse_args()
    prov = build(Path(args.data_dir), Path(args.out_dir))
    size = (Path(args.out_dir) / "sim_reference.npz").stat().st_size
    print(f"wrote {args.out_dir}/sim_reference.npz ({size / 1e6:.2f} MB), {prov['n_genes']} genes")
    for t, info in prov["cell_types"].items():
        print(f"  {t:24s} {info['lineage']:15s} {info['n_cells']:5d}")


if __name__ == "__main__":
    main()
