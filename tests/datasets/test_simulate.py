"""Tests of the cohort simulator: reproducibility, structure, planted effects at donor level, null cohort."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import immunomood as im
from immunomood.datasets import _simulate as S

FINE_TYPES = {
    "CD4 naive T",
    "CD4 memory T",
    "Treg",
    "CD8 naive T",
    "CD8 memory T",
    "MAIT",
    "NK",
    "B naive",
    "B memory",
    "Classical monocyte",
    "Intermediate monocyte",
    "Non-classical monocyte",
    "cDC",
    "pDC",
    "Platelet",
}
LINEAGES = {"T cell", "NK cell", "B cell", "Monocyte", "Dendritic cell", "Platelet"}


@pytest.fixture(scope="module")
def cohort():
    return im.datasets.simulate_cohort(16, 400, 2, random_state=3)


@pytest.fixture(scope="module")
def null_cohort():
    return im.datasets.simulate_cohort(16, 400, 2, null=True, random_state=3)


def _pseudobulk(adata, cell_type):
    """Donor x gene summed counts of one cell type, with the donors' condition."""
    m = (adata.obs["cell_type_true"] == cell_type).to_numpy()
    donors = adata.obs["donor"].to_numpy()[m]
    codes, uniq = pd.factorize(donors)
    agg = sparse.csr_matrix((np.ones(m.sum()), (codes, np.arange(m.sum()))), shape=(uniq.size, m.sum()))
    pb = np.asarray((agg @ adata.X[m]).todense())
    cond = adata.obs.groupby("donor", observed=True)["condition"].first().reindex(uniq).to_numpy()
    return pb, np.asarray(cond == "MDD")


def _log_ratios(adata, min_cpm=100.0):
    """Per gene log(mean CPM in MDD / mean CPM in controls), classical-monocyte pseudobulk, expressed genes."""
    pb, mdd = _pseudobulk(adata, "Classical monocyte")
    cpm = pb / pb.sum(1, keepdims=True) * 1e6
    expressed = cpm.mean(0) >= min_cpm
    lr = np.log(cpm[mdd].mean(0) + 1e-9) - np.log(cpm[~mdd].mean(0) + 1e-9)
    planted = np.zeros(adata.n_vars, dtype=bool)
    planted[adata.var_names.get_indexer(adata.uns["simulation"]["effects"]["complement_genes"])] = True
    return lr[expressed & planted], lr[expressed & ~planted]


def _mono_share(adata):
    obs = adata.obs
    share = (obs["lineage_true"] == "Monocyte").groupby(obs["donor"], observed=True).mean()
    tb = obs["lineage_true"].isin(["T cell", "B cell"]).groupby(obs["donor"], observed=True).mean()
    cond = obs.groupby("donor", observed=True)["condition"].first()
    return share, tb, cond


# ------------------------------------------------------------------------------------------------ structure
def test_reference_resource():
    ref = S._load_reference()
    assert set(ref["cell_types"]) <= FINE_TYPES
    assert {"Classical monocyte", "Intermediate monocyte", "Non-classical monocyte", "Treg", "pDC"} <= set(
        ref["cell_types"]
    )
    assert set(ref["lineages"]) == LINEAGES
    np.testing.assert_allclose(ref["profiles"].sum(1), 1.0, rtol=1e-4)
    assert np.isclose(ref["composition"].sum(), 1.0)
    assert (ref["dispersion"] > 0).all()
    assert len(set(ref["genes"])) == ref["genes"].size
    assert ref["provenance"]["inputs"] and all(len(i["sha256"]) == 64 for i in ref["provenance"]["inputs"])


def test_structure(cohort):
    adata, _ = cohort
    n_cells = adata.uns["simulation"]["n_cells"]
    assert adata.n_obs == sum(n_cells.values())
    assert (adata.obs["donor"].value_counts().reindex(list(n_cells)) == pd.Series(n_cells)).all()
    assert 300 < np.median(list(n_cells.values())) < 520  # log-normal around the median 400 (simulator 2.0.0)
    assert sparse.isspmatrix_csr(adata.X) or isinstance(adata.X, sparse.csr_array)
    assert adata.var_names.is_unique and adata.obs_names.is_unique
    assert "C5AR1" in adata.var_names and "MT-CO1" in adata.var_names
    assert list(adata.obs.columns) == ["donor", "condition", "batch", "sex", "age", "cell_type_true", "lineage_true"]
    for c in ("donor", "condition", "batch", "sex", "cell_type_true", "lineage_true"):
        assert isinstance(adata.obs[c].dtype, pd.CategoricalDtype), c
    assert list(adata.obs["condition"].cat.categories) == ["control", "MDD"]
    assert set(adata.obs["cell_type_true"].cat.categories) <= FINE_TYPES
    assert set(adata.obs["lineage_true"].cat.categories) == LINEAGES
    assert len(adata.layers) == 0
    donors = adata.obs.groupby("donor", observed=True)[["condition", "batch", "sex", "age"]].first()
    assert (donors["condition"].value_counts() == 8).all()
    # batches balanced across condition
    tab = pd.crosstab(donors["batch"], donors["condition"])
    assert (tab.to_numpy() == 4).all()
    # donor-level columns constant within donor
    assert (adata.obs.groupby("donor", observed=True)[["condition", "batch", "sex", "age"]].nunique() == 1).all().all()
    # lineage consistent with cell type
    lin = adata.uns["simulation"]["lineages"]
    assert (adata.obs["cell_type_true"].astype(str).map(lin) == adata.obs["lineage_true"].astype(str)).all()


