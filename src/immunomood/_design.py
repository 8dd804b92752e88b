"""Study designs shared by every donor-level test: a formula on sample-level columns plus what to test.

One object, :class:`Design`, is built once per call by :func:`build_design` (all checks before any work) and
drives ``differential_activity``, ``differential_expression``, ``composition`` and ``cross_modal_associations``:

- ``design="~ condition + age + sex"``: a formula (``formulaic``, treatment coding, first level = reference) on
  columns constant within each sample;
- what to test, as one or several *hypotheses*, each a contrast vector over the model-matrix columns:
  ``contrast=("condition", "MDD", "control")`` (a level pair), ``test="hamd"`` (a continuous column: effect per
  unit), ``test="time:responder"`` (a one-column interaction), or a dict ``{model column: weight}``;
- ``random_effect="donor"``: samples of one donor share a random intercept; the df of each hypothesis follows
  the between-within rule (:meth:`Design.df_between_within`).

Contrast vectors are built on a reference grid: two rows of the model matrix that differ only in the tested
variable, every other numeric column at its mean and every other factor at its reference level, so a level pair
or a per-unit slope is what it says even when the formula has interactions (then it is the effect at the other
variables' reference levels and means, as in R's treatment coding).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["Design", "Hypothesis", "build_design", "contrast_as_coef", "formula_variables"]


@dataclass(frozen=True)
class Hypothesis:
    """One tested quantity: ``vector`` (weights over the design columns) and how to name it."""

    name: str
    kind: str  # "contrast" | "continuous" | "interaction" | "custom"
    vector: np.ndarray = field(repr=False)
    variable: str = ""
    case: object = None
    reference: object = None

    @property
    def columns(self) -> np.ndarray:
        """Positions of the design columns the hypothesis involves."""
        return np.flatnonzero(np.abs(self.vector) > 1e-12)


@dataclass
class Design:
    """A model matrix over samples and the hypotheses to test (see :func:`build_design`)."""

    formula: str
    table: pd.DataFrame  # one row per sample, the design's columns (+ random effect)
    X: np.ndarray = field(repr=False)  # samples x columns
    columns: list[str]
    hypotheses: list[Hypothesis]
    random_effect: str | None = None
    variables: list[str] = field(default_factory=list)
    categorical: dict = field(default_factory=dict)  # variable -> levels (reference first)
    legacy: bool = False

    @property
    def samples(self) -> pd.Index:
        return self.table.index

    def matrix(self, samples=None) -> np.ndarray:
        """Rows of the model matrix for ``samples`` (all when None)."""
        if samples is None:
            return self.X
        pos = self.table.index.get_indexer(pd.Index(samples, dtype=object))
        if (pos < 0).any():
            raise KeyError(f"samples not in the design: {list(pd.Index(samples)[pos < 0][:5])}")
        return self.X[pos]

    def subset(self, samples) -> tuple[np.ndarray, dict[str, np.ndarray | str]]:
        """Design and hypothesis vectors for a subset of samples (e.g. those with enough cells of a cell type).

        Columns that are all zero in the subset (a covariate level absent there) are dropped; a hypothesis that
        needs a dropped column, or a subset whose design is rank-deficient or leaves no residual df, gets a reason
        (a string) instead of a vector.
        """
        D = self.matrix(samples)
        keep = np.abs(D).sum(axis=0) > 0
        out: dict[str, np.ndarray | str] = {}
        Dk = D[:, keep]
        problem = rank_problem(Dk, [c for c, k in zip(self.columns, keep) if k])
        if problem is None and Dk.shape[0] <= Dk.shape[1]:
            problem = f"no residual degrees of freedom ({Dk.shape[0]} samples for {Dk.shape[1]} design columns)"
        for h in self.hypotheses:
            if problem is not None:
                out[h.name] = problem
            elif (np.abs(h.vector[~keep]) > 1e-12).any():
                gone = [self.columns[j] for j in np.flatnonzero(~keep) if abs(h.vector[j]) > 1e-12]
                out[h.name] = f"not estimable here: no sample has {gone}"
            else:
                out[h.name] = h.vector[keep]
        return Dk, out

    def df_between_within(self, samples, hypothesis: Hypothesis, groups: np.ndarray) -> int:
        """Residual df of a hypothesis in a random-intercept model ("between-within" / containment rule).

        A hypothesis whose columns are all constant within every group (donor-level: a condition over repeated
        visits) is tested between groups: ``n_groups - rank of the between-group columns``; one involving a column
        that varies within groups (visit, time x responder, paired conditions) within groups:
        ``n_samples - n_groups - rank of the within-group columns``.
        """
        D = self.matrix(samples)
        keep = np.abs(D).sum(axis=0) > 0
        return between_within_df(D[:, keep], groups, hypothesis.vector[keep])

    def describe(self) -> dict:
        """JSON-friendly summary for ``params``."""
        return {
            "formula": self.formula,
            "columns": list(self.columns),
            "hypotheses": [h.name for h in self.hypotheses],
            "random_effect": self.random_effect or "",
        }


def between_within_df(D: np.ndarray, groups: np.ndarray, vector: np.ndarray) -> int:
    """Between-within df of the contrast ``vector`` of design ``D`` with random-intercept ``groups``."""
    codes = pd.factorize(pd.Series(groups))[0]
    n_groups = int(codes.max()) + 1
    const = np.array([all(np.ptp(D[codes == g, j]) == 0 for g in range(n_groups)) for j in range(D.shape[1])])
    involved = np.abs(vector) > 1e-12
    if const[involved].all():
        rank = np.linalg.matrix_rank(D[:, const]) if const.any() else 0
        return max(n_groups - rank, 1)
    rank = np.linalg.matrix_rank(D[:, ~const])
    return max(D.shape[0] - n_groups - rank, 1)


def contrast_as_coef(D: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Reparametrise ``D`` so that its first column's coefficient is ``vector @ beta`` (limma ``contrastAsCoef``).

    ``D* = D T^-1`` with ``T = [vector; N]``, ``N`` an orthonormal basis of the complement of ``vector``: the
    fitted values and residuals are unchanged, and coefficient 0 of ``D*`` is the contrast.
    """
    c = np.asarray(vector, dtype=float).ravel()
    if not np.any(c):
        raise ValueError("the contrast vector is all zero.")
    _, _, vt = np.linalg.svd(c[None, :])
    T = np.vstack([c, vt[1:]])
    return D @ np.linalg.inv(T)


