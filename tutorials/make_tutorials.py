"""Generate the tutorial notebooks in ``tutorials/`` (and their links under ``docs/tutorials/``).

The notebooks are written from the cell lists below so that they are easy to review and maintain as
plain Python. Outputs are never committed: ``tests/test_tutorials.py`` executes each notebook and checks
that the committed files carry no outputs.

Usage::

    python tutorials/make_tutorials.py            # write tutorials/*.ipynb and docs/tutorials/ symlinks
    python tutorials/make_tutorials.py --check    # exit 1 if the committed notebooks differ from this script
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
DOCS_TUTORIALS = ROOT / "docs" / "tutorials"

SETUP = """\
%matplotlib inline
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc

import immunomood as im

warnings.filterwarnings("ignore", category=FutureWarning)
np.random.seed(0)
sc.settings.verbosity = 0
sc.settings.set_figure_params(dpi=70, frameon=False)
print("immunomood", im.__version__, "| scanpy", sc.__version__)"""

# --------------------------------------------------------------------------------------------------------------
# 1. pbmc3k: QC and annotation
# --------------------------------------------------------------------------------------------------------------
NB1 = [
    ("md", """\
# PBMC 3k: quality control and hierarchical annotation

This tutorial takes the classic 10x Genomics **PBMC 3k** data set (2,700 peripheral blood mononuclear cells of
one healthy donor) from raw counts to annotated cell types, and compares the result with the labels of the
published Seurat tutorial. You will see:

1. per-cell QC metrics, and the **median absolute deviation (MAD)** outlier rule;
2. doublet scoring and a report of *every* cell removed, and why;
3. normalisation and highly variable genes;
4. hierarchical, marker-based annotation with a **confidence** and an honest `"Unassigned"`;
5. the figures a user expects: QC violins, the removal report, a UMAP, a marker dot plot and the
   confidence distribution.

The data are read from the folder named by the environment variable `IMMUNOMOOD_DATA_DIR` (see
`data_manifests/pbmc3k.yaml` for the files, checksums and how to get them)."""),
    ("code", SETUP),
    ("md", """\
## Load the data

