"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def detect_doublets(*args, **kwargs):
    raise NotImplementedError("pp.detect_doublets is not implemented yet")
