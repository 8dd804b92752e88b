"""Cohort simulator: a depression (MDD) vs control PBMC cohort with known, switchable planted effects.

Expression profiles, dispersions, library sizes and the base composition come from a compact reference
built from the real pbmc3k data (``src/immunomood/resources/build/build_sim_reference.py`` -> ``resources/sim_reference.npz``).
The parameters that shape donor-to-donor variation (cells per donor, donor library offsets, composition
concentration, per-gene biological variation between donors, latent complement activity) are estimated from real
donors (onek1k, csle, combat) by ``src/immunomood/resources/build/estimate_sim_params.py`` ->
``resources/sim_params.json``; the simulator's defaults are the values of that file.
Counts are generated donor by donor and cell-type block by block, in chunks of cells, straight into sparse
form: genes whose expected count is large are drawn densely (gamma-Poisson) over the chunk only, the long
tail of lowly expressed genes through the exact compound Poisson-logarithmic representation of the negative
binomial (cost proportional to the counts drawn, not to cells x genes). A dense cells x genes matrix of the
whole data is never held.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._docs import doc_params, doc_random_state
from .._settings import logger
from .._utils import check_choice, check_number, resolve_random_state

__all__ = ["simulate_cohort"]

SIMULATOR_VERSION = "2.1.0"
# 1.1.0: complement_sd 0.05 -> 0.02, composition_shift 1.5 -> 1.8
# 2.0.0: donor-level parameters estimated from real donors (resources/sim_params.json): unequal cells per donor
#        (cells_per_donor_sd), donor_sd 0.1 -> 0.21, complement_sd 0.02 -> 0 (estimate), library_sd 0.2 -> 0.27,
#        composition_concentration 50 -> 18
# 2.1.0: clinical designs (groups, group_effects, severity_effect, n_visits, responder_fraction, treatment_effect,
#        response_baseline_effect); with these at their defaults the output is bit-identical to 2.0.0 (their
#        randomness comes from a fifth, independent child of the root seed)
_DENSE_THRESHOLD = 1.0  # expected count above which a gene is drawn densely (speed only)
_MAX_BLOCK_CELLS = 2048  # cells of one type drawn at once (bounds the working memory)
CONDITIONS = ("control", "MDD")
COMPLEMENT_CELL_TYPE = "Classical monocyte"
PLANTED_MIN_MEAN = 0.03  # counts per classical monocyte at the reference depth for a complement gene to be planted
VISITS = ("baseline", "week8")
RESPONDER_LEVELS = ("non-responder", "responder", "control")
# severity (HAM-D-like): reference group ~ N(3, 2), other groups ~ N(22, 5), clipped to the HAM-D-17 range [0, 52];
# at week 8 responders' score drops by 50%, non-responders' by 10% (reference group unchanged)
SEVERITY_CONTROL = (3.0, 2.0)
SEVERITY_PATIENT = (22.0, 5.0)
SEVERITY_RANGE = (0.0, 52.0)
SEVERITY_WEEK8_FACTOR = {"responder": 0.5, "non-responder": 0.9, "control": 1.0}
RESPONSE_PROTEIN = "IL6"  # plasma protein carrying response_baseline_effect (responders - non-responders, log2)
DESIGN_DEFAULTS: dict[str, Any] = {
    "groups": CONDITIONS,
    "group_effects": None,
    "severity_effect": 0.0,
    "n_visits": 1,
    "responder_fraction": 0.5,
    "treatment_effect": 0.0,
    "response_baseline_effect": 0.0,
}

# complement pathway by arm: read from the packaged gene sets (resources/gene_sets/complement.gmt, Reactome; set
# ``complement_<arm>``; immunoglobulin segments left out on purpose). ``convertases`` is not a set of the resource: the
# C3/C5 convertase components, every one a member of the classical, alternative or terminal arm, kept as a grouping of
# the planted genes in ``effects["complement_arms"]``.
_COMPLEMENT_ARM_ORDER = ("classical", "lectin", "alternative", "convertases", "terminal", "receptors", "regulators")
_CONVERTASES = ("C2", "C3", "C4A", "C4B", "C5", "CFB")

PLASMA_PLANTED = ("C5", "DCLK3", "CALY")
PLASMA_NAMED = ("C5", "DCLK3", "CALY", "CRP", "IL6", "TNF")
# unrelated proteins (names from common Olink inflammation / cardiometabolic panels): donor noise only,
# except the weak documented age / sex effects below
PLASMA_UNRELATED = (
    "CXCL8",
    "CCL2",
    "CCL3",
    "CCL4",
    "CCL7",
    "CCL11",
    "CCL19",
    "CCL20",
    "CCL23",
    "CCL25",
    "CXCL1",
    "CXCL5",
    "CXCL6",
    "CXCL9",
    "CXCL10",
    "CXCL11",
    "IL10",
    "IL12B",
    "IL15RA",
    "IL17A",
    "IL18",
    "IL18R1",
    "IL1A",
    "IL2RB",
    "IL7",
    "IFNG",
    "VEGFA",
    "MMP1",
    "MMP10",
    "TNFSF10",
    "TNFSF12",
    "TNFRSF9",
    "CD40",
    "CD5",
    "CD6",
    "CD244",
    "CDCP1",
    "CST5",
    "CSF1",
    "EIF4EBP1",
    "FGF21",
    "FLT3LG",
    "HGF",
    "OSM",
    "SIRT2",
    "TGFA",
    "GDF15",
    "LEP",
)
# log2 NPX units per year of age (centred at 45 years) and for female sex
PLASMA_AGE_EFFECTS = {"GDF15": 0.03, "CDCP1": 0.015, "CXCL9": 0.01}
PLASMA_SEX_EFFECTS = {"LEP": 1.0}


# ----------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------
ESTIMATED_PARAMS = ("cells_per_donor_sd", "library_sd", "composition_concentration", "donor_sd", "complement_sd")


@lru_cache(maxsize=1)
def _load_params() -> dict[str, Any]:
    """The donor-level parameters estimated from real donors, with their provenance (resources/sim_params.json)."""
    raw = (resources.files("immunomood") / "resources" / "sim_params.json").read_bytes()
    doc = json.loads(raw)
    doc["sha256"] = hashlib.sha256(raw).hexdigest()
    return doc


_P = _load_params()["params"]


@lru_cache(maxsize=1)
def _load_reference() -> dict[str, Any]:
    base = resources.files("immunomood") / "resources"
    raw = (base / "sim_reference.npz").read_bytes()
    import io

    with np.load(io.BytesIO(raw)) as z:
        ref = {k: z[k] for k in z.files}
    ref["provenance"] = json.loads((base / "sim_reference.json").read_text())
    ref["sha256"] = hashlib.sha256(raw).hexdigest()
    ref["profiles"] = ref["profiles"].astype(np.float64)
    ref["dispersion"] = ref["dispersion"].astype(np.float64)
    for k in ("genes", "gene_ids", "cell_types", "lineages"):
        ref[k] = ref[k].astype(str)
    return ref


@lru_cache(maxsize=1)
def _complement_arms() -> tuple[tuple[str, tuple[str, ...]], ...]:
    from ..tl._gene_sets import gene_sets

    sets = gene_sets("complement")
    arms = []
    for arm in _COMPLEMENT_ARM_ORDER:
        genes = _CONVERTASES if arm == "convertases" else tuple(sets[f"complement_{arm}"])
        arms.append((arm, genes))
    members = {g for arm, genes in arms if arm != "convertases" for g in genes}
    if not set(_CONVERTASES) <= members:  # the resource changed: the grouping must follow it
        raise RuntimeError(f"Convertase genes {sorted(set(_CONVERTASES) - members)} are not in complement.gmt.")
    return tuple(arms)


def complement_arms() -> dict[str, list[str]]:
    """The complement arms (arm -> gene symbols) of the packaged ``complement`` gene sets, plus ``convertases``."""
    return {arm: list(genes) for arm, genes in _complement_arms()}


def complement_genes() -> list[str]:
    """Union of the complement arms, in arm order, without duplicates."""
    seen: dict[str, None] = {}
    for genes in complement_arms().values():
        for g in genes:
            seen.setdefault(g, None)
    return list(seen)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, *, minimum: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}).{hint}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.{hint}")
    return int(value)


def _check_real(name: str, value: Any, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise TypeError(f"`{name}` must be a finite number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if positive and value <= 0:
        raise ValueError(f"`{name}` must be > 0, got {value}. Use 1.0 (multiplicative) for no effect.")
    if nonneg and value < 0:
        raise ValueError(f"`{name}` must be >= 0, got {value}.")
    return value


def _check_groups(groups: Any) -> tuple[str, ...]:
    fix = ' Pass e.g. ("control", "MDD") or ("control", "MDD", "BD"); the first is the reference group.'
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        raise TypeError(f"`groups` must be a sequence of group names, got {groups!r} ({type(groups).__name__}).{fix}")
    bad = [g for g in groups if not isinstance(g, str) or not g]
    if bad:
        raise TypeError(f"`groups` must hold non-empty strings, got {bad!r}.{fix}")
    groups = tuple(groups)
    if len(groups) < 2:
        raise ValueError(f"`groups` must name at least 2 groups (a reference and one other), got {list(groups)}.{fix}")
    dup = sorted({g for g in groups if groups.count(g) > 1})
    if dup:
        raise ValueError(f"`groups` must be unique, got {list(groups)} ({dup} repeated).{fix}")
    return groups


def _check_group_effects(group_effects: Any, groups: tuple[str, ...]) -> dict[str, float]:
    if group_effects is None:
        return {}
    if not isinstance(group_effects, Mapping):
        raise TypeError(
            f"`group_effects` must be None or a mapping group -> complement fold change, got {group_effects!r} "
            f'({type(group_effects).__name__}). Pass e.g. {{"MDD": 1.5, "BD": 1.2}}.'
        )
    unknown = [g for g in group_effects if g not in groups[1:]]
    if unknown:
        raise ValueError(
            f"`group_effects` names {unknown!r}, which are not non-reference groups of `groups` "
            f"({list(groups[1:])}; the reference {groups[0]!r} has no effect by definition). Use those names."
        )
    return {g: _check_real(f"group_effects[{g!r}]", v, positive=True) for g, v in group_effects.items()}


# ----------------------------------------------------------------------------------------------
# sampler
# ----------------------------------------------------------------------------------------------
class _CSRBuffer:
    """Growable CSR storage: chunks are appended into preallocated arrays (no final concatenation copy)."""

    def __init__(self, n_cols: int, capacity: int, dtype) -> None:
        self.n_cols = n_cols
        self.data = np.empty(max(capacity, 1), dtype=dtype)
        self.indices = np.empty(max(capacity, 1), dtype=np.int32)
        self.row_nnz: list[np.ndarray] = []
        self.nnz = 0

    def append(self, m: sparse.csr_matrix, reserve: int = 0) -> None:
        n = m.nnz
        if self.nnz + n > self.data.size:  # estimate exceeded: grow once to what is still expected
            new = int(self.nnz + n + reserve)
            logger.debug("simulate_cohort: growing the count buffer to %d entries", new)
            for attr in ("data", "indices"):
                old = getattr(self, attr)
                arr = np.empty(new, dtype=old.dtype)
                arr[: self.nnz] = old[: self.nnz]
                setattr(self, attr, arr)
        self.data[self.nnz : self.nnz + n] = m.data
        self.indices[self.nnz : self.nnz + n] = m.indices
        self.row_nnz.append(np.diff(m.indptr))
        self.nnz += n

    def to_csr(self) -> sparse.csr_matrix:
        counts = np.concatenate(self.row_nnz) if self.row_nnz else np.zeros(0, dtype=np.int64)
        idx_dtype = np.int32 if self.nnz < np.iinfo(np.int32).max else np.int64
        indptr = np.zeros(counts.size + 1, dtype=idx_dtype)
        np.cumsum(counts, out=indptr[1:])
        data, indices = self.data[: self.nnz], self.indices[: self.nnz]
        if idx_dtype is np.int64:
            indices = indices.astype(np.int64)
        m = sparse.csr_matrix((data, indices, indptr), shape=(counts.size, self.n_cols), copy=False)
        m.has_sorted_indices = True
        return m


def _alias_table(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker / Vose alias table for sampling indices with probability proportional to ``w``."""
    n = w.size
    prob = (w * (n / w.sum())).tolist()
    alias = list(range(n))
    small = [i for i, p in enumerate(prob) if p < 1.0]
    large = [i for i, p in enumerate(prob) if p >= 1.0]
    while small and large:
        s = small.pop()
        big = large[-1]
        alias[s] = big
        prob[big] -= 1.0 - prob[s]
        if prob[big] < 1.0:
            large.pop()
            small.append(big)
    for i in small + large:  # numerical leftovers
        prob[i] = 1.0
    return np.asarray(prob), np.asarray(alias, dtype=np.int64)