`im.datasets.pbmc3k()` finds the files through the dataset manifest, verifies their sha256 checksums and
returns raw UMI counts with gene symbols as `var_names` (Ensembl IDs in `var["gene_ids"]`) and the Seurat
tutorial's labels in `obs["seurat_label"]` (NaN for the 62 cells that tutorial removed)."""),
    ("code", """\
adata = im.datasets.pbmc3k()
adata"""),
    ("code", """\
adata.obs["seurat_label"].value_counts(dropna=False)"""),
    ("md", """\
## Quality-control metrics

`im.pp.qc_metrics` adds per-cell metrics to `obs` (library size, genes detected, their log1p, the share of
counts in the 20 most expressed genes, and the percentages of mitochondrial, ribosomal and haemoglobin
counts) and gene flags `mt`, `ribo`, `hb` to `var`.

*Why these metrics?* A cell whose membrane broke loses cytoplasmic mRNA but keeps the mitochondrial
transcripts: a **high mitochondrial share** marks damaged cells. Empty droplets with ambient RNA have
**few counts and few genes**; a library dominated by a handful of genes (high `pct_counts_in_top_20_genes`)
is another sign of a poor capture. Genes with no count at all are kept (and reported)."""),
    ("code", """\
im.pp.qc_metrics(adata)
adata.obs[["total_counts", "n_genes_by_counts", "pct_counts_mt", "pct_counts_in_top_20_genes"]].describe().round(2)"""),
    ("md", """\
## Outliers by the MAD rule

Fixed thresholds ("keep cells with 200-2,500 genes and < 5% mitochondrial counts") do not transfer between
samples, chemistries or tissues. A robust, data-driven alternative: within each sample, a cell is an outlier
for a metric when

$$|x - \\operatorname{median}(x)| > n \\times \\operatorname{MAD}(x), \\qquad
\\operatorname{MAD}(x) = \\operatorname{median}(|x - \\operatorname{median}(x)|).$$

The median and the **median** absolute deviation are barely moved by the outliers themselves (the mean and
standard deviation are). We use the unscaled MAD (for a normal distribution 1 MAD is about 0.67 SD), `nmads=5`
for the count metrics (on the log scale) and the top-20 share, and a stricter `mt_nmads=3` for the
mitochondrial percentage. The rule is applied **per sample** (`sample_key`), because samples differ in
depth: a deep sample would otherwise lose its best cells and a shallow one keep its worst. PBMC 3k is a single
sample, so `sample_key=None` treats all cells as one group.

Each outlier is labelled with the first metric it fails (`obs["qc_reason"]`), and the thresholds are kept in
`uns["qc"]["thresholds"]`."""),
    ("code", """\
im.pp.flag_outliers(adata, sample_key=None, nmads=5, mt_nmads=3)
adata.obs["qc_reason"].value_counts()"""),
    ("code", """\
adata.uns["qc"]["thresholds"].round(3)"""),
    ("md", """\
The violins show each metric with the thresholds drawn: what lies outside the lines is flagged."""),
    ("code", """\
im.pl.qc(adata, sample_key=None);"""),
    ("md", """\
## Doublets

Two cells captured in one droplet look like a hybrid cell type (for example a "T cell-monocyte"). Scrublet
simulates such doublets from the observed cells and scores every cell by how much its neighbourhood looks
like them. Doublets only form within one channel, so `im.pp.detect_doublets` scores **each sample
separately**; a sample too small to score gets NaN and a warning (its cells are kept)."""),
    ("code", """\
im.pp.detect_doublets(adata, sample_key=None, random_state=0)
print(f"predicted doublets: {int(adata.obs['predicted_doublet'].sum())} of {adata.n_obs} cells")
adata.uns["qc"]["doublets"]"""),
    ("md", """\
## Remove flagged cells, with a report

`im.pp.filter_cells` removes the QC outliers and the predicted doublets, and writes `uns["qc"]["report"]`: one
row per sample with the cells before, removed per reason, after, and a flag for samples left too small to
pseudobulk. Nothing disappears without a line in this table."""),
    ("code", """\
im.pp.filter_cells(adata)
adata.uns["qc"]["report"].T"""),
    ("code", """\
im.pl.qc_report(adata);"""),
    ("md", """\
## Normalisation and highly variable genes

`im.pp.normalize` keeps the raw counts in `layers["counts"]` (needed later by scVI, pseudobulk tests and
the seurat_v3 gene selection) and puts log1p(counts per 10,000) in `X`. `im.pp.highly_variable_genes` selects
genes with the seurat_v3 method, which models the mean-variance relation of the **raw counts**."""),
    ("code", """\
im.pp.normalize(adata)
im.pp.highly_variable_genes(adata, n_top_genes=2000)
sc.pp.pca(adata, n_comps=30, mask_var="highly_variable", random_state=0)
adata"""),
    ("md", """\
## Neighbours, clusters and UMAP

`im.tl.embed` runs the usual scanpy chain on a representation: a k-nearest-neighbour graph, Leiden
clustering (igraph flavour) and UMAP, with a fixed seed. Here the representation is the PCA; in a multi-batch
cohort it is the integrated scVI latent space (tutorial 2)."""),
    ("code", """\
im.tl.embed(adata, use_rep="X_pca", random_state=0)
adata.obs["leiden"].value_counts().sort_index().to_frame().T"""),
    ("md", """\
## Hierarchical annotation with a confidence

`im.tl.annotate` labels cells from curated marker genes shipped with the package (no model download),
**hierarchically**: first the lineage (T, NK, B, monocyte, dendritic cell, ...), then the subset within it
(CD4 naive/memory T, Treg, CD8 naive/memory T, MAIT, gamma-delta T, classical / intermediate / non-classical
monocytes, ...). Subsets are decided only among cells of the right lineage, which avoids the classic CD4/CD8
confusion caused by CD4 mRNA drop-out.

Single-cell marker calls are noisy (a few dropout-prone genes such as CD4, FOXP3 or SLC4A10 decide a subset),
so each cell's marker scores are combined with those of its nearest neighbours and of its cluster in the
embedding given by `use_rep`.

Each cell gets a **confidence** in [0, 1]: the lineage probability times the subset probability, each
multiplied by the agreement with the cell's neighbourhood and cluster. Cells whose *lineage* confidence is
below `min_confidence` are labelled `"Unassigned"` rather than given a guess. A cell can therefore be confidently
a monocyte while its subset (classical, intermediate or non-classical: a continuum) is uncertain, which shows as
a low overall confidence on an assigned cell. An *Unassigned* cell is one whose markers are ambiguous (a doublet that escaped scrublet, a rare type absent
from the marker resource, a low-quality profile). It is better to exclude these from downstream tests than to
force them into a type."""),
    ("code", """\
im.tl.annotate(adata, use_rep="X_pca", min_confidence=0.5, random_state=0)
adata.obs[["cell_lineage", "cell_type", "cell_type_confidence"]].head()"""),
    ("code", """\
adata.obs["cell_type"].value_counts().to_frame().T"""),
    ("md", """\
## Comparison with the published Seurat labels

The Seurat tutorial's labels are coarser (for example one "CD8 T" label, "CD14+ Mono" and "FCGR3A+ Mono").
The crosstab shows how our finer labels split them; the mapping below states which of our labels agree with
each Seurat label (for example "Memory CD4 T" contains the regulatory T cells, and "CD14+ Mono" both classical
and intermediate monocytes)."""),
    ("code", """\
labelled = adata.obs["seurat_label"].notna()
pd.crosstab(adata.obs.loc[labelled, "seurat_label"], adata.obs.loc[labelled, "cell_type"])"""),
    ("code", """\
agree = {
    "Naive CD4 T": {"CD4 naive T"},
    "Memory CD4 T": {"CD4 memory T", "Treg"},
    "CD14+ Mono": {"Classical monocyte", "Intermediate monocyte"},
    "FCGR3A+ Mono": {"Non-classical monocyte", "Intermediate monocyte"},
    "CD8 T": {"CD8 naive T", "CD8 memory T", "MAIT", "gamma-delta T"},
    "NK": {"NK"},
    "B": {"B naive", "B memory", "Plasmablast"},
    "DC": {"cDC", "pDC"},
    "Platelet": {"Platelet"},
}
obs = adata.obs.loc[labelled]
assigned = obs["cell_type"] != "Unassigned"
correct = np.array([ct in agree[str(s)] for s, ct in zip(obs["seurat_label"], obs["cell_type"].astype(str))])
high = obs["cell_type_confidence"] >= 0.8
print(f"Unassigned: {1 - assigned.mean():.1%} of labelled cells")
print(f"accuracy on assigned cells: {correct[assigned.to_numpy()].mean():.3f}")
print(f"accuracy, confidence >= 0.8: {correct[(assigned & high).to_numpy()].mean():.3f}  "
      f"| confidence < 0.8: {correct[(assigned & ~high).to_numpy()].mean():.3f}")"""),
    ("md", """\
The last line is the check that the confidence **means something**: cells annotated with a high confidence are
more often right than the others. Use the confidence to filter, or to flag clusters that need a closer look.

## Figures

A UMAP coloured by our annotation and by the Seurat labels (scanpy's own plotting works on the keys
immunomood writes):"""),
    ("code", """\
fig, axs = plt.subplots(1, 2, figsize=(12, 4.5))
sc.pl.umap(adata, color="cell_type", ax=axs[0], show=False, title="immunomood annotation")
sc.pl.umap(adata, color="seurat_label", ax=axs[1], show=False, title="Seurat tutorial labels")
fig.tight_layout()"""),
    ("md", """\
The marker dot plot shows, for each label, the markers that defined it (dot size: fraction of cells expressing;
colour: mean expression). This is the figure to check an annotation by eye."""),
    ("code", """\
im.pl.annotation(adata, key="cell_type");"""),
    ("md", """\
The confidence per label: labels with a low median confidence (often the rare ones, or the continuum between
CD4 naive and memory T cells) deserve the most caution."""),
    ("code", """\
im.pl.annotation_confidence(adata);"""),
    ("md", """\
## What was written into `adata`

Every key is documented on the *Data structures* page of the documentation."""),
    ("code", """\
print(adata)
print("uns['cell_type'] keys:", list(adata.uns["cell_type"]))"""),
]

