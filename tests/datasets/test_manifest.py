"""Dataset manifests: schema, coverage, packaged copy == data_manifests/, checksums against the real data."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import yaml

import immunomood as im
from immunomood.datasets._manifest import manifest_dir

REPO_MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"
PACKAGED = sorted(manifest_dir().glob("*.yaml"))
LOCAL_IDS = {"pbmc3k", "kang2018", "zheng2017", "citeseq_pbmc5k", "somascan_example", "olink_npx_long", "olink_explore"}
MANUAL = {  # id -> (accession, DOI)
    "kang2018_full": ("GSE96583", "10.1038/nbt.4042"),
    "hao2021_pbmc_citeseq": ("GSE164378", "10.1016/j.cell.2021.04.048"),
    "nagy2020_dlpfc": ("GSE144136", "10.1038/s41593-020-0621-y"),
    "maitra2023_dlpfc": ("GSE213982", "10.1038/s41467-023-38530-5"),
}


def test_packaged_manifests_equal_repo_folder():
    if not REPO_MANIFESTS.is_dir():
        pytest.skip("not running from a repository checkout (no data_manifests/)")
    repo = {p.name: p.read_bytes() for p in REPO_MANIFESTS.glob("*.yaml")}
    packaged = {p.name: p.read_bytes() for p in PACKAGED}
    assert sorted(repo) == sorted(packaged)
    differing = [n for n in repo if repo[n] != packaged[n]]
    assert not differing, f"data_manifests/ and src/immunomood/resources/manifests/ differ: {differing}"


@pytest.mark.parametrize("path", PACKAGED, ids=[p.stem for p in PACKAGED])
def test_every_manifest_is_valid(path):
    m = im.datasets.validate_manifest(path)
    assert m["id"] == path.stem
    assert im.datasets.read_manifest(path.stem) == m
    assert set(m["columns"]) >= {"donor", "condition", "cell_type"}
    for f in m["files"]:
        assert len(f["sha256"]) == 64 and f["size"] > 0


def test_coverage_of_datasets():
    ids = {p.stem for p in PACKAGED}
    assert LOCAL_IDS | set(MANUAL) <= ids
    for ident, (acc, doi) in MANUAL.items():
        m = im.datasets.read_manifest(ident)
        assert acc in m["accession"]
        assert m["citation"]["doi"] == doi
        assert m["files"] == [] and m["download"] == "manual"
        assert acc in m["instructions"]
    assert im.datasets.read_manifest("kang2018")["citation"]["doi"] == "10.1038/nbt.4042"
    pbmc = im.datasets.read_manifest("pbmc3k")
    assert any(f.get("reader") == "seurat_labels_csv" and f["key_added"] == "seurat_label" for f in pbmc["files"])
    assert {f["path"].rsplit("/", 1)[-1] for f in pbmc["files"]} >= {"matrix.mtx", "genes.tsv", "barcodes.tsv"}
    assert im.datasets.read_manifest("kang2018")["columns"] == {
        "donor": "donor",
        "condition": "group_id",
        "cell_type": "cluster_id",
        "sample": "sample_id",
    }


def _base():
    return yaml.safe_load((manifest_dir() / "pbmc3k.yaml").read_text())


def _del(key):
    def f(m):
        del m[key]

    return f


def _set(*path_value):
    *path, value = path_value

    def f(m):
        obj = m
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return f


BROKEN = {
    "missing licence": (_del("licence"), r"'licence' is missing"),
    "bad sha": (_set("files", 0, "sha256", "abc"), r"'files\[0\]\.sha256' must be 64"),
    "negative size": (_set("files", 1, "size", -5), r"'files\[1\]\.size'"),
    "size as string": (_set("files", 1, "size", "12"), r"'files\[1\]\.size'"),
    "doi with url": (_set("citation", "doi", "https://doi.org/10.1/x"), r"'citation\.doi'"),
    "unknown reader": (_set("reader", "loom"), r"'reader' must be one of"),
    "unknown modality": (_set("modality", "bulk"), r"'modality'"),
    "typo key": (_set("licens", "x"), r"'licens' is not a known field"),
    "absolute path": (_set("files", 0, "path", "/etc/passwd"), r"'files\[0\]\.path'"),
    "parent path": (_set("files", 0, "path", "../x.mtx"), r"'files\[0\]\.path'"),
    "bad url": (_set("files", 0, "url", "not a url"), r"'files\[0\]\.url'"),
    "missing donor role": (lambda m: m["columns"].pop("donor"), r"'columns\.donor' is missing"),
    "column not a string": (_set("columns", "cell_type", 3), r"'columns\.cell_type' must be a string"),
    "notes not list": (_set("notes", "text"), r"'notes' must be a list"),
    "auto without url": (
        lambda m: [f.update(url=None) or f.pop("archive", None) for f in m["files"]],
        r"'download' is 'auto' but no file",
    ),
    "empty files auto": (_set("files", []), r"'download'"),
    "bad id": (_set("id", "PBMC 3k"), r"'id' must be lower-case"),
    "annotation without key": (lambda m: m["files"][3].pop("key_added"), r"'files\[3\]\.key_added' is missing"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_manifest_names_field(case):
    mutate, pattern = BROKEN[case]
    m = _base()
    mutate(m)
    with pytest.raises(ValueError, match=pattern) as info:
        im.datasets.validate_manifest(m)
    assert str(info.value).startswith("Manifest '") or str(info.value).startswith("Manifest <no id>")
    if case != "bad id":
        assert "'pbmc3k'" in str(info.value)


def test_broken_file_on_disk(tmp_path):
    m = _base()
    m["id"] = "other_name"
    p = tmp_path / "pbmc3k.yaml"
    p.write_text(yaml.safe_dump(m))
    with pytest.raises(ValueError, match=r"'other_name'.*pbmc3k\.yaml.*'id' must match the file name"):
        im.datasets.validate_manifest(p)
    p.write_text("id: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        im.datasets.validate_manifest(p)
    ok = tmp_path / "pbmc3k_copy.yaml"
    good = _base()
    good["id"] = "pbmc3k_copy"
    ok.write_text(yaml.safe_dump(good))
    assert im.datasets.read_manifest(ok)["id"] == "pbmc3k_copy"


def test_validate_does_not_modify_input():
    m = _base()
    before = copy.deepcopy(m)
    out = im.datasets.validate_manifest(m)
    assert m == before and out == before and out is not m


def test_read_manifest_unknown():
    with pytest.raises(ValueError, match=r"Unknown dataset 'pbmc4k'.*Known datasets: \[.*'pbmc3k'"):
        im.datasets.read_manifest("pbmc4k")
    with pytest.raises(TypeError, match="mapping or a path"):
        im.datasets.validate_manifest(42)


def test_list_datasets_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(im.settings, "_data_dir", tmp_path)
    monkeypatch.setattr(type(im.settings), "cache_dir", property(lambda self: tmp_path / "cache"))
    df = im.datasets.list_datasets()
    assert list(df.columns) == ["id", "title", "modality", "accession", "available_locally"]
    assert set(df["id"]) == {p.stem for p in PACKAGED}
    assert not df["available_locally"].any()


@pytest.mark.realdata
def test_list_datasets_finds_real_data(data_dir, monkeypatch):
    monkeypatch.setattr(im.settings, "_data_dir", data_dir)
    df = im.datasets.list_datasets().set_index("id")
    assert set(df.index[df["available_locally"]]) == LOCAL_IDS


@pytest.mark.realdata
@pytest.mark.parametrize("ident", sorted(LOCAL_IDS))
def test_checksums_against_shared_data(data_dir, ident):
    m = im.datasets.read_manifest(ident)
    for f in m["files"]:
        p = data_dir / f["path"]
        if not p.is_file():
            pytest.skip(f"{p} absent")
        assert p.stat().st_size == f["size"], f["path"]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == f["sha256"], f["path"]
