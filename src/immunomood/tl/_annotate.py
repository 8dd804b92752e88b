"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def annotate(*args, **kwargs):
    raise NotImplementedError("tl.annotate is not implemented yet")
