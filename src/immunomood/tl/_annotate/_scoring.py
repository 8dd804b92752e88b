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


def _reference_signature(
    reference: Mapping[str, Any], spec: Mapping[str, Any], present: Any
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Signature genes of a distinction from the reference's effect sizes, restricted to the genes ``present``.

    A gene joins the ``up`` side when its effect is >= ``_SIG_MIN_EFFECT`` in every effect of ``spec["effects"]``
    (for CD4 vs CD8 T: in the naive and in the memory compartment), the ``down`` side when it is <= minus that;
    each side keeps its ``_SIG_GENES`` genes with the largest smallest effect. Returns the genes per side, their
    smallest effect (> 0, the weight of the gene in a score: the Gaussian log-likelihood ratio of the two sides is
    the effect-weighted sum of standardised values) and the number of qualifying genes per side in the data.
    """
    eff = np.stack([reference["effect"][e] for e in spec["effects"]])
    genes = np.array([g.upper() for g in reference["genes"]])
    here = np.array([g in present for g in genes])
    out, w, n = {}, {}, {}
    for side, sign in ((spec["up"], 1.0), (spec["down"], -1.0)):
        e = np.min(sign * eff, axis=0)
        ok = here & (e >= const._SIG_MIN_EFFECT)
        order = np.flatnonzero(ok)[np.argsort(-e[ok], kind="stable")][: const._SIG_GENES]
        out[side] = [str(reference["genes"][i]) for i in order]
        w.update({str(reference["genes"][i]): float(e[i]) for i in order})
        n[side] = int(ok.sum())
    return out, w, n


#: reference labels of the lineages that anchor a signature score on the reference's scale
_ANCHORS = {
    "T cell": ("CD4 naive T", "CD4 memory T", "CD8 naive T", "CD8 memory T"),
    "NK cell": ("NK",),
    "Monocyte": ("Classical monocyte", "Non-classical monocyte"),
}


def _anchored_signature_score(
    E: np.ndarray,
    col: Mapping[str, int],
    sig: Mapping[str, Any],
    reference: Mapping[str, Any],
    lineage: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """Score of the cells ``rows`` on a reference signature, on the reference's own scale (> 0: ``up`` side).

    score = sum_g w_g s_g (x_g - mid_g) / sd_g / sum_g w_g over the signature genes, with w_g the reference effect,
    s_g = +1 for ``up`` genes and -1 for ``down`` genes, mid_g the midpoint of the two sides' reference means and
    sd_g their pooled SD: the Gaussian log-likelihood ratio of the two sides (per unit effect), so 0 is the boundary
    and needs no second population in the data. The reference means are first put on the panel's scale (capture
    and normalisation over a smaller panel scale a gene's counts per 10k): m' = log1p(c_g expm1(m)), with c_g the
    ratio of the gene's expm1 mean in the anchor lineages present in the data (T, NK, monocytes with >= 20 cells in
    ``lineage``) to the reference's, where the anchors express the gene (reference log mean >= 0.25), else the
    median of those ratios over the genes of ``E`` in the reference.
    """
    spec = sig["spec"]
    eff = reference["provenance"]["effects"][spec["effects"][0]]
    li = {lab: i for i, lab in enumerate(reference["labels"])}
    gi = {g.upper(): i for i, g in enumerate(reference["genes"])}
    genes = [g for side in (spec["up"], spec["down"]) for g in sig["sides"][side]]
    sign = np.array([1.0] * len(sig["sides"][spec["up"]]) + [-1.0] * len(sig["sides"][spec["down"]]))
    w = np.array([sig["weights"][g] for g in genes]) * sign
    # the panel's scale per gene, from the anchor lineages (every column of E that the reference has)
    both = [(j, gi[g]) for g, j in col.items() if g in gi]
    ej, rj = np.array([b[0] for b in both]), np.array([b[1] for b in both])
    data_a, ref_a = [], []
    for lin, labs in _ANCHORS.items():
        here = lineage == lin
        labs = [lab for lab in labs if lab in li]
        if here.sum() >= 20 and labs:
            data_a.append(np.expm1(E[here][:, ej].astype(np.float64).mean(axis=0)))
            ref_a.append(np.expm1(reference["mean"][[li[lab] for lab in labs]][:, rj].astype(np.float64)).mean(axis=0))
    factor = {}
    if data_a:
        da, ra = np.mean(data_a, axis=0), np.mean(ref_a, axis=0)
        informative = ra >= np.expm1(0.25)
        ratio = (da + 1e-3) / (ra + 1e-3)
        c_global = float(np.median(ratio[informative])) if informative.any() else 1.0
        factor = {int(r): (float(ratio[k]) if informative[k] else c_global) for k, r in enumerate(rj)}
    rg = [gi[g.upper()] for g in genes]
    c = np.array([factor.get(r, 1.0) for r in rg])
    m_up = np.log1p(c * np.expm1(reference["mean"][li[eff["up"]], rg].astype(np.float64)))
    m_down = np.log1p(c * np.expm1(reference["mean"][li[eff["down"]], rg].astype(np.float64)))
    sd = np.sqrt((reference["sd"][li[eff["up"]], rg] ** 2 + reference["sd"][li[eff["down"]], rg] ** 2) / 2)
    mid, sd = (m_up + m_down) / 2, np.maximum(sd, 0.1)
    X = E[rows][:, [col[g.upper()] for g in genes]].astype(np.float64)
    return ((X - mid) / sd) @ w / np.abs(w).sum()


def _coverage(
    res: Mapping[str, Any], col: Any, reference: Mapping[str, Any] | None = None
) -> tuple[pd.DataFrame, dict[str, str], dict[str, dict[str, list[str]]]]:
    """Which distinctions the panel supports: one row per distinction of the resource's ``distinctions``.

    A distinction is supported when every side has at least ``min_per_side`` of its genes in the data (``col``:
    the upper-case gene symbols of the data, any container). When it is not and ``reference`` (a loaded
    annotation reference, :func:`immunomood._markers.load_reference`) can resolve it, i.e. has at least
    ``_SIG_MIN_GENES`` signature genes per side in the data (:func:`_reference_signature`), the distinction is
    resolved with that expanded signature. For a lineage with a distinction resolved neither way its cells stop at
    the lineage; the returned mapping gives the per-cell reason (which markers are missing) for those lineages.
    Also returns the signatures used (distinction name -> side -> genes).
    """
    specs = {} if reference is None else reference["provenance"].get("distinctions", {})
    rows, unresolved, signatures = [], {}, {}
    for d in res.get("distinctions", []):
        k = int(d.get("min_per_side", 1))
        found, missing, ok, why = [], [], True, ""
        for side, genes in d["sides"].items():
            f = [g for g in genes if g.upper() in col]
            m = [g for g in genes if g.upper() not in col]
            found.append(f"{side}: {', '.join(f) if f else '-'}")
            missing.append(f"{side}: {', '.join(m) if m else '-'}")
            if len(f) < k and ok:
                ok = False
                why = f"{d['name']} not resolvable: {side} has {len(f)} of {', '.join(genes)} in the data (needs {k})"
        resolved_by, sig_text = "markers" if ok else "not resolved", ""
        if not ok and d["name"] in specs:
            sig, weights, n_ok = _reference_signature(reference, specs[d["name"]], col)
            sig_text = "; ".join(f"{side}: {', '.join(g) if g else '-'}" for side, g in sig.items())
            if min(n_ok.values()) >= const._SIG_MIN_GENES:
                resolved_by = "reference signature"
                signatures[d["name"]] = {"sides": sig, "weights": weights, "spec": dict(specs[d["name"]])}
        if resolved_by == "not resolved" and d.get("stops_lineage", True) and d["lineage"] not in unresolved:
            unresolved[d["lineage"]] = why
        rows.append(
            {
                "lineage": d["lineage"],
                "distinction": d["name"],
                "supported": ok,
                "min_per_side": k,
                "markers_found": "; ".join(found),
                "markers_missing": "; ".join(missing),
                "resolved_by": resolved_by,
                "signature_genes": sig_text,
            }
        )
    cov = pd.DataFrame(
        rows,
        columns=[
            "lineage",
            "distinction",
            "supported",
            "min_per_side",
            "markers_found",
            "markers_missing",
            "resolved_by",
            "signature_genes",
        ],
    )
    cov.index = cov.index.astype(str)
    return cov, unresolved, signatures
