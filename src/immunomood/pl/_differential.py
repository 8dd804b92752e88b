"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def differential_activity(*args, **kwargs):
    raise NotImplementedError("pl.differential_activity is not implemented yet")


def volcano(*args, **kwargs):
    raise NotImplementedError("pl.volcano is not implemented yet")
