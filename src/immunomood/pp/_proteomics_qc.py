"""Quality control of plasma proteomics (Olink NPX, SomaScan RFU): failed samples, assays below LOD, log2."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import doc_copy, doc_params
from .._settings import logger
from .._utils import check_adata, check_not_view, warn

__all__ = ["proteomics_qc"]

_PASS = {"pass", "passed", "ok", "na", "nan", "", "none"}
_SAMPLE_QC_COLUMNS = ("QC_Warning", "SampleQC", "RowCheck")
#: SomaScan analytes that are not human protein measurements
_SOMA_CONTROL_TYPES = {
    "hybridization control elution",
    "spuriomer",
    "non-biotin",
    "non-cleavable",
    "non-human",
    "deprecated",
}


def _platform(prot) -> str | None:
    info = prot.uns.get("proteomics", {})
    if isinstance(info, dict) and info.get("platform"):
        return str(info["platform"])
    if "adat_header" in prot.uns:
        return "somascan"
    return None


def _failed(values: pd.Series) -> np.ndarray:
    s = values.astype(object)
    return (s.notna() & ~s.astype(str).str.strip().str.lower().isin(_PASS)).to_numpy()


@doc_params(doc_copy=doc_copy)
def proteomics_qc(
    prot,
    *,
    max_below_lod: float = 0.5,
    drop_failed_samples: bool = True,
    log2: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Remove failed samples, control samples and assays mostly below LOD; log2-transform RFU.

    Samples removed (with ``drop_failed_samples=True``): control samples (``obs["is_control"]``, as set
    by :func:`immunomood.io.read_olink`), samples whose ``SampleType`` is not ``Sample``, and samples that
    failed QC: ``QC_Warning`` / ``SampleQC`` (Olink) or ``RowCheck`` (SomaScan) other than ``Pass``.
    Assays removed: control assays (``var["is_control"]``; SomaScan analytes whose ``Type`` is a control type
    such as ``Spuriomer`` or ``Hybridization Control Elution``) and assays whose fraction of values below
    LOD (``layers["below_lod"]``, over the non-missing values of the samples kept) exceeds ``max_below_lod``.

    Parameters
    ----------
    prot
        Samples x assays, as returned by :func:`immunomood.io.read_olink` or :func:`immunomood.io.read_somascan`
        (any AnnData works; checks whose columns are absent are skipped and recorded).
    max_below_lod
        Largest tolerated fraction of samples below LOD per assay, in [0, 1].
    drop_failed_samples
        Remove failed and control samples. With ``False`` they are kept (and still listed, as ``kept``).
    log2
        log2-transform ``X``. ``None``: only when the values are linear RFU (SomaScan, detected from
        ``uns["proteomics"]["platform"]`` or ``uns["adat_header"]``); Olink NPX is already log2.
        Non-positive values become ``NaN`` (with a warning).
    {doc_copy}

    Returns
    -------
    The filtered AnnData with ``copy=True``, else ``None`` (``prot`` is filtered in place). Writes
    ``uns["proteomics_qc"]``: ``params``; ``samples`` (DataFrame, one row per sample that failed a check:
    ``reason`` and ``removed``); ``assays`` (DataFrame, one row per assay removed: ``reason`` and
    ``frac_below_lod``); ``frac_below_lod`` (one-column DataFrame over all assays before filtering); ``n_samples_before``,
    ``n_samples_after``, ``n_assays_before``, ``n_assays_after``, ``log2`` (applied or not) and ``skipped``
    (checks that could not run and why). Sets ``uns["proteomics"]["scale"] = "log2"`` when it transforms.
    """
    check_adata(prot, name="prot")
    from .._utils import check_bool, check_number

    check_number("max_below_lod", max_below_lod, min=0, max=1, fix="It is a fraction of the samples, e.g. 0.5.")
    check_bool("drop_failed_samples", drop_failed_samples)
    check_bool("copy", copy)
    if not copy:
        check_not_view(prot, func="proteomics_qc")
    platform = _platform(prot)
    info = dict(prot.uns.get("proteomics", {}) or {})
    skipped: dict[str, str] = {}

    # ---- samples
    obs = prot.obs
    reasons = pd.Series([[] for _ in range(prot.n_obs)], index=prot.obs_names, dtype=object)

    def _add(mask: np.ndarray, text: str) -> None:
        for i in np.flatnonzero(mask):
            reasons.iloc[i].append(text)

    if "is_control" in obs.columns:
        _add(obs["is_control"].fillna(False).to_numpy(dtype=bool), "control sample")
    else:
        skipped["is_control"] = "no obs['is_control'] column"
    if "SampleType" in obs.columns:
        st = obs["SampleType"].astype(object)
        bad = st.notna() & ~st.astype(str).str.strip().str.lower().isin({"sample", "nan", ""})
        _add(bad.to_numpy(), "SampleType is not Sample")
    qc_cols = [c for c in _SAMPLE_QC_COLUMNS if c in obs.columns]
    for c in qc_cols:
        f = _failed(obs[c])
        for i in np.flatnonzero(f):
            reasons.iloc[i].append(f"{c}={obs[c].iloc[i]}")
    if not qc_cols:
        skipped["sample_qc"] = f"none of the columns {list(_SAMPLE_QC_COLUMNS)} in obs"
    failed = reasons.map(len).to_numpy() > 0
    samples_tab = pd.DataFrame(
        {"reason": reasons[failed].map("; ".join).astype(str), "removed": bool(drop_failed_samples)},
        index=prot.obs_names[failed],
    )
    keep_obs = ~failed if drop_failed_samples else np.ones(prot.n_obs, bool)
    if keep_obs.sum() == 0:
        raise ValueError(
            f"proteomics_qc would remove every sample ({prot.n_obs}); reasons: "
            f"{samples_tab['reason'].value_counts().head(5).to_dict()}. Check the QC columns, or pass "
            "drop_failed_samples=False."
        )

    # ---- assays
    var = prot.var
    a_reason = pd.Series("", index=prot.var_names, dtype=object)
    ctrl = np.zeros(prot.n_vars, bool)
    if "is_control" in var.columns:
        ctrl |= var["is_control"].fillna(False).to_numpy(dtype=bool)
    if platform == "somascan" and "Type" in var.columns:
        ctrl |= var["Type"].astype(str).str.strip().str.lower().isin(_SOMA_CONTROL_TYPES).to_numpy()
    a_reason[ctrl] = "control assay"
    if "below_lod" in prot.layers:
        below = np.asarray(prot.layers["below_lod"][keep_obs], dtype=bool)
        Xk = np.asarray(prot.X[keep_obs], dtype=float)
        present = ~np.isnan(Xk)
        n_present = present.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(n_present > 0, (below & present).sum(0) / np.maximum(n_present, 1), np.nan)
        frac_s = pd.Series(frac, index=prot.var_names)
        lod_bad = (frac > max_below_lod) & ~ctrl
        a_reason[lod_bad] = [
            f"{100 * f:.0f}% of samples below LOD (> {100 * max_below_lod:.0f}%)" for f in frac[lod_bad]
        ]
        if "LOD" in var.columns and var["LOD"].isna().all():
            skipped["below_lod"] = "no LOD values in var['LOD']: below-LOD filter had nothing to use"
    else:
        frac_s = pd.Series(np.nan, index=prot.var_names)
        skipped["below_lod"] = "no layers['below_lod'] (e.g. SomaScan has no LOD)"
    drop_var = (a_reason != "").to_numpy()
    assays_tab = pd.DataFrame({"reason": a_reason[drop_var].astype(str), "frac_below_lod": frac_s[drop_var]})
    if drop_var.all():
        raise ValueError(
            f"proteomics_qc would remove every assay ({prot.n_vars}); reasons: "
            f"{assays_tab['reason'].value_counts().head(3).to_dict()}. Raise max_below_lod (now {max_below_lod})."
        )

    # ---- log2
    scale = info.get("scale")
    if log2 is None:
        do_log = platform == "somascan" and scale != "log2"
    else:
        do_log = bool(log2)
        if do_log and scale == "log2":
            warn(
                "log2=True but uns['proteomics']['scale'] is already 'log2' (e.g. Olink NPX); transforming again "
                "as asked.",
                stacklevel=3,
            )

    adata = prot.copy() if copy else prot
    n_obs0, n_var0 = adata.n_obs, adata.n_vars
    if not keep_obs.all():
        adata._inplace_subset_obs(np.flatnonzero(keep_obs))
    if drop_var.any():
        adata._inplace_subset_var(np.flatnonzero(~drop_var))
    if do_log:
        X = np.asarray(adata.X, dtype=float)
        nonpos = X <= 0
        if nonpos.any():
            warn(
                f"proteomics_qc: {int(nonpos.sum())} non-positive values cannot be log2-transformed and became NaN.",
                stacklevel=3,
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            adata.X = np.where(nonpos, np.nan, np.log2(np.where(nonpos, 1.0, X)))
        info["scale"] = "log2"
        info["log2_by"] = "proteomics_qc"
        adata.uns["proteomics"] = info

    adata.uns["proteomics_qc"] = {
        "params": {
            "max_below_lod": float(max_below_lod),
            "drop_failed_samples": bool(drop_failed_samples),
            "log2": "auto" if log2 is None else bool(log2),
            "platform": platform or "unknown",
        },
        "samples": samples_tab,
        "assays": assays_tab,
        "frac_below_lod": frac_s.to_frame("frac_below_lod"),
        "n_samples_before": int(n_obs0),
        "n_samples_after": int(adata.n_obs),
        "n_assays_before": int(n_var0),
        "n_assays_after": int(adata.n_vars),
        "log2": bool(do_log),
        "skipped": skipped,
    }
    n_rm = int(samples_tab["removed"].sum()) if len(samples_tab) else 0
    logger.warning(
        "proteomics_qc: removed %d of %d samples (%s) and %d of %d assays (%s)%s; details in uns['proteomics_qc']",
        n_rm,
        n_obs0,
        samples_tab["reason"].value_counts().to_dict() if n_rm else "none",
        int(drop_var.sum()),
        n_var0,
        assays_tab["reason"].str.replace(r"^\d+% of", "", regex=True).value_counts().to_dict()
        if drop_var.any()
        else "none",
        "; log2-transformed X" if do_log else "",
    )
    return adata if copy else None
