"""Package-wide settings: ``im.settings``; progress bars, thread limits and warning routing for the other modules.

Light on purpose: this module is imported by ``import immunomood`` and by the command line, so it imports
nothing heavy at module level (tqdm, threadpoolctl, numba and torch are imported where they are used).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("immunomood")
logger.addHandler(logging.NullHandler())

_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}
THREAD_BACKENDS = ("blas", "numba", "torch")


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


class Settings:
    """Global settings of immunomood.

    Attributes
    ----------
    verbosity
        0 errors, 1 warnings (default), 2 info, 3 debug. Sets the level of the ``"immunomood"`` logger;
        no handler is configured at import (configure logging yourself, or call :meth:`log_to_console`).
    n_jobs
        Worker threads for parallel steps (``-1``: all cores available to this process; default 1).
        Functions that run multithreaded numerical code apply it through :meth:`threads`.
    progress
        Show progress bars (tqdm, on stderr) for long loops. Default: ``True`` when stderr is a terminal,
        else ``False`` (notebooks, logs, CI); set it explicitly to override. ``None`` restores the default.
    random_state
        Default seed used wherever a function takes ``random_state=None``.
    data_dir
        Where dataset loaders look first. Defaults to ``$IMMUNOMOOD_DATA_DIR``, else the user cache dir.
    """

    def __init__(self) -> None:
        self._verbosity = 1
        self._n_jobs: int = 1
        self._progress: bool | None = None
        self.random_state: int = 0
        self._data_dir: Path | None = None
        self.verbosity = 1

    @property
    def verbosity(self) -> int:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int) -> None:
        if value not in _LEVELS:
            raise ValueError(f"verbosity must be one of {sorted(_LEVELS)}, got {value!r}.")
        self._verbosity = int(value)
        logger.setLevel(_LEVELS[self._verbosity])

    @property
    def n_jobs(self) -> int:
        return self._n_jobs

    @n_jobs.setter
    def n_jobs(self, value: int) -> None:
        self._n_jobs = _check_n_jobs(value, "settings.n_jobs")

    @property
    def progress(self) -> bool:
        if self._progress is not None:
            return self._progress
        stream = sys.stderr
        return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())

    @progress.setter
    def progress(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"settings.progress must be True, False or None (automatic), got {value!r}.")
        self._progress = value

    @property
    def data_dir(self) -> Path | None:
        if self._data_dir is not None:
            return self._data_dir
        env = os.environ.get("IMMUNOMOOD_DATA_DIR")
        return Path(env) if env else None

    @data_dir.setter
    def data_dir(self, value: str | os.PathLike | None) -> None:
        self._data_dir = None if value is None else Path(value)

    @property
    def cache_dir(self) -> Path:
        """User cache directory for downloaded datasets (``pooch.os_cache('immunomood')``)."""
        import pooch

        return Path(pooch.os_cache("immunomood"))

    def threads(self, n_jobs: int | None = None, *, backends: Sequence[str] = THREAD_BACKENDS):
        """Context manager: limit the threads of BLAS, numba and torch to ``n_jobs`` (default :attr:`n_jobs`).

        Inside the block, BLAS (OpenBLAS / MKL through threadpoolctl), numba's parallel loops and torch's CPU
        operators use at most ``n_jobs`` threads; on exit the previous limits are restored::

            im.settings.n_jobs = 4
            with im.settings.threads():
                ...  # numerical work

        Parameters
        ----------
        n_jobs
            Number of threads; ``-1`` means all cores available to this process. ``None``: :attr:`n_jobs`.
        backends
            Which of ``"blas"``, ``"numba"`` and ``"torch"`` to limit. BLAS and numba are imported if installed;
            torch is limited only when it is already imported (importing it costs seconds: code that trains
            with torch imports it before entering the block).
        """
        return _threads(self.n_jobs if n_jobs is None else n_jobs, backends)

    def log_to_console(self) -> None:
        """Attach a stream handler to the package logger (for scripts and the CLI)."""
        if not any(
            isinstance(h, logging.StreamHandler) and not isinstance(h, logging.NullHandler) for h in logger.handlers
        ):
            h = logging.StreamHandler()
            h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(h)

    def __repr__(self) -> str:
        return (
            f"immunomood.settings(verbosity={self.verbosity}, n_jobs={self.n_jobs}, "
            f"progress={self.progress}, random_state={self.random_state}, data_dir={self.data_dir})"
        )


def _check_n_jobs(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
        raise ValueError(f"{name} must be a positive integer or -1 (all cores), got {value!r}.")
    return int(value)


def resolve_n_jobs(n_jobs: int) -> int:
    """``n_jobs`` as a number of threads (``-1``: the cores available to this process)."""
    n_jobs = _check_n_jobs(n_jobs, "n_jobs")
    return _available_cores() if n_jobs == -1 else n_jobs


@contextlib.contextmanager
def _threads(n_jobs: int, backends: Sequence[str]) -> Iterator[int]:
    n = resolve_n_jobs(n_jobs)
    if isinstance(backends, str):
        backends = (backends,)
    unknown = [b for b in backends if b not in THREAD_BACKENDS]
    if unknown:
        raise ValueError(f"backends must be among {list(THREAD_BACKENDS)}, got {unknown}.")
    with contextlib.ExitStack() as stack:
        if "blas" in backends:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
                logger.debug("threadpoolctl not installed: BLAS threads not limited")
            else:
                stack.enter_context(threadpool_limits(limits=n, user_api="blas"))
        if "numba" in backends:
            try:
                import numba
            except ImportError:  # pragma: no cover - numba is a dependency
                logger.debug("numba not installed: its threads not limited")
            else:
                # numba cannot use more threads than it started with (NUMBA_NUM_THREADS)
                old_numba = numba.get_num_threads()
                numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
                stack.callback(numba.set_num_threads, old_numba)
        if "torch" in backends and "torch" in sys.modules:
            # only when torch is already loaded (importing it costs seconds; code that uses torch imports it
            # before it enters this block, e.g. tl.integrate)
            torch = sys.modules["torch"]
            old_torch = torch.get_num_threads()
            torch.set_num_threads(n)
            stack.callback(torch.set_num_threads, old_torch)
        yield n


def uses_threads(func):
    """Decorator: run ``func`` under :meth:`Settings.threads` (``im.settings.n_jobs`` threads for BLAS, numba, torch)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with settings.threads():
            return func(*args, **kwargs)

    return wrapper


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str | None = None,
    total: int | None = None,
    unit: str = "it",
    **kwargs: Any,
):
    """A tqdm progress bar over ``iterable`` (or a manual one with ``total=``), shown if ``settings.progress``.

    When progress is off the bar is disabled (tqdm's ``disable=True``: no output, negligible cost), so callers
    use it unconditionally::

        for sample in progress(samples, desc="doublets"):
            ...
        with progress(total=n_epochs, desc="training") as bar:
            bar.update(1)
    """
    from tqdm import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not settings.progress, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# warnings: printed once
# ----------------------------------------------------------------------------------------------------------
LOGGED_ATTR = "_immunomood_logged"


def mark_logged(warning: Warning) -> Warning:
    """Mark a warning instance as already written to the package logger (see :func:`warnings_to_logger`)."""
    setattr(warning, LOGGED_ATTR, True)
    return warning


@contextlib.contextmanager
def warnings_to_logger() -> Iterator[None]:
    """Show every Python warning exactly once, through the package logger (for the command line).

    ``_utils.warn`` both logs a message and raises it as a Python warning (so that it reaches log files and
    notebooks alike); with a console handler on the logger that would print it twice. Inside this block,
    warnings that immunomood has logged already are not shown again, and every other warning (from scanpy,
    anndata, scvi-tools, ...) is logged once at WARNING level instead of being printed by :mod:`warnings`.
    """
    old_show = warnings.showwarning

    def _show(message, category, filename, lineno, file=None, line=None):
        if getattr(message, LOGGED_ATTR, False):
            return
        logger.warning("%s: %s", category.__name__, message)

    warnings.showwarning = _show
    try:
        yield
    finally:
        warnings.showwarning = old_show


settings = Settings()
