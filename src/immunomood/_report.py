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


def _stored_params(adata, key: str) -> dict:
    """``adata.uns[key]["params"]`` of a stored ``tl`` result (``{}`` when absent); an h5ad written before the
    one-result convention kept them in ``adata.uns[key + "_params"]`` (differential_activity), read as well."""
    st = adata.uns.get(key)
    params = st.get("params", {}) if isinstance(st, dict) else adata.uns.get(key + "_params", {})
    return dict(params) if isinstance(params, dict) else {}


def contrast_kinds(table: pd.DataFrame | None, params: dict) -> dict[str, str]:
    """``{contrast: kind}`` in the order of the table (kinds from ``params``; "continuous" for a "(per unit)"
    name when ``params`` has none)."""
    if table is None or "contrast" not in table.columns or not len(table):
        return {}
    names = [str(c) for c in pd.unique(table["contrast"].astype(str))]
    stored = dict(zip(_as_list(params.get("contrasts")), _as_list(params.get("contrast_kinds"))))
    return {c: stored.get(c, "continuous" if c.endswith("(per unit)") else "contrast") for c in names}


def design_lines(params: dict, kinds: dict[str, str]) -> list[str]:
    """The design as the summary states it: formula, random effect, what each contrast tests."""
    if not params.get("design"):
        return []
    out = [
        f"- Design `{params['design']}`"
        + (f", random intercept per {params['random_effect']!r}" if params.get("random_effect") else "")
        + f"; method {params.get('method', '?')!r}. Tested: "
        + "; ".join(
            f"{c} ({'effect per unit of the column, log2 per unit' if k == 'continuous' else k})"
            for c, k in kinds.items()
        )
        + "."
    ]
    return out + [""]


def contrast_sections(
    table: pd.DataFrame, kinds: dict[str, str], columns: list[str], *, level: str = "###", n: int = 10
) -> list[str]:
    """One sub-section per contrast (top ``n`` rows by p-value); a single contrast gets the table alone.

    A continuous test says that its effect is per unit (with the 95% CI); a level contrast shows the samples per
    arm (``n_case``, ``n_reference``), a continuous test the samples in the model (``n_samples``)."""
    if not kinds:
        cols = [c for c in columns + ["n_case", "n_reference"] if c in table.columns]
        return [_fmt_table(table.sort_values("pvalue")[list(dict.fromkeys(cols))], n)]
    out: list[str] = []
    for c, kind in kinds.items():
        sub = table[table["contrast"].astype(str) == c]
        extra = ["n_samples"] if kind != "contrast" else ["n_case", "n_reference"]
        cols = [x for x in dict.fromkeys(columns + extra) if x in sub.columns and x != "contrast"]
        if len(kinds) > 1 or kind != "contrast":
            n_sig = int((pd.to_numeric(sub.get("padj"), errors="coerce") < 0.05).sum()) if "padj" in sub else 0
            out += [f"{level} {c}", ""]
            if kind == "continuous":
                out += [
                    (
                        "Effect per unit of the column (log2 per unit for activity), with its 95% CI; "
                        f"{n_sig} rows with FDR < 0.05."
                    ),
                    "",
                ]
            else:
                out += [f"{n_sig} rows with FDR < 0.05.", ""]
        out += [_fmt_table(sub.sort_values("pvalue")[cols], n)]
    return out