# --------------------------------------------------------------------------------------------------------------
# 2. Simulated depression cohort
# --------------------------------------------------------------------------------------------------------------
NB2 = [
    ("md", """\
# A depression cohort: integration, complement activity and donor-level tests

Blood single-cell studies of major depressive disorder (MDD) compare **donors**: patients against controls.
This tutorial runs the full analysis on a cohort made by the package's simulator, where we know the truth:

- the complement-pathway genes that classical monocytes express are raised 1.5-fold in the **classical
  monocytes** of MDD donors (C1Q, C2 and the terminal components are not expressed there and stay unchanged);
- MDD donors have **more monocytes and fewer T and B cells**;
- two sequencing batches add gene-wise batch effects.

We will integrate the batches with scVI, annotate the cells, score complement activity, and test it with the
**donor as the unit**, then see why per-cell tests mislead. No real data are needed; everything is seeded.

Sizes are kept small so the notebook runs in about a minute on a laptop CPU; raise `n_cells_per_donor` and
`max_epochs` for a real analysis."""),
    ("code", SETUP),
    ("md", """\
## Simulate the cohort

`simulate_cohort` returns the cells (`adata`, raw counts) and the plasma proteomics of the same donors
(`plasma`, used in tutorial 3). Expression profiles come from real PBMC data; each donor has its own library
size, composition (Dirichlet) and gene-level variation, and counts are negative-binomial. The complete truth
is in `adata.uns["simulation"]`."""),
    ("code", """\
adata, plasma = im.datasets.simulate_cohort(n_donors=16, n_cells_per_donor=200, n_batches=2, random_state=0)
adata"""),
    ("code", """\
donors = adata.obs.groupby("donor", observed=True)[["condition", "batch", "sex", "age"]].first()
donors.assign(n_cells=adata.obs["donor"].value_counts())"""),
    ("code", """\
truth = adata.uns["simulation"]["effects"]
print("complement effect:", truth["complement_effect"], "in", truth["complement_cell_type"])
print("planted genes:", truth["complement_genes"][:12], "...")"""),
    ("md", """\
## Quality control, per donor

Each donor is a separate sample here, so the MAD thresholds and the doublet scoring are computed per donor
(`sample_key="donor"`); tutorial 1 explains the rule."""),
    ("code", """\
im.pp.qc_metrics(adata, sample_key="donor")
im.pp.flag_outliers(adata, sample_key="donor")
im.pp.detect_doublets(adata, sample_key="donor", random_state=0)
im.pp.filter_cells(adata)
adata.uns["qc"]["report"][["cells_before", "cells_removed", "cells_after", "too_small_to_pseudobulk"]]"""),
    ("code", """\
im.pp.normalize(adata)
im.pp.highly_variable_genes(adata, n_top_genes=1000, batch_key="batch")
sc.pp.pca(adata, n_comps=30, mask_var="highly_variable", random_state=0)"""),
    ("md", """\
## Batch integration with scVI

scVI learns a latent space of the **raw counts** in which the batch is modelled explicitly, so that cells of the
same type from different batches land together. `im.tl.integrate` trains it on the highly variable genes, on
the GPU when there is one and on the CPU otherwise (same call), and records the parameters, epochs, device,
time and package versions in `uns["integration"]`. Same `random_state` on CPU gives the identical embedding.

We cap training at 10 epochs to keep the tutorial fast; by default the number of epochs is chosen from the data
size, with early stopping on a validation split."""),
    ("code", """\
im.tl.integrate(adata, batch_key="batch", max_epochs=10, random_state=0)
info = adata.uns["integration"]
{k: info[k] for k in ("path", "epochs_run", "device", "time_s")}"""),
    ("md", """\
### Did integration work?

`im.tl.integration_metrics` measures, on the integrated embedding and on the unintegrated PCA:

- **batch mixing**: iLISI (how many batches are in a cell's neighbourhood, scaled to [0, 1], higher is better
  mixed) and the batch silhouette (1 = batches perfectly mixed within each label);
- **biological conservation**: cLISI and the label silhouette (cells of one type stay together) and graph
  connectivity.

A good integration raises mixing *without* lowering conservation. Over-correction (mixing distinct cell types)
would show as a drop in the conservation scores. We use the simulator's true labels here; on real data, use your
annotation."""),
    ("code", """\
metrics = im.tl.integration_metrics(adata, batch_key="batch", label_key="cell_type_true", embedding="X_scVI")
metrics.round(3)"""),
    ("code", """\
im.tl.embed(adata, use_rep="X_scVI", random_state=0)
im.pl.integration(adata, batch_key="batch", label_key="cell_type_true", metrics=metrics);"""),
    ("md", """\
## Annotation

Annotation uses the markers (tutorial 1), smoothed over clusters of the integrated embedding. Because we know
the truth, we can check it."""),
    ("code", """\
im.tl.annotate(adata, use_rep="X_scVI", random_state=0)
assigned = adata.obs["cell_type"] != "Unassigned"
acc = (adata.obs.loc[assigned, "cell_type"].astype(str) == adata.obs.loc[assigned, "cell_type_true"].astype(str)).mean()
lin = (adata.obs["cell_lineage"].astype(str) == adata.obs["lineage_true"].astype(str)).mean()
print(f"fine-type accuracy on assigned cells: {acc:.3f} | lineage accuracy: {lin:.3f} | "
      f"Unassigned: {1 - assigned.mean():.1%}")"""),
    ("md", """\
## Complement activity per cell

`im.tl.score_pathways` scores each cell for each arm of the complement system (classical, lectin, alternative,
terminal, receptors, regulators; the gene sets ship with their source and version, see `im.tl.gene_sets`). The
scores go to `obsm["pathway_scores"]`, the genes used and missing per set to `uns["pathway_scores"]`."""),
    ("code", """\
im.tl.score_pathways(adata, "complement")
adata.obsm["pathway_scores"].groupby(adata.obs["cell_type"], observed=True).mean().round(3)"""),
    ("md", """\
## Donor-level tests: the donor is the unit

Cells of one donor are **not independent replicates**: they share the donor's genotype, age, sex, medication,
sampling day and library preparation. The question "is complement activity higher in patients?" is about
donors, and the sample size is the number of donors, not cells. Treating 1,000 cells of 6 donors as 1,000
observations makes standard errors far too small and p-values far too low (see the last section).

`im.tl.differential_activity` therefore aggregates the counts of each cell type in each donor (pseudobulk),
scores each gene set per donor, and fits **activity ~ condition + covariates** across donors, for each cell type
and gene set. It reports the effect (MDD minus control, on the log2 scale, with a 95% CI), the test statistic,
the p-value, and the Benjamini-Hochberg adjusted p-value over the whole table. Covariates such as sex and age
are adjusted for; a covariate confounded with the condition is refused with an error. With repeated visits of
one donor, `random_effect=` adds a random intercept per donor (mixed model)."""),
    ("code", """\
da = im.tl.differential_activity(
    adata, condition_key="condition", sample_key="donor", groupby="cell_type",
    gene_sets="complement", covariates=("sex", "age"), min_cells=10,
)
da.sort_values("pvalue")[["group", "gene_set", "effect", "ci_low", "ci_high", "pvalue", "padj",
                           "n_case", "n_reference"]].head(10).round(4)"""),
    ("md", """\
How to read this table: the planted effect lives in the classical monocytes, and that is where the smallest
p-values should appear. With 8 against 8 donors and a couple of hundred cells per donor, a real effect can reach
a small nominal p-value without surviving the Benjamini-Hochberg correction over every cell type x gene set:
the power of a study depends on the number of **donors** far more than on the number of cells. Sets whose genes
are barely detected in a cell type (for example C1Q in this small simulation) cannot be scored at donor level.

Cell type x gene set combinations with fewer than `min_cells` cells in too many donors get NaN, with the
reason in the `reason` column: nothing is dropped silently.

The strip plot shows the evidence behind a test: **one point per donor**, by condition, per cell type, here for
the gene set with the strongest signal."""),
    ("code", """\
top = da.dropna(subset=["pvalue"]).sort_values("pvalue").iloc[0]
print("strongest signal:", top["group"], "|", top["gene_set"])
im.pl.differential_activity(adata, gene_set=top["gene_set"]);"""),
    ("code", """\
im.pl.volcano(da);"""),
    ("md", """\
## Composition

MDD donors were simulated with more monocytes and fewer T and B cells. `im.tl.composition` tests the change of
each cell type's **proportion** between conditions, again at donor level: a quasi-binomial GLM of each donor's
cell counts (which accounts for the varying number of cells per donor and for over-dispersion between donors).
The effect is a log2 odds ratio. A cell type absent from every donor of one arm gives an unbounded estimate
(huge effect, p near 1): read such rows as "too rare to test"."""),
    ("code", """\
comp = im.tl.composition(adata, sample_key="donor", condition_key="condition", groupby="cell_type")
comp[["group", "effect", "pvalue", "padj", "prop_case", "prop_reference"]].round(4)"""),
    ("code", """\
im.pl.composition(adata, sample_key="donor", condition_key="condition", groupby="cell_type");"""),
    ("md", """\
## Why per-cell tests mislead

The common practice is to compare the per-cell scores of patients and controls with a Mann-Whitney test,
treating each cell as an observation. On a **null cohort** (every planted effect set to zero, so every
positive is a false positive) we run both the per-cell test and the donor-level test on the same cells. A
calibrated test calls about 5% of tests significant at p < 0.05."""),
    ("code", """\
from scipy.stats import mannwhitneyu

# a null cohort with realistic donor-to-donor variation that has nothing to do with the condition:
# gene-level (donor_sd), library size (library_sd) and shared complement activity (complement_sd)
null, _ = im.datasets.simulate_cohort(n_donors=8, n_cells_per_donor=500, null=True, donor_sd=0.3, library_sd=0.4,
                                      complement_sd=0.3, random_state=1)
im.pp.normalize(null)
sets = {**im.tl.gene_sets("complement"), **im.tl.gene_sets("interferon_alpha"), **im.tl.gene_sets("inflammatory")}
im.tl.score_pathways(null, sets)
scores = null.obsm["pathway_scores"]

per_cell = []
for ct, idx in null.obs.groupby("cell_type_true", observed=True).groups.items():
    cond = null.obs.loc[idx, "condition"]
    if (cond == "MDD").sum() < 10 or (cond == "control").sum() < 10:
        continue
    for gs in scores.columns:
        x = scores.loc[idx, gs]
        if x.isna().all():  # a set with none of its genes expressed has no score
            continue
        per_cell.append(mannwhitneyu(x[cond == "MDD"], x[cond == "control"]).pvalue)
per_cell = np.asarray(per_cell)

donor = im.tl.differential_activity(null, condition_key="condition", sample_key="donor",
                                    groupby="cell_type_true", gene_sets=sets, min_cells=10)
p_donor = donor["pvalue"].dropna().to_numpy()
print(f"per-cell Mann-Whitney: {np.mean(per_cell < 0.05):.1%} of {per_cell.size} tests with p < 0.05")
print(f"donor-level test:      {np.mean(p_donor < 0.05):.1%} of {p_donor.size} tests with p < 0.05")"""),
    ("md", """\
Here nothing differs between the groups by design, yet the per-cell test calls several times more "findings"
than the 5% expected: differences between individual donors (gene-level variation, library size, each donor's
own complement activity) look like a condition effect when every cell counts as a replicate, and the more cells
per donor, the smaller the per-cell p-values get. The donor-level test stays near its nominal rate (with a few
dozen tests, expect a few percentage points of sampling noise around 5%). On real unstimulated blood cells of
8 donors randomly split into two groups the contrast is starker: about 45% of per-cell tests against about 4%
at donor level, because real donors differ far more than this simulation's. Always test at the level at
which the condition was assigned: the donor."""),
    ("md", """\
## A symptom score and response prediction

Clinical cohorts are rarely two arms of equal donors. Patients differ in **symptom severity** (HAM-D, MADRS),
there may be **several diagnoses** (MDD, bipolar depression, controls), the same donors are often sampled
**before and after treatment**, and the question that matters most is whether the **baseline immune profile
predicts who responds**. The donor-level tests take a study design for this: a formula on sample-level
columns (`design="~ severity + age"`, as in R) and what to test: `test="severity"` for a continuous column
(effect per unit, with its CI), `contrast=("condition", "MDD", "control")` for a pair of levels (several in
one table, Benjamini-Hochberg over all of them), `test="visit:responder"` for an interaction, and
`random_effect="donor"` for repeated samples of one donor.

The simulator plants what these designs need. Here: 18 donors in three groups; MDD has the 1.5-fold complement
rise in classical monocytes, bipolar depression (`BD`) has none (`group_effects`); in patients the complement
genes also rise with a HAM-D-like severity score (`severity_effect`: log2 fold change per 10 points); each
donor is sampled at baseline and week 8 (`n_visits=2`), and half of the patients respond, with a higher
baseline complement activity than non-responders (`response_baseline_effect`). To keep the notebook quick we
skip QC and integration here and use the simulator's true cell types (`cell_type_true`)."""),
    ("code", """\
clin, _ = im.datasets.simulate_cohort(
    n_donors=18, n_cells_per_donor=150, groups=("control", "MDD", "BD"), group_effects={"BD": 1.0},
    severity_effect=1.0, n_visits=2, treatment_effect=1.0, response_baseline_effect=3.0, random_state=3,
)
clin.obs.groupby("sample", observed=True)[["donor", "condition", "visit", "severity", "responder", "age"]].first().head(6)"""),
    ("md", """\
### Immune activity against the symptom score, within patients

At baseline, among patients only (controls have scores near zero and would make "severity" a stand-in for
the diagnosis), we test each gene set's activity against severity, adjusted for age. `effect` is the change
per point of the score (log2 units), with its 95% CI; `n_samples` counts the donors in the model."""),
    ("code", """\
base = clin[clin.obs["visit"] == "baseline"].copy()
patients = base[base.obs["condition"] != "control"].copy()
sev = im.tl.differential_activity(
    patients, design="~ severity + age", test="severity", sample_key="donor", groupby="cell_type_true",
    gene_sets="complement", min_cells=10,
)
sev.sort_values("pvalue")[["group", "gene_set", "contrast", "effect", "ci_low", "ci_high", "pvalue", "padj",
                           "n_samples"]].head(6).round(4)"""),
    ("md", """\
The planted genes respond in classical monocytes; elsewhere the slopes are near zero. The plot reads what the
test stored: each donor's set score against its severity, one colour per cell type, and a line whose slope is
the tested effect per unit (adjusted for age, so it need not be the least-squares line of the points)."""),
    ("code", """\
top = sev.dropna(subset=["pvalue"]).sort_values("pvalue").iloc[0]
im.pl.differential_activity(patients, gene_set=top["gene_set"]);"""),
    ("md", """\
### Three groups

Each diagnosis against the controls, in one table: the `contrast` column says which comparison a row is, and
`padj` is over every row of both contrasts. In classical monocytes the MDD effects should be positive and the
BD effects near zero; with 6 donors per group, and the patients' severity and response adding donor-to-donor
spread to the same genes, the intervals are wide: three groups split the same donors into smaller arms."""),
    ("code", """\
three = im.tl.differential_activity(
    base, design="~ condition + age", contrast=[("condition", "MDD", "control"), ("condition", "BD", "control")],
    sample_key="donor", groupby="cell_type_true", gene_sets="complement", min_cells=10,
)
mono = three[three["group"] == "Classical monocyte"]
mono[["contrast", "gene_set", "effect", "ci_low", "ci_high", "pvalue", "padj", "n_case", "n_reference"]].round(4)"""),
    ("code", """\
im.pl.differential_activity(base, gene_set=top["gene_set"]);"""),
    ("md", """\
### Does the baseline profile predict response?

`im.tl.predict_response` predicts a donor-level outcome from baseline features (here the cell-type
proportions and donor-level complement activities that `im.tl.donor_view` computes from the baseline
samples). Every step that learns from data (imputation, scaling, feature filter, penalty) happens inside the
training folds of a cross-validation by donor, so the held-out donors never inform the model; the
cross-validated AUC is tested by permutation (the whole procedure rerun on shuffled outcomes). With 12
patients the AUC is uncertain: the permutation p-value and the spread over repeats say how much. We use few
repeats and permutations to keep the notebook fast (the defaults are 5 and 200); with 20 permutations the
smallest possible p-value is 1/21, about 0.048."""),
    ("code", """\
cases = clin[clin.obs["condition"] != "control"].copy()  # controls have no response
pred = im.tl.predict_response(
    cases, outcome="responder", sample_key="sample", baseline={"visit": "baseline"}, donor_key="donor",
    groupby="cell_type_true", gene_sets="complement", n_repeats=2, n_permutations=20, random_state=0,
)
print(f"cross-validated AUC {pred.metrics['auc']:.2f}, permutation p = {pred.metrics['pvalue']:.3f} "
      f"({pred.params['n_donors']} donors)")
pred.features.head(5).round(3)"""),
    ("code", """\
im.pl.predict_response(pred);"""),
    ("md", """\
`features` lists how often each feature was kept across the outer folds (its stability) and the sign of its
coefficient: the classical-monocyte complement sets, where the responders' baseline difference was planted,
should come first. The same analyses run from the command line with `[differential] design / contrasts /
tests / random_effect` and a `[predict]` section in the config (see the "Study designs" page of the docs)."""),
]

