"""Tools: integration, annotation, pathway activity, donor-level differential testing, proteomics join."""

from __future__ import annotations

from ._integrate import integrate
from ._metrics import integration_metrics
from ._embed import embed
from ._annotate import annotate
from ._gene_sets import gene_sets
from ._pathways import score_pathways
from ._pseudobulk import pseudobulk
from ._differential import differential_activity, differential_expression
from ._composition import composition
from ._associations import cross_modal_associations
from ._biomarker import BiomarkerResult  # noqa: F401  (result type of biomarker_panel; a class, not in __all__)
from ._biomarker import biomarker_panel
from ._donor_view import donor_view
from ._join import join_proteomics
from ._predict import ResponsePrediction  # noqa: F401  (result type of predict_response; a class, not in __all__)
from ._predict import predict_response

__all__ = ["annotate", "biomarker_panel", "composition", "cross_modal_associations", "differential_activity", "differential_expression", "donor_view", "embed", "gene_sets", "integrate", "integration_metrics", "join_proteomics", "predict_response", "pseudobulk", "score_pathways"]
