"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def score_pathways(*args, **kwargs):
    raise NotImplementedError("tl.score_pathways is not implemented yet")