def test_integer_counts(cohort):
    adata, _ = cohort
    X = adata.X
    assert X.dtype == np.float32
    assert np.all(X.data == np.round(X.data)) and X.data.min() >= 1
    assert X.has_canonical_format
    lib = np.asarray(X.sum(1)).ravel()
    assert 1000 < np.median(lib) < 5000  # pbmc3k-like depth


def test_plasma_structure(cohort):
    adata, plasma = cohort
    donors = adata.obs["donor"].cat.categories
    assert list(plasma.obs_names) == list(donors)
    for p in ("C5", "DCLK3", "CALY", "CRP", "IL6", "TNF"):
        assert p in plasma.var_names
    assert plasma.n_vars >= 46 and plasma.var_names.is_unique
    d = adata.obs.groupby("donor", observed=True)[["condition", "sex", "age", "batch"]].first()
    for c in ("condition", "sex", "age", "batch"):
        assert (plasma.obs[c].astype(str).to_numpy() == d.loc[plasma.obs_names, c].astype(str).to_numpy()).all()
    assert list(plasma.obs["condition"].cat.categories) == ["control", "MDD"]
    assert np.isfinite(plasma.X).all() and 0 < plasma.X.mean() < 15


def test_reproducible():
    a1, p1 = im.datasets.simulate_cohort(4, 150, 1, random_state=7)
    a2, p2 = im.datasets.simulate_cohort(4, 150, 1, random_state=7)
    a3, p3 = im.datasets.simulate_cohort(4, 150, 1, random_state=8)
    assert (a1.X != a2.X).nnz == 0
    pd.testing.assert_frame_equal(a1.obs, a2.obs)
    np.testing.assert_array_equal(p1.X, p2.X)
    assert a1.shape[1] == a3.shape[1]
    assert a1.X.shape != a3.X.shape or (a1.X != a3.X).nnz > 0
    assert not np.array_equal(p1.X, p3.X)


