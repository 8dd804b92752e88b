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
_ASSAY_COLUMNS = (
    _ASSAY_IDENTIFIERS
    + _LOD_COLUMNS
    + (
        "MissingFreq",
        "Panel_Version",
        "Panel_Lot_Nr",
        "AssayType",
        "Block",
        "Assay_Warning_Freq",
    )
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


def _decode(buf: bytes, name: str) -> str:
    from ._textfile import decode_text

    text, enc = decode_text(buf, name, "Olink export")
    if enc != "utf-8":
        logger.info("read_olink: %s is %s text", name, enc)
    return text.lstrip("\ufeff")


def _check_fields(text: str, sep: str, name: str) -> bool:
    """Every row must have the header's number of fields (a row cut short is a truncated file); returns whether
    the text ends with a line break (without one, the last value itself may be cut)."""
    rows = csv.reader(io.StringIO(text), delimiter=sep)
    header = next(rows, [])
    n = len(header)
    bad: list[tuple[int, int]] = []
    for i, row in enumerate(rows, start=2):
        if row and len(row) != n:
            bad.append((i, len(row)))
    if bad:
        ex = ", ".join(f"line {i} has {k}" for i, k in bad[:5])
        last = " (the last line: the file was cut mid-row)" if bad[-1][0] >= i else ""
        raise ValueError(
            f"The Olink export {name!r} is truncated or ragged: {len(bad)} row(s) do not have the header's {n} "
            f"fields ({ex}){last}. Export or download the file again; rows are never padded with missing values."
        )
    return text.endswith(("\n", "\r"))


# ---- wide exports (samples x assays)
_FOOTER = {
    "lod": "LOD",
    "missing data freq.": "MissingFreq",
    "missing data freq": "MissingFreq",
    "normalization": "AssayNormalization",
    "plate lod": "PlateLOD",
    "max lod": "MaxLOD",
}
_WIDE_META = {
    "plateid": "PlateID",
    "qcwarning": "QC_Warning",
    "qcdeviationfrommedianincctrl": "QC_Deviation_Inc_Ctrl",
    "qcdeviationfrommediandetctrl": "QC_Deviation_Det_Ctrl",
    "index": "Index",
    "wellid": "WellID",
    "sampletype": "SampleType",
    "subject": "Subject",
    "individualid": "Individual_ID",
    "time": "Time",
    "treatment": "Treatment",
    "site": "Site",
    "project": "Project",
    "age": "Age",
    "sex": "Sex",
    "condition": "condition",
    "group": "group",
    "batch": "batch",
    "donor": "donor",
}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", str(name)).lower()


def _is_target96(rows: list[list[str]]) -> bool:
    firsts = [_norm(r[0]) if r else "" for r in rows[:20]]
    return "assay" in firsts and "olinkid" in firsts


def _target96_to_long(rows: list[list[str]], name: str, value_column: str) -> pd.DataFrame:
    """Olink Target 96 wide export ("NPX" in A2, "Panel" row, rows Assay / Uniprot ID / OlinkID, the samples,
    then the footer rows LOD / Missing Data freq. / Normalization) as a long table."""
    firsts = [_norm(r[0]) if r else "" for r in rows]
    r_assay = firsts.index("assay")
    r_oid = firsts.index("olinkid")
    r_uni = next((i for i, f in enumerate(firsts[: max(r_assay, r_oid) + 1]) if f in ("uniprotid", "uniprot")), None)
    r_panel = next((i for i, f in enumerate(firsts[:r_assay]) if f == "panel"), None)
    start = max(r_assay, r_oid, r_uni if r_uni is not None else 0) + 1
    foot = next(
        (i for i in range(start, len(rows)) if str(rows[i][0] if rows[i] else "").strip().lower() in _FOOTER), None
    )
    if foot is None:
        raise ValueError(
            f"The Olink wide export {name!r} ends without its footer rows (LOD, Missing Data freq., Normalization): "
            "the file is truncated or the footer was deleted. Export the file again."
        )

    def cell(r: int, j: int) -> str:
        row = rows[r]
        return str(row[j]).strip() if j < len(row) and row[j] is not None else ""

    width = max(len(rows[r_assay]), len(rows[r_oid]))
    prot = [j for j in range(1, width) if cell(r_oid, j)]
    if not prot:
        raise ValueError(f"The Olink wide export {name!r} has an OlinkID row without any OlinkID.")
    meta = [j for j in range(1, width) if j not in prot and cell(r_assay, j)]
    panels = {}
    if r_panel is not None:
        vals = [cell(r_panel, j) for j in range(1, width)]
        filled = [v for v in vals if v]
        cur = filled[0] if filled else "unspecified"
        for j in range(1, width):
            v = cell(r_panel, j)
            cur = v or cur if len(set(filled)) > 1 else cur
            panels[j] = cur
    footer = {
        _FOOTER[str(rows[i][0]).strip().lower()]: i
        for i in range(foot, len(rows))
        if rows[i] and str(rows[i][0]).strip().lower() in _FOOTER
    }
    # metadata column names; a repeated header ("QC Deviation from median" for Inc Ctrl and Det Ctrl) takes the
    # label under it (Uniprot ID row) or its column number
    heads = {j: _WIDE_META.get(_norm(cell(r_assay, j)), cell(r_assay, j)) for j in meta}
    repeated = {h for h in heads.values() if list(heads.values()).count(h) > 1}
    meta_names: dict[int, str] = {}
    for j, nm in heads.items():
        sub = cell(r_uni, j) if r_uni is not None else ""
        meta_names[j] = f"{nm}_{sub or j}" if nm in repeated else nm
    if len(set(meta_names.values())) < len(meta_names):  # the label itself repeated: make unique by column
        meta_names = {j: f"{nm}_{j}" for j, nm in meta_names.items()}
    records = []
    need = max(prot) + 1
    for i in range(start, foot):
        row = rows[i]
        if not row or not any(str(c).strip() for c in row if c is not None):
            continue
        if len(row) < need:
            raise ValueError(
                f"The Olink wide export {name!r} is truncated or ragged: line {i + 1} (sample "
                f"{cell(i, 0)!r}) has {len(row)} cells, the assays need {need}. Export it again."
            )
        base = {"SampleID": cell(i, 0)}
        for j in meta:
            base[meta_names[j]] = cell(i, j)
        for j in prot:
            rec = dict(base)
            rec.update(OlinkID=cell(r_oid, j), Assay=cell(r_assay, j), Panel=panels.get(j, "unspecified"))
            if r_uni is not None:
                rec["UniProt"] = cell(r_uni, j)
            rec[value_column] = cell(i, j)
            for col, r in footer.items():
                rec[col] = cell(r, j)
            records.append(rec)
    if not records:
        raise ValueError(f"The Olink wide export {name!r} has no sample rows between its header and footer.")
    return pd.DataFrame.from_records(records).astype(str)


def _plain_wide_to_long(df: pd.DataFrame, name: str, value_column: str) -> pd.DataFrame:
    """A samples x proteins table (first column, or ``SampleID``, the sample; one column per protein) as long.

    Columns with a known sample-metadata name (Plate ID, QC Warning, Index, Subject, Age, Sex ...) or whose values
    are mostly not numbers are sample metadata; every other column is a protein (its name becomes ``Assay``)."""
    id_col = next((c for c in df.columns if _norm(c) in ("sampleid", "sample")), df.columns[0])
    meta, prots = [], []
    for c in df.columns:
        if c == id_col:
            continue
        st = df[c].astype(str).str.strip()
        st = st[~st.isin(_NA_STRINGS)]
        numeric = pd.to_numeric(st.str.replace(",", "", regex=False), errors="coerce").notna().mean() if len(st) else 1
        (meta if _norm(c) in _WIDE_META or numeric < 0.5 else prots).append(c)
    if not prots:
        raise ValueError(
            f"The wide table {name!r} has no protein columns (numeric columns besides the sample ID "
            f"{id_col!r} and metadata {meta})."
        )
    long = df.rename(columns={c: _WIDE_META.get(_norm(c), c) for c in meta}).rename(columns={id_col: "SampleID"})
    meta = [_WIDE_META.get(_norm(c), c) for c in meta]
    long = long.melt(id_vars=["SampleID", *meta], value_vars=prots, var_name="Assay", value_name=value_column)
    logger.info(
        "read_olink: %s is a wide table: %d samples x %d proteins; sample metadata columns %s",
        name,
        len(df),
        len(prots),
        meta,
    )
    return long.astype(str)


def _sniff_grid_sep(text: str) -> str:
    head = text.splitlines()[:15]
    counts = {d: sum(line.count(d) for line in head) for d in (";", ",", "\t")}
    return max(counts, key=counts.get)


def _read_xlsx(path: Path) -> list[list[str]]:
    try:
        import openpyxl
    except ImportError:
        raise ImportError(
            f"Reading the Excel file {path.name!r} needs the package 'openpyxl', which is not installed: "
            "`pip install openpyxl` (or save the sheet as CSV and read the CSV)."
        ) from None
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        ws = wb.worksheets[0]
        return [["" if v is None else str(v) for v in row] for row in ws.iter_rows(values_only=True)]
    finally:
        wb.close()


def _read_text_table(buf: bytes, name: str, value_column: str = "NPX") -> pd.DataFrame:
    text = _decode(buf, name)
    head_rows = list(csv.reader(io.StringIO("\n".join(text.splitlines()[:20])), delimiter=_sniff_grid_sep(text)))
    if _is_target96(head_rows):
        sep = _sniff_grid_sep(text)
        df = _target96_to_long(list(csv.reader(io.StringIO(text), delimiter=sep)), name, value_column)
        df.attrs.update(delimiter=sep, layout="target96 wide", ends_with_line_break=True)
        return df
    sep = _sniff_sep(text[:20_000])
    logger.info("read_olink: %s is %r-delimited", name, sep)
    ends = _check_fields(text, sep, name)
    # everything as text first: numeric conversion is done per column, with clear errors
    df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[], index_col=False)
    df.attrs["delimiter"] = sep
    df.attrs["ends_with_line_break"] = ends
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


