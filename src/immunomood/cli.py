"""Command line: ``immunomood demo`` and ``immunomood run CONFIG.toml`` (thin: parses, calls the API).

Imports nothing heavy at module level: ``immunomood --help`` and config errors answer in well under a second;
scanpy, scvi-tools and torch are loaded only once a command runs (``tests/test_cli_help.py`` checks it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ._config import STAGES, ConfigError, describe_keys, load_config

EXAMPLE_CONFIG = Path(__file__).parent / "resources" / "example_config.toml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="immunomood", description="Single-cell immunology of mood disorders.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="Run the whole analysis on the embedded simulated cohort and write a report.")
    d.add_argument("--outdir", default="demo_output", help="Output folder (default: demo_output).")
    d.add_argument("--n-donors", type=int, default=16, help="Donors in the simulated cohort (default 16).")
    d.add_argument("--cells-per-donor", type=int, default=300, help="Cells per donor (default 300).")
    d.add_argument("--resume", action="store_true", help="Skip stages whose checkpoint matches.")
    _add_common(d)
    r = sub.add_parser(
        "run",
        help="Run the staged analysis configured in a TOML file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Stages: " + " -> ".join(STAGES) + ". Each writes an atomic checkpoint under "
            "<outdir>/checkpoints/; --resume skips stages whose checkpoint matches the config.\n\n"
            f"An example config ships at {EXAMPLE_CONFIG}.\n\n" + describe_keys()
        ),
    )
    r.add_argument("config", help="TOML config file.")
    r.add_argument("--resume", action="store_true", help="Skip stages whose checkpoint matches the config.")
    r.add_argument(
        "--from", dest="from_stage", choices=STAGES, help="Start at this stage (earlier checkpoints must match)."
    )
    _add_common(r)
    sub.add_parser("example-config", help="Print the example config.")
    return p


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="Show progress bars (default: only when stderr is a terminal).",
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="Never show progress bars.")


def _console_logging() -> None:
    from ._settings import logger

    if not any(getattr(h, "_immunomood_console", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        h._immunomood_console = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    logger.setLevel(logging.INFO)


def demo(
    outdir: str | Path = "demo_output", *, n_donors: int = 16, cells_per_donor: int = 300, resume: bool = False
) -> Path:
    """Simulate a cohort with plasma proteomics, write it with a config, and run every stage on it."""
    from . import datasets
    from ._config import parse_config
    from ._pipeline import run_pipeline

    outdir = Path(outdir).resolve()
    inp = outdir / "input"
    inp.mkdir(parents=True, exist_ok=True)
    cfg_path = inp / "config.toml"
    if not (resume and (inp / "cohort.h5ad").is_file() and (inp / "plasma.h5ad").is_file()):
        adata, plasma = datasets.simulate_cohort(n_donors=n_donors, n_cells_per_donor=cells_per_donor, random_state=0)
        adata.write_h5ad(inp / "cohort.h5ad")
        plasma.write_h5ad(inp / "plasma.h5ad")
    text = EXAMPLE_CONFIG.read_text()
    text = (
        text.replace('h5ad = "cohort.h5ad"', f'h5ad = "{inp / "cohort.h5ad"}"')
        .replace('path = "plasma.h5ad"', f'path = "{inp / "plasma.h5ad"}"')
        .replace('outdir = "immunomood_out"', f'outdir = "{outdir}"')
    )
    cfg_path.write_text(text)
    import tomllib

    cfg = parse_config(tomllib.loads(text), cfg_path)
    run_pipeline(cfg, resume=resume)
    return outdir / "report"


def main(argv: list[str] | None = None) -> int:
    """Run the ``immunomood`` command line with ``argv`` (default: ``sys.argv``); returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "example-config":
        print(EXAMPLE_CONFIG.read_text())
        return 0
    _console_logging()
    from ._settings import logger, settings, warnings_to_logger

    t0 = time.perf_counter()
    # each message printed once: by the console handler only (a library that calls logging.basicConfig would
    # otherwise print every record a second time through the root logger), and warnings through the log
    propagate, logger.propagate = logger.propagate, False
    try:
        if args.progress is not None:
            settings.progress = args.progress
        with warnings_to_logger():
            report = _run(args)
        logger.info("finished in %.0f s; report: %s (read summary.md first)", time.perf_counter() - t0, report)
        return 0
    except ConfigError as e:
        print(f"immunomood: error: {e}", file=sys.stderr)
        return 2
    except (KeyError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"immunomood: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        logger.propagate = propagate


def _run(args: argparse.Namespace) -> Path:
    if args.command == "demo":
        return demo(args.outdir, n_donors=args.n_donors, cells_per_donor=args.cells_per_donor, resume=args.resume)
    from ._pipeline import run_pipeline

    cfg = load_config(args.config)
    run_pipeline(cfg, resume=args.resume, from_stage=args.from_stage)
    return cfg.outdir / "report"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
