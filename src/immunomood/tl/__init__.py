"""Tools: integration, annotation, pathway activity, donor-level differential testing, proteomics join."""

from __future__ import annotations

from ._annotate import annotate
from ._associations import cross_modal_associations
from ._biomarker import (
    BiomarkerResult,
    biomarker_panel,
)
from ._composition import composition
from ._differential import differential_activity, differential_expression
from ._donor_view import donor_view
from ._embed import embed
from ._gene_sets import gene_sets
from ._integrate import integrate
from ._join import join_proteomics
from ._metrics import integration_metrics
from ._pathways import score_pathways
from ._predict import (
    ResponsePrediction,
    predict_response,
)
from ._pseudobulk import pseudobulk

__all__ = [
    "annotate",
    "biomarker_panel",
    "composition",
    "cross_modal_associations",
    "differential_activity",
    "differential_expression",
    "donor_view",
    "embed",
    "gene_sets",
    "integrate",
    "integration_metrics",
    "join_proteomics",
    "predict_response",
    "pseudobulk",
    "score_pathways",
]
