"""Doublet scoring per sample (scrublet through scanpy)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import doc_adata, doc_counts_layer, doc_inplace, doc_params, doc_random_state
from .._settings import logger, progress, uses_threads
from .._utils import (
    check_adata,
    check_counts,
    check_not_view,
    check_obs_key,
    counts_layer,
    get_matrix,
    record_problem,
    resolve_random_state,
    warn,
)
from ._qc import check_no_negative, check_unique_var_names, get_qc, sample_codes

#: Samples with fewer cells than this are not scored (scrublet's PCA and kNN need a few dozen cells).
MIN_CELLS_DOUBLETS = 30


@doc_params(adata=doc_adata, layer=doc_counts_layer, random_state=doc_random_state, inplace=doc_inplace)
@uses_threads
def detect_doublets(
    adata: AnnData,
    *,
    sample_key: str | None,
    layer: str | None = None,
    random_state: int | None = 0,
    min_cells: int = MIN_CELLS_DOUBLETS,
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Score doublets with scrublet, separately in each sample.

    Runs :func:`scanpy.pp.scrublet` (default parameters; threshold found automatically with
    scikit-image) on the raw counts of each sample in turn. Doublets only form within a sample (one
    droplet run), so scoring per sample is the right unit. ``adata.X`` is never modified.

    Parameters
    ----------
    {adata}
    sample_key
        Column of ``adata.obs`` that identifies the sample (one 10x channel / donor). ``None``: one group.
    {layer}
        Must hold raw counts.
    {random_state}
    min_cells
        Samples with fewer cells are not scored.
    {inplace}

    Returns
    -------
    With ``inplace=True``, ``None``, and writes ``adata.obs["doublet_score"]`` (float) and
    ``adata.obs["predicted_doublet"]`` (bool) and ``adata.uns["qc"]["doublets"]`` (a DataFrame per sample:
    ``n_cells``, ``scored``, ``threshold``, ``n_predicted``, ``note``) and ``uns["qc"]["params"]["detect_doublets"]``.
    With ``inplace=False``, a DataFrame with these two columns; ``adata`` is left untouched.
    ``adata.uns["immunomood_problems"]`` gains a line for every sample that could not be scored.

    Notes
    -----
    A sample that cannot be scored (fewer than ``min_cells`` cells, or scrublet fails) gets
    ``doublet_score = NaN`` and ``predicted_doublet = False`` (its cells are kept by
    :func:`~immunomood.pp.filter_cells`), and a warning names it; with ``inplace=True`` the message is
    also appended to ``adata.uns["immunomood_problems"]``, which the CLI report lists at the top of its
    summary. When scrublet scores a sample but cannot find a threshold automatically, its scores are kept
    and ``predicted_doublet`` is False, with a warning (recorded the same way).
    """
    import scanpy as sc

    check_adata(adata)
    from .._utils import check_bool, check_int

    inplace = check_bool("inplace", inplace)
    min_cells = check_int("min_cells", min_cells, min=2, fix="It is the fewest cells a sample needs to be scored.")
    if inplace:
        check_not_view(adata, func="detect_doublets")
    check_obs_key(adata, sample_key, what="sample_key column")
    check_unique_var_names(adata)
    layer = counts_layer(adata, layer)
    X = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_no_negative(X, where, "detect_doublets")
    check_counts(adata, layer, func="detect_doublets")
    seed = resolve_random_state(random_state)

    codes, samples = sample_codes(adata, sample_key)
    score = np.full(adata.n_obs, np.nan, dtype=np.float64)
    pred = np.zeros(adata.n_obs, dtype=bool)
    rows, skipped, no_threshold = [], [], []
    for s, sample in enumerate(progress(samples, desc="doublets (scrublet per sample)", unit="sample")):
        idx = np.flatnonzero(codes == s)
        if idx.size < min_cells:
            skipped.append(f"{sample} ({idx.size} cells < min_cells={min_cells})")
            rows.append((sample, idx.size, False, np.nan, 0, "too few cells"))
            continue
        sub = AnnData(X[idx].copy(), var=pd.DataFrame(index=adata.var_names.copy()))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # exact kNN (scikit-learn): scanpy's approximate path breaks on pynndescent >= 0.7
                # with recent scipy above ~2,700 cells per sample (see immunomood._neighbors)
                sc.pp.scrublet(
                    sub,
                    n_prin_comps=min(30, idx.size - 1, adata.n_vars - 1),
                    random_state=seed,
                    verbose=False,
                    use_approx_neighbors=False,
                )
        except Exception as e:  # noqa: BLE001 - reported to the user, sample kept
            skipped.append(f"{sample} (scrublet failed: {type(e).__name__}: {str(e)[:100]})")
            rows.append((sample, idx.size, False, np.nan, 0, f"scrublet failed: {type(e).__name__}"))
            continue
        score[idx] = sub.obs["doublet_score"].to_numpy(dtype=np.float64)
        p = sub.obs["predicted_doublet"]
        thr = sub.uns.get("scrublet", {}).get("threshold", np.nan)
        if p.isna().all() or thr is None:
            no_threshold.append(str(sample))
            thr, note = np.nan, "no automatic threshold"
        else:
            pred[idx] = p.fillna(False).to_numpy(dtype=bool)
            note = ""
        rows.append((sample, idx.size, True, float(thr), int(pred[idx].sum()), note))
    problems = []
    if skipped:
        problems.append(
            f"Doublets not scored in {len(skipped)} of {len(samples)} sample(s): {'; '.join(skipped)}. Their "
            "doublet_score is NaN and predicted_doublet is False (their doublets are kept)."
        )
    if no_threshold:
        problems.append(
            f"scrublet found no automatic doublet-score threshold in sample(s) {no_threshold}: scores are kept, "
            "predicted_doublet is False there. Inspect obs['doublet_score'] and set a threshold yourself if needed."
        )
    for message in problems:
        if inplace:
            record_problem(adata, message)
        else:
            warn(message)
    summary = pd.DataFrame(rows, columns=["sample", "n_cells", "scored", "threshold", "n_predicted", "note"])
    logger.info("detect_doublets: %d predicted doublets in %d samples", int(pred.sum()), len(samples))
    out = pd.DataFrame({"doublet_score": score, "predicted_doublet": pred}, index=adata.obs_names)
    if not inplace:
        return out
    adata.obs["doublet_score"] = score
    adata.obs["predicted_doublet"] = pred
    qc = get_qc(adata)
    params = {"random_state": seed, "min_cells": int(min_cells), "layer": layer if layer is not None else "X"}
    if sample_key is not None:
        params["sample_key"] = sample_key
    qc["params"]["detect_doublets"] = params
    qc["doublets"] = summary
    adata.uns["qc"] = qc
    return None
