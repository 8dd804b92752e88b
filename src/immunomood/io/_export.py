"""Write pseudobulk counts as plain CSV files that edgeR, limma and DESeq2 read directly."""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._settings import logger
from .._utils import check_adata, check_obs_key, count_matrix_problem

__all__ = ["write_pseudobulk"]

#: first line of the README of every export; ``overwrite=True`` only ever deletes a folder that starts so
MARKER = "immunomood pseudobulk export"
_R_NAME = re.compile(r"^([A-Za-z]|[.][A-Za-z._])[A-Za-z0-9._]*$")
_ROWS_PER_CHUNK = 2000


def write_pseudobulk(
    adata: AnnData,
    outdir: str | os.PathLike,
    *,
    sample_key: str | None = None,
    groupby: str | None = None,
    condition_key: str | None = None,
    reference: str | None = None,
    covariates: Sequence[str] = (),
    by_group: bool = True,
    layer: str | None = None,
    min_cells: int = 10,
    overwrite: bool = False,
) -> Path:
    """Write pseudobulk counts and the sample table as CSV files for edgeR, limma and DESeq2 in R.

    The counts are written genes x samples (integers, gzipped CSV, first column the gene), with a sample table
    whose rows are in the same order as the count columns, so that in R::

        counts  <- as.matrix(read.csv("counts.csv.gz", row.names = 1, check.names = FALSE))
        samples <- read.csv("samples.csv", row.names = 1, check.names = FALSE)
        y   <- edgeR::DGEList(counts, samples = samples)                         # edgeR, limma-voom
        dds <- DESeq2::DESeqDataSetFromMatrix(counts, samples, design = ~ condition)  # DESeq2

    Parameters
    ----------
    adata
        A pseudobulk AnnData returned by :func:`immunomood.tl.pseudobulk` (samples x genes, summed counts in
        ``X``), or a cell-level AnnData with raw counts, which is aggregated first with
        :func:`immunomood.tl.pseudobulk` (then ``sample_key`` and ``groupby`` are required).
    outdir
        Folder to create. It must not exist or be empty, unless ``overwrite=True``.
    sample_key
        Column of ``adata.obs`` that identifies the sample (donor). Read from ``uns["pseudobulk"]`` for a
        pseudobulk AnnData.
    groupby
        Column with the groups (cell types) aggregated within. Read from ``uns["pseudobulk"]`` for a pseudobulk
        AnnData.
    condition_key
        Sample-level column with the condition to test. With it, ``design.txt`` holds the design formula
        ``~ covariates + condition`` (the variable of interest last, as DESeq2 expects), and the reference level
        comes first in ``factor_levels.csv``.
    reference
        Reference level of ``condition_key`` (default: its first category).
    covariates
        Sample-level covariates of the design formula (e.g. ``["sex", "age"]``).
    by_group
        One sub-folder per group (cell type) with its own counts and sample table (one column per sample),
        which is how pseudobulk data are analysed: one model per cell type. With ``False``, one counts matrix
        with one column per sample x group (named ``"<sample>|<group>"``).
    layer
        Cell-level input only: the layer with raw counts; ``None`` (default): ``layers["counts"]`` when present,
        else ``adata.X`` (as in :func:`immunomood.tl.pseudobulk`).
    min_cells
        Cell-level input only: sample x group combinations with fewer cells are dropped.
    overwrite
        Replace ``outdir`` if it holds an earlier export of this function (a folder of anything else is never
        deleted).

    Returns
    -------
    The path of ``outdir``, which holds (``<g>`` a group's folder name, listed in ``groups.csv``):

    - ``counts.csv.gz``: integer counts, genes x samples; with ``by_group=True`` one per ``<g>/`` folder;
    - ``samples.csv``: one row per count column, in the same order (first column: the column name), with the
      sample's metadata: ``sample_key``, ``groupby``, ``n_cells`` and every sample-level column;
    - ``factor_levels.csv``: the level order of each categorical column (``column``, ``level``; the reference
      of ``condition_key`` first; per group only the levels present);
    - ``genes.csv``: ``adata.var`` (the gene annotation, for ``DGEList(genes=)``);
    - ``design.txt``: the design formula, when ``condition_key`` is given;
    - ``groups.csv`` (``by_group=True``): group, folder, number of samples and of cells;
    - ``dropped.csv``: the sample x group combinations dropped by :func:`~immunomood.tl.pseudobulk`;
    - ``README.txt``: what the files are and the R code that reads them.
    """
    check_adata(adata)
    if not isinstance(outdir, (str, os.PathLike)):
        raise TypeError(f"`outdir` must be a folder path, got {outdir!r} ({type(outdir).__name__}).")
    outdir = Path(outdir)
    if not isinstance(by_group, bool) or not isinstance(overwrite, bool):
        raise TypeError(f"`by_group` and `overwrite` must be True or False, got {by_group!r} and {overwrite!r}.")
    if isinstance(covariates, str):
        covariates = [covariates]
    covariates = list(covariates)
    _check_outdir(outdir, overwrite)

    params = adata.uns.get("pseudobulk") if hasattr(adata, "uns") else None
    if isinstance(params, dict) and "sample_key" in params and "groupby" in params:
        for name, given in (("sample_key", sample_key), ("groupby", groupby)):
            if given is not None and given != params[name]:
                raise ValueError(
                    f"`{name}`={given!r}, but this pseudobulk AnnData was made with {name}={params[name]!r} "
                    f"(uns['pseudobulk']). Leave `{name}` out, or pass the cell-level AnnData to aggregate again."
                )
        sample_key, groupby = params["sample_key"], params["groupby"]
        pdata = adata
    else:
        if sample_key is None or groupby is None:
            raise ValueError(
                "`adata` is not a pseudobulk AnnData (no uns['pseudobulk'] from im.tl.pseudobulk), so it is "
                "aggregated here: pass both `sample_key` (the donor column) and `groupby` (the cell-type column), "
                f"got sample_key={sample_key!r}, groupby={groupby!r}."
            )
        from ..tl import pseudobulk

        for key, what in ((sample_key, "sample_key column"), (groupby, "groupby column")):
            check_obs_key(adata, key, what=what)
        _check_sample_level(adata.obs, sample_key, [condition_key, *covariates])
        pdata = pseudobulk(adata, sample_key=sample_key, groupby=groupby, layer=layer, min_cells=min_cells)

    obs = pdata.obs
    for key, what in ((sample_key, "sample_key column"), (groupby, "groupby column")):
        check_obs_key(pdata, key, what=what)
    for c in [condition_key, *covariates]:
        if c is not None:
            check_obs_key(pdata, c, what="sample-level column")
    if condition_key is not None and condition_key in covariates:
        raise ValueError(f"`condition_key` {condition_key!r} is also in `covariates`; list it once.")
    if condition_key is None and reference is not None:
        raise ValueError(f"`reference`={reference!r} needs `condition_key` (the column it is a level of).")
    problem = count_matrix_problem(pdata.X)
    if problem is not None:
        raise ValueError(
            f"The pseudobulk X is not raw counts: {problem}. edgeR and DESeq2 model integer counts; aggregate the "
            "raw counts (im.tl.pseudobulk(adata, layer='counts', ...)) rather than normalised values."
        )
    if pdata.n_obs == 0:
        raise ValueError("The pseudobulk AnnData has no samples (all combinations dropped?); nothing to write.")
    levels = _factor_levels(obs, condition_key, reference)
    design = _design(condition_key, covariates)

    parent = outdir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=parent))
    try:
        _write_table(pdata.var, tmp / "genes.csv", "gene")
        dropped = pdata.uns.get("dropped")
        if isinstance(dropped, pd.DataFrame):
            dropped.to_csv(tmp / "dropped.csv", index=False)
        if design is not None:
            (tmp / "design.txt").write_text(design + "\n")
        if by_group:
            groups = _write_by_group(pdata, tmp, sample_key, groupby, levels)
            groups.to_csv(tmp / "groups.csv", index=False)
        else:
            names = pdata.obs_names.astype(str)
            _write_counts(pdata.X, pdata.var_names, names, tmp / "counts.csv.gz")
            _write_samples(obs, names, tmp / "samples.csv")
            _write_levels(obs, levels, tmp / "factor_levels.csv")
            groups = None
        (tmp / "README.txt").write_text(_readme(by_group, groups, design, sample_key, groupby))
        if outdir.exists():  # checked above: empty, or an earlier export with overwrite=True
            shutil.rmtree(outdir)
        os.replace(tmp, outdir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("write_pseudobulk: %d samples x %d genes written to %s", pdata.n_obs, pdata.n_vars, outdir)
    return outdir


# ------------------------------------------------------------------------------------------------ checks
def _check_outdir(outdir: Path, overwrite: bool) -> None:
    anc = outdir.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise ValueError(
            f"`outdir` {str(outdir)!r} cannot be created: {str(anc)!r} is a file, not a folder. Pass a folder path."
        )
    if outdir.exists() and not outdir.is_dir():
        raise FileExistsError(f"`outdir` {str(outdir)!r} exists and is a file; pass a folder path.")
    if outdir.is_dir() and any(outdir.iterdir()):
        readme = outdir / "README.txt"
        ours = readme.is_file() and readme.read_text(errors="replace").startswith(MARKER)
        if not overwrite:
            raise FileExistsError(
                f"`outdir` {str(outdir)!r} exists and is not empty. Pass another folder"
                + (", or `overwrite=True` to replace this earlier export." if ours else ".")
            )
        if not ours:
            raise FileExistsError(
                f"`outdir` {str(outdir)!r} is not empty and is not an earlier export of write_pseudobulk (no "
                f"README.txt starting with {MARKER!r}); it is never deleted. Pass an empty or new folder."
            )


def _check_sample_level(obs: pd.DataFrame, sample_key: str, columns: Sequence[str | None]) -> None:
    """Design columns must be constant within each sample, or the pseudobulk cannot carry them."""
    g = obs.groupby(sample_key, observed=True)
    for c in columns:
        if c is None:
            continue
        if c not in obs.columns:
            raise KeyError(f"Column {c!r} not found in adata.obs. Available: {list(map(str, obs.columns))}.")
        n = g[c].nunique(dropna=False)
        if (n > 1).any():
            bad = list(map(str, n.index[n > 1][:5]))
            raise ValueError(
                f"Column {c!r} varies within samples (e.g. {bad}); a design column must be one value per "
                f"{sample_key!r}."
            )


def _factor_levels(obs: pd.DataFrame, condition_key: str | None, reference: str | None) -> dict[str, list]:
    """Level order of each categorical column; the condition's reference first."""
    levels: dict[str, list] = {}
    for c in obs.columns:
        if isinstance(obs[c].dtype, pd.CategoricalDtype):
            levels[c] = [x for x in obs[c].cat.categories if (obs[c] == x).any()]
    if condition_key is not None:
        col = obs[condition_key]
        if condition_key not in levels:
            if pd.api.types.is_bool_dtype(col):
                levels[condition_key] = [x for x in ("FALSE", "TRUE") if (col == (x == "TRUE")).any()]
            elif pd.api.types.is_numeric_dtype(col):
                if reference is not None:
                    raise ValueError(f"`reference` given, but {condition_key!r} is numeric (no levels).")
                return levels
            else:
                levels[condition_key] = sorted(pd.unique(col.dropna()).tolist(), key=str)
        lv = levels[condition_key]
        if len(lv) < 2:
            raise ValueError(f"Column {condition_key!r} has {len(lv)} level(s) ({lv}); a comparison needs 2 or more.")
        if reference is not None:
            match = [x for x in lv if str(x) == str(reference)]
            if not match:
                raise ValueError(f"`reference` {reference!r} is not a level of {condition_key!r}. Levels: {lv}.")
            levels[condition_key] = match + [x for x in lv if str(x) != str(reference)]
    return levels


def _r_name(name: str) -> str:
    return name if _R_NAME.match(name) else "`" + name.replace("`", "\\`") + "`"


def _design(condition_key: str | None, covariates: Sequence[str]) -> str | None:
    if condition_key is None:
        return None
    return "~ " + " + ".join(_r_name(str(c)) for c in [*covariates, condition_key])


# ------------------------------------------------------------------------------------------------ writers
def _folder_names(groups: Sequence) -> list[str]:
    out, seen = [], set()
    for g in groups:
        base = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(g)).strip("._") or "group"
        name, i = base, 2
        while name.lower() in seen:
            name, i = f"{base}_{i}", i + 1
        seen.add(name.lower())
        out.append(name)
    return out


