"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def annotation(*args, **kwargs):
    raise NotImplementedError("pl.annotation is not implemented yet")


def annotation_confidence(*args, **kwargs):
    raise NotImplementedError("pl.annotation_confidence is not implemented yet")