def rank_problem(D: np.ndarray, names: Sequence[str]) -> str | None:
    """None when ``D`` has full column rank, else a message naming the columns that are linearly dependent."""
    if D.shape[1] == 0:
        return None
    r = np.linalg.matrix_rank(D)
    if r == D.shape[1]:
        return None
    _, s, vt = np.linalg.svd(D, full_matrices=True)
    tol = s.max() * max(D.shape) * np.finfo(float).eps if s.size else 0
    null = vt[np.sum(s > tol) :]
    involved = [names[j] for j in np.flatnonzero((np.abs(null) > 1e-8).any(axis=0))]
    const = [names[j] for j in range(D.shape[1]) if not np.any(D[:, j])]
    why = f"the design columns {involved} are linearly dependent"
    if const:
        why += f" ({const} are all zero)"
    variables = list(dict.fromkeys(n.split("[")[0] for n in involved if n != "Intercept"))
    if len(variables) >= 2:
        why += (
            f": {variables[-1]!r} is confounded with the condition or covariate(s) {variables[:-1]} "
            "(perfectly collinear with them)"
        )
    elif len(variables) == 1 and "Intercept" in involved:
        why += f": {variables[0]!r} is constant across the samples"
    return (
        f"the design is rank-deficient (rank {r} for {D.shape[1]} columns): {why}. One of them cannot be "
        "separated from the others (a covariate confounded with the condition, a level present in one group "
        "only, or two columns that carry the same information); drop one or collect samples that break the "
        "confounding."
    )


# ----------------------------------------------------------------------------------------------
# building a design
# ----------------------------------------------------------------------------------------------
_TERM_SPLIT = re.compile(r"[~+*:()\-/|^,\s]+")


