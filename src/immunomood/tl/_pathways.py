"""Per-cell gene-set activity scores: one sparse matrix product, centring done algebraically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._dask import count_problem, map_row_blocks, require_row_chunks
from .._docs import doc_adata, doc_gene_sets, doc_inplace, doc_layer, doc_params
from .._kernels import log1p_cp10k, row_totals
from .._settings import logger
from .._utils import (
    check_adata,
    check_bool,
    check_layer,
    check_not_view,
    check_str,
    get_matrix,
    identifier_kind,
    match_genes,
    symbols_for_sets,
    warn,
)
from ._gene_sets import resolve_gene_sets

__all__ = ["score_pathways"]

MIN_GENES_WARN = 3


def _log_normalised_columns(X, cols: np.ndarray, *, is_counts: bool, target_sum: float = 1e4):
    """Columns ``cols`` of ``X`` on the log1p(counts per ``target_sum``) scale (float64), without touching ``X``.

    Only the selected columns are materialised (a small matrix); the library sizes are the row sums of all of ``X``.
    """
    sub = X[:, cols]
    if is_counts:
        return log1p_cp10k(sub, target_sum=target_sum, totals=row_totals(X), dtype=np.float64)
    return sparse.csr_matrix(sub, dtype=np.float64) if sparse.issparse(sub) else np.asarray(sub, dtype=np.float64)


try:  # one fused pass over a CSR matrix (numba is a scanpy dependency)
    import numba

    @numba.njit(parallel=True, cache=True, fastmath=True, boundscheck=False)
    def _csr_set_sums(
        indptr, indices, data, colmap, member_ptr, member_set, is_counts, target_sum, out, expressed, max_row
    ):
        """out[c, k] = sum over set-k genes of x[c, g] (log1p CP10k when ``is_counts``); one pass over X.

        Per row: the library size (counts only, a vectorised sum), then a branch-free compaction of the positions
        of set genes (``colmap >= 0``; a branch per stored value would mispredict), then work on those few hits.
        """
        n = indptr.shape[0] - 1
        n_chunks = expressed.shape[0]  # one row of flags per chunk: no cache line shared between threads
        step = (n + n_chunks - 1) // n_chunks
        for ch in numba.prange(n_chunks):
            hits = np.empty(max_row + 1, dtype=np.int64)
            for r in range(ch * step, min(n, (ch + 1) * step)):
                a, b = indptr[r], indptr[r + 1]
                nh = 0
                lib = 0.0
                if is_counts:  # library size and compaction in the same sweep over the row
                    for j in range(a, b):
                        lib += data[j]
                        hits[nh] = j
                        nh += colmap[indices[j]] >= 0
                else:
                    for j in range(a, b):
                        hits[nh] = j
                        nh += colmap[indices[j]] >= 0
                scale = target_sum / lib if lib > 0 else 0.0
                log1 = np.log1p(scale)  # counts of 1 and 2 are most stored values: one log1p per row each
                log2 = np.log1p(2.0 * scale)
                for h in range(nh):
                    j = hits[h]
                    v = data[j]
                    if v != 0:
                        c = colmap[indices[j]]
                        if is_counts:
                            if v == 1.0:
                                v = log1
                            elif v == 2.0:
                                v = log2
                            else:
                                v = np.log1p(v * scale)
                        expressed[ch, c] = True
                        for q in range(member_ptr[c], member_ptr[c + 1]):
                            out[r, member_set[q]] += v
        return out

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False


def _fast_csr_sums(X, union: np.ndarray, found: dict[str, np.ndarray], is_counts: bool):
    """Per-cell, per-set sums of log-normalised expression and the expressed flag of every union gene."""
    X = X if isinstance(X, sparse.csr_matrix) or getattr(X, "format", None) == "csr" else None
    if X is None or not HAVE_NUMBA or X.shape[0] == 0:
        return None
    colmap = -np.ones(X.shape[1], dtype=np.int32)
    colmap[union] = np.arange(len(union), dtype=np.int32)
    lists: list[list[int]] = [[] for _ in range(len(union))]
    for q, idx in enumerate(found.values()):
        for g in np.unique(np.asarray(idx, dtype=int)):
            lists[colmap[g]].append(q)
    member_ptr = np.zeros(len(union) + 1, dtype=np.int64)
    member_ptr[1:] = np.cumsum([len(v) for v in lists])
    member_set = np.array([q for v in lists for q in v], dtype=np.int64)
    out = np.zeros((X.shape[0], len(found)))
    expressed = np.zeros((64, len(union)), dtype=np.bool_)
    max_row = int(np.diff(X.indptr).max())
    _csr_set_sums(
        X.indptr, X.indices, X.data, colmap, member_ptr, member_set, bool(is_counts), 1e4, out, expressed, max_row
    )
    return out, expressed.any(axis=0)


def _match_sets(symbols, sets: Mapping[str, Sequence[str]]):
    """match_genes once for the union of all sets (it upper-cases every symbol), then split per set."""
    allg = list(dict.fromkeys(str(g) for v in sets.values() for g in v))
    idx, miss = match_genes(symbols, allg)
    missing_set = set(miss)
    pos = dict(zip([g for g in allg if g not in missing_set], idx.tolist(), strict=False))
    found, missing = {}, {}
    for name, genes in sets.items():
        found[name] = np.asarray([pos[str(g)] for g in genes if str(g) in pos], dtype=int)
        missing[name] = [g for g in genes if str(g) not in pos]
    return found, missing


def set_weight_matrix(col_of_gene: dict[int, int], members: dict[str, np.ndarray], n_cols: int) -> np.ndarray:
    """Genes x sets matrix W with W[j, k] = 1 / |set k| for the genes found in set k (0 elsewhere)."""
    W = np.zeros((n_cols, len(members)))
    for k, idx in enumerate(members.values()):
        if len(idx):
            W[[col_of_gene[i] for i in idx], k] = 1.0 / len(idx)
    return W


@doc_params(adata=doc_adata, gene_sets=doc_gene_sets, layer=doc_layer, inplace=doc_inplace)
def score_pathways(
    adata: AnnData,
    gene_sets: str | Mapping[str, Sequence[str]] = "complement",
    *,
    layer: str | None = None,
    gene_symbols: str | None = None,
    key_added: str = "pathway_scores",
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Per-cell activity of gene sets (complement arms, interferon, ...).

    Score definition: for cell ``c`` and set ``S`` (the set's genes found in ``adata`` and expressed in at
    least one cell),

    ``score[c, S] = mean over g in S of (x[c, g] - mean_over_cells(x[:, g]))``,

    where ``x[c, g]`` is log-normalised expression (``log1p`` of counts per 10,000) and the centring term the
    mean of gene ``g`` over all cells. A score is therefore the set's mean log-expression relative to the average
    cell of ``adata`` (0 = average; +0.1 = the set's genes are on average 0.1 log units higher). It is computed as a
    single sparse product ``X_S @ W`` (``W`` the genes x sets weight matrix) whose column means give the centring
    term, so the matrix is never densified. If the chosen matrix holds raw counts (integers), it is log-normalised
    internally (only the set genes, never written back); otherwise it is taken as log-normalised already.

    Per-cell scores describe cells; to compare conditions use :func:`immunomood.tl.differential_activity`, which
    treats the donor as the unit (testing per-cell scores between conditions is badly anti-conservative).

    Parameters
    ----------
    {adata}
    {gene_sets}
    {layer}
    gene_symbols
        Column of ``adata.var`` holding gene symbols; by default ``var_names``, or a symbol column found
        automatically when ``var_names`` are Ensembl IDs.
    key_added
        Key under which the scores are written.
    {inplace}

    Returns
    -------
    With ``inplace=True``, writes and returns ``None``:

    - ``adata.obsm[key_added]``: DataFrame cells x sets (index ``obs_names``).
    - ``adata.uns[key_added]``: dict with ``"params"`` (gene_sets, layer, input scale, definition),
      ``"genes_used"`` and ``"genes_missing"`` (set name -> list of genes).

    With ``inplace=False``, returns the DataFrame (the gene lists in ``DataFrame.attrs``) and leaves ``adata``
    untouched.
    """
    check_adata(adata)
    inplace = check_bool("inplace", inplace)
    check_str("key_added", key_added, fix="Pass e.g. key_added='pathway_scores'.")
    check_str("layer", layer, allow_none=True, fix="Name a layer, or None for adata.X.")
    check_str("gene_symbols", gene_symbols, allow_none=True, fix="Name the adata.var column with gene symbols.")
    check_layer(adata, layer)
    if gene_symbols is not None and gene_symbols not in adata.var.columns:
        raise KeyError(
            f"gene_symbols={gene_symbols!r} not found in adata.var columns. "
            f"Available: {list(map(str, adata.var.columns))}. Pass the column with gene symbols, or None."
        )
    if inplace:
        check_not_view(adata, func="score_pathways")
    X = get_matrix(adata, layer)
    require_row_chunks(X, func="score_pathways")
    sets, symbols, found, missing, union = _prepare_sets(adata, gene_sets, gene_symbols)
    is_counts = count_problem(X) is None  # on a sample of blocks (first, middle, last) for Dask input
    if is_counts:
        logger.info("score_pathways: the matrix holds raw counts; log-normalising the set genes internally")
    # one pass over the row blocks (an in-memory matrix is one block): per-set sums, or the set-gene columns
    parts = map_row_blocks(_block_set_sums, X, union, found, is_counts)
    fast = all(p[0] == "fast" for p in parts)
    if fast:
        sums = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, len(found)))
        expressed_mask = np.logical_or.reduce([p[2] for p in parts])
        sub = None
    else:
        if any(p[0] != "sub" for p in parts):
            raise TypeError("score_pathways: the Dask array mixes sparse and dense blocks; make them one type.")
        subs = [p[1] for p in parts]
        sub = sparse.vstack(subs, format="csr") if sparse.issparse(subs[0]) else np.vstack(subs)
        expressed_mask = np.asarray((sub != 0).sum(axis=0)).ravel() > 0
        sums = None
    used = _used_genes(found, missing, union, expressed_mask, symbols, sets, stacklevel=4)
    S = _set_means(used, union, sums=sums, sub=sub)
    return _finish(
        adata,
        S,
        used,
        symbols,
        missing,
        gene_sets=gene_sets,
        layer=layer,
        is_counts=is_counts,
        key_added=key_added,
        inplace=inplace,
    )


