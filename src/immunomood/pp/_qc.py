"""Per-cell QC metrics, per-sample robust outlier flags (median absolute deviation), cell filtering with a report."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numba
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._dask import block_value_problem, count_problem_sampled, is_dask, map_row_blocks, require_row_chunks
from .._docs import doc_adata, doc_copy, doc_counts_layer, doc_inplace, doc_params
from .._settings import logger
from .._utils import (
    check_adata,
    check_bool,
    check_int,
    check_not_view,
    check_number,
    check_obs_key,
    check_str,
    count_matrix_problem,
    counts_layer,
    get_matrix,
    warn,
)
from .._utils import (
    gene_symbols as _gene_symbols,
)

#: Metrics tested by :func:`flag_outliers`, in the order used for ``qc_reason`` (first failing metric wins).
OUTLIER_METRICS: tuple[str, ...] = (
    "log1p_total_counts",
    "log1p_n_genes_by_counts",
    "pct_counts_in_top_20_genes",
    "pct_counts_mt",
)
QC_REASONS: tuple[str, ...] = ("pass", *OUTLIER_METRICS)
OBS_METRICS: tuple[str, ...] = (
    "total_counts",
    "n_genes_by_counts",
    "log1p_total_counts",
    "log1p_n_genes_by_counts",
    "pct_counts_in_top_20_genes",
    "pct_counts_mt",
    "pct_counts_ribo",
    "pct_counts_hb",
)
_TOP_N = 20
_HB_RE = re.compile(r"^HB(A1|A2|B|D|E1|G1|G2|M|Q1|Z)$", re.IGNORECASE)
_MIN_CELLS_PSEUDOBULK = 10


# ----------------------------------------------------------------------------------------------
# shared private checks
# ----------------------------------------------------------------------------------------------
def check_unique_var_names(adata: AnnData) -> None:
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()
        raise ValueError(
            f"adata.var_names contains {int(adata.var_names.duplicated().sum())} duplicated names "
            f"(e.g. {list(map(str, dup[:5]))}). Make them unique first: `adata.var_names_make_unique()`."
        )


def check_no_negative(X, where: str, func: str) -> None:
    problem = count_matrix_problem(X)
    if problem is not None and ("negative" in problem or "NaN" in problem):
        raise ValueError(
            f"`{func}` needs counts (non-negative, finite), but {where} {problem.replace('it ', '', 1)}. "
            "Pass the layer that holds the raw counts with `layer=`."
        )


def gene_flags(symbols: pd.Index) -> pd.DataFrame:
    """Boolean ``mt``, ``ribo`` and ``hb`` flags for gene symbols (case-insensitive).

    ``mt``: symbols starting with ``MT-``; ``ribo``: starting with ``RPS`` or ``RPL``; ``hb``: haemoglobin
    chains HBA1, HBA2, HBB, HBD, HBE1, HBG1, HBG2, HBM, HBQ1, HBZ (not HBP1, HBEGF, HBS1L).
    """
    up = pd.Index(symbols).astype(str).str.upper()
    mt = np.asarray(up.str.startswith("MT-"), dtype=bool)
    ribo = np.asarray(up.str.startswith("RPS") | up.str.startswith("RPL"), dtype=bool)
    hb = np.asarray([bool(_HB_RE.match(s)) for s in up], dtype=bool)
    return pd.DataFrame({"mt": mt, "ribo": ribo, "hb": hb})


# ----------------------------------------------------------------------------------------------
# kernels: one pass over the rows of a CSR matrix
# ----------------------------------------------------------------------------------------------
@numba.njit(parallel=True, cache=True, nogil=True)
def _csr_row_metrics(data, indices, indptr, cat, top_n):  # pragma: no cover - compiled
    n = indptr.size - 1
    total = np.zeros(n, dtype=np.float64)
    ngenes = np.zeros(n, dtype=np.int64)
    top = np.zeros(n, dtype=np.float64)
    cats = np.zeros((n, 3), dtype=np.float64)
    for i in numba.prange(n):
        start, end = indptr[i], indptr[i + 1]
        buf = np.zeros(top_n, dtype=np.float64)
        nbuf = 0
        minpos = 0
        t = 0.0
        g = 0
        c0 = 0.0
        c1 = 0.0
        c2 = 0.0
        for k in range(start, end):
            v = np.float64(data[k])
            if v == 0.0:
                continue
            t += v
            g += 1
            c = cat[indices[k]]
            if c == 1:
                c0 += v
            elif c == 2:
                c1 += v
            elif c == 3:
                c2 += v
            if nbuf < top_n:
                buf[nbuf] = v
                nbuf += 1
                if nbuf == top_n:
                    minpos = 0
                    for j in range(1, top_n):
                        if buf[j] < buf[minpos]:
                            minpos = j
            elif v > buf[minpos]:
                buf[minpos] = v
                minpos = 0
                for j in range(1, top_n):
                    if buf[j] < buf[minpos]:
                        minpos = j
        s = 0.0
        for j in range(nbuf):
            s += buf[j]
        total[i] = t
        ngenes[i] = g
        top[i] = s
        cats[i, 0] = c0
        cats[i, 1] = c1
        cats[i, 2] = c2
    return total, ngenes, top, cats


def _row_metrics(X, cat: np.ndarray, top_n: int = _TOP_N, chunk: int = 20_000):
    """(total, n_genes, top_n sum, category sums [n, 3]) for every row of X (sparse or dense)."""
    if sparse.issparse(X):
        if X.format != "csr":
            X = sparse.csr_matrix(X)
        return _csr_row_metrics(X.data, X.indices, X.indptr, cat, top_n)
    X = np.asarray(X)
    n = X.shape[0]
    total = np.empty(n, np.float64)
    ngenes = np.empty(n, np.int64)
    top = np.empty(n, np.float64)
    cats = np.empty((n, 3), np.float64)
    k = min(top_n, X.shape[1])
    masks = [cat == c for c in (1, 2, 3)]
    for s in range(0, n, chunk):
        B = np.asarray(X[s : s + chunk], dtype=np.float64)
        total[s : s + chunk] = B.sum(1)
        ngenes[s : s + chunk] = (B > 0).sum(1)
        part = -np.partition(-B, k - 1, axis=1)[:, :k] if k < B.shape[1] else B
        top[s : s + chunk] = part.sum(1)
        for j, m in enumerate(masks):
            cats[s : s + chunk, j] = B[:, m].sum(1)
    return total, ngenes, top, cats


@numba.njit(cache=True, nogil=True)
def _csr_genes_seen(data, indices, n_vars):  # pragma: no cover - compiled
    seen = np.zeros(n_vars, dtype=np.bool_)
    for k in range(data.size):
        if data[k] != 0:
            seen[indices[k]] = True
    return seen


def _n_empty_genes(X) -> int:
    if sparse.issparse(X):
        if X.format == "csr":
            return int((~_csr_genes_seen(X.data, X.indices, X.shape[1])).sum())
        return int((np.asarray((X != 0).sum(0)).ravel() == 0).sum())
    return int((~np.asarray(X != 0).any(0)).sum())


def _genes_seen(X) -> np.ndarray:
    if sparse.issparse(X):
        if X.format != "csr":
            X = sparse.csr_matrix(X)
        return _csr_genes_seen(X.data, X.indices, X.shape[1])
    return np.asarray(X != 0).any(0)


def _block_qc(block, cat: np.ndarray):
    """QC row metrics, genes seen and a value problem for one row block of a Dask array."""
    if not sparse.issparse(block):
        block = np.asarray(block)
    return (*_row_metrics(block, cat), _genes_seen(block), block_value_problem(block))


def _dask_row_metrics(X, cat: np.ndarray, where: str):
    """``_row_metrics`` and the number of empty genes of a Dask array, one pass over its row blocks."""
    require_row_chunks(X, func="qc_metrics")
    parts = map_row_blocks(_block_qc, X, cat)
    for p in parts:
        if p[5] is not None:
            raise ValueError(
                f"`qc_metrics` needs counts (non-negative, finite), but {where} {p[5].replace('it ', '', 1)}. "
                "Pass the layer that holds the raw counts with `layer=`."
            )
    total = np.concatenate([p[0] for p in parts])
    ngenes = np.concatenate([p[1] for p in parts])
    top = np.concatenate([p[2] for p in parts])
    cats = np.concatenate([p[3] for p in parts]) if parts else np.zeros((0, 3))
    seen = np.logical_or.reduce([p[4] for p in parts])
    return total, ngenes, top, cats, int((~seen).sum())


def get_qc(adata: AnnData) -> dict:
    qc = adata.uns.get("qc")
    if not isinstance(qc, dict):
        qc = {}
    qc.setdefault("params", {})
    return qc


# ----------------------------------------------------------------------------------------------
# qc_metrics
# ----------------------------------------------------------------------------------------------
@doc_params(adata=doc_adata, layer=doc_counts_layer, inplace=doc_inplace)
def qc_metrics(
    adata: AnnData,
    *,
    sample_key: str | None = None,
    layer: str | None = None,
    gene_symbols: str | None = None,
    inplace: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Per-cell quality-control metrics (one pass over the count matrix).

    The same values as :func:`scanpy.pp.calculate_qc_metrics` with ``qc_vars=["mt", "ribo", "hb"]``,
    ``percent_top=[20]`` and ``log1p=True``, computed in one pass over the rows of a CSR matrix (in float64).

    Parameters
    ----------
    {adata}
    sample_key
        Optional column of ``adata.obs`` that identifies the sample (donor) of each cell. When given it is
        validated and a per-sample summary is written to ``adata.uns["qc"]["per_sample"]``.
    {layer}
    gene_symbols
        Column of ``adata.var`` with gene symbols. By default ``var_names`` are used, or, when they are
        Ensembl IDs, the ``var`` column that holds symbols is found automatically.
    {inplace}

    Returns
    -------
    With ``inplace=True``, ``None``, and writes

    - ``adata.obs``: ``total_counts``, ``n_genes_by_counts``, ``log1p_total_counts``,
      ``log1p_n_genes_by_counts``, ``pct_counts_in_top_20_genes``, ``pct_counts_mt``, ``pct_counts_ribo``,
      ``pct_counts_hb`` (percentages in 0-100; NaN for cells without counts, and ``pct_counts_mt`` is NaN
      everywhere when no mitochondrial gene is found, with a warning);
    - ``adata.var``: boolean ``mt`` (symbol starts with ``MT-``), ``ribo`` (``RPS``/``RPL``), ``hb``
      (haemoglobin chains HBA1/2, HBB, HBD, HBE1, HBG1/2, HBM, HBQ1, HBZ), all case-insensitive;
    - ``adata.uns["qc"]``: ``params["qc_metrics"]``, ``n_empty_cells``, ``n_empty_genes`` and, with
      ``sample_key``, ``per_sample`` (a DataFrame of per-sample medians).

    With ``inplace=False``, ``(obs_metrics, var_flags)`` DataFrames and ``adata`` is left untouched.

    Notes
    -----
    Cells or genes without any count are kept and reported (warning with their number); their
    percentages are undefined (NaN). Negative or non-finite values raise an error; non-integer values
    (e.g. ambient-corrected counts) are accepted.
    """
    check_adata(adata)
    inplace = check_bool("inplace", inplace)
    check_str("sample_key", sample_key, allow_none=True, fix="Pass the name of the obs column with the sample.")
    check_str("layer", layer, allow_none=True)
    check_str("gene_symbols", gene_symbols, allow_none=True)
    if inplace:
        check_not_view(adata, func="qc_metrics")
    check_obs_key(adata, sample_key, what="sample_key column")
    check_unique_var_names(adata)
    layer = counts_layer(adata, layer)
    X = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    lazy = is_dask(X)
    if lazy:  # a sample of blocks now (fail fast); every block is checked during the pass below
        require_row_chunks(X, func="qc_metrics")
        problem = count_problem_sampled(X)
        if problem is not None and ("negative" in problem or "NaN" in problem):
            raise ValueError(
                f"`qc_metrics` needs counts (non-negative, finite), but {where} {problem.replace('it ', '', 1)}. "
                "Pass the layer that holds the raw counts with `layer=`."
            )
    else:
        check_no_negative(X, where, "qc_metrics")

    symbols = _gene_symbols(adata, gene_symbols)
    flags = gene_flags(symbols)
    flags.index = adata.var_names
    cat = np.zeros(adata.n_vars, dtype=np.int8)
    cat[flags["mt"].to_numpy()] = 1
    cat[flags["ribo"].to_numpy()] = 2
    cat[flags["hb"].to_numpy()] = 3

    if lazy:
        total, ngenes, top, cats, n_empty_genes = _dask_row_metrics(X, cat, where)
    else:
        total, ngenes, top, cats = _row_metrics(X, cat)
        n_empty_genes = _n_empty_genes(X)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = 100.0 * cats / total[:, None]
        pct_top = 100.0 * top / total
    empty = total == 0
    pct[empty] = np.nan
    pct_top[empty] = np.nan
    n_mt = int(flags["mt"].sum())
    if n_mt == 0:
        pct[:, 0] = np.nan
        src = "adata.var_names" if gene_symbols is None else f"adata.var[{gene_symbols!r}]"
        warn(
            f"No mitochondrial gene found (no gene symbol starting with 'MT-' in {src}, "
            f"{symbols[:3].tolist()}...). pct_counts_mt is set to NaN rather than 0%. If var_names are "
            "Ensembl IDs, pass the var column holding gene symbols with `gene_symbols=`.",
        )
    obs_df = pd.DataFrame(
        {
            "total_counts": total,
            "n_genes_by_counts": ngenes,
            "log1p_total_counts": np.log1p(total),
            "log1p_n_genes_by_counts": np.log1p(ngenes),
            "pct_counts_in_top_20_genes": pct_top,
            "pct_counts_mt": pct[:, 0],
            "pct_counts_ribo": pct[:, 1],
            "pct_counts_hb": pct[:, 2],
        },
        index=adata.obs_names,
    )
    n_empty_cells = int(empty.sum())
    if n_empty_cells or n_empty_genes:
        warn(
            f"{n_empty_cells} cells and {n_empty_genes} genes have no counts at all. They are kept; "
            "`flag_outliers` flags the empty cells (reason 'log1p_total_counts'), and genes without counts can be "
            "removed with `scanpy.pp.filter_genes(adata, min_cells=1)`.",
        )
    logger.info(
        "qc_metrics: %d cells, %d mt / %d ribo / %d hb genes",
        adata.n_obs,
        n_mt,
        int(flags["ribo"].sum()),
        int(flags["hb"].sum()),
    )
    if not inplace:
        return obs_df, flags
    for c in obs_df.columns:
        adata.obs[c] = obs_df[c].to_numpy()
    for c in flags.columns:
        adata.var[c] = flags[c].to_numpy()
    qc = get_qc(adata)
    params = {
        "layer": layer if layer is not None else "X",
        "n_mt_genes": n_mt,
        "n_ribo_genes": int(flags["ribo"].sum()),
        "n_hb_genes": int(flags["hb"].sum()),
    }
    if gene_symbols is not None:
        params["gene_symbols"] = gene_symbols
    if sample_key is not None:
        params["sample_key"] = sample_key
        g = obs_df.assign(_s=adata.obs[sample_key].to_numpy(), _e=empty).groupby("_s", observed=True, sort=True)
        per = g.agg(
            n_cells=("total_counts", "size"),
            median_total_counts=("total_counts", "median"),
            median_n_genes_by_counts=("n_genes_by_counts", "median"),
            median_pct_counts_mt=("pct_counts_mt", "median"),
            n_empty_cells=("_e", "sum"),
        )
        per.index = per.index.astype(str)
        per.index.name = sample_key
        qc["per_sample"] = per
    qc["params"]["qc_metrics"] = params
    qc["n_empty_cells"] = n_empty_cells
    qc["n_empty_genes"] = n_empty_genes
    adata.uns["qc"] = qc
    return None


