"""Bad input, probed as a demanding user would: every bad value is a clear error before any work.

A table of (function, bad keyword arguments, expected message) walks the public API of ``im.pp`` and ``im.tl``
(readers and differential testing are covered in their own test files): wrong types, negative / zero / NaN / out of
range values, unknown choices and missing columns. Each call must raise ``ValueError``/``TypeError``/``KeyError``
whose message names the parameter, and must leave the caller's object untouched (nothing was done).

``python tests/test_bad_inputs.py`` prints how many of the table's cases are refused clearly.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import immunomood as im

NAN = float("nan")


# ---------------------------------------------------------------------------------------------- fixtures
def _objects() -> dict:
    adata, plasma = im.datasets.simulate_cohort(n_donors=8, n_cells_per_donor=60, random_state=0)
    out = {"raw": adata}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qc = adata.copy()
        im.pp.qc_metrics(qc, sample_key="donor")
        out["qc"] = qc
        fl = qc.copy()
        im.pp.flag_outliers(fl, sample_key="donor")
        out["flagged"] = fl
        norm = adata.copy()
        im.pp.normalize(norm)
        norm.obs["cell_type"] = norm.obs["cell_type_true"].astype("category")
        hv = np.zeros(norm.n_vars, dtype=bool)
        hv[np.argsort(-np.asarray(norm.layers["counts"].sum(0)).ravel())[:200]] = True
        norm.var["highly_variable"] = hv  # a bad value scVI accepts trains on 200 genes, not 13,701
        out["norm"] = norm
        emb = norm.copy()
        emb.obsm["X_pca"] = np.random.default_rng(0).normal(size=(emb.n_obs, 10)).astype(np.float32)
        out["emb"] = emb
        donors = im.tl.donor_view(norm, sample_key="donor", groupby="cell_type", gene_sets="complement", min_cells=3)
        out["donors"] = donors
        out["plasma"] = plasma
        out["mdata"] = im.tl.join_proteomics(donors, plasma)
    return out


@pytest.fixture(scope="module")
def objects():
    return _objects()


def _fingerprint(obj) -> tuple:
    """What a function could have written into an AnnData / MuData (columns and keys)."""
    if hasattr(obj, "mod"):  # MuData
        return tuple((m, _fingerprint(a)) for m, a in obj.mod.items()) + (tuple(obj.obs.columns), tuple(obj.uns))
    return (
        obj.shape,
        tuple(obj.obs.columns),
        tuple(obj.var.columns),
        tuple(obj.uns),
        tuple(obj.obsm),
        tuple(obj.layers),
        tuple(obj.obsp),
    )


# ---------------------------------------------------------------------------------------------- the table
# (function, input object, bad kwargs, regex the message must contain); the other required kwargs are added below
S = dict(sample_key="donor")
B = dict(condition_key="condition", n_splits=3)  # 4 donors per condition in the fixture
Q = dict(remove=("qc_outlier",))  # no doublet scores in the fixture
CASES: list[tuple[str, str, dict, str]] = [
    # pp.qc_metrics
    ("pp.qc_metrics", "raw", dict(sample_key="nope"), r"'nope' not found"),
    ("pp.qc_metrics", "raw", dict(sample_key=3), r"sample_key"),
    ("pp.qc_metrics", "raw", dict(layer="nope"), r"Layer 'nope' not found"),
    ("pp.qc_metrics", "raw", dict(gene_symbols="nope"), r"gene_symbols"),
    ("pp.qc_metrics", "raw", dict(inplace="yes"), r"inplace"),
    # pp.flag_outliers
    ("pp.flag_outliers", "qc", dict(S, nmads="5"), r"nmads.*got '5'"),
    ("pp.flag_outliers", "qc", dict(S, nmads=-1), r"nmads.*got -1"),
    ("pp.flag_outliers", "qc", dict(S, nmads=0), r"nmads.*got 0"),
    ("pp.flag_outliers", "qc", dict(S, nmads=NAN), r"nmads.*got nan"),
    ("pp.flag_outliers", "qc", dict(S, nmads=None), r"nmads.*got None"),
    ("pp.flag_outliers", "qc", dict(S, mt_nmads="3"), r"mt_nmads"),
    ("pp.flag_outliers", "qc", dict(S, mt_nmads=-3), r"mt_nmads"),
    ("pp.flag_outliers", "qc", dict(S, max_pct_mt=200), r"max_pct_mt.*got 200"),
    ("pp.flag_outliers", "qc", dict(S, max_pct_mt=-1), r"max_pct_mt"),
    ("pp.flag_outliers", "qc", dict(S, max_pct_mt="10"), r"max_pct_mt"),
    ("pp.flag_outliers", "qc", dict(S, max_pct_mt=NAN), r"max_pct_mt"),
    ("pp.flag_outliers", "qc", dict(sample_key="nope"), r"'nope' not found"),
    ("pp.flag_outliers", "raw", dict(S), r"run im.pp.qc_metrics first"),
    ("pp.flag_outliers", "qc", dict(S, inplace="no"), r"inplace"),
    # pp.filter_cells
    ("pp.filter_cells", "flagged", dict(Q, min_cells_per_sample=-1), r"min_cells_per_sample.*got -1"),
    ("pp.filter_cells", "flagged", dict(Q, min_cells_per_sample=2.5), r"min_cells_per_sample.*got 2.5"),
    ("pp.filter_cells", "flagged", dict(Q, min_cells_per_sample="10"), r"min_cells_per_sample"),
    ("pp.filter_cells", "flagged", dict(Q, min_cells_per_sample=NAN), r"min_cells_per_sample"),
    ("pp.filter_cells", "flagged", dict(remove=("nope",)), r"\['nope'\] not found"),
    ("pp.filter_cells", "flagged", dict(remove=()), r"remove"),
    ("pp.filter_cells", "flagged", dict(remove=("donor",)), r"must be boolean"),
    ("pp.filter_cells", "flagged", dict(remove=("qc_outlier",), sample_key="nope"), r"'nope' not found"),
    ("pp.filter_cells", "flagged", dict(remove=("qc_outlier",), copy="yes"), r"copy"),
    # pp.normalize
    ("pp.normalize", "raw", dict(target_sum=0), r"target_sum.*got 0"),
    ("pp.normalize", "raw", dict(target_sum=-1), r"target_sum"),
    ("pp.normalize", "raw", dict(target_sum=NAN), r"target_sum"),
    ("pp.normalize", "raw", dict(target_sum="1e4"), r"target_sum.*got '1e4'"),
    ("pp.normalize", "raw", dict(counts_layer=""), r"counts_layer"),
    ("pp.normalize", "raw", dict(counts_layer=3), r"counts_layer"),
    ("pp.normalize", "raw", dict(copy="yes"), r"copy"),
    ("pp.normalize", "norm", dict(), r"looks already normalised"),
    # pp.highly_variable_genes
    ("pp.highly_variable_genes", "norm", dict(n_top_genes=0), r"n_top_genes.*got 0"),
    ("pp.highly_variable_genes", "norm", dict(n_top_genes=-5), r"n_top_genes.*got -5"),
    ("pp.highly_variable_genes", "norm", dict(n_top_genes=500.5), r"n_top_genes.*got 500.5"),
    ("pp.highly_variable_genes", "norm", dict(n_top_genes="100"), r"n_top_genes.*got '100'"),
    ("pp.highly_variable_genes", "norm", dict(n_top_genes=10**6), r"n_top_genes.*13701"),
    ("pp.highly_variable_genes", "norm", dict(n_top_genes=NAN), r"n_top_genes"),
    ("pp.highly_variable_genes", "norm", dict(n_top_genes=True), r"n_top_genes"),
    ("pp.highly_variable_genes", "norm", dict(batch_key="nope"), r"'nope' not found"),
    ("pp.highly_variable_genes", "norm", dict(layer="nope"), r"'nope'.*not found"),
    ("pp.highly_variable_genes", "norm", dict(inplace="x"), r"inplace"),
    # tl.integrate
    ("tl.integrate", "norm", dict(batch_key="nope"), r"'nope' not found"),
    ("tl.integrate", "norm", dict(batch_key="batch", n_latent=0), r"n_latent.*got 0"),
    ("tl.integrate", "norm", dict(batch_key="batch", n_latent=-2), r"n_latent.*got -2"),
    ("tl.integrate", "norm", dict(batch_key="batch", n_latent=2.5), r"n_latent.*got 2.5"),
    ("tl.integrate", "norm", dict(batch_key="batch", n_latent="10"), r"n_latent"),
    ("tl.integrate", "norm", dict(batch_key="batch", n_layers=0), r"n_layers.*got 0"),
    ("tl.integrate", "norm", dict(batch_key="batch", n_hidden=0), r"n_hidden.*got 0"),
    ("tl.integrate", "norm", dict(batch_key="batch", max_epochs=-3), r"max_epochs.*got -3"),
    ("tl.integrate", "norm", dict(batch_key="batch", max_epochs=0), r"max_epochs.*got 0"),
    ("tl.integrate", "norm", dict(batch_key="batch", max_epochs=2.5), r"max_epochs.*got 2.5"),
    ("tl.integrate", "norm", dict(batch_key="batch", batch_size=0), r"batch_size.*got 0"),
    ("tl.integrate", "norm", dict(batch_key="batch", batch_size=-1), r"batch_size"),
    ("tl.integrate", "norm", dict(batch_key="batch", accelerator="tpu"), r"accelerator.*got 'tpu'"),
    ("tl.integrate", "norm", dict(batch_key="batch", accelerator=1), r"accelerator"),
    ("tl.integrate", "norm", dict(batch_key="batch", devices=0), r"devices"),
    ("tl.integrate", "norm", dict(batch_key="batch", devices="banana"), r"devices"),
    ("tl.integrate", "norm", dict(batch_key="batch", random_state=-1), r"random_state"),
    ("tl.integrate", "norm", dict(batch_key="batch", random_state="0"), r"random_state"),
    ("tl.integrate", "norm", dict(batch_key="batch", key_added=""), r"key_added"),
    ("tl.integrate", "norm", dict(batch_key="batch", layer="nope"), r"'nope' not found"),
    ("tl.integrate", "norm", dict(batch_key="batch", fast="yes"), r"fast"),
    ("tl.integrate", "norm", dict(batch_key="batch", early_stopping="yes"), r"early_stopping"),
    ("tl.integrate", "norm", dict(batch_key="batch", categorical_covariates=("nope",)), r"'nope' not found"),
    ("tl.integrate", "norm", dict(batch_key="batch", continuous_covariates=("sex",)), r"must be numeric"),
    # tl.embed
    ("tl.embed", "emb", dict(use_rep="nope"), r"'nope' not found"),
    ("tl.embed", "emb", dict(use_rep="X_pca", n_neighbors=0), r"n_neighbors.*got 0"),
    ("tl.embed", "emb", dict(use_rep="X_pca", n_neighbors=1), r"n_neighbors.*got 1"),
    ("tl.embed", "emb", dict(use_rep="X_pca", n_neighbors=2.5), r"n_neighbors.*got 2.5"),
    ("tl.embed", "emb", dict(use_rep="X_pca", n_neighbors="15"), r"n_neighbors"),
    ("tl.embed", "emb", dict(use_rep="X_pca", resolution=0), r"resolution.*got 0"),
    ("tl.embed", "emb", dict(use_rep="X_pca", resolution=NAN), r"resolution"),
    ("tl.embed", "emb", dict(use_rep="X_pca", resolution="1"), r"resolution"),
    ("tl.embed", "emb", dict(use_rep="X_pca", random_state="x"), r"random_state"),
    # tl.score_pathways
    ("tl.score_pathways", "norm", dict(gene_sets="nope"), r"Unknown gene-set collection 'nope'"),
    ("tl.score_pathways", "norm", dict(gene_sets=3), r"gene_sets"),
    ("tl.score_pathways", "norm", dict(gene_sets={}), r"gene_sets"),
    ("tl.score_pathways", "norm", dict(layer="nope"), r"'nope' not found"),
    ("tl.score_pathways", "norm", dict(gene_symbols="nope"), r"gene_symbols"),
    ("tl.score_pathways", "norm", dict(key_added=""), r"key_added"),
    ("tl.score_pathways", "norm", dict(inplace="yes"), r"inplace"),
    # tl.pseudobulk
    ("tl.pseudobulk", "norm", dict(sample_key="nope", groupby="cell_type"), r"'nope' not found"),
    ("tl.pseudobulk", "norm", dict(S, groupby="nope"), r"'nope' not found"),
    ("tl.pseudobulk", "norm", dict(S, groupby="donor"), r"same column"),
    ("tl.pseudobulk", "norm", dict(S, groupby="cell_type", layer="nope"), r"'nope' not found"),
    ("tl.pseudobulk", "norm", dict(S, groupby="cell_type", min_cells=0), r"min_cells.*got 0"),
    ("tl.pseudobulk", "norm", dict(S, groupby="cell_type", min_cells=2.5), r"min_cells.*got 2.5"),
    ("tl.pseudobulk", "norm", dict(S, groupby="cell_type", min_cells="10"), r"min_cells"),
    ("tl.pseudobulk", "norm", dict(S, groupby="cell_type", min_cells=True), r"min_cells"),
    # tl.composition
    ("tl.composition", "norm", dict(S, condition_key="nope", groupby="cell_type"), r"'nope'"),
    ("tl.composition", "norm", dict(S, condition_key="condition", groupby="nope"), r"'nope'"),
    ("tl.composition", "norm", dict(sample_key="nope", condition_key="condition", groupby="cell_type"), r"'nope'"),
    (
        "tl.composition",
        "norm",
        dict(S, condition_key="condition", groupby="cell_type", covariates=("nope",)),
        r"'nope'",
    ),
    ("tl.composition", "norm", dict(S, condition_key="condition", groupby="cell_type", reference="nope"), r"'nope'"),
    # tl.donor_view
    ("tl.donor_view", "norm", dict(sample_key="nope"), r"'nope' not found"),
    ("tl.donor_view", "norm", dict(S, groupby="nope"), r"'nope' not found"),
    ("tl.donor_view", "norm", dict(S, groupby="cell_type", gene_sets="nope"), r"'nope'"),
    ("tl.donor_view", "norm", dict(S, groupby="cell_type", min_cells=0), r"min_cells.*got 0"),
    ("tl.donor_view", "norm", dict(S, groupby="cell_type", min_cells=2.5), r"min_cells.*got 2.5"),
    ("tl.donor_view", "norm", dict(S, groupby="cell_type", layer="nope"), r"'nope'"),
    # tl.join_proteomics
    ("tl.join_proteomics", "donors", dict(prot="plasma"), r"prot"),
    ("tl.join_proteomics", "donors", dict(prot="@plasma", prot_sample_key="nope"), r"'nope' not found"),
    # tl.cross_modal_associations
    ("tl.cross_modal_associations", "mdata", dict(method="kendall"), r"method.*got 'kendall'"),
    ("tl.cross_modal_associations", "mdata", dict(method="Spearman"), r"method"),
    ("tl.cross_modal_associations", "mdata", dict(covariates=("nope",)), r"'nope' not found"),
    ("tl.cross_modal_associations", "mdata", dict(rna_features=("nope",)), r"'nope' not found"),
    ("tl.cross_modal_associations", "mdata", dict(proteins=("nope",)), r"'nope' not found"),
    ("tl.cross_modal_associations", "mdata", dict(min_donors=0), r"min_donors.*got 0"),
    ("tl.cross_modal_associations", "mdata", dict(min_donors=2.5), r"min_donors.*got 2.5"),
    ("tl.cross_modal_associations", "mdata", dict(min_donors="6"), r"min_donors"),
    ("tl.cross_modal_associations", "mdata", dict(min_donors=100), r"min_donors.*100.*8 donors"),
    # tl.biomarker_panel
    ("tl.biomarker_panel", "mdata", dict(condition_key="nope"), r"'nope' not found"),
    ("tl.biomarker_panel", "mdata", dict(condition_key="condition", n_splits=1), r"n_splits.*got 1"),
    ("tl.biomarker_panel", "mdata", dict(condition_key="condition", n_splits=2.5), r"n_splits.*got 2.5"),
    ("tl.biomarker_panel", "mdata", dict(B, n_repeats=0), r"n_repeats.*got 0"),
    ("tl.biomarker_panel", "mdata", dict(B, n_repeats=-1), r"n_repeats"),
    ("tl.biomarker_panel", "mdata", dict(B, n_repeats="5"), r"n_repeats"),
    ("tl.biomarker_panel", "mdata", dict(B, max_features=0), r"max_features.*got 0"),
    ("tl.biomarker_panel", "mdata", dict(B, C=0), r"C.*got 0"),
    ("tl.biomarker_panel", "mdata", dict(B, C=-1), r"C.*got -1"),
    ("tl.biomarker_panel", "mdata", dict(B, C=NAN), r"C.*got nan"),
    ("tl.biomarker_panel", "mdata", dict(B, C="auto"), r"C.*got 'auto'"),
    ("tl.biomarker_panel", "mdata", dict(B, random_state="x"), r"random_state"),
    ("tl.biomarker_panel", "mdata", dict(B, features="nope"), r"'nope' not found"),
    ("tl.biomarker_panel", "mdata", dict(B, mofa="yes"), r"mofa"),
    ("tl.biomarker_panel", "mdata", dict(B, max_features=2.5), r"max_features.*got 2.5"),
    ("tl.biomarker_panel", "mdata", dict(condition_key="condition", n_splits=100), r"n_splits=100"),
    # more types and shapes
    ("pp.qc_metrics", "raw", dict(layer=3), r"layer"),
    ("pp.highly_variable_genes", "norm", dict(batch_key=3), r"batch_key"),
    ("pp.filter_cells", "flagged", dict(remove="nope"), r"\['nope'\] not found"),
    ("tl.integrate", "norm", dict(batch_key="batch", n_hidden=2.5), r"n_hidden.*got 2.5"),
    ("tl.integrate", "norm", dict(batch_key="batch", batch_size=1), r"batch_size.*got 1"),
    ("tl.integrate", "norm", dict(batch_key="batch", categorical_covariates="donor"), r"categorical_covariates"),
    ("tl.integrate", "norm", dict(batch_key="batch", model_dir=3), r"model_dir"),
    ("tl.score_pathways", "norm", dict(gene_sets=["nope"]), r"'nope'"),
    ("tl.score_pathways", "norm", dict(gene_sets={"s": []}), r"'s' is empty"),
    ("tl.pseudobulk", "norm", dict(S, groupby="cell_type", layer=3), r"layer"),
    ("tl.donor_view", "norm", dict(S, groupby="cell_type", min_cells="3"), r"min_cells"),
    ("tl.cross_modal_associations", "mdata", dict(covariates=[3]), r"covariates"),
    ("tl.composition", "norm", dict(S, condition_key="condition", groupby="cell_type", covariates=[3]), r"covariates"),
    # other modules' functions (their scalar checks only)
    ("pp.detect_doublets", "raw", dict(S, min_cells=0), r"min_cells.*got 0"),
    ("pp.detect_doublets", "raw", dict(S, min_cells=2.5), r"min_cells.*got 2.5"),
    ("pp.detect_doublets", "raw", dict(S, random_state="x"), r"random_state.*got 'x'"),
    ("pp.detect_doublets", "raw", dict(S, inplace="yes"), r"inplace"),
    ("pp.proteomics_qc", "plasma", dict(max_below_lod="0.5"), r"max_below_lod"),
    ("pp.proteomics_qc", "plasma", dict(drop_failed_samples="yes"), r"drop_failed_samples"),
    ("tl.annotate", "emb", dict(min_confidence="0.5"), r"min_confidence"),
    ("tl.annotate", "emb", dict(random_state="x"), r"random_state.*got 'x'"),
    (
        "tl.integration_metrics",
        "emb",
        dict(batch_key="batch", label_key="cell_type", embedding="X_pca", max_cells=0),
        r"max_cells.*got 0",
    ),
    # im.io, except the readers
    ("io.gene_coverage", "norm", dict(markers="blod"), r"'blod'"),
    ("io.gene_coverage", "norm", dict(min_fraction=2), r"min_fraction"),
    ("io.gene_coverage", "norm", dict(min_fraction="0.5"), r"min_fraction"),
    ("io.gene_coverage", "norm", dict(inplace="yes"), r"inplace"),
    ("io.write_pseudobulk", "norm", dict(S, outdir="@tmp/o1", groupby="cell_type", min_cells=0), r"min_cells"),
    ("io.write_pseudobulk", "norm", dict(S, outdir="@tmp/o2", groupby="cell_type", by_group="yes"), r"by_group"),
    ("io.write_pseudobulk", "norm", dict(S, outdir="@tmp/o3", groupby="nope"), r"'nope' not found"),
    ("io.write_pseudobulk", "norm", dict(S, outdir="@file/out", groupby="cell_type"), r"outdir.*is a file"),
    ("io.write_pseudobulk", "norm", dict(S, outdir=3, groupby="cell_type"), r"`outdir` must be a folder path"),
]


def _path(objects: dict, v: str) -> str:
    """'@tmp/x': a fresh folder path; '@file/x': a path under a regular file (cannot be created)."""
    import tempfile
    from pathlib import Path

    d = Path(objects.setdefault("_tmp", tempfile.mkdtemp(prefix="immunomood_bad_inputs_")))
    (d / "file").write_text("x")
    return str(d / v[1:]) if v.startswith("@") else v


def _call(objects: dict, func: str, obj: str, kwargs: dict):
    mod, name = func.split(".")
    f = getattr(getattr(im, mod), name)
    target = objects[obj].copy()
    if func == "tl.join_proteomics" and kwargs.get("prot") == "plasma":
        kwargs = dict(kwargs, prot="plasma.csv")  # a path instead of the AnnData
    kwargs = {
        k: (
            _path(objects, v)
            if k == "outdir" and isinstance(v, str)
            else objects[v[1:]]
            if isinstance(v, str) and v.startswith("@")
            else v
        )
        for k, v in kwargs.items()
    }
    return target, (lambda: f(target, **kwargs))


def classify(objects: dict, func: str, obj: str, kwargs: dict, match: str) -> str:
    """'clear' (a ValueError/TypeError/KeyError matching ``match``, the object untouched), else what happened."""
    target, run = _call(objects, func, obj, kwargs)
    before = _fingerprint(target)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run()
    except (ValueError, TypeError, KeyError) as e:
        msg = str(e)
        if not re.search(match, msg, flags=re.S):
            return f"unclear {type(e).__name__}: {msg[:200]}"
        if _fingerprint(target) != before:
            return f"refused after modifying the input: {msg[:120]}"
        return "clear"
    except Exception as e:  # noqa: BLE001
        return f"raw {type(e).__name__}: {str(e)[:200]}"
    return "accepted silently"


@pytest.mark.parametrize(
    ("func", "obj", "kwargs", "match"),
    CASES,
    ids=[f"{c[0]}-{'-'.join(f'{k}={v!r}' for k, v in c[2].items())}" for c in CASES],
)
def test_bad_input_is_refused_clearly_before_any_work(objects, func, obj, kwargs, match):
    assert classify(objects, func, obj, kwargs, match) == "clear"


# ---------------------------------------------------------------------------------------------- specific failures
def test_hvg_single_cell_batch_never_crashes_the_interpreter():
    """A batch with one cell made skmisc's loess double-free (SIGABRT) inside seurat_v3: now a clear error."""
    code = textwrap.dedent("""
        import warnings, numpy as np, pandas as pd, anndata as ad
        from scipy import sparse
        import immunomood as im
        rng = np.random.default_rng(0)
        X = sparse.csr_matrix(rng.poisson(1.0, size=(61, 300)).astype(np.float32))
        a = ad.AnnData(X, obs=pd.DataFrame({"batch": ["b1"] * 60 + ["lonely"]}, index=[f"c{i}" for i in range(61)]),
                       var=pd.DataFrame(index=[f"G{i}" for i in range(300)]))
        im.pp.normalize(a)
        for layer_kind in ("csr", "dense"):
            b = a.copy()
            if layer_kind == "dense":
                b.layers["counts"] = b.layers["counts"].toarray()
            try:
                im.pp.highly_variable_genes(b, n_top_genes=50, batch_key="batch")
            except ValueError as e:
                print("REFUSED", layer_kind, e)
            else:
                print("ACCEPTED", layer_kind)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the interpreter died (rc {r.returncode}): {r.stderr[-2000:]}"
    lines = [l for l in r.stdout.splitlines() if l.startswith(("REFUSED", "ACCEPTED"))]
    assert len(lines) == 2, r.stdout + r.stderr[-2000:]
    for line in lines:
        assert line.startswith("REFUSED"), line
        assert "'lonely'" in line and "1 cell" in line and "batch_key" in line, line


def test_pseudobulk_lists_donors_left_without_cells(objects):
    a = objects["norm"].copy()
    gone = str(a.obs["donor"].iloc[0])
    n_gone = int((a.obs["donor"].astype(str) == gone).sum())
    a.obs["drop_me"] = (a.obs["donor"].astype(str) == gone).to_numpy()  # QC removes every cell of one donor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im.pp.filter_cells(a, remove=("drop_me",), sample_key="donor")
    assert gone not in set(a.obs["donor"].astype(str))
    a.obs["donor"] = a.obs["donor"].astype("category").cat.add_categories(["D99"])  # a category without cells
    with pytest.warns(UserWarning, match=f"2 sample\\(s\\) of 'donor' have no cells.*{gone}"):
        pb = im.tl.pseudobulk(a, sample_key="donor", groupby="cell_type", min_cells=3)
    dropped = pb.uns["dropped"]
    assert "reason" in dropped.columns
    for donor, why in ((gone, f"no cells left after QC ({n_gone} cells before"), ("D99", "no cells (a category")):
        row = dropped[dropped["donor"] == donor]
        assert len(row) == 1 and row["n_cells"].iloc[0] == 0 and row["cell_type"].iloc[0] == "all"
        assert row["reason"].iloc[0].startswith(why), row["reason"].iloc[0]
        assert donor not in set(pb.obs["donor"].astype(str))
    rest = dropped[~dropped["donor"].isin([gone, "D99"])]
    assert len(rest) and (rest["reason"] == "fewer than 3 cells").all() and (rest["n_cells"] < 3).all()
    assert not rest.duplicated(["donor", "cell_type"]).any()


def test_cross_modal_associations_refuses_when_nothing_is_estimable(objects):
    with pytest.raises(ValueError, match=r"min_donors.*100.*8 donors"):
        im.tl.cross_modal_associations(objects["mdata"], min_donors=100)
    res = im.tl.cross_modal_associations(objects["mdata"], min_donors=6)
    assert res["estimate"].notna().any()


def test_integer_checker_refuses_truncation():
    from immunomood._utils import check_int, check_number

    assert check_int("n", 1e3, min=1) == 1000 and isinstance(check_int("n", np.int64(4)), int)
    with pytest.raises(ValueError, match=r"`n` must be an integer >= 1, got 500.5 \(not a whole number"):
        check_int("n", 500.5, min=1)
    with pytest.raises(TypeError, match=r"`n` must be an integer, got True"):
        check_int("n", True)
    assert check_int("n_jobs", -1, min=1, allow=(-1,)) == -1
    with pytest.raises(ValueError, match=r"`x` must be a finite number > 0, got nan"):
        check_number("x", NAN, min=0, min_inclusive=False)


if __name__ == "__main__":  # pragma: no cover - the probe's count
    objs = _objects()
    results = [(c, classify(objs, *c)) for c in CASES]
    clear = sum(r == "clear" for _, r in results)
    print(f"refused clearly before any work: {clear} / {len(results)}")
    for c, r in results:
        if r != "clear":
            print(f"  {c[0]} {c[2]!r}: {r}")


# ---------------------------------------------------------------------------------------------- the CLI's config
CONFIG_CASES = [
    ({"qc": {"nmads": -1}}, r"\[qc\] nmads must be a number > 0, got -1"),
    ({"qc": {"nmads": "5"}}, r"\[qc\] nmads must be int/float, got str '5'"),
    ({"qc": {"mt_nmads": 0}}, r"\[qc\] mt_nmads must be a number > 0, got 0"),
    ({"qc": {"max_pct_mt": 200}}, r"\[qc\] max_pct_mt must be a number >= 0 and <= 100, got 200"),
    ({"qc": {"min_cells_per_sample": -1}}, r"\[qc\] min_cells_per_sample must be an integer >= 0, got -1"),
    ({"qc": {"n_top_genes": 0}}, r"\[qc\] n_top_genes must be an integer >= 1, got 0"),
    ({"qc": {"n_top_genes": 500.5}}, r"\[qc\] n_top_genes must be int, got float 500.5"),
    ({"integrate": {"n_latent": 0}}, r"\[integrate\] n_latent must be an integer >= 1, got 0"),
    ({"integrate": {"max_epochs": -3}}, r"\[integrate\] max_epochs must be an integer >= 1, got -3"),
    ({"integrate": {"accelerator": "tpu"}}, r"\[integrate\] accelerator must be one of .*got 'tpu'"),
    ({"integrate": {"devices": 0}}, r"\[integrate\] devices must be an integer >= 1 \(or -1\), got 0"),
    ({"integrate": {"devices": "two"}}, r"\[integrate\] devices must be 'auto'"),
    ({"annotate": {"markers": "blod"}}, r"\[annotate\] markers must be one of .*'blood'.*Did you mean 'blood'"),
    ({"annotate": {"min_confidence": 1.5}}, r"\[annotate\] min_confidence must be a number >= 0 and <= 1"),
    ({"annotate": {"resolution": 1.0}}, r"\[annotate\] resolution was accepted and ignored .*Remove the line"),
    (
        {"score": {"gene_sets": ["complemnt"]}},
        r"'complemnt' is not a known gene-set collection. Did you mean "
        r"'complement'",
    ),
    ({"score": {"gene_sets": []}}, r"\[score\] gene_sets must name at least one"),
    ({"differential": {"min_cells": 0}}, r"\[differential\] min_cells must be an integer >= 1, got 0"),
    ({"differential": {"groupby": ""}}, r"\[differential\] groupby must name a column"),
    ({"proteomics": {"max_below_lod": 2}}, r"\[proteomics\] max_below_lod must be a number >= 0 and <= 1, got 2"),
    ({"proteomics": {"biomarker_repeats": 0}}, r"\[proteomics\] biomarker_repeats must be an integer >= 1, got 0"),
    ({"proteomics": {"platform": "excel"}}, r"\[proteomics\] platform must be .*got 'excel'"),
    ({"proteomics": {"association_method": "kendall"}}, r"association_method must be .*got 'kendall'"),
    ({"compute": {"n_jobs": 0}}, r"\[compute\] n_jobs must be an integer >= 1 \(or -1\), got 0"),
    ({"compute": {"n_jobs": "all"}}, r"\[compute\] n_jobs must be int, got str"),
    ({"output": {"random_state": -1}}, r"\[output\] random_state must be an integer >= 0"),
    ({"input": {"covariates": [1]}}, r"\[input\] covariates must be a list of column names"),
    ({"qc": {"nmad": 4}}, r"unknown key 'nmad' in \[qc\].*Did you mean 'nmads'"),
]


@pytest.mark.parametrize(("over", "match"), CONFIG_CASES, ids=[m[:40] for _, m in CONFIG_CASES])
def test_config_values_refused_before_any_work(over, match):
    from immunomood._config import ConfigError, parse_config

    raw = {"input": {"h5ad": "cohort.h5ad"}}
    for sec, kv in over.items():
        raw.setdefault(sec, {}).update(kv)
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_config_n_jobs_sets_settings_and_defaults_to_one():
    from immunomood._config import parse_config

    assert parse_config({"input": {"h5ad": "x.h5ad"}})["compute"]["n_jobs"] == 1
    assert parse_config({"input": {"h5ad": "x.h5ad"}, "compute": {"n_jobs": -1}})["compute"]["n_jobs"] == -1


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory, objects):
    d = tmp_path_factory.mktemp("cfg_inputs")
    a = objects["raw"][:, :300].copy()
    a.write_h5ad(d / "cohort.h5ad")
    return d / "cohort.h5ad"


@pytest.mark.parametrize(
    ("over", "match"),
    [
        (
            {"qc": {"n_top_genes": 2000}},
            r"\[qc\] n_top_genes must be at most the number of genes of the input \(300\), "
            r"got 2000",
        ),
        ({"differential": {"groupby": "celltype"}}, r"\[differential\] groupby 'celltype' will not exist.*'cell_type'"),
        ({"output": {"outdir": "@file/out"}}, r"\[output\] outdir .* cannot be created: .* is a file, not a folder"),
        ({"output": {"outdir": "@file"}}, r"\[output\] outdir .* exists and is a file"),
    ],
)
def test_config_checked_against_the_input_before_any_work(tmp_path, small_h5ad, over, match):
    from immunomood._config import ConfigError, parse_config

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    raw = {
        "input": {"h5ad": str(small_h5ad), "batch_key": "batch"},
        "qc": {"n_top_genes": 100},
        "output": {"outdir": str(tmp_path / "out")},
    }
    for sec, kv in over.items():
        raw.setdefault(sec, {}).update(
            {k: (str(blocker) + v[5:] if isinstance(v, str) and v.startswith("@file") else v) for k, v in kv.items()}
        )
    cfg = parse_config(raw, tmp_path / "config.toml")
    with pytest.raises(ConfigError, match=match):
        run_pipeline_ = __import__("immunomood._pipeline", fromlist=["run_pipeline"]).run_pipeline
        run_pipeline_(cfg)
    assert not (tmp_path / "out").exists()


def test_cli_unwritable_outdir_is_a_clear_error(tmp_path, small_h5ad):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[input]\nh5ad = "{small_h5ad}"\nbatch_key = "batch"\n[qc]\nn_top_genes = 100\n'
        f'[output]\noutdir = "{blocker}/out"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "immunomood.cli", "run", str(cfg)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "outdir" in r.stderr and "is a file, not a folder" in r.stderr and "Traceback" not in r.stderr


def test_join_proteomics_with_a_donor_without_cells_is_writable(objects, tmp_path):
    """A donor with plasma but no cells (e.g. QC removed them) leaves gaps in donor flags: h5mu must still write."""
    import mudata as md

    donors = objects["donors"].copy()
    donors.obs["flag"] = False  # a boolean donor-level column of the cell data
    donors = donors[donors.obs_names != donors.obs_names[-1]].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = im.tl.join_proteomics(donors, objects["plasma"])
    assert str(m.obs["flag"].dtype) == "boolean" and m.obs["flag"].isna().sum() == 1
    m.write(tmp_path / "m.h5mu")
    back = md.read_h5mu(tmp_path / "m.h5mu")
    assert back.obs["flag"].isna().sum() == 1 and (back.obs["flag"].dropna() == False).all()  # noqa: E712


def test_config_n_jobs_reaches_settings_only_when_set():
    from immunomood._config import parse_config
    from immunomood._pipeline import apply_compute_settings

    old = im.settings.n_jobs
    try:
        im.settings.n_jobs = 3  # e.g. set by `immunomood run --n-jobs 3`
        apply_compute_settings(parse_config({"input": {"h5ad": "x.h5ad"}}))
        assert im.settings.n_jobs == 3  # no [compute] n_jobs in the config: kept
        apply_compute_settings(parse_config({"input": {"h5ad": "x.h5ad"}, "compute": {"n_jobs": 2}}))
        assert im.settings.n_jobs == 2
        apply_compute_settings(parse_config({"input": {"h5ad": "x.h5ad"}, "compute": {"n_jobs": -1}}))
        assert im.settings.n_jobs == -1
    finally:
        im.settings.n_jobs = old
