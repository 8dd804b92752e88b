"""Plot of :func:`immunomood.tl.predict_response`: out-of-fold ROC or observed vs predicted, with the permutation null."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from ._base import fmt, fmt_p, new_ax, new_axes, not_measured, roc_axes, stored_result

__all__ = ["predict_response"]

_KEYS = ("params", "results", "metrics", "null")


def _stored(adata, key: str) -> dict:
    """The stored result of :func:`immunomood.tl.predict_response`.

    From ``uns[key]`` of an AnnData / MuData (``_base.stored_result``), a ResponsePrediction or its dict (as the
    command line's report keeps it).
    """
    if hasattr(adata, "as_dict") and hasattr(adata, "metrics"):
        stored = adata.as_dict()
    elif isinstance(adata, Mapping):
        stored = dict(adata)
    elif hasattr(adata, "uns"):
        stored = stored_result(adata, key, run=f"im.tl.predict_response(adata, outcome=..., key_added={key!r})")
    else:
        raise TypeError(
            "`adata` must be an AnnData / MuData holding uns[key] from im.tl.predict_response, or its "
            f"ResponsePrediction; got {type(adata).__name__}."
        )
    missing = [k for k in _KEYS if k not in stored]
    if missing:
        raise KeyError(f"uns[{key!r}] is not a result of im.tl.predict_response (missing {missing}).")
    return stored


def _null_hist(ax, null: np.ndarray, observed: float, pvalue, label: str, color: str, small: bool = False) -> None:
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if null.size == 0:
        not_measured(ax, "no permutations\n(n_permutations=0)")
        return
    lo = min(null.min(), observed)
    hi = max(null.max(), observed)
    bins = np.linspace(lo, hi + 1e-9, 21 if not small else 13)
    ax.hist(null, bins=bins, color="0.7", edgecolor="white", lw=0.5)
    ax.axvline(observed, color=color, lw=2)
    fs = 7 if small else 9
    ax.set_xlabel(f"{label} (permuted)" if not small else label, fontsize=fs)
    ax.tick_params(labelsize=fs - 1)
    if small:
        ax.set_yticks([])
        ax.set_title(f"null, p={fmt_p(pvalue)}", fontsize=fs)
    else:
        ax.set_ylabel("permutations")
        ax.set_title(f"permutation null (n={null.size}): p={fmt_p(pvalue)}", fontsize=10)


def predict_response(
    adata,
    key: str = "predict_response",
    *,
    ax=None,
    null: Literal["panel", "inset"] | None = "panel",
    show_repeats: bool = True,
    color: str = "C0",
):
    """Out-of-fold ROC curve (binary) or observed vs predicted (continuous), with the permutation null.

    Reads only what :func:`immunomood.tl.predict_response` stored (no model is fitted). Binary outcome: the ROC
    curve of the out-of-fold probabilities averaged over repeats (thick) and of each repeat (thin), the chance line
    and the AUC (mean over repeats, with the spread over CV repeats, which is not a confidence interval).
    Continuous outcome: observed against mean out-of-fold predicted value per donor, the identity line, R^2 and
    Pearson r. The permutation null (histogram of the statistic under permuted outcomes, the observed value as a
    line, the permutation p-value) is drawn as a second panel or as an inset.

    Parameters
    ----------
    adata
        AnnData or MuData with ``uns[key]`` written by :func:`immunomood.tl.predict_response`, or the
        :class:`~immunomood.tl.ResponsePrediction` it returned.
    key
        Key of ``uns``.
    ax
        ``None``: a new figure. One Axes: the main panel is drawn there and the null, if any, as an inset. Two Axes
        (a sequence) with ``null="panel"``: the main panel and the null.
    null
        ``"panel"``: a second panel next to the main one; ``"inset"``: an inset histogram in the main panel;
        ``None``: not drawn.
    show_repeats
        Draw each repeat's ROC curve (binary).
    color
        Colour of the curve / points and of the observed statistic.

    Returns
    -------
    The matplotlib Axes (one panel), or the Figure when the null is a second panel.
    """
    from sklearn.metrics import roc_curve  # a curve of stored predictions: nothing is fitted

    if null not in ("panel", "inset", None):
        raise ValueError(f"`null` must be 'panel', 'inset' or None, got {null!r}.")
    st = _stored(adata, key)
    params, res, metrics = st["params"], st["results"], st["metrics"]
    if not isinstance(res, pd.DataFrame) or "prediction" not in res.columns or "y" not in res.columns:
        raise KeyError(f"uns[{key!r}]['results'] lacks the 'y' / 'prediction' columns of im.tl.predict_response.")
    binary = params.get("outcome_type") == "binary"
    null_vals = np.asarray(st["null"], dtype=float).ravel()
    fig = ax_null = None
    several = isinstance(ax, Sequence | np.ndarray)
    if null == "panel" and (ax is None or several):
        fig, (ax, ax_null) = new_axes(
            ax,
            2,
            what="ROC or observed vs predicted, and the permutation null",
            figsize=(8.5, 4),
            gridspec_kw={"width_ratios": [1.1, 1]},
        )
    else:
        if several:
            raise ValueError("Pass one Axes (or ax=None) unless null='panel', which takes two.")
        ax = new_ax(ax, figsize=(4.5, 4.2))
    y = res["y"].to_numpy(dtype=float)
    pred = res["prediction"].to_numpy(dtype=float)
    rep_cols = [c for c in res.columns if str(c).startswith("oof_")]
    stat_name = "AUC" if binary else "R²"
    stat = metrics.get("auc" if binary else "r2", np.nan)
    spread = np.asarray(metrics.get("auc_repeat_spread" if binary else "r2_repeat_spread", [np.nan, np.nan]))
    pvalue = metrics.get("pvalue", np.nan)
    if binary:
        if show_repeats:
            for c in rep_cols:
                fpr, tpr, _ = roc_curve(y, res[c].to_numpy(dtype=float))
                ax.plot(fpr, tpr, color=color, alpha=0.2, lw=0.7)
        fpr, tpr, _ = roc_curve(y, pred)
        ax.plot(
            fpr,
            tpr,
            color=color,
            lw=2,
            label=f"AUC {fmt(stat)} (repeats {fmt(spread[0])}-{fmt(spread[1])}), p={fmt_p(pvalue)}",
        )
        roc_axes(ax, legend_fontsize=8)
        ax.set_title(
            f"{params.get('outcome')}: {params.get('positive')} vs {params.get('negative')}, out-of-fold "
            f"({int(metrics.get('n_donors', len(y)))} donors)",
            fontsize=10,
        )
    else:
        ax.scatter(pred, y, s=22, color=color, alpha=0.8, edgecolor="white", lw=0.5)
        lo = float(np.nanmin(np.r_[y, pred]))
        hi = float(np.nanmax(np.r_[y, pred]))
        ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=1)
        ax.set_xlabel("predicted (out-of-fold, mean over repeats)")
        ax.set_ylabel(f"observed {params.get('outcome')}")
        ax.text(
            0.03,
            0.97,
            f"R² {fmt(stat)} (repeats {fmt(spread[0])}-{fmt(spread[1])})\n"
            f"Pearson r {fmt(metrics.get('pearson_r'))}\np={fmt_p(pvalue)}",
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize=8,
        )
        ax.set_title(
            f"{params.get('outcome')}: observed vs predicted ({int(metrics.get('n_donors', len(y)))} donors)",
            fontsize=10,
        )
    if null is not None:
        if ax_null is not None:
            _null_hist(ax_null, null_vals, float(stat), pvalue, stat_name, color)
        else:
            where = [0.58, 0.2, 0.38, 0.3] if binary else [0.6, 0.08, 0.36, 0.28]
            inset = ax.inset_axes(where)
            _null_hist(inset, null_vals, float(stat), pvalue, stat_name, color, small=True)
    if fig is not None:
        if not several:  # a figure made here
            fig.tight_layout()
        return fig
    return ax
