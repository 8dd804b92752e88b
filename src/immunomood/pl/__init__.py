"""Plotting: every function reads what the matching ``tl``/``pp`` function stored and returns matplotlib objects."""

from __future__ import annotations

from ._annotate import annotation, annotation_confidence
from ._composition import composition
from ._differential import differential_activity, volcano
from ._integrate import integration
from ._predict import predict_response
from ._proteomics import biomarker_roc, cross_modal
from ._qc import qc, qc_report

__all__ = [
    "annotation",
    "annotation_confidence",
    "biomarker_roc",
    "composition",
    "cross_modal",
    "differential_activity",
    "integration",
    "predict_response",
    "qc",
    "qc_report",
    "volcano",
]