def test_uns_truth(cohort, tmp_path):
    import anndata as ad

    adata, plasma = cohort
    sim = adata.uns["simulation"]
    for k in (
        "params",
        "effects",
        "cell_types",
        "composition",
        "latent_complement_activity",
        "complement_activity",
        "sizes",
        "seed",
        "reference",
        "donors",
        "cell_counts",
    ):
        assert k in sim, k
    assert sim["seed"] == 3 and sim["null"] is False
    assert sim["sizes"]["n_cells"] == adata.n_obs and sim["sizes"]["n_genes"] == adata.n_vars
    assert set(sim["effects"]["complement_genes"]) <= set(S.complement_genes())
    assert not any(g.startswith("IG") for g in sim["effects"]["complement_genes"])
    counts = adata.obs.groupby(["donor", "cell_type_true"], observed=True).size()
    for (d, t), n in counts.items():
        assert sim["cell_counts"][d][t] == n
    for comp in sim["composition"].values():
        assert np.isclose(sum(comp.values()), 1.0)
    act = pd.Series(sim["complement_activity"])
    lat = pd.Series(sim["latent_complement_activity"])
    mdd = pd.Series(sim["donors"]["condition"], index=sim["donors"]["donor"]) == "MDD"
    np.testing.assert_allclose(act - lat, np.log(1.5) * mdd.astype(float))
    adata.write_h5ad(tmp_path / "a.h5ad")
    plasma.write_h5ad(tmp_path / "p.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert back.uns["simulation"]["effects"]["complement_genes"].tolist() == sim["effects"]["complement_genes"]
    assert "simulation" in ad.read_h5ad(tmp_path / "p.h5ad").uns


def test_null_zeroes_effects(null_cohort):
    adata, plasma = null_cohort
    eff = adata.uns["simulation"]["effects"]
    assert adata.uns["simulation"]["null"] is True
    assert eff["complement_log_effect"] == 0 and eff["composition_log_shift"] == 0
    assert eff["plasma_association"] == 0 and eff["plasma_effect"] == 0
    assert eff["complement_effect"] == 1 and eff["composition_shift"] == 1
    peff = plasma.uns["simulation"]["effects"]
    assert peff["plasma_association"] == 0 and peff["plasma_effect"] == 0
    comp = adata.uns["simulation"]["composition_expected"]
    assert comp["control"] == comp["MDD"]


# ------------------------------------------------------------------------------------------------ planted effects
def test_complement_effect_donor_level(cohort):
    adata, _ = cohort
    planted, other = _log_ratios(adata)
    assert planted.size >= 5
    assert abs(np.mean(planted) - np.log(1.5)) < 0.12
    assert abs(np.median(other)) < 0.05


def test_null_has_no_complement_effect(null_cohort):
    adata, _ = null_cohort
    planted, other = _log_ratios(adata)
    # within 3 standard errors of 0, the per-gene null spread taken from the other expressed genes (simulator 2.0.0:
    # donor_sd 0.21 estimated from real donors plus the batch factors make per-gene log ratios of 8 vs 8 donors spread ~0.21; the fixed
    # bound 0.1 of the 0.1-donor-sd simulator was 1.6 standard errors: measured 0.133 with bound 0.26 at seed 3)
    assert abs(np.mean(planted)) < 3 * np.std(other) / np.sqrt(planted.size)
    assert abs(np.median(other)) < 0.05


def _t(x, cond):
    from scipy import stats

    return stats.ttest_ind(x[cond == "MDD"], x[cond == "control"]).statistic


def test_composition_shift(cohort, null_cohort):
    adata = cohort[0]
    exp = adata.uns["simulation"]["composition_expected"]
    mono = [t for t, lin in adata.uns["simulation"]["lineages"].items() if lin == "Monocyte"]
    shift = adata.uns["simulation"]["params"]["composition_shift"]
    assert shift == 1.8  # the default (simulator 1.1.0)
    assert np.isclose(sum(exp["MDD"][t] for t in mono), shift * sum(exp["control"][t] for t in mono))
    assert np.isclose(sum(exp["MDD"].values()), 1.0)
    for t in ("NK", "cDC", "Platelet"):
        assert np.isclose(exp["MDD"][t], exp["control"][t])
    share, tb, cond = _mono_share(adata)
    assert share[cond == "MDD"].mean() > share[cond == "control"].mean() + 0.04
    assert _t(share, cond) > 2 and _t(tb, cond) < -2
    share, tb, cond = _mono_share(null_cohort[0])
    assert abs(_t(share, cond)) < 3 and abs(_t(tb, cond)) < 3


def test_plasma_effects(cohort, null_cohort):
    adata, plasma = cohort
    df = plasma.to_df()
    mdd = (plasma.obs["condition"] == "MDD").to_numpy()
    for p in ("DCLK3", "CALY"):
        assert 0.4 < df.loc[mdd, p].mean() - df.loc[~mdd, p].mean() < 1.6
    act = pd.Series(adata.uns["simulation"]["complement_activity"]).loc[plasma.obs_names]
    assert np.corrcoef(act, df["C5"])[0, 1] > 0.6
    _, nplasma = null_cohort
    ndf = nplasma.to_df()
    for p in ("DCLK3", "CALY"):
        assert abs(ndf.loc[mdd, p].mean() - ndf.loc[~mdd, p].mean()) < 0.6


def test_c5_tracks_latent_activity():
    # no condition effect: the true activity is the latent one alone
    # the estimated default latent sd is 0 (none detectable in onek1k): the mechanism is tested with a set value
    adata, plasma = im.datasets.simulate_cohort(
        16, 20, complement_effect=1.0, complement_sd=0.05, plasma_noise_sd=0.3, random_state=5
    )
    lat = pd.Series(adata.uns["simulation"]["latent_complement_activity"]).loc[plasma.obs_names]
    assert np.corrcoef(lat, plasma[:, "C5"].X.ravel())[0, 1] > 0.8
    _, nplasma = im.datasets.simulate_cohort(16, 20, null=True, complement_sd=0.05, random_state=5)
    z = pd.Series(nplasma.uns["simulation"]["complement_activity_standardised"])
    assert nplasma.uns["simulation"]["effects"]["plasma_association"] == 0
    assert abs(np.corrcoef(z.loc[nplasma.obs_names], nplasma[:, "C5"].X.ravel())[0, 1]) < 0.6


def test_knobs():
    a, _ = im.datasets.simulate_cohort(4, 50, 2, n_genes=2000, batch_effect=0.0, donor_sd=0.0, random_state=1)
    assert a.n_vars == 2000
    assert set(a.uns["simulation"]["effects"]["complement_genes"]) <= set(a.var_names)
    assert all(np.all(v == 0) for v in a.uns["simulation"]["batch_log_factors"].values())
    deep, _ = im.datasets.simulate_cohort(4, 50, 2, n_genes=2000, depth=3.0, random_state=1)
    assert deep.X.sum() > 2.5 * a.X.sum()


# ------------------------------------------------------------------------------------------------ sampler
def test_sampler_matches_negative_binomial():
    rng = np.random.default_rng(0)
    lib = np.full(20_000, 2000.0)
    q = np.array([5e-5, 2e-4, 1e-3, 5e-3, 0.02])
    inv_phi = np.array([1.0, 0.2, 2.0, 0.5, 5.0])
    mu = lib[0] * q
    for thr in (1e9, 0.0):  # all genes through the sparse tail path, then all through the dense path
        m = S._sample_block(rng, lib, q, inv_phi, dense_threshold=thr, max_dense=10**6, dtype=np.float32).toarray()
        np.testing.assert_allclose(m.mean(0), mu, rtol=0.06)
        np.testing.assert_allclose(m.var(0), mu + mu**2 / inv_phi, rtol=0.2)
        np.testing.assert_allclose((m == 0).mean(0), (inv_phi / (inv_phi + mu)) ** inv_phi, atol=0.01)
    p = np.full(100_000, 0.7)
    x = S._logseries(rng, p)
    pk = -(0.7 ** np.arange(1, 5)) / (np.arange(1, 5) * np.log(0.3))
    np.testing.assert_allclose(np.bincount(x, minlength=5)[1:5] / x.size, pk, atol=0.01)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_donors": 5}, ValueError, "must be even"),
        ({"n_donors": 2}, ValueError, "n_donors.*>= 4"),
        ({"n_donors": 4.0}, TypeError, "n_donors.*integer"),
        ({"n_cells_per_donor": 0}, ValueError, "n_cells_per_donor"),
        ({"n_batches": 9}, ValueError, "n_batches.*at most"),
        ({"complement_effect": 0}, ValueError, "complement_effect.*> 0"),
        ({"composition_shift": -1.0}, ValueError, "composition_shift"),
        ({"composition_shift": 5.0}, ValueError, "composition_shift.*must be below"),
        ({"plasma_association": float("nan")}, TypeError, "plasma_association.*finite"),
        ({"null": "yes"}, TypeError, "null"),
        ({"donor_sd": -0.1}, ValueError, "donor_sd"),
        ({"n_genes": 10}, ValueError, "n_genes"),
    ],
)
def test_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        im.datasets.simulate_cohort(**kwargs)


