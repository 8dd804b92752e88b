"""Read a multi-sample cohort from a sample sheet (one row per sample: its 10x folder, .h5 or .h5ad)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from .._settings import logger

__all__ = ["read_cohort"]

_JOINS = ("exact", "inner", "outer")
_VAR_NAMES = ("gene_symbols", "gene_ids")


# ----------------------------------------------------------------------------------------------
# the sample sheet
# ----------------------------------------------------------------------------------------------
def _read_sheet(sample_sheet, id_columns: Sequence[str]) -> tuple[pd.DataFrame, Path]:
    """The sheet as a DataFrame (ID columns as text) and the folder relative paths are resolved against."""
    if isinstance(sample_sheet, pd.DataFrame):
        return sample_sheet.copy(), Path.cwd()
    if not isinstance(sample_sheet, (str, os.PathLike)):
        raise TypeError(
            f"`sample_sheet` must be a path to a CSV/TSV file or a pandas DataFrame, got {type(sample_sheet).__name__}."
        )
    import io

    from ._textfile import check_is_file, decode_text

    p = Path(sample_sheet)
    check_is_file(p, "Sample sheet")
    text, _ = decode_text(p.read_bytes(), p.name, "Sample sheet")  # UTF-8, or UTF-16 with its mark (Excel)
    sep = "\t" if p.suffix.lower() in (".tsv", ".txt") else ","
    # ID columns stay text: '101' must not become 101.0 because another row is empty
    try:
        sheet = pd.read_csv(
            io.StringIO(text.lstrip("\ufeff")), sep=sep, dtype=dict.fromkeys(id_columns, str), index_col=False
        )
    except pd.errors.ParserError as e:
        raise ValueError(
            f"The sample sheet {p.name!r} is not a valid {'TSV' if sep == chr(9) else 'CSV'} table: "
            f"{e}. Each row needs the header's number of fields."
        ) from None
    return sheet, p.resolve().parent


def _tenx_files(folder: Path) -> tuple[list[str], str | None]:
    """(missing files, layout) of a 10x matrix folder, with scanpy's rules: ``genes.tsv`` present means the v2
    layout (matrix.mtx, genes.tsv, barcodes.tsv), otherwise v3 (matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz)."""
    if (folder / "features.tsv").is_file() and not (folder / "features.tsv.gz").is_file():
        # v3 files left uncompressed: scanpy reads the v3 layout gzipped only
        return [
            f"{f}.gz" for f in ("matrix.mtx", "features.tsv", "barcodes.tsv") if not (folder / f"{f}.gz").is_file()
        ], "v3 uncompressed"
    if (folder / "genes.tsv").is_file():
        need, layout = ["matrix.mtx", "genes.tsv", "barcodes.tsv"], "v2"
    elif any((folder / f).is_file() for f in ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz")):
        need, layout = ["matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"], "v3"
    elif (folder / "matrix.mtx").is_file():
        need, layout = ["matrix.mtx", "genes.tsv", "barcodes.tsv"], "v2"
    else:
        return ["matrix.mtx (v2) or matrix.mtx.gz (v3)"], None
    return [f for f in need if not (folder / f).is_file()], layout


def _sample_kind(path: Path) -> str | None:
    if path.is_dir():
        return "10x_mtx"
    name = path.name.lower()
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5"):
        return "10x_h5"
    return None


def _validate_sheet(
    sheet: pd.DataFrame,
    base: Path,
    *,
    sample_key: str,
    path_column: str,
    donor_key: str | None,
    required_columns: Sequence[str],
) -> tuple[list[str], list[Path]]:
    """Every problem of the sheet (before reading any sample) and the resolved sample paths."""
    problems: list[str] = []
    missing_cols = [
        c
        for c in dict.fromkeys([path_column, sample_key, *([donor_key] if donor_key else []), *required_columns])
        if c not in sheet.columns
    ]
    if missing_cols:
        return [
            f"column(s) {missing_cols} missing from the sample sheet. Available: {list(map(str, sheet.columns))}. "
            f"Name the sample column with `sample_key=` and the path column with `path_column=`."
        ], []
    if len(sheet) == 0:
        return ["the sample sheet has no rows (expected one row per sample)."], []

    def rows(mask) -> list[int]:  # 1-based data-row numbers, as a spreadsheet shows them after the header
        return [int(i) + 1 for i in np.flatnonzero(np.asarray(mask))]

    for col in dict.fromkeys([sample_key, path_column, *([donor_key] if donor_key else []), *required_columns]):
        s = sheet[col]
        na = s.isna() | s.astype(str).str.strip().isin(["", "nan", "NaN", "NA", "None"])
        if na.any():
            problems.append(
                f"column {col!r} is empty or NaN in row(s) {rows(na)[:20]} (data rows, 1 = first row "
                "after the header). Fill in those IDs or remove the rows; a missing ID is never "
                "turned into a sample called 'nan'."
            )
    ids = sheet[sample_key].astype(str).str.strip()
    dup = ids.duplicated(keep=False) & sheet[sample_key].notna()
    if dup.any():
        problems.append(
            f"duplicated sample IDs in column {sample_key!r}: "
            f"{sorted(set(ids[dup]))[:10]} (rows {rows(dup)[:20]}). Each row must be one sample "
            "with its own ID."
        )
    paths: list[Path] = []
    for i, (sid, raw) in enumerate(zip(ids, sheet[path_column])):
        if pd.isna(raw):
            paths.append(Path(""))
            continue
        q = Path(str(raw).strip()).expanduser()
        q = q if q.is_absolute() else base / q
        paths.append(q)
        where = f"row {i + 1} (sample {sid!r})"
        if not q.exists():
            problems.append(f"{where}: file not found: {str(q)!r}.")
            continue
        kind = _sample_kind(q)
        if kind is None:
            problems.append(
                f"{where}: unsupported sample file {q.name!r}; expected a 10x matrix folder, a "
                "CellRanger .h5 or an .h5ad."
            )
        elif kind == "10x_mtx":
            missing, layout = _tenx_files(q)
            if missing:
                lay = {
                    "v2": "10x v2 layout: matrix.mtx, genes.tsv, barcodes.tsv",
                    "v3": "10x v3 layout: matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz",
                    "v3 uncompressed": "10x v3 files are read gzipped: run `gzip matrix.mtx features.tsv "
                    "barcodes.tsv` in that folder",
                    None: "a 10x folder holds matrix.mtx + genes.tsv + barcodes.tsv (v2) or their v3 "
                    "gzipped versions with features.tsv.gz",
                }[layout]
                present = sorted(x.name for x in q.iterdir())[:10]
                problems.append(f"{where}: the 10x folder {str(q)!r} lacks {missing} ({lay}); it holds {present}.")
        elif q.is_file() and q.stat().st_size == 0:
            problems.append(f"{where}: the file {str(q)!r} is empty (0 bytes).")
    return problems, paths


def check_sample_sheet(
    sample_sheet,
    *,
    sample_key: str = "sample",
    path_column: str = "path",
    donor_key: str | None = None,
    required_columns: Sequence[str] = (),
) -> list[str]:
    """Problems of a sample sheet (missing columns, empty IDs, duplicated samples, missing or incomplete files).

    Reads nothing but the sheet and the folder listings; an empty list means :func:`read_cohort` can start.
    """
    return _check_sheet(sample_sheet, sample_key, path_column, donor_key, required_columns)[0]


def _check_sheet(sample_sheet, sample_key, path_column, donor_key, required_columns):
    """(problems, paths, sheet) of a sample sheet: what check_sample_sheet reports and read_cohort reads."""
    id_cols = list(dict.fromkeys([sample_key, path_column, *([donor_key] if donor_key else [])]))
    sheet, base = _read_sheet(sample_sheet, id_cols)
    problems, paths = _validate_sheet(
        sheet,
        base,
        sample_key=sample_key,
        path_column=path_column,
        donor_key=donor_key,
        required_columns=required_columns,
    )
    return problems, paths, sheet


# ----------------------------------------------------------------------------------------------
# one sample
# ----------------------------------------------------------------------------------------------
def _read_one(path: Path, *, var_names: str, layer: str | None):
    import anndata as ad
    import scanpy as sc

    kind = _sample_kind(path)
    if kind == "10x_mtx":
        a = sc.read_10x_mtx(path, var_names=var_names)
    elif kind == "10x_h5":
        a = sc.read_10x_h5(path)
        if var_names == "gene_ids" and "gene_ids" in a.var.columns:
            a.var["gene_symbols"] = a.var_names.astype(str)
            a.var_names = a.var["gene_ids"].astype(str).to_numpy()
        else:
            a.var_names_make_unique()  # as read_10x_mtx does for symbols (a few symbols repeat in 10x references)
    else:
        a = ad.read_h5ad(path)
        if layer is not None:
            if layer not in a.layers:
                raise KeyError(f"layer {layer!r} not found in {path.name}. Layers present: {list(a.layers)}.")
            a.X = a.layers[layer].copy()
        # only the counts travel: per-sample embeddings/graphs of another analysis do not belong to the cohort
        a = ad.AnnData(X=a.X, obs=a.obs.copy(), var=a.var.copy())
    return a


def _same_value(own: list[str], val) -> bool:
    """Whether a file's obs column (its distinct values as text) holds exactly the sheet's value."""
    if own == [str(val)]:
        return True
    if len(own) != 1:
        return False
    try:
        return float(own[0]) == float(val)
    except (TypeError, ValueError):
        return False


def _to_csr(X):
    from scipy import sparse

    if sparse.issparse(X):
        return sparse.csr_matrix(X)
    return sparse.csr_matrix(np.asarray(X))


# ----------------------------------------------------------------------------------------------
# the reader
# ----------------------------------------------------------------------------------------------
def read_cohort(
    sample_sheet: str | os.PathLike | pd.DataFrame,
    *,
    sample_key: str = "sample",
    path_column: str = "path",
    donor_key: str | None = None,
    required_columns: Sequence[str] = (),
    join: Literal["exact", "inner", "outer"] = "exact",
    var_names: Literal["gene_symbols", "gene_ids"] = "gene_symbols",
    layer: str | None = None,
):
    """Read every sample of a cohort listed in a sample sheet into one AnnData of raw counts.

    This is what ``immunomood run`` does with ``[input] sample_sheet``: the Python path and the command line
    read the same cohort the same way.

    Parameters
    ----------
    sample_sheet
        CSV (``,``) or TSV (``.tsv``/``.txt``, tab) file, or a DataFrame, with one row per sample: the path of the
        sample's counts (a 10x matrix folder, v2 ``matrix.mtx``/``genes.tsv``/``barcodes.tsv`` or v3
        ``matrix.mtx.gz``/``features.tsv.gz``/``barcodes.tsv.gz``; a CellRanger ``.h5``; or an ``.h5ad`` with raw
        counts), the sample ID and any donor-level columns (condition, sex, age, batch ...). Relative paths are
        resolved against the sheet's folder (the current folder for a DataFrame).
    sample_key
        Sheet column with the sample IDs (unique, none empty). Written to ``obs[sample_key]``.
    path_column
        Sheet column with the paths.
    donor_key
        Optional sheet column with donor IDs (several samples may share a donor); it must be filled in every row.
    required_columns
        Further sheet columns that must be present and filled in every row (e.g. the condition).
    join
        How the genes of the samples are combined. ``"exact"`` (default): every sample must measure the same genes
        (in any order), otherwise a ``ValueError`` lists the samples that differ. ``"inner"``: the genes common to
        all samples (the genes dropped are counted in the report). ``"outer"``: the union; a gene a sample did not
        measure is 0 in that sample's cells (not the same as "not expressed": use with care).
    var_names
        For 10x inputs, index genes by ``"gene_symbols"`` (made unique, scanpy's default; the Ensembl IDs go to
        ``var["gene_ids"]``) or by ``"gene_ids"`` (Ensembl IDs; symbols in ``var["gene_symbols"]``, which
        :func:`immunomood.pp.qc_metrics` and the annotation find on their own). ``.h5ad`` inputs keep their own.
    layer
        For ``.h5ad`` inputs: the layer holding raw counts (default ``X``).

    Returns
    -------
    AnnData with
        ``X``
            raw counts (CSR sparse), checked to be non-negative integers.
        ``obs``
            index ``"<sample>_<barcode>"``; ``obs[sample_key]`` and every other sheet column (except the path),
            joined to each cell of its sample; obs columns of ``.h5ad`` inputs are kept (a column that also
            comes from the sheet must agree with it).
        ``var``
            the genes (see ``join``/``var_names``), with the per-gene columns that agree across samples.
        ``uns["read_cohort"]``
            DataFrame with one row per sample: ``sample``, ``path``, ``kind``, ``n_cells``, ``n_genes``
            (genes in that sample's file), ``n_genes_kept`` (of them, in the result).

    Raises
    ------
    ValueError
        Before reading any sample: columns missing from the sheet, empty or NaN IDs (naming the rows), duplicated
        sample IDs, missing files or 10x folders without their ``genes.tsv``/``features.tsv.gz`` (naming the row
        and file). While reading: samples with different genes under ``join="exact"``, matrices that are not
        raw counts, a sheet column contradicting the ``.h5ad``'s own obs.

    Examples
    --------
    >>> adata = im.io.read_cohort("samples.csv", sample_key="donor")  # doctest: +SKIP
    >>> adata.uns["read_cohort"]  # doctest: +SKIP
    """
    import anndata as ad

    from .._utils import check_choice, check_str, count_matrix_problem

    check_str("sample_key", sample_key)
    check_str("path_column", path_column)
    check_str("donor_key", donor_key, allow_none=True)
    check_str("layer", layer, allow_none=True)
    check_choice("join", join, _JOINS, fix="'exact' needs the same genes in every sample.")
    check_choice("var_names", var_names, _VAR_NAMES)
    if isinstance(required_columns, str):
        required_columns = [required_columns]
    problems, paths, sheet = _check_sheet(sample_sheet, sample_key, path_column, donor_key, required_columns)
    if problems:
        raise ValueError("Cannot read the cohort; the sample sheet has problems:\n  - " + "\n  - ".join(problems))
    ids = sheet[sample_key].astype(str).str.strip().tolist()
    meta_cols = [c for c in sheet.columns if c != path_column]

    from tqdm.auto import tqdm

    parts, report = [], []
    for i, (sid, path) in enumerate(tqdm(list(zip(ids, paths)), desc="reading samples", disable=None)):
        where = f"row {i + 1} (sample {sid!r}, {str(path)!r})"
        # truncated or damaged files (gzip cut short, mtx entries lost, gene list short) fail naming their row
        try:
            a = _read_one(path, var_names=var_names, layer=layer)
        except (KeyError, ValueError, OSError, EOFError) as e:
            raise ValueError(f"Could not read {where}: {type(e).__name__}: {e}") from e
        if a.n_obs == 0:
            raise ValueError(f"{where} holds no cells. Remove the row or fix the file.")
        if not a.var_names.is_unique:
            dups = a.var_names[a.var_names.duplicated()].unique()[:5].tolist()
            raise ValueError(
                f"{where}: gene names repeat (e.g. {dups}). Make them unique in the file "
                "(adata.var_names_make_unique()) or use var_names='gene_ids'."
            )
        problem = count_matrix_problem(a.X)
        if problem is not None:
            raise ValueError(
                f"{where}: the matrix is not raw counts: {problem}. For .h5ad inputs name the layer "
                "with raw counts through `layer=`."
            )
        a.X = _to_csr(a.X)
        a.obs_names = [f"{sid}_{b}" for b in a.obs_names.astype(str)]
        row = sheet.iloc[i]
        for c in meta_cols:
            val = sid if c == sample_key else row[c]
            if c in a.obs.columns:
                own = a.obs[c].astype(str).unique().tolist()
                if not _same_value(own, val):
                    raise ValueError(
                        f"{where}: the sheet's {c!r} is {val!r} but the file's obs[{c!r}] holds {own[:5]}. "
                        "Make them agree, or rename the column in the sheet or the file."
                    )
            a.obs[c] = val
        report.append(
            {
                "sample": sid,
                "path": str(path),
                "kind": _sample_kind(path),
                "n_cells": int(a.n_obs),
                "n_genes": int(a.n_vars),
            }
        )
        parts.append(a)

    gene_sets_ = [set(a.var_names) for a in parts]
    common = set.intersection(*gene_sets_)
    union = set.union(*gene_sets_)
    if join == "exact" and len(common) != len(union):
        ref = gene_sets_[0]
        differ = [
            f"{r['sample']} ({len(g - ref)} genes not in {ids[0]!r}, {len(ref - g)} of its genes missing)"
            for r, g in zip(report, gene_sets_)
            if g != ref
        ]
        ex = sorted(union - common)[:5]
        raise ValueError(
            f"The samples do not measure the same genes ({len(common)} shared of {len(union)}; e.g. {ex} are not in "
            f"every sample). Samples differing from {ids[0]!r}: {differ[:10]}. Check that all samples use the same "
            "reference and identifiers (var_names='gene_ids' avoids symbol clashes), or pass join='inner' (shared "
            "genes) or join='outer' (all genes, 0 where a sample did not measure one)."
        )
    ad_join = "outer" if join == "outer" else "inner"
    adata = ad.concat(parts, join=ad_join, merge="same", fill_value=0)
    if not adata.obs_names.is_unique:
        dups = adata.obs_names[adata.obs_names.duplicated()][:5].tolist()
        raise ValueError(f"Cell names '<sample>_<barcode>' repeat: {dups}. A sample file holds repeated barcodes.")
    kept = set(adata.var_names)
    for r, g in zip(report, gene_sets_):
        r["n_genes_kept"] = len(g & kept)
    # sheet columns as text or categories (h5ad-safe); sample/donor IDs as categories
    for c in meta_cols:
        s = sheet[c]
        if c in (sample_key, path_column, donor_key) or not pd.api.types.is_numeric_dtype(s):
            v = adata.obs[c]
            text = v.astype(object).where(v.notna(), None).map(lambda x: x if x is None else str(x))
            cats = ids if c == sample_key else s.dropna().astype(str)
            adata.obs[c] = pd.Categorical(text, categories=list(dict.fromkeys(cats)))  # missing stays missing
    rep = pd.DataFrame(report, columns=["sample", "path", "kind", "n_cells", "n_genes", "n_genes_kept"])
    adata.uns["read_cohort"] = rep
    adata.uns["read_cohort_params"] = {
        "sample_key": sample_key,
        "join": join,
        "var_names": var_names,
        "n_genes_union": len(union),
        "n_genes_shared": len(common),
    }
    n_drop = len(union) - adata.n_vars
    logger.info(
        "read_cohort: %d cells x %d genes from %d samples (join=%s%s)",
        adata.n_obs,
        adata.n_vars,
        len(parts),
        join,
        f", {n_drop} genes not in every sample dropped" if n_drop else "",
    )
    return adata
