"""Reader for SomaScan ADAT files (own parser; see :func:`read_somascan` for why not ``somadata``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .._settings import logger
from ._olink import h5_safe

__all__ = ["read_somascan"]

_SECTIONS = ("^HEADER", "^COL_DATA", "^ROW_DATA", "^TABLE_BEGIN")
_NUMERIC_TYPES = {"float", "double", "integer", "int", "numeric", "number"}
# metadata kept as text even when every value looks like a number
_ID_LIKE = re.compile(r"(Id|ID|Barcode|Barcode2d|Name|Version|Position|Subarray|Date|Notes?|Description|Symbol)$")


def _broken(section: str, line_no: int | None, what: str) -> ValueError:
    where = f" (line {line_no})" if line_no is not None else ""
    return ValueError(
        f"Broken ADAT file: {section}{where}: {what}. The file is truncated or was edited; export the ADAT again "
        "or restore the original file."
    )


def _typed(values: list[str], name: str, declared: str | None) -> pd.Series:
    s = pd.Series(values, dtype=object).map(lambda v: v.strip() if isinstance(v, str) else v)
    s = s.where(s != "", np.nan)
    want_numeric = (declared or "").lower() in _NUMERIC_TYPES
    if want_numeric or not _ID_LIKE.search(name):
        num = pd.to_numeric(s, errors="coerce")
        if s.notna().any() and (num.notna() == s.notna()).all():
            return num
    return s


def _parse_adat(path: Path) -> dict:
    from ._textfile import check_is_file, decode_text

    check_is_file(path, "ADAT file")
    text, encoding = decode_text(path.read_bytes(), path.name, "ADAT file")
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines and lines[-1].strip():
        # SomaLogic writes a line break after every row: a last line without one was cut (inside its last value,
        # which may still parse as a number, e.g. 1098.5 -> 109)
        raise _broken(
            "^TABLE_BEGIN",
            len(lines),
            "the last line does not end with a line break: the file was cut inside its last row",
        )
    # drop trailing empty lines only
    while lines and not lines[-1].strip():
        lines.pop()
    pos = {}
    for i, ln in enumerate(lines):
        tag = ln.split("\t", 1)[0].strip()
        if tag in _SECTIONS:
            if tag in pos:
                raise _broken(tag, i + 1, "the section appears twice")
            pos[tag] = i
    missing = [s for s in _SECTIONS if s not in pos]
    if missing:
        raise _broken(missing[0], None, f"section(s) {missing} missing (found {sorted(pos, key=pos.get)})")
    order = [pos[s] for s in _SECTIONS]
    if order != sorted(order):
        raise _broken(
            "sections", None, f"sections out of order: {sorted(pos, key=pos.get)}; expected {list(_SECTIONS)}"
        )

    # ---- ^HEADER
    header: dict[str, str] = {}
    for i in range(pos["^HEADER"] + 1, pos["^COL_DATA"]):
        parts = lines[i].split("\t")
        if not parts[0].strip():
            continue
        key = parts[0].strip().lstrip("!")
        header[key] = "\t".join(p for p in parts[1:]).strip()

    def _name_type(section: str) -> tuple[list[str], list[str] | None]:
        names, types = None, None
        for i in range(pos[section] + 1, pos[_SECTIONS[_SECTIONS.index(section) + 1]]):
            parts = lines[i].split("\t")
            tag = parts[0].strip()
            vals = [p.strip() for p in parts[1:]]
            while vals and not vals[-1]:
                vals.pop()
            if tag == "!Name":
                names = vals
            elif tag == "!Type":
                types = vals
        if not names:
            raise _broken(section, pos[section] + 2, "no '!Name' line")
        if types is not None and len(types) != len(names):
            raise _broken(section, pos[section] + 3, f"{len(names)} names but {len(types)} types")
        return names, types

    col_names, col_types = _name_type("^COL_DATA")
    row_names, row_types = _name_type("^ROW_DATA")
    n_row_meta = len(row_names)

    # ---- ^TABLE_BEGIN: column-metadata block, header row, sample rows
    t0 = pos["^TABLE_BEGIN"] + 1
    if len(lines) < t0 + len(col_names) + 2:
        raise _broken(
            "^TABLE_BEGIN",
            len(lines),
            f"the table ends after {len(lines) - t0} lines; expected "
            f"{len(col_names)} analyte-metadata rows, a header row and at least one sample row",
        )
    col_meta: dict[str, list[str]] = {}
    n_analytes = None
    for k, name in enumerate(col_names):
        ln_no = t0 + k
        parts = lines[ln_no].split("\t")
        label = parts[n_row_meta].strip() if len(parts) > n_row_meta else ""
        if label != name:
            raise _broken(
                "^TABLE_BEGIN",
                ln_no + 1,
                f"expected the analyte-metadata row {name!r} in column "
                f"{n_row_meta + 1} (after {n_row_meta} sample-metadata columns), found {label!r}",
            )
        vals = parts[n_row_meta + 1 :]
        if n_analytes is None:
            while vals and not vals[-1].strip():
                vals.pop()
            n_analytes = len(vals)
            if n_analytes == 0:
                raise _broken("^TABLE_BEGIN", ln_no + 1, f"analyte-metadata row {name!r} has no values")
        else:
            if len(vals) > n_analytes and all(not v.strip() for v in vals[n_analytes:]):
                vals = vals[:n_analytes]
            if len(vals) != n_analytes:
                raise _broken(
                    "^TABLE_BEGIN",
                    ln_no + 1,
                    f"analyte-metadata row {name!r} has {len(vals)} values, "
                    f"expected {n_analytes} (one per analyte, as in row {col_names[0]!r})",
                )
        col_meta[name] = vals
    h = t0 + len(col_names)
    head = [p.strip() for p in lines[h].split("\t")]
    if head[:n_row_meta] != row_names:
        raise _broken(
            "^TABLE_BEGIN",
            h + 1,
            f"the sample-metadata header row should start with {row_names[:4]}..., found {head[:4]}...",
        )
    width = n_row_meta + 1 + n_analytes
    rows = []
    for ln_no in range(h + 1, len(lines)):
        parts = lines[ln_no].split("\t")
        if len(parts) > width and all(not p.strip() for p in parts[width:]):
            parts = parts[:width]
        if len(parts) != width:
            raise _broken(
                "^TABLE_BEGIN",
                ln_no + 1,
                f"sample row {ln_no - h} has {len(parts)} fields, expected "
                f"{width} ({n_row_meta} sample-metadata columns, 1 empty, {n_analytes} analytes): "
                "ragged or truncated row",
            )
        rows.append(parts)
    if not rows:
        raise _broken("^TABLE_BEGIN", h + 1, "no sample rows after the header row")
    arr = np.asarray(rows, dtype=object)
    meta = arr[:, :n_row_meta]
    raw = arr[:, n_row_meta + 1 :]
    try:
        X = raw.astype(float)
    except ValueError:
        flat = pd.to_numeric(pd.Series(raw.ravel()), errors="coerce")
        bad = np.flatnonzero(flat.isna().to_numpy() & (pd.Series(raw.ravel()).str.strip() != "").to_numpy())
        r, c = divmod(int(bad[0]), n_analytes)
        raise _broken(
            "^TABLE_BEGIN",
            h + 2 + r,
            f"non-numeric RFU {raw[r, c]!r} for analyte {col_meta[col_names[0]][c]!r} ({len(bad)} such values)",
        ) from None
    return dict(
        header=header,
        col_names=col_names,
        col_types=col_types,
        row_names=row_names,
        row_types=row_types,
        col_meta=col_meta,
        meta=meta,
        X=X,
        encoding=encoding,
    )


_WELLS_PER_PLATE = 96


def _plate_integrity(obs: pd.DataFrame, header: dict[str, str]) -> tuple[dict, list[str]]:
    """What can be checked of a table's completeness (the ADAT declares no row count): each plate's wells and the
    plates the header names. Returns (summary, problems)."""
    problems: list[str] = []
    summary: dict = {"ends_with_line_break": True}
    if "PlateId" not in obs.columns:
        return summary, problems
    plates = obs["PlateId"].astype(str)
    n_rows = plates.value_counts().reindex(pd.unique(plates))
    summary["rows_per_plate"] = {k: int(v) for k, v in n_rows.items()}
    declared = sorted({k.split("PlateScale_Scalar_", 1)[1] for k in header if k.startswith("PlateScale_Scalar_")})
    summary["plates_in_header"] = declared
    norm = {p.replace(" ", "_"): p for p in n_rows.index}
    absent = [d for d in declared if d not in norm and d not in n_rows.index]
    if absent:
        problems.append(
            f"read_somascan: the ADAT header names plate(s) {absent} that have no row in the table "
            "(a subset of the data, or rows lost at the end of the file)"
        )
    short = {k: int(v) for k, v in n_rows.items() if v < _WELLS_PER_PLATE}
    if short:
        problems.append(
            f"read_somascan: plate(s) with fewer rows than the {_WELLS_PER_PLATE} wells of a SomaScan plate: "
            f"{short}. A partial plate or a subset is possible; so are rows lost at the end of the file "
            "(the ADAT format declares no row count, so this reader cannot tell)"
        )
    summary["complete_plates"] = not short and not absent
    return summary, problems


def read_somascan(path: str | os.PathLike):
    """Read a SomaScan ADAT file into an AnnData of samples x analytes.

    The ADAT is parsed here rather than with SomaLogic's ``somadata`` package: ``somadata`` reads valid files
    correctly (the tests compare both when it is installed), but it silently returns fewer samples for a
    truncated table, fills ragged rows with NaN, fails with an unrelated pandas message when a section is
    missing, and keeps every metadata field as text. This parser checks each section and names the line
    of any problem.

    Parameters
    ----------
    path
        The ``.adat`` file.

    Returns
    -------
    AnnData with
        ``X``
            RFU (float64, linear scale; :func:`immunomood.pp.proteomics_qc` log2-transforms them).
        ``obs``
            the sample metadata (``SampleId``, ``SampleType``, ``PlateId``, ``RowCheck``, ``NormScale_*`` ...),
            numeric where every value is a number (identifiers stay text). Index: ``SampleId``; rows of
            non-sample types (Calibrator, Buffer, QC) whose ``SampleId`` repeats or is empty are named
            ``"<SampleType>_<PlateId>_<PlatePosition>"``.
        ``var``
            all analyte metadata (``SeqId``, ``SeqIdVersion``, ``SomaId``, ``Target``, ``TargetFullName``,
            ``UniProt``, ``EntrezGeneID``, ``EntrezGeneSymbol``, ``Organism``, ``Units``, ``Type``, ``Dilution``,
            ``ColCheck``, calibration columns ...). Index ``"seq.<SeqId with '-' as '.'>"`` (SomaLogic's
            convention, e.g. ``seq.10000.28``).
        ``uns["adat_header"]``
            the ``^HEADER`` entries (keys without the leading ``!``).
        ``uns["adat_col_data"]``, ``uns["adat_row_data"]``
            ``{"Name": [...], "Type": [...]}`` of the ``^COL_DATA`` and ``^ROW_DATA`` sections.
        ``uns["proteomics"]``
            ``{"platform": "somascan", "value": "RFU", "scale": "linear", "source": {...}, "integrity": {...}}``;
            ``integrity`` holds ``rows_per_plate``, ``plates_in_header`` and ``complete_plates``.
        ``uns["immunomood_problems"]``
            (with a warning) when a plate has fewer rows than its 96 wells or a plate named in the header has
            no row: the ADAT format declares no row count, so a file cut at a line boundary can only be
            suspected this way, never proven.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        A folder, an empty, binary or non-UTF-8 file (UTF-8 or UTF-16 with its byte-order mark are read); a
        missing, repeated or malformed section, a ragged or truncated row, a last line without its line break
        (cut inside the last value), non-numeric RFU such as ``"1,234"`` (each naming the section and line), or a
        repeated ``SampleId`` among samples.
    """
    import anndata as ad

    path = Path(path)
    p = _parse_adat(path)
    ctypes = dict(zip(p["col_names"], p["col_types"] or [None] * len(p["col_names"])))
    rtypes = dict(zip(p["row_names"], p["row_types"] or [None] * len(p["row_names"])))
    var = pd.DataFrame({n: _typed(v, n, ctypes[n]).to_numpy() for n, v in p["col_meta"].items()})
    if "SeqId" in var.columns:
        seq = var["SeqId"].astype(str)
        names = "seq." + seq.str.replace("-", ".", regex=False)
        if names.duplicated().any():
            raise ValueError(f"Repeated SeqId in the ADAT: {seq[names.duplicated()].unique()[:5].tolist()}.")
        var.index = pd.Index(names.to_numpy())
    else:
        var.index = pd.Index([f"analyte_{i}" for i in range(len(var))])
    obs = pd.DataFrame(
        {n: _typed(list(p["meta"][:, j]), n, rtypes[n]).to_numpy() for j, n in enumerate(p["row_names"])}
    )
    if "SampleId" in obs.columns:
        sid = obs["SampleId"].astype(object).where(obs["SampleId"].notna(), "").astype(str)
        stype = obs["SampleType"].astype(str) if "SampleType" in obs.columns else pd.Series("Sample", index=obs.index)
        is_sample = stype.str.lower().eq("sample")
        dup = sid.duplicated(keep=False) & (sid != "")
        if (dup & is_sample).any():
            ex = sid[dup & is_sample].unique()[:5].tolist()
            raise ValueError(
                f"Duplicated sample IDs in the ADAT: {ex} appear more than once among rows with SampleType "
                "'Sample'. Give each sample a unique SampleId in the ADAT before reading."
            )
        fix = (dup | (sid == "")) & ~is_sample
        parts = [stype]
        for c in ("PlateId", "PlatePosition"):
            if c in obs.columns:
                parts.append(obs[c].astype(str))
        alt = pd.concat(parts, axis=1).agg("_".join, axis=1)
        names = sid.where(~fix, alt)
        if names.duplicated().any() or (names == "").any():
            names = names.where(
                ~(names.duplicated(keep=False) | (names == "")),
                names + "_row" + pd.Series(np.arange(len(names)).astype(str)),
            )
        obs.index = pd.Index(names.to_numpy())
    else:
        obs.index = pd.Index([f"sample_{i}" for i in range(len(obs))])
    adata = ad.AnnData(X=p["X"], obs=h5_safe(obs), var=h5_safe(var))
    adata.uns["adat_header"] = dict(p["header"])
    adata.uns["adat_col_data"] = {"Name": list(p["col_names"]), "Type": list(p["col_types"] or [])}
    adata.uns["adat_row_data"] = {"Name": list(p["row_names"]), "Type": list(p["row_types"] or [])}
    integrity, problems = _plate_integrity(obs, p["header"])
    adata.uns["proteomics"] = {
        "platform": "somascan",
        "value": "RFU",
        "scale": "linear",
        "source": {"file": str(path), "format": "adat", "encoding": p["encoding"]},
        "integrity": integrity,
    }
    from .._utils import record_problem

    for msg in problems:
        record_problem(adata, msg)
    logger.info("read_somascan: %d samples x %d analytes from %s", adata.n_obs, adata.n_vars, path.name)
    return adata