def test_csr_buffer_grows_and_matches_vstack():
    rng = np.random.default_rng(0)
    parts = [sparse.random(30, 12, density=0.3, format="csr", random_state=i, dtype=np.float32) for i in range(4)]
    buf = S._CSRBuffer(12, 5, np.float32)  # far too small: forces growth
    for p in parts:
        buf.append(p, reserve=int(rng.integers(0, 10)))
    out = buf.to_csr()
    expected = sparse.vstack(parts, format="csr")
    assert out.shape == expected.shape and (out != expected).nnz == 0


def test_reference_rebuilds_from_real_data(data_dir, tmp_path):
    """The committed reference is exactly what src/immunomood/resources/build/build_sim_reference.py derives from the real pbmc3k."""
    import importlib.util
    from pathlib import Path

    script = (
        Path(__file__).resolve().parents[2] / "src" / "immunomood" / "resources" / "build" / "build_sim_reference.py"
    )
    if not script.exists():
        pytest.skip("build script not available (installed package without the repository)")
    spec = importlib.util.spec_from_file_location("build_sim_reference", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    prov = mod.build(Path(data_dir), tmp_path)
    ref = S._load_reference()
    with np.load(tmp_path / "sim_reference.npz") as new:
        np.testing.assert_array_equal(new["genes"], ref["genes"])
        np.testing.assert_array_equal(new["cell_types"], ref["cell_types"])
        np.testing.assert_allclose(new["profiles"], ref["profiles"], rtol=1e-6)
        np.testing.assert_allclose(new["dispersion"], ref["dispersion"], rtol=1e-6)
    shas = {i["path"]: i["sha256"] for i in ref["provenance"]["inputs"]}
    assert shas == {i["path"]: i["sha256"] for i in prov["inputs"]}
    assert (tmp_path / "sim_reference.npz").stat().st_size < 2_000_000