def _write_by_group(pdata: AnnData, tmp: Path, sample_key: str, groupby: str, levels: dict) -> pd.DataFrame:
    obs = pdata.obs
    g = obs[groupby]
    group_levels = list(g.cat.categories) if isinstance(g.dtype, pd.CategoricalDtype) else list(pd.unique(g))
    group_levels = [x for x in group_levels if (g == x).any()]
    rows = []
    for grp, folder in zip(group_levels, _folder_names(group_levels)):
        idx = np.flatnonzero((g == grp).to_numpy())
        sub = obs.iloc[idx]
        names = sub[sample_key].astype(str)
        if names.duplicated().any():  # cannot happen for tl.pseudobulk output; guards hand-made input
            raise ValueError(
                f"Group {grp!r} has a sample twice in {sample_key!r}: {names[names.duplicated()].tolist()}."
            )
        d = tmp / folder
        d.mkdir()
        _write_counts(pdata.X[idx], pdata.var_names, pd.Index(names), d / "counts.csv.gz")
        _write_samples(sub, pd.Index(names), d / "samples.csv")
        _write_levels(sub, levels, d / "factor_levels.csv")
        rows.append(
            {
                "group": str(grp),
                "folder": folder,
                "n_samples": len(idx),
                "n_cells": int(sub["n_cells"].sum()) if "n_cells" in sub else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _write_counts(X, genes: pd.Index, columns: pd.Index, path: Path) -> None:
    """Genes x samples integer CSV, gzipped reproducibly (mtime 0), written in chunks of genes."""
    X = X.tocsc() if sparse.issparse(X) else np.asarray(X)
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz,
        io.TextIOWrapper(gz, encoding="utf-8", newline="") as fh,
    ):
        for start in range(0, X.shape[1], _ROWS_PER_CHUNK):
            block = X[:, start : start + _ROWS_PER_CHUNK]
            block = block.toarray() if sparse.issparse(block) else block
            df = pd.DataFrame(
                np.rint(block.T).astype(np.int64), index=genes[start : start + _ROWS_PER_CHUNK], columns=columns
            )
            df.index.name = "gene"
            df.to_csv(fh, header=start == 0, lineterminator="\n")


def _r_friendly(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    for c in df.columns:
        col = df[c]
        if pd.api.types.is_bool_dtype(col):
            out[c] = col.map({True: "TRUE", False: "FALSE"})
        elif isinstance(col.dtype, pd.CategoricalDtype):
            out[c] = col.astype(object)
        else:
            out[c] = col
    return out


def _write_samples(obs: pd.DataFrame, names: pd.Index, path: Path) -> None:
    df = _r_friendly(obs)
    df.index = names
    df.index.name = "sample"
    df.to_csv(path, na_rep="NA", lineterminator="\n")


def _write_table(df: pd.DataFrame, path: Path, index_label: str) -> None:
    out = _r_friendly(df)
    out.index = df.index.astype(str)
    out.index.name = index_label
    out.to_csv(path, na_rep="NA", lineterminator="\n")


def _write_levels(obs: pd.DataFrame, levels: dict[str, list], path: Path) -> None:
    rows = []
    for c, lv in levels.items():
        present = set(_r_friendly(obs[[c]])[c].astype(object).dropna())
        rows += [{"column": c, "level": x} for x in lv if x in present]
    pd.DataFrame(rows, columns=["column", "level"]).to_csv(path, index=False, lineterminator="\n")


def _readme(by_group: bool, groups: pd.DataFrame | None, design: str | None, sample_key: str, groupby: str) -> str:
    where = (
        "one folder per group (cell type), listed in groups.csv, each with counts.csv.gz, samples.csv and "
        "factor_levels.csv"
        if by_group
        else "counts.csv.gz, samples.csv and factor_levels.csv"
    )
    folder = f'"{groups["folder"].iloc[0]}"' if by_group and groups is not None and len(groups) else '"."'
    formula = design or "~ condition"
    return f"""{MARKER}
Written by immunomood's im.io.write_pseudobulk: summed raw counts per sample ({sample_key!r}) x group ({groupby!r}).

Files: {where}; genes.csv (gene annotation), dropped.csv (combinations with too few cells){", design.txt" if design else ""}.
counts.csv.gz: integer counts, genes in rows, samples in columns (first column: gene).
samples.csv:   one row per column of counts.csv.gz, in the same order (first column: the column name).
factor_levels.csv: level order of the categorical columns (the reference level first).

Read them in R (edgeR / limma-voom / DESeq2), with this folder as the working directory:

  d <- {folder}{'   # one group; loop over read.csv("groups.csv")$folder for all' if by_group else ""}
  counts  <- as.matrix(read.csv(file.path(d, "counts.csv.gz"), row.names = 1, check.names = FALSE))
  samples <- read.csv(file.path(d, "samples.csv"), row.names = 1, check.names = FALSE)
  lv <- read.csv(file.path(d, "factor_levels.csv"))
  for (col in unique(lv$column)) samples[[col]] <- factor(samples[[col]], levels = lv$level[lv$column == col])
  stopifnot(identical(colnames(counts), rownames(samples)))
  design <- {'as.formula(readLines("design.txt")[1])' if design else "~ condition"}   # {formula}

  # edgeR (quasi-likelihood) or limma-voom
  y <- edgeR::DGEList(counts, samples = samples)
  keep <- edgeR::filterByExpr(y, design = model.matrix(design, samples))
  y <- edgeR::calcNormFactors(y[keep, , keep.lib.sizes = FALSE])
  # DESeq2
  dds <- DESeq2::DESeqDataSetFromMatrix(countData = counts, colData = samples, design = design)
"""