def formula_variables(formula: str) -> list[str]:
    """The column names a formula uses, in order (via formulaic's parser)."""
    from formulaic import Formula

    try:
        f = Formula(formula)
    except Exception as err:
        msg = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # formulaic colours its parser errors
        raise ValueError(
            f"design={formula!r} is not a valid formula ({msg}). Write it as in R, e.g. "
            "'~ condition + age + sex' or '~ time * responder'."
        ) from err
    rhs = f.rhs if hasattr(f, "rhs") else f
    names: list[str] = []
    for term in rhs:
        for factor in term.factors:
            expr = str(factor.expr)
            if expr in ("1", "0"):
                continue
            for tok in _expression_names(expr):
                if tok not in names:
                    names.append(tok)
    return names


def _expression_names(expr: str) -> list[str]:
    """Column names in one formula factor: the bare names of a Python expression, not the functions or modules it
    calls (``scale(age)`` -> ``age``, ``np.log(crp)`` -> ``crp``, ``C(dx, Treatment('MDD'))`` -> ``dx``)."""
    import ast

    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return [t for t in _TERM_SPLIT.split(expr) if t and not t.isdigit()]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            skip.add(id(node.func))
        elif isinstance(node, ast.Attribute):
            skip.add(id(node.value))
    return list(dict.fromkeys(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in skip))


def _sample_table(obs: pd.DataFrame, sample_key: str, columns: Sequence[str]) -> pd.DataFrame:
    """One row per sample with the sample-level ``columns``; error if any of them varies within a sample."""
    g = obs.groupby(sample_key, observed=True, sort=False)
    for c in columns:
        nun = g[c].nunique(dropna=False)
        bad = nun[nun > 1]
        if len(bad):
            s = bad.index[0]
            vals = list(pd.unique(obs.loc[obs[sample_key] == s, c]))[:5]
            raise ValueError(
                f"adata.obs[{c!r}] varies within sample {s!r} of sample_key={sample_key!r} (values {vals}; "
                f"{len(bad)} sample(s) affected). Condition and covariates must be constant within each sample. "
                "For paired designs or visits (the same donor measured more than once), set sample_key to the "
                "donor x condition (or donor x visit) sample and pass random_effect='<donor column>' or put the "
                "donor column in the design."
            )
    tab = g[list(columns)].first()
    if isinstance(tab.index, pd.CategoricalIndex):
        order = [c for c in tab.index.categories if c in set(tab.index)]
        tab = tab.loc[order]
    else:
        tab = tab.loc[sorted(tab.index, key=str)]
    tab.index = pd.Index(tab.index.astype(object), name=sample_key)
    return tab


def _levels(col: pd.Series) -> list:
    present = set(pd.unique(col.dropna()))
    if isinstance(col.dtype, pd.CategoricalDtype):
        return [c for c in col.cat.categories if c in present]
    return sorted(present, key=str)


def _is_categorical(col: pd.Series) -> bool:
    return (
        isinstance(col.dtype, pd.CategoricalDtype)
        or pd.api.types.is_bool_dtype(col)
        or not pd.api.types.is_numeric_dtype(col)
    )


def _suggest(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=3)
    return f" Did you mean {close}?" if close else ""


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (str, Mapping)) or (
        isinstance(x, tuple) and len(x) == 3 and isinstance(x[0], str) and not isinstance(x[1], (tuple, list))
    ):
        return [x]
    return list(x)


