# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Plasma proteomics: Olink and SomaScan, the donor join, associations and a biomarker panel
#
# Plasma proteins measured in the same donors as the blood cells (for example more complement C5, DCLK3 and CALY
# in patients with depression) can be connected to what the cells do. This tutorial:
#
# 1. reads an **Olink** NPX export and a **SomaScan** ADAT file (real formats; the Olink values are synthetic and
#    serve format checks only), and runs proteomics QC;
# 2. builds a **donor-level view** of a single-cell cohort (pathway activity and proportions per cell type);
# 3. joins it with plasma proteomics of the same donors in a `MuData`, with checks;
# 4. tests **cross-modal associations** (protein vs cellular activity across donors);
# 5. fits a cross-validated **biomarker panel** and draws its ROC curve.
#
# The proteomics files are read from `IMMUNOMOOD_DATA_DIR` through the dataset manifests (`olink_npx_long`,
# `somascan_example`).

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
# ## Olink NPX (long format)
#
# Olink exports are long tables: one row per sample x assay, with NPX (Normalised Protein eXpression, a log2 scale)
# and per-assay limits of detection (LOD). `im.io.read_olink` turns them into an AnnData of samples x assays:
# `X` holds NPX, `var` the assay metadata (`OlinkID`, `UniProt`, `Assay`, `Panel`, `LOD`, ...),
# `layers["below_lod"]` marks values under the LOD, and `obs` every per-sample column. Control samples are kept but
# **flagged** (`obs["is_control"]`), never mixed in silently.

# %%
olink = im.datasets.load("olink_npx_long")  # = im.io.read_olink(<data dir>/proteomics/olink_npx_synthetic_long.csv.gz)
olink

# %%
print("control samples:", olink.obs_names[olink.obs["is_control"]].tolist())
olink.var[["OlinkID", "UniProt", "Assay", "Panel", "LOD"]].head()

# %% [markdown]
# This export has 52 subjects measured at 3 visits each (`Time`): **several samples per donor**. Keep that in
# mind: repeated visits are not independent donors (see the join below).

# %%
olink.obs.loc[~olink.obs["is_control"], ["Subject", "Treatment", "Time"]].head(6)

# %% [markdown]
# ## Proteomics QC
#
# `im.pp.proteomics_qc` removes control samples and samples that failed QC, removes assays with more than
# `max_below_lod` of their values under the LOD (their NPX is mostly noise), log2-transforms SomaScan RFU (Olink
# NPX is already log2), and records everything removed, and why, in `uns["proteomics_qc"]`.

# %%
im.pp.proteomics_qc(olink, max_below_lod=0.5)
qc = olink.uns["proteomics_qc"]
print(
    f"samples {qc['n_samples_before']} -> {qc['n_samples_after']}, "
    f"assays {qc['n_assays_before']} -> {qc['n_assays_after']}"
)
qc["samples"]

# %% [markdown]
# ## SomaScan ADAT
#
# SomaScan measures thousands of aptamer-based analytes; values are relative fluorescence units (RFU) on a linear
# scale. `im.io.read_somascan` parses the ADAT sections: `var` from the column metadata (`SeqId`, `Target`,
# `UniProt`, `EntrezGeneSymbol`, `Dilution`, ...), `obs` from the row metadata (`SampleId`, `SampleType`, ...), and
# the header in `uns["adat_header"]`.

# %%
soma = im.datasets.load("somascan_example")
print(soma.shape)
soma.obs[["SampleId", "SampleType", "PlateId"]]

# %%
soma.var[["SeqId", "Target", "UniProt", "EntrezGeneSymbol", "Dilution"]].head()

# %%
im.pp.proteomics_qc(soma)
qc = soma.uns["proteomics_qc"]
print(f"log2 applied: {qc['log2']}; samples {qc['n_samples_before']} -> {qc['n_samples_after']}, "
      f"analytes {qc['n_assays_before']} -> {qc['n_assays_after']}")
qc["samples"]

# %% [markdown]
# ## Connecting cells and plasma: a cohort with both
#
# Neither example file comes with single-cell data of the same donors, so for the joint analysis we use the
# simulator, which produces both: cells of each donor and a donors x proteins plasma table (log2 NPX-like),
# with C5 associated with each donor's classical-monocyte complement activity, and DCLK3 and CALY higher in MDD.
#
# For speed we skip QC and integration here (tutorial 2 covers them) and use the simulator's true cell types as
# the annotation.

# %%
adata, plasma = im.datasets.simulate_cohort(n_donors=24, n_cells_per_donor=120, random_state=0)
im.pp.normalize(adata)
adata.obs["cell_type"] = adata.obs["cell_type_true"]
plasma

# %% [markdown]
# ## The donor view
#
# MuData models observations that are shared or disjoint between modalities, not "many cells belong to one
# donor". So we first summarise the cells **per donor**: `im.tl.donor_view` returns one row per donor with, as
# features, the pseudobulk activity of each gene set in each cell type (`"Classical monocyte|complement_classical"`)
# and each cell type's proportion (`"Classical monocyte|proportion"`). Donor x cell type combinations with fewer
# than `min_cells` cells are NaN (listed in `uns["donor_view"]["missing"]`).

