"""Biomarker panel: a penalised logistic classifier of donors, cross-validated without leakage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from .._docs import doc_params, doc_random_state
from .._utils import (
    check_bool,
    check_int,
    check_number,
    check_random_state,
    check_str,
    resolve_random_state,
    warn,
)
from ._donor_data import MIN_DONORS_PER_CLASS_PANEL, feature_matrix, obs_frame

__all__ = ["BiomarkerResult", "biomarker_panel"]


@dataclass
class BiomarkerResult:
    """Result of :func:`biomarker_panel`.

    Attributes
    ----------
    auc
        Mean over repeats of the out-of-fold ROC AUC (each repeat predicts every donor once).
    auc_ci
        2.5th and 97.5th percentiles of the per-repeat AUCs (variability due to the CV splits; it does not
        include the sampling variability of the donors).
    features
        One row per feature: ``selection_frequency`` (share of the fitted models with a non-zero coefficient),
        ``mean_coefficient`` (mean over models of the standardised coefficient, zeros included), sorted.
    predictions
        One row per donor: ``condition``, ``label`` (1 = case), ``probability`` (mean out-of-fold probability of
        being a case over repeats) and ``probability_sd``.
    auc_per_repeat
        AUC of each repeat.
    oof
        Out-of-fold probabilities, donors x repeats (for ROC curves).
    params
        Parameters and the case / reference levels.
    """

    auc: float
    auc_ci: tuple[float, float]
    features: pd.DataFrame
    predictions: pd.DataFrame
    auc_per_repeat: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    oof: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    params: dict = field(repr=False, default_factory=dict)


@doc_params(random_state=doc_random_state)
def biomarker_panel(
    mdata,
    *,
    condition_key: str,
    features: str | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    n_splits: int = 5,
    n_repeats: int = 20,
    random_state: int | None = 0,
    max_features: int = 10,
    C: float | Literal["cv"] = 0.5,
    mofa: bool = False,
) -> BiomarkerResult:
    """Repeated stratified cross-validation of a penalised (L1) logistic classifier of the condition.

    Every step that learns from data runs inside each training fold (a scikit-learn ``Pipeline``): median
    imputation of missing values, standardisation, univariate selection of the ``max_features`` features
    with the largest ANOVA F, and an L1-penalised logistic regression (liblinear) with a fixed inverse
    penalty ``C`` (default 0.5 on standardised features: a few features survive with tens of donors), or,
    with ``C="cv"``, ``C`` chosen by an inner 3-fold CV on each training fold (``LogisticRegressionCV``,
    ROC AUC; about 20 times slower, and noisy with few donors).
    No information from the held-out donors reaches the model.

    Parameters
    ----------
    mdata
        MuData from :func:`immunomood.tl.join_proteomics` (or any MuData with donors as observations).
    condition_key
        Column (of ``mdata.obs`` or a modality's obs) with exactly two conditions; the first category (or the
        first in sorted order) is the reference, the other the case.
    features
        Which features: ``None`` (all modalities), a modality name (``"prot"``), a list of modality names
        and/or feature names (``"prot:C5"`` or ``"C5"``), or a dict ``{{modality: [features]}}``. Only donors
        present in every selected modality are used.
    n_splits, n_repeats
        Folds and repeats of :class:`sklearn.model_selection.RepeatedStratifiedKFold`.
    {random_state}
    max_features
        Features kept by the univariate filter inside each fold.
    C
        Inverse L1 penalty (fixed), or ``"cv"`` to choose it inside each training fold.
    mofa
        Add the factors of a multi-omics factor analysis (``muon.tl.mofa``, needs ``mofapy2``) as candidate
        features. MOFA is unsupervised and fitted once on all donors (it never sees the condition).

    Returns
    -------
    :class:`BiomarkerResult` with ``auc``, ``auc_ci``, ``features``, ``predictions`` (out-of-fold, per donor).
    """
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    check_str("condition_key", condition_key)
    n_splits = check_int("n_splits", n_splits, min=2, fix="Cross-validation needs at least 2 folds (usually 5).")
    n_repeats = check_int("n_repeats", n_repeats, min=1, fix="Usually 10-50 repeats.")
    max_features = check_int("max_features", max_features, min=1, fix="Usually 5-20.")
    if isinstance(C, str):
        if C != "cv":
            raise ValueError(f"`C` must be a positive number or 'cv', got {C!r}. Pass e.g. C=0.5, or C='cv'.")
    else:
        C = check_number("C", C, min=0, min_inclusive=False, fix="Pass e.g. C=0.5, or C='cv'.")
    check_random_state(random_state)
    mofa = check_bool("mofa", mofa)
    if not hasattr(mdata, "mod"):
        raise TypeError(f"`mdata` must be a MuData (im.tl.join_proteomics), got {type(mdata).__name__}.")
    seed = resolve_random_state(random_state)
    X, mods = feature_matrix(mdata, features)
    cond = obs_frame(mdata, condition_key).reindex(X.index)
    keep = cond.notna().to_numpy()
    X, cond = X.loc[keep], cond[keep]
    levels = list(cond.cat.categories) if isinstance(cond.dtype, pd.CategoricalDtype) else sorted(pd.unique(cond))
    levels = [l for l in levels if (cond == l).any()]
    if len(levels) != 2:
        raise ValueError(f"biomarker_panel needs exactly two conditions in {condition_key!r}, found {levels}.")
    y = (cond == levels[1]).to_numpy().astype(int)
    n_min = int(min(y.sum(), (1 - y).sum()))
    if n_min < n_splits:
        raise ValueError(f"The smaller condition has {n_min} donors, fewer than n_splits={n_splits}; lower n_splits.")
    if n_min < MIN_DONORS_PER_CLASS_PANEL:
        warn(
            f"biomarker_panel: the smaller condition has only {n_min} donors. With so few donors the cross-validated "
            f"AUC is very uncertain and the selected features unstable; treat the panel as exploratory "
            f"(at least {MIN_DONORS_PER_CLASS_PANEL} donors per condition are advised)."
        )
    if mofa:
        try:
            import mofapy2  # noqa: F401  (availability check)
            import muon as mu
        except ImportError as e:
            raise ImportError("mofa=True needs mofapy2: pip install mofapy2 (or immunomood[mofa]).") from e
        import os
        import tempfile

        m2 = mdata[X.index].copy()
        with tempfile.TemporaryDirectory() as tmp:
            mu.tl.mofa(
                m2,
                n_factors=5,
                seed=seed,
                verbose=False,
                use_var=None,
                use_obs="intersection",
                scale_views=True,
                outfile=os.path.join(tmp, "mofa.hdf5"),
            )
        fac = pd.DataFrame(
            m2.obsm["X_mofa"],
            index=m2.obs_names.astype(str),
            columns=[f"mofa:Factor{i + 1}" for i in range(m2.obsm["X_mofa"].shape[1])],
        )
        X = pd.concat([X, fac.reindex(X.index)], axis=1)
    X = X.loc[:, X.notna().any(axis=0)]
    if X.shape[1] == 0:
        raise ValueError("No feature with values left for biomarker_panel.")
    k = int(min(max_features, X.shape[1]))
    inner_min = int(min(np.bincount(y))) - int(np.ceil(n_min / n_splits))
    l1 = {"l1_ratio": 1.0} if _has_l1_ratios() else {"penalty": "l1"}
    if isinstance(C, str) and C != "cv":
        raise ValueError(f"C must be a positive number or 'cv', got {C!r}.")
    if C == "cv" and inner_min >= 3:
        import inspect

        extra = {"l1_ratios": (1.0,)} if _has_l1_ratios() else {"penalty": "l1"}
        if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters:
            extra["use_legacy_attributes"] = False
        clf = LogisticRegressionCV(
            Cs=np.logspace(-2, 2, 9),
            cv=StratifiedKFold(3, shuffle=True, random_state=seed),
            solver="liblinear",
            scoring="roc_auc",
            random_state=seed,
            **extra,
        )
        c_used = "inner CV"
    else:
        c_used = 0.5 if C == "cv" else float(C)  # too few donors for an inner CV: documented fallback
        if c_used <= 0:
            raise ValueError(f"C must be positive, got {C!r}.")
        clf = LogisticRegression(C=c_used, solver="liblinear", random_state=seed, **l1)
    pipe = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("select", SelectKBest(f_classif, k=k)),
            ("model", clf),
        ]
    )
    cv = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    Xv = X.to_numpy(dtype=float)
    oof = np.full((len(y), n_repeats), np.nan)
    coef_sum = np.zeros(X.shape[1])
    sel_count = np.zeros(X.shape[1])
    n_fits = 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence / constant-feature chatter of tiny folds
        for i, (tr, te) in enumerate(cv.split(Xv, y)):
            rep = i // n_splits
            pipe.fit(Xv[tr], y[tr])
            oof[te, rep] = pipe.predict_proba(Xv[te])[:, 1]
            support = pipe.named_steps["select"].get_support()
            coef = np.zeros(X.shape[1])
            coef[support] = pipe.named_steps["model"].coef_.ravel()
            coef_sum += coef
            sel_count += coef != 0
            n_fits += 1
    aucs = np.array([roc_auc_score(y, oof[:, r]) for r in range(n_repeats)])
    feats = pd.DataFrame(
        {"selection_frequency": sel_count / n_fits, "mean_coefficient": coef_sum / n_fits}, index=X.columns
    )
    feats = feats[feats["selection_frequency"] > 0].sort_values(
        ["selection_frequency", "mean_coefficient"],
        ascending=[False, False],
        key=lambda s: s.abs() if s.name == "mean_coefficient" else s,
    )
    preds = pd.DataFrame(
        {
            "condition": cond.astype(str).to_numpy(),
            "label": y,
            "probability": oof.mean(1),
            "probability_sd": oof.std(1),
        },
        index=X.index,
    )
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return BiomarkerResult(
        auc=float(aucs.mean()),
        auc_ci=(float(lo), float(hi)),
        features=feats,
        predictions=preds,
        auc_per_repeat=aucs,
        oof=pd.DataFrame(oof, index=X.index, columns=[f"repeat{r}" for r in range(n_repeats)]),
        params={
            "condition_key": condition_key,
            "reference": str(levels[0]),
            "case": str(levels[1]),
            "n_splits": n_splits,
            "n_repeats": n_repeats,
            "random_state": seed,
            "max_features": k,
            "C": c_used,
            "modalities": mods,
            "n_donors": int(len(y)),
            "n_features": int(X.shape[1]),
            "mofa": bool(mofa),
        },
    )


def _has_l1_ratios() -> bool:
    """scikit-learn >= 1.8 deprecates ``penalty=`` in favour of ``l1_ratio(s)``."""
    import inspect

    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
    return (major, minor) >= (1, 8) and "l1_ratio" in inspect.signature(LogisticRegression).parameters
