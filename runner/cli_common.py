"""What the `embx` commands share: the exit code of bad input, the --db and --set options, logging set-up."""

from __future__ import annotations

import logging

import click

EXIT_BAD_INPUT = 2

db_option = click.option(
    "--db",
    "db",
    default=None,
    metavar="PATH",
    help="Results store (default: $EMBX_DB or ./results.duckdb).",
)
device_option = click.option(
    "--device",
    default=None,
    metavar="cpu|cuda|cuda:N|mps",
    help="Device to run on (default: cuda, then mps, then cpu).",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a spec field, e.g. --set train.learning_rate=1e-5 (repeatable).",
)

NOISY = ("transformers", "sentence_transformers", "datasets", "accelerate", "bm25s", "httpx", "openai", "chromadb")
"""Libraries whose log lines below ERROR are hidden."""


def setup_logging(verbose: bool) -> None:
    """Log lines on stderr: embx's own at INFO (DEBUG with `verbose`), noisy libraries at ERROR.

    Through rich on a terminal; with a timestamp each, unwrapped, when stderr is a file or a pipe (nohup, SLURM,
    CI logs).
    """
    import os
    import sys

    os.environ.setdefault("TQDM_DISABLE", "1")  # library tqdm bars; embx draws its own (rich)
    from runner.progress import console

    if console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=False, show_time=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler])
    logging.getLogger("runner").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR)
