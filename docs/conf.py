"""Sphinx configuration of the immunomood documentation (``make docs``; warnings are errors).

Two things make this build work on a machine without internet access, with ``-W``:

* intersphinx: each project lists its online inventory first and a small local one second (written below, into
  ``docs/_build``); when the online one cannot be fetched, Sphinx uses the local one and says so at INFO level
  instead of warning. Offline, links to the objects of the local inventories still work; other references to
  those projects render as plain text.
* tutorials: jupytext percent scripts (``tutorials/*.py``, linked into ``docs/tutorials/``) read as notebooks
  (``nb_custom_formats``) and executed during the build (myst-nb, cached in ``docs/_build/.jupyter_cache``; re-run
  only when a notebook's code changes). Notebooks that need the real data are rendered without outputs when the
  data folder (``IMMUNOMOOD_DATA_DIR``, else ``../shared/data``) is absent. ``IMMUNOMOOD_DOCS_EXECUTE=off`` skips
  execution; notebooks already executed by ``tests/test_tutorials.py`` (``IMMUNOMOOD_TUTORIALS_OUT``) are reused.
"""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))
os.environ.setdefault("MPLBACKEND", "Agg")  # autodoc imports immunomood.pl; the notebooks select inline themselves

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
myst_enable_extensions = ["colon_fence", "dollarmath"]
# .rst first: autosummary writes its generated API pages with the first suffix (they are reST)
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "conf.py"]  # conf.py: .py files are notebooks here
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]
nitpicky = False
html_theme = "furo" if __import__("importlib").util.find_spec("furo") else "alabaster"
html_title = f"immunomood {version}"
templates_path = ["_templates"]

# ---------------------------------------------------------------------------------------------- tutorials
# the tutorials are jupytext percent scripts, read as notebooks the same way as tests/test_tutorials.py reads them
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
NEEDS_DATA = ["tutorials/01_pbmc3k_qc_annotation.py", "tutorials/03_plasma_proteomics.py"]


def _data_dir() -> Path | None:
    env = os.environ.get("IMMUNOMOOD_DATA_DIR")
    for c in ([Path(env)] if env else []) + [HERE.parents[1] / "shared" / "data"]:
        if c.is_dir():
            return c
    return None


DATA_DIR = _data_dir()
if DATA_DIR is not None:
    os.environ.setdefault("IMMUNOMOOD_DATA_DIR", str(DATA_DIR))  # the kernels inherit it
os.environ.setdefault("PYTHONHASHSEED", "0")
nb_execution_mode = "off" if os.environ.get("IMMUNOMOOD_DOCS_EXECUTE", "").lower() in ("0", "off", "no") else "cache"
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
nb_execution_excludepatterns = [] if DATA_DIR is not None else NEEDS_DATA
nb_execution_in_temp = True  # files a tutorial writes go to a temporary folder
nb_execution_timeout = 600  # seconds per cell
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_show_tb = True
nb_merge_streams = True


def _reuse_executed_notebooks(folder: str | None) -> None:
    """Put notebooks that ``tests/test_tutorials.py`` executed (``IMMUNOMOOD_TUTORIALS_OUT``) into the cache.

    CI runs the tutorials in the test suite; with ``IMMUNOMOOD_TUTORIALS_OUT`` set there, the docs build reuses those
    outputs instead of executing the notebooks a second time. The cache matches a notebook by its code cells and
    kernelspec, so a notebook whose code differs from ``tutorials/*.py`` does not match and is executed as usual.
    """
    if not folder or nb_execution_mode == "off" or not Path(folder).is_dir():
        return
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(nb_execution_cache_path)
    for path in sorted(Path(folder).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:  # nbclient's timings are cell metadata, which the cache key includes
            cell.metadata.pop("execution", None)
        try:
            cache.cache_notebook_bundle(CacheBundleIn(nb, str(path)), check_validity=True, overwrite=True)
        except Exception as err:  # noqa: BLE001 - then the notebook is executed during the build
            print(f"conf.py: executed notebook {path.name} not reused ({err})")
        else:
            print(f"conf.py: reusing the outputs of {path}")


_reuse_executed_notebooks(os.environ.get("IMMUNOMOOD_TUTORIALS_OUT"))

# ---------------------------------------------------------------------------------------------- intersphinx
#: project -> (documentation root, objects for the offline inventory: (name, role, page relative to the root))
_INTERSPHINX: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "anndata": (
        "https://anndata.readthedocs.io/en/stable/",
        [
            ("anndata.AnnData", "py:class", "generated/anndata.AnnData.html"),
        ],
    ),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", []),
    "mudata": ("https://mudata.readthedocs.io/en/stable/", []),
    "scvi-tools": (
        "https://docs.scvi-tools.org/en/stable/",
        [
            ("scvi.model.SCVI", "py:class", "api/reference/scvi.model.SCVI.html"),
        ],
    ),
    "numpy": (
        "https://numpy.org/doc/stable/",
        [
            ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html"),
        ],
    ),
    "pandas": (
        "https://pandas.pydata.org/docs/",
        [
            ("pandas.DataFrame", "py:class", "reference/api/pandas.DataFrame.html"),
            ("pandas.read_csv", "py:function", "reference/api/pandas.read_csv.html"),
        ],
    ),
    "python": ("https://docs.python.org/3/", []),
    "matplotlib": (
        "https://matplotlib.org/stable/",
        [
            ("matplotlib.axes.Axes", "py:class", "api/_as_gen/matplotlib.axes.Axes.html"),
            ("matplotlib.figure.Figure", "py:class", "api/_as_gen/matplotlib.figure.Figure.html"),
        ],
    ),
}


def _offline_inventory(name: str, objects: list[tuple[str, str, str]]) -> str:
    """Write a (small) Sphinx objects.inv for ``name``; returns its path."""
    path = HERE / "_build" / "intersphinx_offline" / f"{name}.inv"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Sphinx inventory version 2\n# Project: {name}\n# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    body = "".join(f"{obj} {role} 1 {page}#$ -\n" for obj, role, page in objects).encode()
    path.write_bytes(header + zlib.compress(body))
    return str(path)


# online inventory first (None: <root>/objects.inv); the local one is used when it cannot be fetched
intersphinx_mapping = {
    name: (root, (None, _offline_inventory(name, objects))) for name, (root, objects) in _INTERSPHINX.items()
}
intersphinx_timeout = 10
