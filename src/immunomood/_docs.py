"""Shared docstring fragments, defined once (scanpy-style ``doc_params``)."""

from __future__ import annotations

import inspect
from textwrap import dedent


def _indent(text: str) -> str:
    # docstrings are dedented before substitution, so parameter names sit at column 0
    return dedent(text).strip("\n")


doc_adata = _indent("""\
adata
    Annotated data matrix (cells x genes).""")
doc_layer = _indent("""\
layer
    Layer to use instead of ``adata.X``.""")
doc_sample_key = _indent("""\
sample_key
    Column of ``adata.obs`` that identifies the sample (donor) of each cell.""")
doc_inplace = _indent("""\
inplace
    Write the results into ``adata`` and return ``None``; with ``False`` return them and leave ``adata`` untouched.""")
doc_copy = _indent("""\
copy
    Return a modified copy instead of changing ``adata`` in place.""")
doc_random_state = _indent("""\
random_state
    Seed of the random number generator; the same seed gives the same result.""")
doc_gene_sets = _indent("""\
gene_sets
    Name of a packaged gene-set resource (see :func:`immunomood.tl.gene_sets`) or a mapping
    ``set name -> gene symbols``.""")


def doc_params(**kwds: str):
    """Substitute ``{name}`` fields of a docstring with shared parameter texts."""

    def dec(obj):
        if obj.__doc__:
            # cleandoc (not dedent): the summary line right after the quotes has no indentation
            obj.__doc__ = inspect.cleandoc(obj.__doc__).format_map(kwds)
        return obj

    return dec
