"""Manifest-driven dataset loaders: find, verify (sha256), download where possible, read.

Search order for every file of a manifest (``files[*].path`` is relative):

1. ``data_dir`` when given, else ``im.settings.data_dir`` (``$IMMUNOMOOD_DATA_DIR``);
2. the user cache dir ``im.settings.cache_dir``;
3. a download with :mod:`pooch` into the cache dir, when the manifest has a URL (or an archive URL) and the
   network allows.

When nothing works a :class:`FileNotFoundError` names each missing file, every place searched and how to get it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._settings import settings
from .._utils import file_sha256, warn
from ._manifest import manifest_paths, read_manifest

__all__ = ["citeseq_pbmc5k", "kang2018", "list_datasets", "load", "pbmc3k", "zheng2017"]

logger = logging.getLogger("immunomood")

# sha256 per (resolved path, mtime_ns, size): repeated loads of an unchanged file skip the hashing
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


class ChecksumError(ValueError):
    """A file's sha256 differs from the one recorded in its manifest."""


# ----------------------------------------------------------------------------------------------- locating
def _search_roots(data_dir: str | os.PathLike | None) -> list[Path]:
    roots: list[Path] = []
    first = Path(data_dir) if data_dir is not None else settings.data_dir
    if first is not None:
        roots.append(Path(first).expanduser())
    cache = Path(settings.cache_dir).expanduser()
    if cache not in roots:
        roots.append(cache)
    return roots


def _find_local(entry: Mapping[str, Any], data_dir: str | os.PathLike | None) -> Path | None:
    """First existing copy of a manifest file with the right size (no hashing), else None."""
    for root in _search_roots(data_dir):
        p = root / entry["path"]
        if p.is_file() and p.stat().st_size == entry["size"]:
            return p
    return None


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    hit = _HASH_CACHE.get(key)
    if hit is not None:
        return hit
    digest = file_sha256(path)
    _HASH_CACHE[key] = digest
    return digest


def _how_to_get(m: Mapping[str, Any], entry: Mapping[str, Any] | None = None) -> str:
    parts = []
    if entry is not None and entry.get("url"):
        parts.append(f"download it from {entry['url']}")
    if entry is not None and entry.get("archive"):
        parts.append(f"download {entry['archive']['url']} and extract {entry['archive']['member']}")
    parts.append(f"accession: {m['accession']} (doi:{m['citation']['doi']})")
    return "; ".join(parts) + f". {m['instructions']}"


def _verify(path: Path, entry: Mapping[str, Any], m: Mapping[str, Any]) -> None:
    size = path.stat().st_size
    digest = _sha256(path)
    if digest != entry["sha256"]:
        raise ChecksumError(
            f"Checksum mismatch for {path} (dataset {m['id']!r}, file {entry['path']!r}): expected sha256 "
            f"{entry['sha256']} ({entry['size']} bytes), got {digest} ({size} bytes). The file is corrupt, "
            f"truncated or a different version. Delete it and fetch it again ({_how_to_get(m, entry)}), "
            "or pass verify=False to skip the check at your own risk."
        )


def _download(entry: Mapping[str, Any], cache: Path) -> Path:
    """Fetch one file into ``cache / entry['path']`` with pooch; raises on any failure."""
    import pooch

    target = cache / entry["path"]
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry.get("url"):
        got = pooch.retrieve(
            entry["url"],
            known_hash=f"sha256:{entry['sha256']}",
            fname=target.name,
            path=target.parent,
            progressbar=False,
        )
        return Path(got)
    arch = entry["archive"]
    archive_dir = cache / "_archives"
    extracted = pooch.retrieve(
        arch["url"],
        known_hash=None,
        fname=arch["url"].rstrip("/").split("/")[-1],
        path=archive_dir,
        progressbar=False,
        processor=pooch.Untar(members=[arch["member"]])
        if ".tar" in arch["url"]
        else pooch.Unzip(members=[arch["member"]]),
    )
    extracted = [Path(p) for p in (extracted if isinstance(extracted, list) else [extracted])]
    src = next((p for p in extracted if p.as_posix().endswith(arch["member"])), None)
    if src is None:
        raise FileNotFoundError(f"{arch['member']} not found in the archive {arch['url']}")
    shutil.copyfile(src, target)
    return target


