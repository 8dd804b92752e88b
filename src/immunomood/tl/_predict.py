"""Predict a donor-level response (responder / remitter, or a change score) from baseline donor features.

``predict_response`` runs a nested cross-validation by donor (every imputation, scaling, feature filter and
penalty choice inside the training folds), a permutation test of the cross-validated AUC / R^2 (the whole nested
procedure rerun on permuted outcomes), a calibration table of the predicted probabilities and the stability of
the selected features across folds.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from immunomood._docs import doc_gene_sets, doc_params, doc_random_state
from immunomood._settings import logger
from immunomood._utils import (
    check_adata,
    check_choice,
    check_int,
    check_random_state,
    check_str,
    resolve_random_state,
    warn,
)
from immunomood.tl._donor_data import dense, feature_matrix, obs_frame

__all__ = ["ResponsePrediction", "predict_response"]

#: Below this many donors in the smaller class (binary) predict_response warns that the AUC means little.
MIN_DONORS_PER_CLASS = 10
#: Inverse L1 penalties tried by the inner CV of the logistic models (features standardised in the fold).
LOGISTIC_CS = (0.05, 0.15, 0.5, 1.5, 5.0)
#: Ridge penalties tried by the (efficient leave-one-out) inner CV of the ridge models.
RIDGE_ALPHAS = tuple(np.logspace(-2, 4, 9))
KINDS = ("proportion", "gene_set")


@dataclass
class ResponsePrediction:
    """Result of :func:`predict_response` (the same content as ``uns[key_added]``).

    Attributes
    ----------
    params
        Parameters: outcome, outcome type, positive / negative class, model, folds, repeats, permutations, donors
        and features used, excluded donors (missing outcome).
    results
        One row per donor: ``outcome`` (as given), ``y`` (0/1 or the value), ``prediction`` (mean out-of-fold
        probability of the positive class, or predicted value, over repeats), ``prediction_sd`` and one column
        ``oof_<r>`` per repeat.
    metrics
        Binary: ``auc`` (mean over repeats of the out-of-fold AUC), ``auc_repeat_spread`` (2.5th and 97.5th
        percentiles of the per-repeat AUCs: the spread due to the CV splits, not a confidence interval),
        ``auc_per_repeat``, ``auc_mean_prediction`` (AUC of ``results["prediction"]``), ``brier``,
        ``calibration_intercept``, ``calibration_slope``. Continuous: ``r2`` (mean over repeats of the out-of-fold
        R^2), ``r2_repeat_spread``, ``r2_per_repeat``, ``pearson_r`` (mean over repeats), ``r2_mean_prediction``.
        Both: ``statistic`` (``"auc"`` or ``"r2"``), ``pvalue`` (permutation), ``n_permutations``, ``null_mean``.
    features
        One row per candidate feature: ``selection_frequency`` (share of the outer-fold models, all repeats, in which
        the feature has a non-zero coefficient), ``mean_coefficient`` (standardised, zeros included),
        ``mean_coefficient_selected`` (over the models that selected it), ``sign_consistency`` (share of those
        models whose coefficient has the majority sign), sorted by selection frequency.
    calibration
        Binary: one row per bin of the mean out-of-fold probability (quantile bins): ``bin``, ``mean_predicted``,
        ``observed_fraction``, ``n``. Empty for a continuous outcome.
    null
        The statistic (AUC or R^2) of each permutation.
    """

    params: dict
    results: pd.DataFrame
    metrics: dict
    features: pd.DataFrame
    calibration: pd.DataFrame
    null: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def as_dict(self) -> dict:
        """The content as stored in ``uns[key_added]``."""
        return {
            "params": self.params,
            "results": self.results,
            "metrics": self.metrics,
            "features": self.features,
            "calibration": self.calibration,
            "null": self.null,
        }


# ----------------------------------------------------------------------------------------------
# input: donors x features and the outcome
# ----------------------------------------------------------------------------------------------
def _anndata_features(adata: AnnData, features) -> pd.DataFrame:
    """Rows x features of a donor-level AnnData; ``features``: None, var names and/or kinds (var["kind"])."""
    names = list(map(str, adata.var_names))
    if features is None:
        cols = names
    else:
        if isinstance(features, Mapping):
            raise TypeError(
                "A dict of features is for a MuData ({modality: [features]}); for an AnnData pass a "
                f"list of var names and/or kinds {list(KINDS)}."
            )
        items = [features] if isinstance(features, str) else list(features)
        cols = []
        kind = adata.var["kind"].astype(str) if "kind" in adata.var.columns else None
        for f in items:
            f = str(f)
            if f in adata.var_names:
                cols.append(f)
            elif kind is not None and (kind == f).any():
                cols.extend(kind.index[kind == f].astype(str))
            else:
                avail = sorted(set(kind)) if kind is not None else []
                raise KeyError(
                    f"Feature {f!r} is neither a var name of adata nor a kind of adata.var['kind'] "
                    f"(kinds: {avail}; e.g. var names {names[:4]}). Pass var names and/or kinds."
                )
        cols = list(dict.fromkeys(cols))
    if not cols:
        raise ValueError("`features` selects no feature.")
    sub = adata[:, cols]
    return pd.DataFrame(dense(sub.X), index=adata.obs_names.astype(str), columns=cols)


def _parse_baseline(baseline) -> tuple[str, object] | None:
    if baseline is None:
        return None
    if isinstance(baseline, Mapping):
        if len(baseline) != 1:
            raise ValueError(
                f"`baseline` as a dict must have exactly one entry {{column: value}}, got {dict(baseline)}."
            )
        ((col, val),) = baseline.items()
    elif isinstance(baseline, (tuple, list)) and len(baseline) == 2:
        col, val = baseline
    else:
        raise TypeError(
            f"`baseline` must be None, a (column, value) pair or a dict {{column: value}}, e.g. "
            f"{{'visit': 'baseline'}}; got {baseline!r}."
        )
    check_str("baseline column", col)
    return str(col), val


# ----------------------------------------------------------------------------------------------
# the nested cross-validation
# ----------------------------------------------------------------------------------------------
def _preprocess(Xtr, ytr, Xte, k, binary):
    """Median imputation, standardisation and (k < features) univariate filter, fitted on the training fold.

    The steps of a ``Pipeline([SimpleImputer, StandardScaler, SelectKBest])``, called one by one (the Pipeline's
    own bookkeeping doubled the time of a fold).
    """
    from sklearn.feature_selection import f_classif, f_regression
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    if np.isnan(Xtr).any() or np.isnan(Xte).any():  # without missing values the imputer is the identity: skipped
        imp = SimpleImputer(strategy="median", keep_empty_features=True).fit(Xtr)
        Xtr, Xte = imp.transform(Xtr), imp.transform(Xte)
    sc = StandardScaler().fit(Xtr)
    Ztr, Zte = sc.transform(Xtr), sc.transform(Xte)
    support = np.ones(Xtr.shape[1], bool)
    if k < Xtr.shape[1]:
        with np.errstate(invalid="ignore", divide="ignore"):
            F = (f_classif if binary else f_regression)(Ztr, ytr)[0]
        F = np.where(np.isfinite(F), F, -np.inf)  # constant features (F undefined) come last
        keep = np.sort(np.argsort(-F, kind="stable")[:k])  # the k largest F (SelectKBest's rule, ties by order)
        support = np.zeros(Xtr.shape[1], bool)
        support[keep] = True
        Ztr, Zte = Ztr[:, keep], Zte[:, keep]
    return Ztr, Zte, support


def _logistic(C, l1_ratio, seed):
    from sklearn.linear_model import LogisticRegression

    if l1_ratio >= 1.0:
        kw = {"l1_ratio": 1.0} if _new_penalty_api() else {"penalty": "l1"}
        return LogisticRegression(C=C, solver="liblinear", random_state=seed, **kw)
    kw = {"l1_ratio": l1_ratio} if _new_penalty_api() else {"penalty": "elasticnet", "l1_ratio": l1_ratio}
    return LogisticRegression(C=C, solver="saga", max_iter=2000, random_state=seed, **kw)


def _fit_fold(Xtr, ytr, Xte, spec, seed):
    """Fit on one training fold (inner CV for the penalty), predict the test fold.

    Returns predictions, coefficients over the candidate features (zeros where filtered out) and the penalty.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    binary = spec["binary"]
    Ztr, Zte, support = _preprocess(Xtr, ytr, Xte, spec["k"], binary)
    coef = np.zeros(Xtr.shape[1])
    if spec["model"] == "ridge":
        from sklearn.linear_model import RidgeCV

        # alpha by efficient leave-one-out over the training fold (squared error: the Brier score for 0/1)
        model = RidgeCV(alphas=spec["alphas"]).fit(Ztr, ytr.astype(float))
        pred = model.predict(Zte)
        if binary:
            pred = np.clip(pred, 0.0, 1.0)  # linear probability model: a probability estimate in [0, 1]
        coef[support] = np.ravel(model.coef_)
        return pred, coef, float(model.alpha_)
    if binary:
        # inner stratified CV on the (standardised, filtered) training fold: the C with the lowest log-loss
        inner = StratifiedKFold(spec["inner_splits"], shuffle=True, random_state=seed)
        Cs = spec["Cs"]
        loss = np.zeros(len(Cs))
        for itr, iva in inner.split(Ztr, ytr):
            for j, C in enumerate(Cs):
                m = _logistic(C, spec["l1_ratio"], seed).fit(Ztr[itr], ytr[itr])
                p = np.clip(m.predict_proba(Ztr[iva])[:, 1], 1e-12, 1 - 1e-12)
                yv = ytr[iva]
                loss[j] -= np.sum(yv * np.log(p) + (1 - yv) * np.log(1 - p))
        best = float(Cs[int(np.flatnonzero(loss <= loss.min() + 1e-9)[0])])  # ties: the strongest penalty
        model = _logistic(best, spec["l1_ratio"], seed).fit(Ztr, ytr)
        coef[support] = model.coef_.ravel()
        return model.predict_proba(Zte)[:, 1], coef, best
    from sklearn.linear_model import ElasticNetCV

    grid = {"n_alphas": 20} if _has_n_alphas() else {"alphas": 20}
    model = ElasticNetCV(
        l1_ratio=spec["l1_ratio"],
        cv=KFold(spec["inner_splits"], shuffle=True, random_state=seed),
        random_state=seed,
        max_iter=5000,
        **grid,
    ).fit(Ztr, ytr)
    coef[support] = np.ravel(model.coef_)
    return model.predict(Zte), coef, float(model.alpha_)


