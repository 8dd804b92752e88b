"""Shared figure handling of the ``pl`` functions: figure set-up (one Axes or several), palettes, reading a stored
``tl`` result, "not measured" panels and number text.

Every ``pl`` function draws into ``ax=`` when given (one Axes, or a sequence of Axes for a multi-panel figure), else
into a new figure; it returns the Axes (one panel) or the Figure (several panels), and never shows or saves it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

#: the default colours of the levels of a condition (used when ``uns["<key>_colors"]`` is absent)
DEFAULT_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


def new_ax(ax=None, figsize: tuple[float, float] = (6, 4), **kwargs):
    """``ax`` when given, else the Axes of a new figure of ``figsize`` (``kwargs`` go to ``plt.subplots``)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize, **kwargs)
    return ax


def new_axes(ax, n: int, *, what: str, nrows: int = 1, figsize: tuple[float, float] = (6, 4), **kwargs):
    """The figure and the list of ``n`` Axes of a multi-panel plot: the ``n`` Axes given in ``ax`` (one Axes is
    accepted when ``n == 1``), else a new figure of ``nrows`` rows. ``what`` names the panels in the error."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(nrows, int(math.ceil(n / nrows)), figsize=figsize, squeeze=False, **kwargs)
        return fig, list(np.ravel(axes))[:n]
    axes = list(np.ravel(np.asarray(ax, dtype=object))) if isinstance(ax, Sequence | np.ndarray) else [ax]
    if len(axes) != n:
        raise ValueError(f"`ax` has {len(axes)} Axes but the plot has {n} panels; pass {what}, or leave ax=None.")
    return axes[0].figure, axes


def palette(levels: Sequence, *, adata=None, key: str | None = None, default: Sequence = DEFAULT_COLORS) -> dict:
    """Colour of each level: scanpy's ``adata.uns[f"{key}_colors"]`` (aligned with the categories of
    ``adata.obs[key]``) when it is there and covers every level, else ``default`` in the order of ``levels``."""
    levels = [str(lv) for lv in levels]
    out = {lv: default[i % len(default)] for i, lv in enumerate(levels)}
    if adata is None or key is None or key not in adata.obs.columns:
        return out
    stored = adata.uns.get(f"{key}_colors")
    col = adata.obs[key]
    if stored is None or not isinstance(col.dtype, pd.CategoricalDtype):
        return out
    cats = [str(c) for c in col.cat.categories]
    stored = [str(c) for c in np.ravel(np.asarray(stored, dtype=object))]
    if len(stored) < len(cats) or not set(levels) <= set(cats):
        return out
    by_cat = dict(zip(cats, stored))
    return {lv: by_cat[lv] for lv in levels}


def stored_result(holder, key: str, *, run: str, parts: Sequence[str] = ("results",)) -> dict:
    """``holder.uns[key]`` of a ``tl`` function that stores ``{"params": ..., "results": DataFrame, ...}``, checked.

    ``run`` is the call to make when the result is missing (the error names it: plots compute no test).
    ``parts``: the DataFrames that must be present. Returns a dict with ``params`` (a plain dict) and the parts.
    """
    st = holder.uns.get(key) if hasattr(holder, "uns") else None
    if not isinstance(st, Mapping):
        # results written before the one-result convention: three sibling keys, key (the table),
        # key + "_scores" and key + "_params" (differential_activity); read them so old h5ad files still plot
        old = holder.uns.get(key) if hasattr(holder, "uns") else None
        if isinstance(old, pd.DataFrame):
            st = {"results": old, "params": holder.uns.get(key + "_params", {})}
            if isinstance(holder.uns.get(key + "_scores"), pd.DataFrame):
                st["scores"] = holder.uns[key + "_scores"]
        else:
            raise KeyError(
                f"No stored result in .uns[{key!r}] (found {type(st).__name__}). Run {run} first: the "
                "plot reads what it stores and computes no test."
            )
    for p in parts:
        if not isinstance(st.get(p), pd.DataFrame):
            raise KeyError(
                f".uns[{key!r}][{p!r}] is not a DataFrame (found {type(st.get(p)).__name__}). Run {run} "
                "first: the plot reads what it stores and computes no test."
            )
    params = st.get("params", {})
    return dict(st) | {"params": dict(params) if isinstance(params, Mapping) else {}}


def not_measured(ax, message: str = "not measured") -> None:
    """Mark a panel that has no data (instead of an empty or all-NaN panel)."""
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def fmt(value, spec: str = ".2f") -> str:
    """A number for a figure's text; NaN (a metric that could not be computed) shows as ``n/a``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else format(v, spec)


def fmt_p(p) -> str:
    """A p-value as a scientist reads it: ``p=0.012``, ``p=3.1e-05``, ``p<1e-300`` or ``p n/a``."""
    try:
        v = float(p)
    except (TypeError, ValueError):
        return "n/a"
    if math.isnan(v):
        return "n/a"
    if v < 1e-300:
        return "<1e-300"
    return f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}"


def roc_axes(ax, *, legend_fontsize=None) -> None:
    """The frame of a ROC plot: chance diagonal, unit square, axis labels, legend at the lower right."""
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", frameon=False, **({} if legend_fontsize is None else {"fontsize": legend_fontsize}))
