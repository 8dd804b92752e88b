"""The report of an end-to-end run: key figures (PNG), result tables (CSV) and ``summary.md``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._settings import logger
from ._utils import PROBLEMS_KEY, record_problem


def _as_figure(obj: Any):
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    if isinstance(obj, Figure):
        return obj
    if isinstance(obj, Axes):
        return obj.figure
    if isinstance(obj, (list, tuple, np.ndarray)) and len(obj) and isinstance(np.ravel(obj)[0], Axes):
        return np.ravel(obj)[0].figure
    if isinstance(obj, dict):
        for v in obj.values():
            if isinstance(v, Axes):
                return v.figure
    for attr in ("fig", "figure"):
        f = getattr(obj, attr, None)
        if isinstance(f, Figure):
            return f
    if hasattr(obj, "make_figure"):  # scanpy BasePlot
        obj.make_figure()
        return obj.fig
    return plt.gcf()


def _save(fig_obj: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = _as_figure(fig_obj)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    plt.close(fig)


def _fmt_table(df: pd.DataFrame, n: int = 10) -> str:
    if df is None or len(df) == 0:
        return "_(empty)_\n"
    d = df.head(n).copy()
    for c in d.columns:
        if pd.api.types.is_float_dtype(d[c]):
            d[c] = d[c].map(lambda v: f"{v:.3g}" if pd.notna(v) else "NA")
    cols = list(map(str, d.columns))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in d.iterrows():
        lines.append("| " + " | ".join(str(v) for v in r.values) + " |")
    return "\n".join(lines) + "\n"


def _as_list(value: Any) -> list[str]:
    """``uns["immunomood_problems"]`` as a list of str (h5ad turns a list into an array, a single item into str)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in np.ravel(np.asarray(value, dtype=object))]


def _falsy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("false", "0", "no", "")
    try:
        return not bool(v) or (isinstance(v, float) and np.isnan(v))
    except (TypeError, ValueError):
        return False


def report_problems(adata, mdata=None, *, figure_failures: dict[str, str] | None = None) -> list[str]:
    """Every step that did not run (fully), for the top of ``summary.md``.

    Collects, in this order and without duplicates: ``adata.uns["immunomood_problems"]``; the same key of the
    proteomics MuData and of each of its modalities; samples whose doublets were not scored (rows of
    ``adata.uns["qc"]["doublets"]`` with ``scored == False``, with their note); and the figures that failed.
    """
    out: list[str] = []
    if adata is not None:
        out += _as_list(adata.uns.get(PROBLEMS_KEY))
    if mdata is not None:
        out += [f"[proteomics] {m}" for m in _as_list(mdata.uns.get(PROBLEMS_KEY))]
        for name, mod in getattr(mdata, "mod", {}).items():
            out += [f"[proteomics: {name}] {m}" for m in _as_list(mod.uns.get(PROBLEMS_KEY))]
    qc = adata.uns.get("qc", {}) if adata is not None else {}
    dbl = qc.get("doublets") if isinstance(qc, dict) else None
    if isinstance(dbl, pd.DataFrame) and "scored" in dbl.columns:
        for _, row in dbl[dbl["scored"].map(_falsy)].iterrows():
            name = row["sample"] if "sample" in dbl.columns else row.name
            n = f" ({int(row['n_cells'])} cells)" if "n_cells" in dbl.columns and pd.notna(row["n_cells"]) else ""
            note = f": {row['note']}" if "note" in dbl.columns and pd.notna(row["note"]) and str(row["note"]) else ""
            out.append(f"Doublets not scored in sample {name}{n}{note}; its predicted doublets were not removed.")
    for name, err in (figure_failures or {}).items():
        out.append(f"Figure `{name}` could not be drawn: {err}")
    return list(dict.fromkeys(out))


def problems_section(problems: list[str]) -> list[str]:
    """The summary's first section, in lines: every problem, or "no problems recorded"."""
    lines = ["## Steps that did not run / problems", ""]
    if problems:
        lines += [f"**{len(problems)} problem(s) recorded. Read these before the results below.**", ""]
        lines += [f"- {m}" for m in problems]
    else:
        lines += ["- No problems recorded: every step ran on all samples."]
    return lines + [""]