def _text_info(df: pd.DataFrame, info: dict, fmt: str) -> tuple[pd.DataFrame, dict]:
    info["format"] = fmt
    info["delimiter"] = df.attrs.get("delimiter")
    info["layout"] = df.attrs.get("layout", "long")
    info["ends_with_line_break"] = df.attrs.get("ends_with_line_break", True)
    return df, info


def _read_long(path: Path, value_column: str = "NPX") -> tuple[pd.DataFrame, dict]:
    info: dict = {"file": str(path)}
    suffixes = "".join(path.suffixes).lower()
    if suffixes.endswith((".xlsx", ".xlsm")):
        rows = _read_xlsx(path)
        info["format"] = "xlsx"
        if _is_target96(rows):
            info["layout"] = "target96 wide"
            return _target96_to_long(rows, path.name, value_column), info
        rows = [r for r in rows if any(str(c).strip() for c in r)]
        if len(rows) < 2:
            raise ValueError(f"The Excel file {path.name!r} has no data rows in its first sheet.")
        header = [str(c).strip() for c in rows[0]]
        df = pd.DataFrame([list(r) + [""] * (len(header) - len(r)) for r in rows[1:]], columns=header, dtype=str)
        info["layout"] = "long"
        return df, info
    if suffixes.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for damaged files
            raise ValueError(
                f"The parquet file {path.name!r} cannot be read ({type(e).__name__}: {e}): it is "
                "truncated or not a parquet file. Download or copy it again."
            ) from None
        meta = {
            k.decode(): v.decode(errors="replace")
            for k, v in (table.schema.metadata or {}).items()
            if not k.startswith(b"ARROW:")
        }
        info["format"] = "parquet"
        info["file_metadata"] = meta
        return table.to_pandas(), info
    if suffixes.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            checks = [n for n in names if Path(n).name.lower() in _CHECKSUM_FILES]
            data = [
                n for n in names if n not in checks and Path(n).suffix.lower() in (".csv", ".txt", ".parquet", ".tsv")
            ]
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
        return _text_info(_read_text_table(buf, data[0], value_column), info, "csv (zip)")
    # plain or gzip/bz2/xz compressed text
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)
    try:
        with opener(path, "rb") as fh:
            buf = fh.read()
    except (EOFError, OSError, lzma.LZMAError) as e:
        raise ValueError(
            f"The compressed Olink export {path.name!r} cannot be decompressed ({e}): the file is "
            "truncated or damaged. Download or copy it again."
        ) from None
    return _text_info(_read_text_table(buf, path.name, value_column), info, "csv")


