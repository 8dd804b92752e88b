"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def read_olink(*args, **kwargs):
    raise NotImplementedError("io.read_olink is not implemented yet")
