"""immunomood: single-cell immunology of mood disorders, donor-level and statistically sound.

Subpackages follow the scverse layout: :mod:`immunomood.pp` (preprocessing),
:mod:`immunomood.tl` (tools), :mod:`immunomood.pl` (plotting), :mod:`immunomood.io` (readers)
and :mod:`immunomood.datasets` (manifest-driven loaders and the cohort simulator).
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._settings import settings
from . import datasets, io, pl, pp, tl

__all__ = ["__version__", "datasets", "io", "pl", "pp", "settings", "tl"]