# ----------------------------------------------------------------------------------------------
# column handling
# ----------------------------------------------------------------------------------------------
_NA_STRINGS = {"", "NA", "NaN", "nan", "N/A", "NULL", "null", "None", "-"}


def _to_numeric(s: pd.Series, column: str, *, strict: bool, decimal_comma: bool = False) -> pd.Series | None:
    """Numeric version of ``s`` (NA strings -> NaN); None (or, ``strict``, an error) when not numeric.

    Commas: in a semicolon-delimited export (``decimal_comma``, the European-locale layout) a comma is the decimal
    mark (``"1,5"`` = 1.5), provided the column never also uses ``"."``; anywhere else a comma is ambiguous
    (thousands separator ``"1,234"`` = 1234, or decimal comma = 1.234) and the value is refused, never guessed.
    """
    if pd.api.types.is_numeric_dtype(s):
        return s.astype(float)
    st = s.astype("string").str.strip()
    st = st.mask(st.isin(_NA_STRINGS) | st.isna())
    comma = st.str.contains(",", regex=False).fillna(False).astype(bool)
    if comma.any():
        dot = st.str.contains(".", regex=False).fillna(False).astype(bool)
        ex = list(dict.fromkeys(st[comma].tolist()))[:5]
        if not decimal_comma:
            why = (
                "a comma in a number is ambiguous here (thousands separator: '1,234' = 1234; decimal comma: "
                "1.234), so it is not guessed"
            )
        elif dot.any():
            why = (
                "the column mixes '.' and ',' (e.g. thousands separators '1.234,5', or '.' decimals next to ',' "
                "ones), so the decimal mark is ambiguous"
            )
        else:
            why = None
        if why is not None:
            if strict:
                raise ValueError(
                    f"Column {column!r} holds {int(comma.sum())} value(s) with a comma, e.g. {ex}: {why}. Export "
                    "the file with '.' as the decimal mark and no thousands separators (or, for a European-locale "
                    "export, ';' as the delimiter and ',' as the only decimal mark)."
                )
            return None
        st = st.str.replace(",", ".", regex=False)
    out = pd.to_numeric(st, errors="coerce")
    bad = st.notna() & out.isna()
    if bad.any():
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


