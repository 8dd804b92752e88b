"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def qc_metrics(*args, **kwargs):
    raise NotImplementedError("pp.qc_metrics is not implemented yet")


def flag_outliers(*args, **kwargs):
    raise NotImplementedError("pp.flag_outliers is not implemented yet")


def filter_cells(*args, **kwargs):
    raise NotImplementedError("pp.filter_cells is not implemented yet")
