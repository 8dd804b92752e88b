"""Plots of donor-level differential results: per-donor set scores by condition, volcano."""

from __future__ import annotations

import re
import textwrap
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from ._base import DEFAULT_COLORS as _LEVEL_COLORS
from ._base import fmt_p, new_ax, not_measured, palette, stored_result

if TYPE_CHECKING:
    from matplotlib.axes import Axes


__all__ = ["differential_activity", "volcano"]

_CONTRAST = re.compile(r"^(?P<var>.+?): (?P<case>.+) vs (?P<ref>.+)$")


def _as_list(value) -> list[str]:
    """A stored list of ``params`` (h5ad turns lists into arrays and one item into a str)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in np.ravel(np.asarray(value, dtype=object))]


def _design_levels(params: dict, variable: str | None) -> list[str]:
    """Levels of ``variable`` in the order of the stored contrasts (reference first, then each case)."""
    out: list[str] = []
    for name, kind in zip(_as_list(params.get("contrasts")), _as_list(params.get("contrast_kinds"))):
        m = _CONTRAST.match(name)
        if kind == "contrast" and m and (variable is None or m["var"] == variable):
            out += [lv for lv in (m["ref"], m["case"]) if lv not in out]
    return out


def _stored_activity(adata: AnnData, key: str) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    run = (
        f"Run im.tl.differential_activity(adata, condition_key=..., sample_key=..., groupby=..., "
        f"key_added={key!r}) first: the plot reads the donor scores it stores and computes no test."
    )
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
    st = stored_result(adata, key, parts=("scores",), run=f"im.tl.differential_activity(adata, ..., key_added={key!r})")
    scores = st["scores"]
    missing = [c for c in ("sample", "group", "gene_set", "condition", "score") if c not in scores.columns]
    if missing:
        raise KeyError(f"adata.uns[{key!r}]['scores'] lacks the columns {missing}. {run}")
    res = st.get("results")
    return scores, res if isinstance(res, pd.DataFrame) else None, st["params"]


def differential_activity(
    adata: AnnData,
    *,
    gene_set: str,
    key: str = "differential_activity",
    groupby: str | None = None,
    condition_key: str | None = None,
    sample_key: str | None = None,
    ax=None,
) -> Axes:
    """Per cell type, one point per donor (sample) with its set score, by condition, with the test's padj.

    Reads only what :func:`immunomood.tl.differential_activity` stored (``key_added=key``): the donor scores in
    ``adata.uns[key]["scores"]``, the result table in ``adata.uns[key]["results"]`` (its ``padj`` is written above
    each cell type) and the parameters in ``adata.uns[key]["params"]`` (an h5ad written before this layout, with the
    sibling keys ``key``, ``key + "_scores"`` and ``key + "_params"``, is read too). It computes no test: when they
    are missing it raises an error naming the call to run. Cell types that were not tested (too few samples or
    genes) are shown as "not tested" with the reason, rather than as an empty column.

    Parameters
    ----------
    adata
        The cells, with the stored results.
    gene_set
        Name of the set to show (e.g. ``"complement_classical"``).
    key
        ``key_added`` used with :func:`immunomood.tl.differential_activity`.
    groupby, condition_key, sample_key
        Optional checks: when given, they must be the columns the stored results were computed with.
    ax
        Axes to draw into; a new figure otherwise.

    Returns
    -------
    The matplotlib Axes.
    """
    scores, res, params = _stored_activity(adata, key)
    for name, given in (("groupby", groupby), ("condition_key", condition_key), ("sample_key", sample_key)):
        if given is not None and params.get(name) not in (None, given):
            raise ValueError(
                f"{name}={given!r}, but the results in adata.uns[{key!r}] were computed with "
                f"{name}={params.get(name)!r}. Rerun im.tl.differential_activity(adata, {name}={given!r}, ...) "
                f"(with another key_added to keep both) or leave {name} unset."
            )
    s = scores[scores["gene_set"] == gene_set]
    rows = res[res["gene_set"] == gene_set] if res is not None else None
    if s.empty and (rows is None or rows.empty):
        known = sorted(set(scores["gene_set"]) | (set(res["gene_set"]) if res is not None else set()))
        raise KeyError(f"Gene set {gene_set!r} not in the stored results. Available: {known}.")
    groups = list(pd.unique(rows["group"].astype(str))) if rows is not None and len(rows) else []
    groups += [g for g in pd.unique(s["group"].astype(str)) if g not in groups]
    names, kinds = _as_list(params.get("contrasts")), _as_list(params.get("contrast_kinds"))
    if kinds and kinds[0] == "continuous":
        return _activity_vs_continuous(s, rows, groups, params, names[0] if names else "", gene_set, ax)
    variable = params.get("condition_key") or None
    # the rows of the shown column's level contrasts (several contrasts: one padj line each, in design order)
    shown = [n for n, k in zip(names, kinds) if k == "contrast" and (m := _CONTRAST.match(n)) and m["var"] == variable]
    if rows is not None and "contrast" in rows.columns and shown:
        rows = rows[rows["contrast"].astype(str).isin(shown)]
    levels = _design_levels(params, variable)
    levels += [str(lv) for lv in (params.get("reference"), params.get("case")) if lv and str(lv) not in levels]
    levels += [lv for lv in sorted(pd.unique(s["condition"].astype(str))) if lv not in levels]
    colors = palette(levels, adata=adata, key=variable)
    ax = new_ax(ax, figsize=(max(4, 1.2 * len(groups) + 1), 4))
    rng = np.random.default_rng(0)
    width = 0.7 / max(len(levels), 2)
    labelled: set = set()
    for i, g in enumerate(groups):
        sg = s[s["group"].astype(str) == g]
        row = rows[rows["group"].astype(str) == g] if rows is not None else None
        if sg.empty:
            reason = str(row["reason"].iloc[0]) if row is not None and len(row) and "reason" in row else ""
            short = textwrap.shorten(reason, width=70, placeholder="...") if reason else ""
            ax.text(
                i,
                0.5,
                "not tested" + (":\n" + "\n".join(textwrap.wrap(short, 36)) if short else ""),
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="center",
                fontsize=6,
                color="0.4",
                rotation=90,
            )
            continue
        for j, lv in enumerate(levels):
            v = sg.loc[sg["condition"].astype(str) == str(lv), "score"].to_numpy(dtype=float)
            x0 = i + (j - (len(levels) - 1) / 2) * width
            ax.scatter(
                x0 + rng.uniform(-0.06, 0.06, size=len(v)),
                v,
                s=18,
                color=colors[lv],
                zorder=3,
                label=None if lv in labelled else str(lv),
            )
            labelled.add(lv)
            if len(v):
                ax.hlines(np.mean(v), x0 - 0.12, x0 + 0.12, color="k", lw=1.5, zorder=4)
        if row is not None and len(row):
            if len(shown) > 1:  # one line per contrast: "MDD vs control: padj 0.01"
                one_ref = len({_CONTRAST.match(c)["ref"] for c in shown}) == 1
                txt = "\n".join(
                    f"{_CONTRAST.match(c)['case']}"
                    f"{'' if one_ref else '/' + _CONTRAST.match(c)['ref']}: padj "
                    f"{fmt_p(row.loc[row['contrast'].astype(str) == c, 'padj'].iloc[0])}"
                    for c in shown
                    if (row["contrast"].astype(str) == c).any()
                )
            else:
                txt = f"padj {fmt_p(row['padj'].iloc[0])}"
            ax.text(
                i,
                0.99,
                txt,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=7 if len(shown) < 2 else 6,
            )
    if len(s):
        lo, hi = float(s["score"].min()), float(s["score"].max())
        pad = 0.08 * (hi - lo if hi > lo else 1.0)
        ax.set_ylim(lo - pad, hi + (3 + 1.5 * max(len(shown) - 1, 0)) * pad)  # headroom for the padj text
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=45, ha="right")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel(params.get("groupby") or "cell type")
    ax.set_ylabel(f"{gene_set} score (log2, one point per sample)")
    cond = params.get("condition_key") or "condition"
    method = params.get("method")
    refs = {_CONTRAST.match(c)["ref"] for c in shown}
    what = (
        f"{', '.join(_CONTRAST.match(c)['case'] for c in shown)} vs {next(iter(refs))}"
        if len(shown) > 1 and len(refs) == 1
        else "; ".join(c.split(": ", 1)[1] for c in shown)
        if len(shown) > 1
        else f"{params.get('case', '')} vs {params.get('reference', '')}"
    )
    if len(shown) > 1 and len(refs) > 1:  # several references: each padj line names case and reference
        what += " (padj lines: case/reference)"
    ax.set_title(
        f"{gene_set}: {what} ({cond}), donor as the unit"
        + (f"\npoints: set score per sample; padj: method {method!r}" if method else ""),
        fontsize=9,
    )
    ax.legend(frameon=False, fontsize=8, title=cond, title_fontsize=8)
    return ax


def _activity_vs_continuous(
    s: pd.DataFrame, rows: pd.DataFrame | None, groups: list[str], params: dict, contrast: str, gene_set: str, ax
):
    """Score vs the tested continuous column, one colour per group; each line has the stored effect as its slope."""
    variable = params.get("condition_key") or contrast.replace(" (per unit)", "")
    if rows is not None and "contrast" in rows.columns:
        rows = rows[rows["contrast"].astype(str) == contrast]
    ax = new_ax(ax, figsize=(5.5, 4))
    x_all = pd.to_numeric(s["condition"], errors="coerce")
    untested = []
    for i, g in enumerate(groups):
        sg = s[s["group"].astype(str) == g]
        row = rows[rows["group"].astype(str) == g] if rows is not None else None
        if sg.empty:
            untested.append(g)  # the reasons are in the result table's `reason` column
            continue
        x = x_all[sg.index].to_numpy(dtype=float)
        y = sg["score"].to_numpy(dtype=float)
        color = _LEVEL_COLORS[i % len(_LEVEL_COLORS)]
        label = g
        effect = float(row["effect"].iloc[0]) if row is not None and len(row) and "effect" in row else np.nan
        if row is not None and len(row):
            label += (
                f": {effect:.2g}/unit, padj {fmt_p(row['padj'].iloc[0])}"
                if np.isfinite(effect)
                else f": not tested ({textwrap.shorten(str(row['reason'].iloc[0]), width=40, placeholder='...')})"
            )
        ax.scatter(x, y, s=18, color=color, zorder=3, label=label)
        ok = np.isfinite(x) & np.isfinite(y)
        if np.isfinite(effect) and ok.any():  # the stored effect as the slope, through the group's centroid
            xs = np.array([np.nanmin(x[ok]), np.nanmax(x[ok])])
            ax.plot(xs, y[ok].mean() + effect * (xs - x[ok].mean()), color=color, lw=1.5, zorder=4)
    if untested:
        ax.text(
            0.01,
            0.01,
            textwrap.fill("not tested (see the `reason` column): " + ", ".join(untested), 70),
            transform=ax.transAxes,
            fontsize=6,
            color="0.4",
            va="bottom",
        )
    ax.set_xlabel(f"{variable} (value per sample)")
    ax.set_ylabel(f"{gene_set} score (log2, one point per sample)")
    method = params.get("method")
    ax.set_title(
        f"{gene_set} vs {variable}, donor as the unit\npoints: set score per sample; line slope: "
        "tested effect per unit" + (f"\n(padj: method {method!r})" if method else ""),
        fontsize=9,
    )
    ax.legend(
        frameon=False,
        fontsize=7,
        title=params.get("groupby") or "group",
        title_fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )
    return ax


def _spread(pos: np.ndarray, gap: float, lo: float = 0.03, hi: float = 0.97) -> np.ndarray:
    """Label heights (axes fraction) as close as possible to ``pos`` with at least ``gap`` between any two
    (labels of the top hits never overlap), within [lo, hi]; the order of ``pos`` is kept."""
    order = np.argsort(-pos, kind="stable")
    out = np.clip(pos[order].astype(float), lo, hi)
    for i in range(1, len(out)):  # top-down: push each label below the previous one
        out[i] = min(out[i], out[i - 1] - gap)
    if len(out) and out[-1] < lo:  # bottom-up: lift back into the axes
        out[-1] = lo
        for i in range(len(out) - 2, -1, -1):
            out[i] = max(out[i], out[i + 1] + gap)
    res = np.empty_like(out)
    res[order] = out
    return res


def volcano(
    result: pd.DataFrame | AnnData,
    *,
    key: str = "differential_activity",
    contrast: str | None = None,
    alpha: float = 0.05,
    n_labels: int = 10,
    label: bool = True,
    ax=None,
) -> Axes:
    """Volcano plot of a result table of :func:`immunomood.tl.differential_activity` (``effect``) or
    :func:`immunomood.tl.differential_expression` (``log2fc``), with the top hits named.

    The ``n_labels`` tests with the smallest p-values are labelled (``cell type | gene set`` or ``gene``), whether
    or not they pass ``alpha``; a dashed line marks the p-value at which the Benjamini-Hochberg ``padj`` crosses
    ``alpha`` (none when no test passes). Rows without a p-value (not tested) are counted in the title.

    Parameters
    ----------
    result
        The DataFrame returned by the test, or the AnnData it was stored in (``adata.uns[key]["results"]``).
    key
        With an AnnData: ``key_added`` of the test (``"differential_activity"`` or
        ``"differential_expression"``).
    contrast
        With several contrasts in ``result`` (its ``contrast`` column), the one to show (e.g.
        ``"condition: MDD vs control"``); ``None``: every row, each label naming its contrast.
    alpha
        Adjusted p-value threshold for highlighting.
    n_labels
        Label this many points (smallest p-values first).
    label
        ``False``: no labels at all.
    ax
        Axes to draw into.

    Returns
    -------
    The matplotlib Axes.
    """
    if isinstance(result, AnnData):
        func = "differential_expression" if "expression" in key else "differential_activity"
        result = stored_result(result, key, run=f"im.tl.{func}(adata, ..., key_added={key!r})")["results"]
    if not isinstance(result, pd.DataFrame):
        raise TypeError(
            f"`result` must be the DataFrame returned by a test (or the AnnData holding it), got "
            f"{type(result).__name__}."
        )
    x_col = "effect" if "effect" in result else "log2fc" if "log2fc" in result else None
    if x_col is None or "pvalue" not in result:
        raise KeyError(f"`result` needs columns 'effect' (or 'log2fc') and 'pvalue'; has {list(result.columns)}.")
    if isinstance(n_labels, bool) or not isinstance(n_labels, int | np.integer) or n_labels < 0:
        raise ValueError(f"n_labels must be an integer >= 0, got {n_labels!r}.")
    if not 0 < float(alpha) < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}.")
    contrasts = list(pd.unique(result["contrast"].astype(str))) if "contrast" in result.columns else []
    if contrast is not None:
        if contrast not in contrasts:
            raise KeyError(f"contrast={contrast!r} is not in the result's 'contrast' column. Available: {contrasts}.")
        result = result[result["contrast"].astype(str) == contrast]
        contrasts = [contrast]
    per_unit = bool(contrasts) and all(c.endswith("(per unit)") for c in contrasts)
    p_all = pd.to_numeric(result["pvalue"], errors="coerce").to_numpy(dtype=float)
    x_all = pd.to_numeric(result[x_col], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(p_all) & np.isfinite(x_all)
    r = result[ok]
    n_untested = int((~ok).sum())
    ax = new_ax(ax)
    ax.set_xlabel(
        "effect per unit (log2 per unit of the tested column)"
        if per_unit and x_col == "effect"
        else "effect (log2 fold change, case vs reference)"
        if x_col == "effect"
        else "log2 fold change"
    )
    ax.set_ylabel("-log10 p-value")
    if r.empty:
        not_measured(ax, f"no test with a p-value ({len(result)} rows, none tested)")
        return ax
    y = -np.log10(np.maximum(r["pvalue"].to_numpy(dtype=float), 1e-300))
    x = r[x_col].to_numpy(dtype=float)
    sig = (pd.to_numeric(r["padj"], errors="coerce") < alpha).to_numpy() if "padj" in r else np.zeros(len(r), bool)
    ax.scatter(x[~sig], y[~sig], s=12, color="grey", alpha=0.6, label=f"padj >= {alpha:g}")
    ax.scatter(x[sig], y[sig], s=16, color="#C44E52", label=f"padj < {alpha:g} ({int(sig.sum())})")
    if sig.any():
        thr = -np.log10(max(float(r["pvalue"].to_numpy(dtype=float)[sig].max()), 1e-300))
        ax.axhline(thr, color="#C44E52", lw=0.8, ls="--", label=f"FDR {alpha:g}")
    ymax = max(float(y.max()) * 1.1, 1.0)
    ax.set_ylim(0, ymax)
    if label and n_labels:
        name = "gene_set" if "gene_set" in r else "gene" if "gene" in r else None
        top = np.argsort(-y, kind="stable")[:n_labels]
        texts = [
            (
                f"{r.iloc[k]['group']} | {r.iloc[k][name]}"
                if name and "group" in r
                else str(r.iloc[k][name])
                if name
                else str(r.index[k])
            )
            for k in top
        ]
        if len(contrasts) > 1:  # several blocks in one plot: say which contrast each point is
            texts = [f"{t} | {r.iloc[k]['contrast']}" for t, k in zip(texts, top)]
        for k, txt, ya in zip(top, texts, _spread(y[top] / ymax, gap=0.055)):
            right = x[k] > np.median(x)
            ax.annotate(
                txt,
                (x[k], y[k]),
                xytext=(-6 if right else 6, ya),
                textcoords=("offset points", "axes fraction"),
                fontsize=6,
                va="center",
                ha="right" if right else "left",
                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5", "shrinkA": 0, "shrinkB": 2},
            )
    ax.axvline(0, color="grey", lw=0.5)
    title = f"{len(r)} tests" + (
        f", {contrasts[0]}" if contrast is not None else f" in {len(contrasts)} contrasts" if len(contrasts) > 1 else ""
    )
    if n_untested:
        title += f" ({n_untested} rows not tested)"
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax
