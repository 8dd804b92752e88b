"""Configuration of ``immunomood run``: TOML schema, defaults, validation before any work."""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = ("load", "qc", "integrate", "annotate", "score", "differential", "proteomics", "predict", "report")

# section -> key -> (default, type(s), help). `None` default means optional.
SCHEMA: dict[str, dict[str, tuple[Any, tuple[type, ...], str]]] = {
    "input": {
        "h5ad": (
            None,
            (str,),
            (
                "One .h5ad with all cells (raw counts in X or in the layer `counts_layer`). "
                "Either this or `sample_sheet`."
            ),
        ),
        "sample_sheet": (
            None,
            (str,),
            (
                "CSV with one row per sample: a `path` column (10x folder, 10x .h5 or "
                ".h5ad of that sample), the `sample_key` column and donor-level metadata columns."
            ),
        ),
        "counts_layer": (None, (str,), "Layer of the input .h5ad holding raw counts (default: X)."),
        "gene_symbols": (None, (str,), "var column with gene symbols when var_names are Ensembl IDs."),
        "sample_key": ("donor", (str,), "obs column / sample-sheet column that identifies the donor (sample)."),
        "condition_key": ("condition", (str,), "Donor-level condition column (e.g. control / MDD)."),
        "reference": (None, (str,), "Reference condition level (default: the first category)."),
        "batch_key": (None, (str,), "Batch column (sequencing run, site); integration uses it."),
        "covariates": (
            [],
            (list,),
            (
                "Donor-level covariates of the differential models (e.g. ['sex', 'age']). "
                "With [differential] design, write them in the formula instead."
            ),
        ),
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
        "min_confidence": (0.5, (int, float), "Below this confidence a cell is 'Unassigned' (0-1)."),
    },
    "score": {
        "gene_sets": (
            ["complement", "kynurenine", "interferon_alpha", "inflammatory"],
            (list,),
            "Gene-set resources scored per cell and tested per donor x cell type.",
        ),
    },
    "differential": {
        "groupby": ("cell_type", (str,), "Cell-type column to test within."),
        "min_cells": (10, (int,), "Minimum cells per donor x cell type for a pseudobulk."),
        "expression": (False, (bool,), "Also run pseudobulk DESeq2 per cell type (slower)."),
        "design": (
            None,
            (str,),
            (
                "Study design as a formula on sample-level columns, e.g. '~ condition + age + sex' "
                "or '~ severity + age' (formulaic, R syntax; first level of a factor = reference). Drives "
                "differential_activity, composition and differential_expression; cross_modal_associations are "
                "partial on its untested columns. "
                "Without it: '~ condition_key + covariates', case vs reference."
            ),
        ),
        "contrasts": (
            [],
            (list,),
            (
                "With design: level contrasts [column, case, reference], e.g. "
                "[['condition', 'MDD', 'control'], ['condition', 'BD', 'control']]; one table, BH over all. "
                "Empty (and no tests): every pair of levels of the formula's first column."
            ),
        ),
        "tests": (
            [],
            (list,),
            (
                "With design: continuous columns (effect per unit, with its CI), e.g. ['severity'], "
                "or one-column interactions 'a:b' (e.g. 'visit:responder') to test."
            ),
        ),
        "random_effect": (
            None,
            (str,),
            (
                "Column grouping the samples of one donor (visits, pools, pairs): a random "
                "intercept per donor, between-within df. Then [input] sample_key is the sample "
                "(donor x visit) column."
            ),
        ),
    },
    "proteomics": {
        "path": (
            None,
            (str,),
            ("Olink NPX export (.csv/.csv.gz/.zip/.parquet), SomaScan .adat or .h5ad (donors x proteins). Optional."),
        ),
        "platform": ("auto", (str,), "'auto', 'olink', 'somascan' or 'h5ad'."),
        "sample_key": (None, (str,), "obs column of the proteomics holding the donor ID (default: the index)."),
        "max_below_lod": (0.5, (int, float), "Assays with a larger share below LOD are removed."),
        "association_method": ("spearman", (str,), "'spearman' or 'pearson'."),
        "biomarker_repeats": (20, (int,), "Repeats of the stratified cross-validation of the biomarker panel."),
    },
    "predict": {
        "outcome": (
            "",
            (str,),
            (
                "Donor-level outcome to predict from baseline features (e.g. 'responder', or a "
                "change score); empty: the predict stage does nothing."
            ),
        ),
        "features": (
            [],
            (list,),
            (
                "Feature kinds or names: 'proportion' and/or 'gene_set' (cell types' shares and "
                "donor-level pathway scores of the cells); with [proteomics] path the prediction uses the joined "
                "donors x (cells, plasma) data: modality names ('rna', 'prot') or feature names. Empty: all."
            ),
        ),
        "baseline": (
            None,
            (str, dict),
            (
                "Rows (samples) to predict from: 'column=value' (e.g. 'visit=baseline') or "
                "a table {visit = 'baseline'}; each donor must appear once among them. Empty: every row."
            ),
        ),
        "exclude_values": (
            [],
            (list,),
            ("Outcome values treated as missing (left out), e.g. ['control'] when controls have no response."),
        ),
        "donor_key": (None, (str,), "Column identifying the donor (default: 'donor' when present)."),
        "outcome_type": ("auto", (str,), "'auto', 'binary' or 'continuous'."),
        "positive": (None, (str, int), "Positive class of a binary outcome (default: the second level)."),
        "model": ("ridge", (str,), "'ridge', 'l1' or 'elasticnet' (penalty chosen by an inner CV)."),
        "n_splits": (5, (int,), "Outer cross-validation folds (by donor)."),
        "n_repeats": (5, (int,), "Repeats of the outer cross-validation."),
        "max_features": (10, (int,), "Features kept by the univariate filter inside each training fold."),
        "n_permutations": (
            200,
            (int,),
            (
                "Permutations of the outcome for the p-value of the AUC / R^2 (each reruns "
                "the nested CV); 0 skips the test."
            ),
        ),
        "n_bins": (5, (int,), "Bins of the calibration table (binary outcome)."),
    },
    "compute": {
        "n_jobs": (
            1,
            (int,),
            (
                "Worker threads for parallel steps: sets im.settings.n_jobs (-1: all cores). When "
                "absent, im.settings.n_jobs is left as it is (1, or the value of `--n-jobs`)."
            ),
        ),
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
    "predict": ("predict",),
    "report": (),
}


class ConfigError(ValueError):
    """A bad configuration: raised before any work is done."""


#: keys that were in the schema once, with what to do about them (an old config gets this instead of "unknown key")
REMOVED_KEYS: dict[tuple[str, str], str] = {
    ("annotate", "resolution"): "[annotate] resolution was accepted and ignored by earlier versions (im.tl.annotate "
    "has no resolution parameter: its clustering is chosen from the data). Remove the "
    "line; results do not change.",
}

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PREDICT_MODELS = ("ridge", "l1", "elasticnet")
OUTCOME_TYPES = ("auto", "binary", "continuous")


def _known_markers() -> list[str]:
    from importlib import resources

    base = resources.files("immunomood").joinpath("resources", "markers")
    return sorted(p.name[:-5] for p in base.iterdir() if p.name.endswith(".json"))


def _suggest(value: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _num(val: Any) -> bool:
    return isinstance(val, (int, float)) and not isinstance(val, bool)


def _range(
    sec: str,
    key: str,
    val: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    integer: bool = False,
    extra: tuple = (),
    fix: str = "",
) -> str | None:
    """A problem with a number of the config ("[sec] key must be ..., got ... . fix"), or None."""
    if val is None or not _num(val) or val in extra:
        return None
    import math

    from ._utils import _range_text

    expected = ("an integer " if integer else "a number ") + _range_text(lo, hi, min_inclusive=not lo_open)
    if extra:
        expected += f" (or {', '.join(map(str, extra))})"
    bad = (
        not math.isfinite(val)
        or (lo is not None and (val <= lo if lo_open else val < lo))
        or (hi is not None and val > hi)
    )
    if bad:
        return f"[{sec}] {key} must be {expected}, got {val!r}.{(' ' + fix) if fix else ''}"
    return None


def _check_values(data: dict[str, dict[str, Any]]) -> list[str]:
    """Ranges and choices of every key (types are checked already)."""
    q, ig, an, pr, d = data["qc"], data["integrate"], data["annotate"], data["proteomics"], data["differential"]
    out = [
        _range("qc", "nmads", q["nmads"], 0, lo_open=True, fix="Typical values are 3 to 5."),
        _range("qc", "mt_nmads", q["mt_nmads"], 0, lo_open=True, fix="Typical values are 3 to 5."),
        _range("qc", "max_pct_mt", q["max_pct_mt"], 0, 100, fix="It is a percentage (e.g. 20); omit it for no limit."),
        _range("qc", "min_cells_per_sample", q["min_cells_per_sample"], 0, integer=True),
        _range("qc", "n_top_genes", q["n_top_genes"], 1, integer=True, fix="Usually 2000."),
        _range("integrate", "n_latent", ig["n_latent"], 1, integer=True, fix="Usually 10-30."),
        _range("integrate", "max_epochs", ig["max_epochs"], 1, integer=True, fix="Omit it for the size-based default."),
        _range("integrate", "devices", ig["devices"], 1, integer=True, extra=(-1,)),
        _range("annotate", "min_confidence", an["min_confidence"], 0, 1),
        _range("differential", "min_cells", d["min_cells"], 1, integer=True, fix="Usually 10."),
        _range("proteomics", "max_below_lod", pr["max_below_lod"], 0, 1, fix="It is a share (e.g. 0.5)."),
        _range("proteomics", "biomarker_repeats", pr["biomarker_repeats"], 1, integer=True, fix="Usually 10-50."),
        _range(
            "compute", "n_jobs", data["compute"]["n_jobs"], 1, integer=True, extra=(-1,), fix="Use -1 for all cores."
        ),
        _range("output", "random_state", data["output"]["random_state"], 0, 2**32 - 1, integer=True),
    ]
    if ig["accelerator"] not in ACCELERATORS:
        out.append(f"[integrate] accelerator must be one of {list(ACCELERATORS)}, got {ig['accelerator']!r}.")
    if (
        isinstance(ig["devices"], str)
        and ig["devices"] != "auto"
        and not all(x.strip().isdigit() for x in ig["devices"].split(","))
    ):
        out.append(
            f"[integrate] devices must be 'auto', a count or a list of GPU ids such as '0,1', got {ig['devices']!r}."
        )
    markers = _known_markers()
    if an["markers"] not in markers:
        out.append(
            f"[annotate] markers must be one of the packaged marker resources {markers}, got "
            f"{an['markers']!r}.{_suggest(an['markers'], markers)}"
        )
    from .tl._gene_sets import known_gene_sets

    known = known_gene_sets()
    gs = data["score"]["gene_sets"]
    if not gs:
        out.append(f"[score] gene_sets must name at least one gene-set collection ({known}), got [].")
    for g in gs:
        if not isinstance(g, str) or g not in known:
            out.append(
                f"[score] gene_sets: {g!r} is not a known gene-set collection.{_suggest(str(g), known)} Known: {known}."
            )
    for sec, key in (("input", "covariates"),):
        bad = [c for c in data[sec][key] if not isinstance(c, str)]
        if bad:
            out.append(f"[{sec}] {key} must be a list of column names (strings), got {data[sec][key]!r}.")
    if not d["groupby"]:
        out.append("[differential] groupby must name a column, got ''.")
    out += _check_design(data)
    out += _check_predict(data)
    return [p for p in out if p]


def _check_design(data: dict[str, dict[str, Any]]) -> list[str]:
    """The design keys of [differential], on their own (columns are checked against the input later)."""
    d, inp = data["differential"], data["input"]
    out: list[str] = []
    for i, c in enumerate(d["contrasts"]):
        if not (
            isinstance(c, list)
            and len(c) == 3
            and all(isinstance(x, (str, int, float)) for x in c)
            and isinstance(c[0], str)
        ):
            out.append(
                f"[differential] contrasts[{i}] must be [column, case, reference], e.g. "
                f"['condition', 'MDD', 'control'], got {c!r}."
            )
    for t in d["tests"]:
        if not isinstance(t, str) or not t.strip():
            out.append(
                f"[differential] tests must be a list of column names or interactions 'a:b', got {d['tests']!r}."
            )
            break
    if d["random_effect"] is not None and not d["random_effect"].strip():
        out.append("[differential] random_effect must name a column, got ''. Omit it for no random effect.")
    if d["design"] is None:
        if d["contrasts"] or d["tests"]:
            out.append(
                "[differential] contrasts and tests need a design formula: add e.g. "
                f'design = "~ {inp["condition_key"]}" (with the covariates in it).'
            )
        return out
    if inp["covariates"]:
        out.append(
            f"[input] covariates = {inp['covariates']!r} and [differential] design are both set: write the "
            f'covariates in the formula (e.g. design = "{d["design"].strip()} + '
            f'{" + ".join(map(str, inp["covariates"]))}") and remove covariates.'
        )
    from ._design import formula_variables

    try:
        variables = formula_variables(d["design"]) if "~" in d["design"] else None
    except ValueError as e:
        return out + [f"[differential] design: {_plain(str(e))}"]
    if variables is None:
        return out + [f"[differential] design must be a formula such as '~ condition + age', got {d['design']!r}."]
    for i, c in enumerate(d["contrasts"]):
        if isinstance(c, list) and c and isinstance(c[0], str) and c[0] not in variables:
            out.append(
                f"[differential] contrasts[{i}]: {c[0]!r} is not in design {d['design']!r}.{_suggest(c[0], variables)}"
            )
    for t in d["tests"]:
        for part in str(t).split(":") if isinstance(t, str) else []:
            if part.strip() not in variables:
                out.append(
                    f"[differential] tests: {part.strip()!r} is not in design {d['design']!r}."
                    f"{_suggest(part.strip(), variables)}"
                )
    if d["random_effect"] and d["random_effect"] in variables:
        out.append(
            f"[differential] random_effect {d['random_effect']!r} is also in the design formula; keep it in "
            "one place (random_effect for a random intercept, the formula for a fixed effect)."
        )
    return out


def _plain(msg: str) -> str:
    """A message on one line without terminal colour codes (formulaic's parser colours the bad token)."""
    import re

    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", msg).split())


def parse_baseline(value: Any) -> dict[str, str] | None:
    """``[predict] baseline`` ('column=value' or a one-entry table) as ``{column: value}``; None when unset."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, dict):
        if len(value) != 1:
            raise ValueError(
                f"[predict] baseline as a table must have exactly one entry {{column = value}}, got {value!r}."
            )
        return {str(k): v for k, v in value.items()}
    if "=" not in value:
        raise ValueError(
            f"[predict] baseline must be 'column=value' (e.g. 'visit=baseline') or a table "
            f"{{visit = 'baseline'}}, got {value!r}."
        )
    col, val = value.split("=", 1)
    if not col.strip() or not val.strip():
        raise ValueError(f"[predict] baseline must be 'column=value' with both parts, got {value!r}.")
    return {col.strip(): val.strip()}


def _check_predict(data: dict[str, dict[str, Any]]) -> list[str]:
    p = data["predict"]
    out = [
        _range("predict", "n_splits", p["n_splits"], 2, integer=True, fix="Usually 5."),
        _range("predict", "n_repeats", p["n_repeats"], 1, integer=True, fix="Usually 5-20."),
        _range("predict", "max_features", p["max_features"], 1, integer=True, fix="Usually 5-20."),
        _range(
            "predict",
            "n_permutations",
            p["n_permutations"],
            0,
            integer=True,
            fix="Usually 200-1000 (0 skips the test).",
        ),
        _range("predict", "n_bins", p["n_bins"], 2, integer=True, fix="Usually 5."),
    ]
    if p["model"] not in PREDICT_MODELS:
        out.append(
            f"[predict] model must be one of {list(PREDICT_MODELS)}, got {p['model']!r}."
            f"{_suggest(str(p['model']), list(PREDICT_MODELS))}"
        )
    if p["outcome_type"] not in OUTCOME_TYPES:
        out.append(
            f"[predict] outcome_type must be one of {list(OUTCOME_TYPES)}, got {p['outcome_type']!r}."
            f"{_suggest(str(p['outcome_type']), list(OUTCOME_TYPES))}"
        )
    if any(not isinstance(f, str) or not f for f in p["features"]):
        out.append(f"[predict] features must be a list of feature kinds or names (strings), got {p['features']!r}.")
    if any(not isinstance(v, (str, int, float)) or isinstance(v, bool) for v in p["exclude_values"]):
        out.append(f"[predict] exclude_values must be a list of outcome values, got {p['exclude_values']!r}.")
    try:
        parse_baseline(p["baseline"])
    except ValueError as e:
        out.append(str(e))
    return out


def design_kwargs(cfg: Config) -> dict[str, Any]:
    """The design arguments shared by every donor-level test (``design`` / ``contrast`` / ``test`` /
    ``random_effect``, or the two-group form ``condition_key`` / ``reference`` / ``covariates``)."""
    d, inp = cfg["differential"], cfg["input"]
    if d["design"] is None:
        return {
            "condition_key": inp["condition_key"],
            "reference": inp["reference"],
            "covariates": tuple(inp["covariates"]),
            "random_effect": d["random_effect"],
        }
    return {
        "design": d["design"].strip(),
        "contrast": [tuple(c) for c in d["contrasts"]] or None,
        "test": list(d["tests"]) or None,
        "random_effect": d["random_effect"],
    }


@dataclass
class Config:
    data: dict[str, dict[str, Any]]
    path: Path | None
    #: (section, key) pairs the config file set itself (the others hold defaults)
    explicit: frozenset[tuple[str, str]] = frozenset()

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
            if (sec, key) in REMOVED_KEYS:
                problems.append(REMOVED_KEYS[(sec, key)])
                continue
            if key not in SCHEMA[sec]:
                problems.append(
                    f"unknown key {key!r} in [{sec}] (known: {', '.join(SCHEMA[sec])})"
                    f"{_suggest(str(key), list(SCHEMA[sec]))}"
                )
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
        problems.append(
            "[proteomics] platform must be 'auto', 'olink', 'somascan' or 'h5ad', got "
            f"{data['proteomics']['platform']!r}"
        )
    if data["proteomics"]["association_method"] not in ("spearman", "pearson"):
        problems.append(
            "[proteomics] association_method must be 'spearman' or 'pearson', got "
            f"{data['proteomics']['association_method']!r}"
        )
    problems += _check_values(data)  # values of the wrong type were not taken: they cannot confuse these checks
    if problems:
        where = f" in {path}" if path else ""
        raise ConfigError("Invalid configuration" + where + ":\n  - " + "\n  - ".join(problems))
    explicit = frozenset((sec, key) for sec, values in raw.items() if isinstance(values, dict) for key in values)
    return Config(data, path, explicit)


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
        for k, (default, _types, text) in keys.items():
            d = "(optional, no default)" if default is None else f"= {json.dumps(default)}"
            lines.append(f"  {k} {d}\n      {text}")
    return "\n".join(lines)