# %%
donors = im.tl.donor_view(adata, sample_key="donor", groupby="cell_type", gene_sets="complement", min_cells=10)
donors

# %%
donors.to_df().filter(like="Classical monocyte").head().round(3)

# %% [markdown]
# A set's activity uses only the genes expressed in at least half of the donors of that cell type (the edgeR
# `filterByExpr` rule): with a hundred-odd cells per donor, some sets keep few or none of their genes, and their
# activity is NaN. The genes used are listed per cell type and set:

# %%
used = donors.uns["donor_view"]["genes_used"]
used[used["cell_type"] == "Classical monocyte"]

# %% [markdown]
# ## The join
#
# `im.tl.join_proteomics` checks the donor IDs on both sides and returns a `MuData` with modalities `"rna"` (the
# donor view) and `"prot"`, both indexed by donor. Donors present on one side only are **reported** (a warning
# and `mdata.uns["join"]`), not dropped silently; several plasma samples of one donor (visits) raise an error that
# asks you to choose or aggregate them explicitly. The result round-trips through `.h5mu`.
#
# To show the report, we drop two donors' plasma:

# %%
mdata = im.tl.join_proteomics(donors, plasma[2:].copy())
print(mdata)
mdata.uns["join"]

# %%
mdata = im.tl.join_proteomics(donors, plasma)
mdata.write("cohort.h5mu")
import mudata

mudata.read_h5mu("cohort.h5mu")

# %% [markdown]
# ## Cross-modal associations
#
# For each pair (donor-level RNA feature, protein), `im.tl.cross_modal_associations` computes a Spearman
# correlation across donors, or a **partial** correlation when `covariates` are given (ranks residualised on the
# covariates), with Benjamini-Hochberg adjustment over all pairs tested. The number of pairs grows fast
# (features x proteins), so restrict the test to your hypothesis when you have one: here, classical-monocyte
# features against the proteins of interest.

# %%
assoc = im.tl.cross_modal_associations(
    mdata, method="spearman", covariates=("sex", "age"),
    rna_features="Classical monocyte", proteins=["C5", "DCLK3", "CALY", "CRP", "IL6", "TNF"],
)
assoc.head(10).round(4)

# %%
im.pl.cross_modal(assoc);

# %% [markdown]
# Adding the condition as a covariate asks whether each link holds *within* the MDD and control groups:

# %%
within = im.tl.cross_modal_associations(
    mdata, covariates=("sex", "age", "condition"),
    rna_features="Classical monocyte", proteins=["C5", "DCLK3", "CALY", "CRP", "IL6", "TNF"],
)
within.head(6).round(4)

# %% [markdown]
# Note what such an association can and cannot say: in this cohort the planted C5 link runs through the donors'
# complement activity, which itself differs between MDD and control. A correlation across all donors mixes the
# within-group association with the group difference; adding the condition as a covariate asks whether the link
# holds *within* each group. With a few dozen donors, such within-group tests have little power.
#
# ## Biomarker panel
#
# Can plasma proteins (and cellular features) tell MDD from control donors? `im.tl.biomarker_panel` runs
# **repeated stratified cross-validation** of an L1-penalised logistic regression. Every step that learns from the
# data (imputation, scaling, feature selection, the model) is fitted inside each training fold: the held-out
# donors never inform the model, so the AUC is not inflated by leakage. It returns the out-of-fold AUC with a
# confidence interval, the features with their selection frequency across folds, and per-donor out-of-fold
# predictions.

# %%
panel = im.tl.biomarker_panel(mdata, condition_key="condition", features="prot", n_splits=4, n_repeats=10,
                              random_state=0)
print(f"AUC {panel.auc:.3f} (95% CI {panel.auc_ci[0]:.3f}-{panel.auc_ci[1]:.3f})")
panel.features.head(8).round(3)

# %%
im.pl.biomarker_roc(panel);

# %% [markdown]
# On a **null** cohort (no planted effect) the same procedure gives an AUC near 0.5: a check worth running on any
# new panel, with your sample size.

# %%
null_cells, null_plasma = im.datasets.simulate_cohort(n_donors=24, n_cells_per_donor=120, null=True, random_state=0)
null_cells.obs["cell_type"] = null_cells.obs["cell_type_true"]
null_donors = im.tl.donor_view(null_cells, sample_key="donor", groupby="cell_type", min_cells=10)
null_mdata = im.tl.join_proteomics(null_donors, null_plasma)
null_panel = im.tl.biomarker_panel(null_mdata, condition_key="condition", features="prot", n_splits=4,
                                   n_repeats=10, random_state=0)
print(f"null cohort AUC {null_panel.auc:.3f} (95% CI {null_panel.auc_ci[0]:.3f}-{null_panel.auc_ci[1]:.3f})")