def _per_repeat(y, oof, binary) -> np.ndarray:
    """The statistic of every repeat (column of ``oof``) in one vectorised call.

    AUC as the Mann-Whitney U of the positives over ``n1 * n0`` (ties as midranks: equal to ``roc_auc_score``);
    R^2 by ``r2_score(..., multioutput="raw_values")``.
    """
    from sklearn.metrics import r2_score

    if binary:
        pos, neg = oof[y == 1], oof[y == 0]
        return stats.mannwhitneyu(pos, neg, axis=0, method="asymptotic").statistic / (len(pos) * len(neg))
    return np.atleast_1d(r2_score(np.repeat(y[:, None], oof.shape[1], 1), oof, multioutput="raw_values"))


def _statistic(y, pred, binary) -> float:
    from sklearn.metrics import r2_score, roc_auc_score

    return float(roc_auc_score(y, pred)) if binary else float(r2_score(y, pred))


def _nested_cv(X, y, spec, seed, n_repeats, keep: bool):
    """The whole nested CV: per-repeat statistics, and (``keep``) out-of-fold predictions and coefficients."""
    from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold

    n_splits = spec["n_splits"]
    Cv = RepeatedStratifiedKFold if spec["binary"] else RepeatedKFold
    cv = Cv(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    import sklearn

    oof = np.full((len(y), n_repeats), np.nan)
    coefs = np.zeros((n_splits * n_repeats, X.shape[1])) if keep else None
    penalties = []
    # the inputs are checked once (finite after imputation, valid parameters): skip sklearn's per-fit re-checks
    with sklearn.config_context(assume_finite=not np.isnan(X).any(), skip_parameter_validation=True):
        for i, (tr, te) in enumerate(cv.split(X, y)):
            pred, coef, pen = _fit_fold(X[tr], y[tr], X[te], spec, seed)
            oof[te, i // n_splits] = pred
            if keep:
                coefs[i] = coef
                penalties.append(pen)
    per_repeat = _per_repeat(y, oof, spec["binary"])
    return per_repeat, oof, coefs, np.asarray(penalties, dtype=float)


def _one_permutation(X, y, spec, seed, n_repeats, perm_seed):
    y_perm = np.random.default_rng(perm_seed).permutation(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(_nested_cv(X, y_perm, spec, seed, n_repeats, keep=False)[0].mean())


def _calibration(y, p, n_bins) -> tuple[pd.DataFrame, dict]:
    """Quantile bins of the predicted probability, Brier score, calibration intercept and slope."""
    import statsmodels.api as sm
    from scipy.special import logit
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    n_bins = int(max(1, min(n_bins, len(np.unique(p)))))
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="quantile")
    # the bins of calibration_curve(strategy="quantile"): edges at quantiles, searchsorted on the inner edges
    edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    ids = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(ids, minlength=len(edges) - 1)
    nonzero = np.flatnonzero(counts)
    table = pd.DataFrame(
        {
            "bin": nonzero,
            "lower": edges[nonzero],
            "upper": edges[nonzero + 1],
            "mean_predicted": prob_pred,
            "observed_fraction": prob_true,
            "n": counts[nonzero],
        }
    )
    out = {"brier": float(brier_score_loss(y, p)), "calibration_intercept": np.nan, "calibration_slope": np.nan}
    lp = logit(np.clip(p, 1e-6, 1 - 1e-6))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # slope: y ~ a + b logit(p); intercept (calibration-in-the-large): y ~ a + offset(logit(p))
            slope = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
            inter = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=lp).fit()
        out["calibration_slope"] = float(slope.params[1])
        out["calibration_intercept"] = float(inter.params[0])
    except Exception as e:  # noqa: BLE001 - perfect separation: the calibration line is undefined, reported as NaN
        logger.debug("predict_response: calibration intercept / slope not estimable (%s)", e)
    return table, out


def _new_penalty_api() -> bool:
    """scikit-learn >= 1.8 deprecates ``penalty=`` of LogisticRegression in favour of ``l1_ratio``."""
    import sklearn

    major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
    return (major, minor) >= (1, 8)


def _has_n_alphas() -> bool:
    import inspect

    from sklearn.linear_model import ElasticNetCV

    return "n_alphas" in inspect.signature(ElasticNetCV).parameters


def _describe(model: str, binary: bool, inner_splits: int) -> str:
    if model == "ridge":
        return (
            "ridge "
            + ("linear probability model (0/1 labels, predictions clipped to [0, 1])" if binary else "regression")
            + ", alpha by leave-one-out on the training fold"
        )
    pen = "L1" if model == "l1" else "elastic-net (l1_ratio 0.5)"
    if binary:
        return f"{pen} logistic regression, C by inner {inner_splits}-fold CV (log-loss) over {list(LOGISTIC_CS)}"
    return f"{'lasso' if model == 'l1' else 'elastic net (l1_ratio 0.5)'}, alpha by inner {inner_splits}-fold CV"


def _uns_safe(d: dict) -> dict:
    """Parameters writable to h5ad (no None, lists of str)."""
    out = {}
    for k, v in d.items():
        if v is None:
            out[k] = "None"
        elif isinstance(v, (list, tuple)):
            out[k] = [str(x) for x in v] if any(not isinstance(x, (int, float)) for x in v) else list(v)
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------------------------
# predict_response
# ----------------------------------------------------------------------------------------------
@doc_params(gene_sets=doc_gene_sets, random_state=doc_random_state)
def predict_response(
    adata,
    *,
    outcome: str,
    features: str | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    baseline: tuple[str, object] | Mapping[str, object] | None = None,
    donor_key: str | None = None,
    outcome_type: Literal["auto", "binary", "continuous"] = "auto",
    positive: object | None = None,
    model: Literal["l1", "elasticnet", "ridge"] | None = None,
    n_splits: int = 5,
    n_repeats: int = 5,
    max_features: int | None = 10,
    n_permutations: int = 200,
    n_bins: int = 5,
    sample_key: str | None = None,
    groupby: str = "cell_type",
    gene_sets: str | Mapping[str, Sequence[str]] = "complement",
    random_state: int | None = 0,
    key_added: str = "predict_response",
) -> ResponsePrediction:
    """Predict a donor-level response from baseline features, by nested cross-validation with a permutation test.

    One donor is one unit. An outer :class:`~sklearn.model_selection.RepeatedStratifiedKFold` (binary outcome) or
    :class:`~sklearn.model_selection.RepeatedKFold` (continuous) splits the donors; inside each training fold only:
    median imputation (:class:`~sklearn.impute.SimpleImputer`, when values are missing), standardisation
    (:class:`~sklearn.preprocessing.StandardScaler`), a univariate filter to the ``max_features`` features with the
    largest F statistic (:class:`~sklearn.feature_selection.SelectKBest`), and a penalised linear model whose penalty
    is chosen by an inner cross-validation on that training fold:

    - ``model="ridge"`` (default): ridge regression (:class:`~sklearn.linear_model.RidgeCV`, alpha by efficient
      leave-one-out over the training fold). For a binary outcome it is fitted to the 0/1 labels (a penalised
      linear probability model: alpha minimises the leave-one-out Brier score) and its predictions, clipped to
      [0, 1], are the probabilities. Fast enough for the permutation test at the defaults.
    - ``model="l1"`` / ``"elasticnet"``: sparse models. Binary: logistic regression with an L1 (liblinear) or
      elastic-net (l1_ratio 0.5, saga) penalty, the inverse penalty C chosen among ``LOGISTIC_CS`` by the lowest
      log-loss of an inner stratified K-fold (3 folds, fewer with few donors); continuous: lasso / elastic net
      (:class:`~sklearn.linear_model.ElasticNetCV`, inner K-fold). About 3-5 times slower than ridge.

    The univariate filter is fitted once per training fold, before the inner CV that tunes the penalty (as a
    ``Pipeline`` around a ``*CV`` estimator does); nothing of the held-out donors reaches any step. Each repeat
    predicts every donor once; predictions are averaged over repeats.

    The statistic (mean over repeats of the out-of-fold AUC, or of the out-of-fold R^2) is tested by permutation:
    the whole nested CV is rerun on ``n_permutations`` random permutations of the outcome across donors, and
    ``p = (1 + #(null >= observed)) / (1 + n_permutations)``. The spread of the statistic over CV repeats is
    reported (``*_repeat_spread``); it reflects the choice of splits only and is not a confidence interval.

    Parameters
    ----------
    adata
        A :class:`mudata.MuData` with donors as observations (:func:`immunomood.tl.join_proteomics`), a donor-level
        AnnData (:func:`immunomood.tl.donor_view`, one row per donor or per sample), or a cell-level AnnData with
        ``sample_key`` (the donor view is then built here by :func:`immunomood.tl.donor_view`).
    outcome
        Column with the outcome (of ``obs``; for a MuData of ``mdata.obs`` or a modality's obs). Donors with a
        missing outcome are left out (warning; listed in ``params["excluded_donors"]``).
    features
        ``None``: all features. MuData: modality names, feature names (``"prot:IL6"`` or ``"IL6"``) or a dict
        ``{{modality: [features]}}``. AnnData: var names and/or kinds of ``var["kind"]`` (``"proportion"``,
        ``"gene_set"``).
    baseline
        ``None``: every donor has one row (duplicated donors are an error). ``(column, value)`` or
        ``{{column: value}}``, e.g. ``{{"visit": "baseline"}}``: use only those rows (samples); then each donor must
        appear once among them. Donors are identified by ``donor_key``.
    donor_key
        Column identifying the donor; ``None``: ``"donor"`` when present, else the row names.
    outcome_type
        ``"auto"``: two distinct values -> binary, numeric with more -> continuous.
    positive
        The positive class (binary); default the second category (or the second value in sorted order).
    model
        ``"ridge"``, ``"l1"`` or ``"elasticnet"`` (see above); ``None``: ``"ridge"``. With ridge every feature
        kept by the filter has a coefficient, so ``features["selection_frequency"]`` is the filter's; with the
        sparse models it counts non-zero coefficients.
    n_splits, n_repeats
        Outer folds and repeats.
    max_features
        Features kept by the univariate filter in each training fold; ``None``: no filter.
    n_permutations
        Permutations of the outcome (each reruns the whole nested CV); 0 skips the test (``pvalue`` NaN). They run
        in parallel over ``im.settings.n_jobs`` workers (joblib); the result does not depend on the number of workers.
    n_bins
        Quantile bins of the calibration table (binary).
    sample_key
        Cell-level input only: column of ``adata.obs`` with the sample (donor or donor x visit) of each cell.
    groupby
        Cell-level input only: column with the cell types (passed to :func:`immunomood.tl.donor_view`).
    {gene_sets}
        Cell-level input only (passed to :func:`immunomood.tl.donor_view`).
    {random_state}
        Used for every split, inner CV and permutation.
    key_added
        Key of ``uns`` to write.

    Returns
    -------
    :class:`ResponsePrediction` (``params``, ``results``, ``metrics``, ``features``, ``calibration``, ``null``).
    The same content is written, as a dict, to ``adata.uns[key_added]`` (``mdata.uns`` for a MuData); nothing else
    in ``adata`` changes.
    """
    from immunomood._settings import resolve_n_jobs, settings

    # ---------------------------------------------------------------- checks (before any work)
    is_mudata = hasattr(adata, "mod") and not isinstance(adata, AnnData)
    if not is_mudata:
        check_adata(adata)
    check_str("outcome", outcome)
    check_str("donor_key", donor_key, allow_none=True)
    check_str("sample_key", sample_key, allow_none=True)
    check_str("key_added", key_added)
    check_choice("outcome_type", outcome_type, ["auto", "binary", "continuous"])
    check_choice("model", model, [None, "l1", "elasticnet", "ridge"])
    n_splits = check_int("n_splits", n_splits, min=2, fix="Cross-validation needs at least 2 folds (usually 5).")
    n_repeats = check_int("n_repeats", n_repeats, min=1, fix="Usually 5-20 repeats.")
    max_features = check_int("max_features", max_features, min=1, allow_none=True, fix="Usually 5-20.")
    n_permutations = check_int("n_permutations", n_permutations, min=0, fix="Usually 200-1000 (0 skips the test).")
    n_bins = check_int("n_bins", n_bins, min=2, fix="Usually 5 bins for tens of donors.")
    check_random_state(random_state)
    n_jobs = resolve_n_jobs(settings.n_jobs)
    seed = resolve_random_state(random_state)
    base = _parse_baseline(baseline)

    # ---------------------------------------------------------------- donor-level rows
    data = adata
    if not is_mudata and sample_key is not None:
        from ._donor_view import donor_view

        if sample_key not in adata.obs.columns:
            raise KeyError(
                f"sample_key {sample_key!r} not found in adata.obs. Available: {list(map(str, adata.obs.columns))}."
            )
        for what, col in (("outcome", outcome), ("donor_key", donor_key)):
            if col is None:
                continue
            if col not in adata.obs.columns:
                raise KeyError(
                    f"{what} column {col!r} not found in adata.obs. Available: {list(map(str, adata.obs.columns))}."
                )
            varies = adata.obs.groupby(sample_key, observed=True)[col].nunique(dropna=False) > 1
            if varies.any():
                raise ValueError(
                    f"adata.obs[{col!r}] varies within samples of {sample_key!r} (e.g. "
                    f"{list(map(str, varies.index[varies]))[:5]}): the {what} must be one value per "
                    "sample (a donor-level column)."
                )
        cells = adata
        if base is not None:
            col, val = base
            if col not in adata.obs.columns:
                raise KeyError(
                    f"baseline column {col!r} not found in adata.obs. Available: {list(map(str, adata.obs.columns))}."
                )
            mask = (adata.obs[col] == val).to_numpy()
            if not mask.any():
                raise ValueError(
                    f"No cell has adata.obs[{col!r}] == {val!r} (values: "
                    f"{sorted(map(str, pd.unique(adata.obs[col].dropna())))[:10]})."
                )
            cells = adata[mask]
        data = donor_view(cells, sample_key=sample_key, groupby=groupby, gene_sets=gene_sets)
    elif not is_mudata and "donor_view" not in adata.uns:
        key = donor_key or ("donor" if "donor" in adata.obs.columns else None)
        if key is not None and key in adata.obs.columns:
            per = adata.obs[key].value_counts()
            if len(per) and float(per.median()) > 5:
                raise ValueError(
                    f"adata looks like cell-level data ({adata.n_obs} rows, a median of {float(per.median()):.0f} "
                    f"rows per {key!r}). Pass sample_key= (the column with each cell's sample; groupby= and "
                    "gene_sets= are passed to im.tl.donor_view) to build donor features here, or pass the output of "
                    "im.tl.donor_view / im.tl.join_proteomics."
                )
    obs_all = data.obs
    rows = pd.Index(data.obs_names.astype(str))
    keep_rows = np.ones(len(rows), bool)
    if base is not None and data is adata:
        col, val = base
        colv = obs_frame(data, col)
        keep_rows = (colv == val).to_numpy()
        if not keep_rows.any():
            raise ValueError(
                f"No row has {col!r} == {val!r} (values: "
                f"{sorted(map(str, pd.unique(colv.dropna())))[:10]}). Fix `baseline`."
            )
    if donor_key is not None:
        donors = obs_frame(data, donor_key).astype(str)
    elif "donor" in obs_all.columns:
        donor_key = "donor"
        donors = obs_all["donor"].astype(str)
    else:
        donors = pd.Series(rows, index=data.obs_names)
    donors = pd.Series(donors.to_numpy(), index=rows)[keep_rows]
    dup = donors[donors.duplicated(keep=False)]
    if len(dup):
        ex = sorted(dup.unique())[:5]
        raise ValueError(
            f"{dup.nunique()} donors appear more than once (e.g. {ex}); one donor must be one unit. "
            + (
                "Select one sample per donor with baseline=(column, value), e.g. baseline={'visit': 'baseline'}."
                if base is None
                else f"Rows with {base[0]!r} == {base[1]!r} still repeat donors: check donor_key "
                "or the baseline column."
            )
        )
    y_raw = obs_frame(data, outcome)
    y_raw = pd.Series(y_raw.to_numpy(), index=rows)[keep_rows]

    # ---------------------------------------------------------------- features
    if is_mudata:
        Xdf, _ = feature_matrix(data, features)
    else:
        Xdf = _anndata_features(data, features)
    have = set(Xdf.index)
    Xdf = Xdf.reindex([r for r in y_raw.index if r in have])
    y_raw = y_raw.reindex(Xdf.index)
    donors = donors.reindex(Xdf.index)
    missing = y_raw.isna().to_numpy()
    excluded = donors[missing].tolist()
    if missing.all():
        raise ValueError(f"Every donor has a missing outcome in {outcome!r}.")
    Xdf, y_raw, donors = Xdf.loc[~missing], y_raw[~missing], donors[~missing]
    empty_rows = Xdf.isna().all(axis=1).to_numpy()
    if empty_rows.any():
        excluded += donors[empty_rows].tolist()
        Xdf, y_raw, donors = Xdf.loc[~empty_rows], y_raw[~empty_rows], donors[~empty_rows]
    Xdf = Xdf.loc[:, Xdf.notna().any(axis=0)]
    if Xdf.shape[1] == 0:
        raise ValueError("No feature with values for the selected donors; check `features` (and `baseline`).")

    # ---------------------------------------------------------------- outcome
    values = y_raw.dropna()
    uniq = pd.unique(values)
    numeric = pd.api.types.is_numeric_dtype(y_raw.dtype) and not pd.api.types.is_bool_dtype(y_raw.dtype)
    if outcome_type == "auto":
        outcome_type = "continuous" if numeric and len(uniq) > 2 else "binary"
    if outcome_type == "binary":
        if isinstance(y_raw.dtype, pd.CategoricalDtype):
            levels = [c for c in y_raw.cat.categories if (y_raw == c).any()]
        else:
            levels = sorted(uniq, key=lambda v: (str(type(v)), v))
        if len(levels) != 2:
            raise ValueError(
                f"A binary outcome needs exactly two values in {outcome!r}, found {len(levels)}: "
                f"{list(map(str, levels))[:10]}. Pass outcome_type='continuous' for a score, or "
                "recode the column."
            )
        if positive is not None:
            if positive not in levels:
                raise ValueError(f"positive={positive!r} is not a value of {outcome!r} ({list(map(str, levels))}).")
            levels = [v for v in levels if v != positive] + [positive]
        y = (y_raw == levels[1]).to_numpy().astype(int)
        counts = np.bincount(y, minlength=2)
        n_min = int(counts.min())
        if n_min < n_splits:
            raise ValueError(
                f"The smaller class ({levels[int(np.argmin(counts))]!r}) has {n_min} donors, fewer than "
                f"n_splits={n_splits}; lower n_splits or add donors."
            )
    else:
        if not numeric:
            raise ValueError(f"outcome_type='continuous' needs a numeric column; {outcome!r} has dtype {y_raw.dtype}.")
        if len(uniq) < 3:
            raise ValueError(f"{outcome!r} has {len(uniq)} distinct values: use outcome_type='binary'.")
        y = y_raw.to_numpy(dtype=float)
        levels = []
        if len(y) < 2 * n_splits:
            raise ValueError(
                f"{len(y)} donors with an outcome: too few for n_splits={n_splits} (need at least "
                f"{2 * n_splits}); lower n_splits."
            )
    binary = outcome_type == "binary"
    if model is None:
        model = "ridge"
    # inner CV: the smallest training fold must hold >= 2 donors of each class per inner fold
    n_train_min = (
        (int(min(counts)) - int(np.ceil(int(min(counts)) / n_splits)))
        if binary
        else len(y) - int(np.ceil(len(y) / n_splits))
    )
    inner_splits = int(min(3, n_train_min if binary else n_train_min // 2))
    if inner_splits < 2:
        raise ValueError(
            f"Too few donors for an inner cross-validation inside {n_splits}-fold training folds; "
            "lower n_splits or add donors."
        )
    if binary and n_min < MIN_DONORS_PER_CLASS:
        warn(
            f"predict_response: the smaller class has only {n_min} donors. The cross-validated AUC is very uncertain "
            f"and the selected features unstable; treat the result as exploratory (at least {MIN_DONORS_PER_CLASS} "
            "donors per class are advised)."
        )
    if not binary and len(y) < 2 * MIN_DONORS_PER_CLASS:
        warn(
            f"predict_response: only {len(y)} donors. The cross-validated R^2 is very uncertain and the selected "
            f"features unstable; treat the result as exploratory (at least {2 * MIN_DONORS_PER_CLASS} donors are "
            "advised)."
        )
    if excluded:
        warn(
            f"predict_response: {len(excluded)} donors left out (missing outcome in {outcome!r} or no feature "
            f"value): {excluded[:10]}{' ...' if len(excluded) > 10 else ''}; listed in params['excluded_donors']."
        )
    k = Xdf.shape[1] if max_features is None else int(min(max_features, Xdf.shape[1]))
    spec = {
        "binary": binary,
        "model": model,
        "k": k,
        "n_splits": n_splits,
        "inner_splits": inner_splits,
        "Cs": np.asarray(LOGISTIC_CS),
        "alphas": np.asarray(RIDGE_ALPHAS),
        "l1_ratio": 1.0 if model == "l1" else 0.5,
    }

    # ---------------------------------------------------------------- observed
    X = Xdf.to_numpy(dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence / constant-feature chatter of small folds
        per_rep, oof, coefs, penalties = _nested_cv(X, y, spec, seed, n_repeats, keep=True)
    stat = float(per_rep.mean())

    # ---------------------------------------------------------------- permutation null
    null = np.zeros(0)
    if n_permutations:
        from immunomood._settings import progress

        perm_seeds = np.random.SeedSequence(seed).generate_state(n_permutations)
        if n_jobs > 1:
            from joblib import Parallel, delayed

            null = np.asarray(
                Parallel(n_jobs=n_jobs)(
                    delayed(_one_permutation)(X, y, spec, seed, n_repeats, int(s)) for s in perm_seeds
                )
            )
        else:
            null = np.asarray(
                [
                    _one_permutation(X, y, spec, seed, n_repeats, int(s))
                    for s in progress(perm_seeds, desc="permutations")
                ]
            )
    pvalue = float((1 + np.sum(null >= stat - 1e-12)) / (1 + len(null))) if len(null) else np.nan

    # ---------------------------------------------------------------- summaries
    pred = oof.mean(1)
    results = pd.DataFrame(
        {
            "donor": donors.to_numpy(),
            "outcome": y_raw.astype(object).to_numpy(),
            "y": y,
            "prediction": pred,
            "prediction_sd": oof.std(1),
        },
        index=Xdf.index,
    )
    results["outcome"] = results["outcome"].astype(str) if binary else results["outcome"].astype(float)
    for r in range(n_repeats):
        results[f"oof_{r}"] = oof[:, r]
    lo, hi = np.percentile(per_rep, [2.5, 97.5])
    name = "auc" if binary else "r2"
    metrics = {
        "statistic": name,
        name: stat,
        f"{name}_repeat_spread": np.array([lo, hi]),
        f"{name}_per_repeat": per_rep,
        f"{name}_mean_prediction": _statistic(y, pred, binary),
        "pvalue": pvalue,
        "n_permutations": len(null),
        "null_mean": float(null.mean()) if len(null) else np.nan,
        "n_donors": len(y),
        "n_features": int(Xdf.shape[1]),
        "median_penalty": float(np.median(penalties)),
    }
    if binary:
        metrics["n_positive"] = int(y.sum())
        metrics["n_negative"] = int(len(y) - y.sum())
        calib, cal_metrics = _calibration(y, pred, n_bins)
        metrics.update(cal_metrics)
    else:
        rs = [stats.pearsonr(y, oof[:, r])[0] if np.std(oof[:, r]) > 0 else np.nan for r in range(n_repeats)]
        metrics["pearson_r_per_repeat"] = np.asarray(rs, dtype=float)
        metrics["pearson_r"] = float(np.nanmean(rs)) if np.isfinite(rs).any() else np.nan
        calib = pd.DataFrame(columns=["bin", "lower", "upper", "mean_predicted", "observed_fraction", "n"])
    selected = coefs != 0
    n_sel = selected.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_sel = np.where(n_sel > 0, coefs.sum(0) / np.maximum(n_sel, 1), 0.0)
        pos = (coefs > 0).sum(0)
        sign = np.where(n_sel > 0, np.maximum(pos, n_sel - pos) / np.maximum(n_sel, 1), np.nan)
    feats = pd.DataFrame(
        {
            "selection_frequency": n_sel / coefs.shape[0],
            "mean_coefficient": coefs.mean(0),
            "mean_coefficient_selected": mean_sel,
            "sign_consistency": sign,
            "n_selected": n_sel.astype(int),
        },
        index=Xdf.columns,
    )
    feats.index.name = None
    order = np.lexsort((-np.abs(feats["mean_coefficient"].to_numpy()), -feats["selection_frequency"].to_numpy()))
    feats = feats.iloc[order]
    params = _uns_safe(
        {
            "outcome": outcome,
            "outcome_type": outcome_type,
            "positive": str(levels[1]) if binary else None,
            "negative": str(levels[0]) if binary else None,
            "model": model,
            "model_description": _describe(model, binary, inner_splits),
            "features": features
            if isinstance(features, str) or features is None
            else (list(features) if not isinstance(features, Mapping) else [f"{m}:{v}" for m, v in features.items()]),
            "baseline": None if base is None else [str(base[0]), str(base[1])],
            "donor_key": donor_key,
            "n_splits": n_splits,
            "n_repeats": n_repeats,
            "inner_splits": inner_splits,
            "max_features": k,
            "n_permutations": n_permutations,
            "random_state": seed,
            "n_donors": len(y),
            "n_features": int(Xdf.shape[1]),
            "excluded_donors": list(map(str, excluded)),
            "sample_key": sample_key,
            "cv": "outer " + ("RepeatedStratifiedKFold" if binary else "RepeatedKFold"),
        }
    )
    res = ResponsePrediction(
        params=params, results=results, metrics=metrics, features=feats, calibration=calib, null=null
    )
    adata.uns[key_added] = res.as_dict()
    return res
