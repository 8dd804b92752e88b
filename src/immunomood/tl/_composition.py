"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def composition(*args, **kwargs):
    raise NotImplementedError("tl.composition is not implemented yet")
