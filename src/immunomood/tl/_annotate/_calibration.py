"""Calibration of the confidence without reference labels (Platt scaling on cross-validated agreement)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _constants as const


def _one_blas_thread():
    """BLAS limited to one thread.

    The logistic models here work on small matrices (a few thousand cells x a few hundred features), where a second BLAS thread on 2 busy cores made the fit 30x slower (11 s vs 0.34 s).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _platt(conf: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    return 1 / (1 + np.exp(-(slope * _logit(conf) + intercept)))


def _calibration(out: Mapping[str, Any], E: np.ndarray, rep: np.ndarray, rs: int) -> dict[str, float]:
    """Platt scaling of the confidence on the calls' own cross-validated agreement (no reference labels).

    A multinomial logistic model of the fine calls (marker genes and the embedding of ``_N_CALIBRATE`` random
    assigned cells, ``_CV_FOLDS``-fold) predicts each held-out cell's call from the other cells' calls; whether
    it agrees is the target of a logistic regression on logit(confidence). The fitted map is monotone, so it
    leaves the ranking (the AUROC of confidence for correctness) unchanged and moves the values to the scale of
    agreement rates (on four real labelled sets the cross-validated agreement was 0.83-0.97 where the accuracy
    against the published labels was 0.81-0.97). Returns ``slope`` 0 where there is nothing to calibrate on.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    none = {"slope": 0.0, "intercept": 0.0, "cv_agreement": float("nan"), "n_cells": 0}
    fine = np.asarray(out["fine"]).astype(str)
    cand = np.flatnonzero(~np.asarray(out["unassigned"], dtype=bool))
    if len(cand) > const._N_CALIBRATE:
        cand = np.sort(np.random.default_rng(rs).choice(cand, const._N_CALIBRATE, replace=False))
    y = fine[cand]
    labels, counts = np.unique(y, return_counts=True)
    cand, y = cand[np.isin(y, labels[counts >= const._CV_FOLDS])], y[np.isin(y, labels[counts >= const._CV_FOLDS])]
    if len(np.unique(y)) < 2 or len(cand) < 10 * const._CV_FOLDS:
        return none
    F = np.hstack([E[cand], rep[cand]]).astype(np.float64)
    F = (F - F.mean(axis=0)) / (F.std(axis=0) + 1e-6)
    cv = StratifiedKFold(const._CV_FOLDS, shuffle=True, random_state=rs)
    with _one_blas_thread():
        pred = cross_val_predict(LogisticRegression(C=0.1, max_iter=200, tol=1e-3), F, y, cv=cv)
    agree = pred == y
    if agree.all() or not agree.any():
        return none
    conf = np.asarray(out["confidence"], dtype=np.float64)[cand]
    with _one_blas_thread():
        pl = LogisticRegression(C=1e4).fit(_logit(conf)[:, None], agree)
    return {
        "slope": float(pl.coef_[0, 0]),
        "intercept": float(pl.intercept_[0]),
        "cv_agreement": float(agree.mean()),
        "n_cells": len(cand),
    }
