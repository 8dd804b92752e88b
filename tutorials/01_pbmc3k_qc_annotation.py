# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # PBMC 3k: quality control and hierarchical annotation
#
# This tutorial takes the classic 10x Genomics **PBMC 3k** data set (2,700 peripheral blood mononuclear cells of
# one healthy donor) from raw counts to annotated cell types, and compares the result with the labels of the
# published Seurat tutorial. You will see:
#
# 1. per-cell QC metrics, and the **median absolute deviation (MAD)** outlier rule;
# 2. doublet scoring and a report of *every* cell removed, and why;
# 3. normalisation and highly variable genes;
# 4. hierarchical, marker-based annotation with a **confidence** and an honest `"Unassigned"`;
# 5. the figures a user expects: QC violins, the removal report, a UMAP, a marker dot plot and the
#    confidence distribution.
#
# The data are read from the folder named by the environment variable `IMMUNOMOOD_DATA_DIR` (see
# `data_manifests/pbmc3k.yaml` for the files, checksums and how to get them).

# %%
# %matplotlib inline
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
print("immunomood", im.__version__, "| scanpy", sc.__version__)

# %% [markdown]
# ## Load the data
#
# `im.datasets.pbmc3k()` finds the files through the dataset manifest, verifies their sha256 checksums and
# returns raw UMI counts with gene symbols as `var_names` (Ensembl IDs in `var["gene_ids"]`) and the Seurat
# tutorial's labels in `obs["seurat_label"]` (NaN for the 62 cells that tutorial removed).

# %%
adata = im.datasets.pbmc3k()
adata

# %%
adata.obs["seurat_label"].value_counts(dropna=False)

# %% [markdown]
# ## Quality-control metrics
#
# `im.pp.qc_metrics` adds per-cell metrics to `obs` (library size, genes detected, their log1p, the share of
# counts in the 20 most expressed genes, and the percentages of mitochondrial, ribosomal and haemoglobin
# counts) and gene flags `mt`, `ribo`, `hb` to `var`.
#
# *Why these metrics?* A cell whose membrane broke loses cytoplasmic mRNA but keeps the mitochondrial
# transcripts: a **high mitochondrial share** marks damaged cells. Empty droplets with ambient RNA have
# **few counts and few genes**; a library dominated by a handful of genes (high `pct_counts_in_top_20_genes`)
# is another sign of a poor capture. Genes with no count at all are kept (and reported).

# %%
im.pp.qc_metrics(adata)
adata.obs[["total_counts", "n_genes_by_counts", "pct_counts_mt", "pct_counts_in_top_20_genes"]].describe().round(2)

# %% [markdown]
# ## Outliers by the MAD rule
#
# Fixed thresholds ("keep cells with 200-2,500 genes and < 5% mitochondrial counts") do not transfer between
# samples, chemistries or tissues. A robust, data-driven alternative: within each sample, a cell is an outlier
# for a metric when
#
# $$|x - \operatorname{median}(x)| > n \times \operatorname{MAD}(x), \qquad
# \operatorname{MAD}(x) = \operatorname{median}(|x - \operatorname{median}(x)|).$$
#
# The median and the **median** absolute deviation are barely moved by the outliers themselves (the mean and
# standard deviation are). We use the unscaled MAD (for a normal distribution 1 MAD is about 0.67 SD), `nmads=5`
# for the count metrics (on the log scale) and the top-20 share, and a stricter `mt_nmads=3` for the
# mitochondrial percentage. The rule is applied **per sample** (`sample_key`), because samples differ in
# depth: a deep sample would otherwise lose its best cells and a shallow one keep its worst. PBMC 3k is a single
# sample, so `sample_key=None` treats all cells as one group.
#
# Each outlier is labelled with the first metric it fails (`obs["qc_reason"]`), and the thresholds are kept in
# `uns["qc"]["thresholds"]`.

# %%
im.pp.flag_outliers(adata, sample_key=None, nmads=5, mt_nmads=3)
adata.obs["qc_reason"].value_counts()

# %%
adata.uns["qc"]["thresholds"].round(3)

# %% [markdown]
# The violins show each metric with the thresholds drawn: what lies outside the lines is flagged.

# %%
im.pl.qc(adata, sample_key=None);

# %% [markdown]
# ## Doublets
#
# Two cells captured in one droplet look like a hybrid cell type (for example a "T cell-monocyte"). Scrublet
# simulates such doublets from the observed cells and scores every cell by how much its neighbourhood looks
# like them. Doublets only form within one channel, so `im.pp.detect_doublets` scores **each sample
# separately**; a sample too small to score gets NaN and a warning (its cells are kept).

# %%
im.pp.detect_doublets(adata, sample_key=None, random_state=0)
print(f"predicted doublets: {int(adata.obs['predicted_doublet'].sum())} of {adata.n_obs} cells")
adata.uns["qc"]["doublets"]

# %% [markdown]
# ## Remove flagged cells, with a report
#
# `im.pp.filter_cells` removes the QC outliers and the predicted doublets, and writes `uns["qc"]["report"]`: one
# row per sample with the cells before, removed per reason, after, and a flag for samples left too small to
# pseudobulk. Nothing disappears without a line in this table.

# %%
im.pp.filter_cells(adata)
adata.uns["qc"]["report"].T

# %%
im.pl.qc_report(adata);

