"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def read_somascan(*args, **kwargs):
    raise NotImplementedError("io.read_somascan is not implemented yet")
