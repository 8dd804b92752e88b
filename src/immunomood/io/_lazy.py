"""Out-of-core reading: an AnnData whose matrices are Dask arrays backed by the ``.h5ad`` on disk."""

from __future__ import annotations

import os
from pathlib import Path

from anndata import AnnData

__all__ = ["read_lazy"]


def read_lazy(path: str | os.PathLike, *, chunk_size: int = 10_000, layers: bool = True) -> AnnData:
    """Read an ``.h5ad`` (or ``.zarr``) with ``X`` (and layers) as Dask arrays, annotations in memory.

    Built on anndata's own lazy reader (:func:`anndata.experimental.read_elem_lazy`): ``X`` becomes a Dask array
    of CSR (or dense) row blocks of ``chunk_size`` cells that are read from disk only when computed, so data
    larger than memory can flow through :func:`immunomood.pp.qc_metrics`, :func:`~immunomood.pp.flag_outliers`,
    :func:`~immunomood.pp.normalize`, :func:`~immunomood.pp.highly_variable_genes`,
    :func:`~immunomood.tl.score_pathways` and :func:`~immunomood.tl.pseudobulk`, which give the same results as in
    memory. With a ``dask.distributed`` client started by the user the work runs on that cluster; otherwise on
    Dask's threaded scheduler.

    Parameters
    ----------
    path
        An ``.h5ad`` file or a ``.zarr`` store.
    chunk_size
        Cells per Dask block. Memory per block is about ``chunk_size x non-zeros per cell x 12`` bytes.
    layers
        Also open ``layers`` lazily.

    Returns
    -------
    AnnData with Dask-backed ``X`` (and layers); ``obs``, ``var``, ``obsm``, ``uns`` are read into memory.
    The HDF5 file stays open for as long as the object is used.
    """
    import anndata as ad
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file: {path}")
    if path.suffix == ".zarr" or path.is_dir():
        import zarr

        store = zarr.open(str(path), mode="r")
    else:
        import h5py

        store = h5py.File(path, "r")
    if "X" not in store:
        raise ValueError(f"{path} has no X matrix; is it an AnnData file?")
    obs = read_elem(store["obs"])
    var = read_elem(store["var"])
    n_vars = len(var)

    def _lazy(elem):
        enc = dict(elem.attrs).get("encoding-type", "array")
        if enc == "csc_matrix":
            raise ValueError(
                f"{path}: the matrix is stored as CSC; out-of-core processing needs cells in row blocks. "
                "Rewrite it as CSR once: `a = ad.read_h5ad(path); a.X = scipy.sparse.csr_matrix(a.X); a.write_h5ad(path)`."
            )
        return read_elem_lazy(elem, chunks=(chunk_size, n_vars))

    X = _lazy(store["X"])
    kwargs = {}
    if layers and "layers" in store:
        kwargs["layers"] = {k: _lazy(store["layers"][k]) for k in store["layers"].keys()}
    for key in ("obsm", "varm", "uns"):
        if key in store:
            kwargs[key] = read_elem(store[key])
    adata = ad.AnnData(X=X, obs=obs, var=var, **kwargs)
    adata.uns["_immunomood_lazy"] = {"path": str(path), "chunk_size": int(chunk_size)}
    return adata
