"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def integration_metrics(*args, **kwargs):
    raise NotImplementedError("tl.integration_metrics is not implemented yet")
