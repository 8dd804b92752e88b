"""Sphinx configuration of the immunomood documentation (``make docs``; warnings are errors)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))
os.environ.setdefault("MPLBACKEND", "Agg")

import immunomood  # noqa: E402

project = "immunomood"
author = "immunomood developers"
copyright = "2026, immunomood developers"
version = release = immunomood.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
]
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # types live in the signatures (STYLE.md)
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
napoleon_custom_sections = [("Writes", "returns_style")]
nb_execution_mode = "off"  # tutorials are executed by the test suite (tests/test_tutorials.py)
myst_enable_extensions = ["colon_fence", "dollarmath"]
# .rst first: autosummary writes its generated API pages with the first suffix (they are reST)
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]
nitpicky = False
intersphinx_mapping = {}
html_theme = "furo" if __import__("importlib").util.find_spec("furo") else "alabaster"
html_title = f"immunomood {version}"
templates_path = ["_templates"]
