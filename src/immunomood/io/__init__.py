"""Readers: Olink NPX, SomaScan ADAT, lazy (out-of-core) AnnData."""

from __future__ import annotations

from ._olink import read_olink
from ._somascan import read_somascan
from ._lazy import read_lazy

__all__ = ["read_lazy", "read_olink", "read_somascan"]
