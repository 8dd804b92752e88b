"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def proteomics_qc(*args, **kwargs):
    raise NotImplementedError("pp.proteomics_qc is not implemented yet")