def unassigned_share(adata) -> float | None:
    """Share of cells whose lineage is ``"Unassigned"``, as :func:`immunomood.tl.annotate` logs it."""
    for col in ("cell_lineage", "cell_type"):
        if col in adata.obs.columns:
            return float((adata.obs[col].astype(str) == "Unassigned").mean())
    return None


def activity_counts(da: pd.DataFrame, alpha: float = 0.05) -> tuple[int, int, int]:
    """(tests run, tests with padj < alpha, rows not testable), counted as tl.differential_activity logs them."""
    pv = pd.to_numeric(da["pvalue"], errors="coerce")
    padj = pd.to_numeric(da["padj"], errors="coerce")
    n_tests = int(pv.notna().sum())
    return n_tests, int((padj < alpha).sum()), int(len(da) - n_tests)


def _umap_figure(adata, keys: list[str]):
    """UMAP coloured by each of ``keys`` (scanpy), titled with the representation it was computed on."""
    import scanpy as sc

    neigh = adata.uns.get("neighbors", {})
    rep = neigh.get("params", {}).get("use_rep", "X_pca") if isinstance(neigh, dict) else "X_pca"
    keys = [k for k in dict.fromkeys(keys) if k and k in adata.obs.columns]
    if not keys:
        raise KeyError("none of the columns to colour by is in adata.obs")
    # a light copy (obs columns and the UMAP only): legends without empty categories, adata untouched
    from anndata import AnnData

    obs = adata.obs[keys].copy()
    for k in keys:
        if isinstance(obs[k].dtype, pd.CategoricalDtype):
            obs[k] = obs[k].cat.remove_unused_categories()
    small = AnnData(obs=obs)
    small.obsm["X_umap"] = np.asarray(adata.obsm["X_umap"])
    fig = sc.pl.umap(small, color=keys, title=[f"{k} (UMAP of {rep})" for k in keys], ncols=2,
                     wspace=0.55, show=False, return_fig=True)
    return fig


def _integration_figure(adata, *, batch_key: str, label_key: str):
    """pl.integration of X_scVI, from what the annotate stage stored with tl.integration_metrics."""
    from . import pl

    st = adata.uns.get("integration_metrics")
    params = st.get("params", {}) if isinstance(st, dict) else {}
    stored = (params.get("batch_key") == batch_key and params.get("label_key") == label_key
              and "X_scVI" in list(params.get("embedding", [])) and bool(params.get("umap_unintegrated", "")))
    if not stored:
        raise ValueError(
            "integration metrics for X_scVI are not stored (uns['integration_metrics']): rerun the annotate stage "
            "(it calls im.tl.integration_metrics), e.g. `immunomood run CONFIG --from annotate`."
        )
    return pl.integration(adata, embedding="X_scVI")


