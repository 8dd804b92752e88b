"""Dataset manifests: one YAML per dataset, validated against a small schema.

The packaged copies live in ``immunomood/resources/manifests/``; the repository's top-level
``data_manifests/`` holds the same files (a test keeps the two folders identical).

The validator is hand-written rather than a JSON Schema: the schema is small, the package then needs no
``jsonschema`` dependency, and every error can name the manifest *and* the exact field (``files[2].sha256``)
with what was received and what is expected.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["read_manifest", "validate_manifest"]

SCHEMA_VERSION = 1

#: readers that turn a dataset's main files into an AnnData (see ``_loaders.py``)
READERS = frozenset({"10x_mtx", "mtx", "h5ad", "olink_csv", "olink_parquet", "somascan_adat"})
#: readers for extra per-file annotations applied after the main read
ANNOTATION_READERS = frozenset({"seurat_labels_csv"})
MODALITIES = frozenset({"scRNA-seq", "snRNA-seq", "CITE-seq", "proteomics"})
DOWNLOAD_MODES = frozenset({"auto", "manual"})
COLUMN_ROLES_REQUIRED = ("donor", "condition", "cell_type")
COLUMN_ROLES_OPTIONAL = ("sample",)

_REQUIRED = (
    "schema_version",
    "id",
    "title",
    "citation",
    "accession",
    "modality",
    "organism",
    "licence",
    "reader",
    "download",
    "instructions",
    "files",
    "columns",
    "notes",
)
_FILE_KEYS_REQUIRED = ("path", "url", "sha256", "size")
_FILE_KEYS_OPTIONAL = ("archive", "reader", "key_added")
_ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_DOI_RE = re.compile(r"^10\.\d{4,9}/\S+$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_URL_RE = re.compile(r"^(https?|ftp)://\S+$")


def manifest_dir() -> Path:
    """Folder of the packaged manifests (``immunomood/resources/manifests``)."""
    return Path(__file__).resolve().parents[1] / "resources" / "manifests"


def manifest_paths() -> dict[str, Path]:
    return {p.stem: p for p in sorted(manifest_dir().glob("*.yaml"))}


class _Checker:
    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, field: str, problem: str) -> None:
        raise ValueError(f"Manifest {self.label}: field '{field}' {problem}")

    def string(
        self, value: Any, field: str, *, nonempty: bool = True, pattern: re.Pattern | None = None, expected: str = ""
    ) -> None:
        if not isinstance(value, str):
            self.fail(field, f"must be a string, got {type(value).__name__} {value!r}.")
        if nonempty and not value.strip():
            self.fail(field, "must be a non-empty string, got ''.")
        if pattern is not None and not pattern.match(value):
            self.fail(field, f"must be {expected}, got {value!r}.")

    def choice(self, value: Any, field: str, allowed: frozenset[str]) -> None:
        if value not in allowed:
            self.fail(field, f"must be one of {sorted(allowed)}, got {value!r}.")

    def mapping(self, value: Any, field: str) -> None:
        if not isinstance(value, Mapping):
            self.fail(field, f"must be a mapping, got {type(value).__name__} {value!r}.")

    def keys(self, value: Mapping, field: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
        for k in required:
            if k not in value:
                self.fail(f"{field}.{k}" if field else k, f"is missing (required fields: {list(required)}).")
        unknown = sorted(set(value) - set(required) - set(optional))
        if unknown:
            where = f"{field}.{unknown[0]}" if field else unknown[0]
            self.fail(
                where, f"is not a known field (allowed: {sorted(set(required) | set(optional))}); check the spelling."
            )


def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        raise ValueError(f"Manifest {path} is not valid YAML: {e}") from e
    if not isinstance(data, Mapping):
        raise ValueError(f"Manifest {path}: expected a YAML mapping at the top level, got {type(data).__name__}.")
    return dict(data)


def validate_manifest(manifest: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Check a dataset manifest against the schema.

    Parameters
    ----------
    manifest
        The manifest as a mapping (e.g. parsed YAML) or the path of a YAML file.

    Returns
    -------
    A validated deep copy of the manifest as a ``dict``.

    Raises
    ------
    ValueError
        Naming the manifest and the offending field (e.g. ``files[0].sha256``), what was received and what
        is expected. Required fields: ``schema_version``, ``id``, ``title``, ``citation`` (``text``, ``doi``),
        ``accession``, ``modality``, ``organism``, ``licence``, ``reader``, ``download`` (``"auto"`` or
        ``"manual"``), ``instructions``, ``files`` (each: relative ``path``, ``url`` or null, optional
        ``archive`` with ``url`` and ``member``, ``sha256``, ``size`` in bytes, optional annotation ``reader``
        and ``key_added``), ``columns`` (``donor``, ``condition``, ``cell_type``, optional ``sample``: an obs
        column name or null) and ``notes`` (list of strings).
    """
    source: Path | None = None
    if isinstance(manifest, (str, os.PathLike)):
        source = Path(manifest)
        if not source.is_file():
            raise FileNotFoundError(f"Manifest file {source} does not exist.")
        data = _load_yaml(source)
    elif isinstance(manifest, Mapping):
        data = copy.deepcopy(dict(manifest))
    else:
        raise TypeError(f"validate_manifest expects a mapping or a path to a YAML file, got {type(manifest).__name__}.")

    ident = data.get("id")
    label = repr(ident) if isinstance(ident, str) else "<no id>"
    if source is not None:
        label += f" ({source})"
    c = _Checker(label)
    c.keys(data, "", _REQUIRED)

    if (
        not isinstance(data["schema_version"], int)
        or isinstance(data["schema_version"], bool)
        or data["schema_version"] != SCHEMA_VERSION
    ):
        c.fail("schema_version", f"must be {SCHEMA_VERSION}, got {data['schema_version']!r}.")
    c.string(data["id"], "id", pattern=_ID_RE, expected="lower-case letters, digits and '_' (e.g. 'pbmc3k')")
    if source is not None and source.stem != data["id"]:
        c.fail("id", f"must match the file name {source.stem!r}, got {data['id']!r}.")
    for key in ("title", "accession", "organism", "licence", "instructions"):
        c.string(data[key], key)
    c.mapping(data["citation"], "citation")
    c.keys(data["citation"], "citation", ("text", "doi"))
    c.string(data["citation"]["text"], "citation.text")
    c.string(
        data["citation"]["doi"],
        "citation.doi",
        pattern=_DOI_RE,
        expected="a bare DOI such as '10.1038/nbt.4042' (no 'https://doi.org/')",
    )
    c.choice(data["modality"], "modality", MODALITIES)
    c.choice(data["reader"], "reader", READERS)
    c.choice(data["download"], "download", DOWNLOAD_MODES)

    files = data["files"]
    if not isinstance(files, list):
        c.fail("files", f"must be a list (use [] for a manual-only dataset), got {type(files).__name__}.")
    seen: set[str] = set()
    for i, f in enumerate(files):
        fld = f"files[{i}]"
        c.mapping(f, fld)
        c.keys(f, fld, _FILE_KEYS_REQUIRED, _FILE_KEYS_OPTIONAL)
        c.string(f["path"], f"{fld}.path")
        p = PurePosixPath(f["path"])
        if p.is_absolute() or ".." in p.parts or "\\" in f["path"]:
            c.fail(f"{fld}.path", f"must be a relative POSIX path inside the data folder, got {f['path']!r}.")
        if f["path"] in seen:
            c.fail(f"{fld}.path", f"is listed twice: {f['path']!r}.")
        seen.add(f["path"])
        if f["url"] is not None:
            c.string(f["url"], f"{fld}.url", pattern=_URL_RE, expected="an http(s)/ftp URL or null")
        if "archive" in f:
            c.mapping(f["archive"], f"{fld}.archive")
            c.keys(f["archive"], f"{fld}.archive", ("url", "member"))
            c.string(f["archive"]["url"], f"{fld}.archive.url", pattern=_URL_RE, expected="an http(s)/ftp URL")
            c.string(f["archive"]["member"], f"{fld}.archive.member")
        c.string(f["sha256"], f"{fld}.sha256", pattern=_SHA_RE, expected="64 lower-case hex characters")
        if not isinstance(f["size"], int) or isinstance(f["size"], bool) or f["size"] < 0:
            c.fail(f"{fld}.size", f"must be a non-negative integer (bytes), got {f['size']!r}.")
        if "reader" in f:
            c.choice(f["reader"], f"{fld}.reader", ANNOTATION_READERS)
            if "key_added" not in f:
                c.fail(f"{fld}.key_added", "is missing: an annotation file needs the obs column it writes.")
        if "key_added" in f:
            c.string(f["key_added"], f"{fld}.key_added")
    if data["download"] == "auto" and not any(f["url"] or f.get("archive") for f in files):
        c.fail("download", "is 'auto' but no file has a 'url' or an 'archive': use 'manual'.")
    if not files and data["download"] != "manual":
        c.fail("download", "must be 'manual' when 'files' is empty.")
    if files and not any("reader" not in f for f in files):
        c.fail("files", "has only annotation files: at least one file must be read by the dataset's 'reader'.")

    cols = data["columns"]
    c.mapping(cols, "columns")
    c.keys(cols, "columns", COLUMN_ROLES_REQUIRED, COLUMN_ROLES_OPTIONAL)
    for role, col in cols.items():
        if col is not None:
            c.string(col, f"columns.{role}")

    if not isinstance(data["notes"], list):
        c.fail("notes", f"must be a list of strings, got {type(data['notes']).__name__}.")
    for i, n in enumerate(data["notes"]):
        c.string(n, f"notes[{i}]")
    return data


def read_manifest(name: str | os.PathLike) -> dict[str, Any]:
    """Read and validate the manifest of a dataset.

    Parameters
    ----------
    name
        A dataset id (see :func:`immunomood.datasets.list_datasets`) or the path of a manifest YAML file.

    Returns
    -------
    The validated manifest as a ``dict``.
    """
    if isinstance(name, os.PathLike) or (isinstance(name, str) and name.endswith((".yaml", ".yml"))):
        return validate_manifest(Path(name))
    if not isinstance(name, str):
        raise TypeError(f"name must be a dataset id or a path, got {type(name).__name__}.")
    paths = manifest_paths()
    if name not in paths:
        raise ValueError(f"Unknown dataset {name!r}. Known datasets: {sorted(paths)}.")
    return validate_manifest(paths[name])