def build_design(
    obs: pd.DataFrame,
    *,
    sample_key: str,
    design: str | None = None,
    contrast=None,
    test=None,
    condition_key: str | None = None,
    reference=None,
    covariates: Sequence[str] = (),
    random_effect: str | None = None,
    reserved: Mapping[str, str] | None = None,
    min_per_level: int = 2,
    where: str = "adata.obs",
) -> Design:
    """Check a study design against the samples and build its model matrix and hypotheses (no work done yet).

    Either ``design`` (a formula; ``contrast`` / ``test`` say what to test) or the two-group form
    ``condition_key`` / ``reference`` / ``covariates`` (turned into ``~ condition_key + covariates`` and the
    contrast case vs reference). ``reserved`` maps other column roles (e.g. ``{"groupby": "cell_type"}``) that
    must not appear in the design. Every error names the column and why.
    """
    reserved = dict(reserved or {})
    if isinstance(covariates, str):
        covariates = (covariates,)
    covariates = tuple(covariates)
    if not all(isinstance(c, str) for c in covariates):
        raise TypeError(f"`covariates` must be a list of column names, got {covariates!r}.")
    if sample_key not in obs.columns:
        raise KeyError(f"sample_key {sample_key!r} is not a column of {where}.{_suggest(sample_key, obs.columns)}")
    legacy = design is None
    if legacy:
        if condition_key is None:
            raise ValueError("Pass `design` (a formula, e.g. design='~ condition + age') or `condition_key`.")
        if contrast is not None or test is not None:
            raise ValueError(
                "`contrast` and `test` go with `design=`; with condition_key the test is case vs "
                "reference. Write design='~ <condition> + <covariates>' instead."
            )
        if condition_key in covariates:
            raise ValueError(f"The condition column {condition_key!r} cannot also be a covariate.")
        formula = "~ " + " + ".join([condition_key, *covariates])
    else:
        if condition_key is not None or covariates or reference is not None:
            raise ValueError(
                "Pass either `design` (with `contrast` / `test`) or the two-group form "
                "(`condition_key`, `reference`, `covariates`), not both."
            )
        if not isinstance(design, str) or "~" not in design:
            raise ValueError(f"design must be a formula string such as '~ condition + age', got {design!r}.")
        formula = design.strip()
    variables = formula_variables(formula)
    for v in variables + ([random_effect] if random_effect else []):
        if v not in obs.columns:
            raise KeyError(
                f"Column {v!r} of the design is not in {where}.{_suggest(v, obs.columns)} "
                f"Available columns: {list(obs.columns)[:20]}"
            )
    if sample_key in variables:
        raise ValueError(f"sample_key {sample_key!r} cannot be in the design: it is the unit of replication.")
    for role, col in reserved.items():
        if col is not None and (col in variables or col == random_effect):
            raise ValueError(
                f"{role} {col!r} is also in the design or the random effect; {role} names the "
                "cell types (groups) tested separately, e.g. groupby='cell_type'."
            )
    if random_effect is not None and random_effect in variables:
        raise ValueError(
            f"random_effect {random_effect!r} is also in the design; it names the donor whose samples "
            "(visits, pools, paired conditions) share a random intercept."
        )
    cols = list(dict.fromkeys(variables + ([random_effect] if random_effect else [])))
    # missing values: name the samples
    for v in cols:
        na = obs[v].isna().to_numpy()
        if na.any():
            bad = [str(s) for s in pd.unique(obs[sample_key].to_numpy()[na])]
            raise ValueError(
                f"Column {v!r} of the design has missing values (NaN) for {len(bad)} sample(s) of {sample_key!r}: "
                f"{bad[:10]}{' ...' if len(bad) > 10 else ''}. Models cannot use samples without it, and none is "
                f"dropped silently: subset first, e.g. `adata[adata.obs[{v!r}].notna()].copy()`, or fill it."
            )
    tab = _sample_table(obs, sample_key, cols)
    categorical: dict[str, list] = {}
    frame = pd.DataFrame(index=tab.index)
    for v in variables:
        col = tab[v]
        if _is_categorical(col):
            levels = _levels(col)
            frame[v] = pd.Categorical(col.astype(object).where(col.notna()), categories=levels)
            categorical[v] = levels
        else:
            frame[v] = col.to_numpy(dtype=float)
    from formulaic import model_matrix

    try:
        mm = model_matrix(formula, frame, ensure_full_rank=True, na_action="raise")
    except Exception as err:
        raise ValueError(f"design={formula!r} could not be built on the sample table ({err}).") from err
    spec = mm.model_spec
    names = [str(c) for c in mm.columns]
    X = np.asarray(mm, dtype=float)
    if "Intercept" not in names:
        raise ValueError(
            f"design={formula!r} has no intercept; keep it (remove '- 1' / '+ 0') so that contrasts "
            "and df are the usual ones."
        )
    hint = ""
    for v, lv in categorical.items():
        if len(lv) + 1 >= len(tab) and pd.to_numeric(pd.Series([str(x) for x in lv]), errors="coerce").notna().all():
            hint = (
                f" Column {v!r} is categorical with {len(lv)} levels for {len(tab)} samples and its values look "
                f"numeric: convert it, e.g. `adata.obs[{v!r}] = adata.obs[{v!r}].astype(float)`."
            )
    problem = rank_problem(X, names)
    if problem is not None:
        raise ValueError(f"design={formula!r}: {problem}{hint}")
    if X.shape[0] <= X.shape[1]:
        raise ValueError(
            f"Too few samples ({X.shape[0]}) for design={formula!r} ({X.shape[1]} columns {names}): "
            f"no residual degrees of freedom. Use fewer covariates.{hint}"
        )

    def grid_row(overrides: Mapping[str, object]) -> np.ndarray:
        row = {}
        for v in variables:
            if v in overrides:
                val = overrides[v]
            elif v in categorical:
                val = categorical[v][0]
            else:
                val = float(frame[v].mean())
            row[v] = pd.Categorical([val], categories=categorical[v]) if v in categorical else [float(val)]
        return np.asarray(spec.get_model_matrix(pd.DataFrame(row)), dtype=float)[0]

    hyps: list[Hypothesis] = []
    specs = _as_list(contrast) + [("__test__", t) for t in _as_list(test)]
    if legacy:
        levels = categorical.get(condition_key)
        if levels is None:
            raise ValueError(
                f"condition_key {condition_key!r} is numeric; for a continuous column use "
                f"design='~ {condition_key}' with test={condition_key!r}."
            )
        if len(levels) < 2:
            raise ValueError(
                f"{where}[{condition_key!r}] has a single level ({levels}); a comparison needs two. "
                "Check the subset you passed (both conditions must be present)."
            )
        if len(levels) > 2:
            raise ValueError(
                f"{where}[{condition_key!r}] has {len(levels)} levels {levels}; with condition_key pass data with "
                f"exactly two, or use design='~ {condition_key}' (every pair of levels is tested, or name them with "
                f"contrast=({condition_key!r}, '<case>', '<reference>'))."
            )
        ref = levels[0] if reference is None else reference
        if ref not in levels:
            raise ValueError(f"reference={reference!r} is not a level of {where}[{condition_key!r}]: {levels}.")
        case = levels[1] if levels[0] == ref else levels[0]
        specs = [(condition_key, case, ref)]
    elif not specs:
        first = variables[0] if variables else None
        if first is None:
            raise ValueError(f"design={formula!r} has no variable to test.")
        if first in categorical:
            lv = categorical[first]
            specs = [(first, b, a) for i, a in enumerate(lv) for b in lv[i + 1 :]]
        else:
            specs = [("__test__", first)]
    for s in specs:
        hyps.append(
            _hypothesis(
                s,
                formula=formula,
                names=names,
                spec=spec,
                variables=variables,
                categorical=categorical,
                frame=frame,
                grid_row=grid_row,
                where=where,
            )
        )
    seen = set()
    for h in hyps:
        if h.name in seen:
            raise ValueError(f"The hypothesis {h.name!r} is requested twice.")
        seen.add(h.name)
    # enough samples per tested level / value
    for h in hyps:
        if h.kind == "contrast":
            n = frame[h.variable].value_counts()
            for lv in (h.case, h.reference):
                if n.get(lv, 0) < min_per_level:
                    raise ValueError(
                        f"Condition {lv!r} ({h.variable}) has {n.get(lv, 0)} sample(s) (levels of {sample_key!r}); at least "
                        f"{min_per_level} per arm are needed to estimate donor-to-donor variation. Per-cell tests are not a "
                        "substitute."
                    )
        elif h.kind == "continuous" and frame[h.variable].nunique() < 3:
            raise ValueError(
                f"The continuous column {h.variable!r} takes {frame[h.variable].nunique()} distinct "
                "value(s) across samples; a slope needs at least 3."
            )
    if random_effect is not None:
        re_ = tab[random_effect]
        n_re = re_.nunique()
        if n_re < 2:
            raise ValueError(f"random_effect {random_effect!r} has a single level; a random intercept needs >= 2.")
        if n_re == len(tab):
            raise ValueError(
                f"random_effect {random_effect!r} has one level per sample ({n_re} levels, {len(tab)} samples of "
                f"{sample_key!r}): there is nothing to group and the random intercept cannot be separated from the "
                "residual. Leave random_effect=None, or set sample_key to the finer sample (visit, pool) column."
            )
        for h in hyps:
            if h.kind != "contrast":
                continue
            per = tab.groupby(random_effect, observed=True)[h.variable].nunique()
            if (per == 1).all():
                arm = tab.groupby(h.variable, observed=True)[random_effect].nunique()
                for lv in (h.case, h.reference):
                    if arm.get(lv, 0) < 2:
                        raise ValueError(
                            f"{h.variable} level {lv!r} has {arm.get(lv, 0)} level(s) of random_effect "
                            f"{random_effect!r} (its samples come from one donor); at least 2 donors per arm are "
                            "needed: repeated samples of one donor do not measure donor-to-donor variation."
                        )
    return Design(
        formula=formula,
        table=tab,
        X=X,
        columns=names,
        hypotheses=hyps,
        random_effect=random_effect,
        variables=variables,
        categorical=categorical,
        legacy=legacy,
    )


