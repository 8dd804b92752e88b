"""im.tl.annotate on COMBAT (6 real donors, full transcriptome, no published labels): plausible and stable calls.

Without labels the checks are marker evidence the method does not decide on alone (CD3E, CD79A, LYZ, NKG7 are read
together with many other genes), the composition the source sampled (200 cells per major type and donor), and
agreement between annotating one donor alone and annotating the whole cohort.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import immunomood as im


def _detected(a: ad.AnnData, gene: str) -> np.ndarray:
    x = a[:, gene].X
    return (x.toarray().ravel() if sparse.issparse(x) else np.asarray(x).ravel()) > 0


@pytest.fixture(scope="module")
def combat(data_dir):
    path = data_dir / "combat" / "combat_covid_6donors.h5ad"
    if not path.exists():
        pytest.skip("combat not available")
    a = ad.read_h5ad(path)
    im.tl.annotate(a)
    return a


def test_combat_lineages_carry_their_markers(combat):
    """Measured: CD79A in 98% of B calls (2% elsewhere), NKG7 99.7% of NK, LYZ 99% of monocytes, CD3E 98% of T."""
    a = combat
    lin = a.obs["cell_lineage"].astype(str).to_numpy()
    assigned = lin != "Unassigned"
    assert assigned.mean() >= 0.98
    for lineage, gene in {"B cell": "CD79A", "NK cell": "NKG7", "Monocyte": "LYZ", "T cell": "CD3E"}.items():
        d = _detected(a, gene)
        inside, outside = d[lin == lineage].mean(), d[assigned & (lin != lineage)].mean()
        assert inside >= 0.95, (lineage, gene, inside)
        assert outside <= 0.3, (lineage, gene, outside)


def test_combat_composition_matches_the_sampling(combat):
    """The source kept up to 200 cells per major type and donor: most donors are 25% T / NK / B / monocytes.

    Measured: 4 of 6 donors within 0.23-0.25 for every lineage; S00016 (15% B) and S00040 (12% NK) had fewer cells
    of one type to sample from.
    """
    frac = pd.crosstab(combat.obs["donor"], combat.obs["cell_lineage"].astype(str), normalize="index")
    main = frac[["T cell", "NK cell", "B cell", "Monocyte"]]
    assert ((main - 0.25).abs() <= 0.03).all(axis=1).sum() >= 4
    assert (main >= 0.1).all().all()


def test_combat_cd8_cells_called_cd8(combat):
    """T cells with CD8A and CD8B both detected: 58% called CD8 (26% CD4); before the unscaled-graph override 36%.

    COMBAT has a CD8A+ (91%) CD8B+ (99%) CD4- (0%) CCR7+ naive T population of 67 cells that the coarse T
    sub-clusters merged into a CD4 naive one; they were all called CD4 naive T.
    """
    a = combat
    fine = a.obs["cell_type"].astype(str).to_numpy()
    t = a.obs["cell_lineage"].astype(str).to_numpy() == "T cell"
    both = t & _detected(a, "CD8A") & _detected(a, "CD8B")
    cd8 = np.isin(fine, ["CD8 naive T", "CD8 memory T"])
    cd4 = np.isin(fine, ["CD4 naive T", "CD4 memory T", "Treg"])
    assert both.sum() >= 200
    assert cd8[both].mean() >= 0.5
    assert (fine == "CD8 naive T").sum() >= 40
    c8 = _detected(a, "CD8A") | _detected(a, "CD8B")
    assert c8[cd4].mean() <= 0.2  # was 0.24; the background in CD4 clusters is 3-8%


def test_combat_one_donor_alone_agrees_with_the_cohort(combat):
    """Annotating a donor alone vs within all six: lineage agreement 0.982-0.993, fine 0.79-0.88 over the 6 donors."""
    a = combat
    for donor in ("H00049", "S00043"):  # one healthy, one critical donor
        one = ad.AnnData(
            X=a[a.obs["donor"] == donor].X.copy(),
            obs=a.obs.loc[a.obs["donor"] == donor, ["donor", "condition"]].copy(),
            var=a.var.copy(),
        )
        im.tl.annotate(one)
        joint = a.obs.loc[one.obs_names]
        lin_agree = (one.obs["cell_lineage"].astype(str) == joint["cell_lineage"].astype(str)).mean()
        fine_agree = (one.obs["cell_type"].astype(str) == joint["cell_type"].astype(str)).mean()
        assert lin_agree >= 0.97, (donor, lin_agree)
        assert fine_agree >= 0.75, (donor, fine_agree)
