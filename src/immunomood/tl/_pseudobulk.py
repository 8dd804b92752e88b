"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def pseudobulk(*args, **kwargs):
    raise NotImplementedError("tl.pseudobulk is not implemented yet")
