"""immunomood: single-cell immunology of mood disorders, donor-level and statistically sound.

Subpackages follow the scverse layout: :mod:`immunomood.pp` (preprocessing),
:mod:`immunomood.tl` (tools), :mod:`immunomood.pl` (plotting), :mod:`immunomood.io` (readers)
and :mod:`immunomood.datasets` (manifest-driven loaders and the cohort simulator).

The subpackages are imported on first use (``im.pp`` imports :mod:`immunomood.pp` then), so that
``import immunomood`` and the command line (``immunomood --help``) start without loading
scanpy, scvi-tools or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from ._settings import settings

if TYPE_CHECKING:  # static type checkers and IDEs see the subpackages as ordinary attributes
    from . import datasets, io, pl, pp, tl

_SUBPACKAGES = ("datasets", "io", "pl", "pp", "tl")

__all__ = ["__version__", "datasets", "io", "pl", "pp", "settings", "tl"]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)  # also binds it as an attribute of the package
    raise AttributeError(f"module 'immunomood' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
