"""A real multi-sample cohort on disk, for reader and command-line tests.

``write_combat_cohort`` writes the 6 real COMBAT donors (``combat/combat_covid_6donors.h5ad`` of the shared data)
as one input per donor, in the formats a lab receives: 10x v3 folders (``matrix.mtx.gz``, ``features.tsv.gz``,
``barcodes.tsv.gz``), 10x v2 folders (``matrix.mtx``, ``genes.tsv``, ``barcodes.tsv``), CellRanger v3 ``.h5`` files
and ``.h5ad`` files, plus a
sample sheet ``samples.csv`` (columns ``donor``, ``condition``, ``path``; paths relative to the sheet).

Import it from any test (``tests/`` is on ``sys.path`` through its conftest): ``from _cohort_data import
write_combat_cohort``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import io as sio
from scipy import sparse

COMBAT = ("combat", "combat_covid_6donors.h5ad")
#: format of each donor's input, in the order of the donors in the source file
DEFAULT_FORMATS = ("v3", "v2", "h5ad", "h5", "v2", "h5ad")


def _write_mtx(folder: Path, X: sparse.spmatrix, genes: list[str], barcodes: list[str], *, v3: bool) -> None:
    folder.mkdir(parents=True)
    mtx = folder / "matrix.mtx"
    # 10x stores genes x cells, integer counts
    sio.mmwrite(str(mtx), sparse.csr_matrix(X.T).astype(np.int64), field="integer")
    gene_rows = [f"{g}\t{g}\tGene Expression" if v3 else f"{g}\t{g}" for g in genes]
    if v3:
        for name, lines in (("features.tsv.gz", gene_rows), ("barcodes.tsv.gz", barcodes)):
            with gzip.open(folder / name, "wt") as fh:
                fh.write("\n".join(lines) + "\n")
        with open(mtx, "rb") as src, gzip.open(folder / "matrix.mtx.gz", "wb") as dst:
            dst.write(src.read())
        mtx.unlink()
    else:
        (folder / "genes.tsv").write_text("\n".join(gene_rows) + "\n")
        (folder / "barcodes.tsv").write_text("\n".join(barcodes) + "\n")


def _write_h5(path: Path, X: sparse.spmatrix, genes: list[str], barcodes: list[str]) -> None:
    """A CellRanger v3 ``filtered_feature_bc_matrix.h5`` (the layout ``scanpy.read_10x_h5`` reads)."""
    import h5py

    M = sparse.csc_matrix(sparse.csr_matrix(X).T.astype(np.int32))  # genes x cells, one column per cell
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("data", data=M.data.astype(np.int32))
        g.create_dataset("indices", data=M.indices.astype(np.int64))
        g.create_dataset("indptr", data=M.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.asarray(M.shape, dtype=np.int32))
        g.create_dataset("barcodes", data=np.asarray(barcodes, dtype="S"))
        feat = g.create_group("features")
        feat.create_dataset("id", data=np.asarray(genes, dtype="S"))
        feat.create_dataset("name", data=np.asarray(genes, dtype="S"))
        feat.create_dataset("feature_type", data=np.asarray(["Gene Expression"] * len(genes), dtype="S"))
        feat.create_dataset("genome", data=np.asarray(["GRCh38"] * len(genes), dtype="S"))
        feat.create_dataset("_all_tag_keys", data=np.asarray(["genome"], dtype="S"))


def write_combat_cohort(
    data_dir: Path,
    dest: Path,
    formats: tuple[str, ...] | None = None,
    n_cells: int | None = None,
    conditions: tuple[str, ...] | None = None,
) -> tuple[Path, object]:
    """Write the COMBAT donors under ``dest``; return (sample sheet path, the source AnnData it was written from).

    ``formats`` gives, per donor, ``"v3"``, ``"v2"``, ``"h5"`` or ``"h5ad"`` (default: :data:`DEFAULT_FORMATS`, cycled
    over the donors kept). ``n_cells`` keeps the first ``n_cells`` cells of each donor (all by default).
    ``conditions`` keeps the donors of those conditions only (``("Healthy", "Covid_Critical")``: 4 donors, two
    arms, as the differential stage of ``immunomood run`` needs). The gene symbols serve as both gene ID and name in the 10x files (the source has
    no Ensembl IDs). Cell barcodes are the source's obs names without the ``"<donor>_"`` prefix, so that
    ``read_cohort`` (``"<sample>_<barcode>"``) gives back the source's obs names.
    """
    import anndata as ad

    src = ad.read_h5ad(Path(data_dir) / COMBAT[0] / COMBAT[1])
    if conditions is not None:
        unknown = set(conditions) - set(src.obs["condition"].astype(str))
        if unknown:
            raise ValueError(
                f"conditions {sorted(unknown)} not in the COMBAT data: {sorted(set(src.obs['condition']))}"
            )
        src = src[src.obs["condition"].astype(str).isin(conditions).to_numpy()].copy()
    donors = list(dict.fromkeys(src.obs["donor"].astype(str)))
    if formats is None:
        formats = tuple(DEFAULT_FORMATS[i % len(DEFAULT_FORMATS)] for i in range(len(donors)))
    if len(formats) != len(donors):
        raise ValueError(f"formats must give one format per donor ({len(donors)}), got {len(formats)}.")
    keep = []
    for d in donors:
        idx = np.flatnonzero(src.obs["donor"].astype(str).to_numpy() == d)
        keep.extend(idx[:n_cells] if n_cells else idx)
    src = src[np.asarray(keep)].copy()
    genes = src.var_names.astype(str).tolist()
    rows = []
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for d, fmt in zip(donors, formats):
        sub = src[src.obs["donor"].astype(str) == d]
        barcodes = [n[len(d) + 1 :] for n in sub.obs_names]
        assert all(n.startswith(f"{d}_") for n in sub.obs_names)
        if fmt in ("v2", "v3"):
            rel = Path("samples") / f"{d}_{fmt}"
            _write_mtx(dest / rel, sub.X, genes, barcodes, v3=fmt == "v3")
        elif fmt == "h5":
            rel = Path("samples") / f"{d}_filtered_feature_bc_matrix.h5"
            _write_h5(dest / rel, sub.X, genes, barcodes)
        elif fmt == "h5ad":
            rel = Path("samples") / f"{d}.h5ad"
            a = ad.AnnData(
                sparse.csr_matrix(sub.X),
                obs=sub.obs[["donor", "condition"]].copy(),
                var=pd.DataFrame(index=genes),
            )
            a.obs_names = barcodes
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            a.write_h5ad(dest / rel)
        else:
            raise ValueError(f"unknown format {fmt!r}; expected 'v2', 'v3', 'h5' or 'h5ad'.")
        rows.append({"donor": d, "condition": str(sub.obs["condition"].iloc[0]), "path": str(rel)})
    sheet = dest / "samples.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    return sheet, src