def _maybe_numeric(s: pd.Series, name: str, decimal_comma: bool = False) -> pd.Series:
    """Convert metadata columns that are entirely numeric (identifiers stay strings)."""
    if re.search(r"(ID|Id|Barcode|Well|Plate|Version|Lot|Index)", name) or pd.api.types.is_numeric_dtype(s):
        return s
    num = _to_numeric(s, name, strict=False, decimal_comma=decimal_comma)
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


def h5_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Text columns with missing values become categorical (h5ad cannot store None inside string arrays)."""
    for c in df.columns:
        s = df[c]
        if s.dtype == object:
            if s.isna().all():
                df[c] = np.full(len(s), np.nan)
            elif s.isna().any():
                df[c] = pd.Categorical(
                    s.astype(object).where(s.notna(), None).map(lambda v: v if v is None else str(v))
                )
            else:
                df[c] = s.astype(str)
    return df


def read_olink(
    path: str | os.PathLike,
    *,
    var_names: Literal["assay", "olinkid"] = "assay",
    value_column: str = "NPX",
    layout: Literal["auto", "long", "wide"] = "auto",
):
    """Read an Olink NPX export (long or wide) into an AnnData of samples x assays.

    Reads comma-, semicolon- or tab-delimited CSV/TXT exports (delimiter sniffed), gzip/bz2/xz compressed
    text, zipped deliveries (the checksum file inside, ``MD5_checksum.txt`` or ``checksum_sha256.txt``, is
    verified when present), Explore parquet files and Excel ``.xlsx`` (needs ``openpyxl``). Layouts:

    - long: one row per sample x assay, Olink's exports (``OlinkID``, ``LOD``, QC columns ...) and published
      processed tables (e.g. ``SampleID, Individual_ID, UniProt, GeneID, Assay, NPX, Panel, Index``, no
      ``OlinkID``/``LOD``/QC): without ``OlinkID`` the proteins are keyed by ``Assay`` (else ``UniProt``),
      per panel when an assay is on several panels;
    - Target 96 wide (CSV or XLSX): ``NPX`` in A2, a ``Panel`` row, rows ``Assay`` / ``Uniprot ID`` /
      ``OlinkID``, one row per sample (then ``Plate ID``, ``QC Warning`` columns), footer rows ``LOD``,
      ``Missing Data freq.``, ``Normalization`` (their absence means a truncated file and is refused);
    - plain wide: samples x proteins, the first (or ``SampleID``) column the sample; columns with a known
      metadata name (Plate ID, QC Warning, Index, Subject, Age, Sex ...) or mostly non-numeric values are
      sample metadata, every other column a protein.

    The file must prove it is whole: a row with fewer fields than the header, a compressed or parquet file
    that does not decompress, an empty, binary or non-UTF-8 file (UTF-16 with its byte-order mark is read) and
    a folder are refused; a last line without its line break is warned about. Numbers: ``.`` is the decimal
    mark; in a semicolon-delimited export ``,`` is (European locale), provided a column never mixes both; a
    comma anywhere else (``"1,234"``: thousands separator or decimal comma?) is refused, never guessed.

    Parameters
    ----------
    path
        The export file.
    var_names
        ``"assay"`` (default): assay names (``IL6``); an assay measured on several panels gets one
        variable per panel, named ``"<Assay>|<Panel>"`` (e.g. ``"IL6|Olink Inflammation"``), and, should
        that still repeat, ``"<Assay>|<OlinkID>"``. ``"olinkid"``: the Olink IDs (always unique).
        ``var["OlinkID"]`` (when the export has Olink IDs) and ``var["Assay"]`` are kept either way.
    value_column
        Column holding the values (``"NPX"``; e.g. ``"Quantified_value"`` for quantified exports).
    layout
        ``"auto"`` (default: Target 96 wide recognised by its header rows; a table without the value column
        and without OlinkID/Assay/UniProt is a plain wide table), ``"long"`` or ``"wide"`` (plain wide).

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
            The same holds for any sample measured in several runs told apart by ``Index``/``WellID``/``PlateID``
            (with a warning); ``obs["repeated"]`` (bool) marks them.
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
            ``{"platform": "olink", "value": "NPX", "scale": "log2", "source": {...}, "protein_key": ...,
            "integrity": {"ends_with_line_break": bool, "rows_absent": int}}``.
        ``uns["immunomood_problems"]``
            (with a warning) when sample x assay rows are absent for part of a panel the sample was run on (a
            long export has every row, NPX or not: a file cut at a line boundary, or a filtered table) or when
            the file does not end with a line break.

    Raises
    ------
    ValueError
        Missing columns (named), non-numeric or ambiguous (comma) values (column and examples), the same
        ``SampleID`` measured twice for one assay with nothing telling the runs apart, a bad checksum inside a
        zip, a truncated, empty, binary or non-UTF-8 file, a folder.
    ImportError
        An ``.xlsx`` file without ``openpyxl`` installed.
    """
    import anndata as ad

    from .._utils import check_choice, warn
    from ._textfile import check_is_file

    path = Path(path)
    if var_names not in ("assay", "olinkid"):
        raise ValueError(f"var_names must be 'assay' or 'olinkid', got {var_names!r}.")
    check_choice("layout", layout, ("auto", "long", "wide"))
    check_is_file(path, "Olink file")
    df, info = _read_long(path, value_column)
    df.columns = [str(c).strip() for c in df.columns]
    # common spelling variants of the base columns
    rename = {
        "Sample_ID": "SampleID",
        "Olink_ID": "OlinkID",
        "Uniprot": "UniProt",
        "UniProtID": "UniProt",
        "Uniprot ID": "UniProt",
        "QC_warning": "QC_Warning",
        "Sample_Type": "SampleType",
        "Plate_ID": "PlateID",
    }
    df = df.rename(columns={k: v for k, v in rename.items() if k in df.columns and v not in df.columns})
    dc = info.get("delimiter") == ";"
    keys = [c for c in ("OlinkID", "Assay", "UniProt") if c in df.columns]
    if layout == "wide" or (
        layout == "auto" and info.get("layout", "long") == "long" and value_column not in df.columns and not keys
    ):
        if info.get("layout", "long") == "long":
            df = _plain_wide_to_long(df, path.name, value_column)
            info["layout"] = "wide"
        keys = [c for c in ("OlinkID", "Assay", "UniProt") if c in df.columns]
    missing = [c for c in ("SampleID", value_column) if c not in df.columns]
    if missing or not keys:
        what = missing + ([] if keys else ["a protein identifier (OlinkID, Assay or UniProt)"])
        raise ValueError(
            f"The Olink export {path.name!r} lacks {what}. Columns present: {list(df.columns)}. A long NPX export "
            f"needs SampleID, {value_column} and OlinkID (or Assay / UniProt); for quantified exports pass "
            "value_column='Quantified_value'; for a samples x proteins table pass layout='wide'."
        )
    if df.empty:
        raise ValueError(f"The Olink export {path.name!r} has no data rows.")
    problems: list[str] = []
    if not info.get("ends_with_line_break", True):
        problems.append(
            f"read_olink: {path.name!r} does not end with a line break, so its last value may have been "
            "cut (a complete export ends every row with one). Check the file against its source."
        )
    values = _to_numeric(df[value_column], value_column, strict=True, decimal_comma=dc)
    df = df.drop(columns=[value_column])
    for c in df.columns:
        df[c] = _clean_strings(df[c])
    df["SampleID"] = df["SampleID"].astype(str).str.strip()
    # the protein key: OlinkID, else (published processed tables) Assay, else UniProt; per panel when it repeats
    protein_key = keys[0]
    has_oid = protein_key == "OlinkID"
    if "Panel" not in df.columns:
        df["Panel"] = "unspecified"
    df["Panel"] = df["Panel"].fillna("unspecified")
    if not has_oid:
        if var_names == "olinkid":
            raise ValueError(
                f"var_names='olinkid' needs an OlinkID column, which {path.name!r} lacks; use var_names='assay'."
            )
        key = df[protein_key].astype(str).str.strip()
        several = df["Panel"].groupby(key).transform("nunique") > 1
        df["OlinkID"] = key.where(~several, key + "|" + df["Panel"].astype(str))
        if "Assay" not in df.columns:
            df["Assay"] = key
        logger.info("read_olink: no OlinkID column in %s; proteins identified by %r", path.name, protein_key)
    df["OlinkID"] = df["OlinkID"].astype(str).str.strip()
    if df["SampleID"].isin(["", "nan"]).any():
        rows = (np.flatnonzero(df["SampleID"].isin(["", "nan"]).to_numpy()) + 2)[:10].tolist()
        raise ValueError(
            f"The Olink export {path.name!r} has rows without a SampleID (lines {rows}). Fill them in or remove them."
        )
    df["_value"] = values.to_numpy()

    # ---- control samples and replicate runs of one SampleID
    stype = df["SampleType"] if "SampleType" in df.columns else None
    df["_is_control"] = _is_control_sample(df["SampleID"], stype).to_numpy()
    df["_sample"] = df["SampleID"]
    dup = df.duplicated(["SampleID", "OlinkID"], keep=False)
    df["_repeated"] = dup.to_numpy()
    if dup.any():
        key = next(
            (
                c
                for c in ("Index", "WellID", "PlateID")
                if c in df.columns and not df.loc[dup].duplicated(["SampleID", c, "OlinkID"]).any()
            ),
            None,
        )
        bad = df.loc[dup & ~df["_is_control"], "SampleID"].unique()
        if len(bad) and key is None:
            ex = df.loc[dup & ~df["_is_control"]].head(3)[["SampleID", "OlinkID"]].to_dict("records")
            raise ValueError(
                f"Duplicated sample IDs: {len(bad)} SampleID(s) are measured more than once for the same assay "
                f"(e.g. {list(bad[:5])}; rows {ex}), and no Index/WellID/PlateID column tells the runs apart. Each "
                "run must be identifiable: rename repeated runs (e.g. bridging samples) in the export, or remove "
                "them, before reading."
            )
        if len(bad):
            warn(
                f"read_olink: {len(bad)} sample(s) measured in several runs (e.g. {list(bad[:5])}) are kept as "
                f"separate rows named '<SampleID>|<{key}>'; obs['SampleID'] holds the ID, obs['repeated'] marks them. "
                "Average or choose runs before joining to donors."
            )
        if key is not None:
            df.loc[dup, "_sample"] = df.loc[dup, "SampleID"] + "|" + df.loc[dup, key].astype(str)
        else:
            run = df.loc[dup].groupby(["SampleID", "OlinkID"]).cumcount() + 1
            df.loc[dup, "_sample"] = df.loc[dup, "SampleID"] + "|run" + run.astype(str)
        logger.info(
            "read_olink: control samples measured several times kept as separate rows: %s",
            sorted(df.loc[dup, "_sample"].unique()),
        )

    samples = pd.Index(pd.unique(df["_sample"]))
    assays = pd.Index(pd.unique(df["OlinkID"]))
    ri = samples.get_indexer(df["_sample"])
    ci = assays.get_indexer(df["OlinkID"])
    X = np.full((len(samples), len(assays)), np.nan)
    X[ri, ci] = df["_value"].to_numpy(dtype=float)
    # a long export has one row per sample x assay of every panel the sample was run on (NPX may be NA, the row is
    # there): rows absent for part of a panel mean a file cut at a line boundary, or a filtered table
    present = np.zeros(X.shape, dtype=bool)
    present[ri, ci] = True
    panel_of = df.groupby("OlinkID", sort=False)["Panel"].first().reindex(assays).astype(str)
    P = pd.get_dummies(panel_of).to_numpy(dtype=float)  # assays x panels
    expected = ((present.astype(float) @ P) > 0).astype(float) @ P.T > 0
    absent = expected & ~present
    integrity: dict = {
        "ends_with_line_break": bool(info.get("ends_with_line_break", True)),
        "rows_absent": int(absent.sum()),
    }
    if absent.any():
        n_abs = absent.sum(axis=1)
        worst = [f"{samples[i]} ({int(n_abs[i])})" for i in np.flatnonzero(n_abs)[:5]]
        problems.append(
            f"read_olink: {int((n_abs > 0).sum())} sample(s) lack rows for some assays of a panel they were run on "
            f"(e.g. {worst}; {int(absent.sum())} rows absent, left as NaN): the file may have been cut at a line "
            "boundary, or rows were filtered out. Check the file against its source."
        )

    # ---- classify the remaining columns
    skip = {"_value", "_sample", "_is_control", "_repeated", "SampleID", "OlinkID"}
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
        if c not in _MEASUREMENT_COLUMNS and (
            c in _ASSAY_IDENTIFIERS or (const_assay and (c in _ASSAY_COLUMNS or not const_sample))
        ):
            first = by_assay[c].first()
            var[c] = _maybe_numeric(first.reindex(assays), c, dc).to_numpy()
            if c in _LOD_COLUMNS:
                var[c] = _to_numeric(var[c], c, strict=True, decimal_comma=dc).to_numpy()
        elif const_sample and c not in _MEASUREMENT_COLUMNS:
            obs[c] = _maybe_numeric(by_sample[c].first().reindex(samples), c, dc).to_numpy()
        elif c not in _MEASUREMENT_COLUMNS and (by_sample_panel[c].nunique(dropna=False) <= 1).all():
            # constant per sample within a panel (plate, per-panel sample QC): one column per panel + summary
            per = by_sample_panel[c].first().unstack("Panel").reindex(samples)
            for panel in per.columns:
                obs[f"{c}|{panel}"] = per[panel].to_numpy()
            if c in _SAMPLE_QC_COLUMNS:
                obs[c] = by_sample[c].agg(_qc_worst).reindex(samples).to_numpy()
            else:
                obs[c] = (
                    by_sample[c].agg(lambda v: ";".join(map(str, pd.unique(v.dropna())))).reindex(samples).to_numpy()
                )
        else:
            num = _to_numeric(df[c], c, strict=c in _LOD_COLUMNS, decimal_comma=dc)
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
        if c in var.columns:
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
    obs["repeated"] = df.groupby("_sample", sort=False)["_repeated"].any().reindex(samples).to_numpy().astype(bool)
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
    if not has_oid:  # the key was built from Assay/UniProt: no Olink ID to show
        var = var.drop(columns=["OlinkID"])
    obs.index.name = None

    adata = ad.AnnData(X=X, obs=h5_safe(obs), var=h5_safe(var))
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
        "protein_key": protein_key,
        "integrity": integrity,
    }
    from .._utils import record_problem

    for msg in problems:
        record_problem(adata, msg)
    n_ctrl = int(obs["is_control"].sum())
    logger.info(
        "read_olink: %d samples (%d control) x %d assays (%d measured on several panels); %.1f%% below LOD; "
        "%.1f%% missing",
        adata.n_obs,
        n_ctrl,
        adata.n_vars,
        n_multi,
        100 * below.mean(),
        100 * np.isnan(X).mean(),
    )
    return adata
