"""im.tl.integrate: keys, private copy, schedule, errors, reproducibility, fast path, device arguments."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import immunomood as im
from immunomood.tl import _integrate as I
from immunomood.tl import _scvi_fast as F

pytestmark = pytest.mark.filterwarnings("ignore")


# synthetic data with known truth: cell types under a gene-wise batch effect
def _toy_batches(
    n_cells: int = 600,
    n_genes: int = 200,
    n_types: int = 4,
    n_batches: int = 2,
    *,
    batch_effect: float = 1.0,
    random_state: int = 0,
) -> ad.AnnData:
    """Negative-binomial counts of ``n_types`` cell types with gene-wise log-normal batch effects.

    ``obs``: ``batch``, ``cell_type``; raw counts in ``X`` and ``layers["counts"]``.
    """
    rng = np.random.default_rng(random_state)
    base = rng.gamma(0.6, 1.0, size=n_genes)
    profiles = np.stack([base * rng.lognormal(0, 1.0, n_genes) for _ in range(n_types)])
    profiles /= profiles.sum(1, keepdims=True)
    beff = rng.lognormal(0, batch_effect, size=(n_batches, n_genes))
    ct = rng.integers(0, n_types, n_cells)
    b = rng.integers(0, n_batches, n_cells)
    lib = rng.lognormal(np.log(1500), 0.3, n_cells) * (1 + 0.3 * b)
    mu = profiles[ct] * beff[b]
    mu = mu / mu.sum(1, keepdims=True) * lib[:, None]
    theta = 5.0
    X = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)
    obs = pd.DataFrame(
        {"batch": pd.Categorical([f"b{i}" for i in b]), "cell_type": pd.Categorical([f"type{i}" for i in ct])},
        index=[f"c{i}" for i in range(n_cells)],
    )
    out = ad.AnnData(X=sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    out.layers["counts"] = out.X.copy()
    return out


@pytest.fixture
def toy():
    a = _toy_batches(160, 40, 3, 2, batch_effect=1.0, random_state=0)
    a.obs["pct_mt"] = np.linspace(0, 5, a.n_obs)
    return a


def _run(a, **kw):
    kw.setdefault("max_epochs", 2)
    kw.setdefault("n_latent", 4)
    kw.setdefault("n_hidden", 16)
    im.tl.integrate(a, batch_key="batch", **kw)
    return a


def test_writes_exactly_embedding_and_uns(toy):
    a = toy.copy()
    a.var["highly_variable"] = np.arange(a.n_vars) < 30
    obs, var, layers = a.obs.copy(), a.var.copy(), set(a.layers)
    _run(a, continuous_covariates=["pct_mt"])
    assert set(a.obsm) == {"X_scVI"} and set(a.uns) == {"integration"}
    assert a.obsm["X_scVI"].shape == (a.n_obs, 4) and np.isfinite(a.obsm["X_scVI"]).all()
    pd.testing.assert_frame_equal(a.obs, obs)  # setup_anndata wrote into a private copy only
    pd.testing.assert_frame_equal(a.var, var)
    assert set(a.layers) == layers and not a.obsp and not a.varm
    u = a.uns["integration"]
    for k in ["params", "epochs_run", "device", "time_s", "versions", "path", "history", "n_genes"]:
        assert k in u
    assert u["n_genes"] == 30 and u["epochs_run"] == 2 and u["device"] == "cpu" and u["path"] == "standard"
    assert u["params"]["continuous_covariates"] == ["pct_mt"]
    assert "scvi-tools" in u["versions"] and "torch" in u["versions"]


def test_default_schedule_rule():
    small, big = I.default_training(3_000), I.default_training(1_000_000)
    assert (small.batch_size, big.batch_size) == (128, 1024)
    assert small.max_epochs == 100 < 400  # scvi-tools: 400 epochs below 20k cells
    assert big.max_epochs == 20 and big.lr == pytest.approx(4e-3)  # 3e-3 * sqrt(8), capped at 4e-3
    assert small.lr == pytest.approx(3e-3)
    assert I.default_training(30_000).batch_size == 256
    assert I.default_training(5_000, max_epochs=7, batch_size=64).max_epochs == 7


def test_reproducible_on_cpu_and_seed_matters(toy):
    a, b, c = _run(toy.copy()), _run(toy.copy()), _run(toy.copy(), random_state=1)
    np.testing.assert_array_equal(a.obsm["X_scVI"], b.obsm["X_scVI"])
    assert not np.allclose(a.obsm["X_scVI"], c.obsm["X_scVI"])
    f1, f2 = _run(toy.copy(), fast=True), _run(toy.copy(), fast=True)
    np.testing.assert_array_equal(f1.obsm["X_scVI"], f2.obsm["X_scVI"])
    assert f1.uns["integration"]["path"] == "fast"


def test_layer_none_uses_X_and_model_dir_roundtrip(toy, tmp_path):
    import scvi

    a = toy.copy()
    del a.layers["counts"]
    _run(a, layer=None, model_dir=tmp_path / "m", fast=True)
    assert a.uns["integration"]["model_dir"] == str(tmp_path / "m")
    model = scvi.model.SCVI.load(str(tmp_path / "m"), adata=a.copy())
    # the fast path's on-device latent equals scvi-tools' own get_latent_representation of the saved model
    np.testing.assert_allclose(model.get_latent_representation(), a.obsm["X_scVI"], atol=1e-5)


def test_device_matrix_sparse_gather_equals_dense(toy):
    import torch

    X = toy.layers["counts"]
    idx = torch.tensor([5, 0, 77, 5, 159])
    d = F.DeviceMatrix(X, torch.device("cpu"), dense=True).rows(idx)
    s = F.DeviceMatrix(X, torch.device("cpu"), dense=False).rows(idx)
    np.testing.assert_array_equal(d.numpy(), s.numpy())
    np.testing.assert_array_equal(d.numpy(), X[idx.numpy()].toarray())


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda a: a.layers.__setitem__("counts", a.layers["counts"] * 0.5), ValueError, "raw counts"),
        (lambda a: a.obs.drop(columns="batch", inplace=True), KeyError, "Available columns"),
        (lambda a: a.obs.__setitem__("batch", ["solo"] + ["b0"] * (a.n_obs - 1)), ValueError, "'solo'"),
        (lambda a: a.obs.__setitem__("pct_mt", [np.nan] + [1.0] * (a.n_obs - 1)), ValueError, "'pct_mt'"),
    ],
)
def test_errors_before_any_work(toy, mutate, exc, match):
    a = toy.copy()
    mutate(a)
    with pytest.raises(exc, match=match):
        im.tl.integrate(a, batch_key="batch", continuous_covariates=["pct_mt"], max_epochs=1)
    assert "X_scVI" not in a.obsm and "integration" not in a.uns


def test_nan_categorical_covariate_named(toy):
    a = toy.copy()
    a.obs["donor"] = ["d1"] * (a.n_obs - 1) + [np.nan]
    with pytest.raises(ValueError, match="'donor'"):
        im.tl.integrate(a, batch_key="batch", categorical_covariates=["donor"])


def test_device_arguments_cpu_guard():
    out = I._lightning_device_kwargs("cpu", "auto")
    assert out["accelerator"] == "cpu" and out["devices"] == 1 and "strategy" not in out
    with pytest.warns(UserWarning, match="single process"):
        assert I._lightning_device_kwargs("cpu", 2)["devices"] == 1


def test_multi_gpu_arguments_reach_lightning(toy, monkeypatch):
    """devices=2 on GPUs -> DDP strategy passed to SCVI.train (checked on CPU by intercepting the calls)."""
    import scvi
    import scvi.model._utils as mu
    import torch

    monkeypatch.setattr(mu, "parse_device_args", lambda **kw: ("gpu", [0, 1], torch.device("cuda:0")))
    seen = {}

    def fake_train(self, **kw):
        seen.update(kw)
        raise RuntimeError("stop after argument check")

    monkeypatch.setattr(scvi.model.SCVI, "train", fake_train)
    with pytest.raises(RuntimeError, match="stop after"):
        im.tl.integrate(toy.copy(), batch_key="batch", accelerator="gpu", devices=2)
    assert seen["accelerator"] == "gpu" and seen["devices"] == [0, 1]
    assert seen["strategy"] == "ddp_find_unused_parameters_true"
    with pytest.raises(ValueError, match="fast=True trains on one device"):
        im.tl.integrate(toy.copy(), batch_key="batch", accelerator="gpu", devices=2, fast=True)


def test_fast_path_same_quality_and_mixing_improves():
    """Batch effect: both paths mix batches clearly better than PCA, with equal quality (tolerance)."""
    a = _toy_batches(500, 100, 3, 2, batch_effect=0.5, random_state=3)
    for fast, key in [(False, "X_std"), (True, "X_fast")]:
        im.tl.integrate(a, batch_key="batch", max_epochs=40, n_latent=8, n_hidden=64, fast=fast, key_added=key)
    m = im.tl.integration_metrics(a, batch_key="batch", label_key="cell_type", embedding=["X_std", "X_fast"])
    pca = m.loc["X_pca (unintegrated)"]
    for key in ["X_std", "X_fast"]:
        assert m.loc[key, "ilisi"] > pca["ilisi"] + 0.1
        assert m.loc[key, "silhouette_batch"] >= pca["silhouette_batch"] - 0.02
        assert m.loc[key, "bio_mean"] >= pca["bio_mean"] - 0.02
    assert abs(m.loc["X_std", "ilisi"] - m.loc["X_fast", "ilisi"]) < 0.15
    for col in ["silhouette_batch", "silhouette_label", "graph_connectivity", "bio_mean"]:
        assert abs(m.loc["X_std", col] - m.loc["X_fast", col]) < 0.05, col


def test_fast_path_bound_to_tested_scvi_versions(toy, monkeypatch, caplog):
    """Outside the scvi-tools versions the loop was tested with, fast=True trains with SCVI.train, logged."""
    import logging

    import scvi

    assert F.unsupported_reason() is None, scvi.__version__  # the installed version is a tested one
    lo, hi = F.SCVI_TESTED
    assert F.unsupported_reason(lo) is None and F.unsupported_reason(hi) is not None
    assert "1.3.0" in F.unsupported_reason("1.3.0") and F.unsupported_reason("not-a-version") is not None
    monkeypatch.setattr(scvi, "__version__", "9.0.0")
    a = toy.copy()
    with caplog.at_level(logging.WARNING, logger="immunomood"):
        _run(a, fast=True)
    u = a.uns["integration"]
    assert u["path"] == "standard" and "9.0.0" in u["path_reason"] and u["params"]["fast"] is True
    assert any("fast path not used" in r.getMessage() for r in caplog.records)
    b = toy.copy()
    monkeypatch.undo()
    _run(b, fast=True)
    assert b.uns["integration"]["path"] == "fast" and b.uns["integration"]["path_reason"] == ""