def _block_set_sums(block, union: np.ndarray, found: dict[str, np.ndarray], is_counts: bool):
    """One row block: ("fast", per-set sums, expressed flags) or ("sub", the log-normalised union columns)."""
    if not sparse.issparse(block):
        block = np.asarray(block)
    fast = _fast_csr_sums(block, union, found, is_counts)
    if fast is not None:
        return ("fast", *fast)
    return ("sub", _log_normalised_columns(block, union, is_counts=is_counts))


def _prepare_sets(adata, gene_sets, gene_symbols):
    """Resolve the gene sets and match them to ``adata``: (sets, symbols, found, missing, union of found genes)."""
    sets = resolve_gene_sets(gene_sets)
    symbols = symbols_for_sets(adata, gene_symbols, sets)
    found, missing = _match_sets(symbols, sets)
    union = np.unique(np.concatenate([*found.values(), np.array([], int)])).astype(int)
    if union.size == 0:
        raise ValueError(
            f"None of the genes of the gene sets {list(sets)} was found in adata ({adata.n_vars} genes, "
            f"{identifier_kind(adata)}, e.g. {list(adata.var_names[:3])}). If var_names are Ensembl IDs, pass the "
            "column of adata.var that holds gene symbols with `gene_symbols=`."
        )
    return sets, symbols, found, missing, union


