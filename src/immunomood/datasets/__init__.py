"""Datasets: manifest-driven loaders for public data and the depression-cohort simulator."""

from __future__ import annotations

from ._loaders import citeseq_pbmc5k, kang2018, list_datasets, load, pbmc3k, zheng2017
from ._manifest import read_manifest, validate_manifest
from ._simulate import simulate_cohort

__all__ = [
    "citeseq_pbmc5k",
    "kang2018",
    "list_datasets",
    "load",
    "pbmc3k",
    "read_manifest",
    "simulate_cohort",
    "validate_manifest",
    "zheng2017",
]
