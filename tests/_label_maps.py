"""How published labels (pbmc3k Seurat tutorial, csle Azimuth level 3) are matched to immunomood's types, for the
tests and benchmarks/bench_annotate.py: a fine call is correct when it is in the label's set."""

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

#: csle's Azimuth level-3 label prefix -> (fine types, lineage); "dnT" has no fine type of ours, ILC sit in NK
CSLE_AZIMUTH = {
    "B naive": ({"B naive"}, "B cell"),
    "B memory": ({"B memory"}, "B cell"),
    "B intermediate": ({"B naive", "B memory"}, "B cell"),
    "CD4 TCM": ({"CD4 memory T"}, "T cell"),
    "CD4 TEM": ({"CD4 memory T"}, "T cell"),
    "CD4 Naive": ({"CD4 naive T"}, "T cell"),
    "Treg": ({"Treg"}, "T cell"),
    "CD8 TEM": ({"CD8 memory T"}, "T cell"),
    "gdT": ({"gamma-delta T"}, "T cell"),
    "MAIT": ({"MAIT"}, "T cell"),
    "dnT": (set(), "T cell"),
    "ILC": ({"NK"}, "NK cell"),
}


def csle_azimuth(label: str) -> tuple[set, str]:
    """(fine types, lineage) of one Azimuth level-3 label, matched by prefix ("B naive kappa" -> "B naive")."""
    for prefix, value in CSLE_AZIMUTH.items():
        if label.startswith(prefix):
            return value
    raise KeyError(f"unmapped Azimuth label {label!r}")
