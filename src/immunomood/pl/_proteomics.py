"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def cross_modal(*args, **kwargs):
    raise NotImplementedError("pl.cross_modal is not implemented yet")


def biomarker_roc(*args, **kwargs):
    raise NotImplementedError("pl.biomarker_roc is not implemented yet")
