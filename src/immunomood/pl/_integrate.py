"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def integration(*args, **kwargs):
    raise NotImplementedError("pl.integration is not implemented yet")
