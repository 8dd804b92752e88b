"""The tutorials run top to bottom; they are plain-text notebooks, and no generated notebook is committed.

Each tutorial is a jupytext "percent" script (``tutorials/NN_name.py``: ``# %%`` starts a code cell,
``# %% [markdown]`` a Markdown cell), linted by ruff like the rest of the code. The suite reads it as a notebook
with jupytext and executes it with nbclient in a fresh ``python3`` kernel of the current interpreter (ipykernel),
in a temporary working directory. Notebooks 1 and 3 read real data and are skipped when the data folder is absent
(``data_dir`` fixture); the data folder is passed to the kernel as ``IMMUNOMOOD_DATA_DIR``. With
``IMMUNOMOOD_TUTORIALS_OUT`` set, the executed notebooks are written there as ``NN_name.ipynb`` (``make docs``
reuses their outputs, see ``docs/conf.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
NEEDS_DATA = {"01_pbmc3k_qc_annotation.py", "03_plasma_proteomics.py"}
CELL_TIMEOUT = 300


def read_tutorial(path: Path) -> nbformat.NotebookNode:
    """The notebook of a tutorial script, as the docs build reads it (``nb_custom_formats`` in docs/conf.py)."""
    return jupytext.reads(path.read_text(), fmt="py:percent")


def _kernel_env(tmp_path: Path, data_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
            "NUMBA_CACHE_DIR": str(tmp_path / "numba_cache"),
            "MPLCONFIGDIR": str(tmp_path / "mpl"),
        }
    )
    if data_dir is not None:
        env["IMMUNOMOOD_DATA_DIR"] = str(data_dir)
    return env


def _execute(path: Path, tmp_path: Path, data_dir: Path | None) -> nbformat.NotebookNode:
    from jupyter_client.manager import KernelManager

    nb = read_tutorial(path)
    # the current interpreter's python3 kernel, whatever kernelspecs the machine has
    km = KernelManager(kernel_name="python3")
    km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    env = _kernel_env(tmp_path, data_dir)
    t0 = time.perf_counter()
    try:
        client.execute(env=env, cwd=str(tmp_path))
    except nbclient.exceptions.CellExecutionError as err:  # shows the failing cell and traceback
        pytest.fail(f"{path.name} failed:\n{err}")
    print(f"{path.name}: executed in {time.perf_counter() - t0:.1f} s")
    out = os.environ.get("IMMUNOMOOD_TUTORIALS_OUT")  # keep the executed notebooks for inspection and the docs
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(out) / f"{path.stem}.ipynb")
    return nb


def test_notebooks_found():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_pbmc3k_qc_annotation.py", "02_depression_cohort.py", "03_plasma_proteomics.py"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_is_a_percent_notebook(path):
    """The script reads as a valid notebook: a title, Markdown and code cells, the python3 kernel, no empty cell."""
    text = path.read_text()
    assert text.count("# %%") >= 2, f"{path.name}: no '# %%' cell markers; is it a jupytext percent script?"
    nb = read_tutorial(path)
    nbformat.validate(nb)
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{path.name}: the jupytext header names the kernel {kernel!r}, not python3"
    kinds = [c.cell_type for c in nb.cells]
    assert "markdown" in kinds and "code" in kinds
    assert kinds[0] == "markdown" and nb.cells[0].source.startswith("# "), f"{path.name}: the first cell is not a title"
    empty = [i for i, c in enumerate(nb.cells) if not c.source.strip()]
    assert not empty, f"{path.name}: cells {empty} are empty"


def test_no_generated_notebook_committed():
    """The .py scripts are the only source: an .ipynb next to them would be a second, drifting copy."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    res = subprocess.run(["git", "ls-files", "tutorials", "docs/tutorials"], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"git ls-files failed: {res.stderr.strip()}")
    committed = [f for f in res.stdout.split() if f.endswith(".ipynb")]
    assert not committed, f"generated notebooks are committed (remove them; edit the tutorials/*.py): {committed}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_in_docs(path):
    """Each tutorial is linked into docs/tutorials/ and listed in the toctree of docs/tutorials.md."""
    link = ROOT / "docs" / "tutorials" / path.name
    assert link.exists() and link.resolve() == path.resolve(), (
        f"docs/tutorials/{path.name} should be a link to ../../tutorials/{path.name}"
    )
    toctree = re.findall(r"^tutorials/(\S+)$", (ROOT / "docs" / "tutorials.md").read_text(), flags=re.MULTILINE)
    assert path.stem in toctree, f"{path.stem} is missing from the toctree of docs/tutorials.md"


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.realdata) if p.name in NEEDS_DATA else p for p in NOTEBOOKS],
    ids=lambda p: p.stem,
)
def test_tutorial_runs(path, tmp_path, request):
    data_dir = request.getfixturevalue("data_dir") if path.name in NEEDS_DATA else None  # skips when absent
    if data_dir is None and os.environ.get("IMMUNOMOOD_DATA_DIR"):
        data_dir = Path(os.environ["IMMUNOMOOD_DATA_DIR"])
    nb = _execute(path, tmp_path, data_dir)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code"), f"not all {n_code} cells ran"
