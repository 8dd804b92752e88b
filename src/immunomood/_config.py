"""Configuration of ``immunomood run``: TOML schema, defaults, validation before any work."""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = ("load", "qc", "integrate", "annotate", "score", "differential", "proteomics", "report")

# section -> key -> (default, type(s), help). `None` default means optional.
SCHEMA: dict[str, dict[str, tuple[Any, tuple[type, ...], str]]] = {
    "input": {
        "h5ad": (None, (str,), "One .h5ad with all cells (raw counts in X or in the layer `counts_layer`). "
                 "Either this or `sample_sheet`."),
        "sample_sheet": (None, (str,), "CSV with one row per sample: a `path` column (10x folder, 10x .h5 or "
                         ".h5ad of that sample), the `sample_key` column and donor-level metadata columns."),
        "counts_layer": (None, (str,), "Layer of the input .h5ad holding raw counts (default: X)."),
        "gene_symbols": (None, (str,), "var column with gene symbols when var_names are Ensembl IDs."),
        "sample_key": ("donor", (str,), "obs column / sample-sheet column that identifies the donor (sample)."),
        "condition_key": ("condition", (str,), "Donor-level condition column (e.g. control / MDD)."),
        "reference": (None, (str,), "Reference condition level (default: the first category)."),
        "batch_key": (None, (str,), "Batch column (sequencing run, site); integration uses it."),
        "covariates": ([], (list,), "Donor-level covariates of the differential models (e.g. ['sex', 'age'])."),
    },
    "qc": {
        "nmads": (5.0, (int, float), "MADs (median absolute deviation, unscaled) for counts/genes/top-20 outliers."),
        "mt_nmads": (3.0, (int, float), "MADs for the mitochondrial share."),
        "max_pct_mt": (None, (int, float), "Hard upper limit of pct_counts_mt (optional)."),
        "doublets": (True, (bool,), "Score doublets per sample (scrublet) and remove predicted doublets."),
        "min_cells_per_sample": (20, (int,), "Samples left with fewer cells are flagged in the QC report."),
        "n_top_genes": (2000, (int,), "Highly variable genes (seurat_v3 on counts, batch-aware)."),
    },
    "integrate": {
        "enabled": (True, (bool,), "Run scVI integration (needs `batch_key`); otherwise PCA is used."),
        "n_latent": (10, (int,), "Latent dimensions of scVI."),
        "max_epochs": (None, (int,), "Epochs (default: chosen from the data size, with early stopping)."),
        "accelerator": ("auto", (str,), "'auto', 'cpu' or 'gpu'."),
        "devices": ("auto", (str, int), "Lightning devices ('auto', a count, ...); several GPUs train with DDP."),
    },
    "annotate": {
        "markers": ("blood", (str,), "Marker resource."),
        "min_confidence": (0.5, (int, float), "Below this confidence a cell is 'Unassigned'."),
        "resolution": (1.0, (int, float), "Leiden resolution of the clustering used for smoothing."),
    },
    "score": {
        "gene_sets": (["complement", "kynurenine", "interferon_alpha", "inflammatory"], (list,),
                      "Gene-set resources scored per cell and tested per donor x cell type."),
    },
    "differential": {
        "groupby": ("cell_type", (str,), "Cell-type column to test within."),
        "min_cells": (10, (int,), "Minimum cells per donor x cell type for a pseudobulk."),
        "expression": (False, (bool,), "Also run pseudobulk DESeq2 per cell type (slower)."),
    },
    "proteomics": {
        "path": (None, (str,), "Olink NPX export (.csv/.csv.gz/.zip/.parquet), SomaScan .adat or .h5ad "
                 "(donors x proteins). Optional."),
        "platform": ("auto", (str,), "'auto', 'olink', 'somascan' or 'h5ad'."),
        "sample_key": (None, (str,), "obs column of the proteomics holding the donor ID (default: the index)."),
        "max_below_lod": (0.5, (int, float), "Assays with a larger share below LOD are removed."),
        "association_method": ("spearman", (str,), "'spearman' or 'pearson'."),
        "biomarker_repeats": (20, (int,), "Repeats of the stratified cross-validation of the biomarker panel."),
    },
    "output": {
        "outdir": ("immunomood_out", (str,), "Folder for checkpoints, report and log (relative to the config)."),
        "random_state": (0, (int,), "Seed used by every stochastic step."),
    },
}

