"""Dataset loaders: search order, checksum verification, download fallback, error messages, wrappers."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import sparse

import immunomood as im
from immunomood.datasets import _loaders


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data dir from the environment, an empty cache dir under tmp_path."""
    cache = tmp_path / "cache"
    monkeypatch.delenv("IMMUNOMOOD_DATA_DIR", raising=False)
    monkeypatch.setattr(im.settings, "_data_dir", None)
    monkeypatch.setattr(type(im.settings), "cache_dir", property(lambda self: cache))
    monkeypatch.setattr(_loaders, "_HASH_CACHE", {})
    return tmp_path


def _tiny_h5ad(path: Path) -> ad.AnnData:
    rng = np.random.default_rng(0)
    a = ad.AnnData(
        sparse.csr_matrix(rng.poisson(1.0, (6, 4)).astype(np.float32)),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(6)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(4)]),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path)
    return a


def _manifest(tmp_path: Path, payload: Path, *, url: str | None = None, ident: str = "tiny") -> Path:
    raw = payload.read_bytes()
    m = {
        "schema_version": 1,
        "id": ident,
        "title": "tiny test data",
        "citation": {"text": "none", "doi": "10.1000/test"},
        "accession": "TEST0001",
        "modality": "scRNA-seq",
        "organism": "Homo sapiens",
        "licence": "CC0",
        "reader": "h5ad",
        "download": "auto" if url else "manual",
        "instructions": "Ask the test.",
        "files": [{"path": "tiny/tiny.h5ad", "url": url, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}],
        "columns": {"donor": None, "condition": None, "cell_type": None},
        "notes": [],
    }
    p = tmp_path / "manifests" / f"{ident}.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(m, sort_keys=False))
    return p


# ------------------------------------------------------------------------------------------------ errors
def test_missing_files_message(isolated):
    data = isolated / "data"
    data.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        im.datasets.load("pbmc3k", data_dir=data, download=False)
    msg = str(info.value)
    for needle in (
        "matrix.mtx",
        "genes.tsv",
        "barcodes.tsv",
        "pbmc3k_seurat_annotations.csv",
        str(data),
        str(isolated / "cache"),
        "cf.10xgenomics.com",
        "IMMUNOMOOD_DATA_DIR",
        "4 of 4 file(s) missing",
        "download=False",
    ):
        assert needle in msg, needle


def test_missing_file_message_names_accession(isolated):
    with pytest.raises(FileNotFoundError, match=r"kang2018/kang2018_2donors_ctrl_stim\.h5ad") as info:
        im.datasets.load("kang2018", data_dir=isolated / "nowhere")
    msg = str(info.value)
    assert "GSE96583" in msg and "10.1038/nbt.4042" in msg and str(isolated / "nowhere") in msg
    assert str(isolated / "cache") in msg and "IMMUNOMOOD_DATA_DIR" in msg


def test_failed_download_is_reported(isolated, monkeypatch):
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(FileNotFoundError) as info:
        im.datasets.load("somascan_example", data_dir=isolated)
    msg = str(info.value)
    assert "download from https://raw.githubusercontent.com/SomaLogic/SomaDataIO" in msg
    assert "ConnectionError: network unreachable" in msg
    assert "somascan_v4_example_10samples.adat" in msg


def test_manual_only_dataset(isolated):
    with pytest.raises(FileNotFoundError, match=r"manual-download only.*GSE144136"):
        im.datasets.load("nagy2020_dlpfc")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="Unknown dataset 'nope'"):
        im.datasets.load("nope")


# ------------------------------------------------------------------------------------------------ local files
def test_search_order_and_env(isolated, monkeypatch):
    src = isolated / "src" / "tiny.h5ad"
    expected = _tiny_h5ad(src)
    man = _manifest(isolated, src)
    # found in the cache dir when IMMUNOMOOD_DATA_DIR is unset
    (isolated / "cache" / "tiny").mkdir(parents=True)
    shutil.copy(src, isolated / "cache" / "tiny" / "tiny.h5ad")
    a = im.datasets.load(man)
    np.testing.assert_array_equal(a.X.toarray(), expected.X.toarray())
    assert a.uns["dataset"]["id"] == "tiny" and a.uns["dataset"]["doi"] == "10.1000/test"
    # IMMUNOMOOD_DATA_DIR is searched first: a corrupt copy there is caught by the checksum
    env = isolated / "env"
    (env / "tiny").mkdir(parents=True)
    (env / "tiny" / "tiny.h5ad").write_bytes(b"corrupt")
    monkeypatch.setenv("IMMUNOMOOD_DATA_DIR", str(env))
    with pytest.raises(ValueError, match=r"Checksum mismatch for .*env/tiny/tiny\.h5ad.*expected sha256") as info:
        im.datasets.load(man)
    assert isinstance(info.value, _loaders.ChecksumError) and "verify=False" in str(info.value)
    # data_dir= overrides the environment
    assert im.datasets.load(man, data_dir=isolated / "cache").n_obs == 6


