"""Build the packaged gene-set resources from the curated reference extracts.

Reproducible: reads ``shared/reference/database_genesets.json`` (MSigDB Hallmark v7.4, KEGG via MSigDB v7.2,
Reactome GMT as extracted) and writes one GMT file per collection plus ``manifest.json`` (source database,
version and identifiers of every set) into ``src/immunomood/resources/gene_sets/``.

Usage::

    python src/immunomood/resources/build/build_gene_sets.py [--reference PATH_TO/database_genesets.json]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]  # repository root (src/immunomood/resources/build/)
OUT = ROOT / "src" / "immunomood" / "resources" / "gene_sets"
DEFAULT_REF = ROOT.parent / "shared" / "reference" / "database_genesets.json"
RESOURCE_VERSION = "1.0.0"

IG_RE = re.compile(r"^IG[HKL](V|C|J|D|G|A|M|E)")  # immunoglobulin segments (IGHV..., IGKC, IGLC..., IGHG1)
REACTOME = "Reactome (ReactomePathways.gmt, as extracted in shared/reference/database_genesets.json)"


def _reactome(db: dict, rid: str) -> list[str]:
    for k, v in db.items():
        if k.startswith(f"ReactomePathways.gmt_{rid}_"):
            return list(v)
    raise KeyError(rid)


def _no_ig(genes):
    return [g for g in genes if not IG_RE.match(g)]


def build(db: dict) -> dict[str, dict]:
    """Return collection name -> {set name -> {"genes": [...], "source": ..., "version": ..., "ids": [...]}}."""
    r_init = _no_ig(_reactome(db, "R-HSA-166663"))
    r_lectin = _reactome(db, "R-HSA-166662")
    r_alt = _reactome(db, "R-HSA-173736")
    r_term = _reactome(db, "R-HSA-166665")
    r_reg = _no_ig(_reactome(db, "R-HSA-977606"))
    r_all = _no_ig(_reactome(db, "R-HSA-166658"))

    def sub(genes, pool):
        missing = [g for g in genes if g not in pool]
        return missing

    classical = ["C1QA", "C1QB", "C1QC", "C1R", "C1S", "C2", "C4A", "C4B"]
    lectin = ["MBL2", "FCN1", "FCN2", "FCN3", "COLEC10", "COLEC11", "MASP1", "MASP2"]
    alternative = ["C3", "CFB", "CFD", "CFP"]
    terminal = ["C5", "C6", "C7", "C8A", "C8B", "C8G", "C9"]
    receptors = ["C3AR1", "C5AR1", "C5AR2", "CR1", "CR2", "ITGAM", "ITGB2", "ITGAX", "VSIG4", "C1QBP", "CD93"]
    regulators = [
        "CD46",
        "CD55",
        "CD59",
        "CR1",
        "CFH",
        "CFHR1",
        "CFHR2",
        "CFHR3",
        "CFHR4",
        "CFHR5",
        "CFI",
        "C4BPA",
        "C4BPB",
        "SERPING1",
        "CLU",
        "VTN",
        "CPN1",
        "CPN2",
        "CPB2",
    ]
    # consistency with the database extracts (fail loudly if the reference changed)
    assert not sub(classical, r_init), sub(classical, r_init)
    assert not sub(list(lectin), r_lectin + r_init), sub(lectin, r_lectin + r_init)
    assert not sub(["C3", "CFB", "CFD"], r_alt)
    assert not sub(terminal, r_term), sub(terminal, r_term)
    rv = "Reactome GMT (release as extracted; complement cascade R-HSA-166658 and children)"
    complement = {
        "complement_classical": dict(
            genes=classical,
            source=REACTOME,
            version=rv,
            ids=["R-HSA-166663", "R-HSA-173623", "R-HSA-166786"],
            note="C1 complex, C2, C4 of 'Initial triggering of complement'; CRP (plasma "
            "trigger, not expressed by blood cells) and immunoglobulin segments left out",
        ),
        "complement_lectin": dict(
            genes=lectin,
            source=REACTOME,
            version=rv,
            ids=["R-HSA-166662"],
            note="lectins (MBL2, ficolins, collectins) and MASPs",
        ),
        "complement_alternative": dict(
            genes=alternative,
            source=REACTOME + " + MSigDB v7.4 REACTOME_COMPLEMENT_CASCADE",
            version=rv,
            ids=["R-HSA-173736"],
            note="C3 CFB CFD from R-HSA-173736 plus CFP (properdin, in MSigDB's copy); "
            "GZMM (granzyme, NK/T cells) left out",
        ),
        "complement_terminal": dict(
            genes=terminal, source=REACTOME, version=rv, ids=["R-HSA-166665"], note="membrane attack complex"
        ),
        "complement_receptors": dict(
            genes=receptors,
            source=REACTOME + " + curated immunology",
            version=rv,
            ids=["R-HSA-166658"],
            note="anaphylatoxin and complement receptors; ITGAM/ITGB2 (CR3), ITGAX (CR4), "
            "VSIG4 (CRIg), C1QBP, CD93 from standard immunology",
        ),
        "complement_regulators": dict(
            genes=regulators,
            source=REACTOME,
            version=rv,
            ids=["R-HSA-977606"],
            note="membrane (CD46 CD55 CD59 CR1), fluid phase (CFH, CFHR1-5, CFI, C4BP, "
            "SERPING1, CLU, VTN) and anaphylatoxin inactivators (CPN1 CPN2 CPB2); "
            "immunoglobulin segments left out",
        ),
    }
    for s in complement.values():
        s["genes"] = list(dict.fromkeys(s["genes"]))
        assert not [g for g in s["genes"] if IG_RE.match(g)]
    hallmark = "MSigDB Hallmark"
    hv = "v7.4"
    out = {
        "complement": complement,
        "complement_hallmark": {
            "complement_hallmark": dict(
                genes=db["MSigDB_v7.4_HALLMARK_COMPLEMENT"],
                source=hallmark,
                version=hv,
                ids=["HALLMARK_COMPLEMENT"],
                note="broad set: many genes are not complement components",
            )
        },
        "kynurenine": {
            "kynurenine": dict(
                genes=[
                    "IDO1",
                    "IDO2",
                    "TDO2",
                    "AFMID",
                    "KMO",
                    "KYNU",
                    "HAAO",
                    "ACMSD",
                    "QPRT",
                    "KYAT1",
                    "AADAT",
                    "KYAT3",
                ],
                source=REACTOME,
                version="Reactome GMT (release as extracted)",
                ids=["R-HSA-71240"],
                note="enzymes of tryptophan catabolism along the kynurenine branch; transporters SLC7A5 SLC3A2 "
                "SLC36A4 left out (ubiquitous, not pathway-specific)",
            )
        },
        "interferon_alpha": {
            "interferon_alpha": dict(
                genes=db["MSigDB_v7.4_HALLMARK_INTERFERON_ALPHA_RESPONSE"],
                source=hallmark,
                version=hv,
                ids=["HALLMARK_INTERFERON_ALPHA_RESPONSE"],
            )
        },
        "interferon_gamma": {
            "interferon_gamma": dict(
                genes=db["MSigDB_v7.4_HALLMARK_INTERFERON_GAMMA_RESPONSE"],
                source=hallmark,
                version=hv,
                ids=["HALLMARK_INTERFERON_GAMMA_RESPONSE"],
            )
        },
        "inflammatory": {
            "inflammatory": dict(
                genes=db["MSigDB_v7.4_HALLMARK_INFLAMMATORY_RESPONSE"],
                source=hallmark,
                version=hv,
                ids=["HALLMARK_INFLAMMATORY_RESPONSE"],
            )
        },
        "tnfa_nfkb": {
            "tnfa_nfkb": dict(
                genes=db["MSigDB_v7.4_HALLMARK_TNFA_SIGNALING_VIA_NFKB"],
                source=hallmark,
                version=hv,
                ids=["HALLMARK_TNFA_SIGNALING_VIA_NFKB"],
            )
        },
        "il6_jak_stat3": {
            "il6_jak_stat3": dict(
                genes=db["MSigDB_v7.4_HALLMARK_IL6_JAK_STAT3_SIGNALING"],
                source=hallmark,
                version=hv,
                ids=["HALLMARK_IL6_JAK_STAT3_SIGNALING"],
            )
        },
    }
    for coll in out.values():
        for s in coll.values():
            s["genes"] = list(dict.fromkeys(map(str, s["genes"])))
    return out


def write(collections: dict, out: Path = OUT, reference: Path | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "resource_version": RESOURCE_VERSION,
        "built_by": "src/immunomood/resources/build/build_gene_sets.py",
        "input": "shared/reference/database_genesets.json (MSigDB Hallmark v7.4, KEGG via MSigDB v7.2, Reactome GMT)",
        "excluded_on_purpose": {
            "complement_convertases": "Reactome R-HSA-174577 'Activation of C3 and C5' (C2 C3 C4A C4B C5 CFB) is not "
            "an arm of its own: every one of its genes already sits in the classical, alternative or terminal arm, so "
            "it adds no information, only a correlated extra test to correct for.",
            "immunoglobulin_segments": "IGH/IGK/IGL segments of the Reactome complement sets: B/plasma-cell Ig "
            "expression would dominate any score.",
        },
        "collections": {},
    }
    for cname, sets in collections.items():
        fname = f"{cname}.gmt"
        with open(out / fname, "w") as fh:
            for sname, s in sets.items():
                fh.write("\t".join([sname, f"{s['source']} {s['version']} {','.join(s['ids'])}"] + s["genes"]) + "\n")
        manifest["collections"][cname] = {
            "file": fname,
            "sets": {
                sname: {k: v for k, v in s.items() if k != "genes"} | {"n_genes": len(s["genes"])}
                for sname, s in sets.items()
            },
        }
    with open(out / "manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=False)
        fh.write("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reference", type=Path, default=DEFAULT_REF)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    db = json.loads(a.reference.read_text())
    write(build(db), a.out)
    print(f"wrote gene sets to {a.out}")


if __name__ == "__main__":
    main()
