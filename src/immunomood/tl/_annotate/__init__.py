"""Hierarchical, marker-based annotation of blood cells (:func:`immunomood.tl.annotate`).

Modules, by what they hold: ``_constants`` (every tuning constant), ``_scoring`` (marker-set scores, gates,
coverage), ``_graph`` (kNN graph, Leiden clusters, smoothing), ``_tcell`` (T-cell subsets), ``_calibration``
(confidence calibration), ``_transfer`` (large inputs: sketch to the other cells), ``_core`` (:func:`annotate`).
The marker resources and their vocabulary live in :mod:`immunomood._markers` (shared with ``io.gene_coverage``).
"""

# the label vocabulary and the marker resources, re-exported for tests, benchmarks and plots
from ..._markers import CD4_LABELS as CD4_LABELS
from ..._markers import CELL_TYPES as CELL_TYPES
from ..._markers import LABELS as LABELS
from ..._markers import LINEAGE_CALLS as LINEAGE_CALLS
from ..._markers import LINEAGES as LINEAGES
from ..._markers import load_markers as load_markers
from ._constants import MIN_CELLS as MIN_CELLS
from ._core import annotate

__all__ = ["annotate"]
