"""How published pbmc3k (Seurat tutorial) labels are matched to immunomood's types, for the tests and
benchmarks/bench_annotate.py: a fine call is correct when it is in the label's set."""

from __future__ import annotations

SEURAT_FINE = {
    "Naive CD4 T": {"CD4 naive T"},
    "Memory CD4 T": {"CD4 memory T", "Treg"},
    "CD14+ Mono": {"Classical monocyte", "Intermediate monocyte"},
    "FCGR3A+ Mono": {"Non-classical monocyte", "Intermediate monocyte"},
    "CD8 T": {"CD8 naive T", "CD8 memory T", "MAIT", "gamma-delta T"},
    "NK": {"NK"},
    "B": {"B naive", "B memory", "Plasmablast"},
    "DC": {"cDC", "pDC"},
    "Platelet": {"Platelet"},
}
SEURAT_LIN = {
    "Naive CD4 T": "T cell",
    "Memory CD4 T": "T cell",
    "CD14+ Mono": "Monocyte",
    "FCGR3A+ Mono": "Monocyte",
    "CD8 T": "T cell",
    "NK": "NK cell",
    "B": "B cell",
    "DC": "Dendritic cell",
    "Platelet": "Platelet",
}
