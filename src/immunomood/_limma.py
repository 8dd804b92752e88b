"""A numerical port of the limma-voom + fry pipeline on pseudobulk counts (edgeR 3.40 / limma 3.54).

Each function follows the R source line by line (printed from the installed packages: ``edgeR::filterByExpr``,
``edgeR::calcNormFactors`` (TMM), ``limma::voom``, ``limma:::.lmEffects``, ``limma::fry.default``,
``limma::fitFDist``, ``limma:::.fryEffects``, and R's ``lowess``, which is the C routine ``clowess``), so that the
p-values agree with R to floating-point rounding; ``tests/tl/test_fry_reference.py`` checks this against R itself.

Orientation: matrices are samples x genes here (the AnnData convention), the transpose of R's genes x samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

__all__ = [
    "calc_norm_factors",
    "clowess",
    "filter_by_expr",
    "fry",
    "lm_effects",
    "pool_set_variance",
    "voom",
    "voom_fry",
]


# ----------------------------------------------------------------------------------------------
# R's lowess (C clowess), 1-based as the C source
# ----------------------------------------------------------------------------------------------
def _lowest(x, y, n, xs, nleft, nright, userw, rw):
    """One local fit at ``xs`` on points ``nleft..nright`` (1-based, ties on the right picked up)."""
    rng = x[n] - x[1]
    h = max(xs - x[nleft], x[nright] - xs)
    h9, h1 = 0.999 * h, 0.001 * h
    xx = x[nleft : n + 1]
    r = np.abs(xx - xs)
    stop = np.flatnonzero((r > h9) & (xx > xs))
    nrt = nleft + (int(stop[0]) if stop.size else xx.size) - 1
    r = r[: nrt - nleft + 1]
    xw = xx[: nrt - nleft + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(r <= h9, np.where(r <= h1, 1.0, (1.0 - (r / h) ** 3) ** 3), 0.0)
    if userw:
        w = w * rw[nleft : nrt + 1]
    a = _csum(w)
    if a <= 0.0:
        return 0.0, False
    w = w / a
    if h > 0.0:
        a = _csum(w * xw)
        b = xs - a
        c = _csum(w * (xw - a) * (xw - a))
        if np.sqrt(c) > 0.001 * rng:
            b /= c
            w = w * (b * (xw - a) + 1.0)
    return _csum(w * y[nleft : nrt + 1]), True


def _csum(v: np.ndarray) -> float:
    """Left-to-right sum as the C loop does it (numpy's pairwise sum rounds differently)."""
    return float(np.add.accumulate(v)[-1]) if v.size else 0.0


def clowess(x: np.ndarray, y: np.ndarray, f: float = 2 / 3, iter: int = 3, delta: float | None = None):
    """R's ``lowess(x, y, f, iter, delta)``: returns ``(x sorted, fitted y)`` exactly as R does.

    A port of R's C ``clowess`` (stats/src/lowess.c): ``ns = max(2, min(n, floor(f n + 1e-7)))`` nearest points,
    tricube weights, a local linear fit, ``iter`` robustness iterations with bisquare weights of 6 x the median
    absolute residual, and points closer than ``delta`` (default 1% of the range of x) interpolated.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    o = np.argsort(x, kind="stable")
    x, y = x[o], y[o]
    n = x.size
    if delta is None:
        delta = 0.01 * (x[-1] - x[0]) if n else 0.0
    if n < 2:
        return x, y.copy()
    X = np.concatenate([[np.nan], x])
    Y = np.concatenate([[np.nan], y])
    ys = np.zeros(n + 1)
    rw = np.zeros(n + 1)
    ns = max(2, min(n, int(f * n + 1e-7)))
    it = 1
    while it <= iter + 1:
        nleft, nright, last, i = 1, ns, 0, 1
        while True:
            if nright < n:
                d1 = X[i] - X[nleft]
                d2 = X[nright + 1] - X[i]
                if d1 > d2:
                    nleft += 1
                    nright += 1
                    continue
            val, ok = _lowest(X, Y, n, X[i], nleft, nright, it > 1, rw)
            ys[i] = val if ok else Y[i]
            if last < i - 1:
                denom = X[i] - X[last]
                for j in range(last + 1, i):
                    alpha = (X[j] - X[last]) / denom
                    ys[j] = alpha * ys[i] + (1.0 - alpha) * ys[last]
            last = i
            cut = X[last] + delta
            i = last + 1
            while i <= n:
                if X[i] > cut:
                    break
                if X[i] == X[last]:
                    ys[i] = ys[last]
                    last = i
                i += 1
            i = max(last + 1, i - 1)
            if last >= n:
                break
        res = Y[1:] - ys[1:]
        sc = _csum(np.abs(res)) / n
        if it > iter:
            break
        ar = np.sort(np.abs(res))
        m1 = n // 2
        cmad = 3.0 * (ar[m1] + ar[n - m1 - 1]) if n % 2 == 0 else 6.0 * ar[m1]
        if cmad < 1e-7 * sc:
            break
        c9, c1 = 0.999 * cmad, 0.001 * cmad
        r = np.abs(res)
        rw[1:] = np.where(r <= c1, 1.0, np.where(r <= c9, (1.0 - (r / cmad) ** 2) ** 2, 0.0))
        it += 1
    return x, ys[1:]


# ----------------------------------------------------------------------------------------------
# edgeR
# ----------------------------------------------------------------------------------------------
def _hat(design: np.ndarray) -> np.ndarray:
    """Leverages of ``design`` (R's ``hat``; the intercept it adds is already in the design's span or not)."""
    X = np.column_stack([np.ones(design.shape[0]), design])
    rank = np.linalg.matrix_rank(X)
    u, _, _ = np.linalg.svd(X, full_matrices=False)  # an orthonormal basis of the column space, as qr.qy
    return (u[:, :rank] ** 2).sum(axis=1)


def filter_by_expr(
    counts: np.ndarray,
    *,
    design: np.ndarray | None = None,
    group: Sequence | None = None,
    lib_size: np.ndarray | None = None,
    min_count: float = 10,
    min_total_count: float = 15,
    large_n: int = 10,
    min_prop: float = 0.7,
) -> np.ndarray:
    """edgeR ``filterByExpr`` (defaults of edgeR 3.40) on a samples x genes count matrix: boolean per gene."""
    counts = np.asarray(counts, dtype=float)
    if lib_size is None:
        lib_size = counts.sum(axis=1)
    lib_size = np.asarray(lib_size, dtype=float)
    if group is not None:
        n = pd.Series(pd.Categorical(np.asarray(group))).value_counts()
        min_size = float(n[n > 0].min())
    elif design is not None:
        min_size = 1.0 / _hat(np.asarray(design, dtype=float)).max()
    else:
        min_size = float(counts.shape[0])
    if min_size > large_n:
        min_size = large_n + (min_size - large_n) * min_prop
    cutoff = min_count / np.median(lib_size) * 1e6
    cpm = counts * (1e6 / lib_size)[:, None]  # edgeR's C++: count * (one_million / lib)
    tol = 1e-14
    return ((cpm >= cutoff).sum(axis=0) >= min_size - tol) & (counts.sum(axis=0) >= min_total_count - tol)


def _tmm_factor(obs, ref, n_o, n_r, logratio_trim=0.3, sum_trim=0.05):
    with np.errstate(divide="ignore", invalid="ignore"):
        log_r = np.log2((obs / n_o) / (ref / n_r))
        abs_e = (np.log2(obs / n_o) + np.log2(ref / n_r)) / 2
        v = (n_o - obs) / n_o / obs + (n_r - ref) / n_r / ref
    fin = np.isfinite(log_r) & np.isfinite(abs_e) & (abs_e > -1e10)
    log_r, abs_e, v = log_r[fin], abs_e[fin], v[fin]
    if np.max(np.abs(log_r)) < 1e-6:
        return 1.0
    n = log_r.size
    lo_l = np.floor(n * logratio_trim) + 1
    hi_l = n + 1 - lo_l
    lo_s = np.floor(n * sum_trim) + 1
    hi_s = n + 1 - lo_s
    rl, ra = stats.rankdata(log_r), stats.rankdata(abs_e)
    keep = (rl >= lo_l) & (rl <= hi_l) & (ra >= lo_s) & (ra <= hi_s)
    num, den = log_r[keep] / v[keep], 1.0 / v[keep]
    ok = ~np.isnan(num)
    f = np.sum(num[ok]) / np.sum(den[~np.isnan(den)])
    if np.isnan(f):
        f = 0.0
    return 2.0**f


def calc_norm_factors(counts: np.ndarray, lib_size: np.ndarray | None = None) -> np.ndarray:
    """edgeR ``calcNormFactors(method="TMM")`` with its defaults, on a samples x genes count matrix."""
    x = np.asarray(counts, dtype=float)
    ns = x.shape[0]
    if lib_size is None:
        lib_size = x.sum(axis=1)
    lib_size = np.asarray(lib_size, dtype=float)
    x = x[:, (x > 0).sum(axis=0) > 0]
    if x.shape[1] == 0 or ns == 1:
        return np.ones(ns)
    f75 = np.quantile(x, 0.75, axis=1) / lib_size  # R quantile type 7 = numpy "linear"
    if np.median(f75) < 1e-20:
        ref = int(np.argmax(np.sqrt(x).sum(axis=1)))
    else:
        ref = int(np.argmin(np.abs(f75 - np.mean(f75))))
    f = np.array([_tmm_factor(x[i], x[ref], lib_size[i], lib_size[ref]) for i in range(ns)])
    return f / np.exp(np.mean(np.log(f)))


# ----------------------------------------------------------------------------------------------
# limma
# ----------------------------------------------------------------------------------------------
def _ols(design: np.ndarray, Y: np.ndarray):
    q, r = np.linalg.qr(design)
    B = np.linalg.solve(r, q.T @ Y)
    res = Y - design @ B
    df = design.shape[0] - design.shape[1]
    return B, np.sqrt((res**2).sum(axis=0) / df)


def voom(counts: np.ndarray, design: np.ndarray, lib_size: np.ndarray | None = None, span: float = 0.5):
    """limma ``voom``: logCPM ``E`` and observation weights (both samples x genes).

    ``lib_size`` is the effective library size (``lib.size * norm.factors`` of a DGEList).
    """
    counts = np.asarray(counts, dtype=float)
    if counts.shape[1] < 2:
        raise ValueError("voom needs at least two genes to fit a mean-variance trend.")
    if lib_size is None:
        lib_size = counts.sum(axis=1)
    lib_size = np.asarray(lib_size, dtype=float)
    E = np.log2((counts + 0.5) / (lib_size + 1.0)[:, None] * 1e6)
    B, sigma = _ols(design, E)
    amean = E.mean(axis=0)
    sx = amean + np.mean(np.log2(lib_size + 1.0)) - np.log2(1e6)
    sy = np.sqrt(sigma)
    nz = counts.sum(axis=0) != 0
    lx, ly = clowess(sx[nz], sy[nz], f=span)
    ux, inv = np.unique(lx, return_inverse=True)  # approxfun(ties = list("ordered", mean))
    uy = np.bincount(inv, weights=ly) / np.bincount(inv)
    fitted_logcount = np.log2(1e-6 * 2.0 ** (design @ B) * (lib_size + 1.0)[:, None])
    w = 1.0 / np.interp(fitted_logcount, ux, uy) ** 4
    return E, w


def _householder_qty(X: np.ndarray, y: np.ndarray):
    """LINPACK ``dqrdc2`` + ``dqrsl`` (R's ``qr`` / ``qr.qty``), batched: X (G, n, p), y (G, n).

    Returns ``Q^T y`` (G, n) and the sign of ``R[p, p]`` (G,). Full column rank is assumed (no pivoting)."""
    X = X.copy()
    qty = y.copy()
    G, n, p = X.shape
    sign_rpp = np.ones(G)
    for l in range(p):
        col = X[:, l:, l]
        nrm = np.sqrt((col**2).sum(axis=1))
        nrm = np.where(col[:, 0] != 0, np.copysign(nrm, col[:, 0]), nrm)
        u = col / nrm[:, None]
        u[:, 0] += 1.0
        for j in range(l + 1, p):
            t = -(u * X[:, l:, j]).sum(axis=1) / u[:, 0]
            X[:, l:, j] += t[:, None] * u
        t = -(u * qty[:, l:]).sum(axis=1) / u[:, 0]
        qty[:, l:] += t[:, None] * u
        if l == p - 1:
            sign_rpp = np.sign(-nrm)
    return qty, sign_rpp


def lm_effects(E: np.ndarray, design: np.ndarray, weights: np.ndarray | None = None, contrast: int = 1):
    """limma ``.lmEffects``: genes x (1 + residual df) matrix of the contrast effect and the residual effects.

    ``contrast`` is the 0-based column of ``design`` tested; it is moved last, as limma does."""
    design = np.asarray(design, dtype=float)
    n, p = design.shape
    if n <= p:
        raise ValueError(f"No residual degrees of freedom: {n} samples for {p} design columns.")
    order = [j for j in range(p) if j != contrast] + [contrast]
    X = design[:, order]
    Y = np.asarray(E, dtype=float).T  # genes x samples
    G = Y.shape[0]
    if weights is None:
        qty, sgn = _householder_qty(np.ascontiguousarray(np.broadcast_to(X, (G, n, p))), Y)
    else:
        ws = np.sqrt(np.asarray(weights, dtype=float).T)  # genes x samples
        qty, sgn = _householder_qty(X[None, :, :] * ws[:, :, None], Y * ws)
    eff = qty[:, p - 1 :].copy()
    eff[:, 0] *= sgn
    return eff


_EU2MAX_CACHE: dict[int, float] = {}


def _eu2max(df_residual: int) -> float:
    """fry's ``Eu2max``: 128-point Gauss-Legendre quadrature on (0, 1), as ``statmod::gauss.quad.prob``."""
    if df_residual not in _EU2MAX_CACHE:
        x, w = np.polynomial.legendre.leggauss(128)
        nodes, wts = (x + 1) / 2, w / 2
        _EU2MAX_CACHE[df_residual] = float(
            np.sum((df_residual + 1) * nodes**df_residual * stats.chi2.ppf(nodes, df=1) * wts)
        )
    return _EU2MAX_CACHE[df_residual]


def trigamma_inverse(x: float) -> float:
    """limma's ``trigammaInverse``: y with trigamma(y) = x (Newton iterations, as limma)."""
    if x > 1e7:
        return 1.0 / np.sqrt(x)
    if x < 1e-6:
        return 1.0 / x
    y = 0.5 + 1.0 / x
    for _ in range(51):
        tri = special.polygamma(1, y)
        dif = tri * (1 - tri / x) / special.polygamma(2, y)
        y += dif
        if -dif / y < 1e-8:
            break
    return float(y)


def fit_f_dist(x: np.ndarray, df1: float) -> tuple[float, float]:
    """limma ``fitFDist`` without covariate: prior scale and df of the residual variances ``x``."""
    x = np.asarray(x, dtype=float)
    n = x.size
    if n == 0:
        return np.nan, np.nan
    if n == 1:
        return float(x[0]), 0.0
    ok = np.isfinite(x) & (x > -1e-15)
    x = x[ok]
    nok = x.size
    if nok == 1:
        return float(x[0]), 0.0
    x = np.maximum(x, 0)
    m = np.median(x)
    if m == 0:
        m = 1.0
    x = np.maximum(x, 1e-5 * m)
    e = np.log(x) - special.digamma(df1 / 2) + np.log(df1 / 2)
    emean = np.mean(e)
    evar = np.sum((e - emean) ** 2) / (nok - 1) - special.polygamma(1, df1 / 2)
    if evar > 0:
        df2 = 2 * trigamma_inverse(evar)
        return float(np.exp(emean + special.digamma(df2 / 2) - np.log(df2 / 2))), df2
    return float(np.mean(x)), np.inf


def fry(
    E: np.ndarray,
    design: np.ndarray,
    index: Mapping[str, Sequence[int]],
    *,
    weights: np.ndarray | None = None,
    contrast: int = 1,
) -> pd.DataFrame:
    """limma ``fry`` with its defaults (``standardize="posterior.sd"``, no trend, not robust).

    ``E``: samples x genes (voom logCPM), ``weights``: its voom weights, ``index``: set name -> gene positions.
    Returns one row per set: ``NGenes``, ``Direction``, ``statistic`` (fry's t, on ``df`` residual df),
    ``PValue`` (directional, two-sided), ``PValue.Mixed`` (non-directional), ``df``, and fry's t as
    ``numerator / sqrt(denominator2)`` (mean standardised contrast effect over the set's genes; mean square of the
    set means of the standardised residual effects).
    """
    eff = lm_effects(E, design, weights, contrast)
    df_res = eff.shape[1] - 1
    e2 = eff**2
    u2max = e2.max(axis=1)
    s2_robust = (e2.sum(axis=1) - u2max) / (df_res + 1 - _eu2max(df_res))
    s2 = e2[:, 1:].mean(axis=1)
    scale, df_prior = fit_f_dist(s2, df_res)
    d = 0.92 * df_res
    s2_post = (
        np.full_like(s2_robust, scale)
        if not np.isfinite(df_prior)
        else ((d * s2_robust + df_prior * scale) / (d + df_prior))
    )
    eff = eff / np.sqrt(s2_post)[:, None]
    rows = []
    for name, idx in index.items():
        idx = np.asarray(idx, dtype=int)
        S = eff[idx]
        ng = S.shape[0]
        if ng == 0:
            rows.append(dict(gene_set=name, NGenes=0, statistic=np.nan, PValue=np.nan, **{"PValue.Mixed": np.nan}))
            continue
        m = S.mean(axis=0)
        den2 = np.mean(m[1:] ** 2)
        t = m[0] / np.sqrt(den2)
        p = 2 * stats.t.cdf(-abs(t), df_res)
        pm = p
        if ng > 1:
            A = np.linalg.svd(S, compute_uv=False) ** 2
            d1 = A.size
            dd = d1 - 1
            beta_mean = 1 / d1
            beta_var = dd / d1 / d1 / (d1 / 2 + 1)
            fobs = (np.sum(S[:, 0] ** 2) - A[-1]) / (A[0] - A[-1])
            frb_mean = (np.sum(A) * beta_mean - A[-1]) / (A[0] - A[-1])
            cov = np.full((d1, d1), -beta_var / dd)
            np.fill_diagonal(cov, beta_var)
            frb_var = (A @ cov @ A) / (A[0] - A[-1]) ** 2
            apb = frb_mean * (1 - frb_mean) / frb_var - 1
            alpha = apb * frb_mean
            beta = apb - alpha
            pm = stats.beta.sf(fobs, alpha, beta)
        rows.append(
            dict(
                gene_set=name,
                NGenes=ng,
                statistic=t,
                PValue=p,
                **{"PValue.Mixed": pm},
                numerator=m[0],
                denominator2=den2,
            )
        )
    out = pd.DataFrame(rows).set_index("gene_set")
    out.insert(1, "Direction", np.where(out["statistic"] < 0, "Down", "Up"))
    out["df"] = df_res
    return out


def voom_fry(
    counts: np.ndarray,
    design: np.ndarray,
    index: Mapping[str, Sequence[int]],
    *,
    contrast: int = 1,
    filter_group: Sequence | None = None,
) -> dict:
    """The standard pseudobulk pipeline, as in R::

        y <- DGEList(counts); keep <- filterByExpr(y, design)    # or group = filter_group
        y <- y[keep, , keep.lib.sizes = FALSE]; y <- calcNormFactors(y)
        v <- voom(y, design); fry(v, index, design, contrast)

    ``counts`` samples x genes, ``index`` set -> gene positions in ``counts`` (genes dropped by the filter leave the
    set). Returns a dict with ``table`` (see :func:`fry`), ``keep``, ``norm_factors``, ``E``, ``weights``,
    ``coef`` (WLS coefficients of the contrast, per kept gene) and ``kept_index`` (set -> positions among kept genes).
    """
    counts = np.asarray(counts, dtype=float)
    design = np.asarray(design, dtype=float)
    keep = filter_by_expr(counts, design=None if filter_group is not None else design, group=filter_group)
    C = counts[:, keep]
    lib = C.sum(axis=1)
    nf = calc_norm_factors(C, lib)
    E, w = voom(C, design, lib * nf)
    pos = np.full(counts.shape[1], -1)
    pos[np.flatnonzero(keep)] = np.arange(int(keep.sum()))
    kidx = {k: pos[np.asarray(v, dtype=int)][pos[np.asarray(v, dtype=int)] >= 0] for k, v in index.items()}
    kidx = {k: np.unique(v) for k, v in kidx.items()}
    table = fry(E, design, kidx, weights=w, contrast=contrast)
    # weighted least-squares coefficients of the contrast (limma lmFit with the voom weights)
    sw = np.sqrt(w.T)
    Xw = design[None, :, :] * sw[:, :, None]
    yw = (E.T * sw)[:, :, None]
    coef = np.linalg.solve(np.swapaxes(Xw, 1, 2) @ Xw, np.swapaxes(Xw, 1, 2) @ yw)[:, contrast, 0]
    return dict(table=table, keep=keep, norm_factors=nf, E=E, weights=w, coef=coef, kept_index=kidx)


def pool_set_variance(numerator, denominator2, n_genes, df, *, prior_share: float = 0.5):
    """fry's set statistic with the set's variance ratio borrowed from the same set in other cell types.

    Inputs are arrays over the cell types where the set was tested (one set): fry's ``numerator``,
    ``denominator2``, set size and residual df. The variance ratio of the set mean, ``vif = n_genes x
    denominator2`` (1 for independent genes), estimated on ``df`` residual dimensions in each cell type, gets a
    prior: the df-weighted mean of the other cell types' ``vif``, with ``prior_share`` x their summed df. Returns
    (t, df, p) per cell type; with one cell type, fry's own t, df and p. Not a limma method: measured on real
    donors in ``benchmarks/bench_differential.py --variants``.
    """
    num, den2, m, d = (np.asarray(v, dtype=float) for v in (numerator, denominator2, n_genes, df))
    vif = m * den2
    t, dfo = num / np.sqrt(den2), d.copy()
    for i in range(num.size):
        o = np.arange(num.size) != i
        if not o.any():
            continue
        v_o = np.sum(vif[o] * d[o]) / np.sum(d[o])
        d_pri = prior_share * np.sum(d[o])
        post = (d[i] * vif[i] + d_pri * v_o) / (d[i] + d_pri)
        t[i] = num[i] / np.sqrt(post / m[i])
        dfo[i] = d[i] + d_pri
    return t, dfo, 2 * stats.t.sf(np.abs(t), dfo)
