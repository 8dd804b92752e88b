"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def embed(*args, **kwargs):
    raise NotImplementedError("tl.embed is not implemented yet")
