"""The marker resources (``resources/markers/<name>.json``) and their vocabulary of lineages and cell types.

Shared by :func:`immunomood.tl.annotate` and :func:`immunomood.io.gene_coverage`: reading and validating a
resource, and the gene symbols of ``adata`` that markers are matched against.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._utils import find_symbol_column, gene_symbols, identifier_kind

LINEAGES = (
    "T cell",
    "NK cell",
    "B cell",
    "Monocyte",
    "Dendritic cell",
    "Neutrophil",
    "Platelet",
    "Erythrocyte",
    "Unassigned",
)
CELL_TYPES = (
    "CD4 naive T",
    "CD4 memory T",
    "Treg",
    "CD8 naive T",
    "CD8 memory T",
    "MAIT",
    "gamma-delta T",
    "Proliferating T",
    "NK",
    "B naive",
    "B memory",
    "Plasmablast",
    "Classical monocyte",
    "Intermediate monocyte",
    "Non-classical monocyte",
    "cDC",
    "pDC",
    "Neutrophil",
    "Platelet",
    "Erythrocyte",
    "Unassigned",
)
#: Lineage-level calls: ``obs[key_added]`` holds the lineage name when the panel cannot separate its subsets.
LINEAGE_CALLS = ("T cell", "B cell", "Monocyte", "Dendritic cell")
#: Categories of ``obs[key_added]``: the fine types, the lineage-level calls, then ``"Unassigned"``.
LABELS = CELL_TYPES[:-1] + LINEAGE_CALLS + ("Unassigned",)
CD4_LABELS = ("CD4 naive T", "CD4 memory T", "Treg")

#: A lineage needs >= 3 of its markers in the data to reach a full score (:func:`immunomood.tl.annotate`) and
#: to count as resolvable (:func:`immunomood.io.gene_coverage`).
MIN_MARKERS_LINEAGE = 3


def load_markers(name: str = "blood") -> dict[str, Any]:
    """Load a packaged marker resource (``resources/markers/<name>.json``)."""
    base = resources.files("immunomood").joinpath("resources", "markers")
    available = sorted(p.name[:-5] for p in base.iterdir() if p.name.endswith(".json"))
    if name not in available:
        raise ValueError(f"Unknown marker resource {name!r}. Available: {available}; or pass a mapping.")
    return json.loads(base.joinpath(f"{name}.json").read_text())


def resolve_markers(markers: str | Mapping[str, Any]) -> dict[str, Any]:
    """A marker resource by name, or a user mapping checked against the vocabulary."""
    if isinstance(markers, str):
        res = load_markers(markers)
    elif isinstance(markers, Mapping):
        res = dict(markers)
        res.setdefault("name", "custom")
        res.setdefault("version", "user")
    else:
        raise TypeError(
            f"`markers` must be a resource name such as 'blood' or a mapping, got {type(markers).__name__}."
        )
    for part in ("lineages", "subsets"):
        if part not in res or not isinstance(res[part], list):
            raise ValueError(
                f"Marker resource must have a list {part!r} of marker sets (see resources/markers/blood.json); "
                f"got keys {sorted(res)}."
            )
    for s in res["lineages"]:
        if s["label"] not in LINEAGES:
            raise ValueError(f"Lineage label {s['label']!r} is not in the vocabulary {list(LINEAGES)}.")
    for s in res["subsets"]:
        if s["label"] not in CELL_TYPES or s.get("lineage") not in LINEAGES:
            raise ValueError(f"Subset {s['label']!r} / lineage {s.get('lineage')!r} is not in the vocabulary.")
    return res


def load_reference(name: str = "blood") -> dict[str, Any]:
    """Load a packaged annotation reference (``resources/reference/<name>_reference.npz`` + ``.json``).

    Returns a dict with ``genes`` (symbols), ``labels``, ``mean`` and ``sd`` (labels x genes, log1p CP10k),
    ``effect`` (mapping: effect name -> per-gene effect size), ``n_cells``, ``n_donors`` and ``provenance`` (the
    JSON written by ``resources/build/build_annotation_reference.py``: sources, input checksums, label rules, the
    distinctions the reference can resolve). Cached: the arrays are shared, treat them as read-only.
    """
    return _load_reference(name)


@functools.lru_cache(maxsize=4)
def _load_reference(name: str) -> dict[str, Any]:
    base = resources.files("immunomood").joinpath("resources", "reference")
    available = sorted(p.name[: -len("_reference.npz")] for p in base.iterdir() if p.name.endswith("_reference.npz"))
    if name not in available:
        raise ValueError(f"Unknown annotation reference {name!r}. Available: {available}; or pass reference=None.")
    with base.joinpath(f"{name}_reference.npz").open("rb") as fh:
        z = np.load(io.BytesIO(fh.read()), allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    prov = json.loads(base.joinpath(f"{name}_reference.json").read_text())
    return {
        "name": name,
        "version": str(prov["version"]),
        "genes": [str(g) for g in arrays["genes"]],
        "labels": [str(x) for x in arrays["labels"]],
        "mean": arrays["mean"].astype(np.float32),
        "sd": arrays["sd"].astype(np.float32),
        "effect": {str(e): arrays["effect"][i].astype(np.float32) for i, e in enumerate(arrays["effect_names"])},
        "n_cells": arrays["n_cells"],
        "n_donors": arrays["n_donors"],
        "provenance": prov,
    }


# ----------------------------------------------------------------------------------------------
# expression
# ----------------------------------------------------------------------------------------------
def marker_symbols(adata: AnnData) -> pd.Index:
    """Gene symbols to match markers against: ``var_names`` or the symbol column (Ensembl IDs).

    When the ``var_names`` are symbols made unique with suffixes (``HLA-DRA_ENSG...``) and a symbol column exists, the
    column is used so that those genes are found too.
    """
    symbols = gene_symbols(adata)
    if identifier_kind(adata) == "gene symbols":
        col = find_symbol_column(adata)
        if col is not None:
            vals = adata.var[col].astype(str)
            ok = vals.notna().to_numpy() & (vals.str.len() > 0).to_numpy() & (vals != "nan").to_numpy()
            symbols = pd.Index(np.where(ok, vals.to_numpy(), np.asarray(symbols)))
    return symbols
