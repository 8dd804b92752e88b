import json
import re
from importlib import resources

import pytest

import immunomood as im
from immunomood.tl._gene_sets import resolve_gene_sets

ARMS = [
    "complement_classical",
    "complement_lectin",
    "complement_alternative",
    "complement_terminal",
    "complement_receptors",
    "complement_regulators",
]
NAMES = [
    "complement",
    "complement_hallmark",
    "kynurenine",
    "interferon_alpha",
    "interferon_gamma",
    "inflammatory",
    "tnfa_nfkb",
    "il6_jak_stat3",
]


def test_complement_arms_exact_and_no_immunoglobulins():
    gs = im.tl.gene_sets("complement")
    assert list(gs) == ARMS
    ig = re.compile(r"^IG[HKL](V|C|J|D|G|A|M|E)")
    for genes in gs.values():
        assert genes and not [g for g in genes if ig.match(g)]
    assert {"C1QA", "C1QB", "C1QC", "C1R", "C1S"} <= set(gs["complement_classical"])
    assert set(gs["complement_terminal"]) == {"C5", "C6", "C7", "C8A", "C8B", "C8G", "C9"}
    assert "CRP" not in gs["complement_classical"]


@pytest.mark.parametrize("name", NAMES)
def test_every_named_collection_loads_with_source(name):
    gs = im.tl.gene_sets(name)
    assert len(gs) >= 1 and all(len(v) >= 4 for v in gs.values())
    man = json.loads((resources.files("immunomood") / "resources/gene_sets/manifest.json").read_text())
    sets = man["collections"][name]["sets"]
    assert set(sets) == set(gs)
    for info in sets.values():
        assert info["source"] and info["version"] and info["ids"]


def test_hallmark_sizes_match_msigdb():
    assert len(im.tl.gene_sets("complement_hallmark")["complement_hallmark"]) == 200
    assert len(im.tl.gene_sets("interferon_alpha")["interferon_alpha"]) == 97


def test_unknown_name_lists_known():
    with pytest.raises(KeyError, match="Known: .*interferon_alpha"):
        im.tl.gene_sets("complemnt")


def test_dict_and_list_resolution():
    assert resolve_gene_sets({"a": ["X", "Y", "X"]}) == {"a": ["X", "Y"]}
    both = resolve_gene_sets(["kynurenine", "interferon_alpha"])
    assert set(both) == {"kynurenine", "interferon_alpha"}
    with pytest.raises(ValueError, match="empty"):
        resolve_gene_sets({"a": []})
    with pytest.raises(KeyError, match="Known"):
        resolve_gene_sets("nope")