def _hypothesis(s, *, formula, names, spec, variables, categorical, frame, grid_row, where) -> Hypothesis:
    if isinstance(s, Mapping):  # {model column: weight}
        v = np.zeros(len(names))
        for k, w in s.items():
            if k not in names:
                raise KeyError(
                    f"contrast column {k!r} is not a column of the design matrix {names}.{_suggest(k, names)}"
                )
            v[names.index(k)] = float(w)
        if not v.any():
            raise ValueError("the contrast dict is all zero.")
        label = " ".join(f"{w:+g}*{k}" for k, w in s.items() if w)
        return Hypothesis(name=label, kind="custom", vector=v)
    if isinstance(s, tuple) and len(s) == 2 and s[0] == "__test__":
        t = s[1]
        if not isinstance(t, str):
            raise TypeError(f"test must be a column name or an interaction 'a:b', got {t!r}.")
        if ":" in t:
            parts = [p.strip() for p in t.split(":")]
            for p in parts:
                if p not in variables:
                    raise ValueError(f"test={t!r}: {p!r} is not in design={formula!r}.")
            cols = [
                j
                for j, n in enumerate(names)
                if ":" in n and sorted(x.split("[")[0] for x in n.split(":")) == sorted(parts)
            ]
            if not cols:
                raise ValueError(
                    f"test={t!r}: design={formula!r} has no {t} interaction term; write it in the "
                    f"formula, e.g. '~ {parts[0]} * {parts[1]}'."
                )
            if len(cols) > 1:
                raise ValueError(
                    f"test={t!r} spans {len(cols)} design columns {[names[j] for j in cols]} (a factor "
                    "with more than two levels); test one of them with contrast={'<column>': 1}."
                )
            v = np.zeros(len(names))
            v[cols[0]] = 1.0
            return Hypothesis(name=f"{t} ({names[cols[0]]})", kind="interaction", vector=v, variable=t)
        if t not in variables:
            raise ValueError(
                f"test={t!r} is not in design={formula!r}: add it to the formula "
                f"(e.g. '{formula} + {t}').{_suggest(t, variables)}"
            )
        if t in categorical:
            lv = categorical[t]
            raise ValueError(
                f"test={t!r} is categorical (levels {lv}); compare levels with contrast=({t!r}, "
                f"{lv[-1]!r}, {lv[0]!r}), or convert it to numbers if it is a score."
            )
        m = float(frame[t].mean())
        v = grid_row({t: m + 1.0}) - grid_row({t: m})
        return Hypothesis(name=f"{t} (per unit)", kind="continuous", vector=v, variable=t)
    if not (isinstance(s, (tuple, list)) and len(s) == 3):
        raise ValueError(
            f"contrast must be (column, case, reference), a list of them, or a dict "
            f"{{design column: weight}}; got {s!r}."
        )
    var, case, ref = s
    if var not in variables:
        raise ValueError(f"contrast {tuple(s)!r}: {var!r} is not in design={formula!r}.{_suggest(var, variables)}")
    if var not in categorical:
        raise ValueError(f"contrast {tuple(s)!r}: {var!r} is numeric; test a continuous column with test={var!r}.")
    lv = categorical[var]
    for x in (case, ref):
        if x not in lv:
            raise ValueError(f"contrast {tuple(s)!r}: {x!r} is not a level of {where}[{var!r}] {lv}.")
    if case == ref:
        raise ValueError(f"contrast {tuple(s)!r} compares a level with itself.")
    v = grid_row({var: case}) - grid_row({var: ref})
    return Hypothesis(name=f"{var}: {case} vs {ref}", kind="contrast", vector=v, variable=var, case=case, reference=ref)
