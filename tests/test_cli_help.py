"""The command line answers fast: ``immunomood --help`` and ``import immunomood`` load no heavy library.

And each warning of a CLI run is printed once (``_settings.warnings_to_logger``).
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

HEAVY = ("torch", "scvi", "scanpy", "anndata", "lightning", "numba", "matplotlib", "pandas", "scipy", "dask")
EXE = [str(Path(sys.executable).with_name("immunomood"))]


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys; {code}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("code", ["import immunomood.cli", "import immunomood", "import immunomood as im; im.settings"])
def test_import_loads_no_heavy_library(code):
    loaded = set(_loaded_after(code))
    assert not loaded & set(HEAVY), f"`{code}` imports {sorted(loaded & set(HEAVY))}"


def test_subpackages_load_on_first_use():
    loaded = _loaded_after("import immunomood as im; im.pp.qc_metrics; from immunomood import tl; tl.pseudobulk")
    assert "anndata" in loaded
    import immunomood as im

    assert "pp" in dir(im) and callable(im.io.write_pseudobulk)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        im.nope  # noqa: B018


def test_help_is_fast():
    # --help must not import scanpy / torch (7-10 s on a loaded 2-core machine before lazy imports; ~0.1 s after)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        r = subprocess.run(EXE + ["--help"], capture_output=True, text=True, timeout=60, env=env)
        best = min(best, time.perf_counter() - t0)
        assert r.returncode == 0 and "usage: immunomood" in r.stdout
    assert best < 2.0, f"immunomood --help took {best:.2f} s"


def test_progress_flags_exclusive():
    r = subprocess.run(EXE + ["demo", "--progress", "--no-progress"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_each_warning_printed_once(capsys):
    """In the CLI a warning of ours (logged and warned) and a third-party warning each print one line."""
    from immunomood._settings import logger, warnings_to_logger
    from immunomood._utils import warn

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(), warnings_to_logger():
            warnings.simplefilter("always")
            warn("ours: 3 samples dropped")
            warnings.warn("theirs: deprecated option", FutureWarning, stacklevel=1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = stream.getvalue().splitlines()
    assert lines == ["WARNING ours: 3 samples dropped", "WARNING FutureWarning: theirs: deprecated option"]
    assert capsys.readouterr().err == ""  # nothing printed by the warnings module besides


def test_our_warnings_stay_python_warnings():
    """Outside the CLI (notebooks, scripts, pytest.warns) a warning of ours is an ordinary UserWarning."""
    from immunomood._utils import warn

    with pytest.warns(UserWarning, match="^ours$") as rec:
        warn("ours", stacklevel=2)
    assert rec[0].category is UserWarning and rec[0].filename == __file__


def test_cli_prints_each_message_once(monkeypatch, tmp_path, capsys):
    """A run logs and warns; with a root handler (a library calling logging.basicConfig) nothing prints twice."""
    from immunomood import cli
    from immunomood._settings import logger, settings
    from immunomood._utils import warn

    monkeypatch.setattr(settings, "_progress", settings._progress)  # --no-progress below: restored after the test

    def fake_run(args):
        logger.info("stage qc: started")
        warn("ours: 2 samples have fewer than 20 cells")
        warnings.warn("theirs: pull_on_update will change", FutureWarning, stacklevel=1)
        return tmp_path / "report"

    monkeypatch.setattr(cli, "_run", fake_run)
    for h in [h for h in logger.handlers if getattr(h, "_immunomood_console", False)]:
        logger.removeHandler(h)  # bind a fresh console handler to this test's captured stderr
    root_stream = io.StringIO()
    root_handler = logging.StreamHandler(root_stream)
    logging.getLogger().addHandler(root_handler)
    old_level = logger.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            assert cli.main(["demo", "--outdir", str(tmp_path), "--no-progress"]) == 0
    finally:
        logging.getLogger().removeHandler(root_handler)
        for h in [h for h in logger.handlers if getattr(h, "_immunomood_console", False)]:
            logger.removeHandler(h)
        logger.setLevel(old_level)
    err = capsys.readouterr().err
    for text in (
        "stage qc: started",
        "ours: 2 samples have fewer than 20 cells",
        "FutureWarning: theirs: pull_on_update will change",
        "finished in",
    ):
        assert err.count(text) == 1, err
    assert root_stream.getvalue() == ""
    assert logger.propagate  # restored after the run
    assert settings.progress is False  # --no-progress
