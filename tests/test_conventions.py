"""API conventions (STYLE.md) over pp/tl/pl/io/datasets, plus version, settings and py.typed.

Functions still being written are the bare ``(*args, **kwargs)`` placeholders: they are skipped by name, so each
check turns on as soon as the function lands.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import re
from pathlib import Path

import pytest

import immunomood as im

SUBPACKAGES = ("pp", "tl", "pl", "io", "datasets")
#: allowed first parameter of pp/tl/pl functions: ``adata``, or these documented exceptions
ALLOWED_FIRST = {
    "adata",
    "prot",  # pp.proteomics_qc: samples x assays proteomics AnnData
    "donors",  # tl.join_proteomics: the donor view returned by tl.donor_view
    "mdata",  # tl.cross_modal_associations, tl.biomarker_panel, pl.cross_modal: a MuData
    "result",  # pl.volcano, pl.biomarker_roc, pl.cross_modal: a result table/object
    "name",  # tl.gene_sets: looks up a packaged resource by name
}
MAX_POSITIONAL = 3
P = inspect.Parameter


def _functions():
    out = []
    for sub in SUBPACKAGES:
        mod = getattr(im, sub)
        for name in mod.__all__:
            out.append(pytest.param(sub, name, id=f"{sub}.{name}"))
    return out


def _is_placeholder(sig: inspect.Signature) -> bool:
    kinds = [p.kind for p in sig.parameters.values()]
    return kinds == [P.VAR_POSITIONAL, P.VAR_KEYWORD]


def _get(sub: str, name: str):
    mod = getattr(im, sub)
    assert hasattr(mod, name), f"im.{sub}.__all__ lists {name!r} but im.{sub} has no such attribute"
    func = getattr(mod, name)
    assert callable(func), f"im.{sub}.{name} is not callable"
    sig = inspect.signature(func)
    if _is_placeholder(sig):
        pytest.skip(f"im.{sub}.{name} is still a (*args, **kwargs) placeholder")
    return func, sig


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_all_unique_and_exists(sub):
    mod = getattr(im, sub)
    assert len(set(mod.__all__)) == len(mod.__all__)
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"im.{sub}.__all__ names missing attributes: {missing}"
    assert all(callable(getattr(mod, n)) for n in mod.__all__)


@pytest.mark.parametrize(("sub", "name"), _functions())
def test_docstring(sub, name):
    func, _ = _get(sub, name)
    doc = inspect.getdoc(func)
    assert doc and len(doc.strip()) > 20, f"im.{sub}.{name} needs a docstring"
    assert doc.splitlines()[0].strip(), f"im.{sub}.{name}: the docstring should open with a summary line"


@pytest.mark.parametrize(("sub", "name"), _functions())
def test_signature_rules(sub, name):
    func, sig = _get(sub, name)
    params = list(sig.parameters.values())
    qual = f"im.{sub}.{name}{sig}"
    assert not any(p.kind == P.VAR_POSITIONAL for p in params), f"{qual}: no *args"
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    assert len(positional) <= MAX_POSITIONAL, (
        f"{qual}: at most {MAX_POSITIONAL} positional parameters, the rest keyword-only (after '*')"
    )
    if sub in ("pp", "tl", "pl"):
        assert params, f"{qual}: takes no parameters"
        assert params[0].name in ALLOWED_FIRST, (
            f"{qual}: first parameter must be 'adata' (or one of {sorted(ALLOWED_FIRST - {'adata'})})"
        )
        assert params[0].kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
    names = set(sig.parameters)
    assert not {"inplace", "copy"} <= names, f"{qual}: never both 'inplace' and 'copy'"
    if "inplace" in names:
        assert sig.parameters["inplace"].default is True, f"{qual}: inplace defaults to True"
        assert sig.parameters["inplace"].kind == P.KEYWORD_ONLY
    if "copy" in names:
        assert sig.parameters["copy"].default is False, f"{qual}: copy defaults to False"
        assert sig.parameters["copy"].kind == P.KEYWORD_ONLY
    if "key_added" in names:
        default = sig.parameters["key_added"].default
        assert isinstance(default, str) and default, f"{qual}: key_added must default to a non-empty string"
    if "random_state" in names:
        d = sig.parameters["random_state"].default
        assert d is None or isinstance(d, int), f"{qual}: random_state defaults to an int or None"
    assert "verbose" not in names, f"{qual}: no per-function verbose flags (use im.settings.verbosity)"


def test_placeholder_detection():
    def placeholder(*args, **kwargs):
        raise NotImplementedError

    def real(adata, *, key_added="x"):
        """Real."""

    assert _is_placeholder(inspect.signature(placeholder))
    assert not _is_placeholder(inspect.signature(real))


# -------------------------------------------------------------------------------------------- package-level
def test_version():
    assert isinstance(im.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?(a|b|rc|dev|post)\d*)?", im.__version__)
    assert importlib.metadata.version("immunomood") == im.__version__


def test_py_typed_shipped():
    assert (Path(im.__file__).parent / "py.typed").is_file()


def test_settings_verbosity(monkeypatch):
    old = im.settings.verbosity
    try:
        for bad in (5, -1, "debug", None):
            with pytest.raises(ValueError, match=r"verbosity must be one of \[0, 1, 2, 3\]"):
                im.settings.verbosity = bad
        assert im.settings.verbosity == old
        im.settings.verbosity = 3
        assert logging.getLogger("immunomood").level == logging.DEBUG
        im.settings.verbosity = 0
        assert logging.getLogger("immunomood").level == logging.ERROR
    finally:
        im.settings.verbosity = old


def test_settings_random_state_and_n_jobs():
    assert isinstance(im.settings.random_state, int)
    assert isinstance(im.settings.n_jobs, int)
    assert "random_state=" in repr(im.settings)


def test_settings_data_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setattr(im.settings, "_data_dir", None)
    monkeypatch.setenv("IMMUNOMOOD_DATA_DIR", str(tmp_path))
    assert im.settings.data_dir == tmp_path
    monkeypatch.delenv("IMMUNOMOOD_DATA_DIR")
    assert im.settings.data_dir is None
    im.settings.data_dir = tmp_path / "explicit"
    assert im.settings.data_dir == tmp_path / "explicit"
    assert isinstance(im.settings.cache_dir, Path)


def test_no_logging_configured_at_import():
    import subprocess
    import sys

    code = (
        "import logging; import immunomood; "
        "print(len(logging.getLogger().handlers), "
        "all(isinstance(h, logging.NullHandler) for h in logging.getLogger('immunomood').handlers))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["0", "True"], out.stdout + out.stderr


# ------------------------------------------------------------------------------------------ docstring templates
_LITERAL = re.compile(r"``.*?``", re.DOTALL)  # inline code such as ``obs[f"{key_added}_confidence"]`` is kept
_FIELD = re.compile(r"(?<!\{)\{([A-Za-z_]\w*)\}(?!\})")


def _doc_fields() -> set[str]:
    """The field names of the shared texts of ``immunomood._docs`` (``doc_adata`` -> ``adata``) and the parameter
    names they define (``doc_design`` also defines ``contrast`` and ``test``)."""
    from immunomood import _docs

    out = set()
    for name, text in vars(_docs).items():
        if name.startswith("doc_") and isinstance(text, str):
            out.add(name.removeprefix("doc_"))
            out.update(line for line in text.splitlines() if re.fullmatch(r"[A-Za-z_]\w*", line))
    return out


def _unfilled(doc: str | None, fields: set[str] | None = None) -> list[str]:
    """``{name}`` left by ``doc_params``: alone on a line (a parameter entry), or anywhere outside ``inline code``
    when ``name`` is a shared field. Literal braces in prose or code (``{column: weight}``, ``{{escaped}}``) pass."""
    fields = _doc_fields() if fields is None else fields
    text = _LITERAL.sub("", doc or "")
    out = []
    for line in text.splitlines():
        bare = line.strip()
        if _FIELD.fullmatch(bare):
            out.append(bare)
        else:
            out += [f"{{{m}}}" for m in _FIELD.findall(line) if m in fields]
    return out


def test_placeholder_regex():
    fields = {"adata", "sample_key"}
    assert _unfilled("Parameters\n----------\n{adata}\n    {sample_key}\n", fields) == ["{adata}", "{sample_key}"]
    assert _unfilled("{other_param}\n", fields) == ["{other_param}"]  # alone on a line: a parameter entry
    assert _unfilled("Reads the {adata} object", fields) == ["{adata}"]  # a shared field inside prose
    assert _unfilled('reads ``obs[f"{key}_confidence"]`` and ``{"a": 1}``; {{escaped}}', fields) == []
    assert _unfilled("a dict ``{design-matrix column: weight}``, a set {x} in words", fields) == []
    assert {"adata", "sample_key", "design", "contrast", "test"} <= _doc_fields()


@pytest.mark.parametrize(("sub", "name"), _functions())
def test_docstring_has_no_unfilled_placeholders(sub, name):
    """``doc_params`` must sit on the public function itself: a literal ``{adata}`` would show in the docs."""
    func = getattr(getattr(im, sub), name)
    assert not _unfilled(func.__doc__), (
        f"im.{sub}.{name}: unfilled {_unfilled(func.__doc__)} in its docstring; decorate it with "
        "@doc_params(...) from immunomood._docs"
    )


def test_composition_docstring_rendered():
    """tl.composition once showed a literal ``{adata}`` (the decorator sat on a private helper)."""
    doc = inspect.getdoc(im.tl.composition)
    assert "{adata}" not in doc and "Annotated data matrix" in doc


# ------------------------------------------------------------------------------------------ copy / ax / api.md
#: functions known to break a rule, with what to change: they xfail while they break it, and fail once fixed
#: (remove the entry then)
PENDING: dict = {}


def _copy_functions():
    return [
        p
        for p in _functions()
        if "copy" in inspect.signature(getattr(getattr(im, p.values[0]), p.values[1])).parameters
    ]


@pytest.mark.parametrize(("sub", "name"), _copy_functions())
def test_copy_returns_anndata_or_none(sub, name):
    func, sig = _get(sub, name)
    ret = sig.return_annotation
    ret = ret if isinstance(ret, str) else getattr(ret, "__name__", str(ret))
    ok = ret.replace(" ", "") in ("AnnData|None", "None|AnnData")
    if (sub, name) in PENDING:
        assert not ok, f"im.{sub}.{name} follows the rule now: remove it from PENDING"
        pytest.xfail(PENDING[(sub, name)])
    assert ok, (
        f"im.{sub}.{name}: a function with copy= returns `AnnData | None` (the copy, or None in place); "
        f"annotated {ret!r}"
    )


#: pl functions that draw several panels: ``ax`` takes a sequence of Axes (one per panel) and they return the
#: Figure; every other pl function draws one panel into ``ax`` and returns the Axes
PL_MULTI_PANEL = {"qc", "integration"}
#: pl functions with another return: ``annotation`` returns scanpy's DotPlot (its Axes via ``.get_axes()``);
#: ``predict_response`` returns the Axes, or the Figure when it draws the permutation null as a second panel
PL_OTHER_RETURN = {"annotation": "DotPlot", "predict_response": "Axes (one panel), or the Figure"}


@pytest.mark.parametrize("name", im.pl.__all__)
def test_pl_takes_ax_and_returns_axes_or_figure(name):
    func, sig = _get("pl", name)
    assert "ax" in sig.parameters, f"im.pl.{name}: every pl function takes ax= (the Axes to draw into)"
    assert sig.parameters["ax"].default is None and sig.parameters["ax"].kind == P.KEYWORD_ONLY
    doc = inspect.getdoc(func)
    returns = doc.split("Returns\n-------", 1)[-1] if "Returns\n-------" in doc else ""
    if name in PL_OTHER_RETURN:
        assert PL_OTHER_RETURN[name] in " ".join(returns.split()), f"im.pl.{name}: Returns changed, update the list"
        return
    want = "Figure" if name in PL_MULTI_PANEL else "Axes"
    assert want in returns, f"im.pl.{name}: its Returns section should say it returns the matplotlib {want}"
    ret = sig.return_annotation
    if ret is not inspect.Signature.empty:
        assert want in str(ret), f"im.pl.{name}: annotated {ret!r}, expected {want}"


def _api_md() -> dict[str, set[str]]:
    path = Path(__file__).parents[1] / "docs" / "api.md"
    out: dict[str, set[str]] = {sub: set() for sub in SUBPACKAGES}
    for m in re.finditer(r"^\s+(pp|tl|pl|io|datasets)\.(\w+)\s*$", path.read_text(), re.MULTILINE):
        out[m[1]].add(m[2])
    return out


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_all_matches_docs_api(sub):
    documented = _api_md()[sub]
    exported = set(getattr(im, sub).__all__)
    assert not exported - documented, f"im.{sub}.__all__ names not in docs/api.md: {sorted(exported - documented)}"
    assert not documented - exported, f"docs/api.md names not in im.{sub}.__all__: {sorted(documented - exported)}"


# ------------------------------------------------------------------------------------------ settings
def test_settings_n_jobs_checked():
    old = im.settings.n_jobs
    try:
        for bad in (0, -2, 1.5, "4", True, None):
            with pytest.raises(ValueError, match="n_jobs must be a positive integer or -1"):
                im.settings.n_jobs = bad
        im.settings.n_jobs = -1
        assert im.settings.n_jobs == -1
    finally:
        im.settings.n_jobs = old


def test_settings_progress(monkeypatch, capsys):
    from immunomood._settings import progress

    class _Tty:
        def isatty(self):
            return True

        def write(self, s):
            pass

        def flush(self):
            pass

    old = im.settings._progress
    try:
        im.settings.progress = None  # automatic: a terminal on stderr or not
        monkeypatch.setattr("sys.stderr", _Tty())
        assert im.settings.progress is True
        monkeypatch.undo()
        assert im.settings.progress is False  # pytest captures stderr: not a terminal
        with pytest.raises(TypeError, match="True, False or None"):
            im.settings.progress = "yes"
        im.settings.progress = False
        assert list(progress(range(5), desc="quiet")) == [0, 1, 2, 3, 4]
        assert capsys.readouterr().err == ""
        im.settings.progress = True
        assert list(progress(range(5), desc="loud", leave=True)) == [0, 1, 2, 3, 4]
        err = capsys.readouterr().err
        assert "loud" in err and "5/5" in err
        with progress(total=3, desc="manual", leave=True) as bar:  # a manual bar
            bar.update(3)
        assert "3/3" in capsys.readouterr().err
        assert "progress=True" in repr(im.settings)
    finally:
        im.settings._progress = old


def _thread_counts():
    import numba
    import torch
    from threadpoolctl import threadpool_info

    blas = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    return blas, numba.get_num_threads(), torch.get_num_threads()


def test_settings_threads_limits_and_restores():
    import numba
    import numpy as np

    before = _thread_counts()
    old = im.settings.n_jobs
    try:
        im.settings.n_jobs = 1
        with im.settings.threads() as n:
            assert n == 1
            assert _thread_counts() == ({1}, 1, 1)
            a = np.random.default_rng(0).normal(size=(200, 200))
            np.testing.assert_allclose(a @ np.linalg.inv(a), np.eye(200), atol=1e-8)  # BLAS still works
        assert _thread_counts() == before
        n_max = numba.config.NUMBA_NUM_THREADS
        with im.settings.threads(-1) as n:  # all cores; numba capped at the threads it started with
            import os

            assert n == len(os.sched_getaffinity(0))
            blas, n_numba, n_torch = _thread_counts()
            assert n_numba == min(n, n_max) and n_torch == n
        with im.settings.threads(1, backends=("blas",)):
            assert _thread_counts()[1:] == before[1:]  # numba and torch untouched
        assert _thread_counts() == before
        with pytest.raises(ValueError, match="n_jobs must be a positive integer or -1"):
            with im.settings.threads(0):
                pass
        with pytest.raises(ValueError, match="backends must be among"):
            with im.settings.threads(1, backends=("gpu",)):
                pass
        with pytest.raises(RuntimeError, match="boom"):  # restored on error too
            with im.settings.threads(1):
                raise RuntimeError("boom")
        assert _thread_counts() == before
    finally:
        im.settings.n_jobs = old