def _locate(
    m: Mapping[str, Any], entry: Mapping[str, Any], data_dir, verify: bool, download: bool, problems: list[str]
) -> Path | None:
    roots = _search_roots(data_dir)
    for root in roots:
        p = root / entry["path"]
        if p.is_file():
            if verify:
                _verify(p, entry, m)
            return p
    if download and (entry.get("url") or entry.get("archive")):
        url = entry.get("url") or entry["archive"]["url"]
        try:
            p = _download(entry, roots[-1])
        except ValueError as e:
            if "hash" in str(e).lower():
                raise ChecksumError(
                    f"Checksum mismatch for the download of {entry['path']!r} (dataset {m['id']!r}) from {url}: "
                    f"{e}. The remote file differs from the version recorded in the manifest."
                ) from e
            problems.append(f"download from {url} failed: {type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - network down, DNS, HTTP errors, broken archive
            problems.append(f"download from {url} failed: {type(e).__name__}: {e}")
        else:
            if verify:
                _verify(p, entry, m)
            logger.info("downloaded %s to %s", url, p)
            return p
    return None


# ----------------------------------------------------------------------------------------------- readers
def _read_10x_mtx(paths: list[Path], m: Mapping[str, Any]):
    """10x triplet (v1 genes.tsv or v3 features.tsv[.gz]), read directly so the files may lie apart."""
    import anndata as ad
    import scipy.io

    def pick(*names: str) -> Path:
        for p in paths:
            if p.name in names:
                return p
        raise ValueError(
            f"Manifest {m['id']!r}: reader '10x_mtx' needs one of {names} among its files, "
            f"got {[p.name for p in paths]}."
        )

    mtx = pick("matrix.mtx", "matrix.mtx.gz")
    genes = pick("genes.tsv", "genes.tsv.gz", "features.tsv", "features.tsv.gz")
    barcodes = pick("barcodes.tsv", "barcodes.tsv.gz")
    X = sparse.csr_matrix(scipy.io.mmread(mtx).T, dtype=np.float32)
    g = pd.read_csv(genes, sep="\t", header=None, dtype=str)
    b = pd.read_csv(barcodes, sep="\t", header=None, dtype=str)[0].to_numpy()
    from anndata.utils import make_index_unique

    symbols = make_index_unique(pd.Index(g[1].to_numpy()))  # anndata's rule: second 'PNRC2' -> 'PNRC2-1'
    var = pd.DataFrame({"gene_ids": g[0].to_numpy()}, index=symbols)
    if g.shape[1] > 2:
        var["feature_types"] = g[2].to_numpy()
    return ad.AnnData(X, obs=pd.DataFrame(index=pd.Index(b)), var=var)


def _read_h5ad(paths: list[Path], m: Mapping[str, Any]):
    import anndata as ad

    if len(paths) != 1:
        raise ValueError(f"Manifest {m['id']!r}: reader 'h5ad' expects exactly one main file, got {len(paths)}.")
    import warnings

    with warnings.catch_warnings():
        # some shipped files predate anndata's encoding metadata (see the manifest notes); they read correctly
        warnings.filterwarnings(
            "ignore", category=getattr(ad, "OldFormatWarning", UserWarning), message=".*without encoding metadata"
        )
        return ad.read_h5ad(paths[0])


def _read_olink(paths: list[Path], m: Mapping[str, Any]):
    from ..io import read_olink

    return read_olink(paths[0])


def _read_somascan(paths: list[Path], m: Mapping[str, Any]):
    from ..io import read_somascan

    return read_somascan(paths[0])


def _read_unsupported(paths: list[Path], m: Mapping[str, Any]):
    raise NotImplementedError(
        f"Dataset {m['id']!r} uses reader {m['reader']!r}, which load() does not read automatically. "
        f"Read the files yourself (e.g. scipy.io.mmread + anndata.AnnData). {m['instructions']}"
    )


_READERS = {
    "10x_mtx": _read_10x_mtx,
    "h5ad": _read_h5ad,
    "olink_csv": _read_olink,
    "olink_parquet": _read_olink,
    "somascan_adat": _read_somascan,
    "mtx": _read_unsupported,
}

_SUFFIX = re.compile(r"-\d+$")


def _add_seurat_labels(adata, path: Path, entry: Mapping[str, Any], m: Mapping[str, Any]) -> None:
    """Per-barcode labels (CSV: barcode, label); robust to a '-1' suffix on either side; NaN when unlabelled."""
    tab = pd.read_csv(path, dtype=str, keep_default_na=True, na_values=["", "NA"])
    if tab.shape[1] < 2:
        raise ValueError(
            f"Labels file {path} (dataset {m['id']!r}) needs 2 columns (barcode, label), got {list(tab.columns)}."
        )
    barcodes, labels = tab.iloc[:, 0].astype(str), tab.iloc[:, 1]
    obs_names = pd.Index(adata.obs_names.astype(str))
    stripped_obs = obs_names.str.replace(_SUFFIX, "", regex=True)
    stripped_lab = barcodes.str.replace(_SUFFIX, "", regex=True)
    if stripped_obs.is_unique and stripped_lab.is_unique:
        mapping = pd.Series(labels.to_numpy(), index=stripped_lab.to_numpy())
        values = mapping.reindex(stripped_obs.to_numpy()).to_numpy()
    else:  # several libraries share barcodes: only exact matches are safe
        mapping = pd.Series(labels.to_numpy(), index=barcodes.to_numpy())
        values = mapping.reindex(obs_names.to_numpy()).to_numpy()
    n_matched = int(pd.Series(barcodes).str.replace(_SUFFIX, "", regex=True).isin(stripped_obs).sum())
    if n_matched == 0:
        raise ValueError(
            f"No barcode of the labels file {path} matches adata.obs_names of dataset {m['id']!r} "
            f"(labels: {barcodes[:3].tolist()}, cells: {obs_names[:3].tolist()})."
        )
    if n_matched < len(barcodes):
        warn(f"{len(barcodes) - n_matched} of {len(barcodes)} barcodes in {path.name} match no cell.")
    cats = sorted(pd.unique(labels.dropna()))
    adata.obs[entry["key_added"]] = pd.Categorical(values, categories=cats)


_ANNOTATORS = {"seurat_labels_csv": _add_seurat_labels}


# ----------------------------------------------------------------------------------------------- public
def load(name: str, *, data_dir: str | os.PathLike | None = None, verify: bool = True, download: bool = True):
    """Load a dataset described by a packaged manifest.

    Parameters
    ----------
    name
        Dataset id (see :func:`list_datasets`) or the path of a manifest YAML file.
    data_dir
        Folder that holds the files (with the manifest's relative paths). Default: ``im.settings.data_dir``,
        i.e. ``$IMMUNOMOOD_DATA_DIR``. The user cache dir (``im.settings.cache_dir``) is searched next.
    verify
        Check each file's sha256 against the manifest (cached per path, modification time and size, so
        repeated loads are fast).
    download
        Try to download files that have a URL into the cache dir (with :mod:`pooch`) when they are not found
        locally. Network failures are caught and reported in the error.

    Returns
    -------
    :class:`~anndata.AnnData` read with the manifest's ``reader`` (plus annotation files, e.g. the Seurat labels
    of pbmc3k in ``obs["seurat_label"]``), with ``uns["dataset"]`` holding ``id``, ``title``, ``doi``,
    ``accession`` and ``licence``. Proteomics readers return what :func:`immunomood.io.read_olink` /
    :func:`immunomood.io.read_somascan` return.

    Raises
    ------
    FileNotFoundError
        A file is missing: the message names it, every folder searched, any failed download and how to get it
        (URL / accession, and "set IMMUNOMOOD_DATA_DIR").
    ChecksumError
        (a ``ValueError``) a file's sha256 differs from the manifest.
    """
    m = read_manifest(name)
    if not m["files"]:
        raise FileNotFoundError(
            f"Dataset {m['id']!r} ({m['accession']}, doi:{m['citation']['doi']}) is manual-download only: the "
            f"manifest lists no files that immunomood can fetch or read. {m['instructions']}"
        )
    found: list[tuple[Mapping[str, Any], Path]] = []
    missing: list[str] = []
    roots = _search_roots(data_dir)
    for entry in m["files"]:
        problems: list[str] = []
        p = _locate(m, entry, data_dir, verify, download, problems)
        if p is None:
            where = ", ".join(str(r / entry["path"]) for r in roots)
            extra = f" ({'; '.join(problems)})" if problems else ""
            if download is False and (entry.get("url") or entry.get("archive")):
                extra += " (download=False)"
            missing.append(f"- {entry['path']}: looked in {where}{extra}; to get it: {_how_to_get(m, entry)}")
        else:
            found.append((entry, p))
    if missing:
        raise FileNotFoundError(
            f"Dataset {m['id']!r}: {len(missing)} of {len(m['files'])} file(s) missing.\n"
            + "\n".join(missing)
            + f"\nSearched folders: {[str(r) for r in roots]}. Put the files there under their relative paths "
            "and set IMMUNOMOOD_DATA_DIR (or im.settings.data_dir, or pass data_dir=) to that folder."
        )
    main = [p for e, p in found if "reader" not in e]
    adata = _READERS[m["reader"]](main, m)
    for e, p in found:
        if "reader" in e:
            _ANNOTATORS[e["reader"]](adata, p, e, m)
    adata.uns["dataset"] = {
        "id": m["id"],
        "title": m["title"],
        "doi": m["citation"]["doi"],
        "accession": m["accession"],
        "licence": m["licence"],
    }
    return adata


def list_datasets() -> pd.DataFrame:
    """All datasets with a packaged manifest.

    Returns
    -------
    DataFrame with columns ``id``, ``title``, ``modality``, ``accession`` and ``available_locally`` (every file
    of the dataset is present, with the recorded size, in ``im.settings.data_dir`` or the user cache dir;
    checksums are checked when the data are loaded). Manual-only datasets (``files: []``) are never available.
    """
    rows = []
    for ident in manifest_paths():
        m = read_manifest(ident)
        available = bool(m["files"]) and all(_find_local(f, None) is not None for f in m["files"])
        rows.append(
            {
                "id": m["id"],
                "title": m["title"],
                "modality": m["modality"],
                "accession": m["accession"],
                "available_locally": available,
            }
        )
    return pd.DataFrame(rows, columns=["id", "title", "modality", "accession", "available_locally"])


def _to_csr_float32(adata) -> None:
    X = adata.X
    if not sparse.issparse(X) or X.format != "csr" or X.dtype != np.float32:
        adata.X = sparse.csr_matrix(X, dtype=np.float32)


def pbmc3k(*, data_dir: str | os.PathLike | None = None, verify: bool = True):
    """10x Genomics PBMC 3k with the Seurat tutorial labels.

    Parameters
    ----------
    data_dir
        Folder holding ``pbmc3k/...`` (default ``$IMMUNOMOOD_DATA_DIR``, then the user cache dir).
    verify
        Check sha256 checksums.

    Returns
    -------
    AnnData, 2,700 cells x 32,738 genes: raw UMI counts in ``X`` (CSR, float32 holding integers),
    ``var_names`` gene symbols made unique (``PNRC2-1``), ``var["gene_ids"]`` Ensembl IDs,
    ``obs["seurat_label"]`` (categorical; 2,638 cells labelled, NaN for the 62 the tutorial removed).
    """
    adata = load("pbmc3k", data_dir=data_dir, verify=verify)
    _to_csr_float32(adata)
    return adata


def kang2018(*, data_dir: str | os.PathLike | None = None, verify: bool = True):
    """Kang et al. 2018 PBMC, control vs interferon-beta: 2 donors x 2 conditions (muscat subset).

    Parameters
    ----------
    data_dir
        Folder holding ``kang2018/...`` (default ``$IMMUNOMOOD_DATA_DIR``, then the user cache dir).
    verify
        Check sha256 checksums.

    Returns
    -------
    AnnData, 1,556 cells x 1,267 genes: raw counts in ``X`` (CSR float32), ``layers["logcounts"]``,
    ``var_names`` gene symbols (``var["gene_ids"]`` Ensembl IDs), and in ``obs`` besides the original
    ``cluster_id``, ``sample_id``, ``group_id``:

    - ``donor``: categorical, ``"101"`` and ``"107"``;
    - ``condition``: categorical with categories ``["ctrl", "stim"]`` (control first);
    - ``cell_type``: categorical, from ``cluster_id`` (5 types).
    """
    adata = load("kang2018", data_dir=data_dir, verify=verify)
    _to_csr_float32(adata)
    var = adata.var
    if "SYMBOL" in var:
        var["gene_ids"] = var["ENSEMBL"].astype(str) if "ENSEMBL" in var else pd.NA
        adata.var_names = pd.Index(var["SYMBOL"].astype(str).to_numpy())
        adata.var_names_make_unique()
    obs = adata.obs
    obs["donor"] = pd.Categorical(obs["donor"].astype(str))
    levels = ["ctrl", "stim"]
    unknown = set(obs["group_id"].astype(str)) - set(levels)
    if unknown:
        raise ValueError(f"kang2018: unexpected group_id values {sorted(unknown)}; expected {levels}.")
    obs["condition"] = pd.Categorical(obs["group_id"].astype(str), categories=levels)
    obs["cell_type"] = pd.Categorical(obs["cluster_id"].astype(str))
    return adata


def zheng2017(*, data_dir: str | os.PathLike | None = None, verify: bool = True):
    """Zheng et al. 2017, 10x frozen PBMC donor A (MUDAN subset).

    Parameters
    ----------
    data_dir
        Folder holding ``zheng2017/...`` (default ``$IMMUNOMOOD_DATA_DIR``, then the user cache dir).
    verify
        Check sha256 checksums.

    Returns
    -------
    AnnData, 2,896 cells x 13,939 genes, raw counts in ``X`` (CSR float32), gene symbols as ``var_names``
    (no Ensembl IDs in this file), ``obs["donor"]`` (one donor). No cell-type labels.
    """
    adata = load("zheng2017", data_dir=data_dir, verify=verify)
    _to_csr_float32(adata)
    adata.obs["donor"] = pd.Categorical(adata.obs["donor"].astype(str))
    return adata


def citeseq_pbmc5k(*, data_dir: str | os.PathLike | None = None, verify: bool = True):
    """10x PBMC 5k CITE-seq (TotalSeq-B), 200-cell subset from the scvi-tools test data.

    Parameters
    ----------
    data_dir
        Folder holding ``citeseq/...`` (default ``$IMMUNOMOOD_DATA_DIR``, then the user cache dir).
    verify
        Check sha256 checksums.

    Returns
    -------
    AnnData, 200 cells x 16,581 genes: RNA counts in ``X`` (converted from a dense array to CSR float32),
    antibody counts in ``obsm["protein_expression"]`` as a DataFrame (200 x 29, columns the antibody names,
    e.g. ``"CD3_TotalSeqB"``). The file's stale QC columns (``obs`` ``n_genes``, ``n_counts``,
    ``percent_mito`` and ``var["n_cells"]``, computed before subsetting) are dropped.
    """
    adata = load("citeseq_pbmc5k", data_dir=data_dir, verify=verify)
    _to_csr_float32(adata)
    prot = adata.obsm["protein_expression"]
    if not isinstance(prot, pd.DataFrame):
        names = [str(x) for x in adata.uns.get("protein_names", [f"protein_{i}" for i in range(prot.shape[1])])]
        adata.obsm["protein_expression"] = pd.DataFrame(np.asarray(prot), index=adata.obs_names, columns=names)
    adata.obs = adata.obs.drop(columns=[c for c in ("n_genes", "n_counts", "percent_mito") if c in adata.obs])
    adata.var = adata.var.drop(columns=[c for c in ("n_cells",) if c in adata.var])
    return adata
