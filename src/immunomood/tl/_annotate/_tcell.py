"""T-cell subsets, decided per T-cell sub-cluster: CD4 vs CD8 mixture model, naive / memory axis, rare subsets."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from . import _constants as const
from ._graph import _cluster_mean, _col_sd
from ._scoring import _apply_gates, _scale, _set_scores


def _refine_axis(
    Xh: sparse.csr_matrix, score: np.ndarray, W: sparse.csr_matrix, rows: np.ndarray, frac_high: float
) -> np.ndarray:
    """Re-rank cells along a marker axis with the transcriptome's own program for it.

    The ``_REFINE_GENES`` highly variable genes most correlated (over the cells ``rows``) with the smoothed
    marker score on each side form an expanded signature (naive T cells: CCR7, SELL with ribosomal and
    quiescence genes; memory: S100A4, ANXA1 with IL32, B2M ...), scored as the mean z-score difference and
    diffused over the kNN graph. The markers decide how many cells are on the high side (``frac_high``);
    the expanded signature decides which ones. Returns a centred score (> 0: high side) for all cells.
    """
    X = Xh[rows]
    sd = _col_sd(X)
    ok = sd > 0
    d = score[rows] - score[rows].mean()
    sdd = d.std()
    if ok.sum() < 2 * const._REFINE_GENES or sdd == 0 or not 0 < frac_high < 1:
        return score - np.quantile(score[rows], 1 - frac_high) if 0 < frac_high < 1 else score
    mean = np.asarray(X.mean(axis=0)).ravel()
    r = np.full(X.shape[1], 0.0)
    r[ok] = (np.asarray(X.T @ d).ravel()[ok] / len(rows)) / (sd[ok] * sdd)
    pos = np.argsort(-r)[: const._REFINE_GENES]
    neg = np.argsort(r)[: const._REFINE_GENES]

    def zmean(idx: np.ndarray) -> np.ndarray:
        idx = idx[ok[idx]]
        return ((np.asarray(Xh[:, idx].todense()) - mean[idx]) / sd[idx]).mean(axis=1)

    s = zmean(pos) - zmean(neg)
    for _ in range(const._REFINE_STEPS):
        s = W @ s
    return s - np.quantile(s[rows], 1 - frac_high)


def _group_means(A: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_cl = int(codes.max()) + 1
    M = sparse.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_cl, len(codes)))
    sizes = np.asarray(M.sum(axis=1)).ravel()
    return np.asarray(M @ A) / np.maximum(sizes, 1)[:, None], sizes


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    o = np.argsort(x)
    cw = np.cumsum(w[o]) / np.sum(w)
    return float(x[o][np.searchsorted(cw, q)])


def _cd8_posterior(
    D: np.ndarray, codes: np.ndarray, override_codes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """P(CD8 | cell) from CD8A/CD8B detection (cells x genes, bool) with a per-sub-cluster prior.

    Per sub-cluster k the detection rate d_kg is a mixture pi_k p8_g + (1 - pi_k) p4_g of the rates in CD8 cells
    (p8: the highest sub-cluster rate) and in CD4 cells (p4: ambient/background rate, lower quartile over
    cells), so pi_k = (d_kg - p4_g) / (p8_g - p4_g) (averaged over informative genes, weighted by p8 - p4) is
    the sub-cluster's CD8 fraction. The cluster
    decides (CD8 when pi_k >= 0.5); a cell's own reads enter through the likelihood ratio of its detection
    pattern, and the prior is the cluster decision held with odds ``_CLUSTER_ODDS`` (a population property:
    a cell leaves its cluster's call only on strong evidence). With ``override_codes`` (sub-clusters of another
    T-cell graph), a sub-cluster of at least ``_CD8_OVERRIDE_MIN_CELLS`` cells whose CD8 fraction, by the same
    rates, is clearly CD8 (>= ``_CD8_OVERRIDE``) sets the prior of its cells instead: a CD8 population that the
    coarse clusters merged into a larger CD4 one (combat: 67 CD8A+ CD8B+ CD4- naive T cells inside a CD4 naive
    sub-cluster) keeps its own call. (The reverse, clearly CD4 sub-clusters inside CD8 ones, was tried: it moved
    as many of pbmc3k's Seurat CD8 T cells to CD4 as it fixed and left citeseq's CD4 memory cells called CD8.)
    Returns (posterior, pi per cell).
    """
    d, sizes = _group_means(D.astype(np.float64), codes)
    big = sizes >= 10
    if big.sum() < 2:
        big = sizes > 0
    p8 = np.clip(d[big].max(axis=0), 0.05, 0.95)
    # background rate in CD4 cells: the lower quartile over cells of their sub-cluster's rate (CD4 T cells are
    # the majority of blood T cells), robust to one small sub-cluster with unusually low detection
    p4 = np.array([_weighted_quantile(d[big, j], sizes[big], 0.25) for j in range(D.shape[1])])
    p4 = np.clip(p4, 0.005, 0.5)
    informative = p8 > p4 + 0.15  # a gene whose detection clearly differs between sub-clusters
    if not informative.any():
        return np.zeros(len(codes)), np.zeros(len(codes))
    w = p8[informative] - p4[informative]
    frac = np.clip((d[:, informative] - p4[informative]) / w, 0, 1)
    pi = (frac * w).sum(axis=1) / w.sum()
    Di, p8i, p4i = D[:, informative], p8[informative], p4[informative]
    llr = (Di * np.log(p8i / p4i) + (1 - Di) * np.log((1 - p8i) / (1 - p4i))).sum(axis=1)
    # prior: the cluster's call (pi >= 0.5) held at odds const._CLUSTER_ODDS
    pic = pi[codes]
    if override_codes is not None:
        do, so = _group_means(D.astype(np.float64), override_codes)
        pio = ((np.clip((do[:, informative] - p4[informative]) / w, 0, 1) * w).sum(axis=1) / w.sum())[override_codes]
        clear = (pio >= const._CD8_OVERRIDE) & (so[override_codes] >= const._CD8_OVERRIDE_MIN_CELLS)
        pic = np.where(clear, np.maximum(pio, pic), pic)
    log_odds_prior = np.where(pic >= 0.5, 1.0, -1.0) * np.log(const._CLUSTER_ODDS)
    post = 1 / (1 + np.exp(-(log_odds_prior + llr)))
    return post, pic


def _cd8_signature_posterior(
    E: np.ndarray, genes: list[int], w: np.ndarray, W: sparse.csr_matrix, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """P(CD8 | cell) from a reference signature (columns ``genes`` of ``E``, weights ``w``: > 0 CD8, < 0 CD4 side).

    The score-based sibling of :func:`_cd8_posterior`, for panels without CD8A and CD8B: each gene is z-scored over
    the T cells, a cell's score is their effect-weighted mean (the reference effect sizes: a Gaussian
    log-likelihood ratio up to scale, so CD8A, where present, outweighs weak genes). As in the detection
    model, the sub-cluster means are a mixture of a CD4 level (the lower quartile over cells of their
    sub-cluster's mean: CD4 T cells are the majority in blood) and a CD8 level (the highest sub-cluster mean), so
    pi = (s - s4) / (s8 - s4) is the CD8 fraction. A cell is scored by its smoothed score (the cell, its kNN
    neighbourhood and mostly its sub-cluster) on that scale: CD8 when pi >= 0.5, P(CD8) = logistic((pi - 0.5) /
    ``_TAU_AXIS``). Returns (posterior, pi of the cell's sub-cluster).
    """
    X = E[:, genes].astype(np.float64)
    sd = X.std(axis=0)
    score = ((X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)) @ w / np.abs(w).sum()
    cm, sizes = _group_means(score[:, None], codes)
    cm = cm[:, 0]
    big = sizes >= 10
    if big.sum() < 2:
        big = sizes > 0
    s8 = float(cm[big].max())
    s4 = _weighted_quantile(cm[big], sizes[big], 0.25)
    if s8 - s4 <= 0:
        return np.zeros(len(codes)), np.zeros(len(codes))
    smoothed = (
        const._W_CELL_T * score + const._W_KNN_T * (W @ score) + (1 - const._W_CELL_T - const._W_KNN_T) * cm[codes]
    )
    pi = (smoothed - s4) / (s8 - s4)
    post = 1 / (1 + np.exp(-(pi - 0.5) / const._TAU_AXIS))
    return post, np.clip((cm[codes] - s4) / (s8 - s4), 0, 1)


def _memory_axis(
    E: np.ndarray,
    col: dict[str, int],
    axes: dict,
    W: sparse.csr_matrix,
    codes: np.ndarray,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
    """P(memory) per cell from the naive and memory axis genes.

    The genes are scaled between the sub-cluster means of the cells in ``mask`` (one compartment, CD4 or CD8: effector CD8 cells would otherwise set the memory end for
    CD4 cells) and smoothed over the kNN graph and the sub-cluster; also returns the smoothed (naive, memory)
    scores and the genes used.
    """
    n_cl = int(codes.max()) + 1
    Z = _scale(E, codes, mask=mask, floor=const._FLOOR_SUBSET)
    axis_sets = [{"label": "naive", "positive": axes["naive"]}, {"label": "memory", "positive": axes["memory"]}]
    Sa, used = _set_scores(Z, col, axis_sets)
    Sa = np.nan_to_num(Sa)  # an axis without genes scores 0
    D = Sa
    for _ in range(const._AXIS_STEPS):  # diffusion over the kNN graph
        D = W @ D
    Sa = (
        const._W_CELL_T * Sa
        + const._W_KNN_T * D
        + (1 - const._W_CELL_T - const._W_KNN_T) * _cluster_mean(Sa, codes, n_cl)
    )
    diff = Sa[:, 1] - Sa[:, 0]  # > 0: memory
    cm, sizes = _group_means(diff[:, None], codes if mask is None else np.where(mask, codes, n_cl))
    cm, sizes = cm[:n_cl], sizes[:n_cl]
    spread = float(np.ptp(cm[sizes >= 5])) if (sizes >= 5).sum() >= 2 else 1.0
    p_mem = 1 / (1 + np.exp(-diff / max(const._TAU_AXIS * spread, 1e-3)))
    return p_mem, Sa, used


def _t_subsets(
    E: np.ndarray,
    col: dict[str, int],
    res: dict,
    W: sparse.csr_matrix,
    codes: np.ndarray,
    coarse_codes: np.ndarray,
    Xh: sparse.csr_matrix | None = None,
    override_codes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
    """Fine labels and their probability for T cells (rows of ``E``), decided per sub-cluster (``codes``).

    1. Axis scores from genes scaled between the lowest and highest sub-cluster mean: naive (CCR7, SELL, LEF1,
       TCF7 ...) vs memory (S100A4, ANXA1, IL32, ITGB1, AQP3); smoothed mostly by the
       sub-cluster mean, a little by the kNN neighbourhood and the cell itself.
    2. CD4 vs CD8: Bayesian CD8A/CD8B detection model with the sub-cluster as prior (:func:`_cd8_posterior`),
       on coarser sub-clusters (``coarse_codes``): CD4 vs CD8 is the major split of T cells, naive vs memory a
       finer one; clearly CD8 sub-clusters of a second graph (``override_codes``) keep their own call.
       Where the panel lacks CD8A/CD8B and ``res["_signatures"]`` holds a reference signature for
       ``"CD4 vs CD8 T"``, its score decides instead (:func:`_cd8_signature_posterior`).
    3. Rare subsets (Treg, MAIT, gamma-delta, proliferating) replace the naive/memory call where their gated,
       smoothed score is at least halfway from background to the expressing sub-cluster (``_MIN_RARE_SCORE``).
    """
    axes = res["t_cell_axes"]
    n = E.shape[0]
    n_cl = int(codes.max()) + 1
    Z = _scale(E, codes, floor=const._FLOOR_SUBSET)

    def smooth(S):
        S0 = np.nan_to_num(S)
        return (
            const._W_CELL_T * S0
            + const._W_KNN_T * (W @ S0)
            + (1 - const._W_CELL_T - const._W_KNN_T) * _cluster_mean(S0, codes, n_cl)
        )

    p_mem, _, used = _memory_axis(E, col, axes, W, codes)
    cd8_genes = [col[g.upper()] for g in axes["cd8"] if g.upper() in col]
    sig = res.get("_signatures", {}).get("CD4 vs CD8 T")
    if sig is not None:  # panel without CD8A + CD8B: the reference signature decides
        genes = sig["sides"]["CD8"] + sig["sides"]["CD4"]
        w = np.array([sig["weights"][g] for g in genes]) * np.repeat(
            [1.0, -1.0], [len(sig["sides"]["CD8"]), len(sig["sides"]["CD4"])]
        )
        p_cd8, _ = _cd8_signature_posterior(E, [col[g.upper()] for g in genes], w, W, coarse_codes)
    elif cd8_genes:
        p_cd8, _ = _cd8_posterior(E[:, cd8_genes] > 0, coarse_codes, override_codes)
    else:
        p_cd8 = np.zeros(n)
    is8 = p_cd8 >= 0.5
    if Xh is not None and const._REFINE_GENES > 0:
        for grp in (~is8, is8):
            rows = np.flatnonzero(grp)
            if len(rows) >= const._MIN_REFINE:
                diff = np.log(p_mem + 1e-9) - np.log(1 - p_mem + 1e-9)
                frac = float((p_mem[rows] >= 0.5).mean())
                s_ref = _refine_axis(Xh, diff, W, rows, frac)[rows]
                scale = max(const._TAU_AXIS * float(np.ptp(s_ref)), 1e-3)
                p_mem[rows] = 1 / (1 + np.exp(-s_ref / scale))
    mem = p_mem >= 0.5
    fine = np.where(is8, np.where(mem, "CD8 memory T", "CD8 naive T"), np.where(mem, "CD4 memory T", "CD4 naive T"))
    fine = fine.astype(object)
    prob = np.where(is8, p_cd8, 1 - p_cd8) * np.where(mem, p_mem, 1 - p_mem)

    # rare subsets
    rare = [s for s in res["subsets"] if s["lineage"] == "T cell" and s["label"] in const._T_RARE]
    rare = [s for s in rare if any(g.upper() in col for g in s["positive"])]
    if rare:
        S, u = _set_scores(Z, col, rare)
        used.update(u)
        Ss = smooth(S)
        Ss[:, np.all(np.isnan(S), axis=0)] = -np.inf
        Ss = _apply_gates(Ss, 0.4 * Z + 0.3 * (W @ Z) + 0.3 * _cluster_mean(Z, codes, n_cl), col, rare)
        best = np.argmax(Ss, axis=1)
        top = Ss[np.arange(n), best]
        win = top >= const._MIN_RARE_SCORE
        labels = np.array([s["label"] for s in rare])[best]
        # Treg is a CD4 population: not for cells called CD8
        win &= ~((labels == "Treg") & is8)
        fine[win] = labels[win]
        prob[win] = 1 / (1 + np.exp(-(top[win] - const._MIN_RARE_SCORE) / const._TAU_SUBSET))
    return fine, np.clip(prob, 0, 1), used
