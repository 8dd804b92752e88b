"""Shared, private helpers: input validation, gene identifiers, random state, atomic writes.

Every public function validates its input here *before* doing any work, so that error
messages are uniform: what was received, what was expected, how to fix it.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._kernels import count_matrix_problem, is_count_matrix  # noqa: F401  (the one implementation; re-exported)
from ._settings import logger, mark_logged

ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_SYMBOL_COLUMN_CANDIDATES = (
    "gene_symbols",
    "gene_symbol",
    "symbol",
    "symbols",
    "gene_name",
    "gene_names",
    "feature_name",
    "gene_ids_symbol",
    "name",
    "Symbol",
    "GeneSymbol",
    "gene",
    "genes",
    "features",
)


_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _user_stacklevel() -> int:
    """The stacklevel of ``warnings.warn`` (called from :func:`warn`) that points at the first frame outside
    immunomood, whatever wrappers (decorators, helpers) stand between the user's line and the warning."""
    import sys

    frame, level = sys._getframe(2), 2  # 1 = warn's caller as seen from warnings.warn inside warn
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def warn(message: str, category: type[Warning] = UserWarning, stacklevel: int | None = None) -> None:
    """Warn pointing at the user's line (the first frame outside immunomood, by default) and log it.

    The warning is marked as logged, so that the command line (``_settings.warnings_to_logger``) shows it once.
    """
    logger.warning(message)
    if stacklevel is None:
        stacklevel = _user_stacklevel()
    warnings.warn(mark_logged(category(message)), stacklevel=stacklevel)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content, read in 4 MiB blocks (the one content hash of the package and its scripts)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


PROBLEMS_KEY = "immunomood_problems"


def record_problem(adata: Any, message: str, *, warn_user: bool = True) -> None:
    """Record a step that could not run (fully) in ``adata.uns["immunomood_problems"]`` and warn.

    The report's summary lists every recorded problem at its top, so that nothing a step skipped
    is only a log line. Repeated identical messages are stored once.
    """
    problems = list(adata.uns.get(PROBLEMS_KEY, []))
    if message not in problems:
        problems.append(message)
    adata.uns[PROBLEMS_KEY] = problems
    if warn_user:
        warn(message)


# ----------------------------------------------------------------------------------------------
# AnnData checks
# ----------------------------------------------------------------------------------------------
def check_adata(adata: Any, *, name: str = "adata", min_obs: int = 1, min_vars: int = 1) -> None:
    """Raise a clear error if ``adata`` is not a non-empty AnnData."""
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        raise TypeError(f"`{name}` must be an AnnData, got {type(adata).__name__}.")
    if adata.n_obs < min_obs or adata.n_vars < min_vars:
        raise ValueError(
            f"`{name}` is empty or too small: {adata.n_obs} cells x {adata.n_vars} genes "
            f"(need at least {min_obs} x {min_vars})."
        )


def check_not_view(adata: Any, *, func: str) -> None:
    """Refuse to write in place into an AnnData view (it would silently copy or fail half-way)."""
    if getattr(adata, "is_view", False):
        raise ValueError(
            f"`{func}` writes into `adata` in place, but `adata` is a view (a subset such as "
            "`adata[mask]`). Make it an actual object first: `adata = adata[mask].copy()`, "
            "or call with `inplace=False` / `copy=True`."
        )


def check_obs_key(adata: Any, key: str | None, *, what: str = "column", allow_na: bool = False) -> None:
    """Raise a KeyError listing the available obs columns if ``key`` is missing."""
    if key is None:
        return
    if key not in adata.obs.columns:
        raise KeyError(
            f"{what.capitalize()} {key!r} not found in adata.obs. Available: {list(map(str, adata.obs.columns))}."
        )
    if not allow_na and adata.obs[key].isna().any():
        n = int(adata.obs[key].isna().sum())
        raise ValueError(
            f"adata.obs[{key!r}] has {n} missing values. Fill them or remove those cells first "
            f"(e.g. `adata = adata[adata.obs[{key!r}].notna()].copy()`)."
        )


def check_layer(adata: Any, layer: str | None) -> None:
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"Layer {layer!r} not found in adata.layers. Available: {list(adata.layers.keys())}.")


def counts_layer(adata: Any, layer: str | None) -> str | None:
    """The raw-counts layer of every function that reads raw counts: ``layer`` when given, else ``"counts"`` when
    ``adata.layers`` has it, else ``None`` (``adata.X``)."""
    if layer is None and "counts" in adata.layers:
        return "counts"
    return layer


def get_matrix(adata: Any, layer: str | None = None):
    """``adata.X`` or ``adata.layers[layer]``, after checking the layer exists."""
    check_layer(adata, layer)
    return adata.X if layer is None else adata.layers[layer]


