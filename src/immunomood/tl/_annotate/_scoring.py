"""Marker-set scores: expression of the marker genes, scaling, set scores and gates, and the panel's coverage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from ..._dask import count_problem, is_dask, sample_blocks
from ..._kernels import log1p_cp10k, row_totals
from ..._utils import warn
from . import _constants as const


def _input_kind(X) -> tuple[bool, bool]:
    """``(raw counts?, log1p still to apply?)`` for ``X``, in memory or Dask (checked on a sample of row blocks).

    Raises on negative or NaN values. Non-integer data with a maximum above 50 looks normalised but not logged:
    a warning, and ``log1p`` is applied to each block (the maximum of a Dask array is read on the sampled blocks).
    """
    problem = count_problem(X)
    if problem is None:
        return True, False
    if "negative" in problem or "NaN" in problem:
        raise ValueError(
            f"The expression matrix cannot be used for annotation: {problem}. Pass raw counts or log-normalised "
            "data (e.g. `layer='counts'`)."
        )
    vals = [b.data if sparse.issparse(b) else np.asarray(b) for b in (sample_blocks(X) if is_dask(X) else [X])]
    vmax = max((float(v.max()) for v in vals if v.size), default=0.0)
    if vmax > 50:
        warn(
            f"The expression matrix is not integer and its maximum is {vmax:.3g}: it looks normalised but "
            "not log-transformed; applying log1p. Pass raw counts or log1p data to silence this."
        )
        return False, True
    return False, False


def _log_normalised(X, kind: tuple[bool, bool], cols: np.ndarray | None = None):
    """log1p-CP10k of the cells of ``X`` (in memory, or one computed Dask block), of its columns ``cols`` only.

    ``kind`` from :func:`_input_kind`. Counts: a new CSR float32 matrix, each cell's library size taken over all
    its genes (so a subset of columns has the values of the full matrix's columns). Log data: ``X`` (its columns
    ``cols``) itself, or its ``log1p`` (float32) when ``kind`` says so. The values of a cell do not depend on the
    other cells, so row blocks give the same values as the whole matrix.
    """
    was_counts, log1p = kind
    if was_counts:
        Xc = sparse.csr_matrix(X)
        if cols is None:
            return log1p_cp10k(Xc, dtype=np.float32)
        return log1p_cp10k(Xc[:, cols], totals=row_totals(Xc), dtype=np.float32)
    if cols is not None:
        X = X[:, cols]
    if log1p:
        X = sparse.csr_matrix(X, dtype=np.float32, copy=True) if sparse.issparse(X) else np.asarray(X, np.float32)
        if sparse.issparse(X):
            np.log1p(X.data, out=X.data)
        else:
            X = np.log1p(X)
    return X


def _dense_cols(X, idx: np.ndarray, kind: tuple[bool, bool] = (False, False)) -> np.ndarray:
    """Log-normalised expression (:func:`_log_normalised`) of the genes ``idx``, dense float32 (cells x genes)."""
    sub = _log_normalised(X, kind, cols=idx)
    sub = sub.toarray() if sparse.issparse(sub) else np.asarray(sub)
    return sub.astype(np.float32)


def _scale(E: np.ndarray, codes: np.ndarray, mask: np.ndarray | None = None, floor: float = 1.0) -> np.ndarray:
    """Scale each gene between its lowest and highest cluster mean (0 = background, 1 = expressing population).

    Cluster means (clusters with >= 5 cells among ``mask``) make the scale independent of how many cells each
    population has; the range is floored at ``floor`` log1p-CP10k units so that a gene whose expressing
    population is absent (FCGR3B in PBMC) is not blown up from noise.
    """
    if mask is None:
        mask = np.ones(E.shape[0], dtype=bool)
    df = pd.DataFrame(E[mask])
    g = df.groupby(codes[mask])
    sizes = g.size()
    means = g.mean()[sizes.to_numpy() >= 5]
    if len(means) >= 2:
        lo = means.min(axis=0).to_numpy()
        hi = means.max(axis=0).to_numpy()
    else:
        lo = np.zeros(E.shape[1])
        hi = np.quantile(E[mask], 0.99, axis=0) if mask.any() else np.ones(E.shape[1])
    rng = np.maximum(hi - lo, floor)
    return np.clip((E - lo) / rng, *const._Z_CLIP).astype(np.float32)


def _set_scores(
    Z: np.ndarray, col: dict[str, int], sets: list[dict], min_markers: int = 1
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Per-cell scores (cells x sets) and the genes used per set; NaN where no positive marker was found.

    score = sum of positive markers / max(n found, ``min_markers``) - 0.5 x mean of the above-background part
    of negative markers. ``min_markers`` makes the evidence scale with how many markers of a set the data has:
    a set with a single marker in the data (HBB alone in a 1,000-gene panel, where ambient haemoglobin reads
    are common) cannot reach the score of a set whose several markers agree.
    """
    out = np.full((Z.shape[0], len(sets)), np.nan, dtype=np.float32)
    used: dict[str, list[str]] = {}
    for j, s in enumerate(sets):
        pos = [g for g in s.get("positive", []) if g.upper() in col]
        neg = [g for g in s.get("negative", []) if g.upper() in col]
        used[s["label"]] = pos
        if not pos:
            continue
        score = Z[:, [col[g.upper()] for g in pos]].sum(axis=1) / max(len(pos), min_markers)
        if neg:
            score = score - const._NEG_WEIGHT * np.clip(Z[:, [col[g.upper()] for g in neg]], 0, None).mean(axis=1)
        out[:, j] = score
    return out, used


