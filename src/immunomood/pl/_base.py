"""Shared figure handling of the ``pl`` functions: a new Axes when none is given, "not measured" panels, number text."""

from __future__ import annotations

import math


def new_ax(ax=None, figsize: tuple[float, float] = (6, 4)):
    """``ax`` when given, else the Axes of a new figure of ``figsize``."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def not_measured(ax, message: str = "not measured") -> None:
    """Mark a panel that has no data (instead of an empty or all-NaN panel)."""
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.35",
            wrap=True)
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
