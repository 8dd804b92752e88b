"""Preprocessing: quality control, doublets, normalisation, highly variable genes, proteomics QC."""

from __future__ import annotations

from ._qc import qc_metrics, flag_outliers, filter_cells
from ._doublets import detect_doublets
from ._normalize import normalize
from ._hvg import highly_variable_genes
from ._proteomics_qc import proteomics_qc

__all__ = ["detect_doublets", "filter_cells", "flag_outliers", "highly_variable_genes", "normalize", "proteomics_qc", "qc_metrics"]