def write_report(cfg, ck, state: dict) -> Path:
    """Write ``<outdir>/report/``: figures, tables and ``summary.md``.

    ``summary.md`` opens with "Steps that did not run / problems" (see :func:`report_problems`); its counts (cells
    Unassigned, tests run, tests with FDR < 0.05) are computed as the log lines of the steps compute them.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from . import pl

    inp = cfg["input"]
    outdir = cfg.outdir / "report"
    outdir.mkdir(parents=True, exist_ok=True)
    adata = state.get("adata")
    if adata is None:
        adata = ck.read_adata("differential")
    mdata = state.get("mdata")
    if mdata is None:
        try:
            if (ck.path("proteomics") / "data.h5mu").is_file():
                mdata = ck.read_mdata("proteomics")
        except Exception as e:  # noqa: BLE001 - a missing/broken proteomics checkpoint is reported, not fatal
            record_problem(adata, f"The proteomics checkpoint could not be read for the report: {type(e).__name__}: {e}")
    tables: dict[str, pd.DataFrame] = dict(state.get("tables", {}))
    for stage, names in {"qc": ["qc_report"], "annotate": ["cell_types"],
                         "differential": ["differential_activity", "composition", "differential_expression"],
                         "proteomics": ["cross_modal_associations", "biomarker_features", "biomarker_predictions",
                                        "biomarker_auc"]}.items():
        for n in names:
            if n not in tables:
                t = ck.read_table(stage, n)
                if t is not None:
                    tables[n] = t
    for n, t in tables.items():
        t.to_csv(outdir / f"{n}.csv", index=False)

    sk, ck_key, bk = inp["sample_key"], inp["condition_key"], inp["batch_key"]
    groupby = cfg["differential"]["groupby"]
    figures: dict[str, str] = {}
    failures: dict[str, str] = {}

    def fig(name: str, title: str, make):
        try:
            _save(make(), outdir / f"{name}.png")
            figures[name] = title
        except Exception as e:  # a figure must never take the whole report down; it is listed as failed
            logger.error("figure %s failed: %s: %s", name, type(e).__name__, e)
            failures[name] = f"{type(e).__name__}: {e}"

    fig("qc_violins", "QC metrics per sample with the MAD thresholds", lambda: pl.qc(adata, sample_key=sk))
    fig("qc_report", "Cells kept and removed per sample and reason", lambda: pl.qc_report(adata))
    if "X_umap" in adata.obsm:
        colour_by = [sk, ck_key, "cell_type"] + ([bk] if bk and bk != sk else [])
        fig("umap", "UMAP of the cells coloured by donor, condition, cell type" + (" and batch" if bk and bk != sk
                                                                                 else ""),
            lambda: _umap_figure(adata, colour_by))
    if bk and "X_scVI" in adata.obsm and "cell_type" in adata.obs.columns:
        fig("integration", "UMAP before and after scVI integration, by batch and cell type, with the metrics",
            lambda: _integration_figure(adata, batch_key=bk, label_key="cell_type"))
    fig("annotation", "Marker genes per annotated cell type", lambda: pl.annotation(adata, key="cell_type"))
    fig("annotation_confidence", "Annotation confidence per cell type",
        lambda: pl.annotation_confidence(adata, key="cell_type"))
    da = tables.get("differential_activity")
    if da is not None and len(da) and pd.to_numeric(da["pvalue"], errors="coerce").notna().any():
        top_set = da.sort_values("pvalue")["gene_set"].iloc[0]
        fig("differential_activity", f"Donor-level activity of {top_set} per cell type, by condition (padj above)",
            lambda: pl.differential_activity(adata, gene_set=top_set))
        fig("volcano", "Donor-level differential pathway activity (effect vs -log10 p), top hits named",
            lambda: pl.volcano(da))
    fig("composition", "Cell-type proportions per donor, by condition, with the composition test's p-values",
        lambda: pl.composition(adata, sample_key=sk, condition_key=ck_key, groupby=groupby,
                               result=tables.get("composition")))
    if "cross_modal_associations" in tables:
        fig("cross_modal", "Associations between cell-level signatures and plasma proteins",
            lambda: pl.cross_modal(tables["cross_modal_associations"]))
    panel = state.get("panel")
    if panel is not None:
        fig("biomarker_roc", "Cross-validated ROC of the biomarker panel", lambda: pl.biomarker_roc(panel))

    # ---- summary.md
    qc = tables.get("qc_report")
    lines = ["# immunomood report", "", f"Generated {time.strftime('%Y-%m-%d %H:%M')} by immunomood.", ""]
    lines += problems_section(report_problems(adata, mdata, figure_failures=failures))
    per_cond = adata.obs.groupby(ck_key, observed=True)[sk].nunique()
    lines += ["## Cohort", "",
              f"- {adata.n_obs:,} cells after QC, {adata.n_vars:,} genes, {adata.obs[sk].nunique()} donors "
              f"({', '.join(f'{k}: {v}' for k, v in per_cond.items())}).", ""]
    if qc is not None:
        before = int(qc["cells_before"].sum()) if "cells_before" in qc else None
        after = int(qc["cells_after"].sum()) if "cells_after" in qc else None
        if before is not None and after is not None:
            lines += ["## Quality control", "", f"- {before:,} cells before, {after:,} after QC "
                      "(per-sample MAD outliers and doublets); every sample is listed in `qc_report.csv`.", ""]
        else:
            lines += ["## Quality control", ""]
        lines += [_fmt_table(qc, 20)]
    if "integration" in adata.uns or "integration_metrics" in adata.uns:
        lines += ["## Integration", ""]
        ig = adata.uns.get("integration")
        if isinstance(ig, dict):
            lines += [f"- scVI on {ig.get('device', '?')}, {ig.get('epochs_run', '?')} epochs, "
                      f"{float(ig.get('time_s', np.nan)):.1f} s.", ""]
        im_ = adata.uns.get("integration_metrics")
        if isinstance(im_, dict) and isinstance(im_.get("metrics"), pd.DataFrame):
            lines += ["Integration metrics (scib-metrics scaling, 0-1, higher is better):", "",
                      _fmt_table(im_["metrics"].reset_index(), 10)]
    if "cell_types" in tables or "cell_type" in adata.obs.columns:
        lines += ["## Annotation", ""]
        share = unassigned_share(adata)
        if share is not None:
            lines += [f"- {100 * share:.1f}% of {adata.n_obs:,} cells Unassigned (lineage confidence below the "
                      "threshold); the same share as the log line of the annotate step.", ""]
        if {"cell_lineage", "cell_type"} <= set(adata.obs.columns):
            n_lin = int((adata.obs["cell_lineage"].astype(str) == "Unassigned").sum())
            n_fine = int((adata.obs["cell_type"].astype(str) == "Unassigned").sum())
            if n_fine > n_lin:
                lines += [f"- A further {n_fine - n_lin:,} cells have a lineage but no finer cell type (cell_type "
                          f"'Unassigned': {n_fine:,} cells in all, as in the table below).", ""]
            lineage_level = (adata.obs["cell_type"].astype(str) == adata.obs["cell_lineage"].astype(str)) & (
                adata.obs["cell_lineage"].astype(str) != "Unassigned")
            if lineage_level.any():
                why = ""
                if "cell_type_reason" in adata.obs.columns:
                    reasons = adata.obs.loc[lineage_level, "cell_type_reason"].astype(str).value_counts()
                    why = " Why: " + "; ".join(f"{r} ({n:,} cells)" for r, n in reasons.head(5).items()) + "."
                lines += [f"- {int(lineage_level.sum()):,} cells are called at the lineage level only: the measured "
                          f"genes cannot separate their subtypes.{why}", ""]
        if "cell_types" in tables:
            lines += [_fmt_table(tables["cell_types"], 25)]
    if da is not None:
        n_tests, n_sig, n_untested = activity_counts(da)
        lines += ["## Differential pathway activity (donor as the unit)", "",
                  f"- {n_tests} tests (cell type x gene set) run; {n_sig} with FDR < 0.05."
                  + (f" {n_untested} cell type x gene set combinations could not be tested (too few samples or "
                     "genes; see the `reason` column of `differential_activity.csv`)." if n_untested else ""), "",
                  _fmt_table(da.sort_values("pvalue")[["group", "gene_set", "effect", "ci_low", "ci_high", "pvalue",
                                                        "padj", "n_case", "n_reference"]], 10)]
    if "composition" in tables:
        lines += ["## Composition", "", _fmt_table(tables["composition"].sort_values("pvalue"), 10)]
    if "cross_modal_associations" in tables:
        assoc = tables["cross_modal_associations"]
        partial = str(assoc["partial_on"].iloc[0]) if "partial_on" in assoc and len(assoc) else ""
        kind = (f"Partial correlations adjusted for {partial} (df = donors - 2 - covariate columns, column `df`)"
                if partial and partial != "nan" else "Correlations (df = donors - 2, column `df`)")
        lines += ["## Plasma proteins vs cell-level signatures", "", f"{kind}; BH FDR over the table.", "",
                  _fmt_table(assoc.sort_values("pvalue"), 10) if len(assoc) else "No association estimated."]
    if "biomarker_auc" in tables:
        a = tables["biomarker_auc"].iloc[0]
        lines += ["## Biomarker panel", "", f"- Cross-validated AUC {a['auc']:.2f} (mean over repeats of the "
                  f"cross-validation; {a['ci_low']:.2f}-{a['ci_high']:.2f} is the 2.5-97.5 percentile range over "
                  "those repeats, the variability due to the splits, not a confidence interval for a new cohort).",
                  ""]
        if "biomarker_features" in tables:
            lines += [_fmt_table(tables["biomarker_features"], 10)]
    lines += ["## Figures", ""] + [f"- `{n}.png`: {t}" for n, t in figures.items()]
    if failures:
        lines += ["", "## Figures that failed", ""] + [f"- `{n}`: {e}" for n, e in failures.items()]
    lines += ["", "## Tables", ""] + [f"- `{n}.csv`" for n in tables]
    (outdir / "summary.md").write_text("\n".join(lines) + "\n")
    state["figures"], state["figure_failures"] = figures, failures
    return outdir
