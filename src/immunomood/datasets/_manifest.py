"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def read_manifest(*args, **kwargs):
    raise NotImplementedError("datasets.read_manifest is not implemented yet")


def validate_manifest(*args, **kwargs):
    raise NotImplementedError("datasets.validate_manifest is not implemented yet")
