"""Gene-coverage check at load: which markers, cell subsets and gene sets the measured genes can resolve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._settings import logger

__all__ = ["gene_coverage"]

COLUMNS = ["resource", "kind", "name", "n_genes", "n_found", "fraction", "resolvable", "rule", "missing"]


def _row(resource: str, kind: str, name: str, genes: Sequence[str], found: set[str], ok: bool, rule: str) -> dict:
    genes = list(dict.fromkeys(str(g) for g in genes))
    hit = [g for g in genes if g.upper() in found]
    miss = [g for g in genes if g.upper() not in found]
    return {
        "resource": resource,
        "kind": kind,
        "name": name,
        "n_genes": len(genes),
        "n_found": len(hit),
        "fraction": len(hit) / len(genes) if genes else np.nan,
        "resolvable": bool(ok),
        "rule": rule,
        "missing": ";".join(miss),
    }


def gene_coverage(
    adata: Any,
    *,
    markers: str | Mapping[str, Any] | None = "blood",
    gene_sets: str | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    gene_symbols: str | None = None,
    min_fraction: float = 0.5,
    key_added: str = "gene_coverage",
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Say which markers, cell subsets and gene sets the genes of ``adata`` can resolve.

    A targeted panel or a subset of genes (the OneK1K and cSLE sets hold 1,000-1,500 genes) may lack the markers
    that the annotation needs or most genes of a pathway; this check, run right after loading, says so before any
    analysis. Genes are matched case-insensitively against the gene symbols (``var_names``, or the symbol column
    when ``var_names`` are Ensembl IDs), as :func:`immunomood.tl.annotate` and
    :func:`immunomood.tl.score_pathways` match them.

    Parameters
    ----------
    adata
        Annotated data matrix (cells x genes).
    markers
        Marker resource (name such as ``"blood"`` or a mapping, as for :func:`immunomood.tl.annotate`); ``None``
        skips markers.
    gene_sets
        Gene-set collection name(s) (see :func:`immunomood.tl.gene_sets`) or a mapping ``set -> genes``;
        ``None`` (default): every packaged collection.
    gene_symbols
        Column of ``adata.var`` with gene symbols (found automatically for Ensembl ``var_names``).
    min_fraction
        A gene set is resolvable when at least this share of its genes is measured.
    key_added
        Key of ``adata.uns`` for the table.
    inplace
        Write the table into ``adata.uns[key_added]`` and return ``None``; with ``False`` return it.

    Returns
    -------
    DataFrame (or ``None`` with ``inplace=True``, then in ``adata.uns[key_added]``, ``"gene_coverage"`` by default)
    with one row per marker set or gene set: ``resource`` (``"markers:<name>"`` / ``"gene_sets:<collection>"``),
    ``kind`` (``lineage``, ``subset``, ``polarization``, ``mhc_class_ii``, ``t_cell_axis``, ``gene_set``),
    ``name``, ``n_genes``, ``n_found``, ``fraction``, ``resolvable`` (bool, by the rule in ``rule``: a lineage
    needs >= 3 of its positive markers, as the annotation does for a full score; a subset needs >= 1 positive
    marker and its gated genes (``require``: one of them, ``all_of``: all); an axis or polarization set needs
    >= 1 gene; a gene set needs ``min_fraction`` of its genes) and ``missing`` (the genes not measured,
    ``";"``-joined).
    """
    from anndata import AnnData

    from .._utils import check_bool, check_number, check_str
    from .._utils import gene_symbols as _symbols

    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
    check_number("min_fraction", min_fraction, min=0, max=1)
    check_str("key_added", key_added)
    check_bool("inplace", inplace)
    if gene_symbols is None:
        from .._markers import marker_symbols

        symbols = marker_symbols(adata)
    else:
        symbols = _symbols(adata, gene_symbols)
    found = set(pd.Index(symbols).astype(str).str.upper())
    rows: list[dict] = []

    if markers is not None:
        from .._markers import MIN_MARKERS_LINEAGE, resolve_markers

        res = resolve_markers(markers)
        rname = f"markers:{res.get('name', 'custom')}"
        for s in res["lineages"]:
            pos = s.get("positive", [])
            n = sum(g.upper() in found for g in pos)
            rows.append(
                _row(
                    rname,
                    "lineage",
                    s["label"],
                    pos,
                    found,
                    n >= MIN_MARKERS_LINEAGE,
                    f">= {MIN_MARKERS_LINEAGE} positive markers",
                )
            )
        for s in res["subsets"]:
            pos = s.get("positive", [])
            ok = any(g.upper() in found for g in pos)
            rule = ">= 1 positive marker"
            if s.get("require"):
                ok &= any(g.upper() in found for g in s["require"])
                rule += f" and one of {s['require']}"
            if s.get("all_of"):
                ok &= all(g.upper() in found for g in s["all_of"])
                rule += f" and all of {s['all_of']}"
            rows.append(_row(rname, "subset", s["label"], pos, found, ok, rule))
        for s in res.get("polarization", []):
            pos = s.get("positive", [])
            rows.append(
                _row(
                    rname,
                    "polarization",
                    s["label"],
                    pos,
                    found,
                    any(g.upper() in found for g in pos),
                    ">= 1 gene",
                )
            )
        if res.get("mhc_class_ii"):
            g = res["mhc_class_ii"]
            rows.append(
                _row(
                    rname,
                    "mhc_class_ii",
                    "MHC class II",
                    g,
                    found,
                    any(x.upper() in found for x in g),
                    ">= 1 gene",
                )
            )
        for axis, g in (res.get("t_cell_axes") or {}).items():
            if isinstance(g, list):
                rows.append(_row(rname, "t_cell_axis", axis, g, found, any(x.upper() in found for x in g), ">= 1 gene"))

    from ..tl._gene_sets import gene_sets as _collection
    from ..tl._gene_sets import known_gene_sets

    if gene_sets is None:
        collections: dict[str, dict[str, list[str]]] = {c: _collection(c) for c in known_gene_sets()}
    elif isinstance(gene_sets, str):
        collections = {gene_sets: _collection(gene_sets)}
    elif isinstance(gene_sets, Mapping):
        collections = {"custom": {str(k): list(v) for k, v in gene_sets.items()}}
    elif isinstance(gene_sets, Sequence):
        collections = {str(c): _collection(c) for c in gene_sets}
    else:
        raise TypeError(
            f"`gene_sets` must be a collection name, a list of names, a mapping or None, got "
            f"{type(gene_sets).__name__}."
        )
    for coll, sets in collections.items():
        for name, genes in sets.items():
            g = list(dict.fromkeys(map(str, genes)))
            n = sum(x.upper() in found for x in g)
            ok = bool(g) and n >= max(1, int(np.ceil(min_fraction * len(g))))
            rows.append(_row(f"gene_sets:{coll}", "gene_set", name, g, found, ok, f">= {min_fraction:g} of its genes"))

    table = pd.DataFrame(rows, columns=COLUMNS)
    table["n_genes"] = table["n_genes"].astype(int)
    table["n_found"] = table["n_found"].astype(int)
    table["resolvable"] = table["resolvable"].astype(bool)
    n_bad = int((~table["resolvable"]).sum())
    logger.info(
        "gene_coverage: %d of %d marker/gene sets resolvable with the %d measured genes",
        len(table) - n_bad,
        len(table),
        adata.n_vars,
    )
    if not inplace:
        return table
    adata.uns[key_added] = table
    return None
