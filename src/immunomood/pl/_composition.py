"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def composition(*args, **kwargs):
    raise NotImplementedError("pl.composition is not implemented yet")
