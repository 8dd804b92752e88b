"""Small statistics shared by the donor-level tests (one copy each): multiple testing and least squares."""

from __future__ import annotations

import numpy as np

__all__ = ["bh", "ols", "test_based_ci"]


def bh(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (statsmodels ``fdr_bh``); NaN stays NaN and is not counted."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        from statsmodels.stats.multitest import multipletests

        out[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return out


def ols(D: np.ndarray, Y: np.ndarray):
    """Least squares of every column of Y on D: coefficients, residual variances, (D'D)^-1 and residual df."""
    XtXi = np.linalg.inv(D.T @ D)
    B = XtXi @ D.T @ Y
    R = Y - D @ B
    df = D.shape[0] - D.shape[1]
    s2 = (R**2).sum(axis=0) / df
    return B, s2, XtXi, df


def test_based_ci(effect, statistic, df, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Test-based confidence interval: ``effect +- q * |effect / statistic|`` (Miettinen 1976).

    For tests that give an effect and a t statistic but no standard error of that effect (limma ``fry``): the
    implied standard error ``|effect / t|`` makes the interval agree with the test (it excludes 0 exactly when the
    two-sided p-value is below ``1 - level``). NaN where the statistic is 0 or missing.
    """
    from scipy import stats

    effect, statistic, df = (np.asarray(v, dtype=float) for v in (effect, statistic, df))
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.abs(effect / statistic)
        q = stats.t.ppf(0.5 + level / 2, df)
        ok = np.isfinite(se) & (statistic != 0)
        lo = np.where(ok, effect - q * se, np.nan)
        hi = np.where(ok, effect + q * se, np.nan)
    return lo, hi
