"""Large inputs: the cells outside the sketch learn their labels from the sketch's calls."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from ..._markers import CD4_LABELS
from ..._neighbors import knn_lists
from . import _constants as const
from ._calibration import _one_blas_thread

#: Cells outside the sketch labelled at a time: bounds the memory of their features and neighbours' marker genes
#: (a 1,000,000-cell input would otherwise hold ~10 GB of them at once); the labels do not depend on it.
_TRANSFER_CELLS = 50_000


def _transfer(
    out: dict[str, Any],
    rows: np.ndarray,
    rep_fit: np.ndarray,
    rep_rest: np.ndarray,
    n: int,
    E: np.ndarray,
    rs: int,
) -> dict[str, Any]:
    """Labels of the cells outside the sketch, learnt from the sketch's calls.

    1. Lineage: weighted vote of the ``_N_TRANSFER`` nearest sketch cells in the PCA (their lineages).
    2. Fine label within that lineage: a multinomial logistic regression trained on the sketch's calls, on the
       marker genes of the cell and the mean of its nearest sketch cells' marker genes (the same context the
       sketch's calls were smoothed over) and the PCA; probabilities restricted to the voted lineage's labels.
    Confidence = lineage vote share x fine probability x the mean confidence of the neighbours of that lineage x
    the weighted share of the neighbours with the same fine call.
    Cluster, reason and (lineage-level calls, Unassigned) from the nearest sketch cell of the voted lineage.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestNeighbors

    from ..._settings import settings

    rest = np.setdiff1d(np.arange(n), rows)
    k = int(min(const._N_TRANSFER, len(rows) - 1))
    idx_s, _ = knn_lists(rep_fit, k + 1, random_state=rs, n_jobs=settings.n_jobs)
    idx_s = idx_s[:, 1:]  # sketch cells: their other sketch neighbours
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", n_jobs=settings.n_jobs).fit(rep_fit)
    lin_s = np.asarray(out["lineage"]).astype(str)
    lin_cat = pd.Categorical(lin_s)

    # fine labels: logistic regression on the sketch's calls (own + neighbourhood marker genes, PCA)
    Es = E[rows]
    feats_s = np.hstack([Es, Es[idx_s].mean(axis=1), rep_fit])
    mu, sd = feats_s.mean(axis=0), feats_s.std(axis=0) + 1e-6
    fine_s = np.asarray(out["fine"]).astype(str)
    train = ~np.asarray(out["unassigned"], dtype=bool)
    if train.sum() > const._N_TRAIN:  # a random subset of the sketch's calls is enough to learn them (and 4x faster)
        keep = np.zeros(len(train), dtype=bool)
        keep[np.random.default_rng(rs).choice(np.flatnonzero(train), const._N_TRAIN, replace=False)] = True
        train = keep
    clf = lin_of = None
    if len(np.unique(fine_s[train])) >= 2:
        clf = LogisticRegression(C=0.1, max_iter=200, tol=1e-3)
        with _one_blas_thread():
            clf.fit((feats_s[train] - mu) / sd, fine_s[train])
        lin_of = pd.Series(lin_s[train]).groupby(fine_s[train]).first().reindex(clf.classes_).to_numpy()
    Pp = out["pol"].to_numpy() if out["pol"] is not None else None

    # the other cells, _TRANSFER_CELLS at a time (their features are the largest arrays of a large input)
    parts = []
    for s in range(0, len(rest), _TRANSFER_CELLS):
        r = rest[s : s + _TRANSFER_CELLS]
        m = len(r)
        dist, idx = nn.kneighbors(rep_rest[s : s + _TRANSFER_CELLS], return_distance=True)
        w = 1.0 / (dist + 1e-6 + dist[:, :1])  # closer sketch cells weigh more
        lcodes = lin_cat.codes[idx]
        votes = np.zeros((m, len(lin_cat.categories)))
        for j in range(k):
            np.add.at(votes, (np.arange(m), lcodes[:, j]), w[:, j])
        win = np.argmax(votes, axis=1)
        share = votes[np.arange(m), win] / votes.sum(axis=1)
        hit = lcodes == win[:, None]
        src = idx[np.arange(m), np.argmax(hit, axis=1)]  # nearest sketch cell of the voted lineage
        conf_n = np.where(hit, out["confidence"][idx], 0).sum(axis=1) / hit.sum(axis=1)
        lin_rest = np.asarray(lin_cat.categories)[win].astype(object)
        fine_rest = np.asarray(out["fine"])[src].astype(object)
        p_fine = np.ones(m)
        if clf is not None:
            feats_r = np.hstack([E[r], Es[idx].mean(axis=1), rep_rest[s : s + _TRANSFER_CELLS]])
            P = clf.predict_proba((feats_r - mu) / sd)
            P = P * (lin_of[None, :] == lin_rest[:, None].astype(str))
            tot = P.sum(axis=1)
            okp = tot > 0
            b = np.argmax(P, axis=1)
            fine_rest[okp] = clf.classes_[b[okp]]
            p_fine[okp] = P[okp, b[okp]] / tot[okp]
        un_rest = np.asarray(out["unassigned"])[src].astype(bool)
        fine_rest[un_rest] = "Unassigned"
        # as in the sketch: the (distance-weighted) share of the nearest sketch cells that have the cell's fine call
        hitf = fine_s[idx] == fine_rest[:, None].astype(str)
        agree_f = np.where(hitf, w, 0).sum(axis=1) / w.sum(axis=1)
        conf_rest = conf_n * share * np.where(un_rest, 1.0, p_fine * agree_f)
        Pr = None
        if Pp is not None:
            with warnings.catch_warnings():  # all-NaN rows (neighbours outside CD4) stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                Pr = np.nanmean(np.where(hitf[..., None], Pp[idx], np.nan), axis=1)
            Pr[~np.isin(fine_rest, CD4_LABELS)] = np.nan
        parts.append((fine_rest, lin_rest, np.clip(conf_rest, 0, 1), un_rest, src, Pr))
    fine_rest, lin_rest, conf_rest, un_rest, src = (np.concatenate([p[i] for p in parts]) for i in range(5))

    def fill(sketch_vals, rest_vals, dtype=object):
        full = np.empty(n, dtype=dtype)
        full[rows] = sketch_vals
        full[rest] = rest_vals
        return full

    new = dict(out)
    new["fine"] = fill(out["fine"], fine_rest)
    new["lineage"] = fill(out["lineage"], lin_rest)
    new["confidence"] = fill(out["confidence"], conf_rest, np.float64)
    new["reason"] = fill(out["reason"], out["reason"][src])
    new["unassigned"] = fill(out["unassigned"], un_rest, bool)
    new["clusters"] = fill(out["clusters"], np.asarray(out["clusters"])[src])
    if Pp is not None:
        Pr = np.vstack([p[5] for p in parts])
        new["pol"] = pd.DataFrame(_stack(Pp, Pr, rows, rest, n), columns=out["pol"].columns)
    return new


def _stack(A: np.ndarray, B: np.ndarray, rows: np.ndarray, rest: np.ndarray, n: int) -> np.ndarray:
    full = np.full((n, A.shape[1]), np.nan)
    full[rows] = A
    full[rest] = B
    return full
