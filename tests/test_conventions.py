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
    "prot",     # pp.proteomics_qc: samples x assays proteomics AnnData
    "donors",   # tl.join_proteomics: the donor view returned by tl.donor_view
    "mdata",    # tl.cross_modal_associations, tl.biomarker_panel, pl.cross_modal: a MuData
    "result",   # pl.volcano, pl.biomarker_roc, pl.cross_modal: a result table/object
    "name",     # tl.gene_sets: looks up a packaged resource by name
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
        f"{qual}: at most {MAX_POSITIONAL} positional parameters, the rest keyword-only (after '*')")
    if sub in ("pp", "tl", "pl"):
        assert params, f"{qual}: takes no parameters"
        assert params[0].name in ALLOWED_FIRST, (
            f"{qual}: first parameter must be 'adata' (or one of {sorted(ALLOWED_FIRST - {'adata'})})")
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

    code = ("import logging; import immunomood; "
            "print(len(logging.getLogger().handlers), "
            "all(isinstance(h, logging.NullHandler) for h in logging.getLogger('immunomood').handlers))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["0", "True"], out.stdout + out.stderr
