"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def integrate(*args, **kwargs):
    raise NotImplementedError("tl.integrate is not implemented yet")
