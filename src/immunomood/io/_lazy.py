"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def read_lazy(*args, **kwargs):
    raise NotImplementedError("io.read_lazy is not implemented yet")
