"""The staged end-to-end analysis behind ``immunomood run`` and ``immunomood demo``.

Every stage reads the previous stage's checkpoint and writes its own into ``<outdir>/checkpoints/<stage>/``:
the data (``data.h5ad`` or ``data.h5mu``), its result tables (CSV) and ``checkpoint.json`` (stage, config hash,
package versions). A stage is built in a temporary folder and renamed into place only when complete, so a
run killed at any moment (even by SIGKILL) leaves either a complete checkpoint or none. ``--resume`` skips the
stages whose checkpoint carries the current config hash.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._config import STAGES, Config, ConfigError
from ._settings import logger
from ._utils import record_problem


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("immunomood", "anndata", "scanpy", "scvi-tools", "torch", "mudata", "numpy", "pandas", "statsmodels"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover
            out[pkg] = "not installed"
    return out


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def _sha256(path: Path, cache: dict[str, Any]) -> str:
    """Content hash of a file, reused from ``cache`` while its size and mtime are unchanged."""
    from ._utils import file_sha256

    st = path.stat()
    key = str(path.resolve())
    hit = cache.get(key)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}
    return cache[key]["sha256"]


def _describe(path: Path, cache: dict[str, Any]) -> list[dict[str, Any]]:
    """Size, mtime and content hash of a file, or of every file of a folder (a 10x matrix folder)."""
    files = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
    out = []
    for q in files:
        st = q.stat()
        out.append({"path": str(q), "size": st.st_size, "mtime": st.st_mtime, "sha256": _sha256(q, cache)})
    return out


def input_fingerprints(cfg: Config) -> dict[str, dict[str, Any]]:
    """What each stage's result depends on outside the config: the input files (content hashes).

    ``{"input": ..., "proteomics": ...}``: the input .h5ad, or the sample sheet and every file it lists; the
    proteomics file when configured. Hashes are cached in ``<outdir>/.input_hashes.json`` and reused
    while a file's size and modification time are unchanged, so a resume does not reread large inputs.
    """
    cache_file = cfg.outdir / ".input_hashes.json"  # not in checkpoints/: only stages live there
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except (json.JSONDecodeError, OSError):
        cache = {}
    inp = cfg["input"]
    files: list[dict[str, Any]] = []
    if inp["h5ad"] is not None:
        files += _describe(cfg.resolve(inp["h5ad"]), cache)
    else:
        from .io._cohort import _read_sheet

        sheet_path = cfg.resolve(inp["sample_sheet"])
        files += _describe(sheet_path, cache)
        sheet, base = _read_sheet(sheet_path, [inp["sample_key"]])
        for sp in sheet["path"]:  # paths relative to the sheet's folder, as im.io.read_cohort reads them
            q = Path(str(sp)).expanduser()
            files += _describe(q if q.is_absolute() else base / q, cache)
    out: dict[str, dict[str, Any]] = {"input": {"files": files}}
    if cfg["proteomics"]["path"] is not None:
        out["proteomics"] = {"files": _describe(cfg.resolve(cfg["proteomics"]["path"]), cache)}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, cache_file)
    except OSError:  # pragma: no cover - a cache only
        pass
    return out


def _stage_inputs(stage: str, fingerprints: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Content hashes of the inputs that ``stage`` (and every stage before it) read."""
    idx = STAGES.index(stage)
    out = {}
    for name, first_stage in (("input", "load"), ("proteomics", "proteomics")):
        if name in fingerprints and idx >= STAGES.index(first_stage):
            out[name] = ";".join(f"{f['size']}:{f['sha256']}" for f in fingerprints[name]["files"])
    return out


