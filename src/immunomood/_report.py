"""The report of an end-to-end run: key figures (PNG), result tables (CSV) and ``summary.md``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._settings import logger


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


def write_report(cfg, ck, state: dict) -> Path:
    """Write ``<outdir>/report/``: figures, tables and ``summary.md``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from . import pl, tl

    inp = cfg["input"]
    outdir = cfg.outdir / "report"
    outdir.mkdir(parents=True, exist_ok=True)
    adata = state.get("adata")
    if adata is None:
        adata = ck.read_adata("differential")
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
    if bk and "X_scVI" in adata.obsm:
        fig("integration", "UMAP before and after scVI integration, by batch and cell type",
            lambda: pl.integration(adata, batch_key=bk, label_key="cell_type"))
    fig("annotation", "Marker genes per annotated cell type", lambda: pl.annotation(adata, key="cell_type"))
    fig("annotation_confidence", "Annotation confidence per cell type",
        lambda: pl.annotation_confidence(adata, key="cell_type"))
    da = tables.get("differential_activity")
    if da is not None and len(da):
        top_set = da.sort_values("pvalue")["gene_set"].iloc[0]
        fig("differential_activity", f"Donor-level activity of {top_set} per cell type, by condition",
            lambda: pl.differential_activity(adata, gene_set=top_set, groupby=groupby, condition_key=ck_key,
                                             sample_key=sk))
        fig("volcano", "Donor-level differential pathway activity (effect vs -log10 p)", lambda: pl.volcano(da))
    fig("composition", "Cell-type proportions per donor, by condition",
        lambda: pl.composition(adata, sample_key=sk, condition_key=ck_key, groupby=groupby))
    if "cross_modal_associations" in tables:
        fig("cross_modal", "Associations between cell-level signatures and plasma proteins",
            lambda: pl.cross_modal(tables["cross_modal_associations"]))
    panel = state.get("panel")
    if panel is not None:
        fig("biomarker_roc", "Cross-validated ROC of the biomarker panel", lambda: pl.biomarker_roc(panel))

    # ---- summary.md
    qc = tables.get("qc_report")
    lines = [f"# immunomood report", "", f"Generated {time.strftime('%Y-%m-%d %H:%M')} by immunomood.", ""]
    lines += ["## Cohort", "",
              f"- {adata.n_obs:,} cells after QC, {adata.n_vars:,} genes, "
              f"{adata.obs[sk].nunique()} donors ({', '.join(f'{k}: {v}' for k, v in adata.obs.groupby(ck_key, observed=True)[sk].nunique().items())}).",
              ""]
    if qc is not None:
        before = qc["cells_before"].sum() if "cells_before" in qc else np.nan
        after = qc["cells_after"].sum() if "cells_after" in qc else np.nan
        lines += ["## Quality control", "", f"- {before:,} cells before, {after:,} after QC "
                  "(per-sample MAD outliers and doublets); every sample is listed in `qc_report.csv`.", "",
                  _fmt_table(qc, 20)]
    if "integration" in adata.uns:
        ig = adata.uns["integration"]
        lines += ["## Integration", "", f"- scVI on {ig.get('device', '?')}, {ig.get('epochs_run', '?')} epochs, "
                  f"{float(ig.get('time_s', np.nan)):.1f} s." if isinstance(ig, dict) else "- scVI", ""]
    if "cell_types" in tables:
        lines += ["## Annotation", "", _fmt_table(tables["cell_types"], 25)]
    if da is not None:
        sig = da[da["padj"] < 0.05]
        lines += ["## Differential pathway activity (donor as the unit)", "",
                  f"- {len(da)} cell type x gene set tests; {len(sig)} with FDR < 0.05.", "",
                  _fmt_table(da.sort_values("pvalue")[["group", "gene_set", "effect", "ci_low", "ci_high", "pvalue",
                                                        "padj", "n_case", "n_reference"]], 10)]
    if "composition" in tables:
        lines += ["## Composition", "", _fmt_table(tables["composition"].sort_values("pvalue"), 10)]
    if "cross_modal_associations" in tables:
        lines += ["## Plasma proteins vs cell-level signatures", "",
                  _fmt_table(tables["cross_modal_associations"].sort_values("pvalue"), 10)]
    if "biomarker_auc" in tables:
        a = tables["biomarker_auc"].iloc[0]
        lines += ["## Biomarker panel", "", f"- Cross-validated AUC {a['auc']:.2f} "
                  f"(95% interval {a['ci_low']:.2f}-{a['ci_high']:.2f}).", ""]
        if "biomarker_features" in tables:
            lines += [_fmt_table(tables["biomarker_features"], 10)]
    lines += ["## Figures", ""] + [f"- `{n}.png`: {t}" for n, t in figures.items()]
    if failures:
        lines += ["", "## Figures that failed", ""] + [f"- `{n}`: {e}" for n, e in failures.items()]
    lines += ["", "## Tables", ""] + [f"- `{n}.csv`" for n in tables]
    (outdir / "summary.md").write_text("\n".join(lines) + "\n")
    state["figures"], state["figure_failures"] = figures, failures
    return outdir
