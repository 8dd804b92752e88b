"""Preprocessing: quality control, doublets, normalisation, highly variable genes, proteomics QC."""

from __future__ import annotations

from ._doublets import detect_doublets
from ._hvg import highly_variable_genes
from ._normalize import normalize
from ._proteomics_qc import proteomics_qc
from ._qc import filter_cells, flag_outliers, qc_metrics

__all__ = [
    "detect_doublets",
    "filter_cells",
    "flag_outliers",
    "highly_variable_genes",
    "normalize",
    "proteomics_qc",
    "qc_metrics",
]