def _apply_gates(S: np.ndarray, Zs: np.ndarray, col: dict[str, int], sets: list[dict]) -> np.ndarray:
    """Gates read from neighbourhood-smoothed gene values ``Zs`` (dropout-robust).

    ``require``: score capped by the max of these genes (at least one key gene expressed);
    ``all_of``: capped by their min (all key genes expressed, e.g. CD14 and FCGR3A);
    ``exclude``: their mean is subtracted (e.g. CD8A/CD8B for CD4 T labels).
    """
    S = S.copy()
    for j, s in enumerate(sets):
        for kind in ("require", "all_of", "exclude"):
            if s.get(kind) is None:
                continue
            genes = [col[g.upper()] for g in s[kind] if g.upper() in col]
            if kind == "exclude":
                if genes:
                    S[:, j] -= np.clip(Zs[:, genes], 0, None).mean(axis=1)
                continue
            if not genes or (kind == "all_of" and len(genes) < len(s[kind])):
                S[:, j] = -np.inf
                continue
            gate = Zs[:, genes].max(axis=1) if kind == "require" else Zs[:, genes].min(axis=1)
            S[:, j] = np.minimum(S[:, j], gate)
    return S


def _softmax(S: np.ndarray, tau: float) -> np.ndarray:
    A = S / tau
    A = A - np.max(A, axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        P = np.exp(A)
    P = np.nan_to_num(P)
    return P / P.sum(axis=1, keepdims=True)


def _coverage(res: Mapping[str, Any], col: Mapping[str, int]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Which distinctions the panel supports: one row per distinction of the resource's ``distinctions``.

    A distinction is supported when every side has at least ``min_per_side`` of its genes in the data. For a
    lineage with an unsupported distinction its cells stop at the lineage; the returned mapping gives the
    per-cell reason (which markers are missing) for those lineages.
    """
    rows, unresolved = [], {}
    for d in res.get("distinctions", []):
        k = int(d.get("min_per_side", 1))
        found, missing, ok = [], [], True
        for side, genes in d["sides"].items():
            f = [g for g in genes if g.upper() in col]
            m = [g for g in genes if g.upper() not in col]
            found.append(f"{side}: {', '.join(f) if f else '-'}")
            missing.append(f"{side}: {', '.join(m) if m else '-'}")
            if len(f) < k:
                ok = False
                why = f"{d['name']} not resolvable: {side} has {len(f)} of {', '.join(genes)} in the data (needs {k})"
                if d.get("stops_lineage", True) and d["lineage"] not in unresolved:
                    unresolved[d["lineage"]] = why
        rows.append(
            {
                "lineage": d["lineage"],
                "distinction": d["name"],
                "supported": ok,
                "min_per_side": k,
                "markers_found": "; ".join(found),
                "markers_missing": "; ".join(missing),
            }
        )
    cov = pd.DataFrame(
        rows, columns=["lineage", "distinction", "supported", "min_per_side", "markers_found", "markers_missing"]
    )
    cov.index = cov.index.astype(str)
    return cov, unresolved
