"""Command line interface (placeholder until the end-to-end issue lands)."""

from __future__ import annotations


def main(argv=None) -> int:
    raise SystemExit("immunomood CLI is not implemented yet")