def check_counts(adata: Any, layer: str | None, *, func: str) -> None:
    """Raise if the chosen matrix is not raw counts, naming the fix."""
    X = get_matrix(adata, layer)
    problem = count_matrix_problem(X)
    if problem is not None:
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        layers = list(adata.layers.keys())
        raise ValueError(
            f"`{func}` needs raw counts, but {where} is not raw counts: {problem}. "
            f"Pass the layer that holds the raw counts with `layer=`/`counts_layer=` "
            f"(layers present: {layers})."
        )


# ----------------------------------------------------------------------------------------------
# gene identifiers
# ----------------------------------------------------------------------------------------------
def looks_like_ensembl(names: Iterable[str], frac: float = 0.5) -> bool:
    names = list(map(str, names))
    if not names:
        return False
    sample = names[:: max(1, len(names) // 2000)]
    hits = sum(bool(ENSEMBL_RE.match(n)) for n in sample)
    return hits / len(sample) >= frac


def find_symbol_column(adata: Any) -> str | None:
    """Find the ``var`` column that holds gene symbols when ``var_names`` are Ensembl IDs."""
    best, best_score = None, 0.0
    for col in list(_SYMBOL_COLUMN_CANDIDATES) + [c for c in adata.var.columns if c not in _SYMBOL_COLUMN_CANDIDATES]:
        if col not in adata.var.columns:
            continue
        s = adata.var[col]
        if not (
            pd.api.types.is_object_dtype(s)
            or isinstance(s.dtype, pd.CategoricalDtype)
            or pd.api.types.is_string_dtype(s)
        ):
            continue
        vals = s.astype(str)
        if looks_like_ensembl(vals, 0.3):
            continue
        # symbols: mostly alphanumeric short strings, many distinct values
        score = vals.str.match(r"^[A-Za-z][A-Za-z0-9\-\.\_]{0,20}$").mean() * (vals.nunique() / max(len(vals), 1))
        if score > best_score:
            best, best_score = col, score
    return best if best_score > 0.5 else None


def gene_symbols(adata: Any, gene_symbols: str | None = None) -> pd.Index:
    """Gene symbols for ``adata.var``: ``var_names`` or a ``var`` column (found automatically for Ensembl IDs)."""
    if gene_symbols is not None:
        if gene_symbols not in adata.var.columns:
            raise KeyError(
                f"gene_symbols={gene_symbols!r} is not a column of adata.var. Available: {list(adata.var.columns)}."
            )
        return pd.Index(adata.var[gene_symbols].astype(str))
    if looks_like_ensembl(adata.var_names):
        col = find_symbol_column(adata)
        if col is None:
            return pd.Index(adata.var_names.astype(str))
        logger.info("var_names look like Ensembl IDs; using gene symbols from adata.var[%r]", col)
        return pd.Index(adata.var[col].astype(str))
    return pd.Index(adata.var_names.astype(str))


def symbols_for_sets(adata: Any, symbol_column: str | None, sets: Mapping[str, Sequence[str]]) -> pd.Index:
    """The gene names to match ``sets`` against: the symbols (:func:`gene_symbols`), or ``var_names`` when the sets
    are written in the identifiers of ``var_names`` (e.g. a dict of Ensembl IDs for Ensembl ``var_names``)."""
    symbols = gene_symbols(adata, symbol_column)
    names = pd.Index(adata.var_names.astype(str))
    if symbol_column is not None or symbols.equals(names):
        return symbols
    wanted = {str(g).upper() for genes in sets.values() for g in genes}
    n_symbols = len(wanted & set(symbols.str.upper()))
    n_names = len(wanted & set(names.str.upper()))
    return names if n_names > n_symbols else symbols


def identifier_kind(adata: Any) -> str:
    return "Ensembl IDs" if looks_like_ensembl(adata.var_names) else "gene symbols"


def match_genes(symbols: pd.Index, genes: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Positions of ``genes`` among ``symbols`` (case-insensitive, exact otherwise).

    Returns (indices found, genes missing). The first occurrence wins when a symbol repeats.
    """
    upper = pd.Series(np.arange(len(symbols)), index=pd.Index(symbols).str.upper())
    upper = upper[~upper.index.duplicated(keep="first")]
    idx, missing = [], []
    for g in genes:
        key = str(g).upper()
        if key in upper.index:
            idx.append(int(upper[key]))
        else:
            missing.append(g)
    return np.asarray(idx, dtype=int), missing


# ----------------------------------------------------------------------------------------------
# randomness, sample-level columns, writing
# ----------------------------------------------------------------------------------------------
def resolve_random_state(random_state: int | None) -> int:
    """The seed to use: ``random_state``, or ``im.settings.random_state`` for ``None`` (refuses "x", -1, 2.5, True)."""
    from ._settings import settings

    if random_state is None:
        return settings.random_state
    return check_random_state(random_state)


def sample_level_columns(obs: pd.DataFrame, sample_key: str) -> list[str]:
    """Columns of ``obs`` that are constant within every sample (donor-level metadata)."""
    g = obs.groupby(sample_key, observed=True, sort=False)
    out = []
    for c in obs.columns:
        if c == sample_key:
            continue
        try:
            if (g[c].nunique(dropna=False) <= 1).all():
                out.append(c)
        except TypeError:
            continue
    return out


def atomic_write_h5ad(adata: Any, path: str | os.PathLike) -> Path:
    """Write ``adata`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ----------------------------------------------------------------------------------------------
# parameter checks: "<param> must be <expected>, got <value>. <fix>", raised before any work
# ----------------------------------------------------------------------------------------------
def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return (
        f"{text} ({type(value).__name__})" if not isinstance(value, (int, float)) or isinstance(value, bool) else text
    )


def _range_text(min: float | None, max: float | None, *, min_inclusive: bool = True, max_inclusive: bool = True) -> str:
    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    parts = []
    if min is not None:
        parts.append(f"{'>=' if min_inclusive else '>'} {fmt(min)}")
    if max is not None:
        parts.append(f"{'<=' if max_inclusive else '<'} {fmt(max)}")
    return " and ".join(parts)


def check_int(
    name: str,
    value: Any,
    *,
    min: int | None = None,
    max: int | None = None,
    allow_none: bool = False,
    allow: Sequence[int] = (),
    fix: str = "",
) -> int | None:
    """An integer parameter: an ``int`` (or a float with an integral value, e.g. ``1e3``), within ``[min, max]``.

    Refuses booleans, strings, NaN and non-integral floats (``500.5`` is never truncated). ``allow`` lists extra
    accepted values outside the range (e.g. ``-1`` for "all cores"). Returns the value as a Python ``int``.
    """
    if value is None and allow_none:
        return None
    expected = "an integer" + (f" {_range_text(min, max)}" if (min is not None or max is not None) else "")
    if allow:
        expected += f" (or {', '.join(map(str, allow))})"
    if allow_none:
        expected += " or None"
    tail = f" {fix}" if fix else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise TypeError(f"`{name}` must be {expected}, got {_show(value)}.{tail}")
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value) or float(value) != int(value):
            raise ValueError(
                f"`{name}` must be {expected}, got {value!r} (not a whole number; it is never truncated).{tail}"
            )
    ivalue = int(value)
    if ivalue in allow:
        return ivalue
    if (min is not None and ivalue < min) or (max is not None and ivalue > max):
        raise ValueError(f"`{name}` must be {expected}, got {value!r}.{tail}")
    return ivalue


def check_number(
    name: str,
    value: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    allow_none: bool = False,
    fix: str = "",
) -> float | None:
    """A finite real number within the given bounds (strings, booleans, NaN and infinities refused)."""
    if value is None and allow_none:
        return None
    rng = _range_text(min, max, min_inclusive=min_inclusive, max_inclusive=max_inclusive)
    expected = "a finite number" + (f" {rng}" if rng else "") + (" or None" if allow_none else "")
    tail = f" {fix}" if fix else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise TypeError(f"`{name}` must be {expected}, got {_show(value)}.{tail}")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"`{name}` must be {expected}, got {value!r}.{tail}")
    too_low = min is not None and (v < min if min_inclusive else v <= min)
    too_high = max is not None and (v > max if max_inclusive else v >= max)
    if too_low or too_high:
        raise ValueError(f"`{name}` must be {expected}, got {value!r}.{tail}")
    return v


def check_choice(name: str, value: Any, choices: Sequence[Any], *, fix: str = "") -> Any:
    """One of ``choices`` (compared with ``==``; a string of another case gets a hint)."""
    tail = f" {fix}" if fix else ""
    try:
        ok = value in choices
    except TypeError:  # unhashable / incomparable
        ok = False
    if not ok:
        hint = ""
        if isinstance(value, str):
            close = [c for c in choices if isinstance(c, str) and c.lower() == value.lower()]
            if close:
                hint = f" Did you mean {close[0]!r}?"
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {_show(value)}.{hint}{tail}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """A boolean (``True``/``False``; numbers and strings such as ``"false"`` are refused)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {_show(value)}.")
    return bool(value)


def check_str(name: str, value: Any, *, allow_none: bool = False, fix: str = "") -> str | None:
    """A non-empty string (or None when allowed)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        expected = "a non-empty string" + (" or None" if allow_none else "")
        raise TypeError(f"`{name}` must be {expected}, got {_show(value)}.{(' ' + fix) if fix else ''}")
    return value


def check_random_state(value: Any, name: str = "random_state") -> int | None:
    """``None`` or a non-negative integer seed."""
    return check_int(
        name,
        value,
        min=0,
        max=2**32 - 1,
        allow_none=True,
        fix="Pass an integer seed such as 0 (or None for im.settings.random_state).",
    )