# which sections each stage depends on (its own and all earlier stages' are hashed)
STAGE_SECTIONS = {
    "load": ("input",),
    "qc": ("qc",),
    "integrate": ("integrate",),
    "annotate": ("annotate",),
    "score": ("score",),
    "differential": ("differential",),
    "proteomics": ("proteomics",),
    "report": (),
}


class ConfigError(ValueError):
    """A bad configuration: raised before any work is done."""


@dataclass
class Config:
    data: dict[str, dict[str, Any]]
    path: Path | None

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.data[section]

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def resolve(self, p: str | None) -> Path | None:
        if p is None:
            return None
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.base_dir / q)

    @property
    def outdir(self) -> Path:
        return self.resolve(self.data["output"]["outdir"])  # type: ignore[return-value]

    def stage_hash(self, stage: str) -> str:
        """Hash of every config section that the stage (and the stages before it) depend on."""
        idx = STAGES.index(stage)
        relevant = {}
        for s in STAGES[: idx + 1]:
            for sec in STAGE_SECTIONS[s]:
                relevant[sec] = self.data[sec]
        relevant["output.random_state"] = self.data["output"]["random_state"]
        blob = json.dumps(relevant, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def defaults() -> dict[str, dict[str, Any]]:
    return {sec: {k: copy.deepcopy(v[0]) for k, v in keys.items()} for sec, keys in SCHEMA.items()}


def parse_config(raw: dict[str, Any], path: Path | None = None) -> Config:
    """Validate a config mapping against :data:`SCHEMA` (unknown keys, types) and fill defaults."""
    problems: list[str] = []
    data = defaults()
    for sec, values in raw.items():
        if sec not in SCHEMA:
            problems.append(f"unknown section [{sec}] (known: {', '.join(SCHEMA)})")
            continue
        if not isinstance(values, dict):
            problems.append(f"[{sec}] must be a table of keys")
            continue
        for key, val in values.items():
            if key not in SCHEMA[sec]:
                problems.append(f"unknown key {key!r} in [{sec}] (known: {', '.join(SCHEMA[sec])})")
                continue
            types = SCHEMA[sec][key][1]
            if isinstance(val, bool) and bool not in types:
                problems.append(f"[{sec}] {key} must be {'/'.join(t.__name__ for t in types)}, got a boolean")
                continue
            if not isinstance(val, types):
                problems.append(
                    f"[{sec}] {key} must be {'/'.join(t.__name__ for t in types)}, got {type(val).__name__} {val!r}"
                )
                continue
            data[sec][key] = val
    inp = data["input"]
    if (inp["h5ad"] is None) == (inp["sample_sheet"] is None):
        problems.append("[input] needs exactly one of `h5ad` or `sample_sheet`")
    if data["proteomics"]["platform"] not in ("auto", "olink", "somascan", "h5ad"):
        problems.append("[proteomics] platform must be 'auto', 'olink', 'somascan' or 'h5ad'")
    if data["proteomics"]["association_method"] not in ("spearman", "pearson"):
        problems.append("[proteomics] association_method must be 'spearman' or 'pearson'")
    if problems:
        where = f" in {path}" if path else ""
        raise ConfigError("Invalid configuration" + where + ":\n  - " + "\n  - ".join(problems))
    return Config(data, path)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Config file {path} is not valid TOML: {e}") from e
    return parse_config(raw, path.resolve())


def describe_keys() -> str:
    """Text documenting every key (used by ``immunomood run --help``)."""
    lines = ["Configuration keys (TOML), with defaults:"]
    for sec, keys in SCHEMA.items():
        lines.append(f"\n[{sec}]")
        for k, (default, types, text) in keys.items():
            d = "(optional, no default)" if default is None else f"= {json.dumps(default)}"
            lines.append(f"  {k} {d}\n      {text}")
    return "\n".join(lines)
