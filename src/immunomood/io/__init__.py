"""Readers: sample-sheet cohorts (10x / h5ad), Olink NPX, SomaScan ADAT, lazy (out-of-core) AnnData."""

from __future__ import annotations

from ._cohort import read_cohort
from ._coverage import gene_coverage
from ._export import write_pseudobulk
from ._lazy import read_lazy
from ._olink import read_olink
from ._somascan import read_somascan

__all__ = ["gene_coverage", "read_cohort", "read_lazy", "read_olink", "read_somascan", "write_pseudobulk"]