def test_checksum_mismatch_same_size(isolated):
    src = isolated / "data" / "tiny" / "tiny.h5ad"
    _tiny_h5ad(src)
    man = _manifest(isolated, src)
    raw = bytearray(src.read_bytes())
    raw[-1] ^= 0xFF  # same size, different content
    src.write_bytes(bytes(raw))
    with pytest.raises(_loaders.ChecksumError, match="Checksum mismatch"):
        im.datasets.load(man, data_dir=isolated / "data")


def test_hash_is_cached_per_path_and_mtime(isolated, monkeypatch):
    p = isolated / "f.bin"
    p.write_bytes(b"abc")
    first = _loaders._sha256(p)
    assert first == hashlib.sha256(b"abc").hexdigest()

    def boom(path):
        raise AssertionError("hashed again")

    monkeypatch.setattr(_loaders, "file_sha256", boom)
    assert _loaders._sha256(p) == first  # served from the cache
    p.write_bytes(b"abcd")  # new size (and mtime): hashed again
    with pytest.raises(AssertionError, match="hashed again"):
        _loaders._sha256(p)


def test_download_with_pooch(isolated, monkeypatch):
    import pooch

    src = isolated / "remote" / "tiny.h5ad"
    expected = _tiny_h5ad(src)
    man = _manifest(isolated, src, url="https://example.org/tiny.h5ad")
    calls = []

    def fake_retrieve(url, known_hash, fname, path, **kwargs):
        calls.append((url, known_hash))
        Path(path).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, Path(path) / fname)
        return str(Path(path) / fname)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    a = im.datasets.load(man, data_dir=isolated / "empty")
    np.testing.assert_array_equal(a.X.toarray(), expected.X.toarray())
    assert (isolated / "cache" / "tiny" / "tiny.h5ad").is_file()
    assert calls == [("https://example.org/tiny.h5ad", "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest())]
    im.datasets.load(man, data_dir=isolated / "empty")  # now found in the cache: no second download
    assert len(calls) == 1


def test_seurat_labels_match_with_and_without_suffix(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("barcode,seurat_annotations\nAAA-1,B\nCCC-1,NK\nGGG-1,\n")
    entry = {"key_added": "seurat_label"}
    m = {"id": "t"}
    for names in (["AAA", "CCC", "GGG", "TTT"], ["AAA-1", "CCC-1", "GGG-1", "TTT-1"]):
        a = ad.AnnData(np.zeros((4, 1), dtype=np.float32), obs=pd.DataFrame(index=names))
        _loaders._add_seurat_labels(a, labels, entry, m)
        assert a.obs["seurat_label"].tolist()[:2] == ["B", "NK"]
        assert a.obs["seurat_label"].isna().tolist() == [False, False, True, True]
        assert list(a.obs["seurat_label"].cat.categories) == ["B", "NK"]
    a = ad.AnnData(np.zeros((2, 1), dtype=np.float32), obs=pd.DataFrame(index=["XXX", "YYY"]))
    with pytest.raises(ValueError, match="No barcode of the labels file"):
        _loaders._add_seurat_labels(a, labels, entry, m)


# ------------------------------------------------------------------------------------------------ real data
def _is_integer(X) -> bool:
    d = X.data if sparse.issparse(X) else np.asarray(X)
    return bool(np.all(d == np.round(d)) and d.min() >= 0)


@pytest.mark.realdata
def test_pbmc3k(data_dir):
    a = im.datasets.pbmc3k(data_dir=data_dir)
    assert a.shape == (2700, 32738)
    assert sparse.isspmatrix_csr(a.X) and a.X.dtype == np.float32 and _is_integer(a.X)
    assert a.X.nnz == 2286884
    assert a.var_names.is_unique and "PNRC2-1" in a.var_names and "CD3E" in a.var_names
    assert a.var["gene_ids"].str.startswith("ENSG").all() and a.var["gene_ids"].is_unique
    lab = a.obs["seurat_label"]
    assert isinstance(lab.dtype, pd.CategoricalDtype)
    assert lab.notna().sum() == 2638 and lab.isna().sum() == 62
    assert set(lab.cat.categories) == {
        "Naive CD4 T",
        "Memory CD4 T",
        "CD14+ Mono",
        "B",
        "CD8 T",
        "FCGR3A+ Mono",
        "NK",
        "DC",
        "Platelet",
    }
    assert lab.value_counts()["Naive CD4 T"] == 697
    # independent check of the label join against the CSV
    tab = pd.read_csv(data_dir / "pbmc3k" / "pbmc3k_seurat_annotations.csv", index_col=0)
    joined = tab["seurat_annotations"].reindex(a.obs_names)
    assert (joined.fillna("NA").to_numpy() == lab.astype(object).fillna("NA").to_numpy()).all()


@pytest.mark.realdata
def test_kang2018(data_dir):
    a = im.datasets.kang2018(data_dir=data_dir)
    assert a.shape == (1556, 1267)
    assert sparse.isspmatrix_csr(a.X) and _is_integer(a.X)
    assert {"donor", "condition", "cell_type"} <= set(a.obs.columns)
    assert list(a.obs["condition"].cat.categories) == ["ctrl", "stim"]
    assert (a.obs["condition"].astype(str) == a.obs["group_id"].astype(str)).all()
    assert a.obs["condition"].value_counts().to_dict() == {"stim": 806, "ctrl": 750}
    assert set(a.obs["donor"].cat.categories) == {"101", "107"}
    assert len(a.obs["cell_type"].cat.categories) == 5
    assert (a.obs["cell_type"].astype(str) == a.obs["cluster_id"].astype(str)).all()
    assert a.var_names.is_unique and "PTPRC" in a.var_names and "ISG15" in a.var_names
    assert a.var["gene_ids"].str.startswith("ENSG").all()
    assert "logcounts" in a.layers and not _is_integer(a.layers["logcounts"])


@pytest.mark.realdata
def test_zheng2017_and_citeseq(data_dir):
    z = im.datasets.zheng2017(data_dir=data_dir)
    assert z.shape == (2896, 13939) and sparse.isspmatrix_csr(z.X) and _is_integer(z.X)
    assert z.obs["donor"].nunique() == 1
    c = im.datasets.citeseq_pbmc5k(data_dir=data_dir)
    assert c.shape == (200, 16581) and sparse.isspmatrix_csr(c.X) and _is_integer(c.X)
    prot = c.obsm["protein_expression"]
    assert isinstance(prot, pd.DataFrame) and prot.shape == (200, 29)
    assert "CD3_TotalSeqB" in prot.columns and (prot.index == c.obs_names).all()
    assert not {"n_genes", "n_counts", "percent_mito"} & set(c.obs.columns) and "n_cells" not in c.var


@pytest.mark.realdata
@pytest.mark.parametrize(
    "ident,shape", [("somascan_example", (10, 5284)), ("olink_npx_long", None), ("olink_explore", None)]
)
def test_proteomics_through_io_readers(data_dir, ident, shape):
    try:
        a = im.datasets.load(ident, data_dir=data_dir)
    except NotImplementedError as e:
        pytest.skip(f"reader not implemented yet: {e}")
    assert a.uns["dataset"]["id"] == ident
    if shape is not None:
        assert a.shape == shape
    if ident == "olink_npx_long":
        assert a.n_vars == 184


def test_download_from_archive_member(isolated, monkeypatch):
    """Files shipped inside a tarball (pbmc3k's 10x triplet): pooch fetches it, the member is extracted."""
    import tarfile

    import pooch

    payload = isolated / "build" / "inner" / "tiny.h5ad"
    expected = _tiny_h5ad(payload)
    tarball = isolated / "build" / "bundle.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(payload, arcname="inner/tiny.h5ad")
    man_path = _manifest(isolated, payload)
    m = yaml.safe_load(man_path.read_text())
    m["download"] = "auto"
    m["files"][0]["archive"] = {"url": "https://example.org/bundle.tar.gz", "member": "inner/tiny.h5ad"}
    man_path.write_text(yaml.safe_dump(m, sort_keys=False))

    def fake_retrieve(url, known_hash, fname, path, processor=None, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        dest = Path(path) / fname
        shutil.copy(tarball, dest)
        return processor(str(dest), "download", None) if processor else str(dest)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    a = im.datasets.load(man_path, data_dir=isolated / "empty")
    np.testing.assert_array_equal(a.X.toarray(), expected.X.toarray())
    assert (isolated / "cache" / "tiny" / "tiny.h5ad").is_file()