# --------------------------------------------------------------------------------------------------------------
# 3. Plasma proteomics
# --------------------------------------------------------------------------------------------------------------
NB3 = [
    ("md", """\
# Plasma proteomics: Olink and SomaScan, the donor join, associations and a biomarker panel

Plasma proteins measured in the same donors as the blood cells (for example more complement C5, DCLK3 and CALY
in patients with depression) can be connected to what the cells do. This tutorial:

1. reads an **Olink** NPX export and a **SomaScan** ADAT file (real formats; the Olink values are synthetic and
   serve format checks only), and runs proteomics QC;
2. builds a **donor-level view** of a single-cell cohort (pathway activity and proportions per cell type);
3. joins it with plasma proteomics of the same donors in a `MuData`, with checks;
4. tests **cross-modal associations** (protein vs cellular activity across donors);
5. fits a cross-validated **biomarker panel** and draws its ROC curve.

The proteomics files are read from `IMMUNOMOOD_DATA_DIR` through the dataset manifests (`olink_npx_long`,
`somascan_example`)."""),
    ("code", SETUP),
    ("md", """\
## Olink NPX (long format)

Olink exports are long tables: one row per sample x assay, with NPX (Normalised Protein eXpression, a log2 scale)
and per-assay limits of detection (LOD). `im.io.read_olink` turns them into an AnnData of samples x assays:
`X` holds NPX, `var` the assay metadata (`OlinkID`, `UniProt`, `Assay`, `Panel`, `LOD`, ...),
`layers["below_lod"]` marks values under the LOD, and `obs` every per-sample column. Control samples are kept but
**flagged** (`obs["is_control"]`), never mixed in silently."""),
    ("code", """\
olink = im.datasets.load("olink_npx_long")  # = im.io.read_olink(<data dir>/proteomics/olink_npx_synthetic_long.csv.gz)
olink"""),
    ("code", """\
print("control samples:", olink.obs_names[olink.obs["is_control"]].tolist())
olink.var[["OlinkID", "UniProt", "Assay", "Panel", "LOD"]].head()"""),
    ("md", """\
This export has 52 subjects measured at 3 visits each (`Time`): **several samples per donor**. Keep that in
mind: repeated visits are not independent donors (see the join below)."""),
    ("code", """\
olink.obs.loc[~olink.obs["is_control"], ["Subject", "Treatment", "Time"]].head(6)"""),
    ("md", """\
## Proteomics QC

`im.pp.proteomics_qc` removes control samples and samples that failed QC, removes assays with more than
`max_below_lod` of their values under the LOD (their NPX is mostly noise), log2-transforms SomaScan RFU (Olink
NPX is already log2), and records everything removed, and why, in `uns["proteomics_qc"]`."""),
    ("code", """\
im.pp.proteomics_qc(olink, max_below_lod=0.5)
qc = olink.uns["proteomics_qc"]
print(f"samples {qc['n_samples_before']} -> {qc['n_samples_after']}, assays {qc['n_assays_before']} -> {qc['n_assays_after']}")
qc["samples"]"""),
    ("md", """\
## SomaScan ADAT

SomaScan measures thousands of aptamer-based analytes; values are relative fluorescence units (RFU) on a linear
scale. `im.io.read_somascan` parses the ADAT sections: `var` from the column metadata (`SeqId`, `Target`,
`UniProt`, `EntrezGeneSymbol`, `Dilution`, ...), `obs` from the row metadata (`SampleId`, `SampleType`, ...), and
the header in `uns["adat_header"]`."""),
    ("code", """\
soma = im.datasets.load("somascan_example")
print(soma.shape)
soma.obs[["SampleId", "SampleType", "PlateId"]]"""),
    ("code", """\
soma.var[["SeqId", "Target", "UniProt", "EntrezGeneSymbol", "Dilution"]].head()"""),
    ("code", """\
im.pp.proteomics_qc(soma)
qc = soma.uns["proteomics_qc"]
print(f"log2 applied: {qc['log2']}; samples {qc['n_samples_before']} -> {qc['n_samples_after']}, "
      f"analytes {qc['n_assays_before']} -> {qc['n_assays_after']}")
qc["samples"]"""),
    ("md", """\
## Connecting cells and plasma: a cohort with both

Neither example file comes with single-cell data of the same donors, so for the joint analysis we use the
simulator, which produces both: cells of each donor and a donors x proteins plasma table (log2 NPX-like),
with C5 associated with each donor's classical-monocyte complement activity, and DCLK3 and CALY higher in MDD.

For speed we skip QC and integration here (tutorial 2 covers them) and use the simulator's true cell types as
the annotation."""),
    ("code", """\
adata, plasma = im.datasets.simulate_cohort(n_donors=24, n_cells_per_donor=120, random_state=0)
im.pp.normalize(adata)
adata.obs["cell_type"] = adata.obs["cell_type_true"]
plasma"""),
    ("md", """\
## The donor view

MuData models observations that are shared or disjoint between modalities, not "many cells belong to one
donor". So we first summarise the cells **per donor**: `im.tl.donor_view` returns one row per donor with, as
features, the pseudobulk activity of each gene set in each cell type (`"Classical monocyte|complement_classical"`)
and each cell type's proportion (`"Classical monocyte|proportion"`). Donor x cell type combinations with fewer
than `min_cells` cells are NaN (listed in `uns["donor_view"]["missing"]`)."""),
    ("code", """\
donors = im.tl.donor_view(adata, sample_key="donor", groupby="cell_type", gene_sets="complement", min_cells=10)
donors"""),
    ("code", """\
donors.to_df().filter(like="Classical monocyte").head().round(3)"""),
    ("md", """\
A set's activity uses only the genes expressed in at least half of the donors of that cell type (the edgeR
`filterByExpr` rule): with a hundred-odd cells per donor, some sets keep few or none of their genes, and their
activity is NaN. The genes used are listed per cell type and set:"""),
    ("code", """\
used = donors.uns["donor_view"]["genes_used"]
used[used["cell_type"] == "Classical monocyte"]"""),
    ("md", """\
## The join

`im.tl.join_proteomics` checks the donor IDs on both sides and returns a `MuData` with modalities `"rna"` (the
donor view) and `"prot"`, both indexed by donor. Donors present on one side only are **reported** (a warning
and `mdata.uns["join"]`), not dropped silently; several plasma samples of one donor (visits) raise an error that
asks you to choose or aggregate them explicitly. The result round-trips through `.h5mu`.

To show the report, we drop two donors' plasma:"""),
    ("code", """\
mdata = im.tl.join_proteomics(donors, plasma[2:].copy())
print(mdata)
mdata.uns["join"]"""),
    ("code", """\
mdata = im.tl.join_proteomics(donors, plasma)
mdata.write("cohort.h5mu")
import mudata

mudata.read_h5mu("cohort.h5mu")"""),
    ("md", """\
## Cross-modal associations

For each pair (donor-level RNA feature, protein), `im.tl.cross_modal_associations` computes a Spearman
correlation across donors, or a **partial** correlation when `covariates` are given (ranks residualised on the
covariates), with Benjamini-Hochberg adjustment over all pairs tested. The number of pairs grows fast
(features x proteins), so restrict the test to your hypothesis when you have one: here, classical-monocyte
features against the proteins of interest."""),
    ("code", """\
assoc = im.tl.cross_modal_associations(
    mdata, method="spearman", covariates=("sex", "age"),
    rna_features="Classical monocyte", proteins=["C5", "DCLK3", "CALY", "CRP", "IL6", "TNF"],
)
assoc.head(10).round(4)"""),
    ("code", """\
im.pl.cross_modal(assoc);"""),
    ("md", """\
Adding the condition as a covariate asks whether each link holds *within* the MDD and control groups:"""),
    ("code", """\
within = im.tl.cross_modal_associations(
    mdata, covariates=("sex", "age", "condition"),
    rna_features="Classical monocyte", proteins=["C5", "DCLK3", "CALY", "CRP", "IL6", "TNF"],
)
within.head(6).round(4)"""),
    ("md", """\
Note what such an association can and cannot say: in this cohort the planted C5 link runs through the donors'
complement activity, which itself differs between MDD and control. A correlation across all donors mixes the
within-group association with the group difference; adding the condition as a covariate asks whether the link
holds *within* each group. With a few dozen donors, such within-group tests have little power.

## Biomarker panel

Can plasma proteins (and cellular features) tell MDD from control donors? `im.tl.biomarker_panel` runs
**repeated stratified cross-validation** of an L1-penalised logistic regression. Every step that learns from the
data (imputation, scaling, feature selection, the model) is fitted inside each training fold: the held-out
donors never inform the model, so the AUC is not inflated by leakage. It returns the out-of-fold AUC with a
confidence interval, the features with their selection frequency across folds, and per-donor out-of-fold
predictions."""),
    ("code", """\
panel = im.tl.biomarker_panel(mdata, condition_key="condition", features="prot", n_splits=4, n_repeats=10,
                              random_state=0)
print(f"AUC {panel.auc:.3f} (95% CI {panel.auc_ci[0]:.3f}-{panel.auc_ci[1]:.3f})")
panel.features.head(8).round(3)"""),
    ("code", """\
im.pl.biomarker_roc(panel);"""),
    ("md", """\
On a **null** cohort (no planted effect) the same procedure gives an AUC near 0.5: a check worth running on any
new panel, with your sample size."""),
    ("code", """\
null_cells, null_plasma = im.datasets.simulate_cohort(n_donors=24, n_cells_per_donor=120, null=True, random_state=0)
null_cells.obs["cell_type"] = null_cells.obs["cell_type_true"]
null_donors = im.tl.donor_view(null_cells, sample_key="donor", groupby="cell_type", min_cells=10)
null_mdata = im.tl.join_proteomics(null_donors, null_plasma)
null_panel = im.tl.biomarker_panel(null_mdata, condition_key="condition", features="prot", n_splits=4,
                                   n_repeats=10, random_state=0)
print(f"null cohort AUC {null_panel.auc:.3f} (95% CI {null_panel.auc_ci[0]:.3f}-{null_panel.auc_ci[1]:.3f})")"""),
]

NOTEBOOKS = {
    "01_pbmc3k_qc_annotation.ipynb": NB1,
    "02_depression_cohort.ipynb": NB2,
    "03_plasma_proteomics.ipynb": NB3,
}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, src) in enumerate(cells):
        cell = nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives identical files
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def link_docs() -> None:
    """docs/tutorials/<name>.ipynb -> ../../tutorials/<name>.ipynb (relative symlinks, read by Sphinx)."""
    DOCS_TUTORIALS.mkdir(parents=True, exist_ok=True)
    for name in NOTEBOOKS:
        link = DOCS_TUTORIALS / name
        target = Path("..") / ".." / "tutorials" / name
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the notebooks are up to date")
    args = parser.parse_args(argv)
    TUTORIALS.mkdir(exist_ok=True)
    stale = []
    for name, cells in NOTEBOOKS.items():
        text = nbformat.writes(build(cells)) + "\n"
        path = TUTORIALS / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if args.check:
        if stale:
            print(f"out of date (run python tutorials/make_tutorials.py): {stale}", file=sys.stderr)
            return 1
        return 0
    link_docs()
    print(f"wrote {len(NOTEBOOKS)} notebooks to {TUTORIALS} and links in {DOCS_TUTORIALS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
