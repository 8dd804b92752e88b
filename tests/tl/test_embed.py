"""im.tl.embed: scanpy keys written, reproducible, clear error for a missing representation."""

from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData

import immunomood as im


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c, 0.3, (40, 5)) for c in (0, 5, 10)])
    a = AnnData(np.zeros((120, 2), dtype=np.float32))
    a.obsm["X_scVI"] = X
    return a


def test_embed_keys_and_clusters(blobs):
    im.tl.embed(blobs, resolution=0.5)
    assert {"distances", "connectivities"} <= set(blobs.obsp)
    assert blobs.uns["neighbors"]["params"]["use_rep"] == "X_scVI"
    assert blobs.obsm["X_umap"].shape == (120, 2)
    assert blobs.obs["leiden"].dtype.name == "category" and "leiden" in blobs.uns and "umap" in blobs.uns
    # three well separated blobs -> clusters never mix blobs
    truth = np.repeat([0, 1, 2], 40)
    for c in blobs.obs["leiden"].cat.categories:
        assert len(np.unique(truth[blobs.obs["leiden"].to_numpy() == c])) == 1


def test_embed_reproducible(blobs):
    b = blobs.copy()
    im.tl.embed(blobs, random_state=3)
    im.tl.embed(b, random_state=3)
    np.testing.assert_array_equal(blobs.obsm["X_umap"], b.obsm["X_umap"])
    assert (blobs.obs["leiden"] == b.obs["leiden"]).all()


def test_embed_errors(blobs):
    with pytest.raises(KeyError, match="Available"):
        im.tl.embed(blobs, use_rep="X_nope")
    with pytest.raises(ValueError, match="resolution"):
        im.tl.embed(blobs, resolution=0)
