"""Reader for Olink NPX exports (long format: CSV/TXT, zipped deliveries, Explore parquet)."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from .._settings import logger

__all__ = ["read_olink"]

#: columns without which a long NPX export cannot be turned into samples x assays
REQUIRED_COLUMNS = ("SampleID", "OlinkID", "UniProt", "Assay", "Panel", "NPX")
#: per-sample quality columns: their worst value across panels is kept in ``obs``
_SAMPLE_QC_COLUMNS = ("QC_Warning", "SampleQC")
_PASS_VALUES = {"pass", "passed", "ok", "na", "nan", ""}
#: columns that are per assay but may vary per plate (moved to layers when they do)
_LOD_COLUMNS = ("LOD", "PlateLOD", "Plate_LOD", "MaxLOD", "Max_LOD")
#: columns never treated as sample metadata
_ASSAY_IDENTIFIERS = ("OlinkID", "UniProt", "Assay", "Panel")
#: known per-assay columns (go to ``var`` when constant within an assay)
_ASSAY_COLUMNS = _ASSAY_IDENTIFIERS + _LOD_COLUMNS + (
    "MissingFreq", "Panel_Version", "Panel_Lot_Nr", "AssayType", "Block", "Assay_Warning_Freq",
)
#: known per-measurement columns (always layers)
_MEASUREMENT_COLUMNS = ("Count", "ExtNPX", "PCNormalizedNPX", "AssayQC", "Assay_Warning", "Normalization")
_CHECKSUM_FILES = ("md5_checksum.txt", "checksum_sha256.txt", "md5checksum.txt", "checksum.txt")


# ----------------------------------------------------------------------------------------------
# reading the raw long table
# ----------------------------------------------------------------------------------------------
def _sniff_sep(head: str) -> str:
    first = head.splitlines()[0] if head else ""
    try:
        return csv.Sniffer().sniff(first, delimiters=";,\t").delimiter
    except csv.Error:
        counts = {d: first.count(d) for d in (";", ",", "\t")}
        return max(counts, key=counts.get)


def _read_text_table(buf: bytes, name: str) -> pd.DataFrame:
    text = buf.decode("utf-8-sig", errors="replace")
    sep = _sniff_sep(text[:20_000])
    logger.info("read_olink: %s is %r-delimited", name, sep)
    # everything as text first: numeric conversion is done per column, with clear errors
    df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[])
    df.attrs["delimiter"] = sep
    return df


def _verify_checksum(zf: zipfile.ZipFile, data_name: str, checksum_name: str) -> str:
    content = zf.read(checksum_name).decode("utf-8", errors="replace")
    digests = re.findall(r"\b([0-9a-fA-F]{64}|[0-9a-fA-F]{32})\b", content)
    if not digests:
        raise ValueError(
            f"The checksum file {checksum_name!r} inside the zip holds no MD5/SHA-256 digest "
            f"(content starts {content[:80]!r}). The delivery may be damaged: ask the provider for a new copy."
        )
    data = zf.read(data_name)
    expected = digests[0].lower()
    algo = "sha256" if len(expected) == 64 else "md5"
    got = hashlib.new(algo, data).hexdigest()
    if got != expected:
        raise ValueError(
            f"Checksum mismatch for {data_name!r} in the zip: {checksum_name!r} says {algo} {expected}, "
            f"the file has {got}. The file is damaged or was changed after delivery; download it again."
        )
    return algo


def _read_long(path: Path) -> tuple[pd.DataFrame, dict]:
    info: dict = {"file": str(path)}
    suffixes = "".join(path.suffixes).lower()
    if suffixes.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = {k.decode(): v.decode(errors="replace") for k, v in (table.schema.metadata or {}).items()
                if not k.startswith(b"ARROW:")}
        info["format"] = "parquet"
        info["file_metadata"] = meta
        return table.to_pandas(), info
    if suffixes.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            checks = [n for n in names if Path(n).name.lower() in _CHECKSUM_FILES]
            data = [n for n in names if n not in checks and
                    Path(n).suffix.lower() in (".csv", ".txt", ".parquet", ".tsv")]
            if len(data) != 1:
                raise ValueError(
                    f"Expected exactly one NPX data file (.csv/.txt/.parquet) inside {path.name}, found "
                    f"{data or 'none'} among {names}. Extract the zip and pass the data file's path."
                )
            info["zip_member"] = data[0]
            if checks:
                info["checksum"] = _verify_checksum(zf, data[0], checks[0])
                info["checksum_file"] = checks[0]
            else:
                info["checksum"] = None
                logger.info("read_olink: no checksum file inside %s; not verified", path.name)
            buf = zf.read(data[0])
        if data[0].lower().endswith(".parquet"):
            df = pd.read_parquet(io.BytesIO(buf))
            info["format"] = "parquet (zip)"
            return df, info
        df = _read_text_table(buf, data[0])
        info["format"] = "csv (zip)"
        info["delimiter"] = df.attrs.get("delimiter")
        return df, info
    # plain or gzip/bz2/xz compressed text
    import gzip
    import bz2
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)
    with opener(path, "rb") as fh:
        buf = fh.read()
    df = _read_text_table(buf, path.name)
    info["format"] = "csv"
    info["delimiter"] = df.attrs.get("delimiter")
    return df, info


# ----------------------------------------------------------------------------------------------
# column handling
# ----------------------------------------------------------------------------------------------
_NA_STRINGS = {"", "NA", "NaN", "nan", "N/A", "NULL", "null", "None", "-"}


def _to_numeric(s: pd.Series, column: str, *, strict: bool) -> pd.Series | None:
    """Numeric version of ``s`` (NA strings -> NaN); decimal commas accepted; None or error when not numeric."""
    if pd.api.types.is_numeric_dtype(s):
        return s.astype(float)
    st = s.astype("string").str.strip()
    st = st.mask(st.isin(_NA_STRINGS) | st.isna())
    out = pd.to_numeric(st, errors="coerce")
    bad = st.notna() & out.isna()
    if bad.any():
        # decimal comma (European locale exports)
        alt = pd.to_numeric(st.str.replace(",", ".", regex=False), errors="coerce")
        if not (st.notna() & alt.isna()).any():
            return alt.astype(float)
        if strict:
            ex = list(dict.fromkeys(st[bad].tolist()))[:5]
            raise ValueError(
                f"Column {column!r} must be numeric, but {int(bad.sum())} values are not, e.g. {ex}. "
                "Fix or blank those entries in the export (missing values may be empty or 'NA')."
            )
        return None
    return out.astype(float)


def _clean_strings(s: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return s
    st = s.astype(object)
    return st.where(~(st.isna() | st.astype(str).str.strip().isin(_NA_STRINGS)), np.nan)


def _maybe_numeric(s: pd.Series, name: str) -> pd.Series:
    """Convert metadata columns that are entirely numeric (identifiers stay strings)."""
    if re.search(r"(ID|Id|Barcode|Well|Plate|Version|Lot|Index)", name) or pd.api.types.is_numeric_dtype(s):
        return s
    num = _to_numeric(s, name, strict=False)
    return s if num is None or num.isna().all() else num


def _is_control_sample(sample_id: pd.Series, sample_type: pd.Series | None) -> pd.Series:
    ctrl = sample_id.astype(str).str.contains("CONTROL", case=False, regex=False)
    if sample_type is not None:
        st = sample_type.astype(str).str.strip().str.upper()
        ctrl |= sample_type.notna() & ~st.isin({"SAMPLE", "NAN", "", "NA"})
    return ctrl


def _qc_worst(values: pd.Series) -> object:
    vals = [v for v in pd.unique(values.dropna()) if str(v).strip().lower() not in _PASS_VALUES]
    if vals:
        return vals[0] if len(vals) == 1 else ";".join(map(str, vals))
    nonnull = values.dropna()
    return nonnull.iloc[0] if len(nonnull) else np.nan


# ----------------------------------------------------------------------------------------------
# the reader
# ----------------------------------------------------------------------------------------------

def _h5_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Text columns with missing values become categorical (h5ad cannot store None inside string arrays)."""
    for c in df.columns:
        s = df[c]
        if s.dtype == object:
            if s.isna().all():
                df[c] = np.full(len(s), np.nan)
            elif s.isna().any():
                df[c] = pd.Categorical(s.astype(object).where(s.notna(), None).map(
                    lambda v: v if v is None else str(v)))
            else:
                df[c] = s.astype(str)
    return df


