"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def normalize(*args, **kwargs):
    raise NotImplementedError("pp.normalize is not implemented yet")
