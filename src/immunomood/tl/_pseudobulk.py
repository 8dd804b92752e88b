"""Pseudobulk: summed counts per sample x group, with donor-level metadata and a record of what was dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._dask import count_problem, map_row_blocks, require_row_chunks
from .._docs import doc_adata, doc_params, doc_sample_key
from .._settings import logger
from .._utils import (
    check_adata,
    check_int,
    check_obs_key,
    check_str,
    get_matrix,
    sample_level_columns,
    warn,
)

__all__ = ["pseudobulk"]

SEP = "|"


def resolve_counts(
    adata: AnnData,
    layer: str | None,
    *,
    func: str,
    auto: bool = False,
    problem_of=count_problem,
    fallback_to_x: bool = False,
):
    """The raw-count matrix to aggregate, with errors that name the fix.

    ``layer=None`` uses ``adata.X``. With ``auto=True`` a ``"counts"`` layer is used when present, else ``X``.
    ``problem_of`` describes why a matrix is not raw counts (``None`` if it is); the default checks a sample of
    blocks of a Dask matrix (:func:`immunomood._dask.count_problem`). ``fallback_to_x``: a missing ``layer``
    falls back to ``X`` when ``X`` holds raw counts.
    """
    if auto and layer is None:
        layer = "counts" if "counts" in adata.layers else None
    if layer is not None and layer not in adata.layers:
        x_problem = problem_of(adata.X)
        if x_problem is None and fallback_to_x:  # a default layer that is absent: X holds raw counts, use it
            logger.info("%s: no layers[%r]; adata.X holds raw counts and is aggregated", func, layer)
            return get_matrix(adata, None), None
        if x_problem is None:
            raise KeyError(
                f"`{func}`: layer {layer!r} not found in adata.layers (available: {list(adata.layers.keys())}). "
                "adata.X holds raw counts: pass `layer=None` to aggregate adata.X."
            )
        raise KeyError(
            f"`{func}`: layer {layer!r} not found in adata.layers (available: {list(adata.layers.keys())}), and "
            f"adata.X is not raw counts ({x_problem}). Pass `layer=` naming the layer that holds raw counts "
            "(e.g. after `im.pp.normalize`, counts are in layers['counts'])."
        )
    X = get_matrix(adata, layer)
    problem = problem_of(X)
    if problem is not None:
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        raise ValueError(
            f"`{func}` sums raw counts, but {where} is not raw counts: {problem}. Pass `layer=` naming the layer "
            f"that holds raw counts (layers present: {list(adata.layers.keys())})."
        )
    return X, layer


def _block_sums(block, codes: np.ndarray, n_groups: int) -> sparse.csr_matrix:
    """Rows of one row block summed by ``codes`` (a sparse indicator-matrix product; codes < 0 ignored)."""
    keep = codes >= 0
    G = sparse.csr_matrix(
        (np.ones(int(keep.sum())), (codes[keep], np.flatnonzero(keep))), shape=(n_groups, block.shape[0])
    )
    out = G @ block
    return (
        sparse.csr_matrix(out, dtype=np.float64)
        if sparse.issparse(out)
        else sparse.csr_matrix(np.asarray(out, dtype=np.float64))
    )


def aggregate(X, codes: np.ndarray, n_groups: int) -> sparse.csr_matrix:
    """Sum the rows of ``X`` by integer ``codes`` (codes < 0 ignored): ``n_groups`` x genes, sparse float64.

    Block by block for a Dask ``X`` (the per-block products are added up; the matrix is never loaded whole);
    an in-memory ``X`` is one block.
    """
    parts = map_row_blocks(_block_sums, X, n_groups, row_args=np.asarray(codes, dtype=np.int64))
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return sparse.csr_matrix(out, dtype=np.float64)


def sum_by_sample_group(
    X, obs: pd.DataFrame, sample_key: str, groupby: str, *, min_cells: int = 0, func: str = "pseudobulk"
) -> tuple[pd.DataFrame, sparse.csr_matrix]:
    """The aggregation core of :func:`pseudobulk` (and of the functions that start from a pseudobulk).

    Returns the grid of every sample x group combination (:func:`combos`: ``sample_key``, ``groupby``,
    ``n_cells``; empty combinations included) and the summed rows of ``X`` for the combinations with at least
    ``min_cells`` cells, in grid order (all of them with the default ``min_cells=0``). ``X`` may be a Dask array
    chunked in whole cells (``func``, the caller's name, is in the error otherwise).
    """
    require_row_chunks(X, func=func)
    grid, code = combos(obs, sample_key, groupby)
    keep = grid["n_cells"].to_numpy() >= min_cells
    kept_idx = np.flatnonzero(keep)
    remap = -np.ones(len(grid), dtype=np.int64)
    remap[kept_idx] = np.arange(len(kept_idx))
    return grid, aggregate(X, remap[code], len(kept_idx))


def combos(obs: pd.DataFrame, sample_key: str, groupby: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Every sample x group combination (including empty ones) and the combination code of each cell."""
    s = obs[sample_key].astype("category")
    g = obs[groupby].astype("category")
    s_levels = [x for x in s.cat.categories if (s == x).any()]
    g_levels = [x for x in g.cat.categories if (g == x).any()]
    s_code = pd.Categorical(s, categories=s_levels).codes.astype(np.int64)
    g_code = pd.Categorical(g, categories=g_levels).codes.astype(np.int64)
    code = s_code * len(g_levels) + g_code
    n_cells = np.bincount(code, minlength=len(s_levels) * len(g_levels))
    grid = pd.DataFrame(
        {
            sample_key: np.repeat(np.asarray(s_levels, dtype=object), len(g_levels)),
            groupby: np.tile(np.asarray(g_levels, dtype=object), len(s_levels)),
            "n_cells": n_cells.astype(int),
        }
    )
    grid.index = [f"{a}{SEP}{b}" for a, b in zip(grid[sample_key], grid[groupby])]
    return grid, code


@doc_params(adata=doc_adata, sample_key=doc_sample_key)
def pseudobulk(
    adata: AnnData,
    *,
    sample_key: str,
    groupby: str,
    layer: str | None = None,
    min_cells: int = 10,
) -> AnnData:
    """Sum raw counts per sample x group (e.g. donor x cell type).

    Parameters
    ----------
    {adata}
    {sample_key}
    groupby
        Column of ``adata.obs`` with the groups to aggregate within (e.g. the cell type).
    layer
        Layer with the raw counts; ``None`` (default): ``layers["counts"]`` (where :func:`immunomood.pp.normalize`
        keeps them) when present, else ``adata.X`` (it must hold raw counts); recorded in
        ``uns["pseudobulk"]["layer"]``. The same parameter, name and default as every function that reads raw
        counts.
    min_cells
        Sample x group combinations with fewer cells are dropped, and listed in ``uns["dropped"]``.

    Returns
    -------
    AnnData with one row per kept sample x group (index ``"<sample>|<group>"``), summed counts in ``X`` (sparse,
    float64), ``var`` copied from ``adata``, and

    - ``obs``: ``sample_key``, ``groupby``, ``n_cells`` and every sample-level column of ``adata.obs`` (constant
      within each sample, e.g. donor, condition, sex, age, batch);
    - ``uns["dropped"]``: DataFrame of the combinations under ``min_cells`` (``sample_key``, ``groupby``,
      ``n_cells``, ``reason``; combinations with 0 cells included), and of the samples with no cell at all (an unused
      category of ``obs[sample_key]``, or a sample of ``uns["qc"]["report"]`` that QC emptied; ``groupby`` is
      ``"all"``, ``n_cells`` 0), with a warning when it is not empty;
    - ``uns["pseudobulk"]``: the parameters.
    """
    check_adata(adata)
    check_str("sample_key", sample_key)
    check_str("groupby", groupby)
    check_str("layer", layer, allow_none=True, fix="Name the layer with raw counts, or None for adata.X.")
    min_cells = check_int(
        "min_cells", min_cells, min=1, fix="It is the number of cells a sample x group needs to be kept, e.g. 10."
    )
    check_obs_key(adata, sample_key, what="sample_key column")
    check_obs_key(adata, groupby, what="groupby column")
    if sample_key == groupby:
        raise ValueError(f"`sample_key` and `groupby` are the same column ({sample_key!r}); pass two columns.")
    # Dask input: the same steps, the counts checked on a sample of blocks and the sums taken block by block
    X, layer = resolve_counts(adata, layer, func="pseudobulk", auto=True)
    grid, M = sum_by_sample_group(X, adata.obs, sample_key, groupby, min_cells=min_cells)
    keep = grid["n_cells"].to_numpy() >= min_cells
    dropped = grid.loc[~keep].reset_index(drop=True)
    dropped["reason"] = f"fewer than {min_cells} cells"
    empty = _samples_without_cells(adata, sample_key)
    if len(empty):
        dropped = pd.concat(
            [
                dropped,
                pd.DataFrame({sample_key: list(empty), groupby: "all", "n_cells": 0, "reason": list(empty.values())}),
            ],
            ignore_index=True,
        )
    for c in (sample_key, groupby):  # strings: an object column of ints cannot be written to h5ad
        dropped[c] = dropped[c].astype(str)
    obs = grid.loc[keep].copy()
    meta_cols = [c for c in sample_level_columns(adata.obs, sample_key) if c not in (groupby, "n_cells")]
    if meta_cols:
        meta = adata.obs.groupby(sample_key, observed=True, sort=False)[meta_cols].first()
        for c in meta_cols:
            vals = meta[c].reindex(obs[sample_key].to_numpy()).to_numpy()
            if isinstance(adata.obs[c].dtype, pd.CategoricalDtype):
                vals = pd.Categorical(vals, categories=adata.obs[c].cat.categories)
            obs[c] = vals
    for c in (sample_key, groupby):
        cats = adata.obs[c].cat.categories if isinstance(adata.obs[c].dtype, pd.CategoricalDtype) else None
        present = set(obs[c])
        levels = [x for x in (cats if cats is not None else pd.unique(obs[c])) if x in present]
        obs[c] = pd.Categorical(obs[c].to_numpy(), categories=levels)
    obs.index = obs.index.astype(str)
    out = AnnData(M, obs=obs, var=adata.var.copy())
    out.uns["dropped"] = dropped
    out.uns["pseudobulk"] = {
        "sample_key": sample_key,
        "groupby": groupby,
        "layer": "X" if layer is None else layer,
        "min_cells": int(min_cells),
    }
    if len(empty):
        warn(
            f"pseudobulk: {len(empty)} sample(s) of {sample_key!r} have no cells at all and are absent from the "
            f"result (listed in uns['dropped'] with their reason): "
            + ", ".join(f"{k} ({v})" for k, v in list(empty.items())[:10])
            + (" ..." if len(empty) > 10 else ""),
            stacklevel=3,
        )
    small = dropped[dropped["reason"].str.startswith("fewer than")]
    if len(small):
        shown = ", ".join(f"{a}{SEP}{b} ({n})" for a, b, n, _ in small.head(10).itertuples(index=False))
        warn(
            f"pseudobulk: {len(small)} sample x group combinations have fewer than {min_cells} cells and were "
            f"dropped (listed in uns['dropped']): {shown}{' ...' if len(small) > 10 else ''}",
            stacklevel=3,
        )
    return out


def _samples_without_cells(adata: AnnData, sample_key: str) -> dict[str, str]:
    """Samples known to the data but with no cell left: unused categories of ``obs[sample_key]`` and samples of the
    QC report (:func:`immunomood.pp.filter_cells`) with 0 cells after QC, each with its reason."""
    col = adata.obs[sample_key]
    present = set(map(str, pd.unique(col.astype(str))))
    out: dict[str, str] = {}
    qc = adata.uns.get("qc", {})
    report = qc.get("report") if isinstance(qc, dict) else None
    if isinstance(report, pd.DataFrame) and "cells_after" in report.columns:
        for s, n_before, n_after in zip(
            report.index.astype(str), report.get("cells_before", report["cells_after"]), report["cells_after"]
        ):
            if s not in present and int(n_after) == 0:
                out[s] = f"no cells left after QC ({int(n_before)} cells before, all removed by im.pp.filter_cells)"
    if isinstance(col.dtype, pd.CategoricalDtype):
        for c in map(str, col.cat.categories):
            if c not in present and c not in out:
                out[c] = f"no cells (a category of obs[{sample_key!r}] without cells, e.g. removed by QC)"
    return out