# ----------------------------------------------------------------------------------------------
# flag_outliers
# ----------------------------------------------------------------------------------------------
def sample_codes(adata: AnnData, sample_key: str | None) -> tuple[np.ndarray, list[str]]:
    if sample_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64), ["all"]
    cat = pd.Categorical(adata.obs[sample_key])
    cat = cat.remove_unused_categories()
    return np.asarray(cat.codes, dtype=np.int64), [str(c) for c in cat.categories]


@doc_params(adata=doc_adata, inplace=doc_inplace)
def flag_outliers(
    adata: AnnData,
    *,
    sample_key: str | None,
    nmads: float = 5,
    mt_nmads: float = 3,
    max_pct_mt: float | None = None,
    inplace: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Flag outlier cells within each sample with the median absolute deviation (MAD).

    Within each sample, a cell is an outlier for a metric when ``|value - median| > n * MAD``, with
    ``MAD = median(|value - median|)`` (the *median* absolute deviation, unscaled; comparison strict).
    Metrics, in this order: ``log1p_total_counts``, ``log1p_n_genes_by_counts``,
    ``pct_counts_in_top_20_genes`` (all with ``nmads``) and ``pct_counts_mt`` (with ``mt_nmads``, and also
    when above ``max_pct_mt`` if given). The rule is two-sided for every metric.

    Parameters
    ----------
    {adata}
    sample_key
        Column of ``adata.obs`` that identifies the sample; thresholds are computed per sample.
        ``None``: all cells form one group.
    nmads
        Number of MADs for the counts, genes and top-20 metrics.
    mt_nmads
        Number of MADs for ``pct_counts_mt``.
    max_pct_mt
        Optional absolute upper limit on ``pct_counts_mt`` (percent, 0-100).
    {inplace}

    Returns
    -------
    With ``inplace=True``, ``None``, and writes

    - ``adata.obs["qc_outlier"]`` (bool) and ``adata.obs["qc_reason"]`` (categorical: ``"pass"`` or the
      first failing metric in the order above);
    - ``adata.uns["qc"]["thresholds"]``: a DataFrame, one row per sample x metric, with columns
      ``sample``, ``metric``, ``n_cells``, ``median``, ``mad``, ``nmads``, ``low``, ``high``, ``n_outliers``
      (``n_outliers`` counts cells failing that metric, whether or not an earlier metric failed too);
    - ``adata.uns["qc"]["params"]["flag_outliers"]``.

    With ``inplace=False``, ``(flags, thresholds)`` DataFrames and ``adata`` is left untouched.

    Notes
    -----
    Requires :func:`immunomood.pp.qc_metrics` first. Cells with no counts are always outliers (reason
    ``log1p_total_counts``). NaN values (e.g. ``pct_counts_mt`` when no mitochondrial gene was found) are
    ignored; a metric that is NaN for a whole sample is skipped with a warning. A MAD of 0 means every
    value different from the median is an outlier; this is reported with a warning.
    """
    check_adata(adata)
    inplace = check_bool("inplace", inplace)
    check_str("sample_key", sample_key, allow_none=True, fix="Pass the name of the obs column with the sample.")
    nmads = check_number("nmads", nmads, min=0, min_inclusive=False, fix="Typical values are 3 to 5.")
    mt_nmads = check_number("mt_nmads", mt_nmads, min=0, min_inclusive=False, fix="Typical values are 3 to 5.")
    max_pct_mt = check_number(
        "max_pct_mt",
        max_pct_mt,
        min=0,
        max=100,
        allow_none=True,
        fix="It is a percentage of the cell's counts (e.g. 20), or None for no hard limit.",
    )
    if inplace:
        check_not_view(adata, func="flag_outliers")
    check_obs_key(adata, sample_key, what="sample_key column")
    missing = [m for m in OUTLIER_METRICS + ("total_counts",) if m not in adata.obs.columns]
    if missing:
        raise KeyError(
            f"QC metric columns {missing} not found in adata.obs: run im.pp.qc_metrics first "
            f"(`im.pp.qc_metrics(adata, sample_key=...)`). Available: {list(map(str, adata.obs.columns))}."
        )

    codes, samples = sample_codes(adata, sample_key)
    n = adata.n_obs
    fails = np.zeros((len(OUTLIER_METRICS), n), dtype=bool)
    rows = []
    zero_mad, all_nan = [], []
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(samples) + 1))
    for j, metric in enumerate(OUTLIER_METRICS):
        x_all = adata.obs[metric].to_numpy(dtype=np.float64)
        k = mt_nmads if metric == "pct_counts_mt" else nmads
        for s, sample in enumerate(samples):
            idx = order[bounds[s] : bounds[s + 1]]
            x = x_all[idx]
            ok = ~np.isnan(x)
            if not ok.any():
                all_nan.append((sample, metric))
                rows.append((sample, metric, idx.size, np.nan, np.nan, k, np.nan, np.nan, 0))
                continue
            med = np.median(x[ok])
            mad = np.median(np.abs(x[ok] - med))
            dev = np.abs(x - med)
            with np.errstate(invalid="ignore"):
                out = dev > k * mad
                high = med + k * mad
                if metric == "pct_counts_mt" and max_pct_mt is not None:
                    out |= x > max_pct_mt
                    high = min(high, max_pct_mt)
            if mad == 0:
                zero_mad.append((sample, metric))
            fails[j, idx] = out
            rows.append((sample, metric, idx.size, med, mad, k, med - k * mad, high, int(out.sum())))
    empty = adata.obs["total_counts"].to_numpy() == 0
    fails[0] |= empty
    outlier = fails.any(0)
    first = np.where(outlier, fails.argmax(0) + 1, 0)
    reason = pd.Categorical.from_codes(first, categories=list(QC_REASONS))
    thresholds = pd.DataFrame(
        rows, columns=["sample", "metric", "n_cells", "median", "mad", "nmads", "low", "high", "n_outliers"]
    )
    thresholds["nmads"] = thresholds["nmads"].astype(np.float64)
    if all_nan:
        warn(f"Skipped metric(s) that are NaN for a whole sample (sample, metric): {all_nan[:10]}.")
    if zero_mad:
        warn(
            f"MAD is 0 for (sample, metric) {zero_mad[:10]}{' ...' if len(zero_mad) > 10 else ''}: every cell whose "
            "value differs from the median is flagged for that metric. Check these samples."
        )
    flags = pd.DataFrame({"qc_outlier": outlier, "qc_reason": reason}, index=adata.obs_names)
    logger.info("flag_outliers: %d of %d cells flagged", int(outlier.sum()), n)
    if not inplace:
        return flags, thresholds
    adata.obs["qc_outlier"] = outlier
    adata.obs["qc_reason"] = reason
    qc = get_qc(adata)
    params = {"nmads": float(nmads), "mt_nmads": float(mt_nmads)}
    if sample_key is not None:
        params["sample_key"] = sample_key
    if max_pct_mt is not None:
        params["max_pct_mt"] = float(max_pct_mt)
    qc["params"]["flag_outliers"] = params
    qc["thresholds"] = thresholds
    adata.uns["qc"] = qc
    return None


# ----------------------------------------------------------------------------------------------
# filter_cells
# ----------------------------------------------------------------------------------------------
def _infer_sample_key(adata: AnnData) -> str | None:
    qc = adata.uns.get("qc", {})
    params = qc.get("params", {}) if isinstance(qc, dict) else {}
    for step in ("flag_outliers", "detect_doublets", "qc_metrics"):
        key = params.get(step, {}).get("sample_key") if isinstance(params.get(step), dict) else None
        if key is not None:
            return str(key)
    return None


@doc_params(adata=doc_adata, copy=doc_copy)
def filter_cells(
    adata: AnnData,
    *,
    remove: Sequence[str] = ("qc_outlier", "predicted_doublet"),
    min_cells_per_sample: int = _MIN_CELLS_PSEUDOBULK,
    sample_key: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Remove flagged cells and report, per sample, what was removed and why.

    Parameters
    ----------
    {adata}
    remove
        Boolean ``obs`` columns; a cell is removed when any is True (NA counts as False). A cell is
        attributed to its first reason: for ``"qc_outlier"`` the failing metric in ``obs["qc_reason"]``,
        otherwise the column name.
    min_cells_per_sample
        Samples left with fewer cells are flagged ``too_small_to_pseudobulk`` in the report (they are
        kept). The default, 10, is the usual minimum number of cells for one pseudobulk profile
        (e.g. decoupler's ``min_cells=10``); as a pseudobulk needs that many cells *per cell type*, a sample
        close to this limit will contribute few cell types.
    sample_key
        Column of ``adata.obs`` with the sample. Default: the ``sample_key`` used by
        :func:`flag_outliers` / :func:`detect_doublets` (recorded in ``uns["qc"]["params"]``), else one group.
    {copy}

    Returns
    -------
    With ``copy=False``, ``None``: ``adata`` is subset **in place** (cells removed). With ``copy=True``, the
    filtered copy; ``adata`` is left untouched. Either way the result has
    ``uns["qc"]["report"]``: a DataFrame with one row per sample (also samples that lost every cell), columns
    ``cells_before``, ``removed_<reason>`` for each reason (each ``qc_reason`` metric when ``"qc_outlier"`` is
    in ``remove``, then each other column of ``remove``), ``cells_removed``, ``cells_after``,
    ``fraction_removed`` and ``too_small_to_pseudobulk``; and ``uns["qc"]["params"]["filter_cells"]``.
    Warns naming every sample that lost more than half of its cells.
    """
    check_adata(adata)
    copy = check_bool("copy", copy)
    min_cells_per_sample = check_int(
        "min_cells_per_sample", min_cells_per_sample, min=0, fix="It is a number of cells, e.g. 10."
    )
    check_str("sample_key", sample_key, allow_none=True)
    if not copy:
        check_not_view(adata, func="filter_cells")
    if isinstance(remove, str):
        remove = (remove,)
    remove = tuple(remove)
    if not remove:
        raise ValueError("`remove` must name at least one boolean obs column, got (). Pass e.g. ('qc_outlier',).")
    missing = [c for c in remove if c not in adata.obs.columns]
    if missing:
        hints = {"qc_outlier": "im.pp.flag_outliers", "predicted_doublet": "im.pp.detect_doublets"}
        hint = "; ".join(f"{c!r} is written by {hints[c]}" for c in missing if c in hints)
        raise KeyError(
            f"Column(s) {missing} not found in adata.obs. {hint + '. ' if hint else ''}"
            f"Run those steps first or change `remove`. Available: {list(map(str, adata.obs.columns))}."
        )
    if "qc_outlier" in remove and "qc_reason" not in adata.obs.columns:
        raise KeyError("adata.obs['qc_reason'] not found: run im.pp.flag_outliers first.")
    if sample_key is None:
        sample_key = _infer_sample_key(adata)
        if sample_key is not None and sample_key not in adata.obs.columns:
            sample_key = None
    check_obs_key(adata, sample_key, what="sample_key column")

    masks = {}
    for c in remove:
        col = adata.obs[c]
        if not (pd.api.types.is_bool_dtype(col) or str(col.dtype) == "boolean"):
            raise TypeError(f"adata.obs[{c!r}] must be boolean (True = remove), got dtype {col.dtype}.")
        masks[c] = col.fillna(False).to_numpy(dtype=bool)

    # attribute each removed cell to its first reason
    reason = np.full(adata.n_obs, "", dtype=object)
    reason_cols: list[str] = []
    for c in remove:
        if c == "qc_outlier":
            qr = adata.obs["qc_reason"].astype(str).to_numpy()
            sel = masks[c] & (reason == "")
            reason[sel] = qr[sel]
            reason_cols += list(OUTLIER_METRICS)
            extra = sorted(set(qr[sel]) - set(OUTLIER_METRICS))
            reason_cols += [e for e in extra if e not in reason_cols]
        else:
            sel = masks[c] & (reason == "")
            reason[sel] = c
            reason_cols.append(c)
    removed = reason != ""

    codes, samples = sample_codes(adata, sample_key)
    ns = len(samples)
    before = np.bincount(codes, minlength=ns)
    report = pd.DataFrame(index=pd.Index(samples, name=sample_key or "sample"))
    report["cells_before"] = before
    for rc in reason_cols:
        report[f"removed_{rc}"] = np.bincount(codes[reason == rc], minlength=ns)
    report["cells_removed"] = np.bincount(codes[removed], minlength=ns)
    report["cells_after"] = report["cells_before"] - report["cells_removed"]
    report["fraction_removed"] = report["cells_removed"] / np.maximum(report["cells_before"], 1)
    report["too_small_to_pseudobulk"] = report["cells_after"].to_numpy() < int(min_cells_per_sample)

    lost_half = report.index[report["fraction_removed"] > 0.5].tolist()
    if lost_half:
        detail = ", ".join(f"{s}: {report.loc[s, 'cells_removed']}/{report.loc[s, 'cells_before']}" for s in lost_half)
        warn(
            f"Sample(s) {lost_half} lost more than half of their cells ({detail}). "
            "See adata.uns['qc']['report'] and im.pl.qc_report."
        )
    small = report.index[report["too_small_to_pseudobulk"]].tolist()
    if small:
        logger.info("samples with fewer than %d cells left: %s", min_cells_per_sample, small)

    params = {
        "remove": list(remove),
        "min_cells_per_sample": int(min_cells_per_sample),
        "n_removed": int(removed.sum()),
    }
    if sample_key is not None:
        params["sample_key"] = sample_key
    keep = ~removed
    if copy:
        out = adata[keep].copy()
    else:
        out = adata
        if removed.any():
            adata._inplace_subset_obs(keep)
    qc = get_qc(out)
    qc["params"]["filter_cells"] = params
    qc["report"] = report
    out.uns["qc"] = qc
    logger.info("filter_cells: removed %d of %d cells", int(removed.sum()), removed.size)
    return out if copy else None
