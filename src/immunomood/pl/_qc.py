"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def qc(*args, **kwargs):
    raise NotImplementedError("pl.qc is not implemented yet")


def qc_report(*args, **kwargs):
    raise NotImplementedError("pl.qc_report is not implemented yet")
