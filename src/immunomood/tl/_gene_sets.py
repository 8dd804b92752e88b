"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def gene_sets(*args, **kwargs):
    raise NotImplementedError("tl.gene_sets is not implemented yet")
