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
doc_counts_layer = _indent("""\
layer
    Layer with the raw counts; ``None`` (default): ``layers["counts"]`` when present, else ``adata.X`` (it must
    hold raw counts; an error says so otherwise). The same parameter, name and default as every function that
    reads raw counts.""")
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

doc_design = _indent("""\
design
    The study design as a formula on sample-level columns of ``adata.obs`` (``formulaic``, as in R: treatment
    coding, the first category or first sorted level is the reference), e.g. ``"~ condition + age + sex"``,
    ``"~ hamd + age"`` or ``"~ time * responder"``. Columns must be constant within each sample; a missing value
    is an error naming the samples (nothing is dropped silently). With ``design``, say what to test with
    ``contrast`` and/or ``test``; with neither, every pair of levels of the formula's first variable (or its
    slope, when numeric) is tested. Every error (unknown column, rank deficiency naming the columns involved, too
    few samples per level) is raised before any work.
contrast
    With ``design``: a level pair ``(column, case, reference)``, e.g. ``("condition", "MDD", "control")``, a list
    of them, or a dict ``{design-matrix column: weight}``. Every requested contrast and test is one block of rows
    in one table (``contrast`` column); how ``padj`` is adjusted is said under Returns (Benjamini-Hochberg over
    the whole table, except DESeq2's own per group and contrast in ``differential_expression``).
test
    With ``design``: a numeric column of the formula (effect per unit, e.g. ``"hamd"``) or a one-column
    interaction (``"time:responder"``), or a list of them.""")
doc_condition_key = _indent("""\
condition_key
    Column of ``adata.obs`` with exactly two conditions (the two-group form; a thin layer over ``design``:
    ``design="~ <condition_key> + <covariates>"``, ``contrast=(<condition_key>, <case>, <reference>)``).
    Leave it ``None`` when ``design`` is given.""")


def doc_params(**kwds: str):
    """Substitute ``{name}`` fields of a docstring with shared parameter texts."""

    def dec(obj):
        if obj.__doc__:
            # cleandoc (not dedent): the summary line right after the quotes has no indentation
            obj.__doc__ = inspect.cleandoc(obj.__doc__).format_map(kwds)
        return obj

    return dec