class Checkpoints:
    """Atomic stage checkpoints under ``<outdir>/checkpoints/``.

    A checkpoint is valid for a resume when it carries the current config hash *and* the content hashes of the
    input files its stage depends on (``inputs``, from :func:`input_fingerprints`): a changed input .h5ad, sample
    sheet, sample file or proteomics file makes the stages that read it, and every later stage, run again.
    """

    def __init__(self, outdir: Path, inputs: dict[str, dict[str, Any]] | None = None):
        self.root = outdir / "checkpoints"
        self.tmp = self.root / ".tmp"
        self.inputs = inputs

    def clean_stale(self) -> None:
        """Remove leftovers of an interrupted stage (never a complete checkpoint)."""
        if self.tmp.exists():
            shutil.rmtree(self.tmp)

    def path(self, stage: str) -> Path:
        return self.root / f"{STAGES.index(stage):02d}_{stage}"

    def info(self, stage: str) -> dict[str, Any] | None:
        f = self.path(stage) / "checkpoint.json"
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError:
            return None

    def valid(self, stage: str, config_hash: str) -> bool:
        info = self.info(stage)
        if info is None or info.get("config_hash") != config_hash:
            return False
        if info.get("report") and not (Path(info["report"]) / "summary.md").is_file():
            logger.info("stage %s: the report folder %s is gone or incomplete, rerun", stage, info["report"])
            return False
        if self.inputs is not None:
            want = _stage_inputs(stage, self.inputs)
            have = info.get("inputs")
            if have != want:
                changed = sorted(k for k in set(want) | set(have or {}) if (have or {}).get(k) != want.get(k))
                logger.info(
                    "stage %s: checkpoint made from other input files (%s changed), rerun",
                    stage,
                    ", ".join(changed) or "inputs",
                )
                return False
        return True

    def write(
        self,
        stage: str,
        config_hash: str,
        *,
        adata=None,
        mdata=None,
        tables: dict[str, pd.DataFrame] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        meta = {
            "stage": stage,
            "config_hash": config_hash,
            "versions": versions(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if self.inputs is not None:
            meta["inputs"] = _stage_inputs(stage, self.inputs)
            meta["input_files"] = {k: v["files"] for k, v in self.inputs.items() if k in meta["inputs"]}
        if extra:
            meta.update(extra)
        self.tmp.mkdir(parents=True, exist_ok=True)
        work = self.tmp / f"{stage}-{uuid.uuid4().hex[:8]}"
        work.mkdir()
        if adata is not None:
            adata.uns["immunomood_checkpoint"] = {
                k: v for k, v in meta.items() if k not in ("versions", "input_files")
            } | {"versions": meta["versions"]}
            adata.write_h5ad(work / "data.h5ad")
        if mdata is not None:
            mdata.uns["immunomood_checkpoint"] = {
                k: v for k, v in meta.items() if k not in ("versions", "input_files")
            } | {"versions": meta["versions"]}
            mdata.write(work / "data.h5mu")
        for name, df in (tables or {}).items():
            df.to_csv(work / f"{name}.csv", index=False)
        (work / "checkpoint.json").write_text(json.dumps(meta, indent=2, default=str))
        final = self.path(stage)
        if final.exists():  # an outdated checkpoint of this stage (other config): replace it
            old = self.tmp / f"old-{stage}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(work, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, final)
        return final

    def read_adata(self, stage: str):
        import anndata as ad

        return ad.read_h5ad(self.path(stage) / "data.h5ad")

    def read_mdata(self, stage: str):
        import mudata as md

        return md.read_h5mu(self.path(stage) / "data.h5mu")

    def read_table(self, stage: str, name: str) -> pd.DataFrame | None:
        f = self.path(stage) / f"{name}.csv"
        return pd.read_csv(f) if f.is_file() else None


# ----------------------------------------------------------------------------------------------
# validation before any work
# ----------------------------------------------------------------------------------------------
def _obs_columns_of_h5ad(path: Path) -> pd.DataFrame:
    import anndata as ad

    a = ad.read_h5ad(path, backed="r")
    try:
        return a.obs.copy()
    finally:
        a.file.close()


def _n_vars_of(path: Path) -> int | None:
    """Number of genes of an input file, read cheaply (no matrix): .h5ad var, 10x .h5 features, 10x folder."""
    try:
        if path.is_dir():
            import gzip

            for name in ("features.tsv.gz", "genes.tsv.gz", "features.tsv", "genes.tsv"):
                f = path / name
                if f.is_file():
                    opener = gzip.open if name.endswith(".gz") else open
                    with opener(f, "rt") as fh:
                        return sum(1 for line in fh if line.strip())
            return None
        import h5py

        with h5py.File(path, "r") as f:
            if path.suffix == ".h5ad":
                var = f["var"]
                idx = var.attrs.get("_index", "_index")
                return int(var[idx].shape[0])
            for grp in ("matrix", *f.keys()):  # 10x v3 ("matrix") or v2 (one group per genome)
                if grp in f and "shape" in f[grp]:
                    return int(f[grp]["shape"][0])
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the reader itself
        return None
    return None


def _check_outdir(outdir: Path) -> str | None:
    """Why ``outdir`` cannot be written (without creating anything), or None."""
    if outdir.exists() and not outdir.is_dir():
        return f"[output] outdir {outdir} exists and is a file, not a folder. Choose another outdir."
    anc = outdir
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        return (
            f"[output] outdir {outdir} cannot be created: {anc} is a file, not a folder. "
            "Choose an outdir in a folder you can write to."
        )
    if not os.access(anc, os.W_OK | os.X_OK):
        return (
            f"[output] outdir {outdir} cannot be written: no write permission on {anc}. "
            "Choose an outdir in a folder you can write to."
        )
    return None


def apply_compute_settings(cfg: Config) -> None:
    """``[compute] n_jobs`` -> ``im.settings.n_jobs`` when the config sets it; else ``im.settings.n_jobs`` is kept
    (default 1, or the value of ``immunomood run --n-jobs``)."""
    from ._settings import settings

    if ("compute", "n_jobs") in cfg.explicit:
        settings.n_jobs = cfg["compute"]["n_jobs"]


def validate_inputs(cfg: Config) -> None:
    """Check files and columns named by the config; raise :class:`ConfigError` before any work."""
    inp = cfg["input"]
    problems: list[str] = []
    out_problem = _check_outdir(cfg.outdir)
    if out_problem:
        problems.append(out_problem)
    n_vars: list[int | None] = []
    obs_columns: set[str] | None = None
    samples: pd.DataFrame | None = None  # the input's obs (h5ad) or sample sheet, for the design check
    needed = (
        [inp["sample_key"], inp["condition_key"]]
        + ([inp["batch_key"]] if inp["batch_key"] else [])
        + list(inp["covariates"])
    )
    if inp["h5ad"] is not None:
        p = cfg.resolve(inp["h5ad"])
        if not p.is_file():
            problems.append(f"[input] h5ad file not found: {p}")
        else:
            obs = _obs_columns_of_h5ad(p)
            samples = obs
            obs_columns = set(map(str, obs.columns))
            n_vars.append(_n_vars_of(p))
            missing = [c for c in needed if c not in obs.columns]
            if missing:
                problems.append(f"[input] columns {missing} not found in {p.name} obs. Available: {list(obs.columns)}")
            for c in [c for c in needed if c in obs.columns]:
                na = obs[c].isna() | obs[c].astype(str).str.strip().isin(["", "nan", "NaN", "None"])
                if na.any():
                    problems.append(
                        f"[input] column {c!r} of {p.name} is missing for {int(na.sum())} cells (e.g. "
                        f"{obs.index[na][:3].tolist()}): fill it in or remove those cells (a missing ID "
                        "is never turned into a group called 'nan')"
                    )
    else:
        p = cfg.resolve(inp["sample_sheet"])
        if not p.is_file():
            problems.append(f"[input] sample_sheet not found: {p}")
        else:
            # the same checks as im.io.read_cohort (paths relative to the sheet's folder)
            from .io._cohort import check_sample_sheet

            sheet_problems = check_sample_sheet(p, sample_key=inp["sample_key"], required_columns=needed[1:])
            problems += [f"[input] sample sheet {p.name}: {m}" for m in sheet_problems]
            if not sheet_problems:
                from .io._cohort import _read_sheet

                sheet, base = _read_sheet(p, [inp["sample_key"]])
                obs_columns = set(map(str, sheet.columns))
                samples = sheet
                for sp in sheet["path"]:
                    q = Path(str(sp)).expanduser()
                    n_vars.append(_n_vars_of(q if q.is_absolute() else base / q))
    pr = cfg["proteomics"]
    if pr["path"] is not None:
        q = cfg.resolve(pr["path"])
        if not q.exists():
            problems.append(f"[proteomics] file not found: {q}")
    if cfg["integrate"]["enabled"] and not inp["batch_key"]:
        problems.append("[integrate] enabled = true needs [input] batch_key (or set [integrate] enabled = false)")
    known = [n for n in n_vars if n is not None]
    if known and cfg["qc"]["n_top_genes"] > min(known):
        problems.append(
            f"[qc] n_top_genes must be at most the number of genes of the input ({min(known)}), got "
            f"{cfg['qc']['n_top_genes']}. Lower n_top_genes (2000 is usual)."
        )
    groupby = cfg["differential"]["groupby"]
    if obs_columns is not None and groupby != "cell_type" and groupby not in obs_columns:
        problems.append(
            f"[differential] groupby {groupby!r} will not exist: it must be 'cell_type' (written by the "
            f"annotate stage) or a column of the input. Available: {sorted(obs_columns)}."
        )
    if samples is not None and not problems:
        problems += _check_design_on_input(cfg, samples)
    if problems:
        raise ConfigError("Cannot start the run:\n  - " + "\n  - ".join(problems))


def _check_design_on_input(cfg: Config, samples: pd.DataFrame) -> list[str]:
    """The study design and the predict keys checked against the input's columns and samples (no work done).

    ``samples`` is the input's obs (one row per cell) or its sample sheet (one row per sample). The design is
    built exactly as the differential stage builds it (:func:`immunomood._design.build_design`, with the sample,
    condition and batch IDs as strings, as the load stage casts them), so a design error stops the run before
    integration. Samples that QC removes later may still change the design; those errors come from the stage.
    """
    from ._config import _plain, design_kwargs, parse_baseline
    from ._design import build_design

    inp, d, pr = cfg["input"], cfg["differential"], cfg["predict"]
    out: list[str] = []
    obs = samples.copy()
    for c in [inp["sample_key"], inp["condition_key"], inp["batch_key"]]:
        if c and c in obs.columns:
            obs[c] = obs[c].astype(str).astype("category")
    kw = design_kwargs(cfg)
    if kw.get("reference") is not None and inp["condition_key"] in obs.columns:
        cats = list(obs[inp["condition_key"]].cat.categories)
        if kw["reference"] in cats:  # the load stage puts the reference first
            obs[inp["condition_key"]] = obs[inp["condition_key"]].cat.reorder_categories(
                [kw["reference"]] + [c for c in cats if c != kw["reference"]]
            )
    groupby = d["groupby"]
    try:
        build_design(
            obs,
            sample_key=inp["sample_key"],
            reserved={"groupby": groupby},
            where="the input",
            **{k: v for k, v in kw.items() if v is not None},
        )
    except (ValueError, KeyError, TypeError) as e:
        what = "design" if d["design"] is not None else "condition_key / covariates"
        msg = _plain(e.args[0] if isinstance(e, KeyError) and e.args else str(e))
        out.append(f"[differential] {what}: {msg}")
    if pr["outcome"].strip():
        cols = list(map(str, obs.columns))
        if pr["outcome"] not in cols and cfg["proteomics"]["path"] is None:
            from ._config import _suggest

            out.append(
                f"[predict] outcome {pr['outcome']!r} is not a column of the input.{_suggest(pr['outcome'], cols)}"
                f" Available: {cols[:20]}"
            )
        for key in ("donor_key",):
            if pr[key] is not None and pr[key] not in cols:
                out.append(f"[predict] {key} {pr[key]!r} is not a column of the input. Available: {cols[:20]}")
        base = parse_baseline(pr["baseline"])
        if base is not None:
            ((col, val),) = base.items()
            if col not in cols:
                out.append(f"[predict] baseline column {col!r} is not a column of the input. Available: {cols[:20]}")
            elif not (obs[col].astype(str) == str(val)).any():
                out.append(
                    f"[predict] baseline {col}={val}: no sample has {col} == {val!r} (values: "
                    f"{sorted(map(str, pd.unique(obs[col].dropna())))[:10]})."
                )
    return out


# ----------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------
def _read_sample(path: Path):
    """One sample's counts (10x folder, 10x .h5 or .h5ad), read as :func:`immunomood.io.read_cohort` reads it."""
    from .io._cohort import _read_one, _sample_kind

    if _sample_kind(path) is None:
        raise ConfigError(f"Unsupported sample file {path}: expected a 10x folder, a 10x .h5 or an .h5ad")
    return _read_one(path, var_names="gene_symbols", layer=None)


def _check_complete(obs: pd.DataFrame, columns: list[str], where: str) -> None:
    """Refuse missing sample/condition/batch IDs (they would become a group called 'nan')."""
    for c in columns:
        na = obs[c].isna() | obs[c].astype(str).str.strip().isin(["", "nan", "NaN", "None"])
        if na.any():
            raise ConfigError(
                f"[input] {where}: column {c!r} is missing for {int(na.sum())} cells (e.g. "
                f"{obs.index[na][:3].tolist()}). Fill it in or remove those cells; a missing ID is "
                "never turned into a group called 'nan'."
            )


def stage_load(cfg: Config, ck: Checkpoints, h: str, state: dict) -> None:
    import anndata as ad

    from . import io

    inp = cfg["input"]
    ids = [inp["sample_key"], inp["condition_key"]] + ([inp["batch_key"]] if inp["batch_key"] else [])
    if inp["h5ad"] is not None:
        adata = ad.read_h5ad(cfg.resolve(inp["h5ad"]))
        if inp["counts_layer"]:
            if inp["counts_layer"] not in adata.layers:
                raise ConfigError(
                    f"[input] counts_layer {inp['counts_layer']!r} is not a layer of "
                    f"{cfg.resolve(inp['h5ad']).name}. Layers present: {list(adata.layers)} "
                    "(leave counts_layer out when X holds the raw counts)."
                )
            adata.X = adata.layers[inp["counts_layer"]].copy()
        _check_complete(adata.obs, ids, cfg.resolve(inp["h5ad"]).name)
    else:
        # the same reader as the Python API: im.io.read_cohort (paths relative to the sheet's folder)
        adata = io.read_cohort(
            cfg.resolve(inp["sample_sheet"]),
            sample_key=inp["sample_key"],
            required_columns=ids[1:] + list(inp["covariates"]),
            layer=inp["counts_layer"],
        )
    for c in ids:
        adata.obs[c] = adata.obs[c].astype(str).astype("category")
    if inp["reference"] is not None:
        cats = list(adata.obs[inp["condition_key"]].cat.categories)
        if inp["reference"] not in cats:
            raise ConfigError(
                f"[input] reference {inp['reference']!r} is not a level of {inp['condition_key']!r}: {cats}"
            )
        adata.obs[inp["condition_key"]] = adata.obs[inp["condition_key"]].cat.reorder_categories(
            [inp["reference"]] + [c for c in cats if c != inp["reference"]]
        )
    # which markers and gene sets the measured genes can resolve (the report's load section shows it)
    io.gene_coverage(
        adata,
        markers=cfg["annotate"]["markers"],
        gene_sets=list(cfg["score"]["gene_sets"]),
        gene_symbols=inp["gene_symbols"],
    )
    cov = adata.uns["gene_coverage"]
    bad = cov[~cov["resolvable"] & cov["kind"].isin(["lineage", "gene_set"])]
    if len(bad):
        record_problem(
            adata,
            f"load: the {adata.n_vars} measured genes cannot resolve "
            f"{', '.join(bad['kind'] + ' ' + bad['name'])} (too few of their genes; see "
            "uns['gene_coverage'])",
        )
    logger.info(
        "loaded %d cells x %d genes from %d samples", adata.n_obs, adata.n_vars, adata.obs[inp["sample_key"]].nunique()
    )
    tables = {"gene_coverage": cov}
    if isinstance(adata.uns.get("read_cohort"), pd.DataFrame):
        tables["samples_read"] = adata.uns["read_cohort"]
    ck.write("load", h, adata=adata, tables=tables)
    state["adata"] = adata


def stage_qc(cfg: Config, ck: Checkpoints, h: str, state: dict) -> None:
    from . import pp

    inp, q = cfg["input"], cfg["qc"]
    adata = state["adata"]
    sk = inp["sample_key"]
    pp.qc_metrics(adata, sample_key=sk, gene_symbols=inp["gene_symbols"])
    pp.flag_outliers(adata, sample_key=sk, nmads=q["nmads"], mt_nmads=q["mt_nmads"], max_pct_mt=q["max_pct_mt"])
    remove: tuple[str, ...] = ("qc_outlier",)
    if q["doublets"]:
        pp.detect_doublets(adata, sample_key=sk, random_state=cfg["output"]["random_state"])
        remove = ("qc_outlier", "predicted_doublet")
    pp.filter_cells(adata, remove=remove, min_cells_per_sample=q["min_cells_per_sample"], sample_key=sk)
    pp.normalize(adata)
    pp.highly_variable_genes(adata, n_top_genes=q["n_top_genes"], batch_key=inp["batch_key"])
    report = adata.uns["qc"]["report"]
    ck.write("qc", h, adata=adata, tables={"qc_report": report.reset_index() if report.index.name else report})
    state["adata"] = adata


def stage_integrate(cfg: Config, ck: Checkpoints, h: str, state: dict) -> None:
    import scanpy as sc

    from . import tl

    inp, ig = cfg["input"], cfg["integrate"]
    adata = state["adata"]
    rs = cfg["output"]["random_state"]
    sub = adata[:, adata.var["highly_variable"]].copy() if "highly_variable" in adata.var else adata.copy()
    sc.pp.pca(sub, random_state=rs)
    adata.obsm["X_pca"] = sub.obsm["X_pca"]
    use_rep = "X_pca"
    if ig["enabled"]:
        tl.integrate(
            adata,
            batch_key=inp["batch_key"],
            n_latent=ig["n_latent"],
            max_epochs=ig["max_epochs"],
            accelerator=ig["accelerator"],
            devices=ig["devices"],
            random_state=rs,
        )
        use_rep = "X_scVI"
    else:
        record_problem(
            adata,
            "scVI integration skipped ([integrate] enabled = false): embedding, clustering and "
            "annotation use the unintegrated PCA, so batch effects are not removed.",
        )
    tl.embed(adata, use_rep=use_rep, random_state=rs)
    ck.write("integrate", h, adata=adata, extra={"use_rep": use_rep})
    state["adata"] = adata


def stage_annotate(cfg: Config, ck: Checkpoints, h: str, state: dict) -> None:
    from . import tl

    an = cfg["annotate"]
    adata = state["adata"]
    use_rep = "X_scVI" if "X_scVI" in adata.obsm else "X_pca"
    tl.annotate(
        adata,
        markers=an["markers"],
        use_rep=use_rep,
        min_confidence=an["min_confidence"],
        random_state=cfg["output"]["random_state"],
    )
    bk = cfg["input"]["batch_key"]
    if use_rep == "X_scVI" and bk:
        # stored for the report's integration figure (plots compute nothing)
        tl.integration_metrics(
            adata, batch_key=bk, label_key="cell_type", embedding="X_scVI", random_state=cfg["output"]["random_state"]
        )
    counts = adata.obs["cell_type"].value_counts().rename_axis("cell_type").reset_index(name="n_cells")
    ck.write("annotate", h, adata=adata, tables={"cell_types": counts})
    state["adata"] = adata


def _gene_set_dict(names: list[str]) -> dict[str, list[str]]:
    from . import tl

    out: dict[str, list[str]] = {}
    for n in names:
        out.update(tl.gene_sets(n))
    return out


def stage_score(cfg: Config, ck: Checkpoints, h: str, state: dict) -> None:
    from . import tl

    adata = state["adata"]
    tl.score_pathways(adata, _gene_set_dict(cfg["score"]["gene_sets"]))
    ck.write("score", h, adata=adata)
    state["adata"] = adata


def _with_design(func, name: str, holder, design: dict[str, Any], **kwargs):
    """Call a donor-level test with the run's design; a test that cannot take it, or fails on it, is a listed
    problem (``record_problem`` on ``holder``) and gives None, never a silent fallback."""
    import inspect

    params = inspect.signature(func).parameters
    given = {k: v for k, v in design.items() if v not in (None, (), [])}
    unsupported = [k for k in given if k not in params]
    if unsupported:
        record_problem(
            holder,
            f"{name}: not run: this version of im.tl.{name} does not accept {unsupported} of the "
            "configured design ([differential] design / contrasts / tests / random_effect).",
        )
        return None
    try:
        return func(**kwargs, **given)
    except (ValueError, KeyError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        record_problem(holder, f"{name}: not run with the configured design: {type(e).__name__}: {msg}")
        return None


def stage_differential(cfg: Config, ck: Checkpoints, h: str, state: dict) -> None:
    from . import tl
    from ._config import design_kwargs

    inp, d = cfg["input"], cfg["differential"]
    adata = state["adata"]
    design = design_kwargs(cfg)
    common = {"sample_key": inp["sample_key"], "groupby": d["groupby"]}
    # the main result: a design error here is an error of the run (it was checked on the input before any work)
    res = tl.differential_activity(
        adata,
        gene_sets=_gene_set_dict(cfg["score"]["gene_sets"]),
        min_cells=d["min_cells"],
        **common,
        **{k: v for k, v in design.items() if v not in (None, (), [])},
    )
    tables = {"differential_activity": res}
    comp = _with_design(tl.composition, "composition", adata, design, adata=adata, **common)
    if comp is not None:
        tables["composition"] = comp
    if d["expression"]:
        de = _with_design(
            tl.differential_expression,
            "differential_expression",
            adata,
            design,
            adata=adata,
            min_cells=d["min_cells"],
            **common,
        )
        if de is not None:
            tables["differential_expression"] = de
    state["tables"] = tables
    ck.write("differential", h, adata=adata, tables=tables)
    state["adata"] = adata


def _donor_view(cfg: Config, adata):
    """One row per donor (tl.donor_view) with the run's sample key, groups, gene sets and min_cells."""
    from . import tl

    return tl.donor_view(
        adata,
        sample_key=cfg["input"]["sample_key"],
        groupby=cfg["differential"]["groupby"],
        gene_sets=_gene_set_dict(cfg["score"]["gene_sets"]),
        min_cells=cfg["differential"]["min_cells"],
    )


def _read_proteomics(cfg: Config):
    import anndata as ad

    from . import io

    pr = cfg["proteomics"]
    path = cfg.resolve(pr["path"])
    platform = pr["platform"]
    if platform == "auto":
        name = path.name.lower()
        platform = "somascan" if name.endswith(".adat") else "h5ad" if name.endswith(".h5ad") else "olink"
    if platform == "h5ad":
        return ad.read_h5ad(path)
    if platform == "somascan":
        return io.read_somascan(path)
    return io.read_olink(path)


def stage_proteomics(cfg: Config, ck: Checkpoints, h: str, state: dict) -> None:
    from . import pp, tl

    inp, pr = cfg["input"], cfg["proteomics"]
    if pr["path"] is None:
        logger.info("no [proteomics] path: skipping the proteomics stage")
        ck.write("proteomics", h, extra={"skipped": True})
        return
    adata = state["adata"]
    rs = cfg["output"]["random_state"]
    prot = _read_proteomics(cfg)
    if prot.uns.get("proteomics", {}).get("platform") in ("olink", "somascan"):
        prot = pp.proteomics_qc(prot, max_below_lod=pr["max_below_lod"], copy=True)
    donors = _donor_view(cfg, adata)
    mdata = tl.join_proteomics(donors, prot, prot_sample_key=pr["sample_key"])

    # partial associations adjusted for the design's covariates (its columns that are not tested), as the
    # two-group form adjusts for [input] covariates and not for the condition
    design = {"covariates": tuple(c for c in design_covariates(cfg) if c in mdata.obs.columns)}
    assoc = _with_design(
        tl.cross_modal_associations,
        "cross_modal_associations",
        mdata,
        design,
        mdata=mdata,
        method=pr["association_method"],
    )
    if assoc is None:  # e.g. too few donors with both modalities: a listed problem, the run goes on
        assoc = pd.DataFrame()
    from .tl._donor_data import MIN_DONORS_PER_CLASS_PANEL
    from .tl._donor_data import obs_frame as _obs_frame

    both = mdata["rna"].obs_names.intersection(mdata["prot"].obs_names)  # the panel uses donors with both modalities
    counts = _obs_frame(mdata, inp["condition_key"]).reindex(both).value_counts()
    tables = {"cross_modal_associations": assoc}
    panel = None
    if len(counts) != 2:
        record_problem(
            mdata,
            f"biomarker panel: not run: it separates two levels of {inp['condition_key']!r}, and "
            f"the donors with both modalities have {len(counts)} ({sorted(map(str, counts.index))}).",
        )
    else:
        n_min = int(counts.min())
        n_splits = min(5, n_min)
        if n_min < MIN_DONORS_PER_CLASS_PANEL:
            record_problem(
                mdata,
                f"biomarker panel: only {n_min} donors with both modalities in the smaller "
                "condition; its cross-validated AUC is very uncertain (exploratory only).",
                warn_user=False,
            )
        if n_splits < 5:
            logger.warning(
                "biomarker panel: the smaller condition has %d donors with proteomics; using %d-fold "
                "cross-validation instead of 5",
                n_min,
                n_splits,
            )
        panel = tl.biomarker_panel(
            mdata,
            condition_key=inp["condition_key"],
            n_splits=n_splits,
            n_repeats=pr["biomarker_repeats"],
            random_state=rs,
        )
        preds = (
            panel.predictions.reset_index()
            if isinstance(panel.predictions, pd.DataFrame)
            else pd.DataFrame(panel.predictions)
        )
        tables.update(
            {
                "biomarker_features": panel.features.reset_index(),
                "biomarker_predictions": preds,
                "biomarker_auc": pd.DataFrame(
                    {"auc": [panel.auc], "ci_low": [panel.auc_ci[0]], "ci_high": [panel.auc_ci[1]]}
                ),
            }
        )
    state["tables"] = {**state.get("tables", {}), **tables}
    state["mdata"] = mdata
    state["panel"] = panel
    # the out-of-fold predictions too (not a report table): a resumed report redraws the ROC figure from them
    extra_tables = {"biomarker_oof": panel.oof.reset_index()} if panel is not None else {}
    ck.write(
        "proteomics",
        h,
        mdata=mdata,
        tables={**tables, **extra_tables},
        extra={"biomarker_params": panel.params if panel is not None else {}},
    )


def design_covariates(cfg: Config) -> list[str]:
    """The covariates of the run's design: ``[input] covariates``, or the formula's columns that are not tested
    (not in a contrast or a test; without either, the first column is the tested one)."""
    d = cfg["differential"]
    if d["design"] is None:
        return list(cfg["input"]["covariates"])
    from ._design import formula_variables

    variables = formula_variables(d["design"])
    tested = {c[0] for c in d["contrasts"]} | {p.strip() for t in d["tests"] for p in str(t).split(":")}
    if not tested and variables:
        tested = {variables[0]}
    return [v for v in variables if v not in tested]


def _jsonable(value: Any) -> Any:
    """Metrics and parameters of a prediction as JSON (arrays as lists, numpy scalars as numbers)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return (
            [_jsonable(v) for v in np.asarray(value, dtype=object).ravel()]
            if not isinstance(value, (list, tuple))
            else [_jsonable(v) for v in value]
        )
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (pd.DataFrame, pd.Series)):
        return None
    return value


def _with_index(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """``df`` with its index as the first column (named ``name``, or ``row`` when a column has that name)."""
    name = name if name not in df.columns else "row"
    return df.rename_axis(name).reset_index()


PREDICT_TABLES = ("predict_results", "predict_features", "predict_calibration", "predict_null")


def stage_predict(cfg: Config, ck: Checkpoints, h: str, state: dict) -> None:
    """Response prediction (``[predict] outcome``) from baseline donor features: the proteomics MuData when the run
    has one (features: modalities or feature names), else the donor view of the cells (features: ``"proportion"``
    and / or ``"gene_set"``). A prediction that cannot run is a listed problem, and the run goes on."""
    from . import tl
    from ._config import parse_baseline

    p = cfg["predict"]
    if not p["outcome"].strip():
        logger.info("no [predict] outcome: skipping the predict stage")
        ck.write("predict", h, extra={"skipped": True})
        return
    adata = state["adata"]
    mdata = state.get("mdata")
    if mdata is None and cfg["proteomics"]["path"] is not None and (ck.path("proteomics") / "data.h5mu").is_file():
        mdata = ck.read_mdata("proteomics")
    base = parse_baseline(p["baseline"])
    if base is not None:  # "visit=0" on a numeric column compares as a number
        ((col, val),) = base.items()
        where = mdata.obs if mdata is not None else adata.obs
        if col in where.columns and pd.api.types.is_numeric_dtype(where[col]):
            try:
                base = {col: float(val)}
            except ValueError:
                pass
    kw = {
        "outcome": p["outcome"],
        "features": list(p["features"]) or None,
        "baseline": base,
        "donor_key": p["donor_key"],
        "outcome_type": p["outcome_type"],
        "positive": p["positive"],
        "model": p["model"],
        "n_splits": p["n_splits"],
        "n_repeats": p["n_repeats"],
        "max_features": p["max_features"],
        "n_permutations": p["n_permutations"],
        "n_bins": p["n_bins"],
        "random_state": cfg["output"]["random_state"],
    }
    problems: list[str] = []
    if p["exclude_values"]:  # e.g. controls, who have no response: their rows leave the prediction
        drop = {str(v) for v in p["exclude_values"]}
        if mdata is not None:
            from .tl._donor_data import obs_frame

            col = (
                obs_frame(mdata, p["outcome"])
                if p["outcome"] in mdata.obs.columns or any(p["outcome"] in mdata[m].obs.columns for m in mdata.mod)
                else None
            )
            if col is not None:
                mdata = mdata[~col.astype(str).isin(drop).to_numpy()].copy()
        elif p["outcome"] in adata.obs.columns:
            adata = adata[~adata.obs[p["outcome"]].astype(str).isin(drop).to_numpy()]
    try:
        if mdata is not None:
            res = tl.predict_response(mdata, **kw)
        else:  # the donor view built here: predict_response writes its result into it, never into the cells
            donors = _donor_view(cfg, adata)
            res = tl.predict_response(donors, **kw)
    except (ValueError, KeyError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        problems.append(f"predict: response prediction of {p['outcome']!r} not run: {type(e).__name__}: {msg}")
        logger.warning(problems[-1])
        ck.write("predict", h, extra={"problems": problems})
        state["prediction"] = None
        state["predict_problems"] = problems
        return
    tables = {
        "predict_results": _with_index(res.results, "donor"),
        "predict_features": _with_index(res.features, "feature"),
        "predict_calibration": res.calibration,
        "predict_null": pd.DataFrame({"null": np.asarray(res.null, dtype=float)}),
    }
    stored = {"params": _jsonable(res.params), "metrics": _jsonable(res.metrics)}
    state["tables"] = {**state.get("tables", {}), **{k: v for k, v in tables.items() if k != "predict_null"}}
    state["prediction"] = res.as_dict()
    state["predict_problems"] = problems
    ck.write("predict", h, tables=tables, extra={"prediction": stored, "problems": problems})


def prediction_from_checkpoint(ck: Checkpoints) -> tuple[dict | None, list[str]]:
    """The stored prediction (the dict :func:`immunomood.pl.predict_response` reads) and the stage's problems."""
    info = ck.info("predict") or {}
    problems = [str(m) for m in info.get("problems", [])]
    stored = info.get("prediction")
    res = ck.read_table("predict", "predict_results")
    if info.get("skipped") or not stored or res is None:
        return None, problems
    res = res.set_index(res.columns[0])
    res.index = res.index.astype(str)
    feats = ck.read_table("predict", "predict_features")
    null = ck.read_table("predict", "predict_null")
    cal = ck.read_table("predict", "predict_calibration")
    return {
        "params": stored.get("params", {}),
        "metrics": stored.get("metrics", {}),
        "results": res,
        "features": feats.set_index(feats.columns[0]) if feats is not None and len(feats.columns) else pd.DataFrame(),
        "calibration": cal if cal is not None else pd.DataFrame(),
        "null": null["null"].to_numpy(dtype=float) if null is not None and "null" in null else np.zeros(0),
    }, problems


def _panel_from_checkpoint(ck: Checkpoints):
    """The biomarker panel's result rebuilt from the proteomics checkpoint (a resumed run has it only on disk)."""
    from .tl import BiomarkerResult

    info = ck.info("proteomics") or {}
    oof, preds = ck.read_table("proteomics", "biomarker_oof"), ck.read_table("proteomics", "biomarker_predictions")
    auc, feats = ck.read_table("proteomics", "biomarker_auc"), ck.read_table("proteomics", "biomarker_features")
    if info.get("skipped") or oof is None or preds is None or auc is None:
        return None
    idx = oof.columns[0]
    oof = oof.set_index(idx)
    preds = preds.set_index(preds.columns[0])
    preds.index = preds.index.astype(str)
    oof.index = oof.index.astype(str)
    a = auc.iloc[0]
    return BiomarkerResult(
        auc=float(a["auc"]),
        auc_ci=(float(a["ci_low"]), float(a["ci_high"])),
        features=feats.set_index(feats.columns[0]) if feats is not None and len(feats.columns) else pd.DataFrame(),
        predictions=preds.reindex(oof.index),
        auc_per_repeat=np.asarray([]),
        oof=oof,
        params=info.get("biomarker_params", {}),
    )


def stage_report(cfg: Config, ck: Checkpoints, h: str, state: dict) -> None:
    from ._report import write_report

    if state.get("panel") is None and cfg["proteomics"]["path"] is not None:
        state["panel"] = _panel_from_checkpoint(ck)  # resumed after the proteomics stage: no figure may be missing
    if "prediction" not in state:  # resumed after the predict stage
        state["prediction"], state["predict_problems"] = prediction_from_checkpoint(ck)
    write_report(cfg, ck, state)
    ck.write("report", h, extra={"report": str(cfg.outdir / "report")})


STAGE_FUNCS: dict[str, Callable[[Config, Checkpoints, str, dict], None]] = {
    "load": stage_load,
    "qc": stage_qc,
    "integrate": stage_integrate,
    "annotate": stage_annotate,
    "score": stage_score,
    "differential": stage_differential,
    "proteomics": stage_proteomics,
    "predict": stage_predict,
    "report": stage_report,
}
_ADATA_STAGES = ("load", "qc", "integrate", "annotate", "score", "differential")


def _setup_file_logging(outdir: Path) -> logging.Handler:
    outdir.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(outdir / "immunomood.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(fh)
    if logger.level > logging.INFO or logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return fh


def run_pipeline(cfg: Config, *, resume: bool = False, from_stage: str | None = None) -> dict[str, Any]:
    """Run every stage of the analysis described by ``cfg`` (see :mod:`immunomood._config`)."""
    if from_stage is not None and from_stage not in STAGES:
        raise ConfigError(f"--from {from_stage!r} is not a stage. Stages: {', '.join(STAGES)}")
    validate_inputs(cfg)
    apply_compute_settings(cfg)
    outdir = cfg.outdir
    fh = _setup_file_logging(outdir)
    ck = Checkpoints(outdir, inputs=input_fingerprints(cfg))
    ck.clean_stale()
    state: dict[str, Any] = {}
    start_idx = STAGES.index(from_stage) if from_stage else 0
    try:
        for i, stage in enumerate(STAGES):
            h = cfg.stage_hash(stage)
            skip = (i < start_idx and ck.valid(stage, h)) or (resume and i >= start_idx and ck.valid(stage, h))
            if i < start_idx and not ck.valid(stage, h):
                raise ConfigError(
                    f"--from {from_stage}: the checkpoint of the earlier stage {stage!r} is missing or "
                    "was made with another config; run without --from (or with --resume)."
                )
            if skip:
                logger.info("stage %s: checkpoint matches the config, skipped", stage)
                continue
            # load what this stage needs from the latest checkpoint if it is not in memory
            if "adata" not in state and stage != "load":
                prev = max((s for s in _ADATA_STAGES if STAGES.index(s) < i), key=STAGES.index)
                state["adata"] = ck.read_adata(prev)
            logger.info("stage %s: started", stage)
            t0 = time.perf_counter()
            STAGE_FUNCS[stage](cfg, ck, h, state)
            logger.info("stage %s: done in %.1f s", stage, time.perf_counter() - t0)
        _write_final_outputs(cfg, ck, state)
    finally:
        logger.removeHandler(fh)
        fh.close()
    return state


ANNOTATED_H5AD = "immunomood_annotated.h5ad"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _config_toml(cfg: Config) -> str:
    """The config as TOML: the user's file as written, or (config built in Python) the effective values."""
    if cfg.path is not None and Path(cfg.path).is_file():
        return Path(cfg.path).read_text()
    lines = ["# immunomood run configuration (effective values; no config file was given)"]
    for sec, values in cfg.data.items():
        lines.append(f"\n[{sec}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def _write_final_outputs(cfg: Config, ck: Checkpoints, state: dict) -> None:
    """``<outdir>/immunomood_annotated.h5ad`` (the cells with every result), ``config.toml`` and ``versions.json``."""
    from ._utils import atomic_write_h5ad

    outdir = cfg.outdir
    _atomic_write_text(outdir / "config.toml", _config_toml(cfg))
    _atomic_write_text(outdir / "versions.json", json.dumps(versions(), indent=2) + "\n")
    adata = state.get("adata")
    if adata is None:  # every cell-level stage was skipped (resume): the latest checkpoint holds the result
        adata = ck.read_adata(max(_ADATA_STAGES, key=STAGES.index))
    atomic_write_h5ad(adata, outdir / ANNOTATED_H5AD)
    logger.info(
        "wrote %s (%d cells x %d genes), config.toml and versions.json",
        outdir / ANNOTATED_H5AD,
        adata.n_obs,
        adata.n_vars,
    )