def read_olink(
    path: str | os.PathLike,
    *,
    var_names: Literal["assay", "olinkid"] = "assay",
    value_column: str = "NPX",
):
    """Read an Olink NPX export (long format) into an AnnData of samples x assays.

    Reads comma-, semicolon- or tab-delimited CSV/TXT exports (delimiter sniffed; decimal commas
    accepted), gzip/bz2/xz compressed text, zipped deliveries (the checksum file inside,
    ``MD5_checksum.txt`` or ``checksum_sha256.txt``, is verified when present) and Explore parquet files.

    Parameters
    ----------
    path
        The export file.
    var_names
        ``"assay"`` (default): assay names (``IL6``); an assay measured on several panels gets one
        variable per panel, named ``"<Assay>|<Panel>"`` (e.g. ``"IL6|Olink Inflammation"``), and, should
        that still repeat, ``"<Assay>|<OlinkID>"``. ``"olinkid"``: the Olink IDs (always unique).
        ``var["OlinkID"]`` and ``var["Assay"]`` are kept either way.
    value_column
        Column holding the values (``"NPX"``; e.g. ``"Quantified_value"`` for quantified exports).

    Returns
    -------
    AnnData with
        ``X``
            NPX (float64, ``NaN`` where missing).
        ``obs``
            one row per sample, index = ``SampleID``; every column that is constant within a sample
            (``Subject``, ``Treatment``, ``Site``, ``Time``, ``Project``, ``SampleType`` ...). Columns
            constant within a sample *and panel* but differing between the panels of one sample
            (``PlateID``, ``QC_Warning``, ``WellID``...) are kept once per panel as ``"<column>|<panel>"``
            and summarised in ``"<column>"``: for ``QC_Warning``/``SampleQC`` the worst value (anything
            other than Pass), otherwise the distinct values joined with ``";"``.
            ``obs["is_control"]`` (bool): control samples (``SampleID`` containing ``CONTROL`` or a
            ``SampleType`` other than ``SAMPLE``). They are kept, flagged; :func:`immunomood.pp.proteomics_qc`
            removes them. A control sample run several times (same ``SampleID`` on several plates) gives
            one row per run, named ``"<SampleID>|<Index or WellID>"``; ``obs["SampleID"]`` keeps the original.
        ``var``
            one row per assay: ``OlinkID``, ``UniProt``, ``Assay``, ``Panel``, ``LOD`` (NaN when the export
            has none) and every other column constant within an assay (``MissingFreq``, ``Panel_Version``,
            ``AssayType`` ...); ``var["is_control"]`` for control assays (``AssayType`` other than ``assay``
            or a name containing "control").
        ``layers["below_lod"]``
            bool, ``NPX < LOD``; ``False`` where NPX or LOD is missing (missing is not "below").
        ``layers[<column>]``
            every other column that varies by sample *and* assay (``Count``, ``ExtNPX``, ``PCNormalizedNPX``,
            a plate-specific ``LOD``, ``AssayQC`` ...), numeric as float, text as strings.
        ``uns["proteomics"]``
            ``{"platform": "olink", "value": "NPX", "scale": "log2", "source": {...}}``.

    Raises
    ------
    ValueError
        Missing columns (named), non-numeric NPX (column and example values), the same non-control
        ``SampleID`` measured twice for one assay, a bad checksum inside a zip.
    """
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Olink file not found: {str(path)!r}.")
    if var_names not in ("assay", "olinkid"):
        raise ValueError(f"var_names must be 'assay' or 'olinkid', got {var_names!r}.")
    df, info = _read_long(path)
    df.columns = [str(c).strip() for c in df.columns]
    # common spelling variants of the base columns
    rename = {"Sample_ID": "SampleID", "Olink_ID": "OlinkID", "Uniprot": "UniProt", "UniProtID": "UniProt",
              "QC_warning": "QC_Warning", "Sample_Type": "SampleType", "Plate_ID": "PlateID"}
    df = df.rename(columns={k: v for k, v in rename.items() if k in df.columns and v not in df.columns})
    required = [c if c != "NPX" else value_column for c in REQUIRED_COLUMNS]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"The Olink export {path.name!r} lacks the column(s) {missing}. Columns present: {list(df.columns)}. "
            f"A long NPX export needs {required}; for quantified exports pass value_column='Quantified_value'."
        )
    if df.empty:
        raise ValueError(f"The Olink export {path.name!r} has no data rows.")
    values = _to_numeric(df[value_column], value_column, strict=True)
    df = df.drop(columns=[value_column])
    for c in df.columns:
        df[c] = _clean_strings(df[c])
    df["SampleID"] = df["SampleID"].astype(str).str.strip()
    df["OlinkID"] = df["OlinkID"].astype(str).str.strip()
    df["_value"] = values.to_numpy()

    # ---- control samples and replicate runs of one SampleID
    stype = df["SampleType"] if "SampleType" in df.columns else None
    df["_is_control"] = _is_control_sample(df["SampleID"], stype).to_numpy()
    df["_sample"] = df["SampleID"]
    dup = df.duplicated(["SampleID", "OlinkID"], keep=False)
    if dup.any():
        bad = df.loc[dup & ~df["_is_control"], "SampleID"].unique()
        if len(bad):
            ex = df.loc[dup & ~df["_is_control"]].head(3)[["SampleID", "OlinkID"]].to_dict("records")
            raise ValueError(
                f"Duplicated sample IDs: {len(bad)} SampleID(s) are measured more than once for the same assay "
                f"(e.g. {list(bad[:5])}; rows {ex}). Each sample must have a unique SampleID: rename repeated "
                "runs (e.g. bridging samples) in the export, or remove them, before reading."
            )
        key = next((c for c in ("Index", "WellID") if c in df.columns and not
                    df.loc[dup].duplicated(["SampleID", c, "OlinkID"]).any()), None)
        if key is not None:
            df.loc[dup, "_sample"] = df.loc[dup, "SampleID"] + "|" + df.loc[dup, key].astype(str)
        else:
            run = df.loc[dup].groupby(["SampleID", "OlinkID"]).cumcount() + 1
            df.loc[dup, "_sample"] = df.loc[dup, "SampleID"] + "|run" + run.astype(str)
        logger.info("read_olink: control samples measured several times kept as separate rows: %s",
                    sorted(df.loc[dup, "_sample"].unique()))

    samples = pd.Index(pd.unique(df["_sample"]))
    assays = pd.Index(pd.unique(df["OlinkID"]))
    ri = samples.get_indexer(df["_sample"])
    ci = assays.get_indexer(df["OlinkID"])
    X = np.full((len(samples), len(assays)), np.nan)
    X[ri, ci] = df["_value"].to_numpy(dtype=float)

    # ---- classify the remaining columns
    skip = {"_value", "_sample", "_is_control", "SampleID", "OlinkID"}
    by_assay = df.groupby("OlinkID", sort=False)
    by_sample = df.groupby("_sample", sort=False)
    by_sample_panel = df.groupby(["_sample", "Panel"], sort=False)
    var = pd.DataFrame(index=assays)
    var.index.name = None
    var["OlinkID"] = assays
    obs = pd.DataFrame(index=samples)
    layers: dict[str, np.ndarray] = {}
    lod_layer = None
    for c in [c for c in df.columns if c not in skip]:
        const_assay = bool((by_assay[c].nunique(dropna=False) <= 1).all())
        const_sample = bool((by_sample[c].nunique(dropna=False) <= 1).all())
        if c not in _MEASUREMENT_COLUMNS and (c in _ASSAY_IDENTIFIERS or (const_assay and (
                c in _ASSAY_COLUMNS or not const_sample))):
            first = by_assay[c].first()
            var[c] = _maybe_numeric(first.reindex(assays), c).to_numpy()
            if c in _LOD_COLUMNS:
                var[c] = _to_numeric(var[c], c, strict=True).to_numpy()
        elif const_sample and c not in _MEASUREMENT_COLUMNS:
            obs[c] = _maybe_numeric(by_sample[c].first().reindex(samples), c).to_numpy()
        elif c not in _MEASUREMENT_COLUMNS and (by_sample_panel[c].nunique(dropna=False) <= 1).all():
            # constant per sample within a panel (plate, per-panel sample QC): one column per panel + summary
            per = by_sample_panel[c].first().unstack("Panel").reindex(samples)
            for panel in per.columns:
                obs[f"{c}|{panel}"] = per[panel].to_numpy()
            if c in _SAMPLE_QC_COLUMNS:
                obs[c] = by_sample[c].agg(_qc_worst).reindex(samples).to_numpy()
            else:
                obs[c] = by_sample[c].agg(lambda v: ";".join(map(str, pd.unique(v.dropna())))).reindex(samples).to_numpy()
        else:
            num = _to_numeric(df[c], c, strict=c in _LOD_COLUMNS)
            if num is not None:
                M = np.full(X.shape, np.nan)
                M[ri, ci] = num.to_numpy(dtype=float)
            else:
                M = np.full(X.shape, "", dtype=object)
                M[ri, ci] = df[c].fillna("").astype(str).to_numpy()
                M = M.astype(str)
            layers[c] = M
            if c in _LOD_COLUMNS and lod_layer is None:
                lod_layer = M
                # per-assay summary: the largest LOD (Olink's Max_LOD convention)
                var[c] = np.nanmax(np.where(np.isnan(M), -np.inf, M), axis=0)
                var.loc[np.isinf(var[c]), c] = np.nan
    for c in _ASSAY_IDENTIFIERS:
        var[c] = var[c].astype(str)
    if "LOD" not in var.columns:
        alt = next((c for c in _LOD_COLUMNS if c in var.columns), None)
        if alt is not None:
            var["LOD"] = var[alt]
            lod_layer = layers.get(alt, lod_layer)
        else:
            var["LOD"] = np.nan
            logger.info("read_olink: no LOD column in %s; layers['below_lod'] is all False", path.name)
    lod = lod_layer if lod_layer is not None else np.broadcast_to(var["LOD"].to_numpy(dtype=float), X.shape)
    with np.errstate(invalid="ignore"):
        below = np.asarray(X < lod) & ~np.isnan(X) & ~np.isnan(lod)

    # ---- flags
    obs["SampleID"] = df.groupby("_sample", sort=False)["SampleID"].first().reindex(samples).to_numpy()
    obs["is_control"] = df.groupby("_sample", sort=False)["_is_control"].any().reindex(samples).to_numpy().astype(bool)
    ctrl_assay = var["Assay"].str.contains("control", case=False) | var["OlinkID"].str.contains("ctrl", case=False)
    if "AssayType" in var.columns:
        at = var["AssayType"].astype(str).str.strip().str.lower()
        ctrl_assay |= ~at.isin({"assay", "nan", "", "na"})
    var["is_control"] = ctrl_assay.to_numpy().astype(bool)
    for c in obs.columns:
        if obs[c].dtype == object:
            obs[c] = obs[c].where(obs[c].notna(), np.nan)

    # ---- names
    if var_names == "assay":
        names = var["Assay"].copy()
        rep = names.duplicated(keep=False)
        names[rep] = var.loc[rep, "Assay"] + "|" + var.loc[rep, "Panel"]
        rep = names.duplicated(keep=False)
        names[rep] = var.loc[rep, "Assay"] + "|" + var.loc[rep, "OlinkID"]
        var.index = pd.Index(names.to_numpy(), name=None)
    n_multi = int((var["Assay"].map(var["Assay"].value_counts()) > 1).sum())
    obs.index.name = None

    adata = ad.AnnData(X=X, obs=_h5_safe(obs), var=_h5_safe(var))
    adata.layers["below_lod"] = below
    for k, M in layers.items():
        adata.layers[k] = M
    adata.uns["proteomics"] = {
        "platform": "olink",
        "value": value_column,
        "scale": "log2",
        "source": {k: v for k, v in info.items() if v is not None},
        "n_control_samples": int(obs["is_control"].sum()),
        "n_assays_on_several_panels": n_multi,
    }
    n_ctrl = int(obs["is_control"].sum())
    logger.info(
        "read_olink: %d samples (%d control) x %d assays (%d measured on several panels); %.1f%% below LOD; "
        "%.1f%% missing", adata.n_obs, n_ctrl, adata.n_vars, n_multi, 100 * below.mean(), 100 * np.isnan(X).mean(),
    )
    return adata