# %% [markdown]
# ## Normalisation and highly variable genes
#
# `im.pp.normalize` keeps the raw counts in `layers["counts"]` (needed later by scVI, pseudobulk tests and
# the seurat_v3 gene selection) and puts log1p(counts per 10,000) in `X`. `im.pp.highly_variable_genes` selects
# genes with the seurat_v3 method, which models the mean-variance relation of the **raw counts**.

# %%
im.pp.normalize(adata)
im.pp.highly_variable_genes(adata, n_top_genes=2000)
sc.pp.pca(adata, n_comps=30, mask_var="highly_variable", random_state=0)
adata

# %% [markdown]
# ## Neighbours, clusters and UMAP
#
# `im.tl.embed` runs the usual scanpy chain on a representation: a k-nearest-neighbour graph, Leiden
# clustering (igraph flavour) and UMAP, with a fixed seed. Here the representation is the PCA; in a multi-batch
# cohort it is the integrated scVI latent space (tutorial 2).

# %%
im.tl.embed(adata, use_rep="X_pca", random_state=0)
adata.obs["leiden"].value_counts().sort_index().to_frame().T

# %% [markdown]
# ## Hierarchical annotation with a confidence
#
# `im.tl.annotate` labels cells from curated marker genes shipped with the package (no model download),
# **hierarchically**: first the lineage (T, NK, B, monocyte, dendritic cell, ...), then the subset within it
# (CD4 naive/memory T, Treg, CD8 naive/memory T, MAIT, gamma-delta T, classical / intermediate / non-classical
# monocytes, ...). Subsets are decided only among cells of the right lineage, which avoids the classic CD4/CD8
# confusion caused by CD4 mRNA drop-out.
#
# Single-cell marker calls are noisy (a few dropout-prone genes such as CD4, FOXP3 or SLC4A10 decide a subset),
# so each cell's marker scores are combined with those of its nearest neighbours and of its cluster in the
# embedding given by `use_rep`.
#
# Each cell gets a **confidence** in [0, 1]: the lineage probability times the subset probability, each
# multiplied by the agreement with the cell's neighbourhood and cluster. Cells whose *lineage* confidence is
# below `min_confidence` are labelled `"Unassigned"` rather than given a guess. A cell can therefore be confidently
# a monocyte while its subset (classical, intermediate or non-classical: a continuum) is uncertain, which shows as
# a low overall confidence on an assigned cell. An *Unassigned* cell is one whose markers are ambiguous (a doublet that escaped scrublet, a rare type absent
# from the marker resource, a low-quality profile). It is better to exclude these from downstream tests than to
# force them into a type.

# %%
im.tl.annotate(adata, use_rep="X_pca", min_confidence=0.5, random_state=0)
adata.obs[["cell_lineage", "cell_type", "cell_type_confidence"]].head()

# %%
adata.obs["cell_type"].value_counts().to_frame().T

# %% [markdown]
# ## Comparison with the published Seurat labels
#
# The Seurat tutorial's labels are coarser (for example one "CD8 T" label, "CD14+ Mono" and "FCGR3A+ Mono").
# The crosstab shows how our finer labels split them; the mapping below states which of our labels agree with
# each Seurat label (for example "Memory CD4 T" contains the regulatory T cells, and "CD14+ Mono" both classical
# and intermediate monocytes).

# %%
labelled = adata.obs["seurat_label"].notna()
pd.crosstab(adata.obs.loc[labelled, "seurat_label"], adata.obs.loc[labelled, "cell_type"])

# %%
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
pairs = zip(obs["seurat_label"], obs["cell_type"].astype(str), strict=True)
correct = np.array([ct in agree[str(s)] for s, ct in pairs])
high = obs["cell_type_confidence"] >= 0.8
print(f"Unassigned: {1 - assigned.mean():.1%} of labelled cells")
print(f"accuracy on assigned cells: {correct[assigned.to_numpy()].mean():.3f}")
print(f"accuracy, confidence >= 0.8: {correct[(assigned & high).to_numpy()].mean():.3f}  "
      f"| confidence < 0.8: {correct[(assigned & ~high).to_numpy()].mean():.3f}")

# %% [markdown]
# The last line is the check that the confidence **means something**: cells annotated with a high confidence are
# more often right than the others. Use the confidence to filter, or to flag clusters that need a closer look.
#
# ## Figures
#
# A UMAP coloured by our annotation and by the Seurat labels (scanpy's own plotting works on the keys
# immunomood writes):

# %%
fig, axs = plt.subplots(1, 2, figsize=(12, 4.5))
sc.pl.umap(adata, color="cell_type", ax=axs[0], show=False, title="immunomood annotation")
sc.pl.umap(adata, color="seurat_label", ax=axs[1], show=False, title="Seurat tutorial labels")
fig.tight_layout()

# %% [markdown]
# The marker dot plot shows, for each label, the markers that defined it (dot size: fraction of cells expressing;
# colour: mean expression). This is the figure to check an annotation by eye.

# %%
im.pl.annotation(adata, key="cell_type");

# %% [markdown]
# The confidence per label: labels with a low median confidence (often the rare ones, or the continuum between
# CD4 naive and memory T cells) deserve the most caution.

# %%
im.pl.annotation_confidence(adata);

# %% [markdown]
# ## What was written into `adata`
#
# Every key is documented on the *Data structures* page of the documentation.

# %%
print(adata)
print("uns['cell_type'] keys:", list(adata.uns["cell_type"]))
