"""Packaged, versioned gene-set resources (complement arms, kynurenine, interferon, inflammation)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from importlib import resources

__all__ = ["gene_sets"]


@lru_cache(maxsize=1)
def _manifest() -> dict:
    path = resources.files("immunomood") / "resources" / "gene_sets" / "manifest.json"
    return json.loads(path.read_text())


@cache
def _read_gmt(fname: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    path = resources.files("immunomood") / "resources" / "gene_sets" / fname
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        parts = line.split("\t")
        out.append((parts[0], tuple(g for g in parts[2:] if g)))
    return tuple(out)


def known_gene_sets() -> list[str]:
    """Names of the packaged gene-set collections."""
    return list(_manifest()["collections"])


def gene_set_info(name: str) -> dict:
    """Source, version and identifiers of every set of a packaged collection (from the manifest)."""
    gene_sets(name)  # validates the name
    return _manifest()["collections"][name]["sets"]


def gene_sets(name: str) -> dict[str, list[str]]:
    """Gene sets of a packaged, versioned resource.

    Parameters
    ----------
    name
        Collection name: ``"complement"`` (its arms: ``complement_classical``, ``complement_lectin``,
        ``complement_alternative``, ``complement_terminal``, ``complement_receptors``, ``complement_regulators``;
        no immunoglobulin segments), ``"complement_hallmark"``, ``"kynurenine"``, ``"interferon_alpha"``,
        ``"interferon_gamma"``, ``"inflammatory"``, ``"tnfa_nfkb"`` or ``"il6_jak_stat3"``.

    Returns
    -------
    A dict ``set name -> list of human gene symbols``. The source database, version and identifiers of every set
    are in ``immunomood/resources/gene_sets/manifest.json`` (built by ``src/immunomood/resources/build/build_gene_sets.py``).

    Examples
    --------
    >>> import immunomood as im
    >>> sorted(im.tl.gene_sets("complement"))[:2]
    ['complement_alternative', 'complement_classical']
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string naming a gene-set collection, got {type(name).__name__}.")
    colls = _manifest()["collections"]
    if name not in colls:
        raise KeyError(
            f"Unknown gene-set collection {name!r}. Known: {list(colls)}. "
            "Or pass your own dict {set name: [gene symbols]}."
        )
    return {s: list(g) for s, g in _read_gmt(colls[name]["file"])}


def resolve_gene_sets(gene_sets_: str | Mapping[str, Sequence[str]] | Sequence[str]) -> dict[str, list[str]]:
    """Turn a collection name, a list of collection names or a dict into ``set name -> genes``.

    Validates before any work: unknown names list the known ones, empty sets are refused.
    """
    if isinstance(gene_sets_, str):
        return gene_sets(gene_sets_)
    if isinstance(gene_sets_, Mapping):
        out: dict[str, list[str]] = {}
        if len(gene_sets_) == 0:
            raise ValueError("`gene_sets` is an empty dict; expected {set name: [gene symbols]}.")
        for k, v in gene_sets_.items():
            if isinstance(v, str) or not isinstance(v, (Sequence, set, frozenset)) and not hasattr(v, "__iter__"):
                raise TypeError(f"Gene set {k!r} must be a list of gene symbols, got {type(v).__name__}.")
            genes = list(dict.fromkeys(map(str, v)))
            if not genes:
                raise ValueError(f"Gene set {k!r} is empty.")
            out[str(k)] = genes
        return out
    if isinstance(gene_sets_, Sequence) and all(isinstance(x, str) for x in gene_sets_) and len(gene_sets_) > 0:
        out = {}
        for n in gene_sets_:
            out.update(gene_sets(n))
        return out
    raise TypeError(
        f"`gene_sets` must be a collection name (one of {known_gene_sets()}), a list of such names, or a dict "
        f"{{set name: [gene symbols]}}; got {type(gene_sets_).__name__}."
    )
