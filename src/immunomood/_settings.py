"""Package-wide settings: ``im.settings``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger("immunomood")
logger.addHandler(logging.NullHandler())

_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


class Settings:
    """Global settings of immunomood.

    Attributes
    ----------
    verbosity
        0 errors, 1 warnings (default), 2 info, 3 debug. Sets the level of the ``"immunomood"`` logger;
        no handler is configured at import (configure logging yourself, or call :meth:`log_to_console`).
    n_jobs
        Worker threads/processes for parallel steps (``-1``: all cores).
    random_state
        Default seed used wherever a function takes ``random_state=None``.
    data_dir
        Where dataset loaders look first. Defaults to ``$IMMUNOMOOD_DATA_DIR``, else the user cache dir.
    """

    def __init__(self) -> None:
        self._verbosity = 1
        self.n_jobs: int = 1
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

    def log_to_console(self) -> None:
        """Attach a stream handler to the package logger (for scripts and the CLI)."""
        if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.NullHandler)
                   for h in logger.handlers):
            h = logging.StreamHandler()
            h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(h)

    def __repr__(self) -> str:
        return (f"immunomood.settings(verbosity={self.verbosity}, n_jobs={self.n_jobs}, "
                f"random_state={self.random_state}, data_dir={self.data_dir})")


settings = Settings()
