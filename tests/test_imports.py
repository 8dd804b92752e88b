"""The import structure of the package: no cycle among immunomood modules, no private names taken across features.

Both checks read the source with ``ast`` (nothing is imported), counting every import, including the ones inside
functions (a lazy import hides a cycle, it does not remove it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "immunomood"

# Features whose private imports are not checked (a feature being split into modules may be listed here for the
# duration of the split). Empty: every module is checked.
PENDING_SPLIT: tuple[str, ...] = ()

# Private names imported across feature modules that are tolerated ("<module> imports [names] from <module>").
# Empty: a shared name is public in its (private) module or lives in a shared root module (``immunomood._x``).
KNOWN: set[str] = set()

SUBPACKAGES = ("pp", "tl", "pl", "io", "datasets")

# Tolerated import cycles. Empty: the package has none.
KNOWN_CYCLES: list[list[str]] = []


def _module_name(path: Path, root: Path = SRC) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules(root: Path = SRC) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py")) if "resources" not in p.parts}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]):
    """(importer, imported module, imported names) for every import of an immunomood module."""
    out = []
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                out += [(mod, a.name, ()) for a in node.names if a.name.split(".")[0] == "immunomood"]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                if target.split(".")[0] != "immunomood":
                    continue
                names = tuple(a.name for a in node.names)
                # `from . import x`: x is a submodule when one exists
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                out += [(mod, s, ()) for s in subs]
                if len(subs) < len(names):
                    out.append((mod, target, tuple(n for n in names if f"{target}.{n}" not in modules)))
    return out


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in modules}
    for mod, target, _ in _imports(modules):
        if target in modules and target != mod:
            g[mod].add(target)
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def _cross_feature_private(modules: dict[str, Path]) -> list[str]:
    """``from <feature module> import _name`` in another feature module (of pp / tl / pl / io / datasets).

    Shared root modules (``immunomood._utils``, ``_dask``, ``_kernels`` ...) are not features: any module may use
    them. Modules of one feature package (e.g. ``tl/_annotate/``) may share private names among themselves.
    """
    bad = []
    for mod, target, names in _imports(modules):
        priv = [n for n in names if n.startswith("_") and not n.startswith("__")]
        mparts, tparts = mod.split("."), target.split(".")
        if not priv or len(mparts) < 3 or len(tparts) < 3 or mparts[1] not in SUBPACKAGES:
            continue  # the importer is not a feature module, or the target is a root module / a subpackage
        if mparts[:3] == tparts[:3]:  # the same feature (module or package)
            continue
        if any(p in mod or p in target for p in PENDING_SPLIT):
            continue
        bad.append(f"{mod} imports {priv} from {target}")
    return bad


def test_graph_reads_the_package():
    mods = _modules()
    assert "immunomood.tl._pathways" in mods and "immunomood._kernels" in mods
    g = _graph(mods)
    # the check sees lazy imports (inside functions) too
    assert "immunomood.tl._pseudobulk" in g["immunomood.tl._differential"]
    assert "immunomood._dask" in g["immunomood.tl._pathways"]


def test_cycle_finder_finds_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]


def test_no_import_cycle():
    cycles = [c for c in _cycles(_graph(_modules())) if c not in KNOWN_CYCLES]
    assert not cycles, "import cycles among immunomood modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_kernels_import_nothing_from_the_package():
    mods = _modules()
    assert not _graph(mods)["immunomood._kernels"]


def test_checks_on_a_small_package(tmp_path):
    root = tmp_path / "immunomood"
    files = {
        "__init__.py": "from . import tl\n",
        "_kernels.py": "def _k(): pass\n",
        "tl/__init__.py": "from ._a import a\n",
        "tl/_a.py": "from .._kernels import _k\ndef a():\n    from ._b import _helper\n",
        "tl/_b.py": "from ._a import a\ndef _helper(): pass\n",
        "tl/_c/__init__.py": "from ._x import _y\n",
        "tl/_c/_x.py": "_y = 1\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    mods = _modules(root)
    # the lazy import inside a() closes a cycle; a private name of a root module and within tl/_c/ are allowed
    assert _cycles(_graph(mods)) == [["immunomood.tl._a", "immunomood.tl._b"]]
    assert _cross_feature_private(mods) == ["immunomood.tl._a imports ['_helper'] from immunomood.tl._b"]


def test_known_crossings_still_exist():
    """An entry of KNOWN that no longer occurs is stale: remove it."""
    assert KNOWN <= set(_cross_feature_private(_modules()))


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_no_private_names_across_feature_modules(sub):
    bad = [b for b in _cross_feature_private(_modules()) if b.startswith(f"immunomood.{sub}.") and b not in KNOWN]
    assert not bad, "private names imported across feature modules (make them public in a shared module):\n" + (
        "\n".join(bad)
    )