def _logseries(rng: np.random.Generator, p: np.ndarray, *, max_walk: int = 500) -> np.ndarray:
    """Logarithmic(p) variates by inverse-CDF walk (cheap when p is small, as here), exact."""
    out = np.ones(p.size, dtype=np.int64)
    if p.size == 0:
        return out
    u = rng.random(p.size)
    pk = -p / np.log1p(-p)  # P(Y = 1)
    cdf = pk.copy()
    active = np.flatnonzero(u >= cdf)
    k = 1
    while active.size and k < max_walk:
        k += 1
        pa = pk[active] * p[active] * ((k - 1) / k)
        pk[active] = pa
        cdf[active] += pa
        out[active] = k
        active = active[u[active] >= cdf[active]]
    if active.size:  # rare heavy tail: draw Y | Y > k by rejection
        todo = active
        while todo.size:
            draw = rng.logseries(p[todo])
            ok = draw > k
            out[todo[ok]] = draw[ok]
            todo = todo[~ok]
    return out


def _sample_block(
    rng: np.random.Generator,
    lib: np.ndarray,
    q: np.ndarray,
    inv_phi: np.ndarray,
    *,
    dense_threshold: float,
    max_dense: int,
    dtype,
) -> sparse.csr_matrix:
    """NB counts for cells with library sizes ``lib`` and gene weights ``q`` (mean = lib * q), as CSR.

    Genes with ``q * median(lib) >= dense_threshold`` are drawn densely as gamma-Poisson mixtures over row
    chunks of at most ``max_dense`` entries; the others through the exact compound representation
    NB(mu, r) = sum of N ~ Poisson(r log(1 + mu / r)) variables ~ Logarithmic(mu / (r + mu)), N being obtained
    by thinning a Poisson(mu) process sampled gene by gene (events placed in cells with an alias table), so
    the cost of the long tail is proportional to the counts drawn, not to cells x genes.
    """
    n_cells, n_genes = lib.size, q.size
    med = float(np.median(lib))
    dense = np.flatnonzero(q * med >= dense_threshold)
    tail = np.flatnonzero((q * med < dense_threshold) & (q > 0))
    rows_parts, cols_parts, vals_parts = [], [], []

    if dense.size:
        r_d = inv_phi[dense]
        scale = q[dense] / r_d
        step = max(1, max_dense // dense.size)
        shape = np.broadcast_to(r_d, (min(step, n_cells), dense.size))
        for start in range(0, n_cells, step):
            stop = min(n_cells, start + step)
            g = rng.standard_gamma(shape[: stop - start])
            g *= scale[None, :]
            g *= lib[start:stop, None]
            x = rng.poisson(g)
            rr, cc = np.nonzero(x)
            rows_parts.append(rr + start)
            cols_parts.append(dense[cc])
            vals_parts.append(x[rr, cc])

    if tail.size:
        # candidate events: Poisson(q_g * sum(lib)) per gene, each placed in cell c with probability lib_c / sum(lib)
        n_ev = rng.poisson(q[tail] * lib.sum())
        genes = np.repeat(tail, n_ev)
        if genes.size:
            prob, alias = _alias_table(lib)
            j = rng.integers(0, n_cells, size=genes.size)
            cells = np.where(rng.random(genes.size) < prob[j], j, alias[j])
            mu = lib[cells] * q[genes]
            r = inv_phi[genes]
            # thinning to Poisson(r log(1 + mu / r)), then logarithmic cluster sizes
            keep = rng.random(genes.size) * mu < r * np.log1p(mu / r)
            cells, genes, mu, r = cells[keep], genes[keep], mu[keep], r[keep]
            sizes = _logseries(rng, np.clip(mu / (r + mu), 1e-300, 1 - 1e-12))
            rows_parts.append(cells)
            cols_parts.append(genes)
            vals_parts.append(sizes)

    if not rows_parts:
        return sparse.csr_matrix((n_cells, n_genes), dtype=dtype)
    rows = np.concatenate(rows_parts)
    cols = np.concatenate(cols_parts)
    vals = np.concatenate(vals_parts)
    # order entries by gene (radix sort on int16 keys): the CSR built from them then has sorted indices,
    # duplicates (same cell and gene from both tail clusters) adjacent, and needs no per-row sort
    key = cols.astype(np.int16) if n_genes < np.iinfo(np.int16).max else cols
    order = np.argsort(key, kind="stable")
    m = sparse.coo_matrix(
        (vals[order].astype(dtype), (rows[order].astype(np.int32), cols[order].astype(np.int32))),
        shape=(n_cells, n_genes),
    ).tocsr()  # sums duplicates
    return m


def _expected_nnz(
    lib_logmean: np.ndarray, log_sd: np.ndarray, profiles: np.ndarray, inv_phi: np.ndarray, cells: np.ndarray
) -> int:
    """Expected number of non-zero counts: P(NB > 0) integrated over the log-normal variation of the mean
    (Gauss-Hermite, 7 nodes), summed over genes and cells. Used to preallocate the count buffer."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(7)
    weights = weights / weights.sum()
    total = 0.0
    for t in range(profiles.shape[0]):
        if cells[t] <= 0:
            continue
        nz = 0.0
        for x, w in zip(nodes, weights, strict=True):
            mu = np.exp(lib_logmean[t] + log_sd[t] * x) * profiles[t]
            nz += w * (1.0 - (inv_phi / (inv_phi + mu)) ** inv_phi).sum()
        total += nz * cells[t]
    return int(total)


# ----------------------------------------------------------------------------------------------
# clinical design
# ----------------------------------------------------------------------------------------------
def _draw_design(
    rng: np.random.Generator,
    cond: np.ndarray,
    groups: tuple[str, ...],
    *,
    responder_fraction: float,
    severity_effect: float,
    n_visits: int,
    treatment_effect: float,
    response_baseline_effect: float,
) -> dict[str, Any]:
    """Severity scores, responders and the per-donor log2 shifts of the planted complement genes.

    Every draw is made whatever the parameters (same number, same order), so that e.g. ``n_visits`` or
    ``severity_effect`` leave the scores and the responders of a seed unchanged.
    """
    n = cond.size
    patient = cond > 0
    z = rng.standard_normal(n)
    mean = np.where(patient, SEVERITY_PATIENT[0], SEVERITY_CONTROL[0])
    sd = np.where(patient, SEVERITY_PATIENT[1], SEVERITY_CONTROL[1])
    severity = np.clip(mean + sd * z, *SEVERITY_RANGE)
    responder = np.full(n, "control", dtype=object)
    for c in range(1, len(groups)):  # the same share in every non-reference group
        members = np.flatnonzero(cond == c)
        members = members[rng.permutation(members.size)]
        n_resp = math.floor(responder_fraction * members.size + 0.5)
        responder[members] = "non-responder"
        responder[members[:n_resp]] = "responder"
    week8_z = rng.standard_normal(n)  # cells per donor at week8
    centre = float(severity[patient].mean())
    is_resp = responder == "responder"
    is_nonresp = responder == "non-responder"
    baseline_log2 = np.where(patient, severity_effect * (severity - centre) / 10.0, 0.0)
    baseline_log2 = baseline_log2 + response_baseline_effect * (0.5 * is_resp - 0.5 * is_nonresp)
    week8_log2 = baseline_log2 + treatment_effect * is_resp
    factor = np.array([SEVERITY_WEEK8_FACTOR[r] for r in responder])
    return {
        "severity": severity,
        "severity_week8": severity * factor,
        "severity_centre": centre,
        "responder": responder,
        "baseline_log2": baseline_log2,
        "week8_log2": week8_log2,
        "week8_z": week8_z,
        "visits": list(VISITS[:n_visits]),
    }


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
@doc_params(random_state=doc_random_state)
def simulate_cohort(
    n_donors: int = 16,
    n_cells_per_donor: int = 300,
    n_batches: int = 2,
    *,
    complement_effect: float = 1.5,
    composition_shift: float = 1.8,
    plasma_association: float = 1.0,
    null: bool = False,
    random_state: int | None = 0,
    plasma_effect: float = 1.0,
    complement_sd: float = _P["complement_sd"],
    donor_sd: float = _P["donor_sd"],
    batch_effect: float = 0.3,
    composition_concentration: float = _P["composition_concentration"],
    library_sd: float = _P["library_sd"],
    cells_per_donor_sd: float = _P["cells_per_donor_sd"],
    depth: float = 1.0,
    plasma_noise_sd: float = 0.5,
    n_genes: int | None = None,
    chunk_size: int = 4_000_000,
    groups: Sequence[str] = CONDITIONS,
    group_effects: Mapping[str, float] | None = None,
    severity_effect: float = 0.0,
    n_visits: int = 1,
    responder_fraction: float = 0.5,
    treatment_effect: float = 0.0,
    response_baseline_effect: float = 0.0,
):
    """Simulate a single-cell PBMC cohort of MDD patients and controls, with matched plasma proteomics.

    Half the donors are ``"control"``, half ``"MDD"`` (or, with ``groups``, as many in each group as possible);
    donors are spread over batches in a design balanced across condition (and sex). Clinical designs are
    available on request: a symptom score related to the planted immune effect (``severity_effect``), more
    diagnoses (``groups``, ``group_effects``), two visits with a treatment effect in responders (``n_visits``,
    ``treatment_effect``) and responders whose baseline immune profile differs (``response_baseline_effect``).
    Every planted effect is switchable, and all of them are zero with ``null=True``. The complete truth is stored
    in ``adata.uns["simulation"]`` and ``plasma.uns["simulation"]``.

    Generative model, per donor ``d``, fine cell type ``t`` and gene ``g``:

    - composition ``pi_d ~ Dirichlet(composition_concentration * w_cond)``, ``w`` being the reference
      composition (pbmc3k) with, in MDD, every monocyte type multiplied by ``composition_shift`` and every T and
      B type by the common factor that keeps the total at 1; cells of the donor ``N_d = round(n_cells_per_donor *
      exp(cells_per_donor_sd * z_d))`` (at least 1), cell types ~ Multinomial(``N_d``, ``pi_d``);
    - library size of a cell ``L = depth * exp(m_t + o_d + s_t * z)``, ``m_t, s_t`` the log-library mean and
      sd of type ``t`` in the reference, ``o_d ~ N(0, library_sd)`` a donor offset;
    - mean ``mu = L * p_tg * exp(e_dtg) * b_kg * c_dtg`` with ``p_tg`` the reference profile, ``e_dtg ~ N(0,
      donor_sd)`` donor biological variation, ``log b_kg ~ N(0, batch_effect)`` the gene-wise effect of the
      donor's batch ``k``; ``c_dtg = complement_effect**[MDD] * exp(a_d)`` for the complement genes that
      classical monocytes express (>= 0.03 counts per cell at the reference depth: 14 genes of the lectin,
      alternative, receptor and regulator arms; C1Q, C2 and the terminal components are not expressed there and
      are left alone, listed in ``effects["complement_genes_not_planted"]``), ``a_d ~ N(0, complement_sd)`` the
      donor's latent complement activity (1 otherwise); with ``groups``, ``complement_effect`` is replaced by
      the fold change of the donor's group (``group_effects``, 1 in the reference group);
    - counts ~ NB(mean ``mu``, gene-wise dispersion from the reference).

    Clinical design (simulator 2.1.0; its draws come from a stream of their own, so that with the design
    parameters at their defaults the output is that of 2.0.0, bit for bit). Every donor has a HAM-D-like
    severity ``h_d``, ~ N(3, 2) in the reference group and N(22, 5) in the others, clipped to [0, 52]; in a
    share ``responder_fraction`` of the donors of every non-reference group (rounded per group) the donor is a
    responder. The planted genes of classical monocytes get, on top of ``c_dtg``, the log2 shift

    - ``severity_effect * (h_d - hbar) / 10`` in non-reference donors, ``hbar`` the mean baseline severity of
      those donors (``severity_effect``: log2 fold change per 10 points; the baseline score is used at both
      visits, so the severity term is a donor trait);
    - ``+ response_baseline_effect / 2`` in responders and ``- response_baseline_effect / 2`` in non-responders
      (at both visits: a difference responders - non-responders of exactly ``response_baseline_effect``);
    - ``+ treatment_effect`` at ``"week8"`` in responders only: the time x responder interaction is exactly
      ``treatment_effect``, non-responders and the reference group are unchanged between visits.

    With two visits every donor is sampled at ``"baseline"`` and ``"week8"`` in its batch, with the same donor
    variation ``e_dtg``, library offset and composition ``pi_d``; the week8 sample draws its own number of cells
    (same law as ``N_d``), cell types and counts. Severity at week8 is 50% lower in responders, 10% lower in
    non-responders, unchanged in the reference group.

    Plasma (log2 NPX-like): each protein has a base level and donor noise; ``C5 = base + plasma_association *
    z_d + noise``, ``z_d`` the standardised true complement activity ``log(complement_effect) * [MDD] + a_d``;
    ``DCLK3`` and ``CALY`` are ``plasma_effect`` log2 units higher in MDD; ``GDF15``, ``CDCP1`` and ``CXCL9``
    rise weakly with age (0.03, 0.015, 0.01 log2 units per year) and ``LEP`` is 1 log2 unit higher in women;
    ``CRP``, ``IL6``, ``TNF`` and the other unrelated proteins carry donor noise only. No plate (batch) effects.
    With ``groups``, ``DCLK3`` and ``CALY`` are higher in every non-reference group; ``z_d`` includes the
    design's baseline log shift (group effect, severity and response terms); ``IL6`` is ``response_baseline_effect`` log2 units higher in responders than in
    non-responders (``+/- response_baseline_effect / 2``), so that response can be predicted from the plasma.
    Plasma has one row per donor (its baseline), whatever ``n_visits``.

    Parameters
    ----------
    n_donors
        Number of donors: with two groups even and >= 4 (half control, half MDD); with more groups at least 2 per
        group, split as evenly as possible (the first groups get the remainder).
    n_cells_per_donor
        Median number of cells per donor (each donor's number is log-normal around it, see
        ``cells_per_donor_sd``; pass ``cells_per_donor_sd=0`` for exactly this many cells in every donor).
    n_batches
        Number of batches, at most the number of donors of the smallest group (``n_donors // 2`` with two groups)
        so that every batch holds every group.
    complement_effect
        Fold change (> 0) of the complement-pathway genes in classical monocytes of MDD donors (of every
        non-reference group not in ``group_effects``); 1 switches it off.
    composition_shift
        Fold change (> 0) of the expected monocyte share (all monocyte types) in MDD (in every non-reference
        group); the T and B types are
        scaled down together to make room (NK, DC, platelet shares unchanged); 1 switches it off. The default
        1.8 (monocytes 24% -> 43% of PBMC, T + B cells 68% -> 49%; simulator 1.1.0, 1.5 before) is in the
        direction reported for depression (innate cells up, T and B cells down) and large enough that 8 vs 8
        donors with the default donor variation find the monocyte increase and the T-cell decrease in 10 of 10
        seeds (1.5: 7 and 5 of 10); the B-cell share, small and variable between donors, drops by 28% and is
        found in about 3 of 10.
    plasma_association
        Slope of plasma C5 (log2 units) on the donor's standardised monocyte complement activity; 0 switches it off.
    null
        Set every planted effect to zero (``complement_effect=1``, ``composition_shift=1``,
        ``plasma_association=0``, ``plasma_effect=0``, every ``group_effects`` value 1, ``severity_effect=0``,
        ``treatment_effect=0``, ``response_baseline_effect=0``), whatever was passed for them. The design itself
        (groups, visits, severity scores, responders, and which columns are written) is that of the values
        passed, so a null cohort has the same layout as its non-null twin.
    {random_state}
    plasma_effect
        Difference MDD - control of plasma DCLK3 and CALY, in log2 units; 0 switches it off.
    complement_sd
        Sd (natural-log scale) of the donors' latent complement activity in classical monocytes, shared by all
        planted complement genes, so that no test can average it away. Default: estimated from onek1k's 31
        donors with >= 10 classical monocytes, as the mean pairwise covariance across donors of the relative
        donor means of the planted complement genes onek1k holds (FCN1, CFD, C3AR1, CR1, ITGB2, ITGAX): -0.015,
        no shared variation detectable, so 0 (95% bootstrap upper bound of the sd: 0.067; simulator 2.0.0;
        0.02 in 1.1.0, 0.05 before). Pass a value > 0 to study a latent pathway activity.
    donor_sd
        Sd (natural-log scale) of the donor x cell type x gene multiplicative variation: real biological donor
        variation, what makes per-cell tests anti-conservative and donor-level tests calibrated. Default
        estimated from onek1k (median over genes of the between-donor squared CV of donor means, sampling noise
        removed, median over 4 cell types: 0.21; 0.1 before simulator 2.0.0).
    batch_effect
        Sd (natural-log scale) of the gene-wise multiplicative batch factors (default 0.3, moderate);
        pass e.g. 1.0 for strong batch effects, 0 for none.
    composition_concentration
        Dirichlet concentration of donor compositions. Default estimated from onek1k's 40 donors (method of
        moments on 4 labelled types, Dirichlet aggregation to the full composition): about 18 (50 before
        simulator 2.0.0), i.e. a classical monocyte share with a between-donor coefficient of variation near 50%.
    library_sd
        Sd (natural-log scale) of the donor library-size offset. Default estimated from onek1k (between-donor
        sd of the donor x type mean log library, sampling variance removed): about 0.27 (0.2 before 2.0.0).
    cells_per_donor_sd
        Sd (natural-log scale) of the number of cells per donor around ``n_cells_per_donor``. Default estimated
        from onek1k (sd of log cells of 4 labelled types per donor, less the part the donor's share of those
        types explains): about 0.18; 0 gives every donor ``n_cells_per_donor`` cells (the behaviour before 2.0.0).
    depth
        Multiplier of all library sizes (1: pbmc3k depth, about 2,200 UMIs per cell).
    plasma_noise_sd
        Sd of the donor noise of the planted plasma proteins C5, DCLK3, CALY (log2 units, default 0.5).
    n_genes
        Keep only the ``n_genes`` most expressed reference genes (planted complement genes always kept);
        ``None`` (default) keeps all of them (about 13,700).
    chunk_size
        Largest number of entries of a dense cells x genes block drawn at once (memory vs speed).
    groups
        Levels of ``obs["condition"]``, unique non-empty strings, at least 2; the first is the reference
        (control) group. E.g. ``("control", "MDD", "BD")`` for a third diagnosis. ``complement_effect`` and
        ``composition_shift`` apply to every other group unless ``group_effects`` says otherwise.
    group_effects
        Complement fold change (> 0) per non-reference group, e.g. ``{{"MDD": 1.5, "BD": 1.2}}``; groups left out
        get ``complement_effect``. ``None`` (default): ``complement_effect`` for all of them.
    severity_effect
        Log2 fold change of the planted complement genes of classical monocytes per 10 points of severity within
        the non-reference groups (slope ``severity_effect / 10`` log2 per point, in
        ``effects["severity_log2_slope_per_point"]``); 0 (default) switches it off.
    n_visits
        1 (default, one sample per donor) or 2 (``"baseline"`` and ``"week8"``).
    responder_fraction
        Share (0 to 1) of the donors of every non-reference group who respond to treatment (default 0.5).
    treatment_effect
        Log2 change of the planted complement genes of classical monocytes from baseline to week8 in responders
        only (negative: normalises), the time x responder interaction; needs ``n_visits=2``. 0 switches it off.
    response_baseline_effect
        Log2 difference at baseline (and week8) of the planted complement genes of classical monocytes,
        responders - non-responders (a baseline profile that predicts response), planted as well in plasma
        ``IL6``; 0 switches it off.

    Returns
    -------
    adata
        Cells x genes AnnData: integer counts in ``X`` (CSR, float32), gene symbols as ``var_names``
        (``var["gene_ids"]``: Ensembl IDs), ``obs`` columns ``donor``, ``condition`` (categories ``groups``,
        ``["control", "MDD"]`` by default), ``batch``, ``sex``, ``age``, ``cell_type_true``, ``lineage_true``.
        When any design parameter (``groups`` ... ``response_baseline_effect``) differs from its default, also
        ``severity`` (float; the sample's score: the baseline score, or the week8 score in week8 cells); with
        ``n_visits=2`` or ``response_baseline_effect != 0`` also ``responder`` (categories ``["non-responder",
        "responder", "control"]``, ``"control"`` in the reference group); with ``n_visits=2`` also ``visit``
        (categories ``["baseline", "week8"]``) and ``sample`` (``"<donor>_<visit>"``). With the defaults none of
        them is written (the layout of simulator 2.0.0); the scores are in ``uns["simulation"]["donors"]``.
        ``uns["simulation"]``: parameters, effects, planted genes, cell types, composition, cells
        (``n_cells``, ``cell_counts``: per donor, per sample with two visits) and latent activity per donor,
        batch log-factors per gene, sizes, seed, reference version and the sha256 of the estimated parameters
        (``reference["params_sha256"]``); ``donors``: per donor condition, batch, sex, age, baseline
        ``severity`` and ``responder``; ``design``: groups, group sizes, ``group_effects``, the severity slope
        and centre, visits, ``responders`` per donor, ``treatment_effect`` (= ``interaction_log2``),
        ``response_baseline_effect``, ``response_protein`` and ``samples`` (per sample: donor, visit, severity,
        ``design_log2_shift`` from the design terms and ``planted_log2_shift``, the total log2 shift of the
        planted genes including the group effect and latent activity).
    plasma
        Donors x proteins AnnData (obs index = donor IDs; ``condition``, ``sex``, ``age``, ``batch``, plus the
        baseline ``severity`` and ``responder`` when ``adata`` has them), one row per donor (baseline), ``X`` in
        log2 NPX-like units; ``uns["simulation"]`` with the plasma truth.

    Examples
    --------
    >>> import immunomood as im
    >>> adata, plasma = im.datasets.simulate_cohort(8, 200, random_state=1)
    >>> null_adata, null_plasma = im.datasets.simulate_cohort(8, 200, null=True)
    >>> trial, _ = im.datasets.simulate_cohort(
    ...     12, 100, groups=("control", "MDD", "BD"), severity_effect=1.0, n_visits=2, treatment_effect=-1.0
    ... )
    """
    import anndata as ad

    groups = _check_groups(groups)
    n_groups = len(groups)
    if n_groups == 2:
        n_donors = _check_int("n_donors", n_donors, minimum=4, hint=" Pass an even number of donors, e.g. 16.")
        if n_donors % 2:
            raise ValueError(
                f"`n_donors` must be even (half {groups[0]}, half {groups[1]}), got {n_donors}. "
                f"Pass e.g. {n_donors + 1}."
            )
    else:
        n_donors = _check_int(
            "n_donors",
            n_donors,
            minimum=2 * n_groups,
            hint=f" At least 2 donors per group are needed ({n_groups} groups); pass e.g. {6 * n_groups}.",
        )
    group_sizes = [n_donors // n_groups + (1 if i < n_donors % n_groups else 0) for i in range(n_groups)]
    n_cells_per_donor = _check_int("n_cells_per_donor", n_cells_per_donor, minimum=1)
    n_batches = _check_int("n_batches", n_batches, minimum=1)
    if n_batches > min(group_sizes):
        what = "both conditions" if n_groups == 2 else f"all {n_groups} groups"
        raise ValueError(
            f"`n_batches` must be at most {min(group_sizes)} (the donors of the smallest group, n_donors // "
            f"{n_groups}) so that every batch holds {what}, got n_batches={n_batches}. Lower n_batches or add donors."
        )
    group_effects = _check_group_effects(group_effects, groups)
    severity_effect = _check_real("severity_effect", severity_effect)
    if isinstance(n_visits, (bool, np.bool_)) or not isinstance(n_visits, Integral):
        raise TypeError(f"`n_visits` must be the integer 1 or 2, got {n_visits!r} ({type(n_visits).__name__}).")
    n_visits = int(check_choice("n_visits", n_visits, (1, 2), fix="Pass 1 (baseline only) or 2 (baseline and week8)."))
    responder_fraction = check_number(
        "responder_fraction",
        responder_fraction,
        min=0.0,
        max=1.0,
        fix="It is the share of non-reference donors who respond, e.g. 0.5.",
    )
    treatment_effect = _check_real("treatment_effect", treatment_effect)
    if treatment_effect != 0 and n_visits == 1:
        raise ValueError(
            f"`treatment_effect` ({treatment_effect}) is a change from baseline to week8, which needs two visits: "
            "pass n_visits=2 (or treatment_effect=0)."
        )
    response_baseline_effect = _check_real("response_baseline_effect", response_baseline_effect)
    if not isinstance(null, (bool, np.bool_)):
        raise TypeError(f"`null` must be True or False, got {null!r}.")
    complement_effect = _check_real("complement_effect", complement_effect, positive=True)
    composition_shift = _check_real("composition_shift", composition_shift, positive=True)
    plasma_association = _check_real("plasma_association", plasma_association)
    plasma_effect = _check_real("plasma_effect", plasma_effect)
    complement_sd = _check_real("complement_sd", complement_sd, nonneg=True)
    donor_sd = _check_real("donor_sd", donor_sd, nonneg=True)
    batch_effect = _check_real("batch_effect", batch_effect, nonneg=True)
    composition_concentration = _check_real("composition_concentration", composition_concentration, positive=True)
    library_sd = _check_real("library_sd", library_sd, nonneg=True)
    cells_per_donor_sd = _check_real("cells_per_donor_sd", cells_per_donor_sd, nonneg=True)
    depth = _check_real("depth", depth, positive=True)
    plasma_noise_sd = _check_real("plasma_noise_sd", plasma_noise_sd, nonneg=True)
    chunk_size = _check_int("chunk_size", chunk_size, minimum=1000)
    seed = resolve_random_state(random_state)
    requested = {
        "groups": groups,
        "group_effects": group_effects or None,
        "severity_effect": severity_effect,
        "n_visits": n_visits,
        "responder_fraction": responder_fraction,
        "treatment_effect": treatment_effect,
        "response_baseline_effect": response_baseline_effect,
    }
    # design columns (severity, responder, visit, sample) appear only when a design parameter is used, so that a
    # call with the design parameters at their defaults returns exactly the output of simulator 2.0.0
    design_mode = any(requested[k] != DESIGN_DEFAULTS[k] for k in DESIGN_DEFAULTS)
    has_responder = n_visits == 2 or response_baseline_effect != 0
    if null:
        complement_effect, composition_shift, plasma_association, plasma_effect = 1.0, 1.0, 0.0, 0.0
        group_effects = dict.fromkeys(group_effects, 1.0)
        severity_effect, treatment_effect, response_baseline_effect = 0.0, 0.0, 0.0

    ref = _load_reference()
    genes_all = ref["genes"]
    cell_types = [str(t) for t in ref["cell_types"]]
    lineages = [str(t) for t in ref["lineages"]]
    lineage_of = dict(zip(cell_types, lineages, strict=True))
    profiles = ref["profiles"]
    ref_set = set(genes_all)
    # planted: the complement genes that classical monocytes express (>= PLANTED_MIN_MEAN counts per cell at the
    # reference depth); a fold change of a gene the cell type does not express (C1Q, C2, terminal components) is
    # neither biology nor measurable, and would make arms look "planted" that carry no signal
    t_comp = cell_types.index(COMPLEMENT_CELL_TYPE)
    mono_mean = pd.Series(profiles[t_comp] * np.exp(float(ref["lib_logmean"][t_comp])), index=genes_all)
    planted_all = [g for g in complement_genes() if g in ref_set and mono_mean[g] >= PLANTED_MIN_MEAN]
    not_planted = [g for g in complement_genes() if g in ref_set and mono_mean[g] < PLANTED_MIN_MEAN]

    if n_genes is not None:
        n_genes = _check_int("n_genes", n_genes, minimum=len(planted_all) + 1)
        if n_genes < genes_all.size:
            score = profiles.max(0).copy()
            keep = np.zeros(genes_all.size, dtype=bool)
            keep[np.isin(genes_all, planted_all)] = True
            order = np.argsort(-score, kind="stable")
            order = order[~keep[order]][: n_genes - keep.sum()]
            keep[order] = True
        else:
            keep = np.ones(genes_all.size, dtype=bool)
    else:
        keep = np.ones(genes_all.size, dtype=bool)
    genes = genes_all[keep]
    gene_ids = ref["gene_ids"][keep]
    profiles = profiles[:, keep]
    inv_phi = 1.0 / ref["dispersion"][keep]
    n_g = genes.size
    kept_set = set(genes)
    planted = [g for g in planted_all if g in kept_set]
    planted_set = set(planted)
    planted_idx = pd.Index(genes).get_indexer(planted)

    # --- random streams: independent of each other, so e.g. n_cells_per_donor leaves donor metadata unchanged
    # (the design's draws come from a fifth child, so that the first four streams are those of simulator 2.0.0)
    root = np.random.SeedSequence(seed)
    ss_meta, ss_gene, ss_plasma, ss_donors, ss_design = root.spawn(5)
    rng_meta = np.random.default_rng(ss_meta)
    donor_seqs = ss_donors.spawn(n_donors)
    ss_design_meta, ss_visits = ss_design.spawn(2)
    visit_seqs = ss_visits.spawn(n_donors)

    # --- donors: group, batch and sex balanced (as evenly as possible over the groups)
    width = max(2, len(str(n_donors)))
    donors = [f"D{i + 1:0{width}d}" for i in range(n_donors)]
    cond = np.repeat(np.arange(n_groups), group_sizes)
    rng_meta.shuffle(cond)
    batch = np.zeros(n_donors, dtype=int)
    sex = np.empty(n_donors, dtype=object)
    for c in range(n_groups):
        members = np.flatnonzero(cond == c)
        members = members[rng_meta.permutation(members.size)]
        batch[members] = np.arange(members.size) % n_batches
        sex_order = rng_meta.permutation(members.size)
        sex[members] = np.where(sex_order % 2 == 0, "F", "M")
    age = rng_meta.integers(20, 66, size=n_donors)
    # standard normals drawn whatever the sds, so that changing one sd leaves the other draws unchanged
    latent = complement_sd * rng_meta.standard_normal(n_donors)
    lib_offset = library_sd * rng_meta.standard_normal(n_donors)
    n_cells_d = np.maximum(
        1, np.rint(n_cells_per_donor * np.exp(cells_per_donor_sd * rng_meta.standard_normal(n_donors)))
    ).astype(np.int64)
    log_effect = math.log(complement_effect)
    group_log = np.array([0.0] + [math.log(group_effects.get(g, complement_effect)) for g in groups[1:]])
    activity = group_log[cond] + latent
    batch_names = [f"batch{k + 1}" for k in range(n_batches)]

    # --- clinical design (own stream): severity, responders, per-sample log2 shifts of the planted genes
    design = _draw_design(
        np.random.default_rng(ss_design_meta),
        cond,
        groups,
        responder_fraction=responder_fraction,
        severity_effect=severity_effect,
        n_visits=n_visits,
        treatment_effect=treatment_effect,
        response_baseline_effect=response_baseline_effect,
    )
    if np.any(design["baseline_log2"] != 0):
        activity = activity + math.log(2.0) * design["baseline_log2"]

    # --- composition per condition
    base = ref["composition"].astype(np.float64)
    is_mono = np.array([lineage_of[t] == "Monocyte" for t in cell_types])
    is_tb = np.array([lineage_of[t] in ("T cell", "B cell") for t in cell_types])
    mono_share, tb_share = base[is_mono].sum(), base[is_tb].sum()
    max_shift = (mono_share + tb_share) / mono_share
    if composition_shift >= max_shift:
        raise ValueError(
            f"`composition_shift` must be below {max_shift:.2f} (the monocyte share, {mono_share:.1%} in the "
            f"reference, times the shift must leave room for T and B cells), got {composition_shift}."
        )
    w_mdd = base.copy()
    if composition_shift != 1.0:
        w_mdd[is_mono] *= composition_shift
        w_mdd[is_tb] *= (mono_share + tb_share - composition_shift * mono_share) / tb_share
    expected = {g: (w_mdd if i else base) for i, g in enumerate(groups)}

    # --- gene-wise batch factors
    rng_gene = np.random.default_rng(ss_gene)
    batch_log = (
        rng_gene.normal(0.0, batch_effect, size=(n_batches, n_g)) if batch_effect > 0 else np.zeros((n_batches, n_g))
    )

    lib_mean = np.exp(ref["lib_logmean"].astype(np.float64)) * depth
    lib_sd_t = ref["lib_logsd"].astype(np.float64)
    n_types = len(cell_types)

    # --- samples: one per donor and visit, a donor's visits adjacent (baseline first)
    sample_donor = np.repeat(np.arange(n_donors), n_visits)
    sample_visit = np.tile(np.arange(n_visits), n_donors)
    n_samples = sample_donor.size
    samples = donors if n_visits == 1 else [f"{donors[d]}_{VISITS[v]}" for d, v in zip(sample_donor, sample_visit)]
    n_cells_w8 = np.maximum(1, np.rint(n_cells_per_donor * np.exp(cells_per_donor_sd * design["week8_z"]))).astype(
        np.int64
    )
    n_cells_s = np.where(sample_visit == 0, n_cells_d[sample_donor], n_cells_w8[sample_donor])
    total_cells = int(n_cells_s.sum())
    ln2 = math.log(2.0)
    # natural-log shift of the planted genes in classical monocytes, per sample (baseline: the donor's activity)
    shift_w8 = group_log[cond] + latent + ln2 * design["week8_log2"]
    shift_s = np.where(sample_visit == 0, activity[sample_donor], shift_w8[sample_donor])
    severity_s = np.where(sample_visit == 0, design["severity"][sample_donor], design["severity_week8"][sample_donor])

    # --- first pass: donor compositions and cell-type counts (each donor has its own stream; week8 samples draw
    #     their cells from the donor's composition with a stream of the design's)
    donor_rngs = [np.random.default_rng(s) for s in donor_seqs]
    comp_true = np.zeros((n_donors, n_types))
    cell_counts = np.zeros((n_donors, n_types), dtype=np.int64)
    for d, rng in enumerate(donor_rngs):
        comp_true[d] = rng.dirichlet(composition_concentration * expected[groups[cond[d]]])
        cell_counts[d] = rng.multinomial(n_cells_d[d], comp_true[d])
    if n_visits == 2:
        visit_rngs = [np.random.default_rng(s) for s in visit_seqs]
        cell_counts_s = np.zeros((n_samples, n_types), dtype=np.int64)
        for s_ in range(n_samples):
            d = sample_donor[s_]
            cell_counts_s[s_] = (
                cell_counts[d] if sample_visit[s_] == 0 else visit_rngs[d].multinomial(n_cells_w8[d], comp_true[d])
            )
    else:
        visit_rngs, cell_counts_s = [], cell_counts

    # --- preallocate the count buffer from the expected number of non-zeros of every sample
    offsets = np.linspace(-1.5, 1.5, 13)
    log_sd = np.sqrt(lib_sd_t**2 + donor_sd**2)
    nz_table = np.zeros((n_batches, n_types, offsets.size))  # expected nnz per cell
    for k in range(n_batches):
        prof_k = profiles * np.exp(batch_log[k])[None, :]
        for j, o in enumerate(offsets):
            one = np.zeros(n_types)
            for t in range(n_types):
                one[t] = _expected_nnz(
                    np.log(lib_mean[t : t + 1]) + o, log_sd[t : t + 1], prof_k[t : t + 1], inv_phi, np.ones(1)
                )
            nz_table[k, :, j] = one
    est = sum(
        float(
            cell_counts_s[s_]
            @ np.array([np.interp(lib_offset[d], offsets, nz_table[batch[d], t]) for t in range(n_types)])
        )
        for s_, d in enumerate(sample_donor)
    )
    buf = _CSRBuffer(n_g, int(est * 1.03) + 10_000, np.float32)

    type_codes = []
    try:
        from tqdm.auto import tqdm

        sample_iter = tqdm(range(n_samples), desc="simulating samples", disable=total_cells < 200_000)
    except ImportError:  # pragma: no cover
        sample_iter = range(n_samples)
    donor_log = None
    for s_ in sample_iter:
        d, v = int(sample_donor[s_]), int(sample_visit[s_])
        if v == 0:  # the donor's own stream: its biological variation, then its baseline cells
            rng = donor_rngs[d]
            donor_log = rng.normal(0.0, donor_sd, size=(n_types, n_g)) if donor_sd > 0 else np.zeros((n_types, n_g))
        else:  # week8: the same donor (variation, batch, library offset), fresh cells
            rng = visit_rngs[d]
        n_t = cell_counts_s[s_]
        blocks, codes = [], []
        for t, n in enumerate(n_t):
            if n == 0:
                continue
            logq = np.log(np.maximum(profiles[t], 1e-300)) + donor_log[t] + batch_log[batch[d]]
            if t == t_comp and planted_idx.size:
                logq[planted_idx] += shift_s[s_]
            q = np.exp(logq) * (profiles[t] > 0)
            lib = lib_mean[t] * np.exp(lib_offset[d] + lib_sd_t[t] * rng.standard_normal(n))
            for s0 in range(0, n, _MAX_BLOCK_CELLS):  # bounded working memory whatever the donor size
                blocks.append(
                    _sample_block(
                        rng,
                        lib[s0 : s0 + _MAX_BLOCK_CELLS],
                        q,
                        inv_phi,
                        dense_threshold=_DENSE_THRESHOLD,
                        max_dense=chunk_size,
                        dtype=np.float32,
                    )
                )
            codes.append(np.full(n, t, dtype=np.int16))
        m = sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, n_g), dtype=np.float32)
        del blocks
        code = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int16)
        perm = rng.permutation(m.shape[0])  # cells of a sample in random order, as in a real library
        remaining = est * (n_samples - s_ - 1) / n_samples
        for s0 in range(0, perm.size, _MAX_BLOCK_CELLS):  # permuted rows appended piecewise: no donor-size copy
            buf.append(m[perm[s0 : s0 + _MAX_BLOCK_CELLS]], reserve=int(remaining * 1.03) + m.nnz)
        type_codes.append(code[perm])
        del m
        if v == 0:
            donor_rngs[d] = None
        else:
            visit_rngs[d] = None
        logger.debug("simulate_cohort: sample %s done (%d cells)", samples[s_], n_cells_s[s_])

    X = buf.to_csr()
    del buf

    # --- obs
    sample_code = np.repeat(np.arange(n_samples), n_cells_s)
    donor_code = sample_donor[sample_code]
    tcode = np.concatenate(type_codes)
    lineage_cats = list(dict.fromkeys(lineages))
    lin_code = np.array([lineage_cats.index(lineage_of[t]) for t in cell_types])[tcode]
    within = np.concatenate([np.arange(n) for n in n_cells_s])
    wc = len(str(int(n_cells_s.max())))
    obs_names = [f"{samples[s_]}_c{j:0{wc}d}" for s_, j in zip(sample_code, within, strict=True)]
    obs = pd.DataFrame(
        {
            "donor": pd.Categorical.from_codes(donor_code, donors),
            "condition": pd.Categorical.from_codes(cond[donor_code], list(groups)),
            "batch": pd.Categorical.from_codes(batch[donor_code], batch_names),
            "sex": pd.Categorical(sex[donor_code], categories=["F", "M"]),
            "age": age[donor_code].astype(np.int64),
            "cell_type_true": pd.Categorical.from_codes(tcode.astype(np.int64), cell_types),
            "lineage_true": pd.Categorical.from_codes(lin_code, lineage_cats),
        },
        index=pd.Index(obs_names),
    )
    if design_mode:
        obs["severity"] = severity_s[sample_code].astype(np.float64)
    if has_responder:
        obs["responder"] = pd.Categorical(design["responder"][donor_code], categories=list(RESPONDER_LEVELS))
    if n_visits == 2:
        obs["visit"] = pd.Categorical.from_codes(sample_visit[sample_code], list(VISITS))
        obs["sample"] = pd.Categorical.from_codes(sample_code, samples)
    var = pd.DataFrame({"gene_ids": gene_ids}, index=pd.Index(genes))
    adata = ad.AnnData(X=X, obs=obs, var=var)

    params = {
        "n_donors": n_donors,
        "n_cells_per_donor": n_cells_per_donor,
        "n_batches": n_batches,
        "complement_effect": complement_effect,
        "composition_shift": composition_shift,
        "plasma_association": plasma_association,
        "plasma_effect": plasma_effect,
        "null": bool(null),
        "random_state": seed,
        "complement_sd": complement_sd,
        "donor_sd": donor_sd,
        "batch_effect": batch_effect,
        "composition_concentration": composition_concentration,
        "library_sd": library_sd,
        "cells_per_donor_sd": cells_per_donor_sd,
        "depth": depth,
        "plasma_noise_sd": plasma_noise_sd,
        "n_genes": None if n_genes is None else int(n_genes),
        "chunk_size": chunk_size,
        "groups": list(groups),
        "group_effects": dict(group_effects) or None,
        "severity_effect": severity_effect,
        "n_visits": n_visits,
        "responder_fraction": responder_fraction,
        "treatment_effect": treatment_effect,
        "response_baseline_effect": response_baseline_effect,
    }
    all_group_effects = {g: float(math.exp(group_log[i])) for i, g in enumerate(groups) if i}
    effects = {
        "complement_effect": complement_effect,
        "complement_log_effect": log_effect,
        "complement_cell_type": COMPLEMENT_CELL_TYPE,
        "complement_genes": planted,
        "complement_arms": {k: [g for g in v if g in planted_set] for k, v in complement_arms().items()},
        "complement_genes_not_planted": [g for g in not_planted if g in kept_set],
        "complement_planted_min_mean": PLANTED_MIN_MEAN,
        "composition_shift": composition_shift,
        "composition_log_shift": math.log(composition_shift),
        "composition_up": [t for t, m_ in zip(cell_types, is_mono, strict=True) if m_],
        "composition_down": [t for t, m_ in zip(cell_types, is_tb, strict=True) if m_],
        "plasma_association": plasma_association,
        "plasma_association_protein": "C5",
        "plasma_effect": plasma_effect,
        "plasma_condition_proteins": ["DCLK3", "CALY"],
        "group_effects": all_group_effects,
        "group_log_effects": {g: float(group_log[i]) for i, g in enumerate(groups) if i},
        "severity_effect": severity_effect,
        "severity_log2_slope_per_point": severity_effect / 10.0,
        "treatment_effect": treatment_effect,
        "response_baseline_effect": response_baseline_effect,
        "response_protein": RESPONSE_PROTEIN,
    }
    responder = design["responder"]
    resp_sign = 0.5 * (responder == "responder") - 0.5 * (responder == "non-responder")
    design_truth = {
        "groups": list(groups),
        "reference": groups[0],
        "group_sizes": {g: int(n) for g, n in zip(groups, group_sizes, strict=True)},
        "group_effects": all_group_effects,
        "severity_effect": severity_effect,
        "severity_log2_slope_per_point": severity_effect / 10.0,
        "severity_centre": design["severity_centre"],
        "severity_week8_factor": dict(SEVERITY_WEEK8_FACTOR),
        "visits": design["visits"],
        "n_visits": n_visits,
        "responder_fraction": responder_fraction,
        "responders": {donors[d]: str(responder[d]) for d in range(n_donors)},
        "treatment_effect": treatment_effect,
        "interaction_log2": treatment_effect,
        "response_baseline_effect": response_baseline_effect,
        "response_protein": RESPONSE_PROTEIN,
        "response_protein_log2": {donors[d]: float(response_baseline_effect * resp_sign[d]) for d in range(n_donors)},
        "obs_columns": [c for c in ("severity", "responder", "visit", "sample") if c in obs.columns],
        "samples": {
            "sample": list(samples),
            "donor": [donors[d] for d in sample_donor],
            "visit": [VISITS[v] for v in sample_visit],
            "severity": [float(x) for x in severity_s],
            "design_log2_shift": [
                float(design["baseline_log2"][d] if v == 0 else design["week8_log2"][d])
                for d, v in zip(sample_donor, sample_visit, strict=True)
            ],
            "planted_log2_shift": [float(x / ln2) for x in shift_s],
        },
    }
    prov = ref["provenance"]
    reference_info = {
        "name": prov.get("name", ""),
        "script_version": prov.get("script_version", ""),
        "built": prov.get("built", ""),
        "sha256": ref["sha256"],
        "params_file": "sim_params.json",
        "params_sha256": _load_params()["sha256"],
        "params_built": _load_params().get("built", ""),
    }
    donor_table = {
        "donor": donors,
        "condition": [groups[c] for c in cond],
        "batch": [batch_names[b] for b in batch],
        "sex": [str(s) for s in sex],
        "age": [int(a) for a in age],
        "severity": [float(x) for x in design["severity"]],
        "responder": [str(r) for r in responder],
    }
    adata.uns["simulation"] = {
        "simulator_version": SIMULATOR_VERSION,
        "seed": seed,
        "null": bool(null),
        "params": params,
        "effects": effects,
        "cell_types": cell_types,
        "lineages": dict(lineage_of),
        "donors": donor_table,
        "composition_expected": {k: {t: float(v[i]) for i, t in enumerate(cell_types)} for k, v in expected.items()},
        "composition": {
            donors[d]: {t: float(comp_true[d, i]) for i, t in enumerate(cell_types)} for d in range(n_donors)
        },
        "cell_counts": {
            samples[j]: {t: int(cell_counts_s[j, i]) for i, t in enumerate(cell_types)} for j in range(n_samples)
        },
        "n_cells": {samples[j]: int(n_cells_s[j]) for j in range(n_samples)},
        "latent_complement_activity": {donors[d]: float(latent[d]) for d in range(n_donors)},
        "complement_activity": {donors[d]: float(activity[d]) for d in range(n_donors)},
        "library_offset": {donors[d]: float(lib_offset[d]) for d in range(n_donors)},
        "batch_log_factors": {batch_names[k]: batch_log[k].astype(np.float32) for k in range(n_batches)},
        "sizes": {"n_cells": int(adata.n_obs), "n_genes": int(n_g), "n_donors": n_donors, "nnz": int(X.nnz)},
        "reference": reference_info,
        "design": design_truth,
    }

    extra_obs = {}
    if design_mode:
        extra_obs["severity"] = design["severity"].astype(np.float64)
    if has_responder:
        extra_obs["responder"] = pd.Categorical(responder, categories=list(RESPONDER_LEVELS))
    plasma = _simulate_plasma(
        ss_plasma,
        donors,
        donor_table,
        activity,
        batch_names,
        plasma_association=plasma_association,
        plasma_effect=plasma_effect,
        noise_sd=plasma_noise_sd,
        groups=groups,
        response_log2=response_baseline_effect * resp_sign,
        response_effect=response_baseline_effect,
        extra_obs=extra_obs,
    )
    plasma.uns["simulation"].update(
        {
            "simulator_version": SIMULATOR_VERSION,
            "seed": seed,
            "null": bool(null),
            "params": dict(params),
            "reference": reference_info,
        }
    )
    return adata, plasma


def _simulate_plasma(
    ss,
    donors,
    donor_table,
    activity,
    batch_names,
    *,
    plasma_association,
    plasma_effect,
    noise_sd,
    groups=CONDITIONS,
    response_log2=None,
    response_effect=0.0,
    extra_obs=None,
):
    import anndata as ad

    rng = np.random.default_rng(ss)
    proteins = list(PLASMA_NAMED) + list(PLASMA_UNRELATED)
    n_d, n_p = len(donors), len(proteins)
    base = rng.uniform(2.0, 10.0, size=n_p)
    sd = rng.uniform(0.3, 0.8, size=n_p)
    for i, p in enumerate(proteins):
        if p in PLASMA_PLANTED:
            sd[i] = noise_sd
    X = base[None, :] + rng.standard_normal((n_d, n_p)) * sd[None, :]
    is_mdd = np.array([c != groups[0] for c in donor_table["condition"]], dtype=float)  # every non-reference group
    age = np.asarray(donor_table["age"], dtype=float)
    female = np.array([s == "F" for s in donor_table["sex"]], dtype=float)
    s = activity.std()
    z = (activity - activity.mean()) / s if s > 0 else np.zeros_like(activity)
    col = {p: i for i, p in enumerate(proteins)}
    X[:, col["C5"]] += plasma_association * z
    for p in ("DCLK3", "CALY"):
        X[:, col[p]] += plasma_effect * is_mdd
    for p, slope in PLASMA_AGE_EFFECTS.items():
        X[:, col[p]] += slope * (age - 45.0)
    for p, eff in PLASMA_SEX_EFFECTS.items():
        X[:, col[p]] += eff * female
    if response_log2 is not None and np.any(response_log2 != 0):
        X[:, col[RESPONSE_PROTEIN]] += response_log2
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(donor_table["condition"], categories=list(groups)),
            "sex": pd.Categorical(donor_table["sex"], categories=["F", "M"]),
            "age": np.asarray(donor_table["age"], dtype=np.int64),
            "batch": pd.Categorical(donor_table["batch"], categories=batch_names),
        },
        index=pd.Index(donors),
    )
    for k, v in (extra_obs or {}).items():  # design columns (baseline severity, responder)
        obs[k] = v
    var = pd.DataFrame(index=pd.Index(proteins))
    plasma = ad.AnnData(X=X.astype(np.float64), obs=obs, var=var)
    plasma.uns["simulation"] = {
        "scale": "log2 NPX-like",
        "effects": {
            "plasma_association": plasma_association,
            "plasma_association_protein": "C5",
            "plasma_effect": plasma_effect,
            "plasma_condition_proteins": ["DCLK3", "CALY"],
            "age_effects_per_year": dict(PLASMA_AGE_EFFECTS),
            "age_centre": 45.0,
            "female_effects": dict(PLASMA_SEX_EFFECTS),
            "plasma_condition_groups": list(groups[1:]),
            "response_protein": RESPONSE_PROTEIN,
            "response_baseline_effect": float(response_effect),
        },
        "complement_activity_standardised": {donors[i]: float(z[i]) for i in range(n_d)},
        "base_level": {p: float(base[i]) for i, p in enumerate(proteins)},
        "noise_sd": {p: float(sd[i]) for i, p in enumerate(proteins)},
        "proteins": proteins,
    }
    return plasma
