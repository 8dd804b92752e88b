"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def simulate_cohort(*args, **kwargs):
    raise NotImplementedError("datasets.simulate_cohort is not implemented yet")
