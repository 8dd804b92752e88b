"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def donor_view(*args, **kwargs):
    raise NotImplementedError("tl.donor_view is not implemented yet")


def join_proteomics(*args, **kwargs):
    raise NotImplementedError("tl.join_proteomics is not implemented yet")


def cross_modal_associations(*args, **kwargs):
    raise NotImplementedError("tl.cross_modal_associations is not implemented yet")


def biomarker_panel(*args, **kwargs):
    raise NotImplementedError("tl.biomarker_panel is not implemented yet")
