"""Tuning constants of :func:`immunomood.tl.annotate`, in one place.

Each was chosen from the biology of the marker sets and checked on the labelled sets of ``tests/tl/test_annotate.py``
(see the package docstring). Every name listed in :data:`TUNING` is recorded by ``annotate`` in
``uns[key_added]["params"]["constants"]`` (lower case, without the leading underscore). The other modules read them
as ``const.<NAME>`` at call time, so that a test can change one with ``monkeypatch.setattr(const, ...)``.
"""

from __future__ import annotations

from typing import Any

from ..._markers import MIN_MARKERS_LINEAGE

MIN_CELLS = 20  # fewest cells for a neighbourhood graph and clusters (an input check, not a tuning constant)

# scoring
_Z_CLIP = (-1.0, 2.0)  # scaled gene values: background 0, expressing population 1, clipped to this range
_FLOOR_LINEAGE, _FLOOR_SUBSET = 1.0, 0.5  # smallest range (log1p CP10k) a gene is scaled over
_NEG_WEIGHT = 0.5  # weight of the negative markers of a set
_W_CELL, _W_KNN, _W_CLUSTER = 0.25, 0.35, 0.40  # smoothing: the cell, its kNN neighbourhood, its cluster
_TAU_LINEAGE = 0.1  # softmax temperature over lineage scores
_TAU_SUBSET = 0.1  # softmax temperature over subset scores
_MIN_LINEAGE_SCORE = 0.1  # below it the cell is "Unassigned"
_MIN_MARKERS_LINEAGE = MIN_MARKERS_LINEAGE  # a lineage needs >= 3 of its markers in the data to reach a full score
# graph and clusters
_N_NEIGHBORS = 30  # population-level neighbourhood for smoothing (references call types per cluster)
_N_NEIGHBORS_SUB = 15  # within a lineage (its own sub-clusters)
_RESOLUTION = 2.0  # Leiden resolution of the clusters of all cells
# T-cell subsets (decided per T-cell sub-cluster)
_SUB_RESOLUTION = 1.0  # Leiden resolution of a lineage's sub-clusters (naive / memory)
_CD8_RESOLUTION = 0.5  # coarser T-cell sub-clusters for CD4 vs CD8
_AXIS_STEPS = 1  # diffusion steps of the naive / memory axis scores over the kNN graph
_REFINE_GENES = 100  # expanded naive/memory signature: genes per side (80-150 give the same calls)
_REFINE_STEPS = 3  # diffusion steps of the expanded signature
_MIN_REFINE = 100  # fewest cells of a compartment (CD4 or CD8) for the expanded signature
_SUB_N_PCS = 20  # principal components of a lineage's own sub-clustering
_W_CELL_T, _W_KNN_T = 0.15, 0.25  # the rest (0.6) is the sub-cluster mean
_TAU_AXIS = 0.1  # naive/memory probability: logistic in units of the sub-cluster spread of the axis
_CLUSTER_ODDS = 300.0  # a pure sub-cluster's CD4/CD8 call is held at these prior odds
# a sub-cluster of the unscaled T-cell graph overrides its coarse sub-cluster's CD4 call when its CD8 fraction is at
# least this (0.7 and 0.8 gave the same calls on pbmc3k, onek1k, kang2018, combat) and it has this many cells
_CD8_OVERRIDE = 0.75
_CD8_OVERRIDE_MIN_CELLS = 15
_MIN_RARE_SCORE = 0.25  # a rare T subset: its markers at least halfway from background to the expressing population
# reference signatures (a distinction whose markers the panel lacks, resolved from the packaged reference)
_SIG_MIN_EFFECT = 0.5  # a signature gene separates the two sides by >= this effect size (in every compartment)
_SIG_GENES = 20  # at most this many signature genes per side (the largest effects)
_SIG_MIN_GENES = 5  # fewer signature genes on a side in the data: the distinction stays unresolved
_SIG_MARGIN = 0.25  # |signature score| below it (weighted SD units from the boundary): the call stays at the lineage
_TAU_SIGNATURE = 0.25  # probability of a reference-scale signature call: logistic in (weighted) SD units
_T_RARE = ("Treg", "MAIT", "gamma-delta T", "Proliferating T")  # the rare T subsets (vocabulary, not tuned)
# large inputs: a random sketch of this many cells is annotated in full, the other cells take the labels of their
# nearest sketch cells in the same PCA (12,000 cells keep every blood population of >= 0.2% with >= 24 cells)
_SKETCH_CELLS = 12_000
_N_TRANSFER = 10  # nearest sketch cells that vote for a transferred cell's lineage
_N_TRAIN = 5_000  # sketch cells that train the fine-label model of the other cells
_N_CALIBRATE = 3_000  # sketch cells whose cross-validated self-agreement calibrates the confidence
_CV_FOLDS = 3  # folds of that cross-validation

#: The tuning constants recorded in ``uns[key_added]["params"]["constants"]``.
TUNING = (
    "_Z_CLIP",
    "_FLOOR_LINEAGE",
    "_FLOOR_SUBSET",
    "_NEG_WEIGHT",
    "_W_CELL",
    "_W_KNN",
    "_W_CLUSTER",
    "_TAU_LINEAGE",
    "_TAU_SUBSET",
    "_MIN_LINEAGE_SCORE",
    "_MIN_MARKERS_LINEAGE",
    "_N_NEIGHBORS",
    "_N_NEIGHBORS_SUB",
    "_RESOLUTION",
    "_SUB_RESOLUTION",
    "_CD8_RESOLUTION",
    "_AXIS_STEPS",
    "_REFINE_GENES",
    "_REFINE_STEPS",
    "_MIN_REFINE",
    "_SUB_N_PCS",
    "_W_CELL_T",
    "_W_KNN_T",
    "_TAU_AXIS",
    "_CLUSTER_ODDS",
    "_CD8_OVERRIDE",
    "_CD8_OVERRIDE_MIN_CELLS",
    "_MIN_RARE_SCORE",
    "_SIG_MIN_EFFECT",
    "_SIG_GENES",
    "_SIG_MIN_GENES",
    "_SIG_MARGIN",
    "_TAU_SIGNATURE",
    "_SKETCH_CELLS",
    "_N_TRANSFER",
    "_N_TRAIN",
    "_N_CALIBRATE",
    "_CV_FOLDS",
)


def tuning_constants() -> dict[str, Any]:
    """The current values of :data:`TUNING` (names lower case without the underscore; tuples as lists)."""
    g = globals()
    out: dict[str, Any] = {}
    for name in TUNING:
        v = g[name]
        out[name.lstrip("_").lower()] = (
            [float(x) for x in v] if isinstance(v, tuple) else (int(v) if isinstance(v, int) else float(v))
        )
    return out
