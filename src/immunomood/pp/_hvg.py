"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def highly_variable_genes(*args, **kwargs):
    raise NotImplementedError("pp.highly_variable_genes is not implemented yet")