def _baseline_text(value: Any) -> str:
    """``params["baseline"]`` of a prediction (a (column, value) pair, a dict or None) as ``column = value``."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "none")):
        return ""
    if isinstance(value, dict) and len(value) == 1:
        ((k, v),) = value.items()
        return f"{k} = {v}"
    items = _as_list(value)
    return f"{items[0]} = {items[1]}" if len(items) == 2 else ", ".join(items)


def prediction_lines(pred: dict) -> list[str]:
    """Summary of :func:`immunomood.tl.predict_response`: statistic, permutation p, calibration, stable features."""
    params, metrics = pred.get("params", {}), pred.get("metrics", {})
    binary = params.get("outcome_type") == "binary"
    stat = "auc" if binary else "r2"
    name = "AUC" if binary else "R^2"

    def num(key: str) -> str:
        v = metrics.get(key)
        try:
            return f"{float(v):.3g}"
        except (TypeError, ValueError):
            return "NA"

    spread = _as_list(metrics.get(f"{stat}_repeat_spread"))
    spread_txt = (
        (
            f" (spread over CV repeats {float(spread[0]):.2f}-{float(spread[1]):.2f}: the splits' "
            "variability, not a confidence interval)"
        )
        if len(spread) == 2
        else ""
    )
    n_perm = metrics.get("n_permutations", params.get("n_permutations"))
    p = metrics.get("pvalue")
    p_txt = (
        (f"permutation p = {float(p):.3g} ({n_perm} permutations of the outcome, the whole nested CV rerun each time)")
        if p is not None and pd.notna(p)
        else "no permutation test (n_permutations = 0)"
    )
    out = [
        "## Response prediction",
        "",
        f"- Outcome {params.get('outcome', '?')!r} ({params.get('outcome_type', '?')}"
        + (f", positive class {params.get('positive')!r}" if binary and params.get("positive") is not None else "")
        + f"), {params.get('n_donors', len(pred.get('results', [])))} donors"
        + (
            f", baseline rows {_baseline_text(params.get('baseline'))}"
            if _baseline_text(params.get("baseline"))
            else ""
        )
        + f"; model {params.get('model', '?')!r}, nested cross-validation by donor "
        f"({params.get('n_splits', '?')} folds x {params.get('n_repeats', '?')} repeats).",
        f"- Cross-validated {name} {num(stat)}{spread_txt}; {p_txt}.",
    ]
    if binary:
        out.append(
            f"- Calibration of the out-of-fold probabilities: intercept {num('calibration_intercept')}, slope "
            f"{num('calibration_slope')} (ideal 0 and 1), Brier score {num('brier')}."
        )
    else:
        out.append(f"- Pearson r of observed vs predicted {num('pearson_r')}.")
    out.append("")
    cal = pred.get("calibration")
    if binary and isinstance(cal, pd.DataFrame) and len(cal):
        out += ["Calibration (bins of the mean out-of-fold probability):", "", _fmt_table(cal, 10)]
    feats = pred.get("features")
    if isinstance(feats, pd.DataFrame) and len(feats):
        f = (
            feats
            if isinstance(feats.index, pd.RangeIndex)
            else feats.rename_axis(feats.index.name or "feature").reset_index()
        )
        out += ["Features most often selected across the outer folds (stability):", "", _fmt_table(f, 10)]
    return out


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
    fig = sc.pl.umap(
        small,
        color=keys,
        title=[f"{k} (UMAP of {rep})" for k in keys],
        ncols=2,
        wspace=0.55,
        show=False,
        return_fig=True,
    )
    return fig


def _integration_figure(adata, *, batch_key: str, label_key: str):
    """pl.integration of X_scVI, from what the annotate stage stored with tl.integration_metrics."""
    from . import pl

    st = adata.uns.get("integration_metrics")
    params = st.get("params", {}) if isinstance(st, dict) else {}
    stored = (
        params.get("batch_key") == batch_key
        and params.get("label_key") == label_key
        and "X_scVI" in list(params.get("embedding", []))
        and bool(params.get("umap_unintegrated", ""))
    )
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
            record_problem(
                adata, f"The proteomics checkpoint could not be read for the report: {type(e).__name__}: {e}"
            )
    tables: dict[str, pd.DataFrame] = dict(state.get("tables", {}))
    for stage, names in {
        "qc": ["qc_report"],
        "annotate": ["cell_types"],
        "differential": ["differential_activity", "composition", "differential_expression"],
        "proteomics": ["cross_modal_associations", "biomarker_features", "biomarker_predictions", "biomarker_auc"],
    }.items():
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
        except Exception as e:  # noqa: BLE001 - a figure must never take the whole report down; it is listed as failed
            logger.error("figure %s failed: %s: %s", name, type(e).__name__, e)
            failures[name] = f"{type(e).__name__}: {e}"

    fig("qc_violins", "QC metrics per sample with the MAD thresholds", lambda: pl.qc(adata, sample_key=sk))
    fig("qc_report", "Cells kept and removed per sample and reason", lambda: pl.qc_report(adata))
    if "X_umap" in adata.obsm:
        colour_by = [sk, ck_key, "cell_type"] + ([bk] if bk and bk != sk else [])
        fig(
            "umap",
            "UMAP of the cells coloured by donor, condition, cell type" + (" and batch" if bk and bk != sk else ""),
            lambda: _umap_figure(adata, colour_by),
        )
    if bk and "X_scVI" in adata.obsm and "cell_type" in adata.obs.columns:
        fig(
            "integration",
            "UMAP before and after scVI integration, by batch and cell type, with the metrics",
            lambda: _integration_figure(adata, batch_key=bk, label_key="cell_type"),
        )
    fig("annotation", "Marker genes per annotated cell type", lambda: pl.annotation(adata, key="cell_type"))
    fig(
        "annotation_confidence",
        "Annotation confidence per cell type",
        lambda: pl.annotation_confidence(adata, key="cell_type"),
    )
    da = tables.get("differential_activity")
    da_params = _stored_params(adata, "differential_activity")
    kinds = contrast_kinds(da, da_params)
    if da is not None and len(da) and pd.to_numeric(da["pvalue"], errors="coerce").notna().any():
        first = next(iter(kinds), None)
        shown = da[da["contrast"].astype(str) == first] if first is not None and "contrast" in da else da
        shown = shown if pd.to_numeric(shown["pvalue"], errors="coerce").notna().any() else da
        top_set = shown.sort_values("pvalue")["gene_set"].iloc[0]
        what = f"against {first}" if kinds.get(first) == "continuous" else "by condition"
        fig(
            "differential_activity",
            f"Donor-level activity of {top_set} per cell type, {what} (padj above)",
            lambda: pl.differential_activity(adata, gene_set=top_set),
        )
        if len(kinds) > 1:
            for i, c in enumerate(kinds, start=1):
                fig(
                    f"volcano_{i}" if i > 1 else "volcano",
                    f"Donor-level differential pathway activity, {c} (effect vs -log10 p), top hits named",
                    lambda c=c: pl.volcano(da, contrast=c),
                )
        else:
            fig(
                "volcano",
                "Donor-level differential pathway activity (effect vs -log10 p), top hits named",
                lambda: pl.volcano(da),
            )
    fig(
        "composition",
        "Cell-type proportions per donor, by condition, with the composition test's p-values",
        lambda: pl.composition(
            adata, sample_key=sk, condition_key=ck_key, groupby=groupby, result=tables.get("composition")
        ),
    )
    if "cross_modal_associations" in tables:
        fig(
            "cross_modal",
            "Associations between cell-level signatures and plasma proteins",
            lambda: pl.cross_modal(tables["cross_modal_associations"]),
        )
    panel = state.get("panel")
    if panel is not None:
        fig("biomarker_roc", "Cross-validated ROC of the biomarker panel", lambda: pl.biomarker_roc(panel))
    prediction = state.get("prediction")
    if prediction is not None:
        binary = prediction["params"].get("outcome_type") == "binary"
        fig(
            "predict_response",
            ("Out-of-fold ROC" if binary else "Observed vs out-of-fold predicted")
            + f" of {prediction['params'].get('outcome', 'the outcome')}, with the permutation null",
            lambda: pl.predict_response(prediction),
        )
        for name in ("predict_features", "predict_calibration"):
            t = prediction.get(name.split("_", 1)[1])
            if isinstance(t, pd.DataFrame) and name not in tables:
                tables[name] = t.reset_index() if name == "predict_features" and t.index.name else t
                tables[name].to_csv(outdir / f"{name}.csv", index=False)
        res = prediction.get("results")
        if isinstance(res, pd.DataFrame) and "predict_results" not in tables:
            tables["predict_results"] = res.rename_axis(res.index.name or "donor").reset_index()
            tables["predict_results"].to_csv(outdir / "predict_results.csv", index=False)

    # ---- summary.md
    qc = tables.get("qc_report")
    lines = ["# immunomood report", "", f"Generated {time.strftime('%Y-%m-%d %H:%M')} by immunomood.", ""]
    problems = report_problems(adata, mdata, figure_failures=failures)
    problems += [m for m in state.get("predict_problems", []) or [] if m not in problems]
    lines += problems_section(problems)
    per_cond = adata.obs.groupby(ck_key, observed=True)[sk].nunique()
    re_key = cfg["differential"].get("random_effect")
    unit = "donors"
    if re_key and re_key in adata.obs.columns:  # repeated samples: say both
        unit = f"samples of {adata.obs[re_key].nunique()} {re_key}s"
    lines += [
        "## Cohort",
        "",
        (
            f"- {adata.n_obs:,} cells after QC, {adata.n_vars:,} genes, {adata.obs[sk].nunique()} {unit} "
            f"({', '.join(f'{k}: {v}' for k, v in per_cond.items())})."
        ),
        "",
    ]
    if qc is not None:
        before = int(qc["cells_before"].sum()) if "cells_before" in qc else None
        after = int(qc["cells_after"].sum()) if "cells_after" in qc else None
        if before is not None and after is not None:
            lines += [
                "## Quality control",
                "",
                (
                    f"- {before:,} cells before, {after:,} after QC "
                    "(per-sample MAD outliers and doublets); every sample is listed in `qc_report.csv`."
                ),
                "",
            ]
        else:
            lines += ["## Quality control", ""]
        lines += [_fmt_table(qc, 20)]
    if "integration" in adata.uns or "integration_metrics" in adata.uns:
        lines += ["## Integration", ""]
        ig = adata.uns.get("integration")
        if isinstance(ig, dict):
            lines += [
                (
                    f"- scVI on {ig.get('device', '?')}, {ig.get('epochs_run', '?')} epochs, "
                    f"{float(ig.get('time_s', np.nan)):.1f} s."
                ),
                "",
            ]
        im_ = adata.uns.get("integration_metrics")
        if isinstance(im_, dict) and isinstance(im_.get("metrics"), pd.DataFrame):
            lines += [
                "Integration metrics (scib-metrics scaling, 0-1, higher is better):",
                "",
                _fmt_table(im_["metrics"].reset_index(), 10),
            ]
    if "cell_types" in tables or "cell_type" in adata.obs.columns:
        lines += ["## Annotation", ""]
        share = unassigned_share(adata)
        if share is not None:
            lines += [
                (
                    f"- {100 * share:.1f}% of {adata.n_obs:,} cells Unassigned (lineage confidence below the "
                    "threshold); the same share as the log line of the annotate step."
                ),
                "",
            ]
        if {"cell_lineage", "cell_type"} <= set(adata.obs.columns):
            n_lin = int((adata.obs["cell_lineage"].astype(str) == "Unassigned").sum())
            n_fine = int((adata.obs["cell_type"].astype(str) == "Unassigned").sum())
            if n_fine > n_lin:
                lines += [
                    (
                        f"- A further {n_fine - n_lin:,} cells have a lineage but no finer cell type (cell_type "
                        f"'Unassigned': {n_fine:,} cells in all, as in the table below)."
                    ),
                    "",
                ]
            lineage_level = (adata.obs["cell_type"].astype(str) == adata.obs["cell_lineage"].astype(str)) & (
                adata.obs["cell_lineage"].astype(str) != "Unassigned"
            )
            if lineage_level.any():
                why = ""
                if "cell_type_reason" in adata.obs.columns:
                    reasons = adata.obs.loc[lineage_level, "cell_type_reason"].astype(str).value_counts()
                    why = " Why: " + "; ".join(f"{r} ({n:,} cells)" for r, n in reasons.head(5).items()) + "."
                lines += [
                    (
                        f"- {int(lineage_level.sum()):,} cells are called at the lineage level only: the measured "
                        f"genes cannot separate their subtypes.{why}"
                    ),
                    "",
                ]
        if "cell_types" in tables:
            lines += [_fmt_table(tables["cell_types"], 25)]
    if da is not None:
        n_tests, n_sig, n_untested = activity_counts(da)
        lines += ["## Differential pathway activity (donor as the unit)", ""]
        lines += design_lines(da_params, kinds)
        unit = "cell type x gene set" + (" x contrast" if len(kinds) > 1 else "")
        lines += [
            f"- {n_tests} tests ({unit}) run; {n_sig} with FDR < 0.05."
            + (
                f" {n_untested} {unit} combinations could not be tested (too few samples or genes; see the "
                "`reason` column of `differential_activity.csv`)."
                if n_untested
                else ""
            )
            + (" Benjamini-Hochberg over the whole table (every contrast)." if len(kinds) > 1 else ""),
            "",
        ]
        lines += contrast_sections(da, kinds, ["group", "gene_set", "effect", "ci_low", "ci_high", "pvalue", "padj"])
    if "composition" in tables:
        comp = tables["composition"]
        lines += ["## Composition", ""]
        if "contrast" in comp.columns and comp["contrast"].nunique() > 1:
            cols = [
                c
                for c in (
                    "group",
                    "effect",
                    "ci_low",
                    "ci_high",
                    "pvalue",
                    "padj",
                    "prop_case",
                    "prop_reference",
                    "note",
                )
                if c in comp.columns
            ]
            lines += contrast_sections(comp, contrast_kinds(comp, {}), cols, level="###")
        else:
            lines += [_fmt_table(comp.sort_values("pvalue"), 10)]
    if "cross_modal_associations" in tables:
        assoc = tables["cross_modal_associations"]
        partial = str(assoc["partial_on"].iloc[0]) if "partial_on" in assoc and len(assoc) else ""
        kind = (
            f"Partial correlations adjusted for {partial} (df = donors - 2 - covariate columns, column `df`)"
            if partial and partial != "nan"
            else "Correlations (df = donors - 2, column `df`)"
        )
        lines += [
            "## Plasma proteins vs cell-level signatures",
            "",
            f"{kind}; BH FDR over the table.",
            "",
            _fmt_table(assoc.sort_values("pvalue"), 10) if len(assoc) else "No association estimated.",
        ]
    if "biomarker_auc" in tables:
        a = tables["biomarker_auc"].iloc[0]
        lines += [
            "## Biomarker panel",
            "",
            (
                f"- Cross-validated AUC {a['auc']:.2f} (mean over repeats of the "
                f"cross-validation; {a['ci_low']:.2f}-{a['ci_high']:.2f} is the 2.5-97.5 percentile range over "
                "those repeats, the variability due to the splits, not a confidence interval for a new cohort)."
            ),
            "",
        ]
        if "biomarker_features" in tables:
            lines += [_fmt_table(tables["biomarker_features"], 10)]
    p_cfg = cfg["predict"] if "predict" in cfg.data else {"outcome": ""}
    if prediction is not None:
        lines += prediction_lines(prediction)
    elif p_cfg["outcome"].strip():
        lines += ["## Response prediction", "", f"- Not run for {p_cfg['outcome']!r}: see the problems above.", ""]
    lines += ["## Figures", ""] + [f"- `{n}.png`: {t}" for n, t in figures.items()]
    if failures:
        lines += ["", "## Figures that failed", ""] + [f"- `{n}`: {e}" for n, e in failures.items()]
    lines += ["", "## Tables", ""] + [f"- `{n}.csv`" for n in tables]
    (outdir / "summary.md").write_text("\n".join(lines) + "\n")
    state["figures"], state["figure_failures"] = figures, failures
    return outdir
