"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def differential_activity(*args, **kwargs):
    raise NotImplementedError("tl.differential_activity is not implemented yet")


def differential_expression(*args, **kwargs):
    raise NotImplementedError("tl.differential_expression is not implemented yet")
