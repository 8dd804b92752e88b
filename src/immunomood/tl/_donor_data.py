"""Donor-level data shared by the donor-level features (associations, biomarker panel, response prediction).

The feature separator, the donor columns of a MuData and its donors x features matrix.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import sparse

SEP = "|"
#: Below this many donors in the smaller condition, biomarker_panel warns that its AUC means little.
MIN_DONORS_PER_CLASS_PANEL = 10


def writable(col: pd.Series) -> pd.Series:
    """A donor column that a donor present in one modality only left partly missing, in a dtype h5mu can write.

    Booleans with gaps (e.g. a flag of the cell data, NaN for a donor without cells) become pandas' nullable
    ``boolean``, numbers with gaps ``float``; an object column of bools and NaN could not be written to h5mu.
    """
    if col.dtype != object:
        return col
    vals = col.dropna()
    if len(vals) and all(isinstance(v, (bool, np.bool_)) for v in vals):
        return col.astype("boolean")
    if len(vals) and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in vals
    ):
        return col.astype(float)
    return col


class null_context:
    """A context manager that does nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def obs_frame(data, key: str) -> pd.Series:
    """A donor column: ``obs[key]`` of an AnnData; of a MuData ``mdata.obs`` first, then each modality's obs."""
    if key in data.obs.columns:
        return data.obs[key]
    if not hasattr(data, "mod"):
        raise KeyError(f"Column {key!r} not found in adata.obs. Available: {list(map(str, data.obs.columns))}.")
    for mod in data.mod:
        if key in data[mod].obs.columns:
            return data[mod].obs[key].reindex(data.obs_names)
    cols = sorted(set(map(str, data.obs.columns)).union(*[set(map(str, data[m].obs.columns)) for m in data.mod]))
    raise KeyError(f"Column {key!r} not found in mdata.obs nor in the modalities' obs. Available: {cols}.")


def dense(X) -> np.ndarray:
    """A dense float array of ``X`` (sparse or array-like)."""
    return X.toarray() if sparse.issparse(X) else np.asarray(X, dtype=float)


def feature_matrix(mdata, features) -> tuple[pd.DataFrame, list[str]]:
    """Donors (in every selected modality) x features, names prefixed ``"<modality>:"``."""
    mods = list(mdata.mod)
    sel: dict[str, list[str] | None] = {}
    if features is None:
        sel = dict.fromkeys(mods)
    elif isinstance(features, str):
        features = [features]
    if isinstance(features, Mapping):
        for m, names in features.items():
            if m not in mdata.mod:
                raise KeyError(
                    f"Modality {m!r} not in mdata (modalities: {mods}). Pass features as a dict "
                    "{modality: [feature names]}."
                )
            sel[m] = None if names is None else ([names] if isinstance(names, str) else list(names))
    elif features is not None:
        for f in features:
            if f in mdata.mod:
                sel[f] = None
                continue
            if ":" in f and f.split(":", 1)[0] in mdata.mod:
                m, name = f.split(":", 1)
            else:
                hits = [m for m in mods if f in mdata[m].var_names]
                if not hits:
                    raise KeyError(
                        f"Feature {f!r} not found in any modality ({mods}); pass a modality name, a "
                        "feature name, '<modality>:<feature>' or a dict {modality: [features]}."
                    )
                m, name = hits[0], f
            if sel.get(m, []) is None:
                continue
            sel.setdefault(m, []).append(name)
    if not sel:
        raise ValueError("`features` selects no feature. Pass None (all), modality names or feature names.")
    frames = []
    for m, names in sel.items():
        ad_ = mdata[m]
        if names is not None:
            bad = [n for n in names if n not in ad_.var_names]
            if bad:
                raise KeyError(f"Features {bad} not found in mdata[{m!r}].var_names.")
            ad_ = ad_[:, names]
        frames.append(
            pd.DataFrame(dense(ad_.X), index=ad_.obs_names.astype(str), columns=[f"{m}:{v}" for v in ad_.var_names])
        )
    common = frames[0].index
    for f in frames[1:]:
        common = common.intersection(f.index)
    X = pd.concat([f.loc[common] for f in frames], axis=1)
    return X, list(sel)
