"""Highly variable genes: seurat_v3 on raw counts, batch-aware."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData

from .._docs import doc_adata, doc_inplace, doc_params
from .._settings import logger
from .._utils import check_adata, check_not_view, check_obs_key, count_matrix_problem
from ._qc import _check_unique_var_names


@doc_params(adata=doc_adata, inplace=doc_inplace)
def highly_variable_genes(
    adata: AnnData,
    *,
    n_top_genes: int = 2000,
    batch_key: str | None = None,
    counts_layer: str = "counts",
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Select highly variable genes with the seurat_v3 method on raw counts.

    Calls :func:`scanpy.pp.highly_variable_genes` with ``flavor="seurat_v3"`` on ``layers[counts_layer]``
    (needs ``scikit-misc``). With ``batch_key``, genes are ranked within each batch and the ranks combined
    (the number of batches in which a gene is variable first, then its median rank).

    Parameters
    ----------
    {adata}
    n_top_genes
        Number of genes to select.
    batch_key
        Column of ``adata.obs`` with the batch (or sample); ``None``: one batch.
    counts_layer
        Layer with the raw counts (written by :func:`immunomood.pp.normalize`).
    {inplace}

    Returns
    -------
    With ``inplace=True``, ``None``, and writes ``adata.var`` columns ``highly_variable``,
    ``highly_variable_rank``, ``means``, ``variances``, ``variances_norm`` (and ``highly_variable_nbatches``
    with ``batch_key``) and ``adata.uns["hvg"]`` (``{{"flavor": "seurat_v3"}}``), as scanpy does.
    With ``inplace=False``, that DataFrame; ``adata`` is left untouched.
    """
    import scanpy as sc

    check_adata(adata)
    if inplace:
        check_not_view(adata, func="highly_variable_genes")
    if counts_layer not in adata.layers:
        raise KeyError(
            f"Layer {counts_layer!r} with raw counts not found in adata.layers (present: {list(adata.layers.keys())}). "
            "Run `im.pp.normalize(adata)` first (it stores the counts in layers['counts']) or pass the layer that "
            "holds raw counts with `counts_layer=`."
        )
    check_obs_key(adata, batch_key, what="batch_key column")
    _check_unique_var_names(adata)
    problem = count_matrix_problem(adata.layers[counts_layer])
    if problem is not None:
        raise ValueError(
            f"seurat_v3 needs raw counts, but adata.layers[{counts_layer!r}] {problem.replace('it ', '', 1)}. "
            "Pass the layer that holds raw counts with `counts_layer=`."
        )
    n_top_genes = int(n_top_genes)
    if not 0 < n_top_genes <= adata.n_vars:
        raise ValueError(f"`n_top_genes` must be in [1, {adata.n_vars}] (number of genes), got {n_top_genes}.")
    try:
        import skmisc  # noqa: F401
    except ImportError as e:  # pragma: no cover
        raise ImportError("seurat_v3 needs scikit-misc: `pip install scikit-misc`.") from e
    res = sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key=batch_key, layer=counts_layer,
        inplace=inplace, subset=False,
    )
    if inplace:
        logger.info("highly_variable_genes: %d genes selected", int(adata.var["highly_variable"].sum()))
        return None
    return res