def _used_genes(found, missing, union, expressed_mask, symbols, sets, *, stacklevel):
    """Genes of each set that are expressed; never-expressed genes go to ``missing`` (they carry no information)."""
    expressed = set(union[expressed_mask].tolist())
    used: dict[str, np.ndarray] = {}
    for name, idx in found.items():
        keep = np.array([i for i in idx if i in expressed], dtype=int)
        missing[name] = missing[name] + [str(symbols[i]) for i in idx if i not in expressed]
        used[name] = keep
        if len(keep) < MIN_GENES_WARN:
            warn(
                f"Gene set {name!r}: only {len(keep)} of {len(sets[name])} genes found and expressed "
                f"(found: {[str(symbols[i]) for i in keep]}); its score is "
                + ("undefined (NaN)." if len(keep) == 0 else "unreliable."),
                stacklevel=stacklevel,
            )
    return used


def _set_means(used, union, *, sums=None, sub=None):
    """Per-cell mean over each set's expressed genes, from the fused kernel's sums or the set-gene columns."""
    if sums is None:
        col_of_gene = {int(g): j for j, g in enumerate(union)}
        return np.asarray(sub @ set_weight_matrix(col_of_gene, used, len(union)))
    # unexpressed genes added 0 to the sums: divide by the number of expressed genes
    n_used = np.array([max(len(v), 1) for v in used.values()], dtype=float)
    return sums / n_used


def _finish(adata, S, used, symbols, missing, *, gene_sets, layer, is_counts, key_added, inplace):
    """Centre the per-cell set means, assemble the DataFrame and the ``uns`` record, write or return them."""
    S -= S.mean(axis=0, keepdims=True)  # = X W - 1 (mean(X) W): centring without densifying X
    for k, name in enumerate(used):
        if len(used[name]) == 0:
            S[:, k] = np.nan
    df = pd.DataFrame(S, index=adata.obs_names.copy(), columns=list(used))
    genes_used = {k: [str(symbols[i]) for i in v] for k, v in used.items()}
    info = {
        "params": {
            "gene_sets": gene_sets if isinstance(gene_sets, str) else "custom",
            "layer": "X" if layer is None else layer,
            "input": "raw counts (log1p CP10k computed internally)" if is_counts else "log-normalised",
            "definition": "mean over the set's expressed genes of log-normalised expression minus the gene's mean "
            "over all cells",
        },
        "genes_used": genes_used,
        "genes_missing": {k: [str(g) for g in v] for k, v in missing.items()},
    }
    if not inplace:
        df.attrs.update(info)
        return df
    adata.obsm[key_added] = df
    adata.uns[key_added] = info
    return None
